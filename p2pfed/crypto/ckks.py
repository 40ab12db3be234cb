"""CKKS: approximate homomorphic arithmetic on real vectors, through TenSEAL, for models too
large for packed Paillier.

Scheme. CKKS (Cheon, Kim, Kim and Song, "Homomorphic encryption for arithmetic of
approximate numbers", ASIACRYPT 2017) as implemented by Microsoft SEAL and wrapped by TenSEAL
(Benaissa et al., "TenSEAL: a library for encrypted tensor operations using homomorphic
encryption", ICLR 2021 workshop on distributed and private machine learning,
arXiv:2104.03152). A ciphertext holds ``poly_modulus_degree / 2`` real slots (4096 with the
defaults); a vector of any length is split into ``ceil(length / slots)`` ciphertexts. Values
are encoded at scale ``2**global_scale_bits``. Adding ciphertexts adds slot by slot and costs
nothing; multiplying by a plain real scalar (:meth:`CkksVector.scale`) costs one level: the
product is rescaled by the last inner prime ``q`` of the ciphertext's modulus chain. TenSEAL
then labels the result's scale ``2**global_scale_bits`` although ``q`` is only close to a
power of two (``2**40 / q - 1`` is 1.3e-7 and 6.7e-7 for the default primes), which would
bias every weighted sum by that much; :meth:`CkksVector.scale` therefore multiplies by
``w * q / 2**global_scale_bits`` instead of ``w``, so the label is right. The primes are
SEAL's own (``CoeffModulus.Create``), checked against the context they are used with. A
fresh ciphertext takes ``len(coeff_mod_bit_sizes) - 2`` plain multiplications (2 with the
defaults); one more is refused with :class:`~p2pfed.crypto.he.HEError`.

Precision and range. A decryption is off by the encoding and encryption noise, absolute and
whatever the values: with the defaults a standard deviation of about 1.2e-9 per value (the
largest of 10^5 about 1.2e-8), for a fresh or weighted ciphertext; a sum carries the noise
of all its summands. Relative to ``max|x|`` it is small only when ``max|x|`` is not. Every
value, and every sum or weighted sum decrypted, must stay within ``max_magnitude =
2**(coeff_mod_bit_sizes[0] - global_scale_bits - 2)`` (2**18 with the defaults):
:meth:`CkksKeys.encrypt` refuses larger inputs, but an aggregate that grows past the bound
cannot be detected by anyone before decryption, and decrypts to garbage.

Sizes (defaults, measured). A fresh ciphertext of 4096 values serialises to about 331 kB, 81
bytes per value; each :meth:`CkksVector.scale` drops a prime, leaving about 71% and then
40% of that. The public context (public key, no relinearisation or Galois keys: nothing
here multiplies two ciphertexts or rotates) is about 465 kB; the full secret context about
697 kB. The public key is kept because TenSEAL answers a multiplication by zero (weight 0,
or one that rounds to 0) with a fresh encryption of zero. The default parameters (N = 8192,
200 coefficient bits) are within the 218 bits that the HomomorphicEncryption.org standard
allows for 128-bit security at that degree; :class:`CkksParams` refuses more than the
standard's bound for any degree.

Threat model. ``group`` key mode only: every peer holds the secret key (agreed at setup) and
the aggregator (the coordinator, or a relay peer) only the public context, which can add and
weight ciphertexts but not decrypt (it has no decrypt method, and its TenSEAL context holds
no secret key). Consequences: any peer that sees another peer's ciphertext can decrypt it,
so the aggregator must never forward an individual ciphertext to a peer, only aggregates;
and decryption results leak information about the secret key (Li and Micciancio, "On the
security of homomorphic encryption on approximate numbers", EUROCRYPT 2021: CKKS is not
IND-CPA-D secure), so peers must not publish raw decryptions to parties that hold the
ciphertexts (the aggregator included); round or noise them first, or publish only what the
protocol needs. There is no threshold mode (TenSEAL has no threshold decryption):
``key_mode`` other than ``"group"`` is refused. Key ids are labels that catch mistakes (a
ciphertext under another key), not authentication: a malicious peer can label anything.

Not reproducible. TenSEAL draws key and encryption randomness from SEAL's own PRNG, seeded
from the operating system; there is no hook to seed it. Keys and ciphertexts therefore differ
from run to run even with the same run seed, and so do decrypted values, at the noise level
(about 1e-9, i.e. ~1e-9 relative to values of order one). Code that needs bit-for-bit
reproducible runs must not branch on decrypted CKKS values at that precision.

Pure: numpy, msgpack and TenSEAL (imported on first use, so :class:`CkksParams` works
without it); no Ray, no clock; randomness from SEAL's OS-seeded PRNG, not from the run seed.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

import msgpack
import numpy as np

from p2pfed.crypto.he import HEError, KeyMode

# HomomorphicEncryption.org standard (Albrecht et al., 2018), 128-bit classical security,
# ternary secret: the most coefficient-modulus bits per degree (SEAL's MaxBitCount(tc128)).
MAX_COEFF_BITS_128 = {4096: 109, 8192: 218, 16384: 438, 32768: 881}
MAX_PRIME_BITS = 60  # SEAL's limit on one coefficient prime
MIN_SCALE_BITS = 20  # below this the encoding error (~sqrt(N) / 2**scale) swamps updates
_BLOB_KEYS = {"v", "key", "n", "ct"}
_BLOB_VERSION = 1
_WORD = 2**64


@functools.cache
def _tenseal() -> Any:
    """The TenSEAL module, imported on first use."""
    try:
        return importlib.import_module("tenseal")
    except ImportError:
        raise HEError("CKKS needs TenSEAL: pip install 'p2pfed[he]'") from None


@functools.cache
def _seal_primes(degree: int, bit_sizes: tuple[int, ...]) -> tuple[int, ...]:
    """The coefficient primes SEAL picks for ``degree`` and ``bit_sizes``."""
    _tenseal()
    sealapi = importlib.import_module("tenseal.sealapi")
    try:
        moduli = sealapi.CoeffModulus.Create(degree, list(bit_sizes))
    except (ValueError, RuntimeError) as exc:
        raise HEError(f"SEAL cannot pick coefficient primes: {exc}") from None
    return tuple(int(m.value()) for m in moduli)


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class CkksParams:
    """CKKS parameters: ring degree, coefficient-modulus primes (bit sizes, first the data
    prime that bounds the result, then the inner primes dropped one per multiplication, last
    the special key-switching prime) and the encoding scale."""

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 40, 40, 60)
    global_scale_bits: int = 40

    def __post_init__(self) -> None:
        n, bits, s = self.poly_modulus_degree, self.coeff_mod_bit_sizes, self.global_scale_bits
        if not _is_int(n) or n not in MAX_COEFF_BITS_128:
            raise HEError(f"poly_modulus_degree must be a power of two in 4096..32768, got {n!r}")
        if not isinstance(bits, tuple) or not all(_is_int(b) for b in bits):
            raise HEError(f"coeff_mod_bit_sizes must be a tuple of ints, got {bits!r}")
        if len(bits) < 2:
            raise HEError("coeff_mod_bit_sizes needs a data prime and a special prime at least")
        if not all(1 <= b <= MAX_PRIME_BITS for b in bits):
            raise HEError(f"each coefficient prime has 1..{MAX_PRIME_BITS} bits, got {bits}")
        if sum(bits) > MAX_COEFF_BITS_128[n]:
            raise HEError(
                f"{sum(bits)} coefficient bits exceed the {MAX_COEFF_BITS_128[n]} allowed for "
                f"128-bit security at degree {n}"
            )
        if bits[-1] < max(bits[:-1]):
            raise HEError(
                f"the special (last) prime, {bits[-1]} bits, must be at least as large as "
                f"every other, {max(bits[:-1])} bits"
            )
        if not _is_int(s) or not MIN_SCALE_BITS <= s <= MAX_PRIME_BITS:
            raise HEError(f"global_scale_bits must be in {MIN_SCALE_BITS}..60, got {s!r}")
        inner = bits[1:-1]
        if inner and s > min(inner):
            raise HEError(
                f"global_scale_bits {s} exceeds the smallest inner prime, {min(inner)} bits: "
                "rescaling could not bring the scale back down"
            )
        if bits[0] < s + 2:
            raise HEError(
                f"the first prime, {bits[0]} bits, leaves no room above the {s}-bit scale: "
                "it must have at least global_scale_bits + 2 bits"
            )

    @property
    def slots(self) -> int:
        """Real values per ciphertext."""
        return self.poly_modulus_degree // 2

    @property
    def max_depth(self) -> int:
        """Plain multiplications a fresh ciphertext can take."""
        return len(self.coeff_mod_bit_sizes) - 2

    @property
    def max_magnitude(self) -> float:
        """The largest ``|value|`` that encrypts, sums and decrypts faithfully."""
        return 2.0 ** (self.coeff_mod_bit_sizes[0] - self.global_scale_bits - 2)

    def ciphertexts(self, length: int) -> int:
        """Ciphertexts that carry a vector of ``length`` values."""
        return -(-length // self.slots)


def _context_primes(ctx: Any) -> tuple[int, ...]:
    """All coefficient primes of a TenSEAL context, data primes first, special prime last,
    read from its modulus chain: TenSEAL's binding of ``total_coeff_modulus`` gives only
    the low 64-bit word of each level's product, and
    ``q_i = low(q_0 ... q_i) * low(q_0 ... q_(i-1))^-1 mod 2**64`` (every prime is odd and
    below 2**61)."""
    lows: list[int] = []
    data = ctx.seal_context().data.key_context_data()
    while data is not None:
        lows.append(int(data.total_coeff_modulus()) % _WORD)
        data = data.next_context_data()
    lows.reverse()  # chain index 0 (the first prime alone) first
    primes = [lows[0]]
    for prev, cur in itertools.pairwise(lows):
        primes.append(cur * pow(prev, -1, _WORD) % _WORD)
    return tuple(primes)


class _Ckks:
    """A TenSEAL CKKS context with its parameters, primes and key id; what loading, adding
    and weighting need. Shared by :class:`CkksKeys` and :class:`CkksPublic`."""

    def __init__(self, ctx: Any) -> None:
        ts = _tenseal()
        try:
            parms = ctx.seal_context().data.key_context_data().parms()
            ckks = parms.scheme() == ts._ts_cpp.SCHEME_TYPE.CKKS
            degree = int(parms.poly_modulus_degree())
            primes = _context_primes(ctx)
            scale = float(ctx.global_scale) if ckks else 0.0
        except (ValueError, RuntimeError, TypeError, AttributeError) as exc:
            raise HEError(f"unusable CKKS context: {type(exc).__name__}") from None
        if not ckks:
            raise HEError("not a CKKS context")
        scale_bits = round(math.log2(scale)) if scale > 0 else 0
        if scale != 2.0**scale_bits:
            raise HEError("the context's global scale is not a power of two")
        self.params = CkksParams(degree, tuple(q.bit_length() for q in primes), scale_bits)
        if _seal_primes(degree, self.params.coeff_mod_bit_sizes) != primes:
            raise HEError("the context's primes are not SEAL's CoeffModulus.Create choice")
        if not ctx.auto_rescale:
            ctx.auto_rescale = True
        ctx.auto_mod_switch = True
        self.ctx = ctx
        self.primes = primes
        self.scale = scale
        self.key_id = hashlib.sha256(b"p2pfed-ckks-v1" + self.public_bytes()).digest()[:8]

    def public_bytes(self) -> bytes:
        return bytes(
            self.ctx.serialize(
                save_public_key=True,
                save_secret_key=False,
                save_galois_keys=False,
                save_relin_keys=False,
            )
        )

    def load(self, blob: bytes) -> CkksVector:
        """Parse and check a serialised vector; anything malformed raises HEError."""
        ts = _tenseal()
        try:
            obj = msgpack.unpackb(blob, raw=False, strict_map_key=True)
        except (ValueError, msgpack.exceptions.ExtraData, TypeError) as exc:
            raise HEError(f"malformed encrypted vector: {type(exc).__name__}") from None
        if not isinstance(obj, dict) or set(obj) != _BLOB_KEYS or obj["v"] != _BLOB_VERSION:
            raise HEError("malformed encrypted vector: bad envelope")
        key, length, cts = obj["key"], obj["n"], obj["ct"]
        if not isinstance(key, bytes) or not _is_int(length) or not isinstance(cts, list):
            raise HEError("malformed encrypted vector: bad field types")
        if key != self.key_id:
            raise HEError("encrypted vector under another key")
        if length < 1 or len(cts) != self.params.ciphertexts(length):
            raise HEError("encrypted vector has the wrong number of ciphertexts")
        chunks = []
        for ct in cts:
            if not isinstance(ct, bytes):
                raise HEError("malformed encrypted vector: a ciphertext is not bytes")
            try:
                chunks.append(ts.ckks_vector_from(self.ctx, ct))
            except (ValueError, RuntimeError, TypeError) as exc:
                raise HEError(f"malformed ciphertext: {type(exc).__name__}") from None
        vec = CkksVector(self, tuple(chunks), length)
        vec._check()
        vec._blob = bytes(blob)
        return vec

    def sizes(self, length: int) -> list[int]:
        slots = self.params.slots
        return [min(slots, length - i) for i in range(0, length, slots)]


class CkksVector:
    """An encrypted real vector: ``ceil(length / slots)`` TenSEAL CKKS vectors under one key.

    Immutable: :meth:`__add__` and :meth:`scale` return new vectors."""

    __slots__ = ("_blob", "_ckks", "chunks", "length")

    def __init__(self, ckks: _Ckks, chunks: tuple[Any, ...], length: int) -> None:
        self._ckks = ckks
        #: the TenSEAL ``CKKSVector`` objects, ``slots`` values each but the last
        self.chunks = chunks
        self.length = length
        self._blob: bytes | None = None

    @property
    def key_id(self) -> bytes:
        return self._ckks.key_id

    @property
    def params(self) -> CkksParams:
        return self._ckks.params

    @property
    def levels_left(self) -> int:
        """Plain multiplications this vector can still take."""
        return int(self.chunks[0].ciphertext()[0].coeff_modulus_size()) - 1

    @property
    def depth(self) -> int:
        """Plain multiplications this vector has taken (the most of any summand)."""
        return self.params.max_depth - self.levels_left

    def _check(self) -> None:
        """Chunk sizes, ciphertext shapes, scales and levels are what this module makes."""
        expect = self._ckks.sizes(self.length)
        if [int(c.size()) for c in self.chunks] != expect:
            raise HEError("encrypted vector chunk sizes do not match its length")
        levels = set()
        for c in self.chunks:
            cts = c.ciphertext()
            if len(cts) != 1 or int(cts[0].size()) != 2:
                raise HEError("malformed ciphertext: unexpected shape")
            if float(cts[0].scale) != self._ckks.scale:
                raise HEError("ciphertext at a scale other than the context's")
            levels.add(int(cts[0].coeff_modulus_size()))
        if len(levels) != 1 or not 1 <= min(levels) <= self.params.max_depth + 1:
            raise HEError("ciphertexts of one vector at different or impossible levels")

    def _same(self, other: object) -> CkksVector:
        if not isinstance(other, CkksVector):
            raise HEError(f"cannot add {type(other).__name__} to an encrypted vector")
        if other.key_id != self.key_id:
            raise HEError("encrypted vectors under different keys")
        if other.length != self.length or len(other.chunks) != len(self.chunks):
            raise HEError(f"encrypted vectors differ in length: {self.length}, {other.length}")
        return other

    def _operand(self, level: int) -> tuple[Any, ...]:
        """Chunks safe to add into ciphertexts with ``level`` levels left: TenSEAL brings
        the operand with more levels down to the other's in place, so such an operand is
        copied first (vectors stay immutable)."""
        if self.levels_left > level:
            return tuple(c.copy() for c in self.chunks)
        return self.chunks

    def __add__(self, other: object) -> CkksVector:
        """The slot-wise sum; a summand with fewer levels left sets the result's level."""
        o = self._same(other)
        try:
            rhs = o._operand(self.levels_left)
            chunks = tuple(a + b for a, b in zip(self.chunks, rhs, strict=True))
        except (ValueError, RuntimeError, TypeError) as exc:
            raise HEError(f"ciphertext addition failed: {exc}") from None
        return CkksVector(self._ckks, chunks, self.length)

    def scale(self, w: float) -> CkksVector:
        """Every value times the plain real ``w``; costs one level (refused when none is
        left). Exact up to noise: the rescaling prime's distance from ``2**scale`` is
        folded into the multiplier."""
        if not isinstance(w, Real) or isinstance(w, bool) or not math.isfinite(w):
            raise HEError(f"a weight is a finite real number, got {w!r}")
        bound = self.params.max_magnitude
        if abs(w) > bound:
            raise HEError(f"weight {w} exceeds max_magnitude {bound}")
        left = self.levels_left
        if left < 1:
            raise HEError(
                f"no multiplicative level left: these parameters allow {self.params.max_depth} "
                "plain multiplications per ciphertext"
            )
        q = self._ckks.primes[left]  # the last prime still in the chain, dropped by rescaling
        factor = float(w) * (q / self._ckks.scale)
        try:
            chunks = tuple(c * factor for c in self.chunks)
        except (ValueError, RuntimeError, TypeError) as exc:
            raise HEError(f"plain multiplication failed: {exc}") from None
        return CkksVector(self._ckks, chunks, self.length)

    def to_bytes(self) -> bytes:
        """One self-delimiting blob: a msgpack map of key id, length and the serialised
        ciphertexts. Read it back with :meth:`CkksPublic.load` or :meth:`CkksKeys.load`."""
        if self._blob is None:
            body = {
                "v": _BLOB_VERSION,
                "key": self.key_id,
                "n": self.length,
                "ct": [bytes(c.serialize()) for c in self.chunks],
            }
            self._blob = msgpack.packb(body, use_bin_type=True)
        return self._blob

    @property
    def nbytes(self) -> int:
        """Wire size: the length of :meth:`to_bytes`."""
        return len(self.to_bytes())

    def __repr__(self) -> str:
        return (
            f"CkksVector(length={self.length}, chunks={len(self.chunks)}, "
            f"levels_left={self.levels_left}, key_id={self.key_id.hex()})"
        )


