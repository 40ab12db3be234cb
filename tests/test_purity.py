"""The functional core stays pure (DESIGN.md section 1): no Ray, no wall clock, no global RNG.

Checked on the import graph of the source (AST), so a forbidden import hidden inside a
function is caught too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "p2pfed"
PURE = ["topology", "protocol", "data", "models", "timing.py", "training.py", "errors.py"]
FORBIDDEN = {"ray", "time", "datetime", "random"}
# sans-IO protocols hold numpy vectors only; torch belongs to the trainer
NO_TORCH = ["protocol", "topology", "timing.py"]


def _files(names: list[str]) -> list[Path]:
    out: list[Path] = []
    for name in names:
        p = PKG / name
        out.extend(sorted(p.rglob("*.py")) if p.is_dir() else [p])
    return out


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    mods: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            mods.add(node.module.split(".")[0])
    return mods


@pytest.mark.parametrize("path", _files(PURE), ids=lambda p: str(p.relative_to(PKG)))
def test_pure_modules_import_no_ray_and_no_clock(path: Path) -> None:
    assert not (_imports(path) & FORBIDDEN)


@pytest.mark.parametrize("path", _files(NO_TORCH), ids=lambda p: str(p.relative_to(PKG)))
def test_protocols_and_topologies_do_not_need_torch(path: Path) -> None:
    assert "torch" not in _imports(path)


@pytest.mark.parametrize("path", _files(PURE), ids=lambda p: str(p.relative_to(PKG)))
def test_pure_modules_use_no_global_rng(path: Path) -> None:
    src = path.read_text()
    for call in ("np.random.seed(", "np.random.rand(", "np.random.normal(", "torch.manual_seed("):
        if call == "torch.manual_seed(" and "fork_rng" in src:
            continue  # seeding inside fork_rng restores the global state afterwards
        assert call not in src, f"{call} uses a global generator"


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    import ray.util\n    from time import time\n")
    assert _imports(bad) >= {"ray", "time"}
