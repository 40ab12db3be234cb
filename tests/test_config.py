"""The experiment file: loads into frozen, validated objects; every problem is one ConfigError
that names the file and the dotted key; ``--set`` overrides; the resolved config round-trips."""

from __future__ import annotations

import copy
import importlib.resources
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from p2pfed.config import ExperimentConfig, config_from_mapping, load_config
from p2pfed.errors import ConfigError, P2PFedError
from tests.conftest import small_config


def write_yaml(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def load_error(path: Path, overrides: tuple[str, ...] = ()) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return info.value


# --- the embedded default ---------------------------------------------------------------


def test_default_config_is_what_default_yaml_says() -> None:
    text = importlib.resources.files("p2pfed.defaults").joinpath("default.yaml").read_text()
    cfg = load_config(None)

    assert cfg == config_from_mapping(yaml.safe_load(text))
    assert cfg.topology.kind == "ring"
    assert cfg.num_peers == cfg.topology.n == 16
    assert cfg.protocol.kind == "dpsgd"
    assert (cfg.partition.scheme, cfg.partition.alpha) == ("dirichlet", 0.5)
    assert cfg.data.dataset == "digits"
    # Values the file sets that differ from the models' own defaults: the file was read.
    assert cfg.name == "default"
    assert cfg.protocol.rounds == 60
    assert cfg.training.momentum == 0.9
    assert cfg.network.latency.dist == "exponential"


def test_default_config_takes_overrides() -> None:
    cfg = load_config(None, ["protocol.rounds=3", "topology.n=8"])
    assert (cfg.protocol.rounds, cfg.topology.n) == (3, 8)


def test_empty_file_is_all_defaults(tmp_path: Path) -> None:
    assert load_config(write_yaml(tmp_path / "empty.yaml", "")) == ExperimentConfig()


def test_small_config_loads(tmp_path: Path) -> None:
    cfg = load_config(write_yaml(tmp_path / "small.yaml", small_config()))
    assert cfg.topology.n == 6
    assert cfg.model.kind == "logreg"
    assert cfg.training.local_steps == 3


# --- bad inputs: one ConfigError naming the file and the key ----------------------------


def _set(cfg: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    cfg = copy.deepcopy(cfg)
    *parents, last = dotted.split(".")
    node = cfg
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return cfg


BAD = [
    # (id, mutation of small_config, dotted key the message must name)
    ("unknown-top-level", ("colour", "red"), "colour"),
    ("unknown-nested", ("training.lrr", 0.1), "training.lrr"),
    ("unknown-deep", ("network.latency.mean", 0.1), "network.latency.mean"),
    ("lr-not-a-number", ("training.lr", "fast"), "training.lr"),
    ("n-float", ("topology.n", 3.5), "topology.n"),
    ("rounds-list", ("protocol.rounds", [1]), "protocol.rounds"),
    ("section-not-mapping", ("training", 5), "training"),
    ("unknown-literal", ("protocol.kind", "telepathy"), "protocol.kind"),
    ("lr-zero", ("training.lr", 0), "training.lr"),
    ("lr-negative", ("training.lr", -1), "training.lr"),
    ("alpha-zero", ("partition.alpha", 0), "partition.alpha"),
    ("alpha-negative", ("partition.alpha", -0.5), "partition.alpha"),
    ("latency-min-zero", ("network.latency.min", 0), "network.latency.min"),
    ("rounds-zero", ("protocol.rounds", 0), "protocol.rounds"),
]


@pytest.mark.parametrize(("change", "key"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_value_names_file_and_key(tmp_path: Path, change: tuple[str, Any], key: str) -> None:
    path = write_yaml(tmp_path / "experiment.yaml", _set(small_config(), *change))
    err = load_error(path)
    assert str(err).startswith(f"{path}: {key}: "), str(err)
    assert err.source == str(path)
    assert err.key == key
    assert "\n" not in str(err)


@pytest.mark.parametrize(
    ("topology", "message"),
    [
        ({"kind": "random_regular", "n": 6, "degree": 6}, "less than n"),
        ({"kind": "random_regular", "n": 6, "degree": 7}, "less than n"),
        ({"kind": "random_regular", "n": 7, "degree": 3}, "even"),
    ],
    ids=["degree-equals-n", "degree-above-n", "odd-n-times-degree"],
)
def test_impossible_random_regular(tmp_path: Path, topology: dict[str, Any], message: str) -> None:
    path = write_yaml(tmp_path / "experiment.yaml", {**small_config(), "topology": topology})
    err = load_error(path)
    assert str(err).startswith(f"{path}: topology.degree: ")
    assert message in str(err)


def test_valid_random_regular_is_accepted(tmp_path: Path) -> None:
    # The boundary just inside the impossible cases above.
    topology = {"kind": "random_regular", "n": 6, "degree": 5}
    path = write_yaml(tmp_path / "experiment.yaml", {**small_config(), "topology": topology})
    assert load_config(path).topology.degree == 5


@pytest.mark.parametrize(
    ("sections", "key"),
    [
        ({"data": {"dataset": "synthetic"}, "model": {"kind": "cnn"}}, "model.kind"),
        ({"time": {"slowdown": {6: 2.0}}}, "time.slowdown"),
    ],
    ids=["cnn-on-synthetic", "slowdown-peer-out-of-range"],
)
def test_cross_section_errors_name_file_and_key(
    tmp_path: Path, sections: dict[str, Any], key: str
) -> None:
    path = write_yaml(tmp_path / "experiment.yaml", small_config(**sections))
    err = load_error(path)
    assert str(err).startswith(f"{path}: ")
    assert key in str(err)


def test_slowdown_of_last_peer_is_accepted(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "experiment.yaml", small_config(time={"slowdown": {5: 2.0}}))
    assert load_config(path).time.slowdown == {5: 2.0}


def test_missing_topology_file(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "experiment.yaml", {"topology": {"file": "nope.yaml"}})
    err = load_error(path)
    assert str(err).startswith(f"{path}: topology.file: ")
    assert "nope.yaml" in str(err)


def test_unknown_key_in_topology_file_names_the_topology_file(tmp_path: Path) -> None:
    write_yaml(tmp_path / "topo_bad.yaml", {"kind": "ring", "n": 8, "bogus": 1})
    path = write_yaml(tmp_path / "experiment.yaml", {"topology": {"file": "topo_bad.yaml"}})
    err = load_error(path)
    assert "topo_bad.yaml" in str(err)
    assert "experiment.yaml" not in str(err)
    assert err.key == "topology.bogus"
    assert "topology.bogus" in str(err)


def test_invalid_yaml_in_topology_file_names_the_topology_file(tmp_path: Path) -> None:
    write_yaml(tmp_path / "topo_bad.yaml", "kind: ring\nn: [8\n")
    path = write_yaml(tmp_path / "experiment.yaml", {"topology": {"file": "topo_bad.yaml"}})
    err = load_error(path)
    assert "topo_bad.yaml" in str(err)
    assert "experiment.yaml" not in str(err)


def test_invalid_inline_topology_key_names_the_experiment_file(tmp_path: Path) -> None:
    write_yaml(tmp_path / "topo_ok.yaml", {"kind": "ring", "n": 8})
    path = write_yaml(tmp_path / "experiment.yaml", {"topology": {"file": "topo_ok.yaml", "n": 1}})
    err = load_error(path)
    assert err.key == "topology.n"
    assert "experiment.yaml" in str(err)


def test_duplicate_key_in_topology_file_is_an_error(tmp_path: Path) -> None:
    write_yaml(tmp_path / "topo_dup.yaml", "kind: ring\nn: 8\nn: 9\n")
    path = write_yaml(tmp_path / "experiment.yaml", {"topology": {"file": "topo_dup.yaml"}})
    err = load_error(path)
    assert "topo_dup.yaml" in str(err)


@pytest.mark.parametrize("dotted", ["protocol.rounds", "seed", "training.batch_size"])
def test_bool_is_not_an_int(tmp_path: Path, dotted: str) -> None:
    path = write_yaml(tmp_path / "experiment.yaml", _set(small_config(), dotted, True))
    err = load_error(path)
    assert err.key == dotted


def test_infinite_lr_is_rejected(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "experiment.yaml", _set(small_config(), "training.lr", math.inf))
    assert load_error(path).key == "training.lr"


def test_nan_lr_is_rejected(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "experiment.yaml", _set(small_config(), "training.lr", math.nan))
    assert load_error(path).key == "training.lr"


def test_invalid_yaml_names_file_and_line(tmp_path: Path) -> None:
    # A tab may not start a YAML line; the problem is on line 2, not at the end of the file.
    path = write_yaml(tmp_path / "experiment.yaml", "seed: 1\n\tname: x\nprotocol: {}\n")
    err = load_error(path)
    assert str(err).startswith(f"{path}: ")
    assert "line 2" in str(err)


@pytest.mark.parametrize("text", ["- 1\n- 2\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    path = write_yaml(tmp_path / "experiment.yaml", text)
    err = load_error(path)
    assert str(err).startswith(f"{path}: ")
    assert "mapping" in str(err)


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    err = load_error(path)
    assert str(err).startswith(f"{path}: ")
    assert "not found" in str(err)


def test_config_error_is_a_p2pfed_error() -> None:
    assert issubclass(ConfigError, P2PFedError)


# --- topology from a file ---------------------------------------------------------------


def test_topology_file_is_inlined(tmp_path: Path) -> None:
    write_yaml(tmp_path / "topo.yaml", {"kind": "torus", "n": 12})
    cfg = load_config(write_yaml(tmp_path / "e.yaml", {"topology": {"file": "topo.yaml"}}))
    assert (cfg.topology.kind, cfg.topology.n) == ("torus", 12)
    dumped = yaml.safe_load(cfg.to_yaml())
    assert "file" not in dumped["topology"]
    assert dumped["topology"]["kind"] == "torus"


def test_inline_topology_keys_override_the_file(tmp_path: Path) -> None:
    write_yaml(tmp_path / "topo.yaml", {"kind": "ring", "n": 8})
    data = {"topology": {"file": "topo.yaml", "n": 12}}
    cfg = load_config(write_yaml(tmp_path / "e.yaml", data))
    assert (cfg.topology.kind, cfg.topology.n) == ("ring", 12)
    # An invalid value in the file is fine when the inline key replaces it.
    write_yaml(tmp_path / "topo_n1.yaml", {"kind": "ring", "n": 1})
    data = {"topology": {"file": "topo_n1.yaml", "n": 5}}
    assert load_config(write_yaml(tmp_path / "e2.yaml", data)).topology.n == 5


def test_override_reaches_a_topology_from_a_file(tmp_path: Path) -> None:
    write_yaml(tmp_path / "topo.yaml", {"kind": "ring", "n": 8})
    path = write_yaml(tmp_path / "e.yaml", {"topology": {"file": "topo.yaml"}})
    assert load_config(path, ["topology.n=10"]).topology.n == 10


def test_topology_path_resolves_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_yaml(tmp_path / "exp" / "topos" / "t.yaml", {"kind": "ring", "n": 8})
    path = write_yaml(tmp_path / "exp" / "e.yaml", {"topology": {"file": "topos/t.yaml"}})
    elsewhere = tmp_path / "elsewhere"
    # A same-named file under the working directory must lose to the config's folder.
    write_yaml(elsewhere / "topos" / "t.yaml", {"kind": "ring", "n": 10})
    monkeypatch.chdir(elsewhere)
    assert load_config(path).topology.n == 8
    assert load_config(Path("..") / "exp" / "e.yaml").topology.n == 8


def test_topology_path_falls_back_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_yaml(tmp_path / "exp" / "e.yaml", {"topology": {"file": "only_here.yaml"}})
    write_yaml(tmp_path / "cwd" / "only_here.yaml", {"kind": "ring", "n": 9})
    monkeypatch.chdir(tmp_path / "cwd")
    assert load_config(path).topology.n == 9


def test_repo_topology_files_load(tmp_path: Path) -> None:
    ring16 = Path(__file__).parents[1] / "topologies" / "ring16.yaml"
    cfg = load_config(write_yaml(tmp_path / "e.yaml", {"topology": {"file": str(ring16)}}))
    assert (cfg.topology.kind, cfg.topology.n) == ("ring", 16)


# --- overrides --------------------------------------------------------------------------


@pytest.fixture
def small_path(tmp_path: Path) -> Path:
    return write_yaml(tmp_path / "small.yaml", small_config())


def test_scalar_overrides(small_path: Path) -> None:
    cfg = load_config(small_path, ["protocol.rounds=7", "training.lr=0.2", "name=other-name"])
    assert cfg.protocol.rounds == 7
    assert cfg.training.lr == 0.2
    assert cfg.name == "other-name"
    # Keys the overrides did not touch keep the file's values.
    assert cfg.training.local_steps == 3


def test_overrides_apply_together(small_path: Path) -> None:
    cfg = load_config(small_path, ["topology.kind=torus", "topology.n=16"])
    assert (cfg.topology.kind, cfg.topology.n) == ("torus", 16)
    # Either alone is invalid: a torus of 6 peers has no 3x3-or-larger shape.
    assert load_error(small_path, ("topology.kind=torus",)).key == "topology.n"


def test_later_override_wins(small_path: Path) -> None:
    assert load_config(small_path, ["seed=1", "seed=2"]).seed == 2


def test_override_creates_nested_sections(small_path: Path) -> None:
    cfg = load_config(small_path, ["time.stragglers.fraction=0.5"])
    assert cfg.time.stragglers.fraction == 0.5
    assert cfg.time.stragglers.slowdown == 4.0  # the rest of the section keeps its default


def test_override_list_value(small_path: Path) -> None:
    cfg = load_config(small_path, ["model.kind=mlp", "model.hidden=[32,16]"])
    assert cfg.model.hidden == (32, 16)


def test_override_mapping_with_int_keys(small_path: Path) -> None:
    cfg = load_config(small_path, ["time.slowdown.3=2.5"])
    assert cfg.time.slowdown == {3: 2.5}


def test_override_values_are_yaml(small_path: Path) -> None:
    cfg = load_config(
        small_path, ["protocol.timeout=2.5", "training.momentum=0.5", "training.nesterov=true"]
    )
    assert (cfg.protocol.timeout, cfg.training.momentum, cfg.training.nesterov) == (2.5, 0.5, True)
    cleared = load_config(small_path, ["protocol.timeout=2.5", "protocol.timeout=null"])
    assert cleared.protocol.timeout is None
    assert load_config(small_path, ["name='007'"]).name == "007"


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("training.lrr=0.1", "training.lrr"),
        ("colour=red", "colour"),
        ("network.latency.mean=1", "network.latency.mean"),
    ],
)
def test_override_of_unknown_key(small_path: Path, override: str, key: str) -> None:
    err = load_error(small_path, (override,))
    assert err.key == key
    assert str(err).startswith(f"{small_path}: {key}: unknown key")


def test_override_with_bad_value(small_path: Path) -> None:
    err = load_error(small_path, ("training.lr=0",))
    assert str(err).startswith(f"{small_path}: training.lr: ")


@pytest.mark.parametrize(
    ("override", "mentions"),
    [
        ("noequals", "noequals"),
        ("a..b=1", "a..b"),
        ("=1", "=1"),
        ("training.lr.x=1", "training.lr"),  # lr is a number in the file, not a section
        ("training.lr=[0.1", "training.lr"),  # not parseable YAML
    ],
)
def test_malformed_override(small_path: Path, override: str, mentions: str) -> None:
    err = load_error(small_path, (override,))
    assert mentions in str(err)


# --- round trip -------------------------------------------------------------------------


def assert_round_trips(cfg: ExperimentConfig, path: Path) -> None:
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg


def test_default_round_trips(tmp_path: Path) -> None:
    assert_round_trips(load_config(None), tmp_path / "resolved.yaml")


def test_rich_config_round_trips(tmp_path: Path) -> None:
    cfg = config_from_mapping(
        small_config(
            topology={"kind": "edge_list", "n": 4, "edges": [[0, 1], [1, 2], [2, 3], [3, 0]]},
            model={"kind": "mlp", "hidden": [8, 4]},
            time={"slowdown": {1: 2.0}, "stragglers": {"fraction": 0.25}, "limit": 100.0},
            network={"latency": {"min": 0.02, "dist": "uniform", "scale": 0.01}, "bandwidth": None},
            protocol={"timeout": 1.5},
        )
    )
    assert_round_trips(cfg, tmp_path / "resolved.yaml")


def test_topology_from_file_round_trips(tmp_path: Path) -> None:
    write_yaml(tmp_path / "topo.yaml", {"kind": "small_world", "n": 10, "degree": 4, "p": 0.2})
    cfg = load_config(write_yaml(tmp_path / "e.yaml", {"topology": {"file": "topo.yaml"}}))
    # The resolved form stands alone: reloaded from another folder, no topology file needed.
    (tmp_path / "other").mkdir()
    assert_round_trips(cfg, tmp_path / "other" / "resolved.yaml")


positive = st.floats(min_value=1e-8, max_value=1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**63 - 1),
    rounds=st.integers(1, 10_000),
    lr=positive,
    alpha=positive,
    n=st.integers(2, 64),
)
def test_round_trip_property(
    tmp_path_factory: pytest.TempPathFactory,
    seed: int,
    rounds: int,
    lr: float,
    alpha: float,
    n: int,
) -> None:
    data = small_config(
        topology={"n": n},
        protocol={"rounds": rounds},
        training={"lr": lr},
        partition={"alpha": alpha},
    )
    data["seed"] = seed
    cfg = config_from_mapping(data)
    assert (cfg.seed, cfg.protocol.rounds, cfg.training.lr) == (seed, rounds, lr)
    assert_round_trips(cfg, tmp_path_factory.mktemp("rt") / "resolved.yaml")


# --- frozen -----------------------------------------------------------------------------


def test_config_is_frozen() -> None:
    cfg = load_config(None)
    with pytest.raises(ValidationError):
        cfg.seed = 1  # type: ignore[misc]
    with pytest.raises(ValidationError):
        cfg.training.lr = 1.0  # type: ignore[misc]
    with pytest.raises(ValidationError):
        cfg.topology.n = 4  # type: ignore[misc]
    with pytest.raises(ValidationError):
        cfg.network.latency.min = 1.0  # type: ignore[misc]
    assert (cfg.seed, cfg.training.lr, cfg.topology.n) == (0, 0.05, 16)


def test_setting_a_topology_file_replaces_the_inline_topology() -> None:
    repo = Path(__file__).resolve().parents[1]
    # the embedded default says {kind: ring, n: 16}; the file is a directed 8-peer ring
    cfg = load_config(None, [f"topology.file={repo / 'topologies' / 'directed_ring8.yaml'}"])
    assert cfg.topology.n == 8 and cfg.topology.directed
    # later overrides still apply on top of the file
    cfg = load_config(
        None,
        [f"topology.file={repo / 'topologies' / 'small_world32.yaml'}", "topology.seed=5"],
    )
    assert cfg.topology.kind == "small_world" and cfg.topology.seed == 5


def test_push_sum_refuses_a_timeout_it_would_ignore() -> None:
    with pytest.raises(ConfigError, match="protocol: timeout is not used by pushsum"):
        config_from_mapping(small_config(protocol={"kind": "pushsum", "timeout": 1.0}))


def test_data_path_resolves_next_to_the_config(tmp_path: Path, monkeypatch: Any) -> None:
    import numpy as np

    (tmp_path / "exp").mkdir()
    np.savez(tmp_path / "exp" / "mine.npz", x=np.zeros((4, 2)), y=np.array([0, 1, 0, 1]))
    cfg_path = tmp_path / "exp" / "e.yaml"
    cfg_path.write_text(yaml.safe_dump({"data": {"dataset": "npz", "path": "mine.npz"}}))
    monkeypatch.chdir(tmp_path)
    cfg = load_config(cfg_path)
    assert cfg.data.path == str((tmp_path / "exp" / "mine.npz").resolve())


@pytest.mark.parametrize(
    "override",
    [
        "training.lr=true",
        "protocol.timeout=true",
        "network.loss=false",
        "time.seconds_per_sample=true",
        "partition.alpha=true",
        "time.slowdown={3: true}",
    ],
)
def test_booleans_are_not_numbers(override: str) -> None:
    with pytest.raises(ConfigError, match="boolean"):
        load_config(None, [override])


@pytest.mark.parametrize(
    "override",
    [
        "network.latency.scale=1e308",
        "network.latency.min=1e308",
        "time.compute_jitter=1e308",
        "time.seconds_per_sample=1e308",
        "network.bandwidth=1e-300",
    ],
)
def test_times_that_would_overflow_are_refused(override: str) -> None:
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        load_config(None, [override])


def test_local_epochs_with_local_steps_is_a_contradiction() -> None:
    with pytest.raises(ConfigError, match=r"local_epochs \(3\) is ignored"):
        load_config(None, ["training.local_epochs=3", "training.local_steps=5"])
    assert load_config(None, ["training.local_steps=5"]).training.local_steps == 5


def test_duplicate_keys_in_an_override_value_are_refused() -> None:
    with pytest.raises(ConfigError, match="cannot parse value"):
        load_config(None, ["training={lr: 1, lr: 2}"])


def test_a_binary_config_file_is_one_clean_error(tmp_path: Path) -> None:
    bad = tmp_path / "b.yaml"
    bad.write_bytes(b"\xff\xfe\xfd")
    with pytest.raises(ConfigError, match=r"b\.yaml: cannot read file"):
        load_config(bad)
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
