"""Model poisoning: the vector a Byzantine peer shares instead of its honest model.

Every function returns the *model* (P,) the attacker puts in its message — D-PSGD's
``ModelShare.params``, FedAvg's ``ClientUpdate.params`` — never an update, because models are
what p2pfed's protocols carry. The attacks are stated on updates in their papers; here
``reference`` is the point those updates are taken from: the model local training started
from (FedAvg's global model ``x^r``; in D-PSGD the attacker's own ``x_i^r``, or the current
neighbourhood average), and a crafted model is ``reference + crafted update``. Where a
function takes a *view* (m, P) — the honest models the colluders know — it may hold models
or updates relative to one common reference; the docstring says which.

* **Sign flipping** (Damaskinos et al., "Asynchronous Byzantine Machine Learning (the case of
  SGD)", ICML 2018; Li et al., "RSA: Byzantine-Robust Stochastic Aggregation Methods for
  Distributed Learning from Heterogeneous Datasets", AAAI 2019): send the honest update
  reversed and scaled, ``reference - s (honest - reference)``.
* **Gaussian** (Blanchard, El Mhamdi, Guerraoui & Stainer, "Machine Learning with
  Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017, the Gaussian Byzantine
  worker): ``center + N(0, sigma^2 I)``; the caller picks ``center``: the reference (an
  update of pure noise) or the honest model (an honest update drowned in noise).
* **Model replacement** (Bagdasaryan, Veit, Hua, Estrin & Shmatikov, "How To Backdoor
  Federated Learning", AISTATS 2020, section 4): the server computes
  ``G + (eta / n) sum_k (L_k - G)``; sending ``L = G + gamma (X - G)`` with ``gamma = n / eta``
  makes the new global model ``X + (eta / n) sum_{k honest} (L_k - G)``, i.e. about the
  backdoored ``X`` once the honest updates have nearly converged (cancel out).
* **ALIE**, "A Little Is Enough" (Baruch, Baruch & Goldberg, NeurIPS 2019, Algorithm 1 and
  section 4): colluders estimate the per-coordinate mean ``mu`` and standard deviation
  ``sigma`` of the honest updates and all send ``mu - z sigma``. With ``n`` workers of which
  ``f`` are Byzantine, ``s = floor(n / 2 + 1) - f`` honest workers must look further from the
  mean than the attackers for a majority to back them, which bounds
  ``z = Phi^{-1}((n - s) / n)`` (Phi the standard normal CDF): small enough to pass
  median-, Krum- and trimmed-mean-style defences, and still a consistent bias every round.
* **IPM**, inner-product manipulation (Xie, Koyejo & Gupta, "Fall of Empires: Breaking
  Byzantine-tolerant SGD by Inner Product Manipulation", UAI 2019): send
  ``-epsilon * mean(honest updates)``. A small ``epsilon`` (0.1) survives robust rules and
  still makes the aggregate's inner product with the true gradient negative once enough
  workers collude; a large one (e.g. 10) reverses plain averaging outright.
* **Dissensus** (He, Karimireddy & Jaggi, "Byzantine-Robust Decentralized Learning via
  ClippedGossip", arXiv:2202.01545, 2022, their dissensus attack): against gossip,
  the Byzantine neighbours of an honest peer ``i`` all send
  ``x_i - epsilon sum_{j honest} W_ij (x_j - x_i) / W_iB``; after ``i`` mixes,
  ``x_i' = x_i + (1 - epsilon) sum_{j honest} W_ij (x_j - x_i)``: ``epsilon = 1`` freezes
  ``i`` and ``epsilon > 1`` pushes it away from its honest neighbours, so honest peers
  drift apart instead of reaching consensus.

Threat model: Byzantine participants that follow the protocol's message format but choose
what they share. Sign flipping, Gaussian, model replacement and IPM need only the attacker's
own training and the model it started from; ALIE needs the colluders' view of honest updates
(in FedAvg their own honestly trained models, in D-PSGD also the neighbours' shares they
received); the dissensus attack is omniscient about its target's neighbourhood (the
target's model, its honest neighbours' models and the mixing weights). Nothing here hides
an attack from a defence that checks update norms beyond what the attack itself implies
(model replacement's ``gamma`` multiplies the norm; Bagdasaryan et al.'s norm-constrained
variant is left to the caller, e.g. by clipping ``backdoored - reference`` first).

Pure: numpy and scipy; randomness only from a generator passed in; inputs are never
modified; results are new float32 arrays (P,).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import norm

__all__ = [
    "alie",
    "alie_z",
    "dissensus",
    "gaussian_noise",
    "ipm",
    "model_replacement",
    "replacement_scale",
    "sign_flip",
]

_FLOAT32_MAX = float(np.finfo(np.float32).max)


def sign_flip(honest: np.ndarray, reference: np.ndarray, *, scale: float = 1.0) -> np.ndarray:
    """The model ``reference - scale (honest - reference)`` (P,) float32: the honest update
    from ``reference`` reversed and multiplied by ``scale`` > 0."""
    ref = _vector("reference", reference)
    x = _vector("honest", honest, ref.size)
    s = _positive("scale", scale)
    return _out(ref - s * (x - ref))


def gaussian_noise(center: np.ndarray, *, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """The model ``center + N(0, sigma^2 I)`` (P,) float32.

    ``center = reference`` gives Blanchard et al.'s Gaussian Byzantine worker (an update of
    pure noise); ``center = honest`` an honest update with noise of std ``sigma`` added.
    """
    c = _vector("center", center)
    sd = _positive("sigma", sigma)
    return _out(c + rng.normal(0.0, sd, size=c.shape))


def replacement_scale(num_clients: int, server_lr: float = 1.0) -> float:
    """Bagdasaryan et al.'s boost ``gamma = n / eta`` for FedAvg with ``n`` equally weighted
    clients and server learning rate ``eta``.

    Elsewhere the boost is 1 / (the attacker's weight in the aggregate): with sample-weighted
    FedAvg ``sum_k samples_k / (eta samples_attacker)``; against a gossip peer ``i`` that mixes
    ``x_i' = sum_j W_ij x_j``, ``1 / W_ia`` (attacker ``a``) — then ``i`` adopts the
    backdoored model when its other neighbours hold the reference.
    """
    if isinstance(num_clients, bool) or not isinstance(num_clients, int | np.integer):
        raise ValueError(f"num_clients must be an integer, got {num_clients!r}")
    if num_clients < 1:
        raise ValueError(f"num_clients must be at least 1, got {num_clients}")
    lr = _positive("server_lr", server_lr)
    return float(num_clients) / lr


def model_replacement(backdoored: np.ndarray, reference: np.ndarray, *, scale: float) -> np.ndarray:
    """The model ``reference + scale (backdoored - reference)`` (P,) float32.

    ``backdoored`` is the model the attacker wants the aggregate to become (trained on
    poisoned data, :mod:`p2pfed.poison.data`), ``reference`` the global model it started from,
    ``scale`` the boost ``gamma`` (:func:`replacement_scale`: ``n / eta`` in FedAvg).
    """
    ref = _vector("reference", reference)
    x = _vector("backdoored", backdoored, ref.size)
    gamma = _positive("scale", scale)
    return _out(ref + gamma * (x - ref))


def alie_z(num_clients: int, num_byzantine: int) -> float:
    """ALIE's ``z_max = Phi^{-1}((n - s) / n)``, ``s = floor(n / 2 + 1) - f`` (Baruch et al.,
    section 4): the most standard deviations the attackers may sit from the mean while
    ``s`` honest workers still lie further out than them.

    Needs ``1 <= f <= floor(n / 2)``: with no attacker there is nothing to tune, and a
    Byzantine majority (``s <= 0``) makes the bound infinite. (n = 50, f = 12: s = 14,
    z = Phi^{-1}(0.72) = 0.583.)
    """
    for name, v in (("num_clients", num_clients), ("num_byzantine", num_byzantine)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer):
            raise ValueError(f"{name} must be an integer, got {v!r}")
    n, f = int(num_clients), int(num_byzantine)
    if n < 2:
        raise ValueError(f"num_clients must be at least 2, got {n}")
    if not 1 <= f <= n // 2:
        raise ValueError(
            f"num_byzantine must be in [1, floor(n / 2)] = [1, {n // 2}] for n = {n}, got {f}"
        )
    s = math.floor(n / 2 + 1) - f  # honest workers the attackers must "outvote", >= 1
    return float(norm.ppf((n - s) / n))


def alie(
    honest_view: np.ndarray,
    *,
    z: float | None = None,
    num_clients: int | None = None,
    num_byzantine: int | None = None,
    ddof: int = 1,
) -> np.ndarray:
    """ALIE's crafted vector ``mean - z std`` per coordinate (P,) float32.

    ``honest_view`` (m, P) holds the honest models the colluders know (or updates relative to
    one common reference): since the mean moves with a common shift and the standard
    deviation does not, models in give the crafted model out, updates in the crafted update.
    Give ``z`` explicitly, or ``num_clients`` and ``num_byzantine`` for :func:`alie_z`. The
    standard deviation uses ``ddof`` (1: the sample std, as the authors' ``torch.std``), so
    the view needs more than ``ddof`` rows.
    """
    view = _view("honest_view", honest_view)
    if z is None:
        if num_clients is None or num_byzantine is None:
            raise ValueError("alie needs z, or num_clients and num_byzantine to derive it")
        z = alie_z(num_clients, num_byzantine)
    elif num_clients is not None or num_byzantine is not None:
        raise ValueError("give either z or (num_clients, num_byzantine), not both")
    zf = _finite("z", z)
    if isinstance(ddof, bool) or not isinstance(ddof, int) or ddof < 0:
        raise ValueError(f"ddof must be a non-negative integer, got {ddof!r}")
    if view.shape[0] <= ddof:
        raise ValueError(
            f"alie needs more than ddof = {ddof} honest vectors to estimate a standard "
            f"deviation, got {view.shape[0]}"
        )
    mean = view.mean(axis=0)  # (P,)
    std = view.std(axis=0, ddof=ddof)  # (P,)
    return _out(mean - zf * std)


def ipm(honest_view: np.ndarray, reference: np.ndarray, *, epsilon: float = 0.1) -> np.ndarray:
    """Inner-product manipulation: the model ``reference - epsilon mean_k (x_k - reference)``
    (P,) float32, ``x_k`` the rows of ``honest_view`` (m, P), honest *models* trained from
    ``reference``. Its update has inner product ``-epsilon |mean update|^2 <= 0`` with the
    honest mean update."""
    ref = _vector("reference", reference)
    view = _view("honest_view", honest_view, ref.size)
    eps = _positive("epsilon", epsilon)
    mean_update = view.mean(axis=0) - ref  # (P,)
    return _out(ref - eps * mean_update)


def dissensus(
    target: np.ndarray,
    honest_neighbours: np.ndarray,
    honest_weights: np.ndarray,
    byzantine_weight: float,
    *,
    epsilon: float,
) -> np.ndarray:
    """The model every Byzantine neighbour of honest peer ``i`` sends (P,) float32:
    ``x_i - epsilon sum_j W_ij (x_j - x_i) / W_iB``.

    ``target`` is ``x_i`` (P,), ``honest_neighbours`` the models ``x_j`` (k, P) of ``i``'s
    honest neighbours (not ``i`` itself), ``honest_weights`` their mixing weights ``W_ij``
    (k,), ``byzantine_weight`` ``W_iB``, the total weight ``i`` gives its Byzantine
    neighbours (each sends this same vector). If ``i`` then mixes with a row-stochastic
    ``W``, it moves by ``(1 - epsilon) sum_j W_ij (x_j - x_i)``: ``epsilon > 1`` pushes it away
    from its honest neighbours.
    """
    xi = _vector("target", target)
    xs = _view("honest_neighbours", honest_neighbours, xi.size)
    w = np.asarray(honest_weights, dtype=np.float64)
    if w.shape != (xs.shape[0],):
        raise ValueError(
            f"honest_weights must have shape ({xs.shape[0]},) like honest_neighbours' rows, "
            f"got {w.shape}"
        )
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("honest_weights must be finite and non-negative")
    wb = _positive("byzantine_weight", byzantine_weight)
    eps = _positive("epsilon", epsilon)
    pull = w @ (xs - xi)  # (P,): the honest part of i's gossip step
    return _out(xi - eps * pull / wb)


def _vector(name: str, a: np.ndarray, size: int | None = None) -> np.ndarray:
    """``a`` as a finite, non-empty 1-D float64 array, of length ``size`` if given."""
    v = np.asarray(a, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D parameter vector, got shape {v.shape}")
    if size is not None and v.size != size:
        raise ValueError(f"{name} has {v.size} parameters, expected {size}")
    if not np.isfinite(v).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return v


def _view(name: str, a: np.ndarray, size: int | None = None) -> np.ndarray:
    """``a`` as a finite float64 array (m, P) with m >= 1 rows of ``size`` parameters."""
    v = np.asarray(a, dtype=np.float64)
    if v.ndim != 2 or v.shape[0] == 0 or v.shape[1] == 0:
        raise ValueError(
            f"{name} must be a non-empty 2-D array (vectors, parameters), got shape {v.shape}"
        )
    if size is not None and v.shape[1] != size:
        raise ValueError(f"{name} rows have {v.shape[1]} parameters, expected {size}")
    if not np.isfinite(v).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return v


def _finite(name: str, value: float) -> float:
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return v


def _positive(name: str, value: float) -> float:
    v = _finite(name, value)
    if v <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return v


def _out(v: np.ndarray) -> np.ndarray:
    """The shared form of a parameter vector: (P,) float32, as the protocols' messages."""
    if not np.isfinite(v).all() or float(np.abs(v).max()) > _FLOAT32_MAX:
        raise ValueError("the crafted model overflows float32; use a smaller scale")
    return v.astype(np.float32)
