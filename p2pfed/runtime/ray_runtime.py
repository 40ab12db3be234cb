"""The Ray runtime: peers live in ``PeerHost`` actors on this machine or a cluster.

Layout. A ``PeerHost`` is a Ray actor carrying a block of peers (contiguous ids, except
that each group of colluding poisoners is kept on one host: :func:`place`; one engine,
:class:`~p2pfed.runtime.engine.PeerEngine`, the same code the in-process runtime runs). An
actor that imports torch costs about 190 MB and 1.7 s to start here, so the default is one
host per CPU (or per GPU share) and many peers per host. Peer state — model, optimiser,
shard, protocol state — is built inside its host from the shared, read-only
:class:`~p2pfed.experiment.World` (put in the object store once; numpy data is read
zero-copy) and stays there for the whole run. A protocol with a coordinator gets its own
small host for it, outside the CPU budget; that host also keeps the coordinator's
:class:`~p2pfed.runtime.directory.Directory` — the peer registry (filled at start-up, pruned
when a host dies) and the public-key directory the secure protocols publish to. Hosts are
placed with a placement group using the ``SPREAD`` strategy, so on a cluster they land on as
many nodes as possible.

Transport. Under virtual time the driver advances all hosts in windows (see
:mod:`p2pfed.runtime.virtual`). One ``step`` call per host per window: it takes the frames
other hosts sent to it in the previous window and returns a small report plus one batch
per destination host. A batch is a few numpy arrays (arrival times, ids, offsets, one
contiguous byte buffer), so it travels without pickling per frame and the driver forwards
only references. A message sent to many peers in one event (the coordinator's model, a
peer's model to its neighbours) is packed once by the engine, and a batch carries its body
once however many of the destination host's peers it addresses — the design's "one
``ray.put`` per broadcast", done per destination host instead of per object, because the
bytes of each link's frame start with an envelope binding sender and receiver (and with
sealed links, ``security.channel: aead``, each link's ciphertext differs and nothing is shared).
Measured, FedAvg at 32 clients: the coordinator's batch per host fell from 310 KB to 20 KB.
The private Ray instance p2pfed starts returns values up to 512 KiB inline with the reply
(:data:`PRIVATE_RAY_SYSTEM_CONFIG`), which halves the cost of a typical batch.

Failures. A host that dies is reported with the peers it carried. With
``runtime.on_host_failure: continue`` the run goes on without them (their frames in flight
are counted as dropped, metrics cover the survivors); with ``stop`` — the default for
protocols with a coordinator, and always when the coordinator's host dies — the run ends
with a :class:`~p2pfed.errors.RuntimeFailure` naming the host and its peers. Either way the
run directory keeps the metrics written so far.

Checkpoints. Under virtual time, at a checkpoint tick the driver collects every live host's
pickled engine (:meth:`PeerHost.checkpoint`) and the frame batches in transit between hosts;
a resumed run starts the same hosts afresh and restores them, and ends exactly as the
uninterrupted run. Under wall time with ``on_host_failure: restart`` every host sends the
driver a checkpoint every ``checkpoint.wall_interval`` seconds (the bytes live in the driver,
so they outlive the host); a host that dies is started again from its last one under a new
index, every live host routes its peers there (:meth:`PeerHost.rehost`) and hears
``PeerUp``, and the peers rejoin (:meth:`~p2pfed.runtime.engine.PeerEngine.rejoin`). The
frame accounting stays exact: the dead host is settled as before, and the new one counts
from zero. Ray start-up problems (an address nobody
answers, a cluster too small for the requested hosts, hosts that cannot be placed in
``runtime.start_timeout``) fail fast with one message instead of hanging.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import math
import os
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from p2pfed import checkpoint
from p2pfed.adversary.config import NEEDS_VIEW
from p2pfed.crypto.links import link_guard
from p2pfed.errors import P2PFedError, ProtocolError, RuntimeFailure
from p2pfed.protocol.codec import FrameSize
from p2pfed.runtime.base import Interceptor, MetricRow, PeerReport, RunObserver, Tap
from p2pfed.runtime.directory import Directory, Placement, PublishedKey
from p2pfed.runtime.engine import FRAME_COUNTERS, OutFrame, PeerEngine, Snapshot, frame_totals
from p2pfed.runtime.virtual import Evaluation, HostsState, RunOutcome, models_of, run_virtual

# --- frames in batches ------------------------------------------------------------------


def pack_frames(frames: Sequence[OutFrame]) -> dict[str, np.ndarray]:
    """Pack frames into a few flat arrays (one object, no per-frame pickling).

    Frames that share a body object (one broadcast message to several peers of the
    destination host) carry it once: ``data`` holds every frame's head, then each distinct
    body, and ``ids[:, 3]`` says which body a frame ends with."""
    index: dict[int, int] = {}  # id(body) -> its place among the distinct bodies
    bodies: list[bytes] = []
    ids = np.empty((len(frames), 4), dtype=np.int64)  # dst, src, seq, body
    for k, f in enumerate(frames):  # the frames hold their bodies alive: ids are stable
        j = index.get(id(f.body))
        if j is None:
            j = index[id(f.body)] = len(bodies)
            bodies.append(f.body)
        ids[k] = (f.dst, f.src, f.seq, j)
    chunks = [f.head for f in frames] + bodies
    sizes = np.fromiter((len(c) for c in chunks), dtype=np.int64, count=len(chunks))
    offsets = np.zeros(len(chunks) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    return {
        "arrive": np.fromiter((f.arrive for f in frames), dtype=np.float64, count=len(frames)),
        "ids": ids,
        "offsets": offsets,
        "data": np.frombuffer(b"".join(chunks), dtype=np.uint8),
    }


def _count(batch: dict[str, np.ndarray]) -> int:
    """Frames in a packed batch."""
    return len(batch["ids"])


def unpack_frames(batch: dict[str, np.ndarray]) -> list[OutFrame]:
    offsets, data, ids, arrive = batch["offsets"], batch["data"], batch["ids"], batch["arrive"]
    n = len(ids)
    bodies = [data[offsets[j] : offsets[j + 1]].tobytes() for j in range(n, len(offsets) - 1)]
    return [
        OutFrame(
            float(arrive[k]),
            int(ids[k, 0]),
            int(ids[k, 1]),
            int(ids[k, 2]),
            data[offsets[k] : offsets[k + 1]].tobytes(),
            bodies[int(ids[k, 3])],
        )
        for k in range(n)
    ]


# --- what a host records for the driver ------------------------------------------------


class BufferObserver:
    """Records a host's observer calls (and tapped frames) for the driver to replay."""

    def __init__(self) -> None:
        self.records: list[tuple[str, tuple[Any, ...]]] = []

    def drain(self) -> list[tuple[str, tuple[Any, ...]]]:
        out, self.records = self.records, []
        return out

    def tap(self, t: float, src: int, dst: int, frame: bytes) -> None:
        self.records.append(("tap", (t, src, dst, frame)))

    def inbox(self, t: float, src: int, dst: int, frame: bytes) -> None:
        self.records.append(("inbox", (t, src, dst, frame)))

    def frame_sent(self, t: float, src: int, dst: int, kind: str, size: FrameSize) -> None:
        self.records.append(("frame_sent", (t, src, dst, kind, size)))

    def frame_lost(self, t: float, src: int, dst: int, kind: str, size: FrameSize) -> None:
        self.records.append(("frame_lost", (t, src, dst, kind, size)))

    def frame_rejected(self, t: float, src: int, dst: int, reason: str) -> None:
        self.records.append(("frame_rejected", (t, src, dst, reason)))

    def peer_event(self, t: float, peer: int, name: str, fields: dict[str, Any]) -> None:
        self.records.append(("peer_event", (t, peer, name, fields)))

    def evaluated(self, rows: list[MetricRow]) -> None:  # the driver evaluates
        pass

    def progress(self, t: float, completed: int, total: int) -> None:
        pass


