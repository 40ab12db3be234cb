"""The coordinator's directory: which host carries each peer, and each peer's public keys.

The registry answers "where does peer i live" (host index, node); the key directory binds a
peer's public keys (an identity key, link keys, a secure-aggregation key) to its id, so the
secure-channel and secure-aggregation protocols can look a key up instead of trusting
whatever a frame claims.

Threat model: the directory is an honest-but-curious bulletin board run by the coordinator.
It holds public values only (never a secret key). It fails closed: a key, once published for
a (peer, purpose), can only be replaced by a publication for a strictly later epoch, so a
second publisher cannot silently swap a victim's key at the same epoch; a lookup of a key that
was never published raises instead of returning a default. Whether a publication really came
from the peer it names is the channel layer's job (signed adverts), not the directory's.
"""

from __future__ import annotations

from dataclasses import dataclass

from p2pfed.errors import ProtocolError


@dataclass(frozen=True)
class Placement:
    """Where a peer is hosted."""

    host: int
    node: str | None


@dataclass(frozen=True)
class PublishedKey:
    """A public key bound to a peer, a purpose and an epoch."""

    peer: int
    purpose: str
    epoch: int
    key: bytes


class Directory:
    """Peer registry and public-key directory (see the module docstring)."""

    def __init__(self) -> None:
        self._placement: dict[int, Placement] = {}
        self._keys: dict[tuple[int, str], PublishedKey] = {}

    # --- registry --------------------------------------------------------------------------

    def register(self, peer: int, host: int, node: str | None = None) -> None:
        if peer < 0 or host < 0:
            raise ProtocolError(f"cannot register peer {peer} on host {host}")
        self._placement[peer] = Placement(host, node)

    def placement(self, peer: int) -> Placement:
        try:
            return self._placement[peer]
        except KeyError:
            raise ProtocolError(f"peer {peer} is not registered") from None

    def peers(self) -> list[int]:
        return sorted(self._placement)

    def unregister_host(self, host: int) -> list[int]:
        """Forget the peers of a host that died; returns them."""
        gone = sorted(p for p, where in self._placement.items() if where.host == host)
        for p in gone:
            del self._placement[p]
        return gone

    # --- keys --------------------------------------------------------------------------------

    def publish(self, peer: int, purpose: str, key: bytes, epoch: int = 0) -> None:
        """Bind ``key`` to (``peer``, ``purpose``) from ``epoch`` on."""
        if peer not in self._placement:
            raise ProtocolError(f"peer {peer} is not registered; it cannot publish keys")
        if not purpose or not key:
            raise ProtocolError("a published key needs a purpose and non-empty bytes")
        if epoch < 0:
            raise ProtocolError(f"epoch must be >= 0, got {epoch}")
        current = self._keys.get((peer, purpose))
        if current is not None and epoch <= current.epoch:
            if current.epoch == epoch and current.key == key:
                return  # the same publication again: idempotent
            raise ProtocolError(
                f"peer {peer} already has a {purpose} key for epoch {current.epoch}; "
                "a new key needs a later epoch"
            )
        self._keys[(peer, purpose)] = PublishedKey(peer, purpose, epoch, bytes(key))

    def lookup(self, peer: int, purpose: str) -> PublishedKey:
        try:
            return self._keys[(peer, purpose)]
        except KeyError:
            raise ProtocolError(f"peer {peer} has published no {purpose} key") from None

    def keys(self, purpose: str) -> dict[int, PublishedKey]:
        """Every peer's current key for ``purpose``."""
        return {p: k for (p, what), k in self._keys.items() if what == purpose}
