"""FedAvg under homomorphic encryption (``he-fedavg``): the coordinator sums encrypted
models it cannot read, the clients decrypt the global model.

This is FedAvg as in Aono et al. ("Privacy-Preserving Deep Learning via Additively
Homomorphic Encryption", IEEE TIFS 2018) and BatchCrypt (Zhang et al., USENIX ATC 2020):
clients encrypt, the server adds ciphertexts, clients decrypt. Client ids ``0..n-1``, the
coordinator ``n``; everyone starts from the same initial model ``x^0``.

Round ``r``::

    coordinator -> every client : HeAggregate(r, A_r, W_r)      (r = 0: empty, x^0)
    client k    : x^r = x^0 + D(A_r) / W_r                        (group key: decrypt;
                                                                   threshold: below)
    client k    : x_k = local training from x^r                   (Train effect)
    client k    -> coordinator  : HeUpdate(r, E(x_k - x^0), samples_k)
    coordinator : once every update is in (or the quorum at the timeout), with S the
                  clients heard from:  A_{r+1} = prod_{k in S} E(x_k - x^0)^samples_k,
                  W_{r+1} = sum_{k in S} samples_k

so ``x^{r+1}`` is FedAvg's sample-weighted mean of the ``x_k`` (``server_lr`` 1), up to the
quantisation of the encoding. Clients encrypt the distance from the public ``x^0`` rather
than a round-to-round delta, so a client that missed an aggregate (loss) adopts the next
one without knowing the previous model; the clip range bounds how far a model may drift
from ``x^0`` (clipped values are counted in ``he_input_clipped`` events).

Threshold key mode adds one exchange before clients can use ``A_r``: each client sends its
partial decryption ``HePartial(r)`` to the coordinator, which forwards ``threshold`` of them
(``HePartials``) to every client, and each client combines them. The coordinator relays the
partials and so could learn each global model, as FedAvg's server does in the clear; it
uses that to check, before forwarding, that the set it picks combines (a partial of the
wrong size or value would otherwise stall every client): it tries other subsets of what
arrived, or waits for more. It never learns an individual update. In group key mode it
learns nothing at all: it holds only the public key.

Ending: after ``rounds`` aggregations the coordinator sends the last aggregate marked
``final`` (and, in threshold mode, its partials once ``threshold`` are in) and stops; a
client stops after its last update and adopts the final model when it can decrypt it (a
stopped peer still answers: in threshold mode it still sends its partial).

Loss and timeouts (``timeout`` seconds): the coordinator arms a round timer; at the
deadline it aggregates if the quorum ``ceil(min_fraction n)`` is in, else re-sends the
round's aggregate to the clients it has not heard from (at most ``MAX_RESENDS`` times,
``he_aggregate_resent``). A client that receives the aggregate of a round it already
reported re-sends its update. In threshold mode the partial phase has its own deadline:
below ``threshold`` partials it re-sends the aggregate to the clients whose partial is
missing, the same number of times, then stalls (``he_round_stalled``) until enough arrive;
a partial from a client asked again after the forward gets the forwarded set again (it
lost it), a merely late one nothing (the broadcast reaches it).

A client whose update cannot be encrypted (a diverged, non-finite model) sends nothing
that round (``he_update_refused``); with ``min_fraction`` 1 the round then waits for it
until the re-sends run out, as plain FedAvg waits for a silent client.

Roles for the runtime's metrics: a client's ``model`` is the latest global model it
decrypted; the coordinator's is ``x^0`` forever, because it never holds a plaintext model.
``progress`` counts a client's updates sent and the coordinator's aggregations.

Threat model: that of the scheme (:mod:`p2pfed.crypto.paillier`, :mod:`p2pfed.crypto.ckks`):
an honest-but-curious coordinator, alone (group key) or with fewer than ``threshold``
clients (threshold key), learns no individual update; every client learns the global
models. Not covered: clients that collude with the coordinator in group mode (they hold the
key), malicious clients (any encrypted vector is summed), traffic analysis.
"""

from __future__ import annotations

import abc
import itertools
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from p2pfed.crypto.config import MIN_GROUP
from p2pfed.crypto.he import HEError
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
)
from p2pfed.topology import TopologySchedule

#: re-sends per phase before a round stalls: twice FedAvg's 3, because a threshold-mode
#: retry crosses three links (aggregate, partial, partials), each of which may lose it
MAX_RESENDS = 6
#: subsets of partial decryptions the coordinator tries before waiting for more
MAX_SUBSETS = 16

#: Reference costs of the HE operations, in seconds, for charging them in virtual time
#: (``security.charge_compute``): measured on this project's reference machine (a 2-core
#: Xeon, one core per operation; ``scripts/bench_he.py``). Paillier per 2048-bit ciphertext,
#: scaled by ``(key_bits / 2048) ** 2.8`` (measured: 1.15 / 7.8 / 26 ms to encrypt at
#: 1024 / 2048 / 3072 bits); CKKS per value at N = 8192 (scaled by N / 8192).
PAILLIER_COSTS = {
    "encrypt": 8.0e-3,  # with the public key (threshold-mode clients)
    "encrypt_crt": 4.5e-3,  # with the primes (group-mode clients)
    "decrypt": 2.4e-3,  # with the primes, CRT
    "partial": 16.8e-3,  # one key share's partial decryption (8 parties)
    "combine": 0.12e-3,  # per partial combined
    "aggregate": 0.05e-3,  # per summand: a small-exponent weight and a product
}
CKKS_COSTS = {
    "encrypt": 1.05e-6,
    "decrypt": 0.27e-6,
    "aggregate": 0.3e-6,  # per summand: a plain weight and an addition
}
_BLOB = frozenset({"blob"})
_EMPTY = np.zeros(0, dtype=np.uint8)


def _wire(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=np.uint8)


# --- messages -------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeAggregate(Message):
    """The encrypted sum ``A_r`` that opens round ``round`` (empty for round 0), with its
    total weight; ``final`` marks the model the run ends with."""

    free_shape: ClassVar[frozenset[str]] = _BLOB
    round: int
    blob: np.ndarray  # uint8: the serialised encrypted vector
    weight: int
    final: bool


