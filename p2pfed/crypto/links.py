"""Sealed links between peers: a key directory of signed adverts and one guard per engine.

:mod:`p2pfed.crypto.channel` seals one directed link in one epoch. This module runs those
links for a set of local peers over a whole run:

* :class:`KeyDirectory` binds each participant id to its Ed25519 identity public key
  (registered at setup, before any frame moves) and serves each peer's signed X25519
  :class:`~p2pfed.crypto.channel.KeyAdvert` for an epoch only after checking its signature
  against that identity key;
* :class:`LinkGuard` holds the identities of one engine's local peers and seals and opens
  their frames: epoch ``floor(t / rotate_every)`` (always 0 without rotation), one
  :class:`~p2pfed.crypto.channel.Sealer` / :class:`~p2pfed.crypto.channel.Opener` per directed
  link and epoch, made on first use from the verified advert of the other end.

Threat model (as :mod:`p2pfed.crypto.channel`, plus key distribution). A network adversary
may read, drop, reorder, replay, modify or inject frames and may publish key adverts of its
own; it holds no honest peer's identity key. Then a sealed frame's payload is readable by its
receiver only, and a receiver accepts a frame only if the claimed sender sealed it for this
receiver, this message type and this epoch (or one next to it), and has not accepted it
before. An advert not signed by the identity key registered for its peer is refused, so an
adversary cannot put itself in the middle of a link by publishing a link key. The directory's
identity-key binding is trusted: it is set up before the run (in a deployment, by the
coordinator's enrolment); a wrong binding is out of scope. Frame sizes, timing and who talks
to whom stay visible, and so does each frame's message type, which travels in clear next to
the channel header (bound by the tag, so it cannot be changed in transit).

Epochs and rotation. A sender seals in its current epoch; a receiver accepts frames of its
current epoch, the previous one (frames in flight across a boundary) and the next one (wall
time: hosts' clocks differ slightly), and refuses anything older as "epoch expired" and
anything later as "epoch not yet begun". Once a peer reaches epoch ``e`` it forgets the
sealers, openers and X25519 private link keys of epochs before ``e - 1``: a frame of such an
epoch can no longer be opened by anybody (forward secrecy across epochs, within this
simulation's caveat below), and its replay is refused by the epoch check before any key is
looked up. ``rotate_every`` must exceed the longest link latency, or frames expire in flight.

Simulation caveat. Every key derives from the run seed (:func:`identity_seed`), so runs are
reproducible and anyone who knows the seed knows every key. And the directory stands in for a
bulletin board that every peer posted its signed advert for epoch ``e`` to before ``e``
began: an advert nobody published explicitly is *materialised* from the run seed on its
first lookup, which is why the directory holds every peer's identity (to sign the adverts it
stands in for; a :class:`LinkGuard` seals only with its own local peers' identities). An
advert published with :meth:`KeyDirectory.publish` (an attacker's, in tests) takes precedence
over the materialised one and is verified the same way, so a forged one is refused.

Pure: no Ray, no clock (times are passed in), no randomness beyond the run seed.
"""

from __future__ import annotations

import math
import struct
from collections import Counter
from collections.abc import Iterable, Mapping

from Crypto.Hash import SHA256
from Crypto.Protocol.KDF import HKDF

from p2pfed.crypto.channel import (
    _HEADER,  # the channel's frame header: (version, sender, receiver, epoch, counter)
    TAG_BYTES,
    VERSION,
    Identity,
    KeyAdvert,
    Opener,
    Sealer,
    SealError,
    link_key,
)
from p2pfed.crypto.config import SecurityConfig

#: bytes a sealed frame adds to its plaintext, besides the message type's name
SEAL_OVERHEAD = 1 + _HEADER.size + TAG_BYTES  # type-name length, channel header, GCM tag


def identity_seed(run_seed: int, peer: int) -> bytes:
    """32 bytes from which ``peer``'s identity and link keys derive: HKDF-SHA256 over the run
    seed's decimal digits, salt ``p2pfed-run-identity-v1``, info the peer id (so a peer's seed
    tells nothing about another's). Reproducible by design: see the module's caveat."""
    if run_seed < 0 or peer < 0:
        raise ValueError("run seed and peer id must be non-negative")
    return HKDF(
        str(run_seed).encode(),
        32,
        b"p2pfed-run-identity-v1",
        SHA256,
        context=struct.pack(">I", peer),
    )