def sum_vectors(vectors: Iterable[CkksVector]) -> CkksVector:
    """The encrypted sum of one or more vectors under one key, all of one length (what an
    aggregator computes; it never needs the secret key)."""
    vs = list(vectors)
    if not vs:
        raise HEError("nothing to add")
    first = vs[0]
    for v in vs[1:]:
        first._same(v)
    if len(vs) == 1:
        return first
    # the first addition makes fresh TenSEAL objects; the rest add into them in place
    total = first + vs[1]
    try:
        for v in vs[2:]:
            for acc, c in zip(total.chunks, v._operand(total.levels_left), strict=True):
                acc.add_(c)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise HEError(f"ciphertext addition failed: {exc}") from None
    return total


def _load_context(blob: bytes) -> Any:
    ts = _tenseal()
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise HEError(f"a serialised context is bytes, got {type(blob).__name__}")
    try:
        return ts.context_from(bytes(blob), n_threads=1)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise HEError(f"malformed CKKS context: {type(exc).__name__}") from None


class CkksPublic:
    """What an aggregator holds: the public context. Loads, adds and weights encrypted
    vectors; has no way to decrypt them (its TenSEAL context holds no secret key)."""

    def __init__(self, ckks: _Ckks) -> None:
        if ckks.ctx.has_secret_key():
            raise HEError(
                "this context holds the secret key; an aggregator gets CkksKeys.public_bytes()"
            )
        self._ckks = ckks

    @classmethod
    def from_bytes(cls, blob: bytes) -> CkksPublic:
        """The public side from :meth:`CkksKeys.public_bytes` (a secret context is refused)."""
        return cls(_Ckks(_load_context(blob)))

    @property
    def params(self) -> CkksParams:
        return self._ckks.params

    @property
    def key_id(self) -> bytes:
        return self._ckks.key_id

    @property
    def context(self) -> Any:
        """The underlying TenSEAL context (public material only)."""
        return self._ckks.ctx

    def load(self, blob: bytes) -> CkksVector:
        """An encrypted vector from :meth:`CkksVector.to_bytes` (HEError if malformed or
        under another key)."""
        return self._ckks.load(blob)