@dataclass(frozen=True)
class HeUpdate(Message):
    """A client's encrypted ``x_k - x^0`` after training from round ``round``'s model, and
    the samples it trained on (its weight)."""

    free_shape: ClassVar[frozenset[str]] = _BLOB
    round: int
    blob: np.ndarray
    samples: int


@dataclass(frozen=True)
class HePartial(Message):
    """Threshold mode: a client's partial decryption of round ``round``'s aggregate."""

    free_shape: ClassVar[frozenset[str]] = _BLOB
    round: int
    blob: np.ndarray


@dataclass(frozen=True)
class HePartials(Message):
    """Threshold mode: ``threshold`` partial decryptions of round ``round``'s aggregate
    (key-share indices ``holders``, blobs of ``sizes`` bytes, concatenated)."""

    free_shape: ClassVar[frozenset[str]] = frozenset({"holders", "sizes", "blob"})
    round: int
    holders: np.ndarray  # int64
    sizes: np.ndarray  # int64
    blob: np.ndarray


HE_MESSAGES: tuple[type[Message], ...] = (HeAggregate, HeUpdate, HePartial, HePartials)


# --- what the protocol needs of a scheme ------------------------------------------------------


class HeBackend(abc.ABC):
    """One participant's view of the scheme: clients encrypt and decrypt (or partially
    decrypt), the coordinator only aggregates. A backend built for the coordinator holds
    public material only."""

    #: 1-based key-share index (threshold mode), None otherwise
    share_index: int | None = None
    #: key shares needed to decrypt (threshold mode), None in group mode
    threshold: int | None = None

    @abc.abstractmethod
    def encrypt(self, x: np.ndarray, rng: np.random.Generator) -> tuple[bytes, int]:
        """Encrypt ``x``; returns the blob and how many values were clipped."""

    @abc.abstractmethod
    def aggregate(self, items: list[tuple[bytes, int]]) -> bytes:
        """The encrypted weighted sum of ``(blob, integer weight)`` items."""

    @abc.abstractmethod
    def decrypt(self, blob: bytes, weight: int) -> np.ndarray:
        """The weighted mean in an aggregate of total weight ``weight`` (group mode)."""

    @abc.abstractmethod
    def partial(self, blob: bytes) -> bytes:
        """This client's partial decryption of an aggregate (threshold mode)."""

    @abc.abstractmethod
    def combine(self, blob: bytes, weight: int, partials: dict[int, bytes]) -> np.ndarray:
        """The weighted mean in an aggregate from ``threshold`` partials (threshold mode)."""

    @abc.abstractmethod
    def cost(self, op: str, values: int, count: int = 1) -> float:
        """Reference seconds of ``op`` (encrypt, decrypt, partial, combine, aggregate) on a
        vector of ``values``; ``count``: summands aggregated, or partials combined."""

    def check_partial(self, blob: bytes, partial: bytes) -> None:
        """Refuse (HEError) a partial decryption that cannot belong to aggregate ``blob``."""
        raise HEError("this scheme has no partial decryptions")

    def consistent_partials(
        self, blob: bytes, weight: int, partials: dict[int, bytes]
    ) -> list[int] | None:
        """``threshold`` key-share indices among ``partials`` that combine, or None."""
        raise HEError("this scheme has no partial decryptions")


class PaillierBackend(HeBackend):
    """Packed Paillier (:mod:`p2pfed.crypto.paillier`). Give a client ``secret`` (group
    mode) or ``share`` (threshold mode); give the coordinator neither, and in threshold
    mode the ``threshold`` it waits for."""

    def __init__(
        self,
        packed: Any,  # PackedPaillier
        *,
        secret: Any = None,
        share: Any = None,
        threshold: int | None = None,
        parties: int | None = None,
        stochastic: bool = True,
    ):
        if secret is not None and share is not None:
            raise ProtocolError("a participant holds the group key or a key share, not both")
        self.packed = packed
        self._secret = secret
        self._share = share
        self.stochastic = stochastic
        self.threshold = threshold
        self.parties = parties
        if share is not None:
            self.share_index = share.index
            self.threshold = share.threshold
            self.parties = share.parties

    def cost(self, op: str, values: int, count: int = 1) -> float:
        if op == "encrypt" and self._secret is not None:
            op = "encrypt_crt"
        per = PAILLIER_COSTS[op] * (self.packed.public.bits / 2048) ** 2.8
        if op in ("combine", "aggregate"):
            per *= count
        return per * self.packed.packing.ciphertexts(values)

    def _load(self, blob: bytes, weight: int | None = None) -> Any:
        from p2pfed.crypto.paillier import PaillierVector

        v = PaillierVector.from_bytes(blob, self.packed.public, self.packed.packing)
        if weight is not None and v.weight != weight:
            raise HEError(f"aggregate of weight {v.weight} announced as {weight}")
        return v

    def encrypt(self, x: np.ndarray, rng: np.random.Generator) -> tuple[bytes, int]:
        clip = self.packed.packing.clip
        clipped = int(np.count_nonzero(np.abs(x) > clip))
        v = self.packed.encrypt(x, rng, stochastic=self.stochastic, secret=self._secret)
        return v.to_bytes(self.packed.public), clipped

    def aggregate(self, items: list[tuple[bytes, int]]) -> bytes:
        vs = [self.packed.scale(self._load(b), w) if w != 1 else self._load(b) for b, w in items]
        return bytes(self.packed.add(vs).to_bytes(self.packed.public))

    def decrypt(self, blob: bytes, weight: int) -> np.ndarray:
        if self._secret is None:
            raise HEError("this participant holds no decryption key")
        v = self._load(blob, weight)
        return np.asarray(self.packed.decrypt(v, self._secret) / v.weight)

    def partial(self, blob: bytes) -> bytes:
        if self._share is None:
            raise HEError("this participant holds no key share")
        v = self._load(blob)
        width = self.packed.public.ciphertext_bytes
        return b"".join(int(p).to_bytes(width, "big") for p in self.packed.partial(v, self._share))

    def _parse_partial(self, v: Any, raw: bytes) -> list[Any]:
        import gmpy2

        width = self.packed.public.ciphertext_bytes
        if len(raw) != width * len(v.ciphertexts):
            raise HEError("a partial decryption has the wrong size for this aggregate")
        out = []
        for i in range(0, len(raw), width):
            x = gmpy2.mpz(int.from_bytes(raw[i : i + width], "big"))
            out.append(self.packed.public._check(x))
        return out

    def _combine(self, v: Any, partials: dict[int, bytes]) -> np.ndarray:
        assert self.parties is not None and self.threshold is not None
        parsed = {index: self._parse_partial(v, raw) for index, raw in partials.items()}
        total = self.packed.combine(v, parsed, self.parties, self.threshold)
        return np.asarray(total / v.weight)

    def combine(self, blob: bytes, weight: int, partials: dict[int, bytes]) -> np.ndarray:
        if self._share is None:
            raise HEError("this participant holds no key share")
        return self._combine(self._load(blob, weight), partials)

    def check_partial(self, blob: bytes, partial: bytes) -> None:
        if self.threshold is None:
            raise HEError("not in threshold mode")
        self._parse_partial(self._load(blob), partial)

    def consistent_partials(
        self, blob: bytes, weight: int, partials: dict[int, bytes]
    ) -> list[int] | None:
        """Tries the lowest ``threshold`` indices, then the lowest ``threshold`` without
        each index in turn (one bad partial is found whatever its index), then other
        subsets, ``MAX_SUBSETS`` in all: a set whose combination is not ``1 mod n`` holds a
        bad partial. Whoever relays the partials can combine them, so checking reveals
        nothing new."""
        assert self.threshold is not None
        t = self.threshold
        v = self._load(blob, weight)
        held = sorted(partials)
        candidates = itertools.chain(
            [tuple(held[:t])],
            (tuple([i for i in held if i != e][:t]) for e in held),
            itertools.combinations(held, t),
        )
        tried: set[tuple[int, ...]] = set()
        for subset in candidates:
            if len(tried) >= MAX_SUBSETS:
                break
            if len(subset) < t or subset in tried:
                continue
            tried.add(subset)
            try:
                self._combine(v, {i: partials[i] for i in subset})
            except HEError:
                continue
            return list(subset)
        return None


