"""Secure aggregation of one group's ring vectors: pairwise masking with dropout recovery
(Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning",
CCS 2017) over sparse masking graphs (Bell et al., "Secure Single-Server Aggregation with
(Poly)Logarithmic Overhead", CCS 2020 — SecAgg+), and seed-compressed additive sharing.

One *session* sums the inputs of a set of clients for one aggregator (a peer summing its
neighbourhood, or the coordinator summing everyone). The aggregator learns the sum over the
clients that got their masked input in, and nothing else about any one input; it also
relays every client-to-client message, which it cannot read. On a sparse (SecAgg+) graph
with dropouts, "the sum" is finer: the aggregator learns the sum of each connected part of
the survivors' masking graph (the masks between parts are all known to it). Each part holds
at least ``threshold`` clients, since a survivor is unmasked by the shares of ``threshold - 1``
surviving neighbours it masks with; callers that must never reveal a sum of two use a
threshold of at least 3 on sparse graphs.

Threat model. Honest-but-curious aggregator and clients, who may collude as long as fewer
than ``threshold`` of a client's share holders (itself excluded) join the aggregator; a
network adversary that sees everything (messages between clients are sealed end to end,
AES-128-OCB under keys only the two ends can compute). Clients may drop out at any phase.
Not covered: a malicious aggregator that lies about who dropped to different clients (that
needs the consistency-check round of Bonawitz et al. section 4), input validity (a client may
mask any vector: norm bounds must be checked before masking), traffic analysis. Simulation
caveat, as in :mod:`p2pfed.crypto.channel`: keys drawn from a run-seeded generator are known
to whoever knows the run seed.

Masking (client ``u`` with input ``x_u`` in ``Z_2^k``)::

    y_u = x_u + PRG(b_u) + sum_{v in N(u), v > u} PRG(s_uv) - sum_{v in N(u), v < u} PRG(s_uv)

``b_u`` is a fresh 16-byte self-mask seed; ``s_uv`` is derived (:func:`kdf`) from the X25519
agreement between ``u``'s and ``v``'s fresh per-session mask keys, with the session and both
ids in the context; ``PRG`` is AES-128-CTR (:func:`p2pfed.crypto.sharing.expand`). ``N(u)`` is
``u``'s neighbourhood in the masking graph: everyone (SecAgg) or, with ``num_shares`` below
the group size, a Harary graph of degree ``num_shares - 1`` over a permutation of the clients
drawn from the session id (SecAgg+). ``u`` Shamir-shares (pycryptodome, GF(2^128), 16-byte secrets)
both ``b_u`` and the 16-byte seed of its mask key among ``N(u) + {u}`` with threshold ``t``.

Phases (``U1 ⊇ U2 ⊇ U3 ⊇ U4``: the clients still there after each):

1. advertise: each client sends its mask public key; the aggregator needs ``t`` of them.
2. share keys: each client sends its sealed shares for each masking neighbour; the
   aggregator routes them.
3. masked input: ``y_u`` from the clients of ``U2``; the rest of ``U2`` dropped.
4. unmask: the aggregator names the survivors ``U3``; each client answers, for every ``u``
   whose shares it holds, with the share of ``b_u`` if ``u`` survived and the share of
   ``u``'s mask key otherwise — never both for one ``u`` (a request that would make it
   release the other kind is refused: that pair of shares would unmask ``x_u``). The
   aggregator removes ``PRG(b_u)`` for the survivors and the dropped clients' pairwise masks.

Any phase that ends with fewer than ``t`` clients, or an unmask that leaves a secret with
fewer than ``t`` shares, aborts the session with :class:`AbortError` (the caller moves on
without the sum). Shamir's polynomial coefficients come from the operating system's
generator (pycryptodome takes no seed); no result depends on them.

Pseudorandom additive sharing (:func:`share_contribution`, :func:`partial_sum`; Cramer,
Damgard & Ishai, "Share conversion, pseudorandom secret-sharing and applications to secure
computation", TCC 2005): a contributor ``j`` splits ``x_j`` into the shares
``PRG(seed(j -> m))``, one per other member ``m``, and ``x_j - sum_m PRG(seed(j -> m))``,
which it keeps. ``seed(j -> m)`` is derived (:func:`kdf`) from the long-term pairwise secret
of ``j`` and ``m`` (:class:`PairKeys`) with the session and the direction in the context, so
both ends compute it and the share never travels; the aggregator, which lacks the pairwise
secret, sees none of it. Member ``m`` adds up the shares it holds, ``sum_j PRG(seed(j -> m))``
(its partial sum). These are the additive shares of :func:`p2pfed.crypto.sharing.share`;
earlier versions drew each seed fresh and sent it sealed through the aggregator, which cost
an AES-GCM seal and open per pair and session (~40 us each, a quarter of a peer's
secret-share work) for no gain in secrecy. A session id is never reused (one join per
aggregator and round), so no seed is either.

Key derivation: keys made once per run (a peer's long-term pair-key seed) use HKDF-SHA256;
keys made per session use the one-step KDF of NIST SP 800-56C rev. 2, section 4.1, option 1
(``SHA-256(counter || Z || label || context)``, :func:`kdf`), an approved KDF for a shared
secret ``Z`` that costs one hash call: pycryptodome's HKDF measured ~150 us a call here, which
made key derivation the largest cost of a D-PSGD round under secagg.

Pure: numpy, networkx and pycryptodome; no Ray, no clock; randomness only from the generator
passed in (and Shamir's coefficients, above).
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
from Crypto.Cipher import AES
from Crypto.Hash import SHA256
from Crypto.Protocol.DH import import_x25519_public_key, key_agreement
from Crypto.Protocol.KDF import HKDF
from Crypto.Protocol.SecretSharing import Shamir, _Element
from Crypto.PublicKey import ECC

from p2pfed.crypto.config import MIN_GROUP
from p2pfed.crypto.sharing import SEED_BYTES, expand
from p2pfed.errors import P2PFedError

KEY_BYTES = 32  # raw X25519 public key
SHARE_BYTES = 16  # a Shamir share of a 16-byte secret
TAG_BYTES = 16
_SEALED_SHARES = struct.Struct(">IIBB16s16s")  # owner, holder, index b, index s, shares
SEALED_SHARE_BYTES = _SEALED_SHARES.size + TAG_BYTES


class SecAggError(P2PFedError, ValueError):
    """A protocol step refused (malformed or inconsistent input); ``reason`` is safe to log."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class AbortError(SecAggError):
    """The session cannot produce a sum (too few clients or shares): give it up."""


