"""Secure aggregation as protocol state machines: D-PSGD whose neighbourhood averages are
computed blind (each peer learns only the weighted sum of its neighbours' models), and
FedAvg whose coordinator learns only the sum of the clients' weighted models.

Two mechanisms (:mod:`p2pfed.crypto.secagg` has the cryptography and its threat model):

* ``secret-share``: every client of a session splits its encoded input into one additive
  share per group member, the shares for the others drawn from seeds it shares pairwise with
  each of them (pseudorandom secret sharing: they never travel). Clients say they are ready
  (``SsOffer``), the aggregator names the ready members (``SsReady``), and each member returns
  one vector, the share it kept plus the shares it holds for the other ready members
  (``SsShare``); the aggregator adds those up. No party short of the whole group
  sees anything but uniform noise, and a client's input costs one vector on the wire, as in
  plain D-PSGD. There is no dropout recovery: a member that never returns its vector makes
  the session abort.
* ``secagg``: Bonawitz et al. (CCS'17) pairwise masking with Shamir-shared self masks and
  mask keys, over SecAgg+ sparse masking graphs (Bell et al., CCS'20) when ``num_shares`` is
  below the group size; clients that drop at any phase are recovered while at least
  ``threshold`` remain.

A *session* is one secure sum: aggregator ``a`` (a peer for its neighbourhood, or the
coordinator), round ``r``, clients fixed beforehand (``a``'s in-neighbours in round ``r``'s
topology, or every client). Sessions are asynchronous, with virtual- (or wall-) time
deadlines: the first phase waits ``timeout`` seconds from the moment the aggregator is ready
(clients are still training), each later phase ``phase_timeout`` (a round trip); at a later
phase's deadline the requests go once more to the clients not heard from (a lost frame is
not a dropout; a client answers a repeated request with its first answer, never a new one),
and at the second deadline the silent clients count as dropouts of that phase. Below
:data:`MIN_GROUP` contributors, or below the threshold, the session aborts and the caller
moves on without the sum (D-PSGD keeps its own model for that round, FedAvg keeps the global
model). Inputs are clipped to
``±clipping_range`` and quantised into ``Z_2^32`` (or ``Z_2^64``) with step
``2 clipping_range / quantization_range`` (stochastic rounding from the peer's seeded
generator), so the decoded sum is within ``n 2c/Q`` per coordinate of the clipped sum.

Message flow of one session (``S`` = the aggregator, ``C`` = a client)::

    secagg:        C->S SaAdvert   S->C SaRoster   C->S SaShares   S->C SaRouted
                   C->S SaMasked   S->C SaUnmask   C->S SaReveal
    secret-share:  C->S SsOffer    S->C SsReady    C->S SsShare

D-PSGD round ``r`` at peer ``i`` (:class:`SecureDPSGD`): train to ``h_i``; join the session of
every out-neighbour ``a`` with input ``W_ai h_i``; open its own session over its
in-neighbours; when it ends, ``x_i = (W_ii + sum of the missing W_ij) h_i + sum_j W_ij h_j``
over the contributors ``j`` (exactly D-PSGD's rule for missing neighbours), then the next
round. FedAvg (:class:`SecureFedAvg`): the coordinator broadcasts the global model and opens
the round's session; a client trains and joins it with input ``(w x_k, w)``, ``w =
min(samples_k, max_weight) / max_weight``; the coordinator's new model is
``(1 - server_lr) x + server_lr * sum(w x_k) / sum(w)``. An aborted round keeps ``x`` and the
run moves on to the next round. A client still training when the next round's model arrives
trains that one next (its late input would find the session closed, so it is not sent).

A client joins each session at most once: a second input would seal new shares under the
session's (key, nonce) pairs and, for secret-share, leak the difference of two share vectors,
so a replayed request to join (a repeated global model) is refused.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

from p2pfed.crypto.config import MIN_GROUP
from p2pfed.crypto.fixedpoint import FixedPoint, FixedPointError
from p2pfed.crypto.secagg import (
    KEY_BYTES,
    SEALED_SHARE_BYTES,
    SHARE_BYTES,
    AbortError,
    PairKeys,
    SecAggClient,
    SecAggError,
    SecAggServer,
    SessionSpec,
    partial_sum,
    session_id,
    share_contribution,
)
from p2pfed.errors import ProtocolError
from p2pfed.protocol.core import (
    Busy,
    Effect,
    Emit,
    Event,
    Message,
    MessageArrived,
    Protocol,
    Send,
    SetTimer,
    Started,
    Stop,
    TimerFired,
    Train,
    TrainingDone,
    robust_events,
)
from p2pfed.protocol.fed import GlobalModel
from p2pfed.robust import RobustConfig, RobustError, aggregate, buckets
from p2pfed.robust.buckets import num_buckets
from p2pfed.topology import TopologySchedule

SecureMode = Literal["secret-share", "secagg"]

# --- messages (``agg`` and ``round`` name the session) ------------------------------------

_IDS = frozenset({"peers", "to", "owners", "survivors", "members", "y", "z"})


@dataclass(frozen=True)
class SaAdvert(Message):
    agg: int
    round: int
    key: bytes  # the client's fresh mask public key


@dataclass(frozen=True)
class SaRoster(Message):
    free_shape: ClassVar[frozenset[str]] = _IDS
    agg: int
    round: int
    peers: np.ndarray  # int64 ids
    keys: bytes  # their mask public keys, 32 bytes each, in the same order


@dataclass(frozen=True)
class SaShares(Message):
    free_shape: ClassVar[frozenset[str]] = _IDS
    agg: int
    round: int
    to: np.ndarray  # int64 holder ids
    blobs: bytes  # sealed shares, SEALED_SHARE_BYTES each


@dataclass(frozen=True)
class SaRouted(Message):
    free_shape: ClassVar[frozenset[str]] = _IDS
    agg: int
    round: int
    owners: np.ndarray
    blobs: bytes


@dataclass(frozen=True)
class SaMasked(Message):
    free_shape: ClassVar[frozenset[str]] = _IDS
    agg: int
    round: int
    y: np.ndarray  # ring elements


@dataclass(frozen=True)
class SaUnmask(Message):
    free_shape: ClassVar[frozenset[str]] = _IDS
    agg: int
    round: int
    survivors: np.ndarray


@dataclass(frozen=True)
class SaReveal(Message):
    free_shape: ClassVar[frozenset[str]] = _IDS
    agg: int
    round: int
    owners: np.ndarray
    kinds: bytes  # b"b" or b"s" per owner
    shares: bytes  # 1 index byte + 16 share bytes per owner


@dataclass(frozen=True)
class SsOffer(Message):
    agg: int
    round: int  # the client is ready with its input for this session


@dataclass(frozen=True)
class SsReady(Message):
    free_shape: ClassVar[frozenset[str]] = _IDS
    agg: int
    round: int
    members: np.ndarray  # int64 ids of the ready clients, the receiver among them


@dataclass(frozen=True)
class SsShare(Message):
    free_shape: ClassVar[frozenset[str]] = _IDS
    agg: int
    round: int
    z: np.ndarray  # the kept share of the input plus the shares held for the others


SESSION_MESSAGES: tuple[type[Message], ...] = (
    SaAdvert,
    SaRoster,
    SaShares,
    SaRouted,
    SaMasked,
    SaUnmask,
    SaReveal,
    SsOffer,
    SsReady,
    SsShare,
)
_TO_AGGREGATOR = (SaAdvert, SaShares, SaMasked, SaReveal, SsOffer, SsShare)


def _ids(values: Iterable[int]) -> np.ndarray:
    return np.asarray(list(values), dtype=np.int64)


def _chunks(blob: bytes, size: int, count: int) -> list[bytes] | None:
    if len(blob) != size * count:
        return None
    return [blob[k * size : (k + 1) * size] for k in range(count)]


# --- settings and state ----------------------------------------------------------------------


@dataclass(frozen=True)
class SecureSettings:
    """How a peer takes part in secure sums (the resolved ``security`` section)."""

    mode: SecureMode
    fixed: FixedPoint
    stochastic: bool
    timeout: float  # the first phase's deadline (it waits for training), seconds
    phase_timeout: float  # each later phase's deadline (a round trip), seconds
    num_shares: int | None = None  # secagg; None: the whole group
    threshold: int | None = None  # secagg; None: ceil(2/3 num_shares)
    scope: str = "nbhd"
    #: virtual time: a client's messages leave after the reference time of the crypto
    #: that made them (:data:`SECURE_COSTS`)
    charge: bool = False

    def group_policy(self, size: int) -> tuple[int, int]:
        """(num_shares, threshold) for a session of ``size`` clients.

        On a sparse masking graph (``num_shares < size``) the threshold is at least
        :data:`MIN_GROUP`: the aggregator learns the sum of every connected part of the
        survivors' masking graph, and a survivor's part holds the ``threshold - 1`` holders
        whose shares unmasked it, so a threshold of 2 can hand it a sum of two."""
        m = min(self.num_shares or size, size)
        t = self.threshold if self.threshold is not None else math.ceil(2 * m / 3)
        if m < size:
            t = max(t, MIN_GROUP)
        t = max(min(t, m), m // 2 + 1)
        return m, t


#: Reference costs (seconds) of the client-side steps of a secure sum, for charging them in
#: virtual time (``security.charge_compute``); measured on the project's reference machine
#: (2-core Xeon, ``scripts/bench_secure.py``): AES-128-CTR mask/share expansion ~4.1 GB/s,
#: fixed-point encoding ~10 ns a value, an X25519 key ~120 us, an X25519 agreement with its
#: KDF ~130 us, a pycryptodome Shamir split ~34 us, an AES-OCB seal or open ~10 us. The
#: aggregator's unmasking (one expansion per survivor, ~0.1 ms at d = 10^5) is not charged.
SECURE_COSTS = {
    "expand_byte": 1 / 4.1e9,
    "encode_value": 1e-8,
    "keygen": 1.2e-4,
    "agree": 1.3e-4,
    "split": 3.4e-5,
    "seal": 1.0e-5,
}


@dataclass
class SumResult:
    """A finished session: the decoded sum over ``contributors`` (None when aborted)."""

    round: int
    total: np.ndarray | None
    contributors: tuple[int, ...]
    reason: str | None = None


@dataclass
class _ClientSession:
    vector: np.ndarray | None = field(repr=False)  # the encoded input, until it is masked
    client: SecAggClient | None = None
    members: tuple[int, ...] = ()  # secret-share: the session's clients
    #: request type -> (request, the answer sent): a repeated request gets the same answer
    #: (out of reprs: the answers carry released shares)
    answered: dict[str, tuple[Message, Message]] = field(default_factory=dict, repr=False)
    #: request type -> the compute timer its answer waits behind (virtual-time charging)
    computing: dict[str, int] = field(default_factory=dict)


@dataclass
class _AggSession:
    round: int
    expected: tuple[int, ...] = ()
    opened: bool = False
    phase: str = "first"  # first -> (shares -> masked ->) last -> done
    waiting: tuple[int, ...] = ()
    inbox: dict[int, Any] = field(default_factory=dict)
    early: dict[int, Any] = field(default_factory=dict)  # first-phase messages before open
    server: SecAggServer | None = None
    ready: tuple[int, ...] = ()  # secret-share: the clients whose offers arrived
    requests: dict[int, Message] = field(default_factory=dict)  # this phase's, per client
    resent: bool = False  # this phase's requests were sent again once


@dataclass
class SecureState:
    """A peer's secure-sum state: its sessions as client and as aggregator."""

    rng: np.random.Generator
    clients: dict[tuple[int, int], _ClientSession] = field(default_factory=dict)
    aggs: dict[int, _AggSession] = field(default_factory=dict)
    floor: int = 0  # aggregator sessions below this round are closed
    joined: dict[int, int] = field(default_factory=dict)  # aggregator -> last round joined
    refused: int = 0
    aborted: int = 0
    clipped: int = 0
    busy: Busy = field(default_factory=lambda: Busy("secure:compute"))  # modelled crypto