class CkksBackend(HeBackend):
    """CKKS through TenSEAL (:mod:`p2pfed.crypto.ckks`), group key mode only. Holds the
    serialised contexts (TenSEAL objects do not pickle) and loads them on first use: a
    client ``secret`` (the full context), the coordinator only ``public``. Values are
    clipped to ``clip`` (CKKS refuses magnitudes its modulus cannot hold)."""

    def __init__(self, public: bytes, *, secret: bytes | None = None, clip: float):
        self._public_blob = public
        self._secret_blob = secret
        self.clip = clip
        self._ctx: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_ctx": None}

    def cost(self, op: str, values: int, count: int = 1) -> float:
        per = CKKS_COSTS.get(op)
        if per is None:
            raise HEError(f"ckks has no {op}")
        degree = self._context().params.poly_modulus_degree
        return per * values * (count if op == "aggregate" else 1) * degree / 8192

    def _context(self) -> Any:
        if self._ctx is None:
            from p2pfed.crypto.ckks import CkksKeys, CkksPublic

            if self._secret_blob is not None:
                self._ctx = CkksKeys.from_bytes(self._secret_blob)
            else:
                self._ctx = CkksPublic.from_bytes(self._public_blob)
        return self._ctx

    def _keys(self) -> Any:
        if self._secret_blob is None:
            raise HEError("this participant holds no decryption key")
        return self._context()

    def encrypt(self, x: np.ndarray, rng: np.random.Generator) -> tuple[bytes, int]:
        clipped = int(np.count_nonzero(np.abs(x) > self.clip))
        v = self._keys().encrypt(np.clip(x, -self.clip, self.clip))
        return bytes(v.to_bytes()), clipped

    def aggregate(self, items: list[tuple[bytes, int]]) -> bytes:
        from p2pfed.crypto.ckks import sum_vectors

        ctx = self._context()
        vs = [ctx.load(b).scale(float(w)) if w != 1 else ctx.load(b) for b, w in items]
        return bytes(sum_vectors(vs).to_bytes())

    def decrypt(self, blob: bytes, weight: int) -> np.ndarray:
        keys = self._keys()
        if weight < 1:
            raise HEError(f"an aggregate has a positive weight, got {weight}")
        return np.asarray(keys.decrypt(keys.load(blob)) / weight)

    def partial(self, blob: bytes) -> bytes:
        raise HEError("ckks has no threshold decryption")

    def combine(self, blob: bytes, weight: int, partials: dict[int, bytes]) -> np.ndarray:
        raise HEError("ckks has no threshold decryption")


# --- the protocol ---------------------------------------------------------------------------


@dataclass
class HeFedAvgState:
    params: np.ndarray  # client: the latest global model it decrypted; coordinator: x^0
    rng: np.random.Generator = field(repr=False)
    round: int = 0  # coordinator: aggregations; client: updates sent
    done: bool = False
    # coordinator
    inbox: dict[int, tuple[bytes, int]] = field(default_factory=dict)
    aggregate: bytes = b""  # the aggregate that opened the current round (or is final)
    weight: int = 0
    partials: dict[int, bytes] = field(default_factory=dict)  # share index -> partial
    forwarded: HePartials | None = None  # threshold: this round's partials, once sent
    resends: int = 0
    resent_to: set[int] = field(default_factory=set)  # clients asked again this round
    deadline_passed: bool = False
    # client
    version: int = -1  # the latest global round adopted
    stopped: bool = False  # Stop was returned (after the last update, or at the final model)
    training_round: int | None = None
    sent: HeUpdate | None = None  # the latest update, for re-sends
    waiting: HeAggregate | None = None  # threshold: the aggregate awaiting partials
    # both: effects waiting for modelled computation to finish
    busy: Busy = field(default_factory=lambda: Busy("he:compute"))


