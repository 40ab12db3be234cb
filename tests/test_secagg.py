"""Secure aggregation (Bonawitz et al. CCS 2017; SecAgg+, Bell et al. CCS 2020): the secure sum
against the plain one, dropouts and aborts, sparse masking graphs, the never-both-shares rule,
what the aggregator sees, tampering, seed-compressed sharing and pairwise sealing."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import networkx as nx
import numpy as np
import pytest
from scipy import stats

from p2pfed.crypto import FixedPoint, secagg
from p2pfed.crypto.secagg import (
    AbortError,
    SecAggClient,
    SecAggError,
    SecAggServer,
    SessionSpec,
    pair_key_directory,
    pair_keys,
    partial_sum,
    session_id,
    share_contribution,
    share_seed,
)
from p2pfed.crypto.sharing import expand
from p2pfed.errors import P2PFedError

C, Q = 8.0, 2**22  # Flower's clipping_range and quantization_range: step 2c/Q = 2**-18
D = 100_000
AGGREGATOR = 99
SESSION = session_id("star", AGGREGATOR, 1)
# everyone's long-term pair keys, registered at setup (never mutated by the tests)
SEEDS, PUBLICS = pair_key_directory(b"p2pfed-test-run!", [*range(16), AGGREGATOR])


@dataclass
class Group:
    """One session's parties, driven phase by phase as the peer hosts would drive them."""

    spec: SessionSpec
    clients: dict[int, SecAggClient]
    server: SecAggServer


def group(
    n: int,
    num_shares: int | None = None,
    threshold: int | None = None,
    dim: int = D,
    dtype: type[np.unsignedinteger] = np.uint32,
    session: bytes = SESSION,
    seed: int = 0,
) -> Group:
    """Clients 0..n-1 and their aggregator; SecAgg (everyone masks with everyone) by default,
    threshold 3/4 of the share holders."""
    num_shares = n if num_shares is None else num_shares
    threshold = 3 * num_shares // 4 if threshold is None else threshold
    spec = SessionSpec(session, tuple(range(n)), num_shares, threshold, dim, dtype)
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n)]
    clients = {u: SecAggClient(u, spec, pair_keys(u, SEEDS[u], PUBLICS), rngs[u]) for u in range(n)}
    return Group(spec, clients, SecAggServer(spec))


def upto_unmask(
    g: Group,
    codes: np.ndarray,  # (n, dim) ring elements, row u is client u's input
    *,
    no_advert: tuple[int, ...] = (),
    no_share: tuple[int, ...] = (),
    no_mask: tuple[int, ...] = (),
) -> tuple[int, ...]:
    """Phases 1-3 with the named clients silent from that phase on; returns the survivors."""
    adverts = {u: c.advertise() for u, c in g.clients.items() if u not in no_advert}
    roster = g.server.collect_adverts(adverts)
    shares = {
        u: g.clients[u].share_keys(g.server.roster_for(u)) for u in roster if u not in no_share
    }
    routed = g.server.route_shares(shares)
    masked = {v: g.clients[v].masked_input(codes[v], routed[v]) for v in routed if v not in no_mask}
    return g.server.collect_masked(masked)


def run(
    g: Group, codes: np.ndarray, *, no_unmask: tuple[int, ...] = (), **silent: tuple[int, ...]
) -> np.ndarray:
    """A whole session; returns the aggregator's ring sum."""
    survivors = upto_unmask(g, codes, **silent)
    reveals = {v: g.clients[v].unmask(survivors) for v in survivors if v not in no_unmask}
    return g.server.reconstruct(reveals)


def random_codes(n: int, dim: int = D, dtype: type = np.uint32, seed: int = 0) -> np.ndarray:
    info = np.iinfo(dtype)
    return np.random.default_rng(seed).integers(0, info.max, (n, dim), dtype=dtype, endpoint=True)


def staircase(fp: FixedPoint, dim: int = D) -> np.ndarray:
    """A very structured input: the integers -c..c-1 in runs, so every code's low byte is 0."""
    return fp.encode(np.floor(np.linspace(-C, C, dim, endpoint=False)))