class KeyDirectory:
    """Identity keys bound to peer ids, and signed link-key adverts per (peer, epoch).

    :meth:`advert` returns only adverts whose signature checks out against the peer's
    registered identity key (cached once verified); anything else raises
    :class:`SealError`. See the module docstring for the adverts it materialises.
    """

    def __init__(
        self,
        identity_keys: Mapping[int, bytes],
        posted: Mapping[int, Identity] | None = None,
    ):
        """``identity_keys``: raw Ed25519 public key per peer; ``posted``: the identities
        whose adverts count as posted for every epoch (materialised on lookup)."""
        self._identity_keys = dict(identity_keys)
        self._posted = dict(posted or {})
        self._published: dict[tuple[int, int], KeyAdvert] = {}
        self._verified: dict[tuple[int, int], KeyAdvert] = {}

    @classmethod
    def from_seed(cls, num_participants: int, run_seed: int) -> KeyDirectory:
        """Every participant's identity from the run seed (:func:`identity_seed`)."""
        posted = {
            p: Identity.from_seed(p, identity_seed(run_seed, p)) for p in range(num_participants)
        }
        return cls({p: ident.public for p, ident in posted.items()}, posted)

    def identity_key(self, peer: int) -> bytes:
        try:
            return self._identity_keys[peer]
        except KeyError:
            raise SealError(f"no identity key registered for peer {peer}") from None

    def publish(self, advert: KeyAdvert) -> None:
        """Post ``advert`` for its (peer, epoch); it replaces what was there and is checked
        on its first lookup, like any other."""
        key = (advert.peer, advert.epoch)
        self._published[key] = advert
        self._verified.pop(key, None)

    def advert(self, peer: int, epoch: int) -> KeyAdvert:
        """``peer``'s verified advert for ``epoch``, or :class:`SealError` with the reason."""
        key = (peer, epoch)
        found = self._verified.get(key)
        if found is not None:
            return found
        identity_key = self.identity_key(peer)
        advert = self._published.get(key)
        if advert is None:
            posted = self._posted.get(peer)
            if posted is None:
                raise SealError(f"peer {peer} has posted no key advert for epoch {epoch}")
            advert = posted.advert(epoch)
            posted._link.pop(epoch, None)  # the advert is public; its private key not needed
        if (advert.peer, advert.epoch) != key:
            raise SealError("key advert names another peer or epoch")
        advert.verify(identity_key)  # SealError("key advert signature invalid")
        self._verified[key] = advert
        return advert

    def forget_before(self, epoch: int) -> None:
        """Drop verified adverts of epochs before ``epoch`` (a later lookup verifies again)."""
        for key in [k for k in self._verified if k[1] < epoch]:
            del self._verified[key]


