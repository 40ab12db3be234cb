"""Build an experiment from its config, run it, and keep its results.

This is the shell around the pure core: it resolves the config, derives every random stream
from the one run seed, builds topology, data shards, models, trainers and protocol
instances, hands them to a runtime, and records the run directory (see
:mod:`p2pfed.results`).

Building is split so peers are created where they live: :func:`build_world` makes the shared,
read-only parts once (config with automatic choices resolved, topology, data, shards, initial
model, time models, codec), and :func:`build_peers` makes given peers' trainers and protocol
states from it — all peers in this process for ``runtime.kind: local``, a block per PeerHost
actor for ``runtime.kind: ray`` (:mod:`p2pfed.runtime.ray_runtime`).

Seeding: ``SeedSequence(seed)`` spawns one child per concern (topology, data split,
partition, model init, network, compute cost, peers) and the peers' child spawns one stream
per peer, so adding a peer or a concern never shifts another's draws. All peers start from
the same initial model, as in D-PSGD and its successors.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import datetime as _dt
import math
import time
import traceback
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from p2pfed import checkpoint
from p2pfed.adversary import AdversaryConfig, FrameLog
from p2pfed.adversary.active import ActiveRelease, active_candidates, active_seed
from p2pfed.adversary.config import DATA_BEHAVIOURS, RECONSTRUCTIONS
from p2pfed.adversary.poisoner import Board, OnPath, Poisoner
from p2pfed.availability import Availability, read_trace
from p2pfed.config import (
    DEFAULT_SOURCE,
    ExperimentConfig,
    apply_override,
    config_from_mapping,
    load_config,
    protection,
)
from p2pfed.crypto.fixedpoint import FixedPoint
from p2pfed.crypto.links import link_guard
from p2pfed.crypto.secagg import pair_key_directory, pair_keys, pair_seed
from p2pfed.data import Dataset, label_histograms, load_dataset, partition
from p2pfed.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    ModelError,
    ProtocolError,
    TopologyError,
)
from p2pfed.models import build_model, get_flat
from p2pfed.models.flat import model_at
from p2pfed.poison.data import flip_labels, poison_dataset, triggered_test_set
from p2pfed.privacy.accountant import gaussian_epsilon, sampled_gaussian_epsilon
from p2pfed.progress import ProgressReporter
from p2pfed.protocol import FED_PROTOCOLS, PROTOCOLS, Codec, build_fed_protocol, build_protocol
from p2pfed.protocol.core import Message, Protocol
from p2pfed.protocol.gossip import check_pairwise
from p2pfed.protocol.he import (
    CKKS_COSTS,
    HE_GOSSIP_MESSAGES,
    HE_MESSAGES,
    MIN_SUMMANDS,
    PAILLIER_COSTS,
    WEIGHT_SCALE,
    HeFedAvg,
    HeGossip,
    HeKeys,
    ckks_keys,
    paillier_keys,
)
from p2pfed.protocol.secure import (
    SecureDPSGD,
    SecureFedAvg,
    SecureSum,
    check_groups,
    secure_settings,
)
from p2pfed.results import (
    FINISHED,
    RunRecorder,
    final_accuracy,
    finite,
    read_metrics,
    read_summary,
)
from p2pfed.robust import RobustError, check
from p2pfed.robust.buckets import num_buckets
from p2pfed.runtime.base import Interceptor, PeerReport, PeerSlot, RunObserver, Tap
from p2pfed.runtime.local import LocalRuntime, RunOutcome
from p2pfed.timing import CostModel, NetworkModel
from p2pfed.topology import TopologySchedule, build_schedule
from p2pfed.training import Evaluator, LocalTrainer, samples_per_round

# Append new concerns at the end: SeedSequence children keep their streams when more follow.
_STREAMS = (
    "topology",
    "data",
    "partition",
    "model",
    "network",
    "cost",
    "peers",
    "eval",
    "keys",
    "he",
    "adversary",
    "availability",
)
# msgpack envelope and field names around a model vector, for timeout estimates only
_FRAME_OVERHEAD = 128
# more evaluation ticks than this is a mistake, not a measurement
_MAX_EVAL_TICKS = 5000


@dataclass(frozen=True)
class Result:
    """What :func:`run` returns: where the run lives and how it ended."""

    run_dir: Path
    config: ExperimentConfig
    summary: dict[str, Any]

    @property
    def mean_accuracy(self) -> float:
        return float(self.summary["final"]["mean_acc"])

    def metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.run_dir)


@dataclass
class World:
    """The parts of an experiment every host shares (read-only during a run): the resolved
    config, topology, data and shards, the initial model, and the fresh time models.

    A host builds only its own peers from it with :func:`build_peers`, so peer state is
    created where it lives; everything here derives from the run seed, so every host that
    rebuilds a part gets the same bits.
    """

    config: ExperimentConfig  # resolved: automatic choices filled in
    schedule: TopologySchedule
    dataset: Dataset
    shards: list[np.ndarray]
    template: torch.nn.Module  # the initial model every peer starts from
    params0: np.ndarray  # (P,) float32, its flat parameters
    network: NetworkModel
    cost: CostModel
    codec: Codec
    #: every participant's long-term public pair key (secure aggregation only)
    pair_publics: dict[int, bytes] | None = None
    #: the keys the HE setup dealt (aggregation he only): each peer takes its own part
    he_keys: HeKeys | None = field(default=None, repr=False)
    #: when each peer is up (None: always)
    availability: Availability | None = None

    @property
    def num_peers(self) -> int:
        return self.config.num_peers

    @property
    def participants(self) -> int:
        """Peers plus the coordinator, when the protocol has one (its id is ``num_peers``)."""
        return self.num_peers + self.config.has_coordinator

    @property
    def total_rounds(self) -> int:
        """Rounds every participant runs, summed (what progress counts to)."""
        return self.config.protocol.rounds * self.participants

    @property
    def num_params(self) -> int:
        return int(self.params0.size)


@dataclass
class Built:
    """Everything an in-process runtime needs, built from one config and one seed."""

    world: World
    peers: list[PeerSlot]
    evaluator: Evaluator

    @property
    def config(self) -> ExperimentConfig:
        return self.world.config

    @property
    def schedule(self) -> TopologySchedule:
        return self.world.schedule

    @property
    def dataset(self) -> Dataset:
        return self.world.dataset

    @property
    def shards(self) -> list[np.ndarray]:
        return self.world.shards

    @property
    def codec(self) -> Codec:
        return self.world.codec

    @property
    def network(self) -> NetworkModel:
        return self.world.network

    @property
    def cost(self) -> CostModel:
        return self.world.cost

    @property
    def num_params(self) -> int:
        return self.world.num_params


def _int_seed(ss: np.random.SeedSequence) -> int:
    return int(ss.generate_state(1, dtype=np.uint32)[0])


def _streams(seed: int) -> dict[str, np.random.SeedSequence]:
    """Fresh seed sequences, one per concern (fresh: ``spawn`` advances a sequence)."""
    children = np.random.SeedSequence(seed).spawn(len(_STREAMS))
    return dict(zip(_STREAMS, children, strict=True))


def topology_seed(seed: int) -> int:
    """The seed a run of ``seed`` builds its topology schedule with (reports rebuild it)."""
    return _int_seed(_streams(seed)["topology"])


def resolve_device(requested: str) -> str:
    """``cpu`` / ``cuda`` / ``auto`` -> the torch device string peers will use."""
    available = torch.cuda.is_available()
    if requested == "auto":
        return "cuda" if available else "cpu"
    if requested == "cuda" and not available:
        raise ConfigError(
            "cuda requested but torch sees no GPU (use cpu or auto)", key="runtime.device"
        )
    return requested


@contextlib.contextmanager
def _section(key: str) -> Iterator[None]:
    """Turn a failure while building one part of the experiment into a ConfigError naming
    that part of the config (the run has not started: the config asked for the impossible)."""
    try:
        yield
    except ConfigError:
        raise
    except (TopologyError, DataError, ModelError, ProtocolError, RobustError) as exc:
        raise ConfigError(str(exc), key=key) from None


def build_world(config: ExperimentConfig) -> World:
    """Build the shared parts of an experiment and resolve its automatic choices."""
    n = config.num_peers
    streams = _streams(config.seed)
    with _section("topology"):
        schedule = build_schedule(config.topology, seed=topology_seed(config.seed))
    with _section("data"):
        dataset = load_dataset(config.data, n, np.random.default_rng(streams["data"]))
    with _section("partition"):
        shards = partition(
            dataset.y_train, n, config.partition, np.random.default_rng(streams["partition"])
        )
    with _section("model"):
        try:
            template = build_model(
                config.model,
                dataset.num_features,
                dataset.num_classes,
                dataset.image_shape,
                _int_seed(streams["model"]),
            )
        except (RuntimeError, MemoryError) as exc:  # e.g. torch cannot allocate the weights
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise ModelError(f"cannot build the model: {reason}") from None
    params0 = get_flat(template)
    cost = CostModel(config.time, n, streams["cost"])
    # the coordinator (id n) sends too; it never trains, so the cost model has only peers
    participants = n + config.has_coordinator
    network = NetworkModel(config.network, participants, streams["network"])
    tcfg = config.training
    if any(len(s) == 0 for s in shards):
        empty = [i for i, s in enumerate(shards) if len(s) == 0]
        raise ConfigError(
            f"peers {empty[:10]} got no training samples; use fewer peers or another scheme",
            key="partition",
        )
    samples = [samples_per_round(len(s), tcfg) for s in shards]
    with _section("protocol.robust"):
        _check_robust(config, schedule)
    for k, adv in config.observers:
        if adv.active is None or adv.peer is None:
            continue
        if not schedule.at(adv.active.round).out_neighbours(adv.peer):
            raise ConfigError(
                f"peer {adv.peer} has no out-neighbour at round {adv.active.round} to attack",
                key=f"adversaries[{k}].active",
            )
    if config.security.homomorphic:
        config = _resolve_he(config, params0.size)  # the scheme sizes frames and timeouts
    config = _resolve_automatic(config, schedule, samples, cost, network, params0.size)
    pair_publics = None
    if config.security.secure_aggregation:
        with _section("security"):
            _check_security(config, schedule)
        pair_publics = pair_key_directory(_key_seed(config.seed), range(participants))[1]
    he_keys = None
    if config.security.homomorphic:
        if config.protocol.kind == "fedavg":
            max_weight = sum(samples)  # FedAvg weights by samples
        else:
            with _section("security.aggregation"):
                _check_he_gossip(schedule, config.protocol.rounds)
            max_weight = WEIGHT_SCALE + n  # integer mixing weights (rounding adds < 1 each)
        with _section("security.he"):
            he_keys = _he_keys(config, max_weight, streams["he"])
    codec = Codec(_messages(config), vector_size=params0.size)
    return World(
        config,
        schedule,
        dataset,
        shards,
        template,
        params0,
        network,
        cost,
        codec,
        pair_publics,
        he_keys,
        _availability(config, streams["availability"]),
    )


def _availability(config: ExperimentConfig, seed: np.random.SeedSequence) -> Availability | None:
    """The run's availability model; a trace file is read (and checked) here."""
    acfg = config.availability
    if acfg.kind == "always":
        return None
    trace = None
    if acfg.kind == "trace":
        assert acfg.trace is not None
        try:
            trace = read_trace(acfg.trace)
        except (OSError, ValueError) as exc:
            raise ConfigError(str(exc), key="availability.trace") from None
        bad = sorted({s.peer for s in trace if s.peer >= config.num_peers})
        if bad:
            raise ConfigError(
                f"the trace names peers {bad[:8]}, but the run has peers 0..{config.num_peers - 1}",
                key="availability.trace",
            )
    return Availability(acfg, config.num_peers, seed, trace=trace)