# --- long-term pairwise keys: sealing client-to-client messages relayed by the aggregator --


def kdf(secret: bytes, label: bytes, context: bytes, n: int) -> bytes:
    """NIST SP 800-56C rev. 2 one-step key derivation with SHA-256 (one block: ``n <= 32``),
    ``label`` and ``context`` as the FixedInfo (both fixed-format, so unambiguous)."""
    if not 0 < n <= 32:
        raise ValueError("one SHA-256 block derives at most 32 bytes")
    return hashlib.sha256(b"\x00\x00\x00\x01" + secret + label + context).digest()[:n]


def x25519_from_seed(seed: bytes, purpose: bytes) -> ECC.EccKey:
    """An X25519 private key derived from a secret ``seed`` (``purpose`` as the context), so a
    16-byte seed can stand for the key (and be Shamir-shared)."""
    return ECC.construct(curve="Curve25519", seed=kdf(seed, b"p2pfed-x25519-v1", purpose, 32))


def public_bytes(key: ECC.EccKey) -> bytes:
    return key.public_key().export_key(format="raw")


def _agree(private: ECC.EccKey, public: bytes, salt: bytes, context: bytes, n: int) -> bytes:
    try:
        theirs = import_x25519_public_key(public)
    except ValueError:
        raise SecAggError("invalid X25519 public key") from None

    return key_agreement(
        static_priv=private, static_pub=theirs, kdf=lambda z: kdf(z, salt, context, n)
    )


