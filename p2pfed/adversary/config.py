"""The ``adversaries`` section: who watches a run, where, and which attacks they run.

Every adversary declares a *threat model* (DESIGN.md section 5):

* ``eavesdropper``: taps links — ``links`` (unordered pairs) or every link of ``target`` —
  and keeps a copy of each frame that crosses them: ciphertext when the channel is sealed;
* ``curious_peer``: participant ``peer`` follows the protocol and keeps every message it
  receives and sends (the white-box view of its neighbours' models across rounds); with
  ``active`` it also replaces its shared model at one round by gradient ascent on candidate
  samples (Nasr et al., S&P 2019) and watches how its neighbours' next models treat them;
* ``curious_coordinator``: the coordinator of a star protocol keeps every partial update it
  receives;
* ``black_box``: only queries the final model of ``target``.

``attacks`` picks what each runs (its role's defaults when omitted):

* ``inversion``: gradient inversion of the local updates the adversary isolates — the
  analytic inversion of the first fully connected layer, iDLG's label, and (``dlg``)
  iDLG's LBFGS optimisation from the same observation;
* ``inverting_gradients``: Geiping et al.'s cosine + TV attack, for multi-step updates;
* ``membership``: loss-threshold membership inference (for a curious peer, on each
  neighbour's last local model; for a black box, on the final model); ``lira``: LiRA with
  shadow models (black box only); ``active``: the curious peer's active attack;
* ``model_inversion``: MI-Face class reconstructions from the final model (black box).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from p2pfed.fields import Real

Role = Literal["eavesdropper", "curious_peer", "curious_coordinator", "black_box"]
AttackName = Literal[
    "inversion",
    "dlg",
    "inverting_gradients",
    "membership",
    "lira",
    "active",
    "model_inversion",
]

#: The attacks that reconstruct training samples (scored against what the peers trained on).
RECONSTRUCTIONS = frozenset({"inversion", "dlg", "inverting_gradients"})

#: What each role can run, its defaults first.
ROLE_ATTACKS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "eavesdropper": (("inversion",), ("inversion", "dlg", "inverting_gradients")),
    "curious_peer": (("membership",), ("membership", "inversion", "dlg", "active")),
    "curious_coordinator": (
        ("inversion",),
        ("inversion", "dlg", "inverting_gradients", "membership"),
    ),
    "black_box": (("membership",), ("membership", "lira", "model_inversion")),
}


class ActiveConfig(BaseModel):
    """The curious peer's active membership attack (Nasr et al., S&P 2019, section V-B):
    at local round ``round`` it shares its model after ``steps`` steps of gradient *ascent*
    (step ``lr``) on ``candidates`` samples, half of them a neighbour's training data and
    half held-out data, then scores each by how much the neighbours' next models lower it."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    round: StrictInt = Field(1, ge=0, description="the local round whose share is replaced")
    candidates: StrictInt = Field(32, ge=4, le=4096, description="target samples (half members)")
    lr: Real = Field(1.0, gt=0, description="gradient ascent step")
    steps: StrictInt = Field(1, ge=1, le=1000)


