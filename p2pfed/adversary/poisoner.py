"""Peers that poison what they share, and attackers on the path of links.

A :class:`Poisoner` is the overlay (:class:`~p2pfed.runtime.base.Overlay`) of one poisoning
peer: the peer's protocol stays honest — it trains, mixes and follows every round — and the
engine lets the overlay see what the peer starts training from and what it receives, and
rewrite each model it sends (``ModelShare``, ``ClientUpdate``, ``AsyncUpdate``, gossip
requests and replies) on its own clock (:class:`~p2pfed.adversary.config.ScheduleConfig`,
run seconds, virtual or wall). Colluding poisoners share one :class:`Board`: the honest
models any of them received, by sender — their joint view of the honest peers, which ALIE,
IPM and dissensus craft from. A board is shared memory, so under Ray the runtime places each
colluding group whose behaviour reads the view on one host
(:func:`~p2pfed.runtime.ray_runtime.place`), and the view, and the run, are the same as
in-process.

Under secure aggregation and HE the shared messages hold masks, shares or ciphertexts, so a
poisoner (``before_masking``) rewrites the model its training produced instead — its input
to the secure sum or the encryption — through the overlay's ``trained`` hook; its view is
then its colluders' own models (it receives no honest model but the global one, so ALIE
and IPM need two colluders or more), and the behaviours that need the shared models
themselves (dissensus, delay, flood) are refused by the config. Two consequences: the
schedule is read when the training starts (the engine trains at once and delivers the
result later), and a result the protocol then throws away (a FedAvg client overtaken by a
newer round) still counts as poisoned; and in gossip under secure sums the crafted model is
also the poisoner's own state, so a sign flip or a scaling compounds over its rounds, where
in the clear its own model stays honest.

An :class:`OnPath` attacker is an interceptor (:data:`~p2pfed.runtime.base.Interceptor`) on
chosen links: it modifies (negates the model inside, or flips a ciphertext byte), replays,
forges or drops frames. A plain link delivers what it gets; a sealed link rejects every
altered, replayed or forged frame, and the run counts them (``frames_rejected``).

Threat model: Byzantine peers that know the protocol, the topology and the training
configuration, see what they receive, and coordinate; an active network attacker on the
links it controls, without the link keys.

Pure: numpy; randomness from each attacker's own seeded stream.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

from p2pfed.adversary.config import NEEDS_VIEW, OnPathConfig, PoisonerConfig
from p2pfed.errors import FrameError
from p2pfed.poison import model as crafted
from p2pfed.protocol.codec import Codec
from p2pfed.protocol.core import Message
from p2pfed.protocol.dpsgd import ModelShare
from p2pfed.protocol.fed import AsyncUpdate, ClientUpdate, GlobalModel
from p2pfed.protocol.gossip import GossipReply, GossipRequest
from p2pfed.topology import TopologySchedule

#: messages whose ``params`` a poisoner rewrites
SHARED_MODELS: tuple[type[Message], ...] = (
    ModelShare,
    ClientUpdate,
    AsyncUpdate,
    GossipRequest,
    GossipReply,
)


def _params(message: Any) -> np.ndarray | None:
    params = getattr(message, "params", None)
    return params if isinstance(params, np.ndarray) else None


def _with_params(message: Any, params: np.ndarray) -> Any:
    """A copy of a model-carrying message with other ``params``."""
    return dataclasses.replace(message, params=params)


class Board:
    """The colluders' joint view: the latest model each honest sender shared with any of
    them (what ALIE, IPM and dissensus read)."""

    def __init__(self, colluders: Sequence[int]):
        self.colluders = frozenset(colluders)
        self.models: dict[int, np.ndarray] = {}  # honest senders' latest models
        self.own: dict[int, np.ndarray] = {}  # the colluders' own honest results

    def record(self, src: int, params: np.ndarray) -> None:
        """Keep ``src``'s latest model; a diverged (non-finite) one is nothing to craft
        from, and replaces nothing."""
        if src not in self.colluders and bool(np.all(np.isfinite(params))):
            self.models[src] = params

    def view(self) -> np.ndarray:
        """The honest models seen, (m, P) float64 (m may be 0); where the colluders saw
        fewer than two (a FedAvg client sees only global models), their own honestly
        trained models stand in, as in Baruch et al.'s estimate of the honest statistics."""
        rows = [v for _, v in sorted(self.models.items())]
        if len(rows) < 2:
            rows += [v for _, v in sorted(self.own.items()) if np.all(np.isfinite(v))]
        if not rows:
            return np.zeros((0, 0))
        return np.stack(rows).astype(np.float64)


