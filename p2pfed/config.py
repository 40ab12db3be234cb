"""Experiment configuration: one YAML file, loaded into nested, frozen, validated objects.

Each component owns its section and its defaults (``TopologySpec`` in ``p2pfed.topology``,
``DataConfig`` in ``p2pfed.data`` and so on); this module composes them, checks what spans
sections, applies ``--set path.to.key=value`` overrides, and turns every validation problem
into one :class:`~p2pfed.errors.ConfigError` that names the file and the dotted key.

A topology may be inline (``topology: {kind: ring, n: 16}``) or come from a file
(``topology: {file: topologies/ring16.yaml}``), with inline keys overriding the file's.
Relative paths resolve against the config file's folder first, then the working directory.
``--set topology.file=F`` replaces the whole topology section (later ``--set topology.*``
overrides still apply on top of F).
The resolved config — file contents inlined — is what a run directory records.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    model_validator,
)

from p2pfed.adversary.config import (
    NEEDS_VIEW,
    NOT_BEFORE_MASKING,
    AdversaryConfig,
    OnPathConfig,
    PoisonerConfig,
)
from p2pfed.availability import AvailabilityConfig
from p2pfed.crypto.config import MIN_GROUP, SecurityConfig
from p2pfed.data import DataConfig, PartitionConfig
from p2pfed.errors import ConfigError
from p2pfed.fields import Real
from p2pfed.models import ModelConfig
from p2pfed.privacy.dp import DPConfig
from p2pfed.robust import RobustConfig
from p2pfed.timing import NetworkConfig, TimeConfig
from p2pfed.topology import TopologySpec
from p2pfed.training import TrainingConfig
from p2pfed.yamlio import parse_yaml, read_yaml

DEFAULT_CONFIG = "default.yaml"
#: how errors name the embedded default config
DEFAULT_SOURCE = "<default config>"


#: protocol settings and the kinds that use them (any other kind rejects a non-default value)
_PROTOCOL_KEYS = {
    "min_fraction": ("fedavg",),
    "server_lr": ("fedavg", "fedbuff"),
    "alpha": ("fedasync",),
    "staleness": ("fedasync", "fedbuff"),
    "staleness_exponent": ("fedasync", "fedbuff"),
    "buffer_size": ("fedbuff",),
    "robust": ("dpsgd", "gossip", "fedavg"),
}


class ProtocolConfig(BaseModel):
    """Which protocol the peers run: decentralised (dpsgd, gossip, pushsum) or through a
    coordinator (fedavg, fedasync, fedbuff; the coordinator is one more participant, id n,
    and the topology's edges are not used — only its n)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    kind: Literal["dpsgd", "gossip", "pushsum", "fedavg", "fedasync", "fedbuff"] = "dpsgd"
    rounds: StrictInt = Field(50, ge=1, description="local training rounds per peer")
    timeout: Real | None = Field(
        None,
        gt=0,
        description="seconds a peer waits for its neighbours (dpsgd), for a gossip reply, or "
        "for the coordinator (fed kinds) before moving on; null picks one from the time and "
        "network models",
    )
    min_fraction: Real = Field(
        1.0, gt=0, le=1, description="fedavg: share of clients a round needs after its timeout"
    )
    server_lr: Real = Field(1.0, gt=0, description="fedavg, fedbuff: server step size")
    alpha: Real = Field(0.6, gt=0, le=1, description="fedasync: mixing weight of an update")
    staleness: Literal["polynomial", "constant", "hinge"] = Field(
        "polynomial", description="fedasync, fedbuff: how stale updates are down-weighted"
    )
    staleness_exponent: Real = Field(
        0.5, ge=0, description="fedasync, fedbuff: polynomial staleness (1 + d)^-exponent"
    )
    buffer_size: StrictInt | None = Field(
        None, ge=1, description="fedbuff: updates per server step; null: min(n, 10)"
    )
    robust: RobustConfig = Field(
        RobustConfig(),
        description="dpsgd: each peer's neighbourhood rule; gossip: the rule of each pairwise "
        "exchange (one input: norm_clip, clipped_gossip with cg_tau, centered_clip, balance); "
        "fedavg: the coordinator's (p2pfed.robust)",
    )

    @model_validator(mode="after")
    def _keys_of_this_kind(self) -> ProtocolConfig:
        if self.kind == "pushsum" and self.timeout is not None:
            raise ValueError(
                "timeout is not used by pushsum, which never waits "
                "(remove it, or --set protocol.timeout=null)"
            )
        fields = ProtocolConfig.model_fields
        for key, kinds in _PROTOCOL_KEYS.items():
            if self.kind not in kinds and getattr(self, key) != fields[key].default:
                raise ValueError(f"{key} is used by {' and '.join(kinds)} only, not {self.kind}")
        return self

    @property
    def has_coordinator(self) -> bool:
        return self.kind in ("fedavg", "fedasync", "fedbuff")


class EvalConfig(BaseModel):
    """When peers are evaluated on the held-out test set."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    interval: Real | None = Field(
        None, gt=0, description="virtual seconds between evaluations; null: about once a round"
    )
    max_test_samples: StrictInt | None = Field(
        2000,
        ge=1,
        description="evaluate every peer on a seeded random subset of at most this many test "
        "samples (the test set of synthetic data grows with the number of peers, and every "
        "peer is scored at every tick); null: the whole test set",
    )


class OutputConfig(BaseModel):
    """Where results go and how much is logged and shown."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    dir: str | None = Field(None, description="run directory; null: runs/<name>-<timestamp>")
    log_level: Literal["debug", "info", "warning"] = "info"
    progress: Literal["auto", "bar", "plain", "off"] = "auto"
    report: bool = Field(
        True, description="write RUN_DIR/report.html at the end of the run (p2pfed.report)"
    )


class CheckpointConfig(BaseModel):
    """How often a run writes its live state out, so that ``p2pfed run --resume RUN_DIR``
    can go on after the process was killed (see :mod:`p2pfed.checkpoint`)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    every: StrictInt = Field(
        10,
        ge=0,
        description="virtual time: write RUN_DIR/checkpoint.pt after every this many "
        "evaluation ticks (0: never); a resumed run ends exactly as an uninterrupted one",
    )
    wall_interval: Real = Field(
        5.0,
        gt=0,
        description="wall time with runtime.on_host_failure restart: seconds between the "
        "checkpoints every PeerHost sends the driver (a crashed host restarts from its last)",
    )


class RuntimeConfig(BaseModel):
    """Where and how peers execute: all in this process (``local``) or spread over Ray
    ``PeerHost`` actors on this machine or a cluster (``ray``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    kind: Literal["local", "ray"] = "local"
    device: Literal["cpu", "cuda", "auto"] = Field(
        "cpu", description="where peers train and evaluate; auto picks cuda when available"
    )
    torch_threads: StrictInt = Field(
        1,
        ge=1,
        description="intra-op threads for training; 1 is fastest for small models with many "
        "peers per process (measured: a 16-peer ring ran 6x slower with 2 threads on a "
        "loaded 2-core machine)",
    )
    address: str | None = Field(
        None,
        min_length=1,
        description="ray only: null starts a private Ray instance on this machine; 'auto' "
        "joins the cluster this machine belongs to; HOST:PORT joins that cluster's head",
    )
    hosts: StrictInt | None = Field(
        None,
        ge=1,
        description="ray only: PeerHost actors; null: from peers_per_host, else "
        "one per CPU (or per GPU share) of the cluster, at most one per peer",
    )
    peers_per_host: StrictInt | None = Field(
        None, ge=1, description="ray only: peers each PeerHost carries (sets hosts)"
    )
    cpus_per_host: Real = Field(1.0, gt=0, description="ray only: CPUs reserved per PeerHost")
    gpus_per_host: Real = Field(
        0.0,
        ge=0,
        description="ray only: GPUs reserved per PeerHost (fractional shares a GPU); > 0 "
        "trains that host's peers on cuda",
    )
    on_host_failure: Literal["continue", "stop", "restart"] | None = Field(
        None,
        description="ray only: when a PeerHost dies, continue without its peers, stop with "
        "an error, or (wall time) restart it from its last checkpoint and let its peers "
        "rejoin; null: stop for protocols with a coordinator, continue otherwise",
    )
    coordinator_host: Literal["own", "shared"] = Field(
        "own",
        description="ray only, coordinator protocols: the coordinator in an actor of its own "
        "(no CPU reserved; the default, measured faster) or shared with the last block of "
        "clients (one process fewer: 1552 vs 1864 MB for FedAvg at N=128, but slower rounds)",
    )
    fail_hosts: dict[int, Real] = Field(
        default_factory=dict,
        description="ray only, fault injection: PeerHost index -> run time (virtual seconds, "
        "or wall seconds under time.mode wall) at which the driver kills that host (as a "
        "crashed node would), to test on_host_failure",
    )
    start_timeout: Real = Field(
        60.0,
        gt=0,
        le=3600,
        description="ray only: seconds to wait for the cluster to place and start the hosts",
    )

    @model_validator(mode="after")
    def _ray_keys_need_ray(self) -> RuntimeConfig:
        if self.kind == "local":
            defaults = RuntimeConfig.model_fields
            for key in (
                "address",
                "hosts",
                "peers_per_host",
                "cpus_per_host",
                "gpus_per_host",
                "on_host_failure",
                "start_timeout",
                "fail_hosts",
                "coordinator_host",
            ):
                default = defaults[key].get_default(call_default_factory=True)
                if getattr(self, key) != default:
                    raise ValueError(f"{key} needs kind: ray")
        if self.hosts is not None and self.peers_per_host is not None:
            raise ValueError("set hosts or peers_per_host, not both")
        if self.gpus_per_host > 0 and self.device == "cpu":
            raise ValueError("gpus_per_host > 0 trains on GPUs: set device: cuda (or auto)")
        for host, at in self.fail_hosts.items():
            if host < 0 or at < 0:
                raise ValueError(f"fail_hosts: host {host} at {at}: both must be >= 0")
        if self.gpus_per_host > 1 and self.gpus_per_host != int(self.gpus_per_host):
            raise ValueError("gpus_per_host above 1 must be a whole number")
        return self


class ExperimentConfig(BaseModel):
    """A whole experiment."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    name: str = Field("experiment", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    seed: StrictInt = Field(0, ge=0)
    topology: TopologySpec = TopologySpec()
    data: DataConfig = DataConfig()
    partition: PartitionConfig = PartitionConfig()
    model: ModelConfig = ModelConfig()
    protocol: ProtocolConfig = ProtocolConfig()
    training: TrainingConfig = TrainingConfig()
    time: TimeConfig = TimeConfig()
    network: NetworkConfig = NetworkConfig()
    availability: AvailabilityConfig = AvailabilityConfig()
    security: SecurityConfig = SecurityConfig()
    dp: DPConfig = DPConfig()
    eval: EvalConfig = EvalConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    output: OutputConfig = OutputConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    adversaries: list[
        Annotated[AdversaryConfig | PoisonerConfig | OnPathConfig, Field(discriminator="role")]
    ] = Field(default_factory=list, description="who watches or attacks the run (p2pfed.adversary)")

    @model_validator(mode="after")
    def _cross_section(self) -> ExperimentConfig:
        if self.model.kind == "cnn" and self.data.dataset == "synthetic":
            raise ValueError("model.kind cnn needs image data; data.dataset synthetic is tabular")
        if self.time.mode == "wall" and self.runtime.kind != "ray":
            raise ValueError("time.mode wall runs on Ray actors: set runtime.kind: ray")
        n = self.topology.n
        rt = self.runtime
        if rt.hosts is not None:
            own = self.has_coordinator and rt.coordinator_host == "own"
            total = rt.hosts + own
            for host in rt.fail_hosts:
                if host >= total:
                    raise ValueError(
                        f"runtime.fail_hosts names host {host}, but there are {total} "
                        "(hosts, plus the coordinator's for fed protocols)"
                    )
        if self.protocol.buffer_size is not None and self.protocol.buffer_size > n:
            raise ValueError(
                f"protocol.buffer_size ({self.protocol.buffer_size}) exceeds the {n} clients"
            )
        sec = self.security
        if sec.secure_aggregation and self.protocol.kind not in ("dpsgd", "fedavg"):
            raise ValueError(
                f"security.aggregation {sec.aggregation} runs with protocol.kind dpsgd (each "
                "peer securely sums its neighbourhood) or fedavg (the coordinator securely "
                f"sums all clients), not {self.protocol.kind}: asynchronous pairwise "
                "exchanges sum two models, and a sum of two reveals the other to either party"
            )
        if sec.homomorphic:
            if self.protocol.kind not in ("fedavg", "dpsgd"):
                raise ValueError(
                    "security.aggregation he runs with protocol.kind fedavg (he-fedavg: the "
                    "coordinator sums ciphertexts) or dpsgd (he-gossip: a relay sums each "
                    f"peer's neighbourhood), not {self.protocol.kind}"
                )
            if self.protocol.kind == "dpsgd" and sec.he.key_mode != "group":
                raise ValueError(
                    "he-gossip (dpsgd with aggregation he) runs with security.he.key_mode "
                    "group: a threshold key would need partial decryptions of every peer's "
                    "neighbourhood sum each round"
                )
            if self.protocol.server_lr != 1:
                raise ValueError(
                    "security.aggregation he needs protocol.server_lr 1: clients encrypt "
                    "their distance from the initial model, and the aggregate is the model"
                )
            t = sec.he.threshold
            if t is not None and t > n:
                raise ValueError(f"security.he.threshold {t} exceeds the {n} clients")
        for peer in self.time.slowdown:
            if peer >= n:
                raise ValueError(f"time.slowdown names peer {peer}, but the topology has {n}")
        self.network.check_peers(n + int(self.has_coordinator))
        if (
            self.availability.kind != "always"
            and self.has_coordinator
            and not self.security.secure_aggregation
            and self.time.limit is None
        ):
            raise ValueError(
                f"availability {self.availability.kind} with protocol.kind "
                f"{self.protocol.kind}: a client down when a round's model goes out misses it, "
                "and the coordinator can wait for it for ever while peers keep coming and "
                "going; set time.limit to bound the run (secure fedavg and the gossip "
                "protocols move on by themselves)"
            )
        churners = self.availability.churn.peers or []
        if self.availability.kind == "churn" and churners and max(churners) >= n:
            raise ValueError(
                f"availability.churn.peers names {max(churners)}, but the peers are 0..{n - 1} "
                "(a coordinator does not churn)"
            )
        if rt.on_host_failure == "restart":
            self._check_restart()
        self._check_robust_under_protection()
        self._check_adversaries()
        return self

    def _check_restart(self) -> None:
        """A restarted host goes back to its checkpoint and replays its peers' random streams
        into a different future: anything those streams keep secret would be used twice."""
        if self.time.mode != "wall":
            raise ValueError(
                "runtime.on_host_failure restart needs time.mode wall (a virtual-time run "
                "resumes whole: p2pfed run --resume RUN_DIR)"
            )
        sec = self.security
        reused = [
            what
            for what, on in (
                ("AES-GCM nonces (security.channel aead)", sec.channel == "aead"),
                (
                    f"masks and shares (security.aggregation {sec.aggregation})",
                    sec.aggregation != "plain",
                ),
                ("DP noise (dp.clip)", self.dp.clip is not None),
            )
            if on
        ]
        if reused:
            raise ValueError(
                "runtime.on_host_failure restart replays a host's random streams from its "
                f"checkpoint, which would reuse {' and '.join(reused)} on different updates; "
                "use continue or stop with these protections"
            )

    def _check_robust_under_protection(self) -> None:
        """Which robust rules can run where the aggregator holds sums only
        (p2pfed.robust.buckets): under secagg / secret-share, a FedAvg coordinator's rule
        over secure bucket sums; nothing else."""
        sec, rule = self.security, self.protocol.robust
        if rule.bucket_size is not None and self.protocol.kind != "fedavg":
            raise ValueError(
                "protocol.robust.bucket_size is for fedavg (a coordinator's buckets of "
                f"clients), not {self.protocol.kind}"
            )
        if rule.bucket_size is not None and rule.rule == "mean":
            raise ValueError(
                "protocol.robust.bucket_size has no effect with rule mean (the mean of the "
                "bucket means is the mean): choose a robust rule, or drop bucket_size"
            )
        if rule.rule == "mean" or not (sec.secure_aggregation or sec.homomorphic):
            return
        hidden = (
            f"protocol.robust.rule {rule.rule} needs to see every input, but under "
            f"security.aggregation {sec.aggregation} the aggregator holds only sums"
        )
        if sec.homomorphic:
            raise ValueError(
                f"{hidden} of ciphertexts, and robust rules over HE sums are not implemented: "
                "use rule mean, or secagg with protocol.robust.bucket_size"
            )
        if self.protocol.kind != "fedavg":
            raise ValueError(
                f"{hidden}: a peer's neighbourhood is one secure sum, one input, and no rule "
                "runs on one input; robust rules over bucket sums need fedavg (set "
                "protocol.robust.bucket_size), or drop secure aggregation"
            )
        if rule.bucket_size is None:
            raise ValueError(
                f"{hidden}: set protocol.robust.bucket_size (at least {MIN_GROUP}) to run the "
                "rule over secure sums of random buckets of clients (p2pfed.robust.buckets)"
            )
        if rule.bucket_size < MIN_GROUP:
            raise ValueError(
                f"protocol.robust.bucket_size {rule.bucket_size} under secure aggregation: "
                f"each bucket is a secure sum and needs at least {MIN_GROUP} clients (a sum "
                "of two reveals either input to the other)"
            )

    @property
    def robust_rule(self) -> str:
        return self.protocol.robust.rule

    @property
    def observers(self) -> list[tuple[int, AdversaryConfig]]:
        """The adversaries that watch, with their places in ``adversaries``."""
        return [(k, a) for k, a in enumerate(self.adversaries) if isinstance(a, AdversaryConfig)]

    @property
    def poisoners(self) -> list[tuple[int, PoisonerConfig]]:
        return [(k, a) for k, a in enumerate(self.adversaries) if isinstance(a, PoisonerConfig)]

    @property
    def on_path(self) -> list[tuple[int, OnPathConfig]]:
        return [(k, a) for k, a in enumerate(self.adversaries) if isinstance(a, OnPathConfig)]

    def _check_adversaries(self) -> None:
        n, active, names = self.topology.n, set(), set()
        participants = n + int(self.has_coordinator)
        poisoned: set[int] = set()
        for k, any_adv in enumerate(self.adversaries):
            label = any_adv.label(k)
            if label in names:
                raise ValueError(f"adversaries[{k}]: the name {label} is taken: names label rows")
            names.add(label)
            if isinstance(any_adv, PoisonerConfig):
                bad = [p for p in any_adv.peers if p >= n]
                if bad:
                    raise ValueError(f"adversaries[{k}]: peers {bad}: the run has peers 0..{n - 1}")
                if poisoned & set(any_adv.peers):
                    raise ValueError(
                        f"adversaries[{k}]: peers {sorted(poisoned & set(any_adv.peers))} "
                        "already poison (one behaviour per peer)"
                    )
                poisoned |= set(any_adv.peers)
                f = len(any_adv.peers)
                if any_adv.behaviour == "alie" and any_adv.z is None and f > n // 2:
                    raise ValueError(
                        f"adversaries[{k}]: ALIE's z needs a Byzantine minority ({f} of {n}); "
                        "give z explicitly"
                    )
                hidden = self.security.secure_aggregation or self.security.homomorphic
                if hidden and any_adv.behaviour in NEEDS_VIEW and f < 2:
                    raise ValueError(
                        f"adversaries[{k}]: behaviour {any_adv.behaviour} estimates the honest "
                        "models from what the colluders see, and under security.aggregation "
                        f"{self.security.aggregation} they see only their own: it needs at "
                        "least 2 colluding peers"
                    )
                if hidden and any_adv.behaviour in NOT_BEFORE_MASKING:
                    raise ValueError(
                        f"adversaries[{k}]: behaviour {any_adv.behaviour} rewrites shared "
                        f"models, but under security.aggregation {self.security.aggregation} a "
                        "poisoner only chooses its input before masking or encryption (model "
                        "and data behaviours, stale replays)"
                    )
                continue
            if isinstance(any_adv, OnPathConfig):
                for a, b in any_adv.links:
                    if max(a, b) >= participants:
                        raise ValueError(
                            f"adversaries[{k}]: links: ({a}, {b}) names a participant the run "
                            f"does not have (0..{participants - 1})"
                        )
                continue
            adv = any_adv
            try:
                adv.check_peers(n, self.has_coordinator)
            except ValueError as exc:
                raise ValueError(f"adversaries[{k}]: {exc}") from None
            if adv.active is None:
                continue
            if (
                self.protocol.kind != "dpsgd"
                or self.security.secure_aggregation
                or (self.security.homomorphic)
            ):
                raise ValueError(
                    f"adversaries[{k}]: the active attack replaces a plain D-PSGD share "
                    f"(protocol.kind dpsgd without secure aggregation or HE)"
                )
            if adv.peer in active:
                raise ValueError(f"adversaries[{k}]: peer {adv.peer} already runs an active attack")
            active.add(adv.peer)
            if adv.active.round >= self.protocol.rounds - 1:
                raise ValueError(
                    f"adversaries[{k}]: active.round {adv.active.round} leaves no later round to "
                    f"watch (protocol.rounds is {self.protocol.rounds})"
                )

    @property
    def num_peers(self) -> int:
        return self.topology.n

    @property
    def has_coordinator(self) -> bool:
        """Whether participant ``num_peers`` exists: the coordinator of a fed protocol, or
        he-gossip's relay."""
        return self.protocol.has_coordinator or (
            self.security.homomorphic and self.protocol.kind == "dpsgd"
        )

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# --- loading ----------------------------------------------------------------------------


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Load an experiment file (``None``: the embedded default) and apply ``k=v`` overrides."""
    if path is None:
        text = importlib.resources.files("p2pfed.defaults").joinpath(DEFAULT_CONFIG).read_text()
        source, base_dir = DEFAULT_SOURCE, Path.cwd()
        data = _parse_yaml(text, source)
    else:
        p = Path(path)
        source, base_dir = str(p), p.resolve().parent
        if p.is_dir():
            raise ConfigError("is a directory, not a config file", source=source)
        data = _as_mapping(read_yaml(p), source)
    for item in overrides:
        apply_override(data, item, source)
    return config_from_mapping(data, source=source, base_dir=base_dir)


def config_from_mapping(
    data: Mapping[str, Any], *, source: str = "<mapping>", base_dir: Path | None = None
) -> ExperimentConfig:
    """Validate a raw mapping (as parsed from YAML) into an :class:`ExperimentConfig`."""
    raw = dict(data)
    topo_source: dict[str, str] = {}
    topo = raw.get("topology")
    if isinstance(topo, Mapping) and "file" in topo:
        raw["topology"], topo_source = _merge_topology_file(topo, source, base_dir or Path.cwd())
    data_section = raw.get("data")
    if isinstance(data_section, Mapping) and isinstance(data_section.get("path"), str):
        # like topology files, a data file is found relative to the config file first
        found = resolve_path(data_section["path"], base_dir or Path.cwd())
        if found is not None:
            raw["data"] = {**data_section, "path": str(found.resolve())}
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        raise _config_error(exc, source, topo_source) from None


def apply_override(data: dict[str, Any], item: str, source: str) -> None:
    """Apply one ``path.to.key=value`` override in place; the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like path.to.key=value", source="--set")
    key, _, text = item.partition("=")
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {item!r} has an empty key part", source="--set")
    try:
        value = parse_yaml(text, "--set")
    except ConfigError:
        raise ConfigError(f"cannot parse value {text!r}", source="--set", key=key) from None
    if parts == ["topology", "file"]:
        # A new topology file replaces the whole section: keys written inline for the old
        # topology (its kind, its n) would otherwise silently override the file's.
        data["topology"] = {"file": value}
        return
    node: dict[str, Any] = data
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise ConfigError(f"{where} is not a section, cannot set {key}", source="--set")
        node = child
    node[parts[-1]] = value


def _parse_yaml(text: str, source: str) -> dict[str, Any]:
    return _as_mapping(parse_yaml(text, source), source)


def _as_mapping(data: Any, source: str) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a mapping of sections", source=source)
    return data


def resolve_path(name: str, base_dir: Path) -> Path | None:
    """Find ``name`` relative to ``base_dir``, then to the working directory."""
    p = Path(name).expanduser()
    candidates = [p] if p.is_absolute() else list(dict.fromkeys([base_dir / p, Path.cwd() / p]))
    return next((c for c in candidates if c.is_file()), None)


def _merge_topology_file(
    inline: Mapping[str, Any], source: str, base_dir: Path
) -> tuple[dict[str, Any], dict[str, str]]:
    name = inline["file"]
    if not isinstance(name, str):
        raise ConfigError("must be a path", source=source, key="topology.file")
    path = resolve_path(name, base_dir)
    if path is None:
        raise ConfigError(
            f"topology file {name!r} not found (looked in "
            f"{' and '.join(sorted({str(base_dir), str(Path.cwd())}))})",
            source=source,
            key="topology.file",
        )
    from_file = read_yaml(path)
    if not isinstance(from_file, dict):
        raise ConfigError("a topology file must be a mapping of topology keys", source=str(path))
    merged = {**from_file, **{k: v for k, v in inline.items() if k != "file"}}
    # Remember which keys came from the file, so an error there names that file; an error in
    # an inline key (or in the topology as a whole) names the experiment file.
    origins = {k: str(path) for k in from_file if k not in inline}
    return merged, {"": str(path), **origins}


def _config_error(exc: ValidationError, source: str, topo_source: Mapping[str, str]) -> ConfigError:
    err = exc.errors()[0]
    loc = [str(x) for x in err["loc"]]
    key = ".".join(loc) or None
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "missing":
        msg = "required key is missing"
    where = source
    if loc and loc[0] == "topology" and topo_source:
        if len(loc) > 1 and loc[1] in topo_source:
            where = topo_source[loc[1]]
        elif len(loc) == 1:
            where = f"{source} (topology from {topo_source['']})"
    return ConfigError(msg, source=where, key=key)


def protection(cfg: ExperimentConfig) -> str:
    """The run's protection mode as the reports name it: plain, aead, secret-share, secagg,
    he, dp (update-level) or dp-sgd (per-example), or their combination
    (``secagg+aead+dp``)."""
    sec = cfg.security
    parts = []
    if sec.secure_aggregation or sec.homomorphic:
        parts.append(str(sec.aggregation))
    if sec.channel == "aead":
        parts.append("aead")
    if cfg.dp.enabled:
        parts.append("dp" if cfg.dp.mode == "update" else "dp-sgd")
    return "+".join(parts) or "plain"
