from __future__ import annotations

import pytest
import torch

# Tiny models on 2 cores: intra-op threads cost more than they give, and the test suite
# must not fight itself for cores.
torch.set_num_threads(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that needs the session's Ray instance is a ``ray`` test: ``make test``
    runs the others on both cores (pytest-xdist) and these after them, one at a time."""
    for item in items:
        if "ray_local" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ray)


@pytest.fixture(autouse=True)
def _no_reports(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs in tests skip drawing report.html (1-2 s of matplotlib per run, and the suite
    runs hundreds): the report is drawn after everything is written and changes no result.
    Tests marked ``report`` (the report's own, the README's) draw it as a user's run does."""
    if request.node.get_closest_marker("report") is None:
        import p2pfed.experiment

        monkeypatch.setattr(p2pfed.experiment, "_write_report", lambda *args: None)


def small_config(**sections: dict) -> dict:  # type: ignore[type-arg]
    """A fast experiment as a raw mapping; sections replace the defaults key by key."""
    cfg: dict = {  # type: ignore[type-arg]
        "name": "test",
        "seed": 3,
        "topology": {"kind": "ring", "n": 6},
        "data": {"dataset": "digits"},
        "partition": {"scheme": "dirichlet"},  # alpha 0.5 by default
        "model": {"kind": "logreg"},
        "protocol": {"kind": "dpsgd", "rounds": 4},
        "training": {"lr": 0.1, "batch_size": 32, "local_steps": 3},
        # reports are drawn by their own tests: 1-2 s of matplotlib per run adds up here
        "output": {"progress": "off", "report": False},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    return cfg


@pytest.fixture
def small() -> dict:  # type: ignore[type-arg]
    return small_config()


@pytest.fixture(scope="session")
def ray_local():  # type: ignore[no-untyped-def]
    """A private Ray instance for the whole session (never someone else's cluster)."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        from p2pfed.runtime.ray_runtime import PRIVATE_RAY_SYSTEM_CONFIG

        ray.init(
            address="local",
            _system_config=PRIVATE_RAY_SYSTEM_CONFIG,
            num_cpus=2,
            include_dashboard=False,
            logging_level="WARNING",
            object_store_memory=300 * 1024 * 1024,
        )
    yield ray
    ray.shutdown()