class PairKeys:
    """A peer's long-term X25519 key for end-to-end sealing between group members, and the
    directory of everyone's public keys (registered at setup, like the channel's identity
    keys). Agreements are cached per peer pair; one AES-128 key per (purpose, session,
    sender, receiver), so a fixed nonce is never reused under one key.

    The AEAD is OCB (RFC 7253; its patents lapsed in 2021), not the channel's GCM: a blob is
    a few dozen bytes under a fresh key, where pycryptodome's set-up dominates — GCM measured
    ~45 us per seal here (it precomputes a GHASH table per key), OCB ~10 us, and a peer of a
    4-regular graph seals and opens 24 blobs per secagg round."""

    def __init__(self, peer: int, private: ECC.EccKey, directory: Mapping[int, bytes]):
        self.peer = peer
        self._private = private
        self.directory = directory
        self._shared: dict[int, bytes] = {}

    def _secret(self, other: int) -> bytes:
        secret = self._shared.get(other)
        if secret is None:
            public = self.directory.get(other)
            if public is None:
                raise SecAggError(f"no public key registered for peer {other}")
            lo, hi = sorted((self.peer, other))
            secret = _agree(
                self._private, public, b"p2pfed-pair-v1", struct.pack(">II", lo, hi), 32
            )
            self._shared[other] = secret
        return secret

    def key(self, other: int, purpose: bytes, session: bytes, src: int, dst: int) -> bytes:
        info = purpose + session + struct.pack(">II", src, dst)
        return kdf(self._secret(other), b"p2pfed-pair-key-v1", info, 16)

    def seal(self, other: int, purpose: bytes, session: bytes, plaintext: bytes) -> bytes:
        key = self.key(other, purpose, session, self.peer, other)
        cipher = AES.new(key, AES.MODE_OCB, nonce=bytes(12), mac_len=TAG_BYTES)
        cipher.update(purpose + session)
        body, tag = cipher.encrypt_and_digest(plaintext)
        return body + tag

    def open(self, other: int, purpose: bytes, session: bytes, sealed: bytes) -> bytes:
        if len(sealed) < TAG_BYTES:
            raise SecAggError("sealed blob too short")
        key = self.key(other, purpose, session, other, self.peer)
        cipher = AES.new(key, AES.MODE_OCB, nonce=bytes(12), mac_len=TAG_BYTES)
        cipher.update(purpose + session)
        try:
            return cipher.decrypt_and_verify(sealed[:-TAG_BYTES], sealed[-TAG_BYTES:])
        except ValueError:
            raise SecAggError(f"sealed blob from peer {other} failed authentication") from None


def pair_key_directory(
    run_seed: bytes, participants: Iterable[int]
) -> tuple[dict[int, bytes], dict[int, bytes]]:
    """Every participant's long-term pair-key seed and public key, from the run seed (the
    simulation's stand-in for peers generating keys and registering the public halves)."""
    seeds, publics = {}, {}
    for p in participants:
        seed = pair_seed(run_seed, p)
        seeds[p] = seed
        publics[p] = public_bytes(x25519_from_seed(seed, b"pair"))
    return seeds, publics


def pair_seed(run_seed: bytes, peer: int) -> bytes:
    """The secret seed of ``peer``'s long-term pair key, from the run seed."""
    return HKDF(run_seed, 16, b"p2pfed-pair-seed-v1", SHA256, context=struct.pack(">I", peer))


def pair_keys(peer: int, seed: bytes, directory: Mapping[int, bytes]) -> PairKeys:
    return PairKeys(peer, x25519_from_seed(seed, b"pair"), directory)


# --- the session's public parameters ---------------------------------------------------


@dataclass(frozen=True)
class SessionSpec:
    """What every party of one session agrees on beforehand."""

    session: bytes  # a public id, unique per (aggregator, round)
    clients: tuple[int, ...]  # expected clients, ascending
    num_shares: int  # share holders per client, the client included
    threshold: int  # shares that reconstruct a secret
    dim: int  # ring elements per input
    dtype: type[np.unsignedinteger] = np.uint32

    def __post_init__(self) -> None:
        n = len(self.clients)
        if list(self.clients) != sorted(set(self.clients)):
            raise SecAggError("session clients must be distinct and ascending")
        if not 2 <= self.num_shares <= n:
            raise SecAggError(f"num_shares must lie in 2..{n}, got {self.num_shares}")
        if not self.num_shares // 2 < self.threshold <= self.num_shares:
            raise SecAggError(
                f"threshold {self.threshold} must exceed half of num_shares "
                f"({self.num_shares}) and not exceed it"
            )

    @functools.cached_property
    def neighbours(self) -> dict[int, tuple[int, ...]]:
        """The masking graph: each client's masking (and share-holding) neighbours."""
        return _masking_graph(self.session, self.clients, self.num_shares)