class CkksKeys:
    """The secret side, held by every peer in ``group`` key mode: encrypts, decrypts,
    and hands out the public context for the aggregator."""

    def __init__(self, ckks: _Ckks) -> None:
        if not ckks.ctx.has_secret_key():
            raise HEError("this context holds no secret key")
        self._ckks = ckks

    @classmethod
    def generate(cls, params: CkksParams | None = None, *, key_mode: KeyMode = "group") -> CkksKeys:
        """Fresh keys (SEAL's OS-seeded randomness; not reproducible from any seed)."""
        if key_mode != "group":
            raise HEError(
                f"CKKS supports only the group key mode, not {key_mode!r}: TenSEAL has no "
                "threshold decryption"
            )
        p = params if params is not None else CkksParams()
        if not isinstance(p, CkksParams):
            raise HEError(f"params must be CkksParams, got {type(p).__name__}")
        ts = _tenseal()
        _seal_primes(p.poly_modulus_degree, p.coeff_mod_bit_sizes)  # HEError if none fit
        try:
            ctx = ts.context(
                ts.SCHEME_TYPE.CKKS,
                poly_modulus_degree=p.poly_modulus_degree,
                coeff_mod_bit_sizes=list(p.coeff_mod_bit_sizes),
                n_threads=1,
            )
        except (ValueError, RuntimeError, TypeError) as exc:
            raise HEError(f"TenSEAL refused the parameters: {exc}") from None
        ctx.global_scale = 2.0**p.global_scale_bits
        keys = cls(_Ckks(ctx))
        if keys.params != p:
            raise HEError("TenSEAL built a context other than the one asked for")
        return keys

    @classmethod
    def from_bytes(cls, blob: bytes) -> CkksKeys:
        """Keys from :meth:`to_bytes` (a context without the secret key is refused)."""
        return cls(_Ckks(_load_context(blob)))

    def to_bytes(self) -> bytes:
        """The full context, secret key included: for peers only, over a sealed channel."""
        return bytes(
            self._ckks.ctx.serialize(
                save_public_key=True,
                save_secret_key=True,
                save_galois_keys=False,
                save_relin_keys=False,
            )
        )

    def public_bytes(self) -> bytes:
        """The context without the secret key (nor relinearisation or Galois keys): what
        the aggregator gets, for :meth:`CkksPublic.from_bytes`."""
        return self._ckks.public_bytes()

    def public(self) -> CkksPublic:
        """The aggregator's side, through the same bytes it would receive."""
        return CkksPublic.from_bytes(self.public_bytes())

    @property
    def params(self) -> CkksParams:
        return self._ckks.params

    @property
    def key_id(self) -> bytes:
        return self._ckks.key_id

    def encrypt(self, x: np.ndarray | Sequence[float]) -> CkksVector:
        """Encrypt a 1-D real vector of any positive length (finite, ``|x| <=
        max_magnitude``)."""
        arr = np.asarray(x, dtype=np.float64)
        if arr.ndim != 1 or arr.size == 0:
            raise HEError(f"encrypt takes a non-empty 1-D vector, got shape {arr.shape}")
        if not np.isfinite(arr).all():
            raise HEError("cannot encrypt non-finite values")
        bound = self.params.max_magnitude
        if float(np.abs(arr).max()) > bound:
            raise HEError(f"values beyond max_magnitude {bound} would not decrypt faithfully")
        ts = _tenseal()
        slots = self.params.slots
        ctx = self._ckks.ctx
        chunks = tuple(
            ts.ckks_vector(ctx, arr[i : i + slots].tolist()) for i in range(0, arr.size, slots)
        )
        return CkksVector(self._ckks, chunks, int(arr.size))

    def decrypt(self, v: CkksVector) -> np.ndarray:
        """The plaintext of ``v`` (float64, ``v.length`` values), up to CKKS noise."""
        if not isinstance(v, CkksVector):
            raise HEError(f"cannot decrypt {type(v).__name__}")
        if v.key_id != self.key_id:
            raise HEError("encrypted vector under another key")
        sk = self._ckks.ctx.secret_key()
        try:
            parts = [np.asarray(c.decrypt(sk), dtype=np.float64) for c in v.chunks]
        except (ValueError, RuntimeError, TypeError) as exc:
            raise HEError(f"decryption failed: {type(exc).__name__}") from None
        out = np.concatenate(parts)
        if out.size != v.length:
            raise HEError("decrypted vector has the wrong length")
        return out

    def load(self, blob: bytes) -> CkksVector:
        """An encrypted vector from :meth:`CkksVector.to_bytes`, linked to the secret
        context (HEError if malformed or under another key)."""
        return self._ckks.load(blob)