# --- the actor ---------------------------------------------------------------------------


class PeerHost:
    """Hosts a block of peers in one engine (wrapped by ``ray.remote`` at run time)."""

    def __init__(self, index: int):
        self.index = index
        self.engine: PeerEngine | None = None
        # wall time: a loop thread plus concurrent deliver/status/snapshot calls
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._inbox: collections.deque[dict[str, np.ndarray]] = collections.deque()
        self._pending_out: list[OutFrame] = []
        self._hosts: list[Any] = []
        self._sent_to: list[int] = []
        self._received_from: dict[int, int] = {}
        self._stop = False
        self.directory: Directory | None = None
        self.owner = np.zeros(0, dtype=np.int64)
        self.num_hosts = 0
        self.recorder = BufferObserver()

    def setup(
        self,
        world: Any,
        ids: list[int],
        owner: np.ndarray,
        device: str,
        torch_threads: int,
        keep_frames: bool,
        interceptors: Sequence[Interceptor] = (),
        keep_inbox: bool = False,
    ) -> dict[str, Any]:
        import torch

        from p2pfed.experiment import build_peers, resolve_device

        torch.set_num_threads(torch_threads)
        device = resolve_device(device)
        peers = build_peers(world, ids, device)
        self.owner = np.asarray(owner)
        self.num_hosts = int(self.owner.max()) + 1
        self._sent_to = [0] * self.num_hosts
        if world.participants > world.num_peers and world.num_peers in ids:
            self.directory = Directory()  # this host carries the coordinator
        self.engine = PeerEngine(
            peers,
            world.participants,
            world.codec,
            copy.deepcopy(world.network),  # object-store arrays are read-only; these change
            copy.deepcopy(world.cost),
            observer=self.recorder,
            taps=[self.recorder.tap] if keep_frames else [],
            # every host derives the same keys from the run seed: none travels
            links=link_guard(world.config.security, world.config.seed, world.participants, ids),
            interceptors=interceptors,  # this host's own copies
            inbox_taps=[self.recorder.inbox] if keep_inbox else [],
            availability=copy.deepcopy(world.availability),  # it grows its spells lazily
        )
        return self._info(device)

    def _info(self, device: str) -> dict[str, Any]:
        """Where this host runs and on what, for the driver (after setup or restore)."""
        peers = self._engine().peers.values()
        params = [p.trainer.model for p in peers if p.trainer is not None]
        return {
            "host": self.index,
            "node": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "device": device,
            "param_device": str(next(params[0].parameters()).device) if params else None,
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "peers": len(peers),
        }

    def checkpoint(self) -> bytes:
        """Wall time: this host's engine (every peer in it) and directory as checkpoint bytes,
        taken under the lock between two events (see :mod:`p2pfed.checkpoint`)."""
        with self._lock:
            engine = self._engine()
            return checkpoint.dumps(
                {"engine": engine, "directory": self.directory},
                {"observer": self.recorder, "clock": engine.clock},
            )

    def restore(
        self, data: bytes, owner: np.ndarray, device: str, torch_threads: int
    ) -> dict[str, Any]:
        """Set up from a crashed host's checkpoint instead of :meth:`setup` (its peers then
        rejoin when :meth:`run_wall` starts them)."""
        import torch

        torch.set_num_threads(torch_threads)
        state = checkpoint.loads(data, {"observer": self.recorder, "clock": None})
        self.engine = state["engine"]
        self.directory = state["directory"]
        self.owner = np.array(owner)
        self.num_hosts = int(self.owner.max()) + 1
        self._sent_to = [0] * self.num_hosts
        return self._info(device)

    def rehost(self, peers: list[int], index: int, handle: Any) -> None:
        """Wall time: peers ``peers`` live on host ``index`` (``handle``) from now on."""
        with self._lock:
            self.owner = np.array(self.owner)  # the one set up may be read-only
            self.owner[peers] = index
            self.num_hosts = max(self.num_hosts, index + 1)
            self._sent_to += [0] * (self.num_hosts - len(self._sent_to))
            self._hosts = list(self._hosts) + [None] * (self.num_hosts - len(self._hosts))
            self._hosts[index] = handle

    def peers_up(self, ids: list[int], t: float | None) -> None:
        """Peers ``ids`` are back (their host was restarted): tell every local peer."""
        with self._lock:
            engine = self._engine()
            now = engine.clock() if engine.clock is not None else engine.now
            engine.peers_up(ids, now if t is None else max(t, now))
        self._wake.set()

    def step(self, end: float | None, inclusive: bool, *batches: dict[str, np.ndarray]) -> Any:
        """Virtual time: take the frames other hosts sent here, process events before ``end``
        (``None``: start the peers), and return a report plus one frame batch per host."""
        with self._lock:  # a threaded actor: never interleave with peers_down or snapshot
            return self._step(end, inclusive, batches)

    def _step(
        self, end: float | None, inclusive: bool, batches: Sequence[dict[str, np.ndarray]]
    ) -> Any:
        engine = self._engine()
        for batch in batches:
            engine.accept(unpack_frames(batch))
        if end is None:
            engine.start()
        else:
            engine.advance(end, inclusive=inclusive)
        by_host: list[list[OutFrame]] = [[] for _ in range(self.num_hosts)]
        for f in engine.take_outbox():
            by_host[int(self.owner[f.dst])].append(f)
        report = {
            "next_time": engine.next_time(),
            "pending": engine.pending,
            "frames_pending": engine.frames_pending,
            "done": engine.done,
            "settled": engine.settled,
            "completed": engine.completed,
            "events": engine.events,
            "now": engine.last_work,
            "frames": dict(engine.frames),
            "out": [(len(b), min((f.arrive for f in b), default=math.inf)) for b in by_host],
            "records": self.recorder.drain(),
        }
        return (report, *(pack_frames(b) if b else None for b in by_host))

    # --- the coordinator's directory (only on the host that carries the coordinator) -------

    def _dir(self) -> Directory:
        if self.directory is None:
            raise ProtocolError(f"PeerHost {self.index} does not carry the coordinator")
        return self.directory

    def register(self, entries: list[tuple[int, int, str | None]]) -> None:
        """Record (peer, host, node) placements in the registry."""
        with self._lock:
            directory = self._dir()
            for peer, host, node in entries:
                directory.register(peer, host, node)

    def unregister_host(self, host: int) -> list[int]:
        """Forget the peers of a dead host; returns them."""
        with self._lock:
            return self._dir().unregister_host(host)

    def registry(self) -> dict[int, Placement]:
        """Every registered peer's placement."""
        with self._lock:
            directory = self._dir()
            return {p: directory.placement(p) for p in directory.peers()}

    def publish_key(self, peer: int, purpose: str, key: bytes, epoch: int = 0) -> None:
        """Bind a public key to a peer (see :meth:`Directory.publish`)."""
        with self._lock:
            self._dir().publish(peer, purpose, key, epoch)

    def lookup_key(self, peer: int, purpose: str) -> PublishedKey:
        """A peer's published key for ``purpose``."""
        with self._lock:
            return self._dir().lookup(peer, purpose)

    def _engine(self) -> PeerEngine:
        if self.engine is None:
            raise RuntimeFailure(f"PeerHost {self.index} was used before setup()")
        return self.engine

    def ping(self) -> int:
        """Answers while the host is alive (used to confirm a kill)."""
        return self.index

    def snapshot(self) -> Snapshot:
        """Models, rounds and losses of this host's peers, for evaluation."""
        with self._lock:
            return self._engine().snapshot()

    def reports(self) -> list[PeerReport]:
        """End-of-run facts about this host's peers, for the summary."""
        with self._lock:
            return self._engine().reports()

    # --- wall time: the host runs its own loop; the driver only watches -----------------

    def run_wall(
        self, t0: float, hosts: list[Any], flush_s: float, rejoin: bool = False
    ) -> dict[str, Any]:
        """Wall time: run this host's peers in real time until :meth:`stop`.

        One loop thread handles due events under the host's lock; frames for other hosts
        are counted (``sent_to``) the moment they leave the engine, under the same lock,
        and flushed as one ``deliver`` call per destination host at most ``flush_s`` later
        (or at once when the loop is about to wait). Deliveries, status and snapshot calls
        run concurrently on other threads and take the lock too.
        """
        engine = self._engine()
        engine.clock = lambda: time.time() - t0
        self._hosts = list(hosts)
        delay = t0 - time.time()
        if delay > 0:
            time.sleep(delay)
        with self._lock:
            if rejoin:  # restored from a checkpoint: the peers come back, not start
                engine.rejoin(engine.clock())
            else:
                engine.start()
        last_flush = time.monotonic()
        while not self._stop:
            self._wake.clear()  # before draining: a delivery from now on wakes the wait
            with self._lock:
                while self._inbox:
                    engine.accept(unpack_frames(self._inbox.popleft()))
                engine.advance(engine.clock(), inclusive=True)
                self._take_outbox()
                wait = engine.next_time() - engine.clock()
            if self._pending_out and (
                wait > 0 or len(self._pending_out) >= 256 or time.monotonic() - last_flush > flush_s
            ):
                self._flush()
                last_flush = time.monotonic()
            if wait > 0:
                self._wake.wait(min(wait, 0.05))
        self._flush()
        return self.status()

    def _take_outbox(self) -> None:
        """Move the engine's outgoing frames to the flush queue, counting them (lock held)."""
        for f in self._engine().take_outbox():
            self._sent_to[int(self.owner[f.dst])] += 1
            self._pending_out.append(f)

    def _flush(self) -> None:
        with self._lock:
            pending, self._pending_out = self._pending_out, []
        by_host: list[list[OutFrame]] = [[] for _ in self._hosts]
        for f in pending:
            by_host[int(self.owner[f.dst])].append(f)
        for h, frames in enumerate(by_host):
            if frames:  # fire and forget: a dead receiver shows up in the counts
                self._hosts[h].deliver.remote(self.index, pack_frames(frames))

    def peers_down(self, ids: list[int], t: float | None) -> None:
        """Peers ``ids`` died with their host: tell every local peer still running, at
        ``t`` or now, whichever is later (never in this host's past)."""
        with self._lock:
            engine = self._engine()
            now = engine.clock() if engine.clock is not None else engine.now
            engine.peers_down(ids, now if t is None else max(t, now))
        self._wake.set()

    def deliver(self, src_host: int, batch: dict[str, np.ndarray]) -> None:
        """Frames from another host (wall time); they land at their arrival time."""
        with self._lock:
            self._inbox.append(batch)
            count = _count(batch)
            self._received_from[src_host] = self._received_from.get(src_host, 0) + count
        self._wake.set()

    def stop(self) -> None:
        """End :meth:`run_wall` (after a last flush)."""
        self._stop = True
        self._wake.set()

    def status(self) -> dict[str, Any]:
        """Counters for the wall-time driver (and the records to replay)."""
        with self._lock:
            engine = self._engine()
            return {
                "next_time": engine.next_time(),
                "pending": engine.pending + len(self._inbox),
                "frames_pending": engine.frames_pending,
                "done": engine.done,
                "settled": engine.settled,
                "completed": engine.completed,
                "events": engine.events,
                "now": engine.now,
                "frames": dict(engine.frames),
                "sent_to": list(self._sent_to),
                "received_from": dict(self._received_from),
                "inbox": sum(map(_count, self._inbox)),
                "unsent": len(self._pending_out) + sum(map(_count, self._inbox)),
                "records": self.recorder.drain(),
            }