@functools.lru_cache(maxsize=8)
def _masking_graph(
    session: bytes, clients: tuple[int, ...], num_shares: int
) -> dict[int, tuple[int, ...]]:
    """The session's masking graph: public, and a pure function of its arguments, so one
    process computes it once per session however many of its participants ask (measured,
    issue 8: 1,000 clients each building the Harary graph of every round took 29 of 78 s
    of a 400-client secagg run; callers must not mutate the result)."""
    n = len(clients)
    if num_shares >= n:
        graph = {u: tuple(v for v in clients if v != u) for u in clients}
    else:
        # SecAgg+: a Harary graph (num_shares - 1)-connected with the fewest edges, over
        # positions assigned by a permutation only the session id decides
        harary = nx.hkn_harary_graph(num_shares - 1, n)
        seed = int.from_bytes(hashlib.sha256(b"p2pfed-secagg-graph" + session).digest()[:8])
        order = np.random.default_rng(seed).permutation(n)
        at = [clients[int(i)] for i in order]
        graph = {u: () for u in clients}
        for a, b in harary.edges():
            graph[at[a]] += (at[b],)
            graph[at[b]] += (at[a],)
        graph = {u: tuple(sorted(vs)) for u, vs in graph.items()}
    return graph


def _holders(spec: SessionSpec, owner: int) -> tuple[int, ...]:
    """Who holds shares of ``owner``'s secrets, in Shamir index order (index = position+1)."""
    return tuple(sorted((owner, *spec.neighbours[owner])))


def _mask_seed(private: ECC.EccKey, public: bytes, session: bytes, u: int, v: int) -> bytes:
    lo, hi = sorted((u, v))
    return _agree(
        private, public, b"p2pfed-secagg-mask-v1", session + struct.pack(">II", lo, hi), 16
    )


def _split(threshold: int, holders: int, secret: bytes) -> list[tuple[int, bytes]]:
    return Shamir.split(threshold, holders, secret)


# --- client -------------------------------------------------------------------------------