def assert_looks_uniform(v: np.ndarray, codes: np.ndarray) -> None:
    """The low byte passes a chi-squared uniformity test and ``v`` has no linear trace of the
    input ``codes`` (both as floats)."""
    counts = np.bincount((v & 0xFF).astype(np.int64), minlength=256)
    assert stats.chisquare(counts).pvalue > 1e-3
    assert abs(np.corrcoef(v.astype(np.float64), codes.astype(np.float64))[0, 1]) < 0.01


# --- the secure sum is the plain sum -------------------------------------------------------


@pytest.mark.parametrize(("modulus", "stochastic"), [(2**32, True), (2**32, False), (2**64, True)])
def test_secure_sum_equals_the_plain_sum_of_the_clipped_inputs(
    modulus: int, stochastic: bool
) -> None:
    n = 8
    fp = FixedPoint.from_range(C, Q, modulus)
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(1).spawn(n + 1)]
    xs = rngs[n].normal(0, 6, (n, D))  # about 18% of the values lie beyond ±c
    codes = np.stack([fp.encode(x, rngs[u] if stochastic else None) for u, x in enumerate(xs)])
    total = run(group(n, dtype=fp.dtype), codes)
    np.testing.assert_array_equal(total, codes.sum(axis=0, dtype=fp.dtype))  # masks cancel
    clipped = np.clip(xs, -C, C).sum(axis=0)
    assert np.abs(fp.decode(total) - clipped).max() <= n * 2 * C / Q
    assert np.abs(xs.sum(axis=0) - clipped).max() > 1.0  # clipping mattered


def test_weighted_average_from_one_extra_slot() -> None:
    n, max_weight = 8, 1000
    fp = FixedPoint.from_range(C, Q)
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(2).spawn(n + 1)]
    xs = rngs[n].uniform(-C, C, (n, D)) * 0.999
    w = rngs[n].integers(50, 301, n)
    scale = w / max_weight  # in (0, 1]: a scaled value stays inside ±c
    slots = np.column_stack([xs * scale[:, None], scale])  # (n, D + 1): the weight rides last
    codes = np.stack([fp.encode(s, rngs[u]) for u, s in enumerate(slots)])
    total = fp.decode(run(group(n, dim=D + 1), codes))
    average = total[:D] / total[D]
    want = np.average(xs, weights=w, axis=0)
    np.testing.assert_allclose(average, want, rtol=0, atol=1e-4)
    assert np.abs(want - xs.mean(axis=0)).max() > 0.1  # the weights mattered


# --- dropouts and aborts ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "silent",
    [
        {"no_mask": (1, 5)},
        {"no_unmask": (2, 3)},
        {"no_mask": (1,), "no_unmask": (2,)},
        {"no_advert": (0,), "no_share": (4,)},
        {},
    ],
    ids=["two-before-masking", "two-after-masking", "one-each", "before-sharing", "none"],
)
def test_the_sum_covers_exactly_the_clients_whose_masked_input_arrived(
    silent: dict[str, tuple[int, ...]],
) -> None:
    n, dim = 8, 10_000
    codes = random_codes(n, dim)
    g = group(n, dim=dim)  # threshold 6
    total = run(g, codes, **silent)
    gone = {u for phase in ("no_advert", "no_share", "no_mask") for u in silent.get(phase, ())}
    counted = [u for u in range(n) if u not in gone]
    assert g.server.survivors == tuple(counted)
    np.testing.assert_array_equal(total, codes[counted].sum(axis=0, dtype=np.uint32))


@pytest.mark.parametrize(
    ("silent", "reason"),
    [
        ({"no_advert": (0, 1, 2)}, "5 of 8 clients advertised"),
        ({"no_share": (0, 1, 2)}, "5 clients shared their keys"),
        ({"no_mask": (0, 1, 2)}, "5 masked inputs arrived"),
        ({"no_unmask": (0, 1, 2)}, "fewer than 6 shares arrived"),
        ({"no_mask": (0,), "no_unmask": (1, 2)}, "fewer than 6 shares arrived"),
        ({"no_advert": (0,), "no_share": (1,), "no_mask": (2,)}, "5 masked inputs arrived"),
    ],
)
def test_too_many_dropouts_abort_the_session(
    silent: dict[str, tuple[int, ...]], reason: str
) -> None:
    g = group(8, dim=1000)  # threshold 6
    with pytest.raises(AbortError, match=reason):
        run(g, random_codes(8, 1000), **silent)


