"""Ring randomness and additive secret sharing over Z_2^32 / Z_2^64.

Threat model. Shares and masks must look uniformly random to anyone who lacks the seed that
made them, so they come from a cryptographic PRG — AES-128 in CTR mode keyed by a 16-byte
seed (the mask PRG of Bonawitz et al., CCS 2017; measured here ~2.3 GB/s) — never from numpy's
generators, which are predictable from their output. :func:`expand` is deterministic in its
seed, so two peers that agreed on a seed (ECDH, :mod:`p2pfed.crypto.channel`) expand the same
mask, and a seeded run is reproducible. Simulation caveat as in the channel module: seeds
derived from the run seed are known to anyone who knows the run seed.

Additive sharing: ``x`` is split into ``k`` shares, ``k - 1`` of them PRG output and the last
``x`` minus their sum, all in the ring. Any ``k - 1`` shares are jointly uniform and
independent of ``x``; all ``k`` add up to ``x`` exactly (wrapping uint arithmetic). There is
no threshold: losing one share loses the secret (dropout recovery is secagg's Shamir part).

Pure: numpy and pycryptodome, no Ray, no clock.
"""

from __future__ import annotations

import numpy as np
from Crypto.Cipher import AES

SEED_BYTES = 16


def expand(seed: bytes, n: int, dtype: type[np.unsignedinteger] = np.uint32) -> np.ndarray:
    """``n`` uniform ring elements from a 16-byte ``seed`` (AES-128-CTR keystream)."""
    if len(seed) != SEED_BYTES:
        raise ValueError(f"a PRG seed is {SEED_BYTES} bytes, got {len(seed)}")
    if n < 0:
        raise ValueError(f"cannot expand to {n} elements")
    width = np.dtype(dtype).itemsize
    if np.dtype(dtype).kind != "u":
        raise ValueError(f"ring elements are unsigned integers, got {np.dtype(dtype).name}")
    cipher = AES.new(seed, AES.MODE_CTR, nonce=b"", initial_value=0)
    stream = bytearray(n * width)
    cipher.encrypt(stream, output=stream)  # the keystream itself, in place
    little = np.frombuffer(stream, dtype=np.dtype(dtype).newbyteorder("<"))
    return little.astype(dtype, copy=False)  # a view on little-endian machines


def share(x: np.ndarray, seeds: list[bytes]) -> list[np.ndarray]:
    """Split ring vector ``x`` into ``len(seeds) + 1`` additive shares: one expanded from
    each seed, and the rest."""
    arr = np.asarray(x)
    if arr.dtype.kind != "u":
        raise ValueError(f"shares live in a ring of unsigned integers, got {arr.dtype}")
    masks = [expand(s, arr.size, arr.dtype.type).reshape(arr.shape) for s in seeds]
    last = arr.copy()
    for m in masks:
        last -= m  # wraps: ring subtraction
    return [*masks, last]


def reconstruct(shares: list[np.ndarray]) -> np.ndarray:
    """The ring sum of all shares (of one secret, or of many: sums of shares are shares of
    sums)."""
    if not shares:
        raise ValueError("nothing to reconstruct")
    total = np.array(shares[0], copy=True)
    for s in shares[1:]:
        if s.dtype != total.dtype or s.shape != total.shape:
            raise ValueError("shares differ in ring or shape")
        total += s
    return total