def _check_robust(config: ExperimentConfig, schedule: TopologySchedule) -> None:
    """The robust rule must fit every pool it will aggregate: each peer's neighbourhood (its
    own model and its in-neighbours, in every step of the schedule) or the FedAvg cohort."""
    rule = config.protocol.robust
    if rule.rule == "mean":
        return
    if config.protocol.kind == "gossip":
        check_pairwise(rule)
        return
    if config.protocol.kind == "fedavg":
        n = config.num_peers
        # with buckets the rule sees one input per bucket, and a Byzantine client taints one
        check(rule, n if rule.bucket_size is None else num_buckets(n, rule.bucket_size))
        return
    steps = schedule.period or 1 if not schedule.is_static else 1
    smallest = min(
        len(schedule.at(r).in_neighbours(i)) + 1
        for r in range(min(steps, config.protocol.rounds))
        for i in range(config.num_peers)
    )
    check(rule, smallest)


def _check_he_gossip(schedule: TopologySchedule, rounds: int) -> None:
    """he-gossip hands a peer the sum of its in-neighbours: one neighbour alone would be
    that neighbour's model, so every peer needs at least two."""
    steps = 1 if schedule.is_static else min(rounds, schedule.period or rounds)
    for r in range(steps):
        topo = schedule.at(r)
        for i in range(topo.n):
            k = len(topo.in_neighbours(i))
            if k < MIN_SUMMANDS:
                raise ProtocolError(
                    f"he-gossip needs at least {MIN_SUMMANDS} in-neighbours per peer (a sum of "
                    f"one is that neighbour's model): peer {i} has {k} in round {r}"
                )


def _resolve_he(config: ExperimentConfig, num_params: int) -> ExperimentConfig:
    """``scheme: auto`` picks packed Paillier up to ``auto_paillier_max`` parameters, CKKS
    above (Paillier's cost grows ~100x faster per value); the resolved config says which."""
    sec = config.security
    he = sec.he
    if he.scheme != "auto":
        return config
    scheme = (
        "paillier" if num_params <= he.auto_paillier_max or he.key_mode == "threshold" else "ckks"
    )
    he = he.model_copy(update={"scheme": scheme})
    return config.model_copy(update={"security": sec.model_copy(update={"he": he})})


def _he_keys(config: ExperimentConfig, total_weight: int, seed: np.random.SeedSequence) -> HeKeys:
    """The HE setup: keys dealt from the run seed (simulation caveat as for secagg).
    ``total_weight`` (the largest total integer weight of an aggregate) sizes the packing's
    padding."""
    he = config.security.he
    if he.scheme == "ckks":
        return ckks_keys(
            clip=he.clip, poly_modulus_degree=he.poly_modulus_degree, scale_bits=he.scale_bits
        )
    return paillier_keys(
        np.random.default_rng(seed),
        num_clients=config.num_peers,
        key_bits=he.key_bits,
        clip=he.clip,
        value_bits=he.value_bits,
        max_weight=total_weight,
        key_mode=he.key_mode,
        threshold=he.threshold,
    )