def test_an_unmask_missing_shares_of_one_secret_aborts() -> None:
    g = group(8, dim=1000)
    survivors = upto_unmask(g, random_codes(8, 1000))
    reveals = {v: g.clients[v].unmask(survivors) for v in survivors}
    for v in (0, 1, 2):  # 5 shares of b_3 remain, threshold 6
        del reveals[v][3]
    with pytest.raises(AbortError, match=r"peers \[3\]"):
        g.server.reconstruct(reveals)


def test_a_client_refuses_a_roster_below_threshold() -> None:
    g = group(8, dim=10)
    roster = g.server.collect_adverts({u: c.advertise() for u, c in g.clients.items()})
    with pytest.raises(AbortError, match="threshold is 6"):
        g.clients[0].share_keys({u: roster[u] for u in range(5)})


# --- SecAgg+: sparse masking graphs ----------------------------------------------------------


@pytest.mark.parametrize(("n", "num_shares"), [(16, 5), (16, 4), (15, 4)])
def test_the_sparse_masking_graph_is_a_shuffled_harary_graph_from_the_session_id(
    n: int, num_shares: int
) -> None:
    def neighbours(session: bytes) -> dict[int, tuple[int, ...]]:
        return SessionSpec(session, tuple(range(n)), num_shares, num_shares // 2 + 1, 10).neighbours

    nbrs = neighbours(SESSION)
    assert set(nbrs) == set(range(n))
    assert all(u in nbrs[v] and u != v for u, vs in nbrs.items() for v in vs)  # symmetric
    graph = nx.Graph([(u, v) for u, vs in nbrs.items() for v in vs])
    harary = nx.hkn_harary_graph(num_shares - 1, n)
    assert sorted(d for _, d in graph.degree) == sorted(d for _, d in harary.degree)
    assert min(len(vs) for vs in nbrs.values()) == num_shares - 1
    assert nx.node_connectivity(graph) == num_shares - 1
    # every party derives it afresh from public data (a new spec, nothing cached) and agrees
    assert neighbours(SESSION) == nbrs
    assert neighbours(session_id("star", AGGREGATOR, 2)) != nbrs  # the next round reshuffles
    assert neighbours(session_id("star", AGGREGATOR + 1, 1)) != nbrs


def test_sparse_clients_share_with_and_mask_against_their_neighbours_only() -> None:
    g = group(16, num_shares=5, threshold=3, dim=100)
    nbrs = g.spec.neighbours
    assert all(len(vs) == 4 for vs in nbrs.values())
    roster = g.server.collect_adverts({u: c.advertise() for u, c in g.clients.items()})
    shares = {u: g.clients[u].share_keys(g.server.roster_for(u)) for u in roster}
    assert all(set(shares[u]) == set(nbrs[u]) for u in roster)
    routed = g.server.route_shares(shares)
    assert all(set(routed[v]) == set(nbrs[v]) for v in routed)
    stranger = next(u for u in range(16) if u != 0 and u not in nbrs[0])
    owner = nbrs[0][0]
    with pytest.raises(SecAggError, match="not a masking neighbour"):
        g.clients[0].masked_input(np.zeros(100, np.uint32), {stranger: routed[0][owner]})


@pytest.mark.parametrize("threshold", [3, 4])
@pytest.mark.parametrize("dropouts", ["none", "before-masking", "after-masking", "both"])
def test_sparse_secure_sum_survives_a_dropout(threshold: int, dropouts: str) -> None:
    n, dim = 16, 10_000
    g = group(n, num_shares=5, threshold=threshold, dim=dim)
    nbrs = g.spec.neighbours
    # a second dropout shares no holder with the first, so every secret keeps 4 shares
    far = next(v for v in range(1, n) if v not in nbrs[0] and not set(nbrs[v]) & set(nbrs[0]))
    no_mask = (0,) if dropouts in {"before-masking", "both"} else ()
    no_unmask = {"after-masking": (0,), "both": (far,)}.get(dropouts, ())
    codes = random_codes(n, dim)
    total = run(g, codes, no_mask=no_mask, no_unmask=no_unmask)
    counted = [u for u in range(n) if u not in no_mask]
    np.testing.assert_array_equal(total, codes[counted].sum(axis=0, dtype=np.uint32))


def test_sparse_recovery_needs_threshold_shares_among_the_owners_neighbours() -> None:
    g = group(16, num_shares=5, threshold=4, dim=100)
    quiet = g.spec.neighbours[0][:2]  # 14 clients answer, but only 3 holders of b_0 do
    with pytest.raises(AbortError, match=r"peers \[0[,\]]"):
        run(g, random_codes(16, 100), no_unmask=quiet)


def test_on_a_sparse_graph_the_aggregator_learns_each_connected_part_of_the_survivors() -> None:
    # num_shares 3 (a cycle), threshold 2: a and b survive, their other neighbours drop after
    # sharing. The session succeeds, and from what it holds the aggregator also gets
    # x_a + x_b alone: the masks of {a, b} with the dropped are rebuilt from their mask keys,
    # and no mask joins {a, b} to the other survivors. Hence a threshold >= 3 on sparse graphs
    # (p2pfed.protocol.secure.SecureSettings.group_policy) for parts of at least 3.
    n, dim = 8, 50
    g = group(n, num_shares=3, threshold=2, dim=dim)
    nbrs, session = g.spec.neighbours, g.spec.session
    a = 0
    b = nbrs[a][0]
    cut = tuple(sorted({*nbrs[a], *nbrs[b]} - {a, b}))
    codes = random_codes(n, dim)
    survivors = upto_unmask(g, codes, no_mask=cut)
    reveals = {v: g.clients[v].unmask(survivors) for v in survivors}
    total = g.server.reconstruct(reveals)
    np.testing.assert_array_equal(total, codes[list(survivors)].sum(axis=0, dtype=np.uint32))

    def secret(u: int, kind: str) -> bytes:
        parts = [
            (i, sh) for r in reveals.values() for w, (k, i, sh) in r.items() if (w, k) == (u, kind)
        ]
        return g.server._combine(sorted(parts)[: g.spec.threshold])

    pair = g.server.masked[a] + g.server.masked[b]
    for u in (a, b):
        pair -= expand(secret(u, "b"), dim)
    for d in cut:
        key = secagg.x25519_from_seed(secret(d, "s"), b"mask" + session)
        for v in set(nbrs[d]) & {a, b}:
            m = expand(secagg._mask_seed(key, g.server.roster[v], session, d, v), dim)
            pair += m if d < v else -m  # y_v carries -PRG(s_vd) when d < v
    np.testing.assert_array_equal(pair, codes[a] + codes[b])


# --- the never-both-shares rule --------------------------------------------------------------


def test_a_client_never_releases_both_shares_of_one_owner() -> None:
    g = group(8, dim=100)
    survivors = upto_unmask(g, random_codes(8, 100))
    assert survivors == tuple(range(8))
    everyone = dict.fromkeys(range(8), "b")

    holder = g.clients[3]
    first = holder.unmask(survivors)
    assert {u: kind for u, (kind, _, _) in first.items()} == everyone
    with pytest.raises(SecAggError, match="refused"):
        holder.unmask([u for u in survivors if u != 5])  # would add b_5's partner, s_5
    assert holder.released == everyone  # nothing leaked by the refused request
    assert holder.unmask(survivors) == first  # asking the same again is harmless

    other = g.clients[4]  # the other way round: 5 reported dropped first
    second = other.unmask([u for u in survivors if u != 5])
    assert second[5][0] == "s" and other.released == {**everyone, 5: "s"}
    with pytest.raises(SecAggError, match="refused"):
        other.unmask(survivors)
    assert other.released == {**everyone, 5: "s"}


def test_unmask_refuses_a_dropped_client_and_too_few_survivors() -> None:
    g = group(8, dim=100)
    survivors = upto_unmask(g, random_codes(8, 100))
    with pytest.raises(SecAggError, match="counts as dropped") as info:
        g.clients[0].unmask(survivors[1:])
    assert not isinstance(info.value, AbortError)
    with pytest.raises(AbortError, match="5 survivors"):
        g.clients[0].unmask(survivors[:5])
    assert g.clients[0].released == {}


# --- what the aggregator sees -----------------------------------------------------------------


def test_a_masked_input_looks_uniform_and_uncorrelated_with_the_input() -> None:
    fp = FixedPoint.from_range(C, Q)
    codes = np.stack([staircase(fp)] * 8)  # every client sends the same structured vector
    with pytest.raises(AssertionError):
        assert_looks_uniform(codes[0], codes[0])  # the check rejects the input itself
    g = group(8)
    upto_unmask(g, codes)
    for u in (0, 7):
        assert_looks_uniform(g.server.masked[u], codes[u])


def test_share_vectors_look_uniform_and_uncorrelated_with_the_input() -> None:
    fp = FixedPoint.from_range(C, Q)
    x = staircase(fp)
    members = tuple(range(5))
    keys = {m: pair_keys(m, SEEDS[m], PUBLICS) for m in members}
    kept = share_contribution(0, x, members, keys[0], SESSION)
    assert_looks_uniform(kept, x)  # contributor 0's kept share
    assert_looks_uniform(partial_sum(2, members, keys[2], SESSION, D), x)  # member 2's sum


def _byte_leaves(obj: object, seen: set[int]) -> Iterator[bytes]:
    """Every bytes-like value reachable from ``obj`` through attributes, mappings and
    sequences (arrays as their raw bytes, integers as 16 bytes either way round)."""
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, bytes | bytearray | memoryview):
        yield bytes(obj)
    elif isinstance(obj, np.ndarray):
        yield obj.tobytes()
    elif isinstance(obj, str):
        yield obj.encode()
    elif isinstance(obj, int) and 0 <= obj < 2**128:
        yield obj.to_bytes(16, "big")
        yield obj.to_bytes(16, "little")
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _byte_leaves(k, seen)
            yield from _byte_leaves(v, seen)
    elif isinstance(obj, list | tuple | set | frozenset):
        for item in obj:
            yield from _byte_leaves(item, seen)
    elif not isinstance(obj, type) and hasattr(obj, "__dict__"):
        yield from _byte_leaves(vars(obj), seen)


