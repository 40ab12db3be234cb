"""Robust aggregation where the coordinator sees sums only (issue 7, item 2): FedAvg whose
secure sums run over random buckets of clients and whose robust rule runs over the bucket
means, poisoners that choose their input before masking, and the settings refused there."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from p2pfed import run
from p2pfed.config import config_from_mapping
from p2pfed.errors import ConfigError
from p2pfed.robust import RobustError
from p2pfed.robust.buckets import assign, bucket_means, bucket_of, num_buckets

ATTACKERS = [3, 11]


def _config(
    rule: str,
    attack: str | None,
    *,
    bucket: int | None = 3,
    aggregation: str | None = "secagg",
    rounds: int = 60,
) -> dict[str, Any]:
    robust: dict[str, Any] = {"rule": rule, "f": 2}
    if bucket is not None and rule != "mean":
        robust["bucket_size"] = bucket
    cfg: dict[str, Any] = {
        "name": "secure-robust",
        "seed": 1,
        "topology": {"kind": "ring", "n": 16},
        "data": {"dataset": "digits"},
        "partition": {"scheme": "dirichlet", "alpha": 0.5},
        "model": {"kind": "mlp", "hidden": [64]},
        "protocol": {"kind": "fedavg", "rounds": rounds, "robust": robust},
        "training": {"lr": 0.1, "batch_size": 32, "local_steps": 5},
        "output": {"progress": "off"},
    }
    if aggregation is not None:
        cfg["security"] = {"aggregation": aggregation}
    if attack is not None:
        cfg["adversaries"] = [
            {"role": "poisoner", "peers": ATTACKERS, "behaviour": attack, "scale": 4.0}
        ]
    return cfg


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("secure-robust")


@cache
def _summary(out: Path, rule: str, attack: str | None, aggregation: str | None) -> Any:
    name = f"{rule}-{attack}-{aggregation}"
    return run(_config(rule, attack, aggregation=aggregation), out=out / name).summary


# --- the buckets ------------------------------------------------------------------------------


def test_buckets_partition_the_clients_the_same_way_everywhere() -> None:
    clients = range(16)
    a = assign(clients, 3, seed=7, round_=4)
    assert a == assign(list(reversed(clients)), 3, seed=7, round_=4)  # order does not matter
    assert len(a) == num_buckets(16, 3) == 5
    assert sorted(c for b in a for c in b) == list(clients)
    assert all(len(b) >= 3 for b in a) and max(map(len, a)) - min(map(len, a)) <= 1
    assert a != assign(clients, 3, seed=7, round_=5)  # fresh buckets each round
    assert a != assign(clients, 3, seed=8, round_=4)
    assert all(c in a[bucket_of(a, c)] for c in clients)
    with pytest.raises(RobustError, match="in no bucket"):
        bucket_of(a, 99)
    with pytest.raises(RobustError, match="cannot fill one bucket"):
        num_buckets(2, 3)


def test_bucket_means_weigh_members_and_skip_empty_buckets() -> None:
    x = np.array([[0.0, 0.0], [2.0, 4.0], [10.0, 10.0]])
    means, totals = bucket_means(x, np.array([1.0, 3.0, 0.0]), [(0, 1), (2,)])
    np.testing.assert_allclose(means, [[1.5, 3.0]])
    np.testing.assert_allclose(totals, [4.0])


# --- runs: digits, 16 FedAvg clients, Dirichlet 0.5, 2 sign flippers (x4) ----------------------


def test_poisoners_choose_their_input_before_masking_and_break_the_secure_mean(
    out: Path,
) -> None:
    clean = _summary(out, "mean", None, "secagg")["final"]["mean_acc"]
    attacked = _summary(out, "mean", "sign_flip", "secagg")
    assert clean >= 0.90
    assert attacked["robustness"]["honest_mean_acc"] <= 0.5
    assert attacked["protocol_events"]["round_aggregated"] == 60  # no session lost


@pytest.mark.parametrize("aggregation", ["secagg", "secret-share"])
def test_the_median_over_secure_bucket_sums_holds(out: Path, aggregation: str) -> None:
    s = _summary(out, "median", "sign_flip", aggregation)
    rb = s["robustness"]
    assert rb["honest_mean_acc"] >= 0.85
    assert rb["buckets"] == 5 and rb["buckets_lost"] == 0
    assert s["protocol_events"]["round_aggregated"] == 60
    # the same buckets in the clear end within a point (the secure sums are quantised)
    plain = _summary(out, "median", "sign_flip", None)["robustness"]["honest_mean_acc"]
    assert abs(rb["honest_mean_acc"] - plain) <= 0.01


def test_the_median_over_buckets_costs_little_without_attack(out: Path) -> None:
    clean = _summary(out, "mean", None, "secagg")["final"]["mean_acc"]
    assert _summary(out, "median", None, "secagg")["final"]["mean_acc"] >= clean - 0.02


# --- settings refused -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"bucket": None}, "set protocol.robust.bucket_size"),
        ({"bucket": 2}, "needs at least 3 clients"),
        ({"aggregation": "he"}, "robust rules over HE sums are not implemented"),
    ],
)
def test_rules_that_cannot_run_on_sums_are_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_mapping(_config("median", None, **change))


def test_buckets_are_for_fedavg_and_too_many_for_the_clients_are_refused(tmp_path: Path) -> None:
    cfg = _config("median", None, aggregation=None)
    cfg["protocol"]["kind"] = "dpsgd"
    with pytest.raises(ConfigError, match="bucket_size is for fedavg"):
        config_from_mapping(cfg)
    cfg = _config("median", None, bucket=9, rounds=1)  # one bucket of 16: no median of one
    with pytest.raises(ConfigError, match="2f < n"):
        run(cfg, out=tmp_path / "one-bucket")
    assert not (tmp_path / "one-bucket").exists()


def test_buckets_with_the_mean_and_a_lone_alie_under_masking_are_refused() -> None:
    cfg = _config("median", None)
    cfg["protocol"]["robust"]["rule"] = "mean"
    with pytest.raises(ConfigError, match="no effect with rule mean"):
        config_from_mapping(cfg)
    cfg = _config("mean", None)
    cfg["adversaries"] = [{"role": "poisoner", "peers": [1], "behaviour": "alie"}]
    with pytest.raises(ConfigError, match="at least 2 colluding peers"):
        config_from_mapping(cfg)
    cfg["adversaries"][0]["peers"] = [1, 2]
    config_from_mapping(cfg)


@pytest.mark.parametrize("behaviour", ["dissensus", "delay", "flood"])
def test_behaviours_that_need_shared_models_are_refused_under_secure_aggregation(
    behaviour: str,
) -> None:
    cfg = _config("mean", None)
    cfg["adversaries"] = [{"role": "poisoner", "peers": [1, 2], "behaviour": behaviour}]
    with pytest.raises(ConfigError, match="only chooses its input before masking"):
        config_from_mapping(cfg)