class SecureSum:
    """One peer's secure-sum logic (configuration only; the state is :class:`SecureState`)."""

    def __init__(self, peer: int, settings: SecureSettings, pair: PairKeys, dim: int):
        self.peer = peer
        self.settings = settings
        self.pair = pair
        self.dim = dim
        self.fixed = settings.fixed

    # -- client side ------------------------------------------------------------------------

    def _session(self, agg: int, rnd: int) -> bytes:
        return session_id(self.settings.scope, agg, rnd)

    def _spec(self, agg: int, rnd: int, clients: Sequence[int]) -> SessionSpec:
        m, t = self.settings.group_policy(len(clients))
        return SessionSpec(
            self._session(agg, rnd), tuple(sorted(clients)), m, t, self.dim, self.fixed.dtype
        )

    def contribute(
        self,
        st: SecureState,
        agg: int,
        rnd: int,
        clients: Sequence[int],
        x: np.ndarray,
        *,
        encoded: dict[Any, np.ndarray] | None = None,
        key: Any = None,
    ) -> list[Effect]:
        """Join session (``agg``, ``rnd``) with real input ``x`` (length ``dim``).

        ``encoded`` caches encodings across the sessions of one round under ``key``: a peer
        whose input to several aggregators is the same (equal mixing weights, as on regular
        graphs) encodes it once. Sharing one rounding across sums reveals nothing the sums
        do not. A session joined before (this round or a later one of ``agg``) is refused:
        see the module docstring."""
        if rnd <= st.joined.get(agg, -1):
            return self._refuse(st, agg, rnd, "a second input to a session already joined")
        effects: list[Effect] = []
        ring = encoded.get(key) if encoded is not None else None
        cost = 0.0
        if ring is None:
            cost += self.dim * SECURE_COSTS["encode_value"]
            clipped = int(np.count_nonzero(np.abs(x) > self.fixed.clip))
            if clipped:
                st.clipped += clipped
                effects.append(
                    Emit("secure_input_clipped", {"agg": agg, "round": rnd, "values": clipped})
                )
            try:
                ring = self.fixed.encode(x, st.rng if self.settings.stochastic else None)
            except FixedPointError as exc:
                st.refused += 1
                fields = {"agg": agg, "round": rnd, "reason": str(exc)}
                return [*effects, Emit("secure_input_refused", fields)]
            if encoded is not None:
                encoded[key] = ring
        st.joined[agg] = rnd
        if self.settings.mode == "secret-share":
            st.clients[(agg, rnd)] = _ClientSession(ring, members=tuple(sorted(clients)))
            msg: Message = SsOffer(agg, rnd)
        else:
            client = SecAggClient(self.peer, self._spec(agg, rnd, clients), self.pair, st.rng)
            st.clients[(agg, rnd)] = _ClientSession(ring, client)
            msg = SaAdvert(agg, rnd, client.advertise())
            cost += SECURE_COSTS["keygen"]
        return [*effects, *self._after(st, cost, [Send(agg, msg)])]

    def _after(self, st: SecureState, seconds: float, effects: list[Effect]) -> list[Effect]:
        """``effects`` once ``seconds`` of modelled computation have passed (when charging,
        see :class:`~p2pfed.protocol.core.Busy`); else at once."""
        return st.busy.after(seconds, effects, charge=self.settings.charge)

    def _cost(self, msg: Message, answer: Message) -> float:
        """Reference seconds a client spends answering ``msg`` with ``answer``."""
        c = SECURE_COSTS
        expansion = self.dim * np.dtype(self.fixed.dtype).itemsize * c["expand_byte"]
        if isinstance(answer, SaShares):
            return 2 * c["split"] + len(answer.to) * c["seal"]
        if isinstance(answer, SaMasked) and isinstance(msg, SaRouted):
            k = len(msg.owners)
            return k * (c["seal"] + c["agree"]) + (k + 1) * expansion
        if isinstance(answer, SsShare) and isinstance(msg, SsReady):
            return 2 * (len(msg.members) - 1) * expansion
        return 0.0

    def _as_client(self, st: SecureState, sender: int, msg: Message) -> list[Effect]:
        agg, rnd = msg.agg, msg.round  # type: ignore[attr-defined]
        if sender != agg:
            return self._refuse(st, agg, rnd, f"session message relayed by peer {sender}")
        sess = st.clients.get((agg, rnd))
        if sess is None:
            return self._dropped(agg, rnd, "no session")
        name = type(msg).__name__
        done = sess.answered.get(name)
        if done is not None and _same(done[0], msg):
            key = sess.computing.get(name)
            if key is not None and st.busy.pending(key):
                return []  # the answer is still being computed: it goes out once, then
            return [Send(agg, done[1])]  # our answer was lost: the same answer again
        effects = self._answer(st, agg, rnd, sess, msg)
        cost = 0.0
        for effect in effects:
            if isinstance(effect, Send):
                sess.answered[name] = (msg, effect.message)
                cost += self._cost(msg, effect.message)
        sends: list[Effect] = [e for e in effects if isinstance(e, Send)]
        rest = [e for e in effects if not isinstance(e, Send)]
        held = self._after(st, cost, sends)
        if held and isinstance(held[0], SetTimer):
            sess.computing[name] = held[0].round
        return rest + held

    def _answer(
        self, st: SecureState, agg: int, rnd: int, sess: _ClientSession, msg: Message
    ) -> list[Effect]:
        if isinstance(msg, SsReady):
            if sess.vector is None:
                return self._refuse(st, agg, rnd, "a second, different list of ready members")
            effects = self._share(st, agg, rnd, sess, msg)
            if any(isinstance(e, Send) for e in effects):
                sess.vector = None  # one share vector per session: two would leak differences
            return effects
        if sess.client is None:
            return self._dropped(agg, rnd, "no session")
        client = sess.client
        try:
            if isinstance(msg, SaRoster):
                keys = _chunks(msg.keys, KEY_BYTES, len(msg.peers))
                if keys is None:
                    raise SecAggError("roster has the wrong length")
                blobs = client.share_keys(dict(zip(msg.peers.tolist(), keys, strict=True)))
                to = sorted(blobs)
                return [Send(agg, SaShares(agg, rnd, _ids(to), b"".join(blobs[v] for v in to)))]
            if isinstance(msg, SaRouted):
                blobs_in = _chunks(msg.blobs, SEALED_SHARE_BYTES, len(msg.owners))
                if blobs_in is None or sess.vector is None:
                    raise SecAggError("routed shares have the wrong length, or came twice")
                y = client.masked_input(
                    sess.vector, dict(zip(msg.owners.tolist(), blobs_in, strict=True))
                )
                sess.vector = None  # the input is not kept once masked
                return [Send(agg, SaMasked(agg, rnd, y))]
            if isinstance(msg, SaUnmask):
                released = client.unmask(msg.survivors.tolist())
                owners = sorted(released)
                kinds = b"".join(released[u][0].encode() for u in owners)
                shares = b"".join(bytes([released[u][1]]) + released[u][2] for u in owners)
                return [Send(agg, SaReveal(agg, rnd, _ids(owners), kinds, shares))]
        except SecAggError as exc:
            st.clients.pop((agg, rnd), None)
            return self._refuse(st, agg, rnd, exc.reason)
        return []

    def _share(
        self, st: SecureState, agg: int, rnd: int, sess: _ClientSession, msg: SsReady
    ) -> list[Effect]:
        """Secret-share, last step: the kept share of this client's input (less its shares
        for the ready members) plus the shares it holds of those members' inputs."""
        ready = set(msg.members.tolist())
        if self.peer not in ready or not ready <= set(sess.members) or len(ready) < MIN_GROUP:
            return self._refuse(st, agg, rnd, "the ready list is not a group of 3 with this peer")
        assert sess.vector is not None
        session = self._session(agg, rnd)
        try:
            z = share_contribution(self.peer, sess.vector, ready, self.pair, session)
            z += partial_sum(self.peer, ready, self.pair, session, self.dim, self.fixed.dtype)
        except SecAggError as exc:
            return self._refuse(st, agg, rnd, exc.reason)
        return [Send(agg, SsShare(agg, rnd, z))]

    @staticmethod
    def _dropped(agg: int, rnd: int, why: str) -> list[Effect]:
        return [Emit("secure_message_dropped", {"agg": agg, "round": rnd, "why": why})]

    def _refuse(self, st: SecureState, agg: int, rnd: int, reason: str) -> list[Effect]:
        st.refused += 1
        return [Emit("secure_step_refused", {"agg": agg, "round": rnd, "reason": reason})]

    def forget_before(self, st: SecureState, rnd: int) -> None:
        """Drop client sessions of rounds before ``rnd`` (their aggregators have moved on)."""
        for key in [k for k in st.clients if k[1] < rnd]:
            del st.clients[key]

    # -- aggregator side --------------------------------------------------------------------

    def open(
        self, st: SecureState, rnd: int, clients: Sequence[int]
    ) -> tuple[list[Effect], SumResult | None]:
        """This peer is ready to aggregate round ``rnd`` over ``clients``."""
        sess = st.aggs.setdefault(rnd, _AggSession(rnd))
        sess.expected = tuple(sorted(clients))
        sess.opened = True
        sess.waiting = sess.expected
        if self.settings.mode == "secagg":
            sess.server = SecAggServer(self._spec(self.peer, rnd, clients))
        if len(sess.expected) < MIN_GROUP:
            return [], self._abort(
                st, sess, f"{len(sess.expected)} clients, fewer than {MIN_GROUP}"
            )
        for sender, msg in sorted(sess.early.items()):
            if sender in sess.waiting:
                sess.inbox[sender] = msg
        sess.early.clear()
        effects: list[Effect] = [SetTimer(self.settings.timeout, "secure:first", rnd)]
        more, result = self._maybe_advance(st, sess, force=False)
        return effects + more, result

    def on_event(self, st: SecureState, event: Event) -> tuple[list[Effect], SumResult | None]:
        """Route a session message or a phase deadline (or release effects whose modelled
        computation is over); anything else is not for us."""
        released = st.busy.release(event)
        if released is not None:
            return released, None
        if isinstance(event, MessageArrived) and _secure_event(event.message):
            return self.on_message(st, event.sender, event.message)
        if isinstance(event, TimerFired) and event.tag.startswith("secure:"):
            return self.on_timer(st, event.tag, event.round)
        return [], None

    def on_message(
        self, st: SecureState, sender: int, msg: Message
    ) -> tuple[list[Effect], SumResult | None]:
        agg, rnd = msg.agg, msg.round  # type: ignore[attr-defined]
        if agg != self.peer:
            if isinstance(msg, _TO_AGGREGATOR):
                return self._refuse(st, agg, rnd, "aggregator message for another aggregator"), None
            return self._as_client(st, sender, msg), None
        if not isinstance(msg, _TO_AGGREGATOR):
            return self._refuse(st, agg, rnd, "client message sent to its aggregator"), None
        sess = st.aggs.get(rnd)
        first = isinstance(msg, (SaAdvert, SsOffer))
        if sess is None:
            if not first or rnd < st.floor:
                return [
                    Emit("secure_message_dropped", {"agg": agg, "round": rnd, "why": "late"})
                ], None
            sess = st.aggs.setdefault(rnd, _AggSession(rnd))
        if sess.phase == "done":
            return [Emit("secure_message_dropped", {"agg": agg, "round": rnd, "why": "late"})], None
        if not sess.opened:
            if first:
                sess.early[sender] = msg
            return [], None
        if sender not in sess.waiting or not self._fits_phase(sess, msg):
            return [
                Emit("secure_message_dropped", {"agg": agg, "round": rnd, "why": "phase"})
            ], None
        sess.inbox[sender] = msg
        return self._maybe_advance(st, sess, force=False)

    def on_timer(
        self, st: SecureState, tag: str, rnd: int
    ) -> tuple[list[Effect], SumResult | None]:
        """A phase's deadline: the first time, the requests go again to the clients not heard
        from (a lost frame is not a dropout) and the deadline is re-armed; the second time,
        the phase ends with whoever answered."""
        sess = st.aggs.get(rnd)
        if sess is None or sess.phase != tag.removeprefix("secure:"):
            return [], None
        missing = [c for c in sess.waiting if c not in sess.inbox]
        if missing and sess.requests and not sess.resent:
            sess.resent = True
            timer = SetTimer(self.settings.phase_timeout, tag, rnd)
            return [timer, *(Send(c, sess.requests[c]) for c in missing)], None
        return self._maybe_advance(st, sess, force=True)

    @staticmethod
    def _fits_phase(sess: _AggSession, msg: Message) -> bool:
        wanted = {
            "first": (SaAdvert, SsOffer),
            "shares": (SaShares,),
            "masked": (SaMasked,),
            "last": (SaReveal, SsShare),
        }
        return isinstance(msg, wanted.get(sess.phase, ()))

    def _maybe_advance(
        self, st: SecureState, sess: _AggSession, *, force: bool
    ) -> tuple[list[Effect], SumResult | None]:
        if not force and any(c not in sess.inbox for c in sess.waiting):
            return [], None
        inbox, sess.inbox = sess.inbox, {}
        try:
            if self.settings.mode == "secagg":
                return self._advance_secagg(sess, inbox)
            return self._advance_shares(sess, inbox)
        except (AbortError, SecAggError) as exc:
            return [], self._abort(st, sess, exc.reason)

    def _enter(self, sess: _AggSession, phase: str, requests: dict[int, Message]) -> list[Effect]:
        """Start ``phase``: send each client its request and arm the phase's deadline."""
        sess.phase = phase
        sess.waiting = tuple(sorted(requests))
        sess.requests = requests
        sess.resent = False
        timer = SetTimer(self.settings.phase_timeout, f"secure:{phase}", sess.round)
        return [timer, *(Send(c, requests[c]) for c in sess.waiting)]

    def _advance_secagg(
        self, sess: _AggSession, inbox: dict[int, Any]
    ) -> tuple[list[Effect], SumResult | None]:
        server = sess.server
        assert server is not None
        agg, rnd = self.peer, sess.round
        if sess.phase == "first":
            roster = server.collect_adverts({u: m.key for u, m in inbox.items()})
            requests: dict[int, Message] = {}
            for u in roster:
                part = server.roster_for(u)
                ids = sorted(part)
                requests[u] = SaRoster(agg, rnd, _ids(ids), b"".join(part[v] for v in ids))
            return self._enter(sess, "shares", requests), None
        if sess.phase == "shares":
            shares: dict[int, dict[int, bytes]] = {}
            for u, m in inbox.items():
                blobs = _chunks(m.blobs, SEALED_SHARE_BYTES, len(m.to))
                if blobs is not None:
                    shares[u] = dict(zip(m.to.tolist(), blobs, strict=True))
            routed = server.route_shares(shares)
            requests = {}
            for v, got in routed.items():
                owners = sorted(got)
                requests[v] = SaRouted(agg, rnd, _ids(owners), b"".join(got[u] for u in owners))
            return self._enter(sess, "masked", requests), None
        if sess.phase == "masked":
            # a malformed masked input counts as a dropout, not as the session's end
            fits = {u: m.y for u, m in inbox.items() if _fits(m.y, self.dim, self.fixed.dtype)}
            bad = sorted(set(inbox) - set(fits))
            survivors = server.collect_masked(fits)
            if len(survivors) < MIN_GROUP:
                raise AbortError(f"{len(survivors)} masked inputs, fewer than {MIN_GROUP}")
            unmask = SaUnmask(agg, rnd, _ids(survivors))
            effects = self._enter(sess, "last", dict.fromkeys(survivors, unmask))
            if bad:
                fields = {"agg": agg, "round": rnd, "peers": bad}
                effects.append(Emit("secure_input_malformed", fields))
            return effects, None
        reveals: dict[int, dict[int, tuple[str, int, bytes]]] = {}
        for v, m in inbox.items():
            chunks = _chunks(m.shares, 1 + SHARE_BYTES, len(m.owners))
            if chunks is None or len(m.kinds) != len(m.owners):
                continue
            reveals[v] = {
                u: (chr(k), c[0], c[1:])
                for u, k, c in zip(m.owners.tolist(), m.kinds, chunks, strict=True)
            }
        total = server.reconstruct(reveals)
        sess.phase = "done"
        return [], SumResult(rnd, self.fixed.decode(total), server.survivors)

    def _advance_shares(
        self, sess: _AggSession, inbox: dict[int, Any]
    ) -> tuple[list[Effect], SumResult | None]:
        agg, rnd = self.peer, sess.round
        if sess.phase == "first":
            ready = sorted(inbox)
            if len(ready) < MIN_GROUP:
                raise AbortError(f"{len(ready)} clients ready, fewer than {MIN_GROUP}")
            sess.ready = tuple(ready)
            announce = SsReady(agg, rnd, _ids(ready))
            return self._enter(sess, "last", dict.fromkeys(ready, announce)), None
        missing = [h for h in sess.waiting if h not in inbox]
        if missing:
            raise AbortError(f"shares missing from peers {missing[:8]}: the sum is lost")
        total = np.zeros(self.dim, dtype=self.fixed.dtype)
        for m in inbox.values():
            if m.z.dtype != total.dtype or m.z.shape != total.shape:
                raise AbortError("a share vector has the wrong ring or length")
            total += m.z
        sess.phase = "done"
        return [], SumResult(rnd, self.fixed.decode(total), sess.ready)

    def _abort(self, st: SecureState, sess: _AggSession, reason: str) -> SumResult:
        st.aborted += 1
        sess.phase = "done"
        return SumResult(sess.round, None, (), reason)

    def close(self, st: SecureState, rnd: int) -> None:
        """Forget aggregator sessions up to round ``rnd``; later messages for them are late."""
        for r in [r for r in st.aggs if r <= rnd]:
            del st.aggs[r]
        st.floor = max(st.floor, rnd + 1)