def test_the_aggregator_keeps_no_client_secret_and_cannot_unmask_one_input() -> None:
    n = 8
    fp = FixedPoint.from_range(C, Q)
    xs = np.random.default_rng(7).uniform(-C, C, (n, D))
    codes = np.stack([fp.encode(x) for x in xs])
    g = group(n)
    # client 6 drops after sharing: the aggregator rebuilds its mask key, b_u for the rest
    total = run(g, codes, no_mask=(6,))
    np.testing.assert_array_equal(total, np.delete(codes, 6, axis=0).sum(axis=0, dtype=np.uint32))

    secrets: set[bytes] = set()
    for u, c in g.clients.items():
        secrets |= {c._self_seed, c._mask_seed_secret, expand(c._self_seed, 8).tobytes()}
        secrets.add(codes[u][:16].tobytes())  # the input itself
        for v, public in c._roster.items():
            if v != u:  # the pairwise mask seed s_uv (= s_vu)
                secrets.add(secagg._mask_seed(c._mask_key(), public, SESSION, u, v))
    assert len(secrets) == 8 * 4 + 28 and all(len(s) >= 16 for s in secrets)
    assert any(g.clients[0]._self_seed in leaf for leaf in _byte_leaves(g.clients[0], set()))
    held = list(_byte_leaves(g.server, set()))
    assert held  # the search saw the roster and the masked inputs
    assert not [s for s in secrets if any(s in leaf for leaf in held)]

    # with only the masked inputs, one input stays hidden, and so does the sum
    for u in g.server.survivors:
        y = g.server.masked[u]
        assert np.mean(y == codes[u]) < 0.01
        assert np.abs(fp.decode(y) - xs[u]).mean() > 100 * C
    unmasked = np.sum(list(g.server.masked.values()), axis=0, dtype=np.uint32)
    assert np.mean(unmasked == total) < 0.01