@dataclass
class SecAggClient:
    """One client's side of one session."""

    peer: int
    spec: SessionSpec
    pair: PairKeys = field(repr=False)
    rng: np.random.Generator = field(repr=False)
    _mask_seed_secret: bytes = field(default=b"", repr=False)
    _mask_private: ECC.EccKey | None = field(default=None, repr=False)
    _mask_public: bytes = b""
    _self_seed: bytes = field(default=b"", repr=False)
    _roster: dict[int, bytes] = field(default_factory=dict, repr=False)
    _held: dict[int, tuple[int, bytes, int, bytes]] = field(default_factory=dict, repr=False)
    #: what this client released per owner: "b" or "s" (never both)
    released: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.peer not in self.spec.clients:
            raise SecAggError(f"peer {self.peer} is not a client of this session")

    @property
    def _purpose(self) -> bytes:
        return b"secagg-shares"

    def advertise(self) -> bytes:
        """Phase 1: a fresh mask key; returns its public half."""
        self._mask_seed_secret = self.rng.bytes(SEED_BYTES)
        self._self_seed = self.rng.bytes(SEED_BYTES)
        self._mask_private = x25519_from_seed(self._mask_seed_secret, b"mask" + self.spec.session)
        self._mask_public = public_bytes(self._mask_private)
        return self._mask_public

    def _mask_key(self) -> ECC.EccKey:
        if self._mask_private is None:
            raise SecAggError("no mask key before advertise")
        return self._mask_private

    def share_keys(self, roster: Mapping[int, bytes]) -> dict[int, bytes]:
        """Phase 2: given the mask public keys of the clients in ``U1`` (this one's
        neighbours at least), return this client's sealed shares per neighbour."""
        if not self._mask_seed_secret:
            raise SecAggError("share_keys before advertise")
        if self._roster:
            # a second round of shares would reuse the (key, nonce) of the first seals
            raise SecAggError("share_keys asked twice in one session")
        if roster.get(self.peer) != self._mask_public:
            raise SecAggError("the roster does not carry this client's own key")
        if len(set(roster.values())) != len(roster):
            raise SecAggError("the roster repeats a key")
        unknown = set(roster) - set(self.spec.clients)
        if unknown:
            raise SecAggError(f"the roster names non-clients {sorted(unknown)}")
        if len(roster) < self.spec.threshold:
            raise AbortError(
                f"only {len(roster)} clients advertised, threshold is {self.spec.threshold}"
            )
        self._roster = dict(roster)
        holders = _holders(self.spec, self.peer)
        t = self.spec.threshold
        b_shares = _split(t, len(holders), self._self_seed)
        s_shares = _split(t, len(holders), self._mask_seed_secret)
        out: dict[int, bytes] = {}
        for (ib, sb), (is_, ss), v in zip(b_shares, s_shares, holders, strict=True):
            if v == self.peer:
                self._held[self.peer] = (ib, sb, is_, ss)
            elif v in roster:
                plain = _SEALED_SHARES.pack(self.peer, v, ib, is_, sb, ss)
                out[v] = self.pair.seal(v, self._purpose, self.spec.session, plain)
        return out

    def masked_input(self, x: np.ndarray, received: Mapping[int, bytes]) -> np.ndarray:
        """Phase 3: ``received`` holds the sealed shares routed to this client (the owners
        are ``U2`` restricted to its neighbours); returns ``y_u``."""
        spec = self.spec
        arr = np.asarray(x)
        if arr.dtype != spec.dtype or arr.shape != (spec.dim,):
            raise SecAggError(f"input must be {spec.dim} ring elements of {spec.dtype.__name__}")
        if not self._roster:
            raise SecAggError("masked_input before share_keys")
        nbrs = set(spec.neighbours[self.peer])
        for owner in received:
            if owner not in nbrs or owner not in self._roster:
                raise SecAggError(f"shares from peer {owner}, who is not a masking neighbour")
        if len(received) + 1 < spec.threshold:
            # Bonawitz et al.'s round-2 check: too few share holders to ever unmask this input
            raise AbortError(
                f"only {len(received)} masking neighbours shared keys, threshold is "
                f"{spec.threshold}"
            )
        for owner, sealed in received.items():
            plain = self.pair.open(owner, self._purpose, spec.session, sealed)
            o, h, ib, is_, sb, ss = _SEALED_SHARES.unpack(plain)
            if (o, h) != (owner, self.peer):
                raise SecAggError("sealed shares name the wrong owner or holder")
            self._held[owner] = (ib, sb, is_, ss)
        y = arr.copy()
        y += expand(self._self_seed, spec.dim, spec.dtype)
        mask_key = self._mask_key()
        for v in sorted(received):
            m = expand(
                _mask_seed(mask_key, self._roster[v], spec.session, self.peer, v),
                spec.dim,
                spec.dtype,
            )
            if self.peer < v:
                y += m
            else:
                y -= m
        return y

    def unmask(self, survivors: Sequence[int]) -> dict[int, tuple[str, int, bytes]]:
        """Phase 4: for every owner whose shares this client holds, the share of ``b_u``
        (``u`` survived) or of its mask key (``u`` dropped). Refuses a request that would
        release both kinds for one owner, or that names too few survivors."""
        alive = set(survivors)
        if self.peer not in alive:
            raise SecAggError("unmask asked of a client the aggregator counts as dropped")
        if len(alive) < max(self.spec.threshold, MIN_GROUP):
            # fewer than 3 survivors: their sum would reveal one input to another survivor
            raise AbortError(f"{len(alive)} survivors, need {max(self.spec.threshold, MIN_GROUP)}")
        if not alive <= set(self.spec.clients) or not (
            alive & set(self.spec.neighbours[self.peer])
        ) <= set(self._roster):
            raise SecAggError("survivors include clients that never advertised")
        wanted = {u: ("b" if u in alive else "s") for u in self._held}
        for u, kind in wanted.items():
            if self.released.get(u, kind) != kind:
                raise SecAggError(f"refused: peer {u}'s other share was released already")
        out = {}
        for u, kind in wanted.items():
            ib, sb, is_, ss = self._held[u]
            self.released[u] = kind
            out[u] = (kind, ib, sb) if kind == "b" else (kind, is_, ss)
        return out