def _fits(v: np.ndarray, dim: int, dtype: type[np.unsignedinteger]) -> bool:
    return v.dtype == dtype and v.shape == (dim,)


def _same(a: Message, b: Message) -> bool:
    """Field-by-field equality of two messages (arrays by value)."""
    if type(a) is not type(b):
        return False
    for name in a.__dataclass_fields__:
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray)):
                return False
            if x.dtype != y.dtype or not np.array_equal(x, y):
                return False
        elif x != y:
            return False
    return True


def _secure_event(msg: Message) -> bool:
    return isinstance(msg, SESSION_MESSAGES)


# --- D-PSGD with secure neighbourhood sums ---------------------------------------------------


@dataclass
class SecureDPSGDState:
    params: np.ndarray  # (P,) float32
    sec: SecureState
    round: int = 0
    phase: str = "idle"  # idle -> training -> mixing -> ... -> done
    half: np.ndarray | None = None
    aborted_rounds: int = 0


class SecureDPSGD(Protocol[SecureDPSGDState]):
    """D-PSGD whose every neighbourhood average is a secure sum (module docstring)."""

    messages: ClassVar[tuple[type[Message], ...]] = SESSION_MESSAGES

    def __init__(
        self,
        peer: int,
        schedule: TopologySchedule,
        *,
        rounds: int,
        seed: int,
        secure: SecureSum,
        epochs: int = 1,
        steps: int | None = None,
    ):
        if rounds < 1:
            raise ProtocolError("rounds must be at least 1")
        if schedule.directed and not schedule.at(0).is_doubly_stochastic():
            raise ProtocolError("D-PSGD needs doubly stochastic mixing weights")
        self.peer = peer
        self.schedule = schedule
        self.rounds = rounds
        self.seed = seed
        self.secure = secure
        self.epochs = epochs
        self.steps = steps

    def initial_state(self, params: np.ndarray) -> SecureDPSGDState:
        return SecureDPSGDState(
            np.array(params, dtype=np.float32), SecureState(np.random.default_rng(self.seed))
        )

    def model(self, state: SecureDPSGDState) -> np.ndarray:
        return state.params

    def progress(self, state: SecureDPSGDState) -> int:
        return state.round

    def on_event(
        self, state: SecureDPSGDState, event: Event
    ) -> tuple[SecureDPSGDState, list[Effect]]:
        sec = self.secure
        if isinstance(event, Started):
            state.phase = "training"
            return state, [self._train(state)]
        if isinstance(event, TrainingDone) and state.phase == "training":
            return self._on_trained(state, event)
        effects, result = sec.on_event(state.sec, event)
        if result is not None and state.phase == "mixing" and result.round == state.round:
            state, more = self._mix(state, result)
            effects += more
        return state, effects

    def _train(self, state: SecureDPSGDState) -> Train:
        return Train(params=state.params, epochs=self.epochs, steps=self.steps)

    def _on_trained(
        self, state: SecureDPSGDState, event: TrainingDone
    ) -> tuple[SecureDPSGDState, list[Effect]]:
        sec = self.secure
        half = np.asarray(event.params, dtype=np.float32)
        state.half = half
        state.phase = "mixing"
        topo = self.schedule.at(state.round)
        effects: list[Effect] = []
        sec.forget_before(state.sec, state.round - 1)
        encoded: dict[Any, np.ndarray] = {}
        for a in topo.out_neighbours(self.peer):
            w = topo.weight(a, self.peer)
            effects += sec.contribute(
                state.sec,
                a,
                state.round,
                topo.in_neighbours(a),
                w * half.astype(np.float64),
                encoded=encoded,
                key=w,
            )
        more, result = sec.open(state.sec, state.round, topo.in_neighbours(self.peer))
        effects += more
        if result is not None:
            state, after = self._mix(state, result)
            effects += after
        return state, effects

    def _mix(
        self, state: SecureDPSGDState, result: SumResult
    ) -> tuple[SecureDPSGDState, list[Effect]]:
        assert state.half is not None
        topo = self.schedule.at(state.round)
        got = set(result.contributors) if result.total is not None else set()
        own = topo.weight(self.peer, self.peer) + sum(
            topo.weight(self.peer, j) for j in topo.in_neighbours(self.peer) if j not in got
        )
        mixed = own * state.half.astype(np.float64)
        effects: list[Effect] = []
        if result.total is not None:
            mixed += result.total
        else:
            state.aborted_rounds += 1
            effects.append(
                Emit("secure_round_aborted", {"round": state.round, "reason": result.reason})
            )
        missing = [j for j in topo.in_neighbours(self.peer) if j not in got]
        if result.total is not None and missing:
            effects.append(Emit("neighbours_skipped", {"round": state.round, "peers": missing}))
        state.params = mixed.astype(np.float32)
        state.half = None
        self.secure.close(state.sec, state.round)
        state.round += 1
        if state.round >= self.rounds:
            state.phase = "done"
            effects.append(Stop())
        else:
            state.phase = "training"
            effects.append(self._train(state))
        return state, effects