class AdversaryConfig(BaseModel):
    """One adversary (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    role: Role
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$", description="report label")
    target: StrictInt | None = Field(
        None, ge=0, description="eavesdropper: tap every link of this peer; black_box: query it"
    )
    links: list[tuple[StrictInt, StrictInt]] | None = Field(
        None, min_length=1, description="eavesdropper: the links it taps (unordered pairs)"
    )
    peer: StrictInt | None = Field(None, ge=0, description="curious_peer: which peer it is")
    attacks: list[AttackName] | None = Field(None, description="default: the role's defaults")
    active: ActiveConfig | None = Field(None, description="curious_peer: the active attack")
    max_observations: StrictInt = Field(
        8, ge=1, le=10_000, description="updates attacked per observed peer (the latest ones)"
    )
    candidates: StrictInt = Field(
        200, ge=4, le=100_000, description="membership: members and non-members scored"
    )
    shadows: StrictInt = Field(8, ge=2, le=256, description="lira: shadow models")
    mi_iterations: StrictInt = Field(
        1000, ge=1, le=100_000, description="model_inversion: MI-Face's most descent steps"
    )

    @model_validator(mode="after")
    def _consistent(self) -> AdversaryConfig:
        role = self.role
        if role == "eavesdropper":
            if (self.target is None) == (self.links is None):
                raise ValueError("an eavesdropper taps either target (all its links) or links")
            for a, b in self.links or ():
                if a == b or min(a, b) < 0:
                    raise ValueError(f"links: ({a}, {b}) is not a link between two peers")
        elif self.links is not None:
            raise ValueError(f"links: only an eavesdropper taps links, not a {role}")
        if role == "curious_peer":
            if self.peer is None:
                raise ValueError("a curious_peer needs peer: the participant it is")
        elif self.peer is not None:
            raise ValueError(f"peer: only a curious_peer is a peer; a {role} uses target")
        if role in ("curious_peer", "curious_coordinator") and self.target is not None:
            raise ValueError(f"target: a {role} watches what reaches it, it has no target")
        if self.active is not None and role != "curious_peer":
            raise ValueError("active: only a curious_peer runs the active attack")
        allowed = ROLE_ATTACKS[role][1]
        for attack in self.attacks or ():
            if attack not in allowed:
                raise ValueError(f"attacks: a {role} cannot run {attack!r} (it can: {allowed})")
        if "active" in self.chosen_attacks and self.active is None:
            raise ValueError("attacks: active needs the active section (round, candidates, lr)")
        if self.active is not None and "active" not in self.chosen_attacks:
            raise ValueError(
                "active: the attack pushes a crafted model; list active in attacks too (or "
                "leave attacks out), or drop the active section"
            )
        return self

    @property
    def chosen_attacks(self) -> tuple[str, ...]:
        if self.attacks is not None:
            return tuple(dict.fromkeys(self.attacks))
        defaults = ROLE_ATTACKS[self.role][0]
        return (*defaults, "active") if self.active is not None else defaults

    def label(self, index: int) -> str:
        return self.name or f"{self.role}-{index}"

    def check_peers(self, num_peers: int, has_coordinator: bool) -> None:
        """Raise ``ValueError`` for peers the run does not have."""
        participants = num_peers + int(has_coordinator)
        if self.role == "curious_coordinator" and not has_coordinator:
            raise ValueError("a curious_coordinator needs a protocol with a coordinator")
        if self.role == "black_box" and self.target is not None and self.target >= num_peers:
            # a coordinator's or relay's model need not be what the peers end with (under HE
            # it never changes): the black box queries a peer's final model
            raise ValueError(
                f"target {self.target}: a black box queries a peer, 0..{num_peers - 1}"
            )
        if self.peer is not None and self.peer >= num_peers:
            raise ValueError(f"peer {self.peer}: the run has peers 0..{num_peers - 1}")
        if self.target is not None and self.target >= participants:
            raise ValueError(
                f"target {self.target}: the run has participants 0..{participants - 1}"
            )
        for a, b in self.links or ():
            if max(a, b) >= participants:
                raise ValueError(
                    f"links: ({a}, {b}) names a participant the run does not have "
                    f"(0..{participants - 1})"
                )


# --- adversaries that act ------------------------------------------------------------------


class ScheduleConfig(BaseModel):
    """When an acting adversary acts, on its own clock (run seconds: virtual or wall): from
    ``start`` until ``stop``, during the first ``duty`` fraction of every ``period`` when
    one is given, and then on each message with ``probability``."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    start: Real = Field(0.0, ge=0, description="seconds into the run")
    stop: Real | None = Field(None, gt=0, description="seconds into the run; null: never")
    period: Real | None = Field(None, gt=0, description="seconds; null: always on")
    duty: Real = Field(1.0, gt=0, le=1, description="share of each period it is active")
    probability: Real = Field(1.0, ge=0, le=1, description="of acting on a given message")

    @model_validator(mode="after")
    def _ordered(self) -> ScheduleConfig:
        if self.stop is not None and self.stop <= self.start:
            raise ValueError(f"stop ({self.stop}) must come after start ({self.start})")
        return self

    def on(self, now: float) -> bool:
        """Whether the schedule is active at ``now`` (before the probability draw)."""
        if now < self.start or (self.stop is not None and now >= self.stop):
            return False
        if self.period is None:
            return True
        return (now - self.start) % self.period < self.duty * self.period


DataBehaviour = Literal["label_flip", "backdoor"]
ModelBehaviour = Literal["sign_flip", "gaussian", "scaling", "alie", "ipm", "dissensus"]
TimingBehaviour = Literal["stale", "delay", "flood"]
DATA_BEHAVIOURS = frozenset({"label_flip", "backdoor"})
#: behaviours that read the colluders' view of honest models
NEEDS_VIEW = frozenset({"alie", "ipm", "dissensus"})
#: behaviours that need the shared models themselves, not the poisoner's input: refused under
#: secure aggregation and HE, where a poisoner only chooses what it masks or encrypts
#: (dissensus aims at each neighbour's model, delay and flood act on model frames)
NOT_BEFORE_MASKING = frozenset({"dissensus", "delay", "flood"})