# --- aggregator ---------------------------------------------------------------------------


@dataclass
class SecAggServer:
    """The aggregator's side of one session (it holds no client secret at any point)."""

    spec: SessionSpec
    roster: dict[int, bytes] = field(default_factory=dict)  # U1 -> mask public key
    sharers: tuple[int, ...] = ()  # U2
    masked: dict[int, np.ndarray] = field(default_factory=dict)  # U3 -> y
    survivors: tuple[int, ...] = ()  # U3
    #: Lagrange coefficients at 0 per set of share indices (public values)
    _lagrange: dict[tuple[int, ...], list[_Element]] = field(default_factory=dict, repr=False)

    def collect_adverts(self, adverts: Mapping[int, bytes]) -> dict[int, bytes]:
        """End of phase 1: the roster every advertising client receives."""
        roster = {u: k for u, k in adverts.items() if u in self.spec.clients}
        if len(roster) < self.spec.threshold:
            raise AbortError(
                f"{len(roster)} of {len(self.spec.clients)} clients advertised keys, "
                f"threshold is {self.spec.threshold}"
            )
        self.roster = dict(sorted(roster.items()))
        return self.roster

    def roster_for(self, client: int) -> dict[int, bytes]:
        """The part of the roster a client needs: its own key and its neighbours'."""
        keep = {client, *self.spec.neighbours[client]}
        return {u: k for u, k in self.roster.items() if u in keep}

    def route_shares(
        self, shares: Mapping[int, Mapping[int, bytes]]
    ) -> dict[int, dict[int, bytes]]:
        """End of phase 2: ``shares[u][v]`` is ``u``'s sealed shares for ``v``; returns, per
        client ``v`` of ``U2``, the sealed shares addressed to it by owner."""
        sharers = sorted(u for u in shares if u in self.roster)
        if len(sharers) < self.spec.threshold:
            raise AbortError(
                f"{len(sharers)} clients shared their keys, threshold is {self.spec.threshold}"
            )
        self.sharers = tuple(sharers)
        routed: dict[int, dict[int, bytes]] = {v: {} for v in sharers}
        for u in sharers:
            for v, blob in shares[u].items():
                if v in routed and v in self.spec.neighbours[u]:
                    routed[v][u] = blob
        return routed

    def collect_masked(self, masked: Mapping[int, np.ndarray]) -> tuple[int, ...]:
        """End of phase 3: the survivors ``U3`` that the unmask request names."""
        spec = self.spec
        got = {}
        for u, y in masked.items():
            if u not in self.sharers:
                continue
            arr = np.asarray(y)
            if arr.dtype != spec.dtype or arr.shape != (spec.dim,):
                raise SecAggError(f"masked input of peer {u} has the wrong ring or length")
            got[u] = arr
        if len(got) < spec.threshold:
            raise AbortError(f"{len(got)} masked inputs arrived, threshold is {spec.threshold}")
        self.masked = dict(sorted(got.items()))
        self.survivors = tuple(self.masked)
        return self.survivors

    def reconstruct(
        self, reveals: Mapping[int, Mapping[int, tuple[str, int, bytes]]]
    ) -> np.ndarray:
        """End of phase 4: the ring sum of the survivors' inputs, from the clients'
        released shares (``reveals[v][u] = (kind, index, share)``)."""
        spec = self.spec
        alive = set(self.survivors)
        dropped = [u for u in self.sharers if u not in alive]
        b_parts: dict[int, dict[int, bytes]] = {u: {} for u in self.survivors}
        s_parts: dict[int, dict[int, bytes]] = {u: {} for u in dropped}
        for v, released in reveals.items():
            if v not in alive:
                continue
            for u, (kind, index, share) in released.items():
                holders = _holders(spec, u) if u in spec.neighbours else ()
                if v not in holders or not 1 <= index <= len(holders) or holders[index - 1] != v:
                    raise SecAggError(f"peer {v} released a share of peer {u} it cannot hold")
                target = b_parts if kind == "b" else s_parts
                if u in target:
                    target[u][index] = share
        t = spec.threshold
        short = sorted(u for u, parts in {**b_parts, **s_parts}.items() if len(parts) < t)
        if short:
            raise AbortError(f"fewer than {t} shares arrived for peers {short[:8]}: cannot unmask")
        total = np.zeros(spec.dim, dtype=spec.dtype)
        for y in self.masked.values():
            total += y
        for parts in b_parts.values():
            b_u = self._combine(sorted(parts.items())[:t])
            total -= expand(b_u, spec.dim, spec.dtype)
        for u, parts in s_parts.items():
            seed = self._combine(sorted(parts.items())[:t])
            key = x25519_from_seed(seed, b"mask" + spec.session)
            if public_bytes(key) != self.roster[u]:
                raise AbortError(f"reconstructed mask key of peer {u} does not match its advert")
            for v in spec.neighbours[u]:
                if v in alive:
                    # y_v carries +PRG(s_vu) when v < u, -PRG(s_vu) otherwise
                    seed_uv = _mask_seed(key, self.roster[v], spec.session, u, v)
                    m = expand(seed_uv, spec.dim, spec.dtype)
                    if v < u:
                        total -= m
                    else:
                        total += m
        return total

    def _combine(self, shares: list[tuple[int, bytes]]) -> bytes:
        """``Shamir.combine`` with the Lagrange coefficients cached per index set: every
        survivor's self mask is shared among the same holders, so a session computes them
        once instead of once per secret (pycryptodome's GF(2^128) arithmetic either way;
        measured 0.64 ms -> ~0.1 ms a secret at threshold 3). Same result, tested."""
        indices = tuple(i for i, _ in shares)
        coeffs = self._lagrange.get(indices)
        if coeffs is None:
            if len(set(indices)) != len(indices):
                raise SecAggError("duplicate share index")
            xs = [_Element(i) for i in indices]
            coeffs = []
            for j, x_j in enumerate(xs):
                num, den = _Element(1), _Element(1)
                for m, x_m in enumerate(xs):
                    if m != j:
                        num *= x_m
                        den *= x_j + x_m  # characteristic 2: x_j - x_m = x_j + x_m
                coeffs.append(num * den.inverse())
            self._lagrange[indices] = coeffs
        result = _Element(0)
        for (_, share), c in zip(shares, coeffs, strict=True):
            result += _Element(share) * c
        return result.encode()