# --- connecting and placing -----------------------------------------------------------


#: Ray settings for the private instance p2pfed starts (a cluster keeps its own; set
#: ``RAY_max_direct_call_object_size`` on every ``ray start`` for the same effect there).
#: A window's frame batch for one host is tens to hundreds of KB; returned inline with the
#: actor's reply instead of through the object store it costs less: measured here, a 310 KB
#: batch handed from one host to another in 2.7 ms inline against 5.0 ms through the store,
#: 500 KB in 4.1 against 5.3 ms; from about 600 KB the store is faster, hence 512 KiB.
PRIVATE_RAY_SYSTEM_CONFIG: dict[str, Any] = {"max_direct_call_object_size": 512 * 1024}


#: What ``ray.init`` raises when it cannot join: a failed connection, or Ray's error for a
#: refused token where it raises one (Rays without token authentication have no such class).
_JOIN_ERRORS: tuple[type[Exception], ...] = tuple(
    cls
    for cls in (ConnectionError, getattr(ray.exceptions, "AuthenticationError", None))
    if cls is not None
)


def connect(address: str | None, timeout: float = 5.0) -> bool:
    """Join or start Ray; returns whether this call started it (and should shut it down).

    ``None`` starts a private instance on this machine (never a cluster someone else runs);
    ``auto`` joins the cluster this machine belongs to; ``HOST:PORT`` joins that head node,
    after checking that something answers there (Ray itself retries for minutes).
    """
    if ray.is_initialized():
        return False
    quiet: dict[str, Any] = {"include_dashboard": False, "logging_level": "WARNING"}
    if address is None:
        ray.init(address="local", _system_config=PRIVATE_RAY_SYSTEM_CONFIG, **quiet)
        return True
    if address != "auto":
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise RuntimeFailure(f"runtime.address {address!r} must be auto or HOST:PORT")
        try:
            socket.create_connection((host, int(port)), timeout=timeout).close()
        except OSError as exc:
            raise RuntimeFailure(
                f"cannot reach a Ray cluster at {address}: {exc.strerror or exc} (is "
                "`ray start --head` running there, and is the port the GCS port, 6379 "
                "by default?)"
            ) from None
    try:
        ray.init(address=address, **quiet)
    except _JOIN_ERRORS as exc:
        # Ray reports a refused token as a failed connection after ~20 s of retries (it logs
        # InvalidAuthToken meanwhile), so the hint names tokens whenever one may be the cause.
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
            token = (
                "or is this driver's token (~/.ray/auth_token or RAY_AUTH_TOKEN) not the head's?"
            )
        else:
            token = (
                "or does the cluster use Ray's token authentication? then set "
                "RAY_AUTH_MODE=token here and copy the head's ~/.ray/auth_token, as in the "
                "README's cluster step"
            )
        raise RuntimeFailure(
            f"cannot join a Ray cluster at {address}: {exc} (is `ray start --head` running "
            f"there, {token}; or leave runtime.address unset for a private instance on this "
            "machine)"
        ) from None
    return True


@dataclass(frozen=True)
class HostPlan:
    """How many hosts, which peers each carries, and what each reserves."""

    blocks: list[list[int]]  # peer ids per training host
    cpus: float
    gpus: float
    coordinator: int | None  # the coordinator's id, carried by one extra host

    @property
    def num_hosts(self) -> int:
        return len(self.blocks) + (self.coordinator is not None)