# --- FedAvg with a secure sum at the coordinator -------------------------------------------


@dataclass
class SecureFedAvgState:
    params: np.ndarray  # coordinator: the global model; client: the latest adopted one
    sec: SecureState
    round: int = 0  # coordinator: aggregations; client: updates sent
    training_round: int | None = None  # client: the global round it is training from
    version: int = -1  # client: the latest global round adopted
    aborted_rounds: int = 0
    done: bool = False
    #: coordinator, robust buckets: this round's finished sessions, by bucket
    results: dict[int, SumResult] = field(default_factory=dict)


class SecureFedAvg(Protocol[SecureFedAvgState]):
    """FedAvg through a coordinator that only ever holds the masked or shared updates and
    their sum (module docstring). Client ids ``0..n-1``, coordinator ``n``.

    With a robust rule (``robust``, its ``bucket_size`` set) every round splits the clients
    into the public buckets of :mod:`p2pfed.robust.buckets`, runs one secure sum per bucket
    (session number ``round * B + bucket``, so sessions stay ordered) and moves the model
    to the rule's aggregate of the bucket means, centred on the global model; a bucket whose
    session aborted is left out, and too few buckets for the rule keep the model
    (``robust_skipped``). The coordinator then learns ``B`` sums of about ``n / B`` clients
    each instead of one sum: see that module for what this costs."""

    messages: ClassVar[tuple[type[Message], ...]] = (GlobalModel, *SESSION_MESSAGES)

    def __init__(
        self,
        peer: int,
        num_clients: int,
        *,
        rounds: int,
        seed: int,
        secure: SecureSum,
        max_weight: float,
        server_lr: float = 1.0,
        epochs: int = 1,
        steps: int | None = None,
        robust: RobustConfig | None = None,
        bucket_seed: int = 0,
    ):
        if rounds < 1:
            raise ProtocolError("rounds must be at least 1")
        if not 0 <= peer <= num_clients:
            raise ProtocolError(f"peer {peer} is neither a client nor the coordinator")
        if robust is not None and robust.rule != "mean" and robust.bucket_size is None:
            raise ProtocolError(
                f"robust rule {robust.rule} under secure aggregation needs bucket_size: the "
                "coordinator sees sums only, and the rule runs over bucket sums"
            )
        self.robust = robust if robust is not None and robust.rule != "mean" else None
        self.bucket_seed = bucket_seed
        size = self.robust.bucket_size if self.robust is not None else None
        if size is not None and size < MIN_GROUP:
            raise ProtocolError(
                f"bucket_size {size}: each bucket is a secure sum of at least {MIN_GROUP}"
            )
        self.num_buckets = 1 if size is None else num_buckets(num_clients, size)
        self.peer = peer
        self.num_clients = num_clients
        self.coordinator = num_clients
        self.rounds = rounds
        self.seed = seed
        self.secure = secure
        self.max_weight = max_weight
        self.server_lr = server_lr
        self.epochs = epochs
        self.steps = steps

    @property
    def is_coordinator(self) -> bool:
        return self.peer == self.coordinator

    def initial_state(self, params: np.ndarray) -> SecureFedAvgState:
        return SecureFedAvgState(
            np.array(params, dtype=np.float32), SecureState(np.random.default_rng(self.seed))
        )

    def model(self, state: SecureFedAvgState) -> np.ndarray:
        return state.params

    def progress(self, state: SecureFedAvgState) -> int:
        return state.round

    def on_event(
        self, state: SecureFedAvgState, event: Event
    ) -> tuple[SecureFedAvgState, list[Effect]]:
        if self.is_coordinator:
            return self._coordinator(state, event)
        return self._client(state, event)

    # -- coordinator ------------------------------------------------------------------------

    def _clients(self) -> range:
        return range(self.num_clients)

    def _coordinator(
        self, state: SecureFedAvgState, event: Event
    ) -> tuple[SecureFedAvgState, list[Effect]]:
        sec = self.secure
        if isinstance(event, Started):
            return state, self._open_round(state)
        effects, result = sec.on_event(state.sec, event)
        if result is not None:
            effects += self._finished(state, result)
        return state, effects

    def _buckets(self, rnd: int) -> list[tuple[int, ...]]:
        """Round ``rnd``'s groups of clients, one secure sum each (all clients, or the
        robust rule's buckets)."""
        if self.robust is None:
            return [tuple(self._clients())]
        size = self.robust.bucket_size
        assert size is not None
        return buckets.assign(self._clients(), size, self.bucket_seed, rnd)

    def _open_round(self, state: SecureFedAvgState) -> list[Effect]:
        model = GlobalModel(round=state.round, params=state.params, final=False)
        effects: list[Effect] = [Send(k, model) for k in self._clients()]
        state.results = {}
        b = self.num_buckets
        for index, members in enumerate(self._buckets(state.round)):
            more, result = self.secure.open(state.sec, state.round * b + index, list(members))
            effects += more
            if result is not None:
                effects += self._finished(state, result)
        return effects

    def _finished(self, state: SecureFedAvgState, result: SumResult) -> list[Effect]:
        """A session ended: once every bucket of the current round has, aggregate."""
        rnd, index = divmod(result.round, self.num_buckets)
        if state.done or rnd != state.round:
            return []
        state.results[index] = result
        if len(state.results) < self.num_buckets:
            return []
        return self._aggregate(state)

    def _aggregate(self, state: SecureFedAvgState) -> list[Effect]:
        effects: list[Effect] = []
        results = [state.results[k] for k in sorted(state.results)]
        kept = [r.total is not None and r.total[-1] > 0 for r in results]
        good = [r for r, ok in zip(results, kept, strict=True) if ok]
        lost = [k for k, ok in enumerate(kept) if not ok]
        if lost and self.num_buckets > 1:
            reasons = list(dict.fromkeys(results[k].reason or "zero weight" for k in lost))
            lost_fields = {
                "round": state.round,
                "buckets": lost,
                "count": len(lost),
                "reasons": reasons,
            }
            effects.append(Emit("secure_bucket_lost", lost_fields))
        if not good:
            state.aborted_rounds += 1
            reasons = [r.reason for r in results if r.reason]
            reason = "; ".join(dict.fromkeys(reasons)) or "the weights summed to zero"
            effects.append(Emit("secure_round_aborted", {"round": state.round, "reason": reason}))
        else:
            if self.robust is None:
                total = good[0].total
                assert total is not None
                mean: np.ndarray | None = total[:-1] / total[-1]
            else:
                mean = self._robust_mean(state, good, effects)
            if mean is not None:  # None: too few buckets for the rule, the model stays
                lr = self.server_lr
                state.params = ((1 - lr) * state.params + lr * mean).astype(np.float32)
                clients = sum(len(r.contributors) for r in good)
                fields = {"round": state.round, "clients": clients}
                effects.append(Emit("round_aggregated", fields))
        self.secure.close(state.sec, (state.round + 1) * self.num_buckets - 1)
        state.results = {}
        state.round += 1
        if state.round >= self.rounds:
            state.done = True
            final = GlobalModel(round=state.round, params=state.params, final=True)
            effects += [Send(k, final) for k in self._clients()]
            effects.append(Stop())
        else:
            effects += self._open_round(state)
        return effects

    def _robust_mean(
        self, state: SecureFedAvgState, good: Sequence[SumResult], effects: list[Effect]
    ) -> np.ndarray | None:
        """The rule over the bucket means, weighted by each bucket's total sample weight and
        centred on the global model; None (the model stays) when too few buckets are left."""
        assert self.robust is not None
        totals = [r.total for r in good if r.total is not None]
        means = np.stack([t[:-1] / t[-1] for t in totals])
        weights = np.array([t[-1] for t in totals], dtype=np.float64)
        try:
            agg = aggregate(
                self.robust, None, means, weights, 0.0, reference=state.params.astype(np.float64)
            )
        except RobustError as exc:
            effects.append(Emit("robust_skipped", {"round": state.round, "reason": str(exc)}))
            return None
        effects += robust_events(agg, state.round)
        return agg.value

    # -- client ----------------------------------------------------------------------------

    def _client(
        self, state: SecureFedAvgState, event: Event
    ) -> tuple[SecureFedAvgState, list[Effect]]:
        if isinstance(event, MessageArrived):
            msg = event.message
            if event.sender != self.coordinator:
                return state, [Emit("unexpected_message_dropped", {"sender": event.sender})]
            if isinstance(msg, GlobalModel):
                if msg.final:
                    state.params = np.array(msg.params, dtype=np.float32)
                    if not state.done:
                        state.done = True
                        return state, [Stop()]
                    return state, []
                if state.done or msg.round <= state.version:
                    return state, []  # a replay, or overtaken by a later round
                state.params = np.array(msg.params, dtype=np.float32)
                state.version = msg.round
                if state.training_round is not None:
                    return state, []  # trained once the training in flight ends
                return state, [self._train(state)]
            if _secure_event(msg):
                effects, _ = self.secure.on_message(state.sec, event.sender, msg)
                return state, effects
            return state, []
        if isinstance(event, TimerFired):  # modelled computation of a session finished
            effects, _ = self.secure.on_event(state.sec, event)
            return state, effects
        if isinstance(event, TrainingDone) and state.training_round is not None:
            rnd, state.training_round = state.training_round, None
            if state.done:
                return state, []
            if state.version > rnd:
                # the coordinator opened round ``version`` after closing this one
                return state, [self._train(state)]
            w = min(float(event.samples), self.max_weight) / self.max_weight
            x = np.empty(event.params.size + 1, dtype=np.float64)
            x[:-1] = w * event.params
            x[-1] = w
            b = self.num_buckets
            self.secure.forget_before(state.sec, (rnd - 1) * b)
            effects = []
            if event.samples > self.max_weight:
                # weights above max_weight are cut to it: the average is no longer by samples
                fields = {"round": rnd, "samples": event.samples, "max_weight": self.max_weight}
                effects.append(Emit("secure_weight_capped", fields))
            groups = self._buckets(rnd)
            index = buckets.bucket_of(groups, self.peer)
            effects += self.secure.contribute(
                state.sec, self.coordinator, rnd * b + index, list(groups[index]), x
            )
            state.round += 1
            if state.round >= self.rounds and not state.done:
                state.done = True
                effects.append(Stop())
            return state, effects
        return state, []

    def _train(self, state: SecureFedAvgState) -> Train:
        """Train from the latest global model (round ``state.version``)."""
        state.training_round = state.version
        return Train(params=state.params, epochs=self.epochs, steps=self.steps)