# --- tampering and malformed messages --------------------------------------------------------


def test_secagg_errors_belong_to_the_p2pfed_error_tree() -> None:
    assert issubclass(AbortError, SecAggError)
    assert issubclass(SecAggError, P2PFedError) and issubclass(SecAggError, ValueError)


def test_tampered_or_malformed_messages_are_refused() -> None:
    g = group(4, dim=64)  # threshold 3
    codes = random_codes(4, 64)
    client = g.clients[0]
    roster = g.server.collect_adverts({u: c.advertise() for u, c in g.clients.items()})
    with pytest.raises(SecAggError, match="own key"):
        client.share_keys({u: k for u, k in roster.items() if u != 0})
    with pytest.raises(SecAggError, match="own key"):
        client.share_keys({**roster, 0: roster[1]})
    with pytest.raises(SecAggError, match="repeats a key"):
        client.share_keys({**roster, 2: roster[1]})
    with pytest.raises(SecAggError, match="non-clients"):
        client.share_keys({**roster, 9: PUBLICS[9]})

    shares = {u: g.clients[u].share_keys(g.server.roster_for(u)) for u in roster}
    routed = g.server.route_shares(shares)
    flipped = bytearray(routed[0][1])
    flipped[7] ^= 0x01
    with pytest.raises(SecAggError, match="failed authentication"):
        client.masked_input(codes[0], {**routed[0], 1: bytes(flipped)})
    with pytest.raises(SecAggError, match="failed authentication"):
        client.masked_input(codes[0], {**routed[0], 2: routed[0][1]})  # relabelled owner
    with pytest.raises(SecAggError, match="64 ring elements"):
        client.masked_input(codes[0][:-1], routed[0])
    with pytest.raises(SecAggError, match="64 ring elements"):
        client.masked_input(codes[0].astype(np.uint64), routed[0])

    masked = {v: g.clients[v].masked_input(codes[v], routed[v]) for v in routed}
    for bad in (masked[1][:-1], masked[1].astype(np.int32), masked[1].astype(np.uint64)):
        with pytest.raises(SecAggError, match="wrong ring or length"):
            g.server.collect_masked({**masked, 1: bad})
    survivors = g.server.collect_masked(masked)  # the untampered round still goes through
    reveals = {v: g.clients[v].unmask(survivors) for v in survivors}
    np.testing.assert_array_equal(g.server.reconstruct(reveals), codes.sum(axis=0, dtype=np.uint32))