class LinkGuard:
    """Seals and opens the frames of one engine's local peers (see the module docstring).

    Counters: ``sealed`` and ``opened`` frames, and ``rejected`` by reason (frames refused at
    opening, and sends refused because the receiver's advert was).
    """

    def __init__(
        self,
        identities: Iterable[Identity],
        directory: KeyDirectory,
        rotate_every: float | None = None,
    ):
        if rotate_every is not None and not rotate_every > 0:
            raise ValueError("rotate_every must be positive (or None: one epoch)")
        self.identities = {i.peer: i for i in identities}
        self.directory = directory
        self.rotate_every = rotate_every
        self.sealed = 0
        self.opened = 0
        self.rejected: Counter[str] = Counter()
        self._sealers: dict[tuple[int, int, int], Sealer] = {}  # (src, dst, epoch)
        self._openers: dict[tuple[int, int, int], Opener] = {}
        self._current = dict.fromkeys(self.identities, 0)  # each local peer's latest epoch
        self._horizon = 0  # the latest epoch any local peer reached

    @property
    def local(self) -> frozenset[int]:
        return frozenset(self.identities)

    def held_epochs(self, peer: int) -> set[int]:
        """Epochs for which ``peer`` still holds a sealer, an opener or a link private key."""
        held = {e for (src, _, e) in self._sealers if src == peer}
        held |= {e for (_, dst, e) in self._openers if dst == peer}
        return held | set(self._identity(peer)._link)

    def epoch(self, t: float) -> int:
        """The key epoch at time ``t``."""
        if self.rotate_every is None:
            return 0
        return max(0, math.floor(t / self.rotate_every))

    def seal(self, src: int, dst: int, kind: str, t: float, plaintext: bytes) -> bytes:
        """Seal ``plaintext`` (a message of type ``kind``) from local peer ``src`` to ``dst``
        at time ``t``: ``len(kind) || kind || header || ciphertext || tag``."""
        name = kind.encode("ascii")
        if not 0 < len(name) < 256:
            raise ValueError(f"message type name {kind!r} cannot be sealed")
        try:
            identity = self._identity(src)
            epoch = self._advance(src, t)
            sealer = self._sealers.get((src, dst, epoch))
            if sealer is None:
                advert = self.directory.advert(dst, epoch)
                sealer = Sealer(link_key(identity, advert, src, dst), src, dst, epoch)
                self._sealers[(src, dst, epoch)] = sealer
            frame = sealer.seal(kind, plaintext)
        except SealError as exc:
            self.rejected[exc.reason] += 1
            raise
        self.sealed += 1
        return bytes([len(name)]) + name + frame

    def open(self, src: int, dst: int, t: float, frame: bytes) -> tuple[str, bytes]:
        """Open a frame that arrived at local peer ``dst`` from ``src`` at time ``t``: its
        message type and plaintext, or :class:`SealError` (nothing is accepted then)."""
        try:
            opened = self._open(src, dst, t, frame)
        except SealError as exc:
            self.rejected[exc.reason] += 1
            raise
        self.opened += 1
        return opened

    def _open(self, src: int, dst: int, t: float, frame: bytes) -> tuple[str, bytes]:
        identity = self._identity(dst)
        if not frame or len(frame) < 1 + frame[0] + _HEADER.size + TAG_BYTES:
            raise SealError("sealed frame too short")
        try:
            kind = frame[1 : 1 + frame[0]].decode("ascii")
        except UnicodeDecodeError:
            raise SealError("malformed sealed frame") from None
        sealed = frame[1 + frame[0] :]
        version, sender, receiver, epoch, _ = _HEADER.unpack_from(sealed)
        if version != VERSION:
            raise SealError(f"unknown seal version {version}")
        if (sender, receiver) != (src, dst):
            raise SealError("sealed for another link")
        current = self._advance(dst, t)
        if epoch < current - 1:
            raise SealError("epoch expired")
        if epoch > current + 1:
            raise SealError("epoch not yet begun")
        opener = self._openers.get((src, dst, epoch))
        if opener is None:
            advert = self.directory.advert(src, epoch)
            opener = Opener(link_key(identity, advert, src, dst), src, dst, epoch)
            self._openers[(src, dst, epoch)] = opener
        return kind, opener.open(kind, sealed)

    def _identity(self, peer: int) -> Identity:
        try:
            return self.identities[peer]
        except KeyError:
            raise ValueError(f"peer {peer} is not local to this LinkGuard") from None

    def _advance(self, peer: int, t: float) -> int:
        """``peer``'s epoch at ``t`` (never earlier than one it reached before); on reaching
        a new one, forget what belongs to epochs before the previous one."""
        epoch = self.epoch(t)
        if epoch <= self._current[peer]:
            return self._current[peer]
        self._current[peer] = epoch
        if epoch > self._horizon:
            self._horizon = epoch
            self._forget_before(epoch - 1)
        return epoch

    def _forget_before(self, keep: int) -> None:
        """Forget every key of an epoch before ``keep``, for all local peers at once (once
        per epoch, not once per peer: a sweep per peer made rotation quadratic in peers).
        Safe for sealers too: this engine's time only moves forward, so no local peer will
        seal in an epoch before the latest one reached, and a sealer is never rebuilt (its
        counter would restart and repeat nonces)."""
        for k in [k for k in self._sealers if k[2] < keep]:
            del self._sealers[k]
        for k in [k for k in self._openers if k[2] < keep]:
            del self._openers[k]
        for identity in self.identities.values():
            private = identity._link  # the X25519 private keys by epoch
            for e in [e for e in private if e < keep]:
                del private[e]
        self.directory.forget_before(keep)


def link_guard(
    security: SecurityConfig, run_seed: int, num_participants: int, local: Iterable[int]
) -> LinkGuard | None:
    """The guard for an engine carrying peers ``local``, or ``None`` when links are plain.

    Every engine of a run builds the same directory from the run seed, so hosts agree on
    every key without exchanging any."""
    if security.channel != "aead":
        return None
    ids = sorted(set(local))
    if any(not 0 <= i < num_participants for i in ids):
        raise ValueError(f"local peers must lie in 0..{num_participants - 1}")
    directory = KeyDirectory.from_seed(num_participants, run_seed)
    identities = [Identity.from_seed(i, identity_seed(run_seed, i)) for i in ids]
    rotate = None if security.rotate_every is None else float(security.rotate_every)
    return LinkGuard(identities, directory, rotate)


__all__ = ["SEAL_OVERHEAD", "KeyDirectory", "LinkGuard", "identity_seed", "link_guard"]