class HeFedAvg(Protocol[HeFedAvgState]):
    """FedAvg whose coordinator sums ciphertexts (module docstring)."""

    messages: ClassVar[tuple[type[Message], ...]] = HE_MESSAGES

    def __init__(
        self,
        peer: int,
        num_clients: int,
        *,
        rounds: int,
        seed: int,
        backend: HeBackend,
        params0: np.ndarray,
        timeout: float,
        min_fraction: float = 1.0,
        epochs: int = 1,
        steps: int | None = None,
        charge: bool = False,
    ):
        if rounds < 1:
            raise ProtocolError("rounds must be at least 1")
        if not 0 <= peer <= num_clients:
            raise ProtocolError(f"peer {peer} is neither a client nor the coordinator")
        if not (math.isfinite(timeout) and timeout > 0):
            raise ProtocolError(f"timeout must be a positive number of seconds, got {timeout}")
        if not 0 < min_fraction <= 1:
            raise ProtocolError(f"min_fraction must lie in (0, 1], got {min_fraction}")
        self.peer = peer
        self.num_clients = num_clients
        self.coordinator = num_clients
        self.rounds = rounds
        self.seed = seed
        self.backend = backend
        self.params0 = np.array(params0, dtype=np.float32)
        self.timeout = timeout
        if num_clients < MIN_GROUP:
            raise ProtocolError(
                f"he-fedavg needs at least {MIN_GROUP} clients: the sum of two reveals either "
                "update to the other"
            )
        # never fewer than MIN_GROUP updates in a sum (a sum of one is that update)
        self.quorum = max(MIN_GROUP, math.ceil(min_fraction * num_clients - 1e-9))
        self.epochs = epochs
        self.steps = steps
        self.charge = charge
        self.dim = self.params0.size
        t = backend.threshold
        if t is not None and t > num_clients:
            raise ProtocolError(f"threshold {t} exceeds the {num_clients} clients")

    @property
    def is_coordinator(self) -> bool:
        return self.peer == self.coordinator

    def initial_state(self, params: np.ndarray) -> HeFedAvgState:
        return HeFedAvgState(np.array(params, dtype=np.float32), np.random.default_rng(self.seed))

    def model(self, state: HeFedAvgState) -> np.ndarray:
        return state.params

    def progress(self, state: HeFedAvgState) -> int:
        return state.round

    def on_event(self, state: HeFedAvgState, event: Event) -> tuple[HeFedAvgState, list[Effect]]:
        released = state.busy.release(event)
        if released is not None:
            return state, released
        if self.is_coordinator:
            return state, self._coordinator(state, event)
        return state, self._client(state, event)

    # -- coordinator -------------------------------------------------------------------------

    def _clients(self) -> range:
        return range(self.num_clients)

    def _opening(self, state: HeFedAvgState) -> HeAggregate:
        final = state.round >= self.rounds
        return HeAggregate(state.round, _wire(state.aggregate), state.weight, final)

    def _coordinator(self, state: HeFedAvgState, event: Event) -> list[Effect]:
        if isinstance(event, Started):
            opening = self._opening(state)
            effects: list[Effect] = [Send(k, opening) for k in self._clients()]
            return [*effects, self._timer(state)]
        if isinstance(event, TimerFired):
            return self._on_deadline(state, event)
        if not isinstance(event, MessageArrived):
            return []
        msg, sender = event.message, event.sender
        if sender not in self._clients():
            return [Emit("unexpected_message_dropped", {"sender": sender})]
        if isinstance(msg, HeUpdate):
            return self._on_update(state, sender, msg)
        if isinstance(msg, HePartial):
            return self._on_partial(state, sender, msg)
        return []

    def _timer(self, state: HeFedAvgState) -> SetTimer:
        """The deadline of the phase now open: partial decryptions (threshold mode, once an
        aggregate is out) or updates; each phase has its own tag, so a timer armed for one
        phase never fires into the next."""
        tag = "he_partials" if self._awaiting_partials(state) else "he_round"
        return SetTimer(self.timeout, tag, state.round)

    def _awaiting_partials(self, state: HeFedAvgState) -> bool:
        return self.backend.threshold is not None and state.round > 0 and state.forwarded is None

    def _on_update(self, state: HeFedAvgState, sender: int, msg: HeUpdate) -> list[Effect]:
        if state.done or msg.round != state.round or self._awaiting_partials(state):
            return [Emit("stale_update_dropped", {"sender": sender, "round": msg.round})]
        if msg.samples < 1:
            return [Emit("he_update_refused", {"sender": sender, "reason": "no samples"})]
        state.inbox[sender] = (bytes(msg.blob), int(msg.samples))
        full = len(state.inbox) == self.num_clients
        if full or (state.deadline_passed and len(state.inbox) >= self.quorum):
            return self._close_round(state)
        return []

    def _sum(self, state: HeFedAvgState) -> tuple[bytes, int, list[Effect]]:
        """The aggregate of the inbox. A blob that cannot join the sum (malformed, another
        key or length, a weight past the packing's padding) is refused and left out: the
        whole sum is tried first, then, only if it fails, the updates one by one in client
        order, each kept if the sum so far still adds up with it."""
        senders = sorted(state.inbox)
        try:
            return self.backend.aggregate([state.inbox[k] for k in senders]), len(senders), []
        except HEError:
            pass
        effects: list[Effect] = []
        kept: list[int] = []
        blob = b""
        for k in senders:
            try:
                blob = self.backend.aggregate([state.inbox[j] for j in [*kept, k]])
            except HEError as exc:
                effects.append(Emit("he_update_refused", {"sender": k, "reason": str(exc)}))
                del state.inbox[k]
            else:
                kept.append(k)
        return blob, len(kept), effects

    def _close_round(self, state: HeFedAvgState) -> list[Effect]:
        blob, count, effects = self._sum(state)
        if count < MIN_GROUP:
            # a sum of one is that update, and of two gives each its partner's: wait for
            # more (the deadline re-sends to the silent clients)
            state.deadline_passed = True
            fields = {"round": state.round, "updates": count}
            return [*effects, Emit("he_round_too_small", fields), self._timer(state)]
        state.aggregate = blob
        state.weight = sum(w for _, w in state.inbox.values())
        effects.append(Emit("round_aggregated", {"round": state.round, "clients": count}))
        state.inbox.clear()
        state.round += 1
        state.partials.clear()
        state.forwarded = None
        state.resends = 0
        state.resent_to.clear()
        state.deadline_passed = False
        msg = self._opening(state)
        out: list[Effect] = [Send(k, msg) for k in self._clients()]
        if msg.final and self.backend.threshold is None:
            state.done = True
            out.append(Stop())
        else:
            out.append(self._timer(state))
        cost = self.backend.cost("aggregate", self.dim, count)
        return effects + state.busy.after(cost, out, charge=self.charge)

    def _on_partial(self, state: HeFedAvgState, sender: int, msg: HePartial) -> list[Effect]:
        t = self.backend.threshold
        if t is None or msg.round != state.round or state.round == 0:
            return []
        if state.forwarded is not None:
            if sender in state.resent_to:  # it was asked again: it lost the partials
                return [Send(sender, state.forwarded)]
            return []  # merely late: the broadcast reaches it
        try:
            self.backend.check_partial(state.aggregate, bytes(msg.blob))
        except HEError as exc:
            return [Emit("he_partial_refused", {"sender": sender, "reason": str(exc)})]
        state.partials[sender + 1] = bytes(msg.blob)  # key share index = client id + 1
        if len(state.partials) < t:
            return []
        chosen = self.backend.consistent_partials(state.aggregate, state.weight, state.partials)
        if chosen is None:
            # no t of them combine: one is corrupt; wait for more (re-sends at the deadline)
            fields = {"round": state.round, "partials": len(state.partials)}
            return [Emit("he_partials_inconsistent", fields)]
        blobs = [state.partials[i] for i in chosen]
        out = HePartials(
            state.round,
            np.array(chosen, dtype=np.int64),
            np.array([len(b) for b in blobs], dtype=np.int64),
            _wire(b"".join(blobs)),
        )
        state.forwarded = out
        state.resends = 0
        state.deadline_passed = False
        effects: list[Effect] = [Send(k, out) for k in self._clients()]
        if state.round >= self.rounds:
            state.done = True
            effects.append(Stop())
        else:
            effects.append(self._timer(state))
        t = len(chosen)  # the check combined them once
        return state.busy.after(
            self.backend.cost("combine", self.dim, t), effects, charge=self.charge
        )

    def _on_deadline(self, state: HeFedAvgState, event: TimerFired) -> list[Effect]:
        if event.round != state.round or state.done:
            return []
        partial_phase = self._awaiting_partials(state)
        if event.tag != ("he_partials" if partial_phase else "he_round"):
            return []  # a timer of a phase already over
        if partial_phase:
            missing = [k for k in self._clients() if k + 1 not in state.partials]
        else:
            if len(state.inbox) >= self.quorum:
                return self._close_round(state)
            state.deadline_passed = True
            missing = [k for k in self._clients() if k not in state.inbox]
        if state.resends >= MAX_RESENDS:
            fields = {"round": state.round, "missing": len(missing)}
            return [Emit("he_round_stalled", fields)]
        state.resends += 1
        state.resent_to.update(missing)
        opening = self._opening(state)
        effects: list[Effect] = [Send(k, opening) for k in missing]
        effects.append(Emit("he_aggregate_resent", {"round": state.round, "to": len(missing)}))
        return [*effects, self._timer(state)]

    # -- client ------------------------------------------------------------------------------

    def _client(self, state: HeFedAvgState, event: Event) -> list[Effect]:
        if isinstance(event, TrainingDone):
            return self._on_trained(state, event)
        if not isinstance(event, MessageArrived):
            return []
        msg = event.message
        if event.sender != self.coordinator:
            return [Emit("unexpected_message_dropped", {"sender": event.sender})]
        if isinstance(msg, HeAggregate):
            return self._on_aggregate(state, msg)
        if isinstance(msg, HePartials):
            return self._on_partials(state, msg)
        return []

    def _on_aggregate(self, state: HeFedAvgState, msg: HeAggregate) -> list[Effect]:
        if msg.round <= state.version:
            if state.sent is not None and state.sent.round == msg.round:
                return [Send(self.coordinator, state.sent)]  # our update was lost
            return []
        if msg.round == 0:
            return self._adopt(state, 0, self.params0, final=False)
        blob = bytes(msg.blob)
        if self.backend.threshold is not None:
            state.waiting = msg
            try:
                part = self.backend.partial(blob)
            except HEError as exc:
                return [Emit("he_aggregate_refused", {"round": msg.round, "reason": str(exc)})]
            send: list[Effect] = [Send(self.coordinator, HePartial(msg.round, _wire(part)))]
            return state.busy.after(
                self.backend.cost("partial", self.dim), send, charge=self.charge
            )
        try:
            mean = self.backend.decrypt(blob, msg.weight)
        except HEError as exc:
            return [Emit("he_aggregate_refused", {"round": msg.round, "reason": str(exc)})]
        adopted = self._adopt(state, msg.round, self.params0 + mean, final=msg.final)
        return state.busy.after(self.backend.cost("decrypt", self.dim), adopted, charge=self.charge)

    def _on_partials(self, state: HeFedAvgState, msg: HePartials) -> list[Effect]:
        agg = state.waiting
        if agg is None or agg.round != msg.round or msg.round <= state.version:
            return []
        sizes = [int(s) for s in msg.sizes]
        if (
            not sizes
            or len(sizes) != len(msg.holders)
            or sum(sizes) != msg.blob.size
            or min(sizes) < 0
        ):
            return [Emit("he_partials_refused", {"round": msg.round, "reason": "bad sizes"})]
        raw, at, partials = bytes(msg.blob), 0, {}
        for holder, size in zip(msg.holders, sizes, strict=True):
            partials[int(holder)] = raw[at : at + size]
            at += size
        try:
            mean = self.backend.combine(bytes(agg.blob), agg.weight, partials)
        except HEError as exc:
            return [Emit("he_partials_refused", {"round": msg.round, "reason": str(exc)})]
        state.waiting = None
        adopted = self._adopt(state, msg.round, self.params0 + mean, final=agg.final)
        cost = self.backend.cost("combine", self.dim, len(partials))
        return state.busy.after(cost, adopted, charge=self.charge)

    def _adopt(
        self, state: HeFedAvgState, rnd: int, params: np.ndarray, *, final: bool
    ) -> list[Effect]:
        state.params = np.asarray(params, dtype=np.float32)
        state.version = rnd
        if final:
            state.done = True
        if state.done:
            if not state.stopped:
                state.stopped = True
                return [Stop()]
            return []
        if state.round >= self.rounds:
            return []  # no training left: it waits for the final model
        if state.training_round is not None:
            return []  # the training in flight ends first, then trains from this model
        return [self._train(state)]

    def _train(self, state: HeFedAvgState) -> Train:
        state.training_round = state.version
        return Train(params=state.params, epochs=self.epochs, steps=self.steps)

    def _on_trained(self, state: HeFedAvgState, event: TrainingDone) -> list[Effect]:
        if state.training_round is None:
            return []
        rnd, state.training_round = state.training_round, None
        if state.done:
            return []
        if state.version > rnd:
            return [self._train(state)]  # a newer global model arrived meanwhile
        distance = np.asarray(event.params, dtype=np.float64) - self.params0
        try:
            blob, clipped = self.backend.encrypt(distance, state.rng)
        except HEError as exc:
            return [Emit("he_update_refused", {"round": rnd, "reason": str(exc)})]
        update = HeUpdate(rnd, _wire(blob), int(event.samples))
        state.sent = update
        out: list[Effect] = [Send(self.coordinator, update)]
        state.round += 1
        if state.round >= self.rounds and not state.stopped:
            # the final aggregate still arrives and is adopted (threshold: partials sent);
            # Stop goes after the update, which may wait for its modelled encryption
            state.stopped = True
            out.append(Stop())
        effects = state.busy.after(self.backend.cost("encrypt", self.dim), out, charge=self.charge)
        if clipped:
            effects.append(Emit("he_input_clipped", {"round": rnd, "values": clipped}))
        return effects