class Poisoner:
    """The overlay of one poisoning peer (see the module docstring)."""

    def __init__(
        self,
        cfg: PoisonerConfig,
        peer: int,
        board: Board,
        schedule: TopologySchedule,
        num_peers: int,
        *,
        before_masking: bool = False,
    ):
        self.cfg = cfg
        self.before_masking = before_masking
        self.peer = peer
        self.board = board
        self.schedule = schedule
        self.num_peers = num_peers
        self.rng = np.random.default_rng([cfg.seed, peer])
        self.reference: np.ndarray | None = None  # the model its training started from
        self.sent: deque[np.ndarray] = deque(maxlen=cfg.stale_rounds + 1)
        self.poisoned = 0  # messages rewritten

    def training(self, now: float, peer: int, start: np.ndarray) -> None:
        self.reference = np.asarray(start, dtype=np.float64)

    def trained(self, now: float, peer: int, start: np.ndarray, params: np.ndarray) -> np.ndarray:
        """Under secure aggregation or HE (``before_masking``) the poisoner rewrites its
        trained model here, before the protocol masks or encrypts it; elsewhere it is left
        alone and the shared messages are rewritten instead."""
        if not self.before_masking:
            return params
        return self._rewrite(now, -1, params, None)

    def incoming(self, now: float, src: int, dst: int, message: Any) -> None:
        params = _params(message)
        if params is not None and not isinstance(message, GlobalModel):
            self.board.record(src, params)

    def outgoing(self, now: float, src: int, dst: int, message: Any) -> list[tuple[float, Any]]:
        params = _params(message)
        honest = [(0.0, message)]
        if params is None or not isinstance(message, SHARED_MODELS) or self.before_masking:
            return honest
        behaviour = self.cfg.behaviour
        if behaviour not in ("delay", "flood"):
            out = self._rewrite(now, dst, params, message)
            return honest if out is params else [(0.0, _with_params(message, out))]
        self.board.own[self.peer] = params
        if not self._acts(now, dst):
            return honest
        self.poisoned += 1
        if behaviour == "delay":
            return [(float(self.cfg.delay), message)]
        return [(0.0, message)] * self.cfg.copies

    def _rewrite(self, now: float, dst: int, params: np.ndarray, message: Any) -> np.ndarray:
        """The model shared (or masked) instead of ``params``: a stale replay or a crafted
        model when the poisoner acts now, else ``params``."""
        self.board.own[self.peer] = params
        if not self._acts(now, dst):
            self.sent.append(params)
            return params
        if self.cfg.behaviour == "stale":
            self.sent.append(params)
            if len(self.sent) <= self.cfg.stale_rounds:
                return params  # nothing old enough yet
            self.poisoned += 1
            return self.sent[0]
        out = self._craft(params, dst, message)
        if out is None:
            return params
        self.poisoned += 1
        return out.astype(np.float32)

    def _acts(self, now: float, dst: int) -> bool:
        if self.cfg.behaviour in ("label_flip", "backdoor"):
            return False  # the data is poisoned; what it shares is what it trained
        if not self.cfg.schedule.on(now):
            return False
        p = self.cfg.schedule.probability
        return p >= 1.0 or float(self.rng.random()) < p

    def _craft(self, honest: np.ndarray, dst: int, message: Any) -> np.ndarray | None:
        """The model the peer shares instead of ``honest``; ``None`` when the behaviour has
        nothing to work from yet (no reference, an empty view)."""
        cfg, ref = self.cfg, self.reference
        h = np.asarray(honest, dtype=np.float64)
        if not np.all(np.isfinite(h)) or (ref is not None and not np.all(np.isfinite(ref))):
            return None  # its own model diverged: it has nothing to craft from
        if ref is None or ref.shape != h.shape:
            ref = h if cfg.behaviour in ("gaussian",) else None
        if cfg.behaviour == "sign_flip" and ref is not None:
            return crafted.sign_flip(h, ref, scale=cfg.scale or 1.0)
        if cfg.behaviour == "gaussian":
            base = ref if ref is not None else h
            return crafted.gaussian_noise(base, sigma=cfg.sigma, rng=self.rng)
        if cfg.behaviour == "scaling" and ref is not None:
            gamma = cfg.scale if cfg.scale is not None else float(self.num_peers)
            return crafted.model_replacement(h, ref, scale=gamma)
        if cfg.behaviour not in NEEDS_VIEW:
            return None
        view = self.board.view()
        if view.shape[0] < 2 or view.shape[1] != h.size:
            return None
        if cfg.behaviour == "alie":
            if cfg.z is not None:
                return crafted.alie(view, z=cfg.z)
            return crafted.alie(
                view, num_clients=self.num_peers, num_byzantine=len(self.board.colluders)
            )
        if cfg.behaviour == "ipm":
            return None if ref is None else crafted.ipm(view, ref, epsilon=cfg.epsilon)
        return self._dissensus(dst, message, cfg.epsilon)

    def _dissensus(self, dst: int, message: Any, epsilon: float) -> np.ndarray | None:
        target = self.board.models.get(dst)
        if target is None or dst >= self.num_peers:
            return None
        topo = self.schedule.at(int(getattr(message, "round", 0)))
        neighbours = [j for j in topo.in_neighbours(dst) if j != dst]
        honest = [j for j in neighbours if j not in self.board.colluders and j in self.board.models]
        byzantine = [j for j in neighbours if j in self.board.colluders]
        if not honest or not byzantine:
            return None
        return crafted.dissensus(
            np.asarray(target, dtype=np.float64),
            np.stack([self.board.models[j] for j in honest]).astype(np.float64),
            np.array([topo.weight(dst, j) for j in honest]),
            byzantine_weight=float(sum(topo.weight(dst, j) for j in byzantine)),
            epsilon=epsilon,
        )