def _he_compute_estimate(config: ExperimentConfig, num_params: int) -> float:
    """Reference seconds of one round's HE work on the critical path (a client's encrypt and
    decrypt, or partial and combine, plus the aggregation of every update), for timeout
    estimates; the protocols charge the exact figures."""
    he, n = config.security.he, config.num_peers
    if he.scheme == "ckks":
        c = CKKS_COSTS
        return num_params * (c["encrypt"] + c["decrypt"] + n * c["aggregate"])
    c = PAILLIER_COSTS
    slot_bits = 8 * math.ceil((he.value_bits + 16) / 8)
    cts = math.ceil(num_params / ((he.key_bits - 1) // slot_bits))
    if he.key_mode == "threshold":
        t = he.threshold or n
        client = c["encrypt"] + c["partial"] + 2 * t * c["combine"]
    else:
        client = c["encrypt_crt"] + c["decrypt"]
    return cts * (he.key_bits / 2048) ** 2.8 * (client + n * c["aggregate"])


def _he_bytes_per_value(config: ExperimentConfig) -> float:
    """Wire bytes per model value under HE (for timeout estimates)."""
    he = config.security.he
    if he.scheme == "ckks":
        return 85.0  # measured: ~83 bytes a value fresh, ~59 once weighted
    slot_bits = 8 * math.ceil((he.value_bits + 16) / 8)  # padding for up to 2^16 samples
    return (2 * he.key_bits / 8) / ((he.key_bits - 1) // slot_bits)


def _key_seed(seed: int) -> bytes:
    """16 bytes from the run seed for every peer's long-term keys (simulation: see the
    caveat in :mod:`p2pfed.crypto.secagg`)."""
    return _streams(seed)["keys"].generate_state(4, dtype=np.uint32).tobytes()


def _messages(config: ExperimentConfig) -> tuple[type[Message], ...]:
    kind = config.protocol.kind
    if config.security.homomorphic:
        return HE_MESSAGES if kind == "fedavg" else HE_GOSSIP_MESSAGES
    if config.security.secure_aggregation:
        return SecureFedAvg.messages if kind == "fedavg" else SecureDPSGD.messages
    return PROTOCOLS[kind].messages


def _check_security(config: ExperimentConfig, schedule: TopologySchedule) -> None:
    """Group sizes, ring capacity and share settings, before any peer starts."""
    pcfg, n = config.protocol, config.num_peers
    try:
        if pcfg.kind == "fedavg":
            size = pcfg.robust.bucket_size if pcfg.robust.rule != "mean" else None
            b = 1 if size is None else max(n // size, 1)
            check_groups(config.security, {n: sorted({n // b, -(-n // b)})}, scope="star")
        else:
            steps = 1 if schedule.is_static else min(pcfg.rounds, schedule.period or pcfg.rounds)
            rounds = range(steps)
            groups: dict[int, list[int]] = {i: [] for i in range(n)}
            for r in rounds:
                topo = schedule.at(r)
                for i in range(n):
                    groups[i].append(len(topo.in_neighbours(i)))
            check_groups(config.security, groups, scope="nbhd")
    except ValueError as exc:
        raise ConfigError(str(exc), key="security.aggregation") from None


def build_peers(world: World, ids: Sequence[int], device: str) -> list[PeerSlot]:
    """Build the peers ``ids`` (trainer on ``device``, protocol, initial state)."""
    config, n = world.config, world.num_peers
    # one (training, protocol) pair of streams per peer
    per_peer = _streams(config.seed)["peers"].spawn(n)
    tcfg = config.training
    dataset = world.dataset
    peers: list[PeerSlot] = []
    overlays = _overlays(world, ids)
    for i in ids:
        if i == n:  # the coordinator: no data, no trainer, nothing random
            with _section("protocol"):
                protocol = _protocol(world, i, 0)
            peers.append(PeerSlot(i, protocol, protocol.initial_state(world.params0), None))
            continue
        train_seed, protocol_seed = per_peer[i].spawn(2)
        shard = world.shards[i]
        x, y = _poisoned_shard(world, i, dataset.x_train[shard], dataset.y_train[shard])
        with _section("data"):
            trainer = LocalTrainer(
                copy.deepcopy(world.template),  # every peer starts from the same initial model
                x,
                y,
                tcfg,
                np.random.default_rng(train_seed),
                device=device,
                dp=config.dp,
            )
        trainer.release = _active_release(world, i, trainer)
        trainer.record = any(RECONSTRUCTIONS & set(a.chosen_attacks) for _, a in config.observers)
        with _section("protocol"):
            protocol = _protocol(world, i, _int_seed(protocol_seed))
        slot = PeerSlot(i, protocol, protocol.initial_state(world.params0), trainer)
        slot.initial = world.params0
        slot.overlay = overlays.get(i)
        peers.append(slot)
    return peers


def _overlays(world: World, ids: Sequence[int]) -> dict[int, Poisoner]:
    """The poisoners among ``ids``; colluders share one board (the Ray runtime keeps each
    colluding group on one host, so ``ids`` holds all of a group or none)."""
    out: dict[int, Poisoner] = {}
    sec = world.config.security
    hidden = sec.secure_aggregation or sec.homomorphic
    for _, cfg in world.config.poisoners:
        board = Board(cfg.peers)
        for p in cfg.peers:
            if p in ids and cfg.behaviour not in DATA_BEHAVIOURS:
                out[p] = Poisoner(
                    cfg, p, board, world.schedule, world.num_peers, before_masking=hidden
                )
    return out


def _poisoned_shard(
    world: World, peer: int, x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A data poisoner's shard: labels flipped, or a share of it stamped with the backdoor
    trigger and relabelled (its own seeded stream)."""
    for _, cfg in world.config.poisoners:
        if peer not in cfg.peers or cfg.data_poisoning is None:
            continue
        rng = np.random.default_rng([cfg.seed, peer, 1])
        if cfg.data_poisoning == "label_flip":
            return x, flip_labels(y, world.dataset.num_classes, fraction=cfg.fraction, rng=rng)
        shape = _image_shape(world)
        return poison_dataset(x, y, cfg.target_class, cfg.fraction, shape, rng)
    return x, y


def _image_shape(world: World) -> tuple[int, int, int]:
    """The data's image shape; tabular data counts as one row of pixels."""
    shape = world.dataset.image_shape
    return shape if shape is not None else (1, 1, world.dataset.num_features)


def _active_release(world: World, peer: int, trainer: LocalTrainer) -> ActiveRelease | None:
    """The release hook of a curious peer running the active attack, if ``peer`` is one."""
    for index, adv in world.config.observers:
        if adv.role == "curious_peer" and adv.peer == peer and adv.active is not None:
            cands = active_candidates(
                adv.active,
                peer,
                world.schedule,
                world.dataset,
                world.shards,
                active_seed(_streams(world.config.seed)["adversary"], index),
            )
            return ActiveRelease(adv.active, trainer.model, cands)
    return None


def _protocol(world: World, peer: int, seed: int) -> Protocol[Any]:
    pcfg, tcfg = world.config.protocol, world.config.training
    common: dict[str, Any] = {
        "rounds": pcfg.rounds,
        "seed": seed,
        "epochs": tcfg.local_epochs,
        "steps": tcfg.local_steps,
        "timeout": pcfg.timeout,
    }
    if world.config.security.secure_aggregation:
        return _secure_protocol(world, peer, seed)
    if world.config.security.homomorphic:
        return _he_protocol(world, peer, seed)
    if pcfg.kind in FED_PROTOCOLS:
        return build_fed_protocol(
            pcfg.kind,  # type: ignore[arg-type]
            peer,
            world.num_peers,
            min_fraction=pcfg.min_fraction,
            server_lr=pcfg.server_lr,
            alpha=pcfg.alpha,
            staleness=pcfg.staleness,
            staleness_exponent=pcfg.staleness_exponent,
            buffer_size=pcfg.buffer_size,
            robust=pcfg.robust,
            bucket_seed=world.config.seed,
            **common,
        )
    robust = pcfg.robust if pcfg.kind in ("dpsgd", "gossip") else None
    return build_protocol(pcfg.kind, peer, world.schedule, robust=robust, **common)  # type: ignore[arg-type]


def _secure_protocol(world: World, peer: int, seed: int) -> Protocol[Any]:
    cfg = world.config
    pcfg, tcfg, sec = cfg.protocol, cfg.training, cfg.security
    assert world.pair_publics is not None and pcfg.timeout is not None
    assert sec.phase_timeout is not None
    pair = pair_keys(peer, pair_seed(_key_seed(cfg.seed), peer), world.pair_publics)
    scope, dim = (
        ("star", world.num_params + 1) if pcfg.kind == "fedavg" else ("nbhd", world.num_params)
    )
    charge = sec.charge_compute and cfg.time.mode == "virtual"
    settings = secure_settings(sec, pcfg.timeout, sec.phase_timeout, scope, charge=charge)
    common: dict[str, Any] = {
        "rounds": pcfg.rounds,
        "seed": seed,
        "secure": SecureSum(peer, settings, pair, dim),
        "epochs": tcfg.local_epochs,
        "steps": tcfg.local_steps,
    }
    if pcfg.kind == "fedavg":
        return SecureFedAvg(
            peer,
            world.num_peers,
            max_weight=sec.max_weight,
            server_lr=pcfg.server_lr,
            robust=pcfg.robust,
            bucket_seed=cfg.seed,
            **common,
        )
    return SecureDPSGD(peer, world.schedule, **common)


def _he_protocol(world: World, peer: int, seed: int) -> Protocol[Any]:
    cfg = world.config
    pcfg, tcfg = cfg.protocol, cfg.training
    assert world.he_keys is not None and pcfg.timeout is not None
    backend = world.he_keys.backend(
        peer, world.num_peers, stochastic=cfg.security.stochastic_rounding
    )
    # wall time pays for the crypto in real seconds; virtual time charges reference costs
    charge = cfg.security.charge_compute and cfg.time.mode == "virtual"
    common: dict[str, Any] = {
        "rounds": pcfg.rounds,
        "seed": seed,
        "backend": backend,
        "params0": world.params0,
        "timeout": pcfg.timeout,
        "epochs": tcfg.local_epochs,
        "steps": tcfg.local_steps,
        "charge": charge,
    }
    if pcfg.kind == "dpsgd":
        return HeGossip(peer, world.schedule, **common)
    return HeFedAvg(peer, world.num_peers, min_fraction=pcfg.min_fraction, **common)


def build_evaluator(world: World, device: str) -> Evaluator:
    """The evaluator on the (capped, seeded) test set."""
    dataset = world.dataset
    x_test, y_test = dataset.x_test, dataset.y_test
    cap = world.config.eval.max_test_samples
    if cap is not None and len(y_test) > cap:
        rng = np.random.default_rng(_streams(world.config.seed)["eval"])
        keep = np.sort(rng.choice(len(y_test), cap, replace=False))
        x_test, y_test = x_test[keep], y_test[keep]
    return Evaluator(copy.deepcopy(world.template), x_test, y_test, device=device)


def build(config: ExperimentConfig) -> Built:
    """Build every part of an experiment for one process (no I/O, no run)."""
    device = resolve_device(config.runtime.device)
    world = build_world(config)
    peers = build_peers(world, range(world.participants), device)
    return Built(world, peers, build_evaluator(world, device))


def _resolve_automatic(
    config: ExperimentConfig,
    schedule: TopologySchedule,
    samples: Sequence[int],
    cost: CostModel,
    network: NetworkModel,
    num_params: int,
) -> ExperimentConfig:
    """Fill in the choices left to p2pfed (timeout, evaluation interval), so the resolved
    config records the values actually used."""
    if config.time.mode == "wall":
        return _resolve_wall(config)
    per_round = [cost.expected_train_time(i, s) for i, s in enumerate(samples)]
    sec = config.security
    # a secure session's vectors are ring elements: 8 bytes a value in Z_2^64
    width = 8.0 if sec.secure_aggregation and sec.ring_bits == 64 else 4.0
    if sec.homomorphic:
        width = _he_bytes_per_value(config)
    frame = math.ceil(width * num_params) + _FRAME_OVERHEAD
    delay = network.expected_delay(frame)
    # A peer's frames leave one after another on its uplink: the last of d frames (or of d
    # gossip replies at a hub) waits for the d - 1 before it.
    pcfg = config.protocol
    # ... and a coordinator sends to every client in turn
    fanout = config.num_peers if config.has_coordinator else schedule.at(0).degree_stats()[2]
    queue = max(fanout - 1, 0) * network.serialise_time(frame)
    slowest = max(per_round)
    if sec.homomorphic and sec.charge_compute:
        slowest += _he_compute_estimate(config, num_params)
    if pcfg.timeout is None and pcfg.kind != "pushsum":
        # D-PSGD and a coordinator wait for training; a gossip reply needs only a round trip.
        wait = 10 * delay + 2 * queue
        if pcfg.kind != "gossip":
            wait += 2 * slowest
        pcfg = pcfg.model_copy(update={"timeout": _round_up(wait)})
    if sec.secure_aggregation and sec.phase_timeout is None:
        # a later phase of a secure session is one round trip with every client
        sec = sec.model_copy(update={"phase_timeout": _round_up(10 * delay + 2 * queue)})
    ecfg = config.eval
    trips = 2 if pcfg.kind == "gossip" or config.has_coordinator else 1
    # one-way trips of a secure session: offer, seeds, shares; or 7 for secagg's four phases
    trips += {"plain": 0, "secret-share": 2, "secagg": 6, "he": 0}[sec.aggregation]
    if sec.homomorphic and sec.he.key_mode == "threshold":
        trips += 2  # partial decryptions to the coordinator and back
    round_time = slowest + queue + trips * delay
    if ecfg.interval is None:
        ecfg = ecfg.model_copy(update={"interval": _round_up(round_time)})
    else:
        # every tick scores every peer on the test set: refuse intervals that would make
        # evaluation, not training, the whole run
        ticks = pcfg.rounds * round_time / ecfg.interval
        if ticks > _MAX_EVAL_TICKS:
            raise ConfigError(
                f"{ecfg.interval}s would evaluate about {ticks:,.0f} times (a round takes "
                f"about {round_time:.3g}s); use at least "
                f"{_round_up(pcfg.rounds * round_time / _MAX_EVAL_TICKS)}",
                key="eval.interval",
            )
    return config.model_copy(update={"protocol": pcfg, "eval": ecfg, "security": sec})


#: wall-time defaults: real training time is unknown before the run, so waits are generous
#: (a timeout only costs time when a message is really lost)
WALL_TIMEOUT_S = {"gossip": 10.0, "dpsgd": 30.0, "fedavg": 30.0, "fedasync": 30.0, "fedbuff": 30.0}
WALL_EVAL_INTERVAL_S = 1.0
WALL_PHASE_TIMEOUT_S = 10.0


def _resolve_wall(config: ExperimentConfig) -> ExperimentConfig:
    """Under wall time, timeouts and the evaluation interval are wall seconds."""
    pcfg, ecfg = config.protocol, config.eval
    if pcfg.timeout is None and pcfg.kind in WALL_TIMEOUT_S:
        pcfg = pcfg.model_copy(update={"timeout": WALL_TIMEOUT_S[pcfg.kind]})
    if ecfg.interval is None:
        ecfg = ecfg.model_copy(update={"interval": WALL_EVAL_INTERVAL_S})
    sec = config.security
    if sec.secure_aggregation and sec.phase_timeout is None:
        sec = sec.model_copy(update={"phase_timeout": WALL_PHASE_TIMEOUT_S})
    return config.model_copy(update={"protocol": pcfg, "eval": ecfg, "security": sec})


def _round_up(x: float) -> float:
    """Round up to 3 significant digits, so resolved configs read cleanly."""
    if x <= 0 or not math.isfinite(x):
        return x
    scale = 10 ** (math.floor(math.log10(x)) - 2)
    return float(f"{math.ceil(x / scale) * scale:.3g}")  # no binary noise in configs


#: what a run writes into its directory (and what --overwrite removes first)
RUN_FILES = (
    "config.yaml",
    "events.jsonl",
    "metrics.jsonl",
    "edges.csv",
    "label_histograms.json",
    "summary.json",
    "attacks.json",
    "availability.csv",
    "checkpoint.pt",
    "report.html",
)


def _run_dir(config: ExperimentConfig, out: str | Path | None, overwrite: bool) -> Path:
    chosen = out if out is not None else config.output.dir
    if chosen is not None:
        path = Path(chosen)
        if path.is_dir() and any((path / f).exists() for f in RUN_FILES):
            if not overwrite:
                raise ConfigError(
                    f"{path} already holds a run; choose another directory or pass --overwrite",
                    source="--out" if out is not None else None,
                    key=None if out is not None else "output.dir",
                )
            for f in RUN_FILES:
                (path / f).unlink(missing_ok=True)
            for png in path.glob("attack-*.png"):
                png.unlink()
        return path
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{config.name}-{stamp}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    return path


def run(
    config: ExperimentConfig | str | Path | Mapping[str, Any] | None = None,
    *,
    out: str | Path | None = None,
    overrides: Sequence[str] = (),
    taps: Sequence[Tap] = (),
    progress: str | None = None,
    overwrite: bool = False,
    interceptors: Sequence[Interceptor] = (),
) -> Result:
    """Run one experiment and return its :class:`Result`.

    ``config`` is a config object, a YAML path, a raw mapping, or ``None`` for the embedded
    default. ``taps`` see every frame that enters the wire (adversaries and tests use them);
    ``interceptors`` sit on the path and may drop, alter, replay or inject frames (see
    :class:`~p2pfed.runtime.engine.PeerEngine`).
    A run directory that already holds a run is refused unless ``overwrite`` is set.
    """
    if isinstance(config, ExperimentConfig):
        if overrides:
            raise ValueError("overrides apply to files and mappings, not to config objects")
        cfg, source = config, "<config>"
    elif isinstance(config, Mapping):
        data = dict(config)
        for item in overrides:
            apply_override(data, item, "<mapping>")
        cfg, source = config_from_mapping(data), "<mapping>"
    else:
        cfg = load_config(config, overrides)
        source = str(config) if config is not None else DEFAULT_SOURCE

    wall0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.runtime.torch_threads)
    try:
        return _run(cfg, source, out, taps, progress, wall0, overwrite, interceptors)
    finally:
        torch.set_num_threads(threads)


#: the latest checkpoint of a run, in its run directory
CHECKPOINT_FILE = "checkpoint.pt"


def resume(
    run_dir: str | Path,
    *,
    taps: Sequence[Tap] = (),
    progress: str | None = None,
    interceptors: Sequence[Interceptor] = (),
) -> Result:
    """Go on with the interrupted run in ``run_dir`` (``p2pfed run --resume RUN_DIR``).

    The run is rebuilt from the directory's resolved ``config.yaml`` and continues from its
    last checkpoint (``checkpoint.every``): the logs are cut back to where the checkpoint
    was taken and written on from there, so a run resumed under virtual time ends with
    exactly the metrics an uninterrupted one would have. A run killed before its first
    checkpoint starts again from the beginning. Taps and interceptors given to the
    original :func:`run` must be given again (they are not part of a checkpoint). A run that
    finished, and a checkpoint written under another config, are refused with a
    :class:`~p2pfed.errors.CheckpointError`.
    """
    path = Path(run_dir)
    config_path = path / "config.yaml"
    if not config_path.is_file():
        raise CheckpointError(f"{path} holds no run to resume (no config.yaml)")
    status = (read_summary(path) or {}).get("status")
    if status in FINISHED:
        raise CheckpointError(f"the run in {path} finished already (status {status})")
    cfg = load_config(config_path)
    ckpt = path / CHECKPOINT_FILE
    state = checkpoint.loads(checkpoint.read(ckpt)) if ckpt.is_file() else None
    if state is not None and state["config"] != cfg.to_yaml():
        raise CheckpointError(
            f"{config_path} changed since the checkpoint was written; resume needs the config "
            "the run started with"
        )
    wall0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.runtime.torch_threads)
    try:
        return _run(
            cfg, str(config_path), path, taps, progress, wall0, True, interceptors, resume=state
        )
    finally:
        torch.set_num_threads(threads)


class _Checkpoints:
    """Writes the run's checkpoint after every ``every``-th evaluation tick (virtual time).

    A checkpoint is two layers: an outer record (config text, next tick, the recorder's
    counters and log offsets — what resuming needs before anything is rebuilt) around the
    runtime's own state, pickled with the run's externals as references (see
    :mod:`p2pfed.checkpoint`)."""

    def __init__(
        self,
        run_dir: Path,
        every: int,
        recorder: RunRecorder,
        externals: Mapping[str, Any],
        extra: Mapping[str, Any],
        config_yaml: str,
    ):
        self.path = run_dir / CHECKPOINT_FILE
        self.every = every
        self.recorder = recorder
        self.externals = dict(externals)
        self.extra = dict(extra)
        self.config_yaml = config_yaml
        self.written = 0

    def due(self, evaluations: int) -> bool:
        """After ``evaluations`` ticks (the one at time 0 included)?"""
        return self.every > 0 and evaluations > 1 and (evaluations - 1) % self.every == 0

    def save(self, runtime_state: Mapping[str, Any], next_tick: float) -> None:
        inner = checkpoint.dumps({**runtime_state, **self.extra}, self.externals)
        outer = checkpoint.dumps(
            {
                "config": self.config_yaml,
                "next_tick": next_tick,
                "recorder": self.recorder.checkpoint_state(),
                "runtime": inner,
            }
        )
        checkpoint.write(self.path, outer)
        self.written += 1
        self.recorder.log.info("checkpoint_written", t=next_tick, bytes=len(outer))

    def load(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """The runtime's part of a checkpoint read by :func:`resume`."""
        inner: dict[str, Any] = checkpoint.loads(state["runtime"], self.externals)
        return inner


def _run(
    cfg: ExperimentConfig,
    source: str,
    out: str | Path | None,
    taps: Sequence[Tap],
    progress: str | None,
    wall0: float,
    overwrite: bool,
    interceptors: Sequence[Interceptor] = (),
    resume: Mapping[str, Any] | None = None,
) -> Result:
    logs = adversary_logs(cfg)
    pairs = [(adv, log) for (_, adv), log in zip(cfg.observers, logs, strict=True) if log]
    wire = [log for adv, log in pairs if _on_wire(adv)]
    inbox = [log for adv, log in pairs if not _on_wire(adv)]
    try:
        world = build_world(cfg)
        built_at = time.perf_counter()
        on_path = [OnPath(a, world.codec) for _, a in cfg.on_path]
        runtime = _make_runtime(
            world, [*taps, *wire], [*interceptors, *on_path], inbox, restoring=resume is not None
        )
        started_at = time.perf_counter()
    except ConfigError as exc:
        if exc.source is not None:
            raise
        raise ConfigError(exc.message, source=source, key=exc.key) from None
    cfg = world.config
    try:
        run_dir = (
            Path(out) if resume is not None and out is not None else _run_dir(cfg, out, overwrite)
        )
    except ConfigError as exc:
        runtime.close()
        if exc.source is not None:
            raise
        raise ConfigError(exc.message, source=source, key=exc.key) from None
    run_id = run_dir.name
    recorder = RunRecorder(
        run_dir, run_id, cfg.output.log_level, resume["recorder"] if resume else None
    )
    checkpoints = _Checkpoints(
        run_dir,
        cfg.checkpoint.every,
        recorder,
        {
            "observer": recorder,
            **{f"tap{k}": tap for k, tap in enumerate(taps)},
            **{f"interceptor{k}": icp for k, icp in enumerate(interceptors)},
        },
        {"logs": logs},
        cfg.to_yaml(),
    )
    restored: dict[str, Any] | None = None
    if resume is not None:
        try:
            restored = checkpoints.load(resume)
        except BaseException:
            runtime.close()
            recorder.close()
            raise
        logs = restored.pop("logs")
        recorder.log.info("run_resumed", t=resume["next_tick"], checkpoint=CHECKPOINT_FILE)
    else:
        (run_dir / CHECKPOINT_FILE).unlink(missing_ok=True)
        recorder.write_config(cfg.to_yaml(), header=f"# resolved config of run {run_id}\n")
        recorder.write_label_histograms(
            label_histograms(world.dataset.y_train, world.shards, world.dataset.num_classes)
        )
    recorder.log.info(
        "run_started" if resume is None else "run_restarted",
        t=0.0,
        peers=cfg.num_peers,
        topology=world.schedule.name,
        spectral_gap=round(float(world.schedule.spectral_gap), 6),
        protocol=cfg.protocol.kind,
        params=world.num_params,
        seed=cfg.seed,
        runtime=cfg.runtime.kind,
    )
    outcome: RunOutcome | None = None
    reports: list[PeerReport] = []
    summary: dict[str, Any] = {}
    failure: BaseException | None = None
    timings = {  # wall seconds: building the experiment, starting the runtime, running it
        "build_s": round(built_at - wall0, 3),
        "start_s": round(started_at - built_at, 3),
    }
    try:
        with ProgressReporter(progress or cfg.output.progress, cfg.name) as bar:  # type: ignore[arg-type]
            recorder.progress_hook = bar.update
            outcome = runtime.run(
                recorder,
                checkpoints,
                restored,
                resume["next_tick"] if resume is not None else None,
            )
        timings["run_s"] = round(time.perf_counter() - started_at, 3)
    except BaseException as exc:
        summary = _summary(world, runtime, recorder, None, time.perf_counter() - wall0)
        summary["status"] = "failed"
        summary["error"] = f"{type(exc).__name__}: {exc}"
        summary["failed_at"] = _failed_at(exc, runtime.now)
        summary["timings"] = timings
        recorder.log.error(
            "run_failed", t=runtime.now, error=summary["error"], where=summary["failed_at"]["where"]
        )
        failure = exc
        raise
    else:
        summary = _summary(world, runtime, recorder, outcome, time.perf_counter() - wall0)
        if cfg.poisoners or cfg.on_path or cfg.robust_rule != "mean":
            summary["robustness"] = _robustness(world, outcome, summary)
        summary["timings"] = timings
        reports = runtime.peer_reports() if cfg.observers else []
        recorder.log.info("run_finished", t=outcome.virtual_time, **finite(summary["final"]))
        if cfg.observers:  # not finished until its attacks are: a kill now leaves it to resume
            summary["status"] = "analysing"
    finally:
        try:
            runtime.close()
        finally:
            try:
                recorder.write_edges()
                recorder.write_summary(summary)
            finally:
                recorder.close()
                if isinstance(failure, Exception):  # not on Ctrl-C: the user wants out
                    _write_report(cfg, recorder, summary)
    if cfg.observers and outcome is not None:
        # after the runtime let go of its actors; the run's own results are on disk already
        attacked_at = time.perf_counter()
        try:
            summary["attacks"] = _attacks(world, logs, outcome, reports, run_dir)
            summary["status"] = outcome.status
        except Exception as exc:
            summary["status"] = "failed"
            summary["attacks_error"] = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            timings["attacks_s"] = round(time.perf_counter() - attacked_at, 3)
            summary["warnings"] = summary.get("warnings", []) + _attack_warnings(summary)
            recorder.write_summary(summary)
            if "attacks_error" in summary:
                _write_report(cfg, recorder, summary)
    _write_report(cfg, recorder, summary)
    return Result(run_dir=run_dir, config=cfg, summary=summary)


def _write_report(cfg: ExperimentConfig, recorder: RunRecorder, summary: dict[str, Any]) -> None:
    """``RUN_DIR/report.html`` (``output.report``), of a finished or a failed run. A report
    that cannot be drawn costs nothing measured: the run directory is complete by now, and
    the reason goes into the summary's warnings (which ``p2pfed run`` prints)."""
    if not cfg.output.report:
        return
    from p2pfed.report import write_report

    try:
        write_report(recorder.run_dir)
    except Exception as exc:
        summary["warnings"] = [
            *summary.get("warnings", []),
            f"the report could not be written: {type(exc).__name__}: {exc}",
        ]
        recorder.write_summary(summary)


def _failed_at(exc: BaseException, now: float) -> dict[str, Any]:
    """Where a run failed: its time (virtual or wall run seconds), the innermost frame that
    raised (``file:line in function``, relative to the package when inside it) and the last
    frames of the traceback, innermost last."""
    frames = traceback.extract_tb(exc.__traceback__)

    def name(fr: traceback.FrameSummary) -> str:
        path = Path(fr.filename)
        parts = path.parts
        short = "/".join(parts[parts.index("p2pfed") :]) if "p2pfed" in parts else path.name
        return f"{short}:{fr.lineno} in {fr.name}"

    return {
        "t": now,
        "where": name(frames[-1]) if frames else "unknown",
        "traceback": [name(fr) for fr in frames[-6:]],
    }


class _Runtime(typing.Protocol):
    """What :func:`run` needs from a runtime."""

    @property
    def now(self) -> float: ...

    def run(
        self,
        observer: RunObserver,
        checkpoints: _Checkpoints | None = None,
        restored: dict[str, Any] | None = None,
        resume_at: float | None = None,
    ) -> RunOutcome: ...

    def peer_reports(self) -> list[PeerReport]: ...

    def describe(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


class _InProcess:
    """The local runtime, built in this process."""

    def __init__(
        self,
        world: World,
        taps: Sequence[Tap],
        interceptors: Sequence[Interceptor],
        inbox_taps: Sequence[Tap] = (),
        restoring: bool = False,
    ):
        device = resolve_device(world.config.runtime.device)
        self.world = world
        self.taps = taps
        self.interceptors = interceptors
        self.inbox_taps = inbox_taps
        # a resumed run's peers come out of its checkpoint
        self.peers = [] if restoring else build_peers(world, range(world.participants), device)
        self.evaluator = build_evaluator(world, device)
        self.runtime: LocalRuntime | None = None

    @property
    def now(self) -> float:
        return self.runtime.now if self.runtime is not None else 0.0

    def run(
        self,
        observer: RunObserver,
        checkpoints: _Checkpoints | None = None,
        restored: dict[str, Any] | None = None,
        resume_at: float | None = None,
    ) -> RunOutcome:
        cfg, w = self.world.config, self.world
        if restored is not None:
            self.peers = [restored["engine"].peers[i] for i in range(w.participants)]
        self.runtime = runtime = LocalRuntime(
            self.peers,
            w.codec,
            w.network,
            w.cost,
            self.evaluator,
            eval_interval=float(cfg.eval.interval or 1.0),
            time_limit=cfg.time.limit,
            observer=observer,
            taps=self.taps,
            evaluated=w.num_peers,
            links=link_guard(cfg.security, cfg.seed, w.participants, range(w.participants)),
            interceptors=self.interceptors,
            inbox_taps=self.inbox_taps,
            availability=w.availability,
            restored=restored,
        )

        def after_tick(next_tick: float) -> None:
            if checkpoints is not None and checkpoints.due(runtime.evaluation.tick):
                checkpoints.save(runtime.checkpoint_state(), next_tick)

        return runtime.run(after_tick, resume_at)

    def peer_reports(self) -> list[PeerReport]:
        return [PeerReport.of(p) for p in self.peers]

    def describe(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


def _make_runtime(
    world: World,
    taps: Sequence[Tap],
    interceptors: Sequence[Interceptor] = (),
    inbox_taps: Sequence[Tap] = (),
    restoring: bool = False,
) -> _Runtime:
    if world.config.runtime.kind == "ray":
        from p2pfed.runtime.ray_runtime import RayRuntime  # ray is imported only when asked for

        return RayRuntime(world, taps=taps, interceptors=interceptors, inbox_taps=inbox_taps)
    return _InProcess(world, taps, interceptors, inbox_taps, restoring)


# --- adversaries ---------------------------------------------------------------------------


def _on_wire(adv: AdversaryConfig) -> bool:
    """Eavesdroppers tap the wire (sealed bytes); the others are endpoints (opened frames)."""
    return adv.role == "eavesdropper"


def adversary_logs(cfg: ExperimentConfig) -> list[FrameLog | None]:
    """One frame log per observer (``None`` for a black box: it sees no traffic)."""
    logs: list[FrameLog | None] = []
    for _, adv in cfg.observers:
        if adv.role == "eavesdropper":
            ends = [adv.target] if adv.target is not None else []
            logs.append(FrameLog(links=adv.links or (), ends=ends))
        elif adv.role == "curious_peer":
            assert adv.peer is not None
            logs.append(FrameLog(ends=[adv.peer]))
        elif adv.role == "curious_coordinator":
            logs.append(FrameLog(ends=[cfg.num_peers]))
        else:
            logs.append(None)
    return logs


def _robustness(world: World, outcome: RunOutcome, summary: dict[str, Any]) -> dict[str, Any]:
    """What an acting attack did to the honest peers: their mean and worst final accuracy,
    the backdoor's success on triggered test inputs, and what the defence rejected or
    clipped (``robust_rejected`` / ``robust_clipped``, in each rule's unit) or skipped, and
    how many messages or inputs the poisoners changed (``poisoned``)."""
    cfg = world.config
    bad = {p for _, a in cfg.poisoners for p in a.peers}
    honest = [r for r in outcome.final if r.peer not in bad]
    accs = [r.test_acc for r in honest]
    out: dict[str, Any] = {
        "rule": cfg.robust_rule,
        "poisoners": sorted(bad),
        "honest_peers": len(honest),
        "honest_mean_acc": float(np.mean(accs)) if accs else math.nan,
        "honest_min_acc": float(np.min(accs)) if accs else math.nan,
        "poisoned": summary["protocol_events"].get("poisoned", 0),
        "robust_rejected": summary["protocol_events"].get("robust_rejected", 0),
        "robust_clipped": summary["protocol_events"].get("robust_clipped", 0),
        "robust_skipped": summary["protocol_events"].get("robust_skipped", 0),
        "frames_rejected": summary.get("frames_rejected", 0),
    }
    size = cfg.protocol.robust.bucket_size
    if size is not None and cfg.robust_rule != "mean":
        out["buckets"] = num_buckets(cfg.num_peers, size)
        out["buckets_lost"] = summary["protocol_events"].get("secure_bucket_lost", 0)
    for k, a in cfg.poisoners:
        if a.data_poisoning != "backdoor":
            continue
        x, _ = triggered_test_set(
            world.dataset.x_test, world.dataset.y_test, a.target_class, _image_shape(world)
        )
        hits = [
            float(np.mean(_predict(world, outcome.models[r.peer], x) == a.target_class))
            for r in honest
            if r.peer in outcome.models
        ]
        out[f"backdoor_success[{a.label(k)}]"] = float(np.mean(hits)) if hits else math.nan
    return out


def _predict(world: World, params: np.ndarray, x: np.ndarray) -> np.ndarray:
    model = model_at(world.template, params)
    with torch.no_grad():
        return model(torch.as_tensor(x, dtype=torch.float32)).argmax(dim=1).numpy()


def _attack_warnings(summary: dict[str, Any]) -> list[str]:
    out = []
    if "attacks_error" in summary:
        out.append(f"the attack analysis failed: {summary['attacks_error']}")
    for row in summary.get("attacks", []):
        if "error" in row:
            out.append(f"{row['adversary']}: {row['attack']} failed: {row['error']}")
    return out


def _attacks(
    world: World,
    logs: Sequence[FrameLog | None],
    outcome: RunOutcome,
    reports: Sequence[PeerReport],
    run_dir: Path,
) -> list[dict[str, Any]]:
    from p2pfed.adversary.analyse import RunFacts, analyse, write_report

    cfg = world.config
    tcfg = cfg.training
    fixed = None
    if cfg.security.secure_aggregation:
        sec = cfg.security
        fixed = FixedPoint.from_range(sec.clipping_range, sec.quantization_range, sec.modulus_range)
    facts = RunFacts(
        adversaries=[adv for _, adv in cfg.observers],
        indices=[k for k, _ in cfg.observers],
        logs=logs,
        codec=world.codec,
        protocol=cfg.protocol.kind,
        protection=protection(cfg),
        schedule=world.schedule,
        num_peers=world.num_peers,
        coordinator=world.num_peers if cfg.has_coordinator else None,
        template=world.template,
        params0=world.params0,
        dataset=world.dataset,
        shards=world.shards,
        final_models=outcome.models,
        lr=float(tcfg.lr),
        single_step=tcfg.local_steps == 1 and tcfg.momentum == 0,
        fixed=fixed,
        seed=_streams(cfg.seed)["adversary"],
        training=tcfg,
        dp=cfg.dp,
        local_steps=[
            tcfg.local_steps or tcfg.local_epochs * math.ceil(len(shard) / tcfg.batch_size)
            for shard in world.shards
        ],
        trained_on={r.id: r.trained_on for r in reports if r.trained_on},
        rounds=cfg.protocol.rounds,
    )
    rows = analyse(facts)
    write_report(run_dir, rows, facts)
    return rows


def _summary(
    world: World,
    runtime: _Runtime,
    recorder: RunRecorder,
    outcome: RunOutcome | None,
    wall: float,
) -> dict[str, Any]:
    cfg = world.config
    rows = outcome.final if outcome is not None else recorder.last_rows
    reports = runtime.peer_reports()
    counters: dict[str, int] = {}
    for p in reports:
        for k, v in p.counters.items():
            counters[k] = counters.get(k, 0) + v
    peers = [p for p in reports if p.id < world.num_peers]
    return {
        "run_id": recorder.run_id,
        "status": outcome.status if outcome is not None else "failed",
        "peers": cfg.num_peers,
        "protocol": cfg.protocol.kind,
        "runtime": cfg.runtime.kind,
        "time_mode": cfg.time.mode,  # wall: times are wall seconds since the peers started
        "topology": world.schedule.name,
        "spectral_gap": float(world.schedule.spectral_gap),
        "params": world.num_params,
        "final": final_accuracy(rows) if rows else {},
        "rounds_completed": [p.rounds for p in peers],
        "virtual_time": outcome.virtual_time if outcome is not None else None,
        "wall_time_s": round(wall, 3),
        "events": outcome.events if outcome is not None else None,
        "messages": outcome.frames if outcome is not None else {},
        "bytes": recorder.byte_totals(),
        "frames_rejected": recorder.rejected,
        "frames_rejected_by_reason": dict(sorted(recorder.rejected_by_reason.items())),
        "protocol_events": counters,
        "privacy": _privacy(cfg, peers, world.shards),
        "diverged_peers": [p.id for p in peers if p.diverged],
        "warnings": _warnings(cfg, reports, counters, recorder.rejected_by_reason),
        **_availability_record(
            world, recorder.run_dir, outcome.virtual_time if outcome is not None else runtime.now
        ),
        **runtime.describe(),
    }


def _availability_record(world: World, run_dir: Path, end: float) -> dict[str, Any]:
    """Who was down when: ``availability.csv`` (one row per down spell that began before the
    run ended: peer, down, up, how) and the summary's ``availability`` section (the measured
    share of peer-time down, spells, crashes and leaves)."""
    avail = world.availability
    if avail is None:
        return {}
    spells = avail.spells(end)
    with (run_dir / "availability.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["peer", "down", "up", "how"])
        for sp in spells:
            writer.writerow([sp.peer, f"{sp.down:.6f}", f"{sp.up:.6f}", sp.how])
    return {
        "availability": {
            "kind": avail.cfg.kind,
            "rejoin": avail.cfg.rejoin,
            "churning_peers": len(avail.churning),
            "down_fraction": avail.down_fraction(end),
            "spells": len(spells),
            "crashes": sum(sp.how == "crash" for sp in spells),
            "leaves": sum(sp.how == "leave" for sp in spells),
        }
    }


def _privacy(
    cfg: ExperimentConfig, peers: Sequence[PeerReport], shards: Sequence[np.ndarray]
) -> dict[str, Any]:
    """Each peer's differential-privacy budget spent: every local training's result is a
    Gaussian release (a conservative count: a result a protocol drops still counts)."""
    dp = cfg.dp
    if not dp.enabled:
        return {"dp": False}
    common = {
        "dp": True,
        "mode": dp.mode,
        "clip": dp.clip,
        "noise_multiplier": dp.noise_multiplier,
        "delta": dp.delta,
        "releases": [p.trainings for p in peers],
    }
    if dp.mode == "dpsgd":
        # every SGD step of a peer is a subsampled Gaussian release of its data
        tcfg = cfg.training
        sizes = [len(s) for s in shards]
        eps, steps = [], []
        for p in peers:
            if p.id >= len(sizes):
                continue
            n = sizes[p.id]
            per_training = tcfg.local_steps or tcfg.local_epochs * math.ceil(n / tcfg.batch_size)
            k = per_training * p.trainings
            q = min(1.0, tcfg.batch_size / n)
            eps.append(round(sampled_gaussian_epsilon(dp.noise_multiplier, q, k, dp.delta), 4))
            steps.append(k)
        return {
            **common,
            "steps": steps,
            "epsilon": eps,
            "epsilon_max": max(eps, default=0.0),
            "accountant": "RDP of the subsampled Gaussian (Opacus analysis), per example; "
            "sampling rate batch_size / shard size, shuffled batches accounted as Poisson",
        }
    eps = [round(gaussian_epsilon(dp.noise_multiplier, p.trainings, dp.delta), 4) for p in peers]
    return {
        **common,
        "epsilon": eps,
        "epsilon_max": max(eps, default=0.0),
        "accountant": "RDP of the composed Gaussian, improved conversion (p2pfed.privacy)",
    }


def _warnings(
    cfg: ExperimentConfig,
    reports: Sequence[PeerReport],
    counters: dict[str, int],
    rejected: Mapping[str, int] | None = None,
) -> list[str]:
    """Things a reader of the summary should not miss."""
    out = []
    expired = (rejected or {}).get("epoch expired", 0)
    if expired:
        out.append(
            f"{expired} sealed frames arrived after their key epoch had passed: "
            f"security.rotate_every ({cfg.security.rotate_every}s) should be well above "
            "the link latency"
        )
    rounds = sum(p.rounds for p in reports) or 1
    for name in ("neighbours_skipped", "gossip_timed_out"):
        share = counters.get(name, 0) / rounds
        if share > 0.05:
            out.append(
                f"{name} in {100 * share:.0f}% of rounds: protocol.timeout "
                f"({cfg.protocol.timeout}s) may be too short for this network"
            )
    aborted = counters.get("secure_round_aborted", 0) / rounds
    if aborted > 0.05:
        out.append(
            f"secure sums aborted in {100 * aborted:.0f}% of rounds (see the "
            "secure_round_aborted events): too many dropouts for the threshold, or "
            f"security.phase_timeout ({cfg.security.phase_timeout}s) too short"
        )
    if counters.get("secure_input_clipped", 0):
        out.append(
            f"{counters['secure_input_clipped']} secure-sum inputs had values beyond "
            f"±{cfg.security.clipping_range:g}, clipped: raise security.clipping_range"
        )
    if counters.get("secure_weight_capped", 0):
        out.append(
            f"{counters['secure_weight_capped']} sample weights exceeded "
            f"security.max_weight ({cfg.security.max_weight:g}) and were capped"
        )
    if counters.get("he_input_clipped", 0):
        out.append(
            f"{counters['he_input_clipped']} encrypted updates had values more than "
            f"±{cfg.security.he.clip:g} from the initial model, clipped: raise security.he.clip"
        )
    for name, what in (
        (
            "he_update_refused",
            "encrypted updates were refused (malformed, or unable to join the sum)",
        ),
        ("he_partial_refused", "partial decryptions were refused (wrong size or range)"),
        (
            "he_partials_inconsistent",
            "times the partial decryptions in hand did not combine (a corrupt partial)",
        ),
        ("he_sum_refused", "neighbourhood sums were refused or could not be decrypted"),
        (
            "he_round_stalled",
            "HE rounds stalled after every re-send: messages kept getting "
            "lost, or clients fell silent",
        ),
    ):
        if counters.get(name, 0):
            out.append(f"{counters[name]} {what} (see the {name} events)")
    diverged = [p.id for p in reports if p.diverged]
    if diverged:
        out.append(f"training diverged (non-finite loss) at peers {diverged[:10]}: lower lr")
    return out
