"""The functional core stays pure (DESIGN.md section 1): no Ray, no wall clock, no global RNG.

Checked on the syntax tree of the source (AST), so a forbidden import hidden inside a
function is caught too, and a global-RNG use is found however numpy or torch was imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "p2pfed"
PURE = [
    "topology",
    "protocol",
    "data",
    "models",
    "crypto",
    "privacy",
    "attacks",
    "adversary",
    "poison",
    "robust",
    "timing.py",
    "availability.py",
    "training.py",
    "errors.py",
]
FORBIDDEN = {"ray", "time", "datetime", "random"}
# sans-IO protocols hold numpy vectors only; torch belongs to the trainer
NO_TORCH = ["protocol", "topology", "timing.py", "availability.py", "robust", "poison"]


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


# numpy.random names that build or name an explicit generator; every other one (choice,
# shuffle, seed, normal, ...) draws from or reseeds the global RandomState.
NUMPY_RANDOM_OK = {"default_rng", "Generator", "SeedSequence", "BitGenerator", "PCG64"}
# torch functions that draw from (or reseed) the global generator unless given generator=.
TORCH_GLOBAL_RNG = {
    "rand",
    "randn",
    "randint",
    "randperm",
    "manual_seed",
    "normal",
    "bernoulli",
    "multinomial",
}


def _aliases(tree: ast.Module) -> dict[str, str]:
    """Local name -> the dotted path it was imported as (``np`` -> ``numpy``)."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    names[a.asname] = a.name
                else:  # ``import numpy.random`` binds ``numpy``
                    top = a.name.split(".")[0]
                    names[top] = top
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                names[a.asname or a.name] = f"{node.module}.{a.name}"
    return names


def _dotted(node: ast.expr, aliases: dict[str, str]) -> str | None:
    """``np.random.choice`` -> ``numpy.random.choice``; None unless it starts at an import."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name) or node.id not in aliases:
        return None
    return ".".join([aliases[node.id], *reversed(parts)])


def _global_rng_uses(source: str, filename: str = "<source>") -> list[str]:
    """Every use of a global RNG in ``source``, as ``line: dotted.name``.

    numpy: any ``numpy.random.X`` (however numpy was imported) with X outside NUMPY_RANDOM_OK.
    torch: a call to ``torch.X`` / ``torch.random.X``, X in TORCH_GLOBAL_RNG, unless it passes
    ``generator=`` or the innermost function around it also uses ``fork_rng`` (which restores
    the global state afterwards).
    """
    tree = ast.parse(source, filename=filename)
    aliases = _aliases(tree)
    found: list[str] = []

    def forks(scope: ast.AST | None) -> bool:
        if scope is None:  # module level: nothing restores the state
            return False
        return any(
            (isinstance(n, ast.Name) and n.id == "fork_rng")
            or (isinstance(n, ast.Attribute) and n.attr == "fork_rng")
            for n in ast.walk(scope)
        )

    def visit(node: ast.AST, scope: ast.AST | None) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            scope = node
        name: str | None = None
        if isinstance(node, ast.Attribute | ast.Name):
            name = _dotted(node, aliases)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:  # ``from numpy.random import choice``
                visit(ast.Name(id=a.asname or a.name, lineno=node.lineno), scope)
        if name and name.startswith("numpy.random.") and name.split(".")[2] not in NUMPY_RANDOM_OK:
            found.append(f"{node.lineno}: {name}")
        if isinstance(node, ast.Call):
            called = _dotted(node.func, aliases) or ""
            parts = called.split(".")
            if parts[:2] == ["torch", "random"]:
                parts = ["torch", *parts[2:]]
            if len(parts) == 2 and parts[0] == "torch" and parts[1] in TORCH_GLOBAL_RNG:
                seeded = any(k.arg == "generator" for k in node.keywords)
                if not (seeded or forks(scope)):
                    found.append(f"{node.lineno}: {called}")
        if isinstance(node, ast.Attribute):
            # ``np.random.choice`` is one use, not also ``np.random`` and ``np``; but the base
            # of ``f(x).y.z`` is an expression of its own.
            base: ast.expr = node
            while isinstance(base, ast.Attribute):
                base = base.value
            if not isinstance(base, ast.Name):
                visit(base, scope)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, scope)

    visit(tree, None)
    return found


@pytest.mark.parametrize("path", _files(PURE), ids=lambda p: str(p.relative_to(PKG)))
def test_pure_modules_use_no_global_rng(path: Path) -> None:
    uses = _global_rng_uses(path.read_text(), str(path))
    assert not uses, f"{path.name} uses a global RNG at {uses}"


def test_the_rng_checker_catches_global_draws(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import numpy as np\n"
        "import torch\n"
        "def pick(xs):\n"
        "    return np.random.choice(xs)\n"
        "def noise(n):\n"
        "    return torch.randn(n)\n"
    )
    assert _global_rng_uses(bad.read_text()) == ["4: numpy.random.choice", "6: torch.randn"]


@pytest.mark.parametrize(
    "source",
    [
        "import numpy\nnumpy.random.shuffle(x)\n",
        "from numpy import random as r\nr.seed(0)\n",
        "from numpy.random import permutation\n",
        "import numpy as np\nf = np.random.rand\n",  # no call needed: a reference is a use
        "import numpy as np\nn = g(np.random.rand()).real.size\n",  # inside a chain's base
        "import torch\nx = torch.randint(0, 3, (2,))\n",  # module level, no generator
        "import torch\ndef f():\n    torch.random.manual_seed(0)\n",
        "import torch\ndef f():\n    with torch.random.fork_rng():\n        pass\n"
        "def g():\n    torch.manual_seed(0)\n",  # fork_rng in another function
    ],
)
def test_the_rng_checker_catches_other_spellings(source: str) -> None:
    assert _global_rng_uses(source)


@pytest.mark.parametrize(
    "source",
    [
        "import numpy as np\nrng: np.random.Generator = np.random.default_rng(0)\n",
        "import numpy as np\nss = np.random.SeedSequence(1).spawn(3)\n",
        "import numpy as np\ng = np.random.Generator(np.random.PCG64(0))\n",
        "import torch\ndef f(g):\n    return torch.randperm(5, generator=g)\n",
        "import torch\ndef f():\n    with torch.random.fork_rng(devices=[]):\n"
        "        torch.manual_seed(0)\n        return torch.randn(3)\n",
        "def f(rng):\n    return rng.normal()\n",  # a Generator method, not torch.normal
    ],
)
def test_the_rng_checker_allows_explicit_generators(source: str) -> None:
    assert _global_rng_uses(source) == []


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    import ray.util\n    from time import time\n")
    assert _imports(bad) >= {"ray", "time"}