# --- setup: keys for every participant ------------------------------------------------------


@dataclass(frozen=True, eq=False)
class HeKeys:
    """What the setup dealt: the public part for everyone, and per client the group secret
    or its key share. The coordinator's backend gets the public part only."""

    scheme: str
    public: Any = field(repr=False)  # PackedPaillier, or the CKKS public context bytes
    secret: Any = field(default=None, repr=False)  # group mode: the secret key
    shares: tuple[Any, ...] = field(default=(), repr=False)  # threshold mode, client order
    threshold: int | None = None
    clip: float = 0.0  # ckks: the clip range of inputs

    def backend(self, peer: int, num_clients: int, *, stochastic: bool = True) -> HeBackend:
        """The backend of participant ``peer`` (``num_clients`` is the coordinator)."""
        if self.scheme == "ckks":
            secret = None if peer == num_clients else self.secret
            return CkksBackend(self.public, secret=secret, clip=self.clip)
        if self.scheme == "paillier":
            if peer == num_clients:
                parties = len(self.shares) or None
                return PaillierBackend(self.public, threshold=self.threshold, parties=parties)
            if self.shares:
                return PaillierBackend(self.public, share=self.shares[peer], stochastic=stochastic)
            return PaillierBackend(self.public, secret=self.secret, stochastic=stochastic)
        raise ProtocolError(f"unknown HE scheme {self.scheme!r}")