# --- pseudorandom additive sharing -----------------------------------------------------------


def share_seed(pair: PairKeys, other: int, session: bytes, src: int, dst: int) -> bytes:
    """The seed of the share that ``src`` gives ``dst`` in ``session`` (one of them is
    ``pair``'s peer, the other ``other``): both ends derive it from their pairwise secret, so
    it never travels, and nobody else can."""
    return pair.key(other, b"share-seed", session, src, dst)


def share_contribution(
    peer: int, x: np.ndarray, members: Iterable[int], pair: PairKeys, session: bytes
) -> np.ndarray:
    """The share of ring vector ``x`` that ``peer`` keeps: ``x`` minus the share it gives
    each other member, ``PRG(seed(peer -> m))``."""
    arr = np.asarray(x)
    if arr.dtype.kind != "u":
        raise SecAggError(f"shares live in a ring of unsigned integers, got {arr.dtype}")
    y = arr.copy()
    for m in sorted(set(members) - {peer}):
        y -= expand(share_seed(pair, m, session, peer, m), arr.size, arr.dtype.type)
    return y


def partial_sum(
    peer: int,
    owners: Iterable[int],
    pair: PairKeys,
    session: bytes,
    dim: int,
    dtype: type[np.unsignedinteger] = np.uint32,
) -> np.ndarray:
    """The shares ``peer`` holds of the inputs of ``owners``, added up."""
    total = np.zeros(dim, dtype=dtype)
    for j in sorted(set(owners) - {peer}):
        total += expand(share_seed(pair, j, session, j, peer), dim, dtype)
    return total


def session_id(scope: str, aggregator: int, round_: int) -> bytes:
    """A public session id: the scope, the aggregator and the round."""
    return scope.encode() + struct.pack(">IQ", aggregator, round_)
