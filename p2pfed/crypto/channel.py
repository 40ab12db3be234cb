"""Sealed links: peer identities, signed key adverts, per-link AEAD with replay protection.

Threat model. A network adversary (a tap on any link, or a relaying peer) may read, drop,
reorder, replay, modify or inject frames, and may publish key adverts of its own. It does not
hold an honest peer's private keys. Under that model a sealed frame's payload stays secret
from everyone but its receiver, and the receiver accepts a frame only if it was sealed by the
claimed sender for exactly this receiver, epoch, message type and counter, and has not been
accepted before. It does *not* hide who talks to whom, when, or how much (sizes, timing), and
it does not protect a peer from the receiver (that is the job of masking, sharing and HE).
Simulation caveat: :meth:`Identity.from_seed` derives keys from the run seed so runs are
reproducible; anyone who knows the seed knows every key. Use :meth:`Identity.generate` (the
OS's randomness) where that matters.

Construction (primitives from pycryptodome, nothing hand-made):

* identity: an Ed25519 key (RFC 8032) per peer; link key: an X25519 key per peer and epoch,
  published as a :class:`KeyAdvert` signed by the identity key over (peer, epoch, link key);
* link keys: X25519 shared secret -> HKDF-SHA256, salt ``p2pfed-link-v1``, info binding the
  protocol version, sender, receiver and epoch — one 128-bit key per direction, so the two
  directions never share a (key, nonce) pair;
* frames: AES-128-GCM; nonce = the sender's per-key frame counter (96-bit big-endian, never
  reused: a counter at its limit refuses to seal, rotate the epoch instead); associated data =
  version, sender, receiver, epoch, counter and message type, so a header changed in transit
  fails the tag;
* replay: the receiver keeps the highest counter seen and a bitmap of the last
  :data:`REPLAY_WINDOW` counters up to it (RFC 4303 section 3.4.3, as IPsec): a repeated
  counter, or one older than the window, is refused. The window lets frames that overtook
  each other (random latency) still be accepted once; as a bitmap it costs ~150 bytes a link
  however long the run (a set of counters grew to ~180 KiB a link).

Everything that fails raises :class:`SealError` with a short, secret-free ``reason`` for the
metrics and the event log. Pure: no Ray, no clock; randomness only as passed in.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from Crypto.Cipher import AES
from Crypto.Hash import SHA256
from Crypto.Protocol.DH import import_x25519_public_key, key_agreement
from Crypto.Protocol.KDF import HKDF
from Crypto.PublicKey import ECC
from Crypto.Signature import eddsa

from p2pfed.errors import P2PFedError

VERSION = 1
REPLAY_WINDOW = 1024
KEY_BYTES = 16  # AES-128
TAG_BYTES = 16
MAX_COUNTER = 2**64 - 1  # nonces are 96-bit; counters stop well before
_HEADER = struct.Struct(">BIIIQ")  # version, sender, receiver, epoch, counter
_ADVERT = struct.Struct(">BII")  # version, peer, epoch
_WINDOW_MASK = (1 << REPLAY_WINDOW) - 1


class SealError(P2PFedError, ValueError):
    """A frame or advert refused; ``reason`` is short and safe to log."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class KeyAdvert:
    """A peer's X25519 link key for one epoch, signed with its Ed25519 identity key."""

    peer: int
    epoch: int
    link_key: bytes  # raw X25519 public key (32 bytes)
    signature: bytes  # Ed25519 over (version, peer, epoch, link_key)

    def signed_bytes(self) -> bytes:
        return _ADVERT.pack(VERSION, self.peer, self.epoch) + self.link_key

    def verify(self, identity_key: bytes) -> None:
        """Raise :class:`SealError` unless the advert is signed by ``identity_key`` (raw
        Ed25519 public key)."""
        try:
            public = eddsa.import_public_key(identity_key)
            eddsa.new(public, "rfc8032").verify(self.signed_bytes(), self.signature)
        except ValueError:
            raise SealError("key advert signature invalid") from None