# --- pseudorandom additive sharing -----------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_pseudorandom_shares_add_up_to_the_ring_sum_exactly(dtype: type) -> None:
    members = tuple(range(5))  # the aggregator (AGGREGATOR) is not among them
    keys = {m: pair_keys(m, SEEDS[m], PUBLICS) for m in members}
    xs = random_codes(5, D, dtype, seed=5)
    kept = [share_contribution(j, xs[j], members, keys[j], SESSION) for j in members]
    partials = [partial_sum(m, members, keys[m], SESSION, D, dtype) for m in members]
    assert all(k.dtype == dtype and k.shape == (D,) for k in kept + partials)
    total = np.sum(kept, axis=0, dtype=dtype) + np.sum(partials, axis=0, dtype=dtype)
    np.testing.assert_array_equal(total, xs.sum(axis=0, dtype=dtype))
    short = total - partials[0]  # one member missing: noise
    assert np.mean(short == xs.sum(axis=0, dtype=dtype)) < 0.01
    # a member's kept share plus what it holds is one vector per member, and the sum over the
    # ready members only is exact too (members 0..2 ready, 3 and 4 not)
    ready = members[:3]
    sub = [
        share_contribution(j, xs[j], ready, keys[j], SESSION)
        + partial_sum(j, ready, keys[j], SESSION, D, dtype)
        for j in ready
    ]
    np.testing.assert_array_equal(np.sum(sub, axis=0, dtype=dtype), xs[:3].sum(axis=0, dtype=dtype))


def test_share_seeds_are_pairwise_directed_and_session_bound() -> None:
    a, b, c = (pair_keys(p, SEEDS[p], PUBLICS) for p in (0, 1, 2))
    ab = share_seed(a, 1, SESSION, 0, 1)
    assert ab == share_seed(b, 0, SESSION, 0, 1)  # both ends derive the same seed
    assert ab != share_seed(a, 1, SESSION, 1, 0)  # the other direction differs
    assert ab != share_seed(a, 1, session_id("star", AGGREGATOR, 2), 0, 1)  # next session
    assert ab != share_seed(c, 1, SESSION, 2, 1)  # another pair
    with pytest.raises(SecAggError, match="unsigned"):
        share_contribution(0, np.arange(4, dtype=np.int32), (0, 1, 2), a, SESSION)


# --- pairwise sealing -----------------------------------------------------------------------


