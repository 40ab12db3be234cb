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