@dataclass
class Identity:
    """One peer's long-term identity key and its per-epoch link keys."""

    peer: int
    signing: ECC.EccKey = field(repr=False)  # never in a log line
    _link: dict[int, ECC.EccKey] = field(default_factory=dict, repr=False)
    _seed: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_seed(cls, peer: int, seed: bytes) -> Identity:
        """Keys derived from ``seed`` (reproducible runs; see the module's caveat)."""
        if len(seed) < 16:
            raise ValueError("an identity seed needs at least 16 bytes")
        sk = HKDF(seed, 32, b"p2pfed-identity-v1", SHA256, context=struct.pack(">I", peer))
        return cls(peer, ECC.construct(curve="Ed25519", seed=sk), _seed=seed)

    @classmethod
    def generate(cls, peer: int) -> Identity:
        return cls(peer, ECC.generate(curve="Ed25519"))

    @property
    def public(self) -> bytes:
        """The raw Ed25519 public key (what the directory binds to the peer)."""
        return self.signing.public_key().export_key(format="raw")

    def link_key(self, epoch: int) -> ECC.EccKey:
        key = self._link.get(epoch)
        if key is None:
            if self._seed is not None:
                raw = HKDF(
                    self._seed,
                    32,
                    b"p2pfed-link-key-v1",
                    SHA256,
                    context=struct.pack(">II", self.peer, epoch),
                )
                key = ECC.construct(curve="Curve25519", seed=raw)
            else:
                key = ECC.generate(curve="Curve25519")
            self._link[epoch] = key
        return key

    def advert(self, epoch: int) -> KeyAdvert:
        link = self.link_key(epoch).public_key().export_key(format="raw")
        unsigned = KeyAdvert(self.peer, epoch, link, b"")
        signature = eddsa.new(self.signing, "rfc8032").sign(unsigned.signed_bytes())
        return KeyAdvert(self.peer, epoch, link, signature)


def link_key(identity: Identity, peer_advert: KeyAdvert, src: int, dst: int) -> bytes:
    """The AES key for frames from ``src`` to ``dst`` in the advert's epoch, computed by
    either end (``identity`` is one of the two, ``peer_advert`` the other's, verified)."""
    if {identity.peer, peer_advert.peer} != {src, dst} or src == dst:
        raise ValueError("a link key joins the identity's peer and the advert's peer")
    try:
        theirs = import_x25519_public_key(peer_advert.link_key)
    except ValueError:
        raise SealError("key advert holds no valid X25519 key") from None
    info = _HEADER.pack(VERSION, src, dst, peer_advert.epoch, 0)[:-8]

    def kdf(secret: bytes) -> bytes:
        return HKDF(secret, KEY_BYTES, b"p2pfed-link-v1", SHA256, context=info)

    return key_agreement(
        static_priv=identity.link_key(peer_advert.epoch), static_pub=theirs, kdf=kdf
    )


@dataclass
class Sealer:
    """The sending end of one directed link in one epoch."""

    key: bytes = field(repr=False)
    src: int
    dst: int
    epoch: int
    counter: int = 0

    def seal(self, kind: str, plaintext: bytes) -> bytes:
        """``header || ciphertext || tag``; the counter advances by one per frame."""
        if self.counter >= MAX_COUNTER:
            raise SealError("link counter exhausted: rotate the epoch")
        header = _HEADER.pack(VERSION, self.src, self.dst, self.epoch, self.counter)
        cipher = AES.new(self.key, AES.MODE_GCM, nonce=_nonce(self.counter), mac_len=TAG_BYTES)
        cipher.update(header + kind.encode())
        body, tag = cipher.encrypt_and_digest(plaintext)
        self.counter += 1
        return header + body + tag


@dataclass
class Opener:
    """The receiving end of one directed link in one epoch, with its replay window."""

    key: bytes = field(repr=False)
    src: int
    dst: int
    epoch: int
    highest: int = -1
    _window: int = field(default=0, repr=False)  # bit i set: counter highest - i accepted

    def open(self, kind: str, frame: bytes) -> bytes:
        """The plaintext, or :class:`SealError` (nothing about the receiver changes then)."""
        if len(frame) < _HEADER.size + TAG_BYTES:
            raise SealError("sealed frame too short")
        version, src, dst, epoch, counter = _HEADER.unpack_from(frame)
        if version != VERSION:
            raise SealError(f"unknown seal version {version}")
        if (src, dst) != (self.src, self.dst):
            raise SealError("sealed for another link")
        if epoch != self.epoch:
            raise SealError("sealed in another epoch")
        age = self.highest - counter  # < 0: ahead of every counter accepted so far
        if age >= REPLAY_WINDOW or (age >= 0 and (self._window >> age) & 1):
            raise SealError("replayed or too old")
        header, body, tag = (
            frame[: _HEADER.size],
            frame[_HEADER.size : -TAG_BYTES],
            frame[-TAG_BYTES:],
        )
        cipher = AES.new(self.key, AES.MODE_GCM, nonce=_nonce(counter), mac_len=TAG_BYTES)
        cipher.update(header + kind.encode())
        try:
            plaintext = cipher.decrypt_and_verify(body, tag)
        except ValueError:
            raise SealError("authentication failed") from None
        self._accept(counter)
        return plaintext

    def _accept(self, counter: int) -> None:
        shift = counter - self.highest
        if shift <= 0:
            self._window |= 1 << -shift
        else:  # slide the window up to the new highest (never shift by a huge jump)
            window = self._window << shift if shift < REPLAY_WINDOW else 0
            self._window = (window | 1) & _WINDOW_MASK
            self.highest = counter


def _nonce(counter: int) -> bytes:
    return counter.to_bytes(12, "big")