def test_pair_keys_seal_and_open_between_two_peers_only() -> None:
    a, b, c = (pair_keys(p, SEEDS[p], PUBLICS) for p in (1, 2, 3))
    message = b"shares of b_1 and s_1 for peer 2"
    sealed = a.seal(2, b"secagg-shares", SESSION, message)
    assert len(sealed) == len(message) + 16 and message[:8] not in sealed
    assert b.open(1, b"secagg-shares", SESSION, sealed) == message
    assert a.key(2, b"p", SESSION, 1, 2) == b.key(1, b"p", SESSION, 1, 2)  # both ends agree
    assert a.key(2, b"p", SESSION, 1, 2) != a.key(2, b"p", SESSION, 2, 1)  # per direction
    refusals = [
        lambda: c.open(1, b"secagg-shares", SESSION, sealed),  # a third peer
        lambda: b.open(3, b"secagg-shares", SESSION, sealed),  # the wrong sender
        lambda: a.open(2, b"secagg-shares", SESSION, sealed),  # reflected to the sender
        lambda: b.open(1, b"share-seed", SESSION, sealed),  # another purpose
        lambda: b.open(1, b"secagg-shares", session_id("star", 0, 1), sealed),
        lambda: b.open(1, b"secagg-shares", SESSION, sealed[:15]),  # shorter than a tag
    ]
    for refused in refusals:
        with pytest.raises(SecAggError):
            refused()


def test_a_peer_missing_from_the_directory_is_refused() -> None:
    a = pair_keys(1, SEEDS[1], PUBLICS)
    with pytest.raises(SecAggError, match="no public key registered for peer 42"):
        a.seal(42, b"secagg-shares", SESSION, b"x")
    with pytest.raises(SecAggError, match="no public key registered for peer 42"):
        a.open(42, b"secagg-shares", SESSION, bytes(32))
    with pytest.raises(SecAggError, match="invalid X25519"):
        pair_keys(1, SEEDS[1], {**PUBLICS, 2: b"\x01" * 31}).seal(2, b"p", SESSION, b"x")


@pytest.mark.parametrize(("t", "n"), [(2, 3), (3, 4), (6, 8), (11, 16)])
def test_cached_lagrange_combine_equals_pycryptodome_combine(t: int, n: int) -> None:
    from Crypto.Protocol.SecretSharing import Shamir

    server = SecAggServer(SessionSpec(SESSION, tuple(range(n)), n, t, 8))
    rng = np.random.default_rng(t)
    for _ in range(20):
        secret = rng.bytes(16)
        shares = Shamir.split(t, n, secret)
        pick = sorted(shares[i] for i in rng.choice(n, t, replace=False))
        assert server._combine(pick) == Shamir.combine(pick) == secret
    wrong = sorted(Shamir.split(t, n, b"\x00" * 16)[:t])
    assert server._combine(wrong) == b"\x00" * 16  # the cached coefficients fit other secrets
    with pytest.raises(SecAggError, match="duplicate"):
        server._combine([(1, b"\x01" * 16)] * t)


def test_a_client_refuses_to_mask_with_too_few_share_holders_or_unmask_for_two() -> None:
    g = group(8, num_shares=8, threshold=6, dim=50)
    roster = g.server.collect_adverts({u: c.advertise() for u, c in g.clients.items()})
    shares = {u: g.clients[u].share_keys(g.server.roster_for(u)) for u in roster}
    routed = g.server.route_shares(shares)
    few = dict(list(routed[0].items())[:4])  # 4 holders + itself < threshold 6
    with pytest.raises(AbortError, match="only 4 masking neighbours"):
        g.clients[0].masked_input(np.zeros(50, np.uint32), few)
    small = group(3, num_shares=3, threshold=2, dim=50)
    roster = small.server.collect_adverts({u: c.advertise() for u, c in small.clients.items()})
    shares = {u: small.clients[u].share_keys(small.server.roster_for(u)) for u in roster}
    routed = small.server.route_shares(shares)
    for u, c in small.clients.items():
        c.masked_input(np.zeros(50, np.uint32), routed[u])
    with pytest.raises(AbortError, match="2 survivors, need 3"):
        small.clients[0].unmask([0, 1])  # a sum of two would reveal one input to the other