def paillier_keys(
    rng: np.random.Generator,
    *,
    num_clients: int,
    key_bits: int,
    clip: float,
    value_bits: int,
    max_weight: int,
    key_mode: str,
    threshold: int | None,
) -> HeKeys:
    """Deal Paillier keys: one pair; in threshold mode split among the clients and the
    secret key dropped (the trusted-dealer setup of :mod:`p2pfed.crypto.paillier`)."""
    try:
        from p2pfed.crypto.paillier import PackedPaillier, Packing, generate_keypair, split_key
    except ImportError:
        raise ProtocolError("packed Paillier needs gmpy2: pip install 'p2pfed[he]'") from None

    public, secret = generate_keypair(rng, key_bits)
    packed = PackedPaillier(public, Packing(public.bits, clip, value_bits, max_weight))
    if key_mode == "threshold":
        t = threshold if threshold is not None else num_clients
        shares = tuple(split_key(secret, num_clients, t, rng))
        return HeKeys("paillier", packed, shares=shares, threshold=t)
    return HeKeys("paillier", packed, secret=secret)


def ckks_keys(*, clip: float, poly_modulus_degree: int, scale_bits: int) -> HeKeys:
    """Deal a CKKS group key (TenSEAL draws it from the OS: see :mod:`p2pfed.crypto.ckks`)."""
    from p2pfed.crypto.ckks import CkksKeys, CkksParams

    try:
        keys = CkksKeys.generate(
            CkksParams(poly_modulus_degree=poly_modulus_degree, global_scale_bits=scale_bits)
        )
    except HEError as exc:  # TenSEAL missing, or parameters it refuses
        raise ProtocolError(str(exc)) from None
    return HeKeys("ckks", keys.public_bytes(), secret=keys.to_bytes(), clip=clip)


# --- he-gossip: D-PSGD whose neighbourhood sums a relay computes blind ------------------------

#: mixing weights become integers ``round(W_ij * WEIGHT_SCALE)`` for Paillier's plaintext
#: multiplication (CKKS uses the same); the packing's padding covers this scale
WEIGHT_SCALE = 1024
#: the fewest neighbours in a sum handed to a peer: one alone would be that neighbour's model
MIN_SUMMANDS = 2


@dataclass(frozen=True)
class HeShare(Message):
    """A peer's encrypted ``x_i^{r+1/2} - x^0`` for round ``round``, to the relay."""

    free_shape: ClassVar[frozenset[str]] = _BLOB
    round: int
    blob: np.ndarray


@dataclass(frozen=True)
class HeNeighbourSum(Message):
    """The relay's encrypted weighted sum of peer ``to``'s in-neighbours for round
    ``round``: ``included`` lists the neighbours in it, ``weight`` the sum of their integer
    weights; an empty ``included`` says there is no sum this round (too few arrived)."""

    free_shape: ClassVar[frozenset[str]] = frozenset({"included", "blob"})
    round: int
    included: np.ndarray  # int64 peer ids
    weight: int
    blob: np.ndarray