class OnPath:
    """An interceptor on ``cfg.links`` (see the module docstring)."""

    def __init__(self, cfg: OnPathConfig, codec: Codec):
        self.cfg = cfg
        self.codec = codec
        self.links = {frozenset(p) for p in cfg.links}
        self.rng = np.random.default_rng([cfg.seed, 7])
        self.acted = 0

    def __call__(self, now: float, src: int, dst: int, frame: bytes) -> list[bytes]:
        if frozenset((src, dst)) not in self.links or not self.cfg.schedule.on(now):
            return [frame]
        p = self.cfg.schedule.probability
        if p < 1.0 and float(self.rng.random()) >= p:
            return [frame]
        self.acted += 1
        action = self.cfg.action
        if action == "drop":
            return []
        if action == "replay":
            return [frame, frame]
        try:
            decoded = self.codec.decode(frame)
        except FrameError:  # sealed: the attacker holds ciphertext only
            if action == "modify":
                tampered = bytearray(frame)
                tampered[len(tampered) // 2] ^= 0xFF
                return [bytes(tampered)]
            return [frame, bytes(self.rng.integers(0, 256, len(frame), dtype=np.uint8))]
        message: Any = decoded.message
        params = _params(message)
        if params is None:
            return [frame]
        if action == "modify":
            forged = dataclasses.replace(message, params=(-params).astype(np.float32))
            return [self.codec.encode(src, dst, forged)[0]]
        noise = self.rng.normal(0.0, 1.0, params.shape).astype(np.float32)
        injected = dataclasses.replace(message, params=noise)
        return [frame, self.codec.encode(src, dst, injected)[0]]