def plan_hosts(
    num_peers: int,
    coordinator: int | None,
    rcfg: Any,
    resources: dict[str, float],
    together: Sequence[Sequence[int]] = (),
) -> HostPlan:
    """Decide the hosts from the config and the cluster's resources (see RuntimeConfig).

    Peers go to hosts in contiguous, balanced blocks, except the groups in ``together`` (the
    colluding poisoners of one adversary): each group lands whole on one host, so its members
    share one view of what they received as they do in-process (see :func:`place`)."""
    cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    c, g = float(rcfg.cpus_per_host), float(rcfg.gpus_per_host)
    if rcfg.hosts is not None:
        hosts = rcfg.hosts
    elif rcfg.peers_per_host is not None:
        hosts = math.ceil(num_peers / rcfg.peers_per_host)
    else:
        by_cpu = math.floor(cpus / c + 1e-9)
        hosts = min(by_cpu, math.floor(gpus / g + 1e-9)) if g > 0 else by_cpu
        hosts = max(1, min(hosts, num_peers))
    if hosts > num_peers:
        raise RuntimeFailure(f"runtime.hosts ({hosts}) exceeds the number of peers ({num_peers})")
    if hosts * c > cpus + 1e-9:
        raise RuntimeFailure(
            f"{hosts} PeerHosts x {c:g} CPUs need {hosts * c:g} CPUs but the Ray cluster has "
            f"{cpus:g}: lower runtime.hosts, runtime.cpus_per_host, or add nodes"
        )
    if g > 0 and hosts * g > gpus + 1e-9:
        raise RuntimeFailure(
            f"{hosts} PeerHosts x {g:g} GPUs need {hosts * g:g} GPUs but the Ray cluster has "
            f"{gpus:g}: lower runtime.hosts or runtime.gpus_per_host, or use device cpu"
        )
    return HostPlan(place(num_peers, hosts, together), c, g, coordinator)


def place(num_peers: int, hosts: int, together: Sequence[Sequence[int]] = ()) -> list[list[int]]:
    """Peers per host: balanced contiguous blocks; each group in ``together`` is put whole on
    the host with the most room left (largest group first), and the other peers fill the
    hosts in id order up to the balanced sizes. A host left with no peer is dropped (groups
    too big to spread over every host). Deterministic."""
    sizes = [len(b) for b in np.array_split(np.arange(num_peers), hosts)]
    groups = [sorted(set(g)) for g in together if g]
    grouped = {p for g in groups for p in g}
    if len(grouped) != sum(len(g) for g in groups):
        raise RuntimeFailure("a peer belongs to two groups that must share a host")
    if not groups:
        return [b.tolist() for b in np.array_split(np.arange(num_peers), hosts)]
    blocks: list[list[int]] = [[] for _ in range(hosts)]
    for g in sorted(groups, key=lambda g: (-len(g), g)):
        h = max(range(hosts), key=lambda h: (sizes[h] - len(blocks[h]), -h))
        blocks[h] += g
    for p in range(num_peers):
        if p in grouped:
            continue
        room = [h for h in range(hosts) if len(blocks[h]) < sizes[h]]
        h = room[0] if room else min(range(hosts), key=lambda h: (len(blocks[h]), h))
        blocks[h].append(p)
    return [sorted(b) for b in blocks if b]


# --- the runtime ---------------------------------------------------------------------------


@dataclass
class _Host:
    index: int
    actor: Any
    peers: list[int]
    info: dict[str, Any] = field(default_factory=dict)
    alive: bool = True
    last: dict[str, Any] = field(default_factory=dict)  # its latest step report
    snapshot: Snapshot | None = None  # its latest snapshot (rounds of dead peers)
    rehosted: int | None = None  # dead, and restarted from its checkpoint as this host
    options: dict[str, Any] = field(default_factory=dict)  # how it was started (a restart)