HE_GOSSIP_MESSAGES: tuple[type[Message], ...] = (HeShare, HeNeighbourSum)


def integer_weight(w: float) -> int:
    """A mixing weight as the integer the relay raises ciphertexts to (at least 1)."""
    return max(1, round(w * WEIGHT_SCALE))


@dataclass
class HeGossipState:
    params: np.ndarray  # peer: x_i^r; relay: x^0 (it never sees a model)
    rng: np.random.Generator = field(repr=False)
    round: int = 0
    phase: str = "idle"  # peer: idle -> training -> mixing -> ... -> done
    half: np.ndarray | None = None
    sums: dict[int, HeNeighbourSum] = field(default_factory=dict)  # early arrivals, by round
    # relay
    shares: dict[int, dict[int, bytes]] = field(default_factory=dict)  # round -> sender
    served: dict[int, set[int]] = field(default_factory=dict)  # round -> aggregators served
    timed_out: set[int] = field(default_factory=set)  # rounds whose deadline passed
    done: bool = False
    busy: Busy = field(default_factory=lambda: Busy("he:compute"))


class HeGossip(Protocol[HeGossipState]):
    """he-gossip: synchronous D-PSGD (:mod:`p2pfed.protocol.dpsgd`) in which each peer's
    neighbourhood sum is computed blind by a relay that holds no key.

    Peers ``0..n-1``, the relay ``n`` (the coordinator's seat: it has no data). Round ``r``
    at peer ``i``::

        x_i^{r+1/2} = local training from x_i^r
        i -> relay  : HeShare(r, E(x_i^{r+1/2} - x^0))              (one ciphertext, not one
                                                                     per neighbour)
        relay -> i  : HeNeighbourSum(r, prod_{j in S} E_j^{w_ij})    (S: in-neighbours in)
        x_i^{r+1}   = (W_ii + sum_{j not in S} W_ij) x_i^{r+1/2}
                      + (sum_{j in S} W_ij) (x^0 + D(sum) / sum_{j in S} w_ij)

    with ``w_ij = round(W_ij * 1024)`` (the relative weights of the neighbours are those of
    the integers: exact for equal weights, such as a regular graph's Metropolis weights,
    within 0.5/1024 of each ``W_ij >= 1/1024`` otherwise; a smaller weight counts as
    1/1024). The relay serves peer ``i`` as soon as all of ``i``'s in-neighbours sent
    round ``r``; at its deadline
    (``timeout`` after the round's first share) it serves the rest with what arrived. A sum
    of fewer than ``MIN_SUMMANDS`` (2) neighbours is never sent — it would be one
    neighbour's model — so such a peer keeps its own model that round, as D-PSGD does for a
    skipped neighbour. A peer waits twice ``timeout`` for its sum, then keeps its model
    (``neighbours_skipped``). Group key mode only: every peer can decrypt, so the relay
    must be the only one to see individual ciphertexts; it does, and forwards only sums.

    Threat model: an honest-but-curious relay learns nothing (it holds the public key);
    a peer learns the weighted sum of at least two of its neighbours' models each round,
    never one alone; peers that collude with the relay learn everything (they hold the
    key). Not covered: malicious peers or relay, traffic analysis.
    """

    messages: ClassVar[tuple[type[Message], ...]] = HE_GOSSIP_MESSAGES

    def __init__(
        self,
        peer: int,
        schedule: TopologySchedule,
        *,
        rounds: int,
        seed: int,
        backend: HeBackend,
        params0: np.ndarray,
        timeout: float,
        epochs: int = 1,
        steps: int | None = None,
        charge: bool = False,
    ):
        n = schedule.at(0).n
        if rounds < 1:
            raise ProtocolError("rounds must be at least 1")
        if not 0 <= peer <= n:
            raise ProtocolError(f"peer {peer} is neither a peer nor the relay")
        if not (math.isfinite(timeout) and timeout > 0):
            raise ProtocolError(f"timeout must be a positive number of seconds, got {timeout}")
        if backend.threshold is not None:
            raise ProtocolError("he-gossip runs with key_mode group only")
        if schedule.directed and not schedule.at(0).is_doubly_stochastic():
            raise ProtocolError("he-gossip (D-PSGD) needs doubly stochastic mixing weights")
        self.peer = peer
        self.schedule = schedule
        self.n = n
        self.relay = n
        self.rounds = rounds
        self.seed = seed
        self.backend = backend
        self.params0 = np.array(params0, dtype=np.float32)
        self.timeout = timeout
        self.epochs = epochs
        self.steps = steps
        self.charge = charge
        self.dim = self.params0.size

    def initial_state(self, params: np.ndarray) -> HeGossipState:
        return HeGossipState(np.array(params, dtype=np.float32), np.random.default_rng(self.seed))

    def model(self, state: HeGossipState) -> np.ndarray:
        return state.params

    def progress(self, state: HeGossipState) -> int:
        return state.round

    def on_event(self, state: HeGossipState, event: Event) -> tuple[HeGossipState, list[Effect]]:
        released = state.busy.release(event)
        if released is not None:
            return state, released
        if self.peer == self.relay:
            return state, self._relay(state, event)
        return state, self._peer(state, event)

    def _w(self, r: int, i: int, j: int) -> float:
        return self.schedule.at(r).weight(i, j)

    # -- relay -------------------------------------------------------------------------------

    def _relay(self, state: HeGossipState, event: Event) -> list[Effect]:
        if isinstance(event, TimerFired) and event.tag == "he_relay":
            state.timed_out.add(event.round)
            return self._serve(state, event.round)
        if not (isinstance(event, MessageArrived) and isinstance(event.message, HeShare)):
            return []
        msg, sender = event.message, event.sender
        if sender >= self.n or msg.round >= self.rounds or msg.round < 0:
            return [Emit("unexpected_message_dropped", {"sender": sender})]
        served = state.served.setdefault(msg.round, set())
        if len(served) == self.n:
            return [Emit("stale_share_dropped", {"sender": sender, "round": msg.round})]
        effects: list[Effect] = []
        shares = state.shares.setdefault(msg.round, {})
        if not shares:
            effects.append(SetTimer(self.timeout, "he_relay", msg.round))
        shares[sender] = bytes(msg.blob)
        return effects + self._serve(state, msg.round)

    def _serve(self, state: HeGossipState, r: int) -> list[Effect]:
        topo = self.schedule.at(r)
        shares = state.shares.get(r, {})
        served = state.served.setdefault(r, set())
        late = r in state.timed_out
        effects: list[Effect] = []
        for i in range(self.n):
            if i in served:
                continue
            expected = topo.in_neighbours(i)
            if not late and any(j not in shares for j in expected):
                continue
            included = [j for j in expected if j in shares]
            served.add(i)
            if len(included) < MIN_SUMMANDS:
                msg = HeNeighbourSum(r, np.zeros(0, dtype=np.int64), 0, _EMPTY)
                effects.append(Send(i, msg))
                continue
            ws = [integer_weight(self._w(r, i, j)) for j in included]
            try:
                blob = self.backend.aggregate(
                    [(shares[j], w) for j, w in zip(included, ws, strict=True)]
                )
            except HEError as exc:
                effects.append(Emit("he_sum_refused", {"round": r, "peer": i, "reason": str(exc)}))
                msg = HeNeighbourSum(r, np.zeros(0, dtype=np.int64), 0, _EMPTY)
                effects.append(Send(i, msg))
                continue
            out = HeNeighbourSum(r, np.array(included, dtype=np.int64), sum(ws), _wire(blob))
            cost = self.backend.cost("aggregate", self.dim, len(included))
            effects += state.busy.after(cost, [Send(i, out)], charge=self.charge)
        if len(served) == self.n:
            state.shares.pop(r, None)  # every peer has its sum: the ciphertexts can go
            if r == self.rounds - 1 and not state.done:
                state.done = True
                # after the last sums, which may wait for their modelled aggregation
                most = max(len(topo.in_neighbours(i)) for i in range(self.n))
                last = self.backend.cost("aggregate", self.dim, most) + 1e-6
                effects += state.busy.after(last, [Stop()], charge=self.charge)
        return effects

    # -- peer --------------------------------------------------------------------------------

    def _peer(self, state: HeGossipState, event: Event) -> list[Effect]:
        if isinstance(event, Started):
            state.phase = "training"
            return [self._train(state)]
        if isinstance(event, TrainingDone) and state.phase == "training":
            return self._on_trained(state, event)
        if isinstance(event, MessageArrived):
            msg = event.message
            if event.sender != self.relay or not isinstance(msg, HeNeighbourSum):
                return [Emit("unexpected_message_dropped", {"sender": event.sender})]
            if msg.round < state.round or state.phase == "done":
                return [Emit("stale_sum_dropped", {"round": msg.round})]
            state.sums[msg.round] = msg
            if state.phase == "mixing" and msg.round == state.round:
                return self._mix(state)
            return []
        if (
            isinstance(event, TimerFired)
            and event.tag == "he_sum_timeout"
            and state.phase == "mixing"
            and event.round == state.round
        ):
            return self._mix(state, gave_up=True)
        return []

    def _train(self, state: HeGossipState) -> Train:
        return Train(params=state.params, epochs=self.epochs, steps=self.steps)

    def _on_trained(self, state: HeGossipState, event: TrainingDone) -> list[Effect]:
        state.half = np.asarray(event.params, dtype=np.float32)
        state.phase = "mixing"
        distance = state.half.astype(np.float64) - self.params0
        effects: list[Effect] = []
        try:
            blob, clipped = self.backend.encrypt(distance, state.rng)
        except HEError as exc:
            effects.append(Emit("he_update_refused", {"round": state.round, "reason": str(exc)}))
        else:
            send: list[Effect] = [Send(self.relay, HeShare(state.round, _wire(blob)))]
            effects += state.busy.after(
                self.backend.cost("encrypt", self.dim), send, charge=self.charge
            )
            if clipped:
                effects.append(Emit("he_input_clipped", {"round": state.round, "values": clipped}))
        effects.append(SetTimer(2 * self.timeout, "he_sum_timeout", state.round))
        if state.round in state.sums:
            effects += self._mix(state)
        return effects

    def _mix(self, state: HeGossipState, *, gave_up: bool = False) -> list[Effect]:
        assert state.half is not None
        r = state.round
        topo = self.schedule.at(r)
        expected = topo.in_neighbours(self.peer)
        msg = state.sums.pop(r, None)
        effects: list[Effect] = []
        included: list[int] = []
        mean = None
        if msg is not None and msg.included.size >= MIN_SUMMANDS:
            included = [int(j) for j in msg.included]
            if not set(included) <= set(expected) or len(set(included)) != len(included):
                effects.append(Emit("he_sum_refused", {"round": r, "reason": "bad neighbours"}))
                included = []
            else:
                try:
                    mean = self.backend.decrypt(bytes(msg.blob), msg.weight)
                except HEError as exc:
                    effects.append(Emit("he_sum_refused", {"round": r, "reason": str(exc)}))
                    included = []
        if mean is None:
            included = []
        missing = [j for j in expected if j not in included]
        if missing:
            reason = "timeout" if gave_up else "too few in the sum"
            effects.append(
                Emit("neighbours_skipped", {"round": r, "peers": missing, "reason": reason})
            )
        # x_i <- (W_ii + missing weights) x_i^{1/2} + (sum_S W_ij) (x^0 + mean distance)
        w_in = sum(topo.weight(self.peer, j) for j in included)
        mixed = (1.0 - w_in) * state.half.astype(np.float64)
        if mean is not None and w_in > 0:
            mixed += w_in * (self.params0 + mean)
        state.params = mixed.astype(np.float32)
        state.half = None
        state.round += 1
        then: list[Effect]
        if state.round >= self.rounds:
            state.phase = "done"
            state.sums.clear()
            then = [Stop()]
        else:
            state.phase = "training"
            then = [self._train(state)]
        cost = self.backend.cost("decrypt", self.dim) if mean is not None else 0.0
        return effects + state.busy.after(cost, then, charge=self.charge)
