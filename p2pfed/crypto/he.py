"""What the homomorphic-encryption schemes share: their error type and the scheme names.

Two schemes live beside this module: packed Paillier (:mod:`p2pfed.crypto.paillier`; exact
integer sums of quantised values, optional threshold decryption) and CKKS through TenSEAL
(:mod:`p2pfed.crypto.ckks`; approximate real arithmetic on thousands of slots per
ciphertext, for models too large for Paillier). In both, the party that adds ciphertexts
(the coordinator, or a relay peer) holds only public material.

Pure: no Ray, no clock.
"""

from __future__ import annotations

from typing import Literal

from p2pfed.errors import P2PFedError

Scheme = Literal["paillier", "ckks"]
KeyMode = Literal["group", "threshold"]


class HEError(P2PFedError, ValueError):
    """A homomorphic-encryption step refused: a ciphertext under another key, too few
    partial decryptions, a party without the secret key asked to decrypt, a malformed
    serialised ciphertext. The message never carries key material or plaintext."""