class PoisonerConfig(BaseModel):
    """Peers that poison what they share (DESIGN.md section 5), colluding as one group.

    * data: ``label_flip`` (labels shifted by one, mod the classes) and ``backdoor`` (a
      ``fraction`` of the shard stamped with a corner trigger and relabelled ``target_class``)
      poison the peers' shards before training; they act at every training.
    * model: ``sign_flip`` (the update negated and scaled by ``scale``), ``gaussian`` (the
      reference plus noise of std ``sigma``), ``scaling`` (model replacement: the update
      scaled by ``scale``, default the number of clients), ``alie`` and ``ipm`` (from the
      colluders' view of the honest models they received), ``dissensus`` (against each
      receiving neighbour, from its honest neighbours' models the colluders saw);
    * timing: ``stale`` (the model of ``stale_rounds`` sends ago, replayed), ``delay`` (each
      share ``delay`` seconds late), ``flood`` (``copies`` copies of each share).

    Model and timing behaviours act on the ``schedule``; data poisoning trains on the
    poisoned shard throughout (``schedule`` must then be left at its default).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    role: Literal["poisoner"]
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$", description="report label")
    peers: list[StrictInt] = Field(min_length=1, description="the colluding peers")
    behaviour: DataBehaviour | ModelBehaviour | TimingBehaviour
    poison_data: DataBehaviour | None = Field(
        None,
        description="a model behaviour's peers also train on poisoned data (e.g. "
        "scaling + backdoor: Bagdasaryan et al.'s model replacement)",
    )
    schedule: ScheduleConfig = ScheduleConfig()
    scale: Real | None = Field(None, gt=0, description="sign_flip / scaling factor")
    sigma: Real = Field(1.0, gt=0, description="gaussian: noise std")
    z: Real | None = Field(None, gt=0, description="alie: std multiplier; null: the paper's")
    epsilon: Real = Field(0.5, gt=0, description="ipm / dissensus strength")
    target_class: StrictInt = Field(0, ge=0, description="backdoor: the label triggers get")
    fraction: Real = Field(0.5, gt=0, le=1, description="data poisoning: share of the shard")
    stale_rounds: StrictInt = Field(3, ge=1, description="stale: how many sends back")
    delay: Real = Field(1.0, gt=0, description="delay: seconds added to each share")
    copies: StrictInt = Field(10, ge=2, le=10_000, description="flood: copies of each share")
    seed: StrictInt = Field(0, ge=0, description="the poisoners' own random stream")

    @model_validator(mode="after")
    def _consistent(self) -> PoisonerConfig:
        if len(set(self.peers)) != len(self.peers):
            raise ValueError("peers: each poisoner once")
        if min(self.peers) < 0:
            raise ValueError("peers: ids are >= 0")
        if self.poison_data is not None and self.behaviour in DATA_BEHAVIOURS:
            raise ValueError("poison_data: the behaviour already poisons the data")
        if self.behaviour in DATA_BEHAVIOURS and self.schedule != ScheduleConfig():
            raise ValueError(
                f"schedule: {self.behaviour} poisons the training data, which has no clock"
            )
        return self

    def label(self, index: int) -> str:
        return self.name or f"poisoner-{index}"

    @property
    def data_poisoning(self) -> str | None:
        """The data poisoning its peers train with, if any."""
        return self.behaviour if self.behaviour in DATA_BEHAVIOURS else self.poison_data


OnPathAction = Literal["modify", "replay", "inject", "drop"]


class OnPathConfig(BaseModel):
    """An attacker on the path of ``links`` (DESIGN.md section 5): it ``modify``s frames
    (their model negated, in place), ``replay``s them (each is delivered twice),
    ``inject``s forged ones (a model of noise claiming to be from the sender) or ``drop``s
    them, on its ``schedule``. On a plain link the receiver takes what arrives; on a sealed
    one (``security.channel: aead``) every altered, replayed or forged frame fails to open
    and is rejected and counted."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    role: Literal["on_path"]
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$", description="report label")
    links: list[tuple[StrictInt, StrictInt]] = Field(min_length=1)
    action: OnPathAction = "modify"
    schedule: ScheduleConfig = ScheduleConfig()
    seed: StrictInt = Field(0, ge=0, description="its own random stream")

    @model_validator(mode="after")
    def _consistent(self) -> OnPathConfig:
        for a, b in self.links:
            if a == b or min(a, b) < 0:
                raise ValueError(f"links: ({a}, {b}) is not a link between two peers")
        return self

    def label(self, index: int) -> str:
        return self.name or f"on_path-{index}"