class RayRuntime:
    """Runs an experiment's peers in PeerHost actors (see the module docstring)."""

    def __init__(
        self,
        world: Any,
        *,
        taps: Sequence[Tap] = (),
        interceptors: Sequence[Interceptor] = (),
        inbox_taps: Sequence[Tap] = (),
    ):
        self.world = world
        self.config = world.config
        self.taps = list(taps)
        self.interceptors = list(interceptors)
        self.inbox_taps = list(inbox_taps)
        self.now = 0.0
        self.failures: list[dict[str, Any]] = []
        self.hosts: list[_Host] = []
        self._pg: Any = None
        self._started_ray = False
        rcfg = self.config.runtime
        try:
            self._started_ray = connect(rcfg.address)
            self.plan = plan_hosts(
                world.num_peers,
                world.num_peers if world.participants > world.num_peers else None,
                rcfg,
                ray.cluster_resources(),
                together=[
                    a.peers
                    for _, a in self.config.poisoners
                    if len(a.peers) > 1 and a.behaviour in NEEDS_VIEW
                ],
            )
            self._start_hosts()
        except BaseException:
            self.close()
            raise

    # --- start-up ------------------------------------------------------------------------

    def _start_hosts(self) -> None:
        plan, rcfg, world = self.plan, self.config.runtime, self.world
        bundles = [{"CPU": plan.cpus, **({"GPU": plan.gpus} if plan.gpus else {})}] * len(
            plan.blocks
        )
        self._pg = placement_group(bundles, strategy="SPREAD")
        try:
            ray.get(self._pg.ready(), timeout=rcfg.start_timeout)
        except GetTimeoutError:
            total, free = ray.cluster_resources(), ray.available_resources()
            have = ", ".join(
                f"{total.get(r, 0):g} {r}s ({free.get(r, 0):g} free)"
                for r in ("CPU", "GPU")
                if r in total or r in bundles[0]
            )
            raise RuntimeFailure(
                f"the Ray cluster could not place {len(bundles)} PeerHosts "
                f"({', '.join(f'{v:g} {k}' for k, v in bundles[0].items())} each) within "
                f"{rcfg.start_timeout:g}s: it has {have} — other jobs may hold them"
            ) from None
        owner = np.zeros(world.participants, dtype=np.int64)
        blocks = [list(b) for b in plan.blocks]
        if plan.coordinator is not None and rcfg.coordinator_host == "shared":
            blocks[-1].append(plan.coordinator)  # rides along with the last block of clients
        elif plan.coordinator is not None:
            blocks.append([plan.coordinator])
        for h, ids in enumerate(blocks):
            owner[ids] = h
        remote_host: Any = ray.remote(PeerHost)
        device = "cuda" if plan.gpus > 0 else rcfg.device
        world_ref = ray.put(world)
        setups = []
        for h, ids in enumerate(blocks):
            if h < len(plan.blocks):
                strategy = PlacementGroupSchedulingStrategy(
                    self._pg, placement_group_bundle_index=h
                )
                opts: dict[str, Any] = {
                    "num_cpus": plan.cpus,
                    "num_gpus": plan.gpus,
                    "scheduling_strategy": strategy,
                }
                host_device = device
            else:  # the coordinator aggregates; it needs no core of its own
                opts, host_device = {"num_cpus": 0}, "cpu"
            # threaded under wall time, where the host's loop runs while deliveries and the
            # driver's status and snapshot calls come in; single-threaded under virtual
            # time (measured: a threaded actor runs the same training ~10% slower)
            threads = 8 if self.config.time.mode == "wall" else 1
            opts = {"max_restarts": 0, "max_concurrency": threads, **opts}
            actor = remote_host.options(**opts).remote(h)
            self.hosts.append(_Host(h, actor, ids, options={**opts, "device": host_device}))
            setups.append(
                actor.setup.remote(
                    world_ref,
                    ids,
                    owner,
                    host_device,
                    rcfg.torch_threads,
                    bool(self.taps),
                    self.interceptors,
                    bool(self.inbox_taps),
                )
            )
        try:
            infos = ray.get(setups, timeout=rcfg.start_timeout)
        except GetTimeoutError:
            raise RuntimeFailure(
                f"PeerHosts did not start within {rcfg.start_timeout:g}s "
                "(raise runtime.start_timeout on a slow or busy cluster)"
            ) from None
        except RayTaskError as exc:
            raise _cause(exc) from None
        except RayActorError as exc:
            reason = (str(exc).splitlines() or [""])[0]
            raise RuntimeFailure(
                f"a PeerHost died while starting (out of memory?): {reason}"
            ) from None
        for host, info in zip(self.hosts, infos, strict=True):
            host.info = info
        self._owner = owner
        self._coordinator_host = len(blocks) - 1
        if plan.coordinator is not None:
            entries = [(p, h.index, h.info.get("node")) for h in self.hosts for p in h.peers]
            try:
                ray.get(self.coordinator.actor.register.remote(entries), timeout=rcfg.start_timeout)
            except GetTimeoutError:
                raise RuntimeFailure("the coordinator's host did not answer at start-up") from None

    @property
    def channels(self) -> list[set[int]]:
        """For each host, the other hosts whose peers may send to its peers: from the
        topology (every graph of a periodic schedule), from the star for coordinator
        protocols, everyone for schedules with no period."""
        owner = {p: h.index for h in self.hosts for p in h.peers}
        n_hosts = len(self.hosts)
        senders: list[set[int]] = [set() for _ in range(n_hosts)]
        world = self.world
        if self.plan.coordinator is not None:
            c = owner[self.plan.coordinator]
            for h in range(n_hosts):
                if h != c:
                    senders[h].add(c)
                    senders[c].add(h)
            return senders
        period = world.schedule.period
        if period is None:
            return [set(range(n_hosts)) - {h} for h in range(n_hosts)]
        for step in range(period):
            topo = world.schedule.at(step)
            for i in range(world.num_peers):
                for j in topo.out_neighbours(i):
                    if owner[i] != owner[int(j)]:
                        senders[owner[int(j)]].add(owner[i])
        return senders

    @property
    def coordinator(self) -> _Host:
        """The host that carries the coordinator and its directory (coordinator protocols)."""
        if self.plan.coordinator is None:
            raise RuntimeFailure(f"protocol {self.config.protocol.kind} has no coordinator")
        return self.hosts[self._coordinator_host]

    @property
    def placement(self) -> list[dict[str, Any]]:
        """Where each host runs (node id, pid, device, peers)."""
        return [h.info for h in self.hosts]

    def describe(self) -> dict[str, Any]:
        """What the run summary records about the hosts."""
        return {
            "hosts": [
                {k: h.info.get(k) for k in ("host", "node", "device", "param_device", "gpu_ids")}
                | {"peers": _span(h.peers), "alive": h.alive}
                for h in self.hosts
            ],
            "host_failures": self.failures,
        }

    # --- running -----------------------------------------------------------------------------

    def run(
        self,
        observer: RunObserver,
        checkpoints: Any = None,
        restored: dict[str, Any] | None = None,
        resume_at: float | None = None,
    ) -> RunOutcome:
        """Run to the end. Under virtual time ``checkpoints`` (see
        :func:`p2pfed.experiment.resume`) gets every host's engine, the frames between hosts
        and the driver's counters at its ticks, and ``restored`` (such a state) with
        ``resume_at`` goes on from one; under wall time checkpoints serve host restarts."""
        cfg, world = self.config, self.world
        if restored is not None and cfg.time.mode == "wall":
            raise RuntimeFailure("a wall-time run cannot resume: it never repeats itself")
        for h in self.hosts:
            observer.peer_event(
                0.0,
                h.peers[0],
                "host_started",
                {
                    "host": h.index,
                    "peers": [h.peers[0], h.peers[-1]],
                    "node": h.info.get("node"),
                    "device": h.info.get("device"),
                },
            )
        if cfg.time.mode == "wall":
            return _WallDriver(self, observer).run()
        driver = _Driver(self, observer)
        evaluation = Evaluation(_driver_evaluator(world), world.num_peers, observer)
        if restored is not None:
            driver.restore(restored)
            evaluation.tick = int(restored["eval_tick"])

        def after_tick(next_tick: float) -> None:
            if checkpoints is not None and checkpoints.due(evaluation.tick):
                state = driver.checkpoint_state()
                checkpoints.save({**state, "eval_tick": evaluation.tick}, next_tick)

        outcome = run_virtual(
            driver,
            participants=world.participants,
            total_rounds=world.total_rounds,
            eval_interval=float(cfg.eval.interval or 1.0),
            time_limit=cfg.time.limit,
            evaluate=evaluation,
            observer=observer,
            after_tick=after_tick,
            resume_at=resume_at,
        )
        outcome.frames["dropped"] = driver.dropped
        return outcome

    def host_failed(self, host: _Host, t: float, exc: BaseException, observer: RunObserver) -> int:
        """Record a dead host and apply the failure policy (raise to stop the run); returns
        the frames lost with it (those it held queued, as last reported)."""
        host.alive = False
        dropped = int(host.last.get("frames_pending", 0)) if host.last else 0
        if self.plan.coordinator is not None and self.plan.coordinator not in host.peers:
            # the coordinator's own death, or a hung coordinator, shows at its next call
            with contextlib.suppress(RayActorError, GetTimeoutError):
                ray.get(self.coordinator.actor.unregister_host.remote(host.index), timeout=60)
        self.failures.append(
            {"host": host.index, "node": host.info.get("node"), "peers": host.peers, "t": t}
        )
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        observer.peer_event(
            t, host.peers[0], "host_failed", {"host": host.index, "peers": host.peers}
        )
        rcfg, coordinator = self.config.runtime, self.plan.coordinator
        policy = rcfg.on_host_failure or ("stop" if coordinator is not None else "continue")
        if coordinator is not None and coordinator in host.peers:
            raise RuntimeFailure(
                f"the coordinator's PeerHost {host.index} died near t={t:.3f}s ({reason}); "
                "a star protocol cannot go on without it"
            )
        if policy == "restart" and not self.config.time.mode == "wall":
            raise RuntimeFailure("on_host_failure restart needs time.mode wall")  # validated
        if policy == "stop":
            raise RuntimeFailure(
                f"PeerHost {host.index} died near t={t:.3f}s carrying peers "
                f"{_span(host.peers)} ({reason}); runtime.on_host_failure is stop"
            )
        return dropped

    def announce_down(self, host: _Host, t: float | None) -> None:
        """Deliver ``PeerDown`` for the dead host's peers to every peer still running (at
        ``t`` under virtual time, at once under wall time), so neighbours stop waiting."""
        refs = [h.actor.peers_down.remote(host.peers, t) for h in self.hosts if h.alive]
        for ref in refs:
            try:
                ray.get(ref, timeout=120)
            except RayActorError:  # a second death shows at that host's next call
                continue
            except GetTimeoutError:
                raise RuntimeFailure("a PeerHost did not take a PeerDown within 120 s") from None

    def restart_host(
        self, host: _Host, data: bytes, t0: float, flush_s: float
    ) -> tuple[_Host, Any]:
        """Start a new host from dead ``host``'s checkpoint ``data`` (wall time): it gets the
        next index, every live host routes the peers to it, and its loop starts with their
        rejoin; returns the new host and its loop's reference."""
        index = len(self.hosts)
        opts = dict(host.options)
        device = opts.pop("device")
        remote_host: Any = ray.remote(PeerHost)
        actor = remote_host.options(**opts).remote(index)
        owner = np.array(self._owner)
        owner[host.peers] = index
        self._owner = owner
        timeout = self.config.runtime.start_timeout
        try:
            info: dict[str, Any] = ray.get(
                actor.restore.remote(data, owner, device, self.config.runtime.torch_threads),
                timeout=timeout,
            )
        except (GetTimeoutError, RayActorError) as exc:
            with contextlib.suppress(Exception):
                ray.kill(actor)
            raise RuntimeFailure(
                f"PeerHost {host.index} could not be restarted from its checkpoint: {exc}"
            ) from None
        except RayTaskError as exc:
            raise _cause(exc) from None
        new = _Host(index, actor, list(host.peers), info, options=host.options)
        host.rehosted = index
        self.hosts.append(new)
        if self.plan.coordinator is not None:
            entries = [(p, index, info.get("node")) for p in host.peers]
            with contextlib.suppress(RayActorError, GetTimeoutError):  # shows at its next call
                ray.get(self.coordinator.actor.register.remote(entries), timeout=60)
        others = [h for h in self.hosts if h.alive and h is not new]
        refs = [h.actor.rehost.remote(host.peers, index, actor) for h in others]
        for ref in refs:
            with contextlib.suppress(RayActorError):  # a second death shows later
                ray.get(ref, timeout=60)
        handles = [h.actor for h in self.hosts]
        loop = actor.run_wall.remote(t0, handles, flush_s, True)
        for h in others:
            h.actor.peers_up.remote(host.peers, None)
        return new, loop

    def peer_reports(self) -> list[PeerReport]:
        out: list[PeerReport] = []
        for h in self.hosts:
            if h.rehosted is not None:
                continue  # its peers report from the host that took them over
            if h.alive:
                try:
                    out += ray.get(h.actor.reports.remote(), timeout=60)
                    continue
                except (RayActorError, GetTimeoutError):
                    h.alive = False
            snap = h.snapshot
            rounds = dict(zip(snap.ids, snap.rounds, strict=True)) if snap else {}
            out += [PeerReport(i, rounds.get(i, 0), {}, False, False) for i in h.peers]
        return sorted(out, key=lambda r: r.id)

    def close(self) -> None:
        # Tearing down what may already be gone (a dead host, a lost cluster) is not an error.
        for h in self.hosts:
            with contextlib.suppress(Exception):
                ray.kill(h.actor)
        if self._pg is not None:
            with contextlib.suppress(Exception):
                remove_placement_group(self._pg)
            self._pg = None
        if self._started_ray and ray.is_initialized():
            ray.shutdown()
            self._started_ray = False