# --- building from config --------------------------------------------------------------------


def check_groups(sec: Any, groups: Mapping[int, Sequence[int]], *, scope: str) -> None:
    """Validate the ``security`` settings (a :class:`~p2pfed.crypto.config.SecurityConfig`)
    against the group sizes ``{aggregator: clients in each round}``; raises ``ValueError``
    with the reason (the experiment turns it into a config error)."""
    small = {a: min(ns) for a, ns in groups.items() if min(ns) < MIN_GROUP}
    if small:
        a, n = next(iter(sorted(small.items())))
        if scope == "nbhd":
            what = "neighbourhood of peer"
            fix = f"choose a topology where every peer has at least {MIN_GROUP} in-neighbours"
        else:
            what, fix = "star of coordinator", f"use at least {MIN_GROUP} clients"
        raise ValueError(
            f"secure aggregation needs groups of at least {MIN_GROUP}: the {what} {a} has "
            f"{n} (a sum of two reveals either input to the other party); {fix}"
        )
    if scope == "star" and sec.clipping_range < 1:
        # SecureFedAvg sends the sample weight w <= 1 as one more value: a clipped weight
        # skews sum(w x_k) / sum(w) (every weight clipped to c/2 doubles the model)
        raise ValueError(
            f"clipping_range {sec.clipping_range:g} is below 1: fedavg sums each client's "
            "sample weight (up to 1) with its update, and a clipped weight skews the average"
        )
    sizes = sorted({n for ns in groups.values() for n in ns})
    largest = sizes[-1]
    fixed = FixedPoint.from_range(sec.clipping_range, sec.quantization_range, sec.modulus_range)
    try:
        fixed.check_capacity(largest, 1.0)
    except FixedPointError as exc:
        raise ValueError(str(exc)) from None
    if sec.aggregation == "secagg":
        m = sec.num_shares
        if m is not None and m > largest:
            raise ValueError(f"num_shares {m} exceeds the largest group ({largest} clients)")
        t = sec.reconstruction_threshold
        for size in sizes if t is not None else ():
            shares = min(m or size, size)
            if t > shares:
                raise ValueError(
                    f"reconstruction_threshold {t} exceeds the {shares} shares of a group of "
                    f"{size}: no secret could ever be reconstructed"
                )
            if t <= shares // 2:
                raise ValueError(
                    f"reconstruction_threshold {t} is not more than half of the {shares} "
                    f"shares of a group of {size}: two disjoint sets of holders could "
                    "reconstruct both secrets of one client"
                )
            if shares < size and t < MIN_GROUP:
                raise ValueError(
                    f"reconstruction_threshold {t} is below {MIN_GROUP} with {shares} of a "
                    f"group of {size} holding shares: dropouts could leave two survivors masked "
                    "only with each other, and the aggregator would learn their sum"
                )


def secure_settings(
    sec: Any, timeout: float, phase_timeout: float, scope: str, *, charge: bool = False
) -> SecureSettings:
    return SecureSettings(
        mode=sec.aggregation,
        fixed=FixedPoint.from_range(sec.clipping_range, sec.quantization_range, sec.modulus_range),
        stochastic=sec.stochastic_rounding,
        timeout=timeout,
        phase_timeout=phase_timeout,
        num_shares=sec.num_shares,
        threshold=sec.reconstruction_threshold,
        scope=scope,
        charge=charge,
    )