def _driver_evaluator(world: Any) -> Any:
    from p2pfed.experiment import build_evaluator

    return build_evaluator(world, "cpu")


def _cause(exc: RayTaskError) -> BaseException:
    """The exception a host raised, so a ConfigError from a host reads like a local one."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, P2PFedError):
        return cause
    return RuntimeFailure(f"a PeerHost failed: {cause or exc}")


class _Driver:
    """The virtual-time driver's view of the hosts (implements ``Hosts``)."""

    def __init__(self, runtime: RayRuntime, observer: RunObserver):
        self.rt = runtime
        self.observer = observer
        self.taps = runtime.taps
        n_hosts = len(runtime.hosts)
        self.lookahead = runtime.world.network.min_latency
        self.senders = runtime.channels  # host -> the hosts that may send frames to it
        self.transit: list[list[Any]] = [[] for _ in range(n_hosts)]  # refs per destination
        self.transit_count = [0] * n_hosts
        self.transit_min = [math.inf] * n_hosts
        self.dropped = 0  # frames queued at or sent to a host that died
        self.window_end = 0.0

    def start(self) -> HostsState:
        return self._call({h.index: (None, False) for h in self.rt.hosts})

    def state(self) -> HostsState:
        return self._state()

    def checkpoint_state(self) -> dict[str, Any]:
        """Every live host's engine and the frames between hosts, at a tick (see
        :func:`run_virtual`'s ``after_tick``), with what the driver counts."""
        hosts = self.rt.hosts
        refs = {h.index: h.actor.checkpoint.remote() for h in hosts if h.alive}
        try:
            engines = {i: ray.get(ref) for i, ref in refs.items()}
            transit = [[ray.get(ref) for ref in refs_] for refs_ in self.transit]
        except RayActorError as exc:
            raise RuntimeFailure(f"a PeerHost died while writing a checkpoint: {exc}") from None
        except RayTaskError as exc:
            raise _cause(exc) from None
        return {
            "engines": engines,
            "transit": transit,
            "transit_count": list(self.transit_count),
            "transit_min": list(self.transit_min),
            "dropped": self.dropped,
            "window_end": self.window_end,
            "hosts": [(h.alive, h.last, h.snapshot) for h in hosts],
            "failures": list(self.rt.failures),
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Put the hosts (started afresh, in the same plan) back where a checkpoint found
        them; hosts dead then are killed again."""
        rt = self.rt
        if len(state["hosts"]) != len(rt.hosts):
            raise RuntimeFailure(
                f"the checkpoint has {len(state['hosts'])} PeerHosts, this run {len(rt.hosts)}"
            )
        refs = []
        for h, (alive, last, snapshot) in zip(rt.hosts, state["hosts"], strict=True):
            h.last, h.snapshot = last, snapshot
            if not alive:
                _kill(h.actor)
                h.alive = False
                continue
            opts = h.options
            refs.append(
                h.actor.restore.remote(
                    state["engines"][h.index],
                    rt._owner,
                    opts["device"],
                    rt.config.runtime.torch_threads,
                )
            )
        try:
            ray.get(refs, timeout=rt.config.runtime.start_timeout)
        except RayTaskError as exc:
            raise _cause(exc) from None
        except (RayActorError, GetTimeoutError) as exc:
            raise RuntimeFailure(f"a PeerHost could not be restored: {exc}") from None
        self.transit = [[ray.put(batch) for batch in batches] for batches in state["transit"]]
        self.transit_count = list(state["transit_count"])
        self.transit_min = list(state["transit_min"])
        self.dropped = int(state["dropped"])
        self.window_end = float(state["window_end"])
        rt.failures[:] = state["failures"]

    def step(self, cap: float, inclusive: bool) -> HostsState:
        hosts = self.rt.hosts
        nxt = {
            h.index: min(h.last["next_time"] if h.last else 0.0, self.transit_min[h.index])
            for h in hosts
            if h.alive
        }
        ends: dict[int, tuple[float, bool]] = {}
        earliest = self._earliest(nxt)
        for index in nxt:
            horizon = min(
                (earliest[g] + self.lookahead for g in self.senders[index] if g in nxt),
                default=math.inf,
            )
            ends[index] = (cap, inclusive) if horizon > cap else (horizon, False)
        self.window_end = min(nxt.values(), default=cap)
        for index, at in self.rt.config.runtime.fail_hosts.items():
            if index < len(hosts) and hosts[index].alive and ends[index][0] > at:
                _kill(hosts[index].actor)  # fault injection: dead before this window
        # a host with nothing to do before its end is not called at all (its frames in
        # transit wait for a later window): an idle coordinator, clients waiting for it
        busy = {
            i: (end, incl)
            for i, (end, incl) in ends.items()
            if nxt[i] < end or (incl and nxt[i] == end)
        }
        return self._call(busy)

    def snapshot(self) -> list[Snapshot]:
        alive = [h for h in self.rt.hosts if h.alive]
        refs = [h.actor.snapshot.remote() for h in alive]
        snaps: list[Snapshot] = []
        died = []
        for h, ref in zip(alive, refs, strict=True):
            try:
                h.snapshot = ray.get(ref)
            except RayActorError as exc:
                died.append((h, exc))
                continue
            except RayTaskError as exc:
                raise _cause(exc) from None
            snaps.append(h.snapshot)
        for h, error in died:
            self._host_died(h, error)
        return snaps

    def _earliest(self, nxt: dict[int, float]) -> dict[int, float]:
        """The earliest time each host can next act: its own next event, or a frame that a
        chain of hosts could still pass on to it (each hop costs at least the lookahead) —
        a shortest-path fixpoint over the channel graph, so a host never runs past a frame
        that reaches it through a third host."""
        earliest = dict(nxt)
        changed = True
        while changed:
            changed = False
            for h in earliest:
                for g in self.senders[h]:
                    if g in earliest and earliest[g] + self.lookahead < earliest[h]:
                        earliest[h] = earliest[g] + self.lookahead
                        changed = True
        return earliest

    def _call(self, ends: Mapping[int, tuple[float | None, bool]]) -> HostsState:
        """One ``step`` call per live host, each to its own end; collect the reports."""
        hosts = self.rt.hosts
        calls: dict[int, Any] = {}
        handed = [0] * len(hosts)  # frames each called host is given in this call
        for h in hosts:
            i = h.index
            if not h.alive:
                self.dropped += self.transit_count[i]  # queued for a host found dead meanwhile
            elif i in ends:
                end, inclusive = ends[i]
                handed[i] = self.transit_count[i]
                calls[i] = h.actor.step.options(num_returns=len(hosts) + 1).remote(
                    end, inclusive, *self.transit[i]
                )
            else:
                continue  # idle this window: its transit stays queued
            self.transit[i], self.transit_count[i], self.transit_min[i] = [], 0, math.inf
        died = []
        for h in hosts:
            if h.index not in calls:
                continue
            refs = calls[h.index]
            try:
                report = ray.get(refs[0])
            except RayActorError as exc:
                died.append((h, exc))
                h.alive = False
                self.dropped += handed[h.index]  # it took these frames with it
                continue
            except RayTaskError as exc:
                raise _cause(exc) from None
            h.last = report
            self._replay(report["records"])
            for dest, (count, first) in enumerate(report["out"]):
                if not count:
                    continue
                if not hosts[dest].alive:
                    self.dropped += count
                    continue
                self.transit[dest].append(refs[1 + dest])
                self.transit_count[dest] += count
                self.transit_min[dest] = min(self.transit_min[dest], first)
        # a destination that died during this window loses what was sent to it
        for h in hosts:
            if not h.alive and self.transit_count[h.index]:
                self.dropped += self.transit_count[h.index]
                self.transit[h.index], self.transit_count[h.index] = [], 0
                self.transit_min[h.index] = math.inf
        # only now, with every report of the window in, tell the survivors (a host still
        # stepping must not receive PeerDown concurrently)
        for h, error in died:
            self._host_died(h, error)
        return self._state()

    def _state(self) -> HostsState:
        reports = [h.last for h in self.rt.hosts if h.last]
        alive = [h.last for h in self.rt.hosts if h.alive and h.last]
        in_transit = sum(self.transit_count)
        dead_peers = sum(len(h.peers) for h in self.rt.hosts if not h.alive)
        now = max((r["now"] for r in reports), default=0.0)
        self.rt.now = now
        return HostsState(
            next_time=min([r["next_time"] for r in alive] + self.transit_min, default=math.inf),
            pending=sum(r["pending"] for r in alive) + in_transit,
            frames_pending=sum(r["frames_pending"] for r in alive) + in_transit,
            done=sum(r["done"] for r in alive) + dead_peers,
            completed=sum(r["completed"] for r in reports),
            events=sum(r["events"] for r in reports),
            now=now,
            frames=frame_totals(r["frames"] for r in reports),
            settled=sum(r["settled"] for r in alive) + dead_peers,
        )

    def _replay(self, records: list[tuple[str, tuple[Any, ...]]]) -> None:
        for name, args in records:
            if name == "tap":
                for tap in self.taps:
                    tap(*args)
            elif name == "inbox":
                for tap in self.rt.inbox_taps:
                    tap(*args)
            else:
                getattr(self.observer, name)(*args)

    def _host_died(self, host: _Host, exc: BaseException) -> None:
        self.dropped += self.rt.host_failed(host, self.window_end, exc, self.observer)
        self.rt.announce_down(host, self.window_end)


def _kill(actor: Any, timeout: float = 30.0) -> None:
    """Kill a host and return only once it is dead (``ray.kill`` does not wait), so an
    injected failure happens at a deterministic point of the run."""
    ray.kill(actor, no_restart=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ray.get(actor.ping.remote(), timeout=timeout)
        except RayActorError:
            return
        time.sleep(0.01)
    raise RuntimeFailure("a PeerHost killed by runtime.fail_hosts did not die")


def _sent_to(status: Mapping[str, Any], host: int) -> int:
    """Frames a host's status counts as sent to ``host`` (0 for a host started after it)."""
    sent: list[int] = status["sent_to"]
    return sent[host] if host < len(sent) else 0


def _span(ids: Sequence[int]) -> str:
    if list(ids) == list(range(ids[0], ids[-1] + 1)):
        return f"{ids[0]}-{ids[-1]}" if len(ids) > 1 else str(ids[0])
    return str(list(ids))


class _WallDriver:
    """Wall time: every host runs its own loop (``PeerHost.run_wall``); frames go host to
    host as soon as they are flushed; the driver only watches — it polls the hosts'
    counters, evaluates snapshots every ``eval.interval`` wall seconds, and ends the run
    once every peer has stopped and every frame sent has been received (or at
    ``time.limit``). There is no global barrier anywhere.
    """

    POLL_S = 0.05  # how often the driver looks at the hosts
    FLUSH_S = 0.005  # the longest a host holds frames back to batch them
    START_S = 1.0  # hosts start their clocks together, this long after the driver asks
    STALL_S = 5.0  # nothing pending anywhere for this long while peers wait: a deadlock

    def __init__(self, runtime: RayRuntime, observer: RunObserver):
        self.rt = runtime
        self.observer = observer
        self.evaluate = Evaluation(
            _driver_evaluator(runtime.world), runtime.world.num_peers, observer
        )
        self.status: dict[int, dict[str, Any]] = {}
        self.dropped = 0
        self.t0 = time.time() + self.START_S
        self.loops: dict[int, Any] = {}
        rcfg = runtime.config.runtime
        self.restart = rcfg.on_host_failure == "restart"
        self.checkpoint_s = float(runtime.config.checkpoint.wall_interval)
        self.checkpoints: dict[int, bytes] = {}  # host -> its latest checkpoint
        self.taking: dict[int, Any] = {}  # host -> the checkpoint it is writing now
        self.checkpointed_at = 0.0
        self.restarts: list[dict[str, Any]] = []

    def _alive(self) -> list[_Host]:
        return [h for h in self.rt.hosts if h.alive]

    def _snapshot(self) -> list[Snapshot]:
        snaps = []
        for h in self._alive():
            try:
                h.snapshot = ray.get(h.actor.snapshot.remote())
            except RayActorError as exc:
                self._host_died(h, exc)
                continue
            except RayTaskError as exc:
                raise _cause(exc) from None
            snaps.append(h.snapshot)
        return snaps

    def _poll(self) -> None:
        alive = self._alive()
        refs = [h.actor.status.remote() for h in alive]
        for h, ref in zip(alive, refs, strict=True):
            try:
                st = ray.get(ref)
            except RayActorError as exc:
                self._host_died(h, exc)
                continue
            except RayTaskError as exc:
                raise _cause(exc) from None
            self._record(h.index, st)

    def _record(self, index: int, st: dict[str, Any]) -> None:
        self.status[index] = st
        for name, args in st.pop("records"):
            if name == "tap":
                for tap in self.rt.taps:
                    tap(*args)
            elif name == "inbox":
                for tap in self.rt.inbox_taps:
                    tap(*args)
            else:
                getattr(self.observer, name)(*args)

    def _check_loops(self, loops: dict[int, Any]) -> None:
        """A host loop only returns after ``stop``: one that ended already failed."""
        refs = [ref for i, ref in loops.items() if self.rt.hosts[i].alive]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        for ref in ready:
            index = next(i for i, r in loops.items() if r is ref)
            try:
                ray.get(ref)
            except RayActorError as exc:
                self._host_died(self.rt.hosts[index], exc)
                continue
            except RayTaskError as exc:
                raise _cause(exc) from None
            raise RuntimeFailure(f"PeerHost {index}'s loop ended before the run did")

    def _host_died(self, host: _Host, exc: BaseException) -> None:
        t = time.time() - self.t0
        self.dropped += self.rt.host_failed(host, t, exc, self.observer)
        self.rt.announce_down(host, None)
        self.taking.pop(host.index, None)
        if self.restart:
            data = self.checkpoints.pop(host.index)  # every host has one from its start
            new, loop = self.rt.restart_host(host, data, self.t0, self.FLUSH_S)
            self.loops[new.index] = loop
            self.checkpoints[new.index] = data
            self.restarts.append({"host": host.index, "as": new.index, "t": t})
            self.observer.peer_event(
                t,
                host.peers[0],
                "host_restarted",
                {"host": host.index, "as": new.index, "peers": [host.peers[0], host.peers[-1]]},
            )

    def _take_checkpoints(self, now: float, *, wait: bool = False) -> None:
        """Collect the checkpoints the hosts finished writing (all of them with ``wait``);
        every ``checkpoint.wall_interval`` ask each live host for a new one (it pickles its
        engine under its lock, between two events). The bytes come to the driver, so they
        outlive the host that wrote them."""
        if self.taking:
            refs = list(self.taking.values())
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=None if wait else 0)
            done = set(ready)
            for index, ref in list(self.taking.items()):
                if ref not in done:
                    continue
                del self.taking[index]
                try:
                    self.checkpoints[index] = ray.get(ref)
                except RayActorError:
                    continue  # it died: its death shows at its next call
                except RayTaskError as exc:
                    raise _cause(exc) from None
        if now - self.checkpointed_at >= self.checkpoint_s:
            self.checkpointed_at = now
            for h in self._alive():
                if h.index not in self.taking:
                    self.taking[h.index] = h.actor.checkpoint.remote()

    def _dead_host_frames(self) -> tuple[int, int]:
        """Settle the frame counts of hosts that died, whose own counters stopped at their
        last status: returns (dropped, sent late). Dropped: frames sent to a dead host that
        it had not received by then, frames it held queued or undelivered, and frames it
        reported sent that never arrived; sent late: frames that arrived from it although
        its last status did not count them yet."""
        dropped = late = 0
        for dead in (h.index for h in self.rt.hosts if not h.alive):
            last = self.status.get(dead)
            received = last["received_from"] if last else {}
            for a, st in self.status.items():
                if a == dead:
                    continue
                dropped += _sent_to(st, dead) - received.get(a, 0)
                gap = st["received_from"].get(dead, 0) - (_sent_to(last, a) if last else 0)
                late, dropped = (late + gap, dropped) if gap > 0 else (late, dropped - gap)
            if last:
                dropped += last["frames_pending"] + last["inbox"]
        return dropped, late

    def _quiet(self) -> bool:
        """No frame anywhere: none queued, none unsent, every pair's counts balance."""
        alive = {h.index for h in self._alive()}
        st = {i: self.status[i] for i in alive if i in self.status}
        if len(st) < len(alive):
            return False
        if any(s["frames_pending"] or s["unsent"] for s in st.values()):
            return False
        return all(
            _sent_to(st[a], b) == st[b]["received_from"].get(a, 0) for a in st for b in st if a != b
        )

    def _done(self) -> int:
        dead = sum(len(h.peers) for h in self.rt.hosts if not h.alive and h.rehosted is None)
        return dead + sum(
            self.status[h.index]["settled"] for h in self._alive() if h.index in self.status
        )

    def run(self) -> RunOutcome:
        rt, cfg = self.rt, self.rt.config
        world = rt.world
        interval = float(cfg.eval.interval or 1.0)
        limit = cfg.time.limit
        total = world.total_rounds
        self.observer.progress(0.0, 0, total)
        self.evaluate(0.0, self._snapshot())
        self.t0 = time.time() + self.START_S  # after the first evaluation
        if self.restart:  # every host's state before it starts: always one to go back to
            self.taking = {h.index: h.actor.checkpoint.remote() for h in self._alive()}
            self._take_checkpoints(-math.inf, wait=True)
        handles = [h.actor for h in rt.hosts]
        loops = self.loops
        loops.update(
            {h.index: h.actor.run_wall.remote(self.t0, handles, self.FLUSH_S) for h in rt.hosts}
        )
        try:
            status = self._watch(loops, interval, limit, total)
        except BaseException:
            self._stop(loops, quiet=True)  # keep the first error, not a follow-up one
            raise
        self._stop(loops, quiet=False)
        end = time.time() - self.t0
        now = float(limit) if status == "time_limit" and limit is not None else end
        snapshots = self._snapshot()
        final = self.evaluate(now, snapshots)
        frames = frame_totals(s["frames"] for s in self.status.values())
        dropped, late = self._dead_host_frames()
        frames["sent"] += late
        frames["dropped"] = self.dropped + dropped
        accounted = frames["delivered"] + frames["lost"] + frames["rejected"] + frames["dropped"]
        frames["in_flight"] = frames["sent"] - accounted  # 0 unless a time limit cut the run
        events = sum(s["events"] for s in self.status.values())
        return RunOutcome(status, now, events, final, frames, models_of(snapshots))

    def _watch(
        self, loops: dict[int, Any], interval: float, limit: float | None, total: int
    ) -> str:
        """Poll until every peer stopped and no frame is anywhere, or the time limit."""
        rt, world = self.rt, self.rt.world
        tick, quiet_since = interval, None
        while True:
            time.sleep(self.POLL_S)
            now = time.time() - self.t0
            for index, at in rt.config.runtime.fail_hosts.items():
                if index < len(rt.hosts) and rt.hosts[index].alive and now > at:
                    _kill(rt.hosts[index].actor)  # fault injection
            self._check_loops(loops)
            self._poll()
            if self.restart:
                self._take_checkpoints(now)
            completed = sum(s["completed"] for s in self.status.values())
            self.observer.progress(max(now, 0.0), completed, total)
            if now >= tick:
                self.evaluate(now, self._snapshot())
                tick = time.time() - self.t0 + interval  # never evaluate back to back
            done, quiet = self._done() >= world.participants, self._quiet()
            if done and quiet:
                return "completed"
            if limit is not None and now >= limit:
                return "time_limit"
            # idle: nothing queued or unsent anywhere (counts that never balance once all
            # is idle would be a transport bug: that stalls too, and fails, never hangs)
            idle = not any(
                s["pending"] or s["frames_pending"] or s["unsent"]
                for i, s in self.status.items()
                if rt.hosts[i].alive
            )
            if not idle:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = now
            elif now - quiet_since > self.STALL_S:
                if done:
                    raise RuntimeFailure(
                        "every peer stopped, but frames sent between hosts never arrived "
                        f"(sent_to/received_from counts disagree for {self.STALL_S:.0f}s)"
                    )
                dead = [h.index for h in rt.hosts if not h.alive]
                raise RuntimeFailure(
                    f"nothing left to happen at t={now:.1f}s while "
                    f"{world.participants - self._done()} peers still wait "
                    + (f"(hosts {dead} died; " if dead else "(")
                    + "a lost message with no timeout? set protocol.timeout)"
                )

    def _stop(self, loops: dict[int, Any], *, quiet: bool) -> None:
        """Stop every host loop and take its final counters."""
        for h in self._alive():
            h.actor.stop.remote()
        for index, ref in loops.items():
            host = self.rt.hosts[index]
            if not host.alive:
                continue
            try:
                self._record(index, ray.get(ref, timeout=60))
            except RayActorError as exc:
                if quiet:
                    host.alive = False
                else:
                    self._host_died(host, exc)
            except (RayTaskError, GetTimeoutError) as exc:
                if not quiet:
                    raise (
                        _cause(exc)
                        if isinstance(exc, RayTaskError)
                        else RuntimeFailure(f"PeerHost {index} did not stop within 60 s")
                    ) from None


__all__ = ["FRAME_COUNTERS", "HostPlan", "PeerHost", "RayRuntime", "connect", "plan_hosts"]
