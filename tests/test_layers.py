"""The import graph runs one way (../shared/ARCHITECTURE.md): a package imports only packages on its own floor or
below, never a higher one; Dask lives only in batch/, FastAPI/uvicorn only in app/ (and the command that starts it),
and nothing imports the package root (``medsamkit/__init__.py`` re-exports; ``_version`` holds the version).

Every import counts, also those inside functions (they are how the lazy imports of this package are written),
except those under ``if TYPE_CHECKING:`` (annotations only). The entry points (app/, batch/, cli/) import only the
public library: no other package's private module or ``_name``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "src" / "medsamkit"

# floor of each top-level module or package; a module may import its own floor (where SIDEWAYS allows) or lower
FLOORS = {
    "errors": 0, "_version": 0, "_files": 0, "_arrays": 0, "_runs": 0,
    "io": 1, "preprocess": 1, "models": 1, "prompts": 1, "metrics": 1, "masks": 1, "viz": 1, "assets": 1,
    "predict": 2, "data": 2,
    "evaluate": 3, "samaug": 3, "train": 3,
    "app": 4, "batch": 4, "cli": 4,
}  # fmt: skip
# imports between packages of one floor that the map allows (anything else on one floor is refused)
SIDEWAYS = {
    ("_arrays", "errors"), ("_files", "errors"), ("_runs", "errors"), ("_runs", "_files"), ("_runs", "_version"),
    ("viz", "preprocess"),
    ("samaug", "evaluate"), ("train", "evaluate"), ("train", "samaug"),
    ("cli", "app"), ("cli", "batch"),
}  # fmt: skip
THIRD_PARTY_HOMES = {
    "dask": {"batch"},
    "distributed": {"batch"},
    "fastapi": {"app"},
    "starlette": {"app"},
    "uvicorn": {"app", "cli"},
}


def _imports(path: Path, root: Path = ROOT) -> list[tuple[str, int]]:
    """(imported top-level name, line) for every import in ``path``: ``medsamkit.<top>`` as ``<top>`` (the root
    package as ``(root)``), other packages as their own top-level name."""
    rel = path.relative_to(root)
    package = list(rel.parts[:-1])  # the package the module belongs to (for relative imports)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {  # imports under "if TYPE_CHECKING:" are for annotations, never run
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and getattr(block.test, "id", getattr(block.test, "attr", "")) == "TYPE_CHECKING"
        for stmt in block.body
        for n in ast.walk(stmt)
    }
    out = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = base + (node.module.split(".") if node.module else [])
                if not target:  # "from . import x" at the top level, or "from .. import x" into the root
                    out += [(a.name if (root / f"{a.name}.py").exists() else "(root)", node.lineno) for a in node.names]
                else:
                    out.append((target[0], node.lineno))
            elif node.module:
                parts = node.module.split(".")
                out.append(((parts[1] if len(parts) > 1 else "(root)") if parts[0] == "medsamkit" else parts[0], node.lineno))
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                out.append(((parts[1] if len(parts) > 1 else "(root)") if parts[0] == "medsamkit" else parts[0], node.lineno))
    return out


def _top(path: Path, root: Path = ROOT) -> str:
    first = path.relative_to(root).parts[0]
    return first[:-3] if first.endswith(".py") else first


MODULES = sorted(p for p in ROOT.rglob("*.py") if p != ROOT / "__init__.py" and "node_modules" not in p.parts)


def test_every_top_level_module_has_a_floor() -> None:
    tops = {_top(p) for p in MODULES}
    assert not tops - set(FLOORS), f"give these a floor in FLOORS: {sorted(tops - set(FLOORS))}"


def _violations(path: Path, root: Path = ROOT) -> list[str]:
    me = _top(path, root)
    bad = []
    for name, line in _imports(path, root):
        if name == "(root)":
            bad.append(f"line {line}: imports the package root (import from the module that defines the name)")
        elif name in FLOORS and name != me:
            if FLOORS[name] > FLOORS[me] or (FLOORS[name] == FLOORS[me] and (me, name) not in SIDEWAYS):
                bad.append(f"line {line}: {me} (floor {FLOORS[me]}) imports {name} (floor {FLOORS[name]})")
        elif name in THIRD_PARTY_HOMES and me not in THIRD_PARTY_HOMES[name]:
            bad.append(f"line {line}: {name} belongs in {sorted(THIRD_PARTY_HOMES[name])} only")
    return bad


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_run_downward(path: Path) -> None:
    bad = _violations(path)
    assert not bad, "; ".join(bad)


def test_the_checker_sees_violations(tmp_path) -> None:
    """The rules can fail: a low floor importing a higher one or the root, lazily inside a function, and Dask
    outside batch/, are all found; a downward import is not."""
    (tmp_path / "io").mkdir()
    probe = tmp_path / "io" / "probe.py"
    probe.write_text(
        "from typing import TYPE_CHECKING\nfrom ..errors import InputError\n"
        "if TYPE_CHECKING:\n    from ..app import server\n"
        "def f():\n    from ..predict import Predictor\n    from .. import __version__\n    import dask.array\n",
        encoding="utf-8",
    )
    assert [n for n, _ in _imports(probe, tmp_path)] == ["typing", "errors", "predict", "(root)", "dask"]
    found = _violations(probe, tmp_path)
    assert len(found) == 3 and "io (floor 1) imports predict (floor 2)" in found[0]
    assert "package root" in found[1] and "dask belongs in ['batch']" in found[2]


# the ground floor's shared modules: private to the package, public to its floors
GROUND = {"_runs", "_files", "_version", "_arrays"}
ENTRY_POINTS = ("app", "batch", "cli")


def _private_imports(path: Path, root: Path = ROOT) -> list[str]:
    """Imports in ``path`` of another package's private module (``_name``, the ground floor's aside) or of a private
    name (``_name``; dunders such as ``__version__`` are public)."""
    top = _top(path, root)
    package = list(path.relative_to(root).parts[:-1])
    bad = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            target = package[: len(package) - (node.level - 1)] + (node.module.split(".") if node.module else [])
        elif (node.module or "").startswith("medsamkit."):
            target = node.module.split(".")[1:]
        else:
            continue
        if not target or target[0] == top:
            continue
        private_modules = [t for t in target if t.startswith("_") and not t.startswith("__") and t not in GROUND]
        private_names = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
        if private_modules or private_names:
            bad.append(f"{path.relative_to(root)}:{node.lineno} imports {'.'.join(target)} {private_names or ''}".strip())
    return bad


@pytest.mark.parametrize("path", [p for p in MODULES if _top(p) in ENTRY_POINTS], ids=lambda p: str(p.relative_to(ROOT)))
def test_entry_points_use_the_public_library(path: Path) -> None:
    """app/, batch/ and cli/ call what the library exports, never another package's private names or modules, so
    the CLI, the web app and batch jobs go through the same public functions."""
    bad = _private_imports(path)
    assert not bad, "; ".join(bad)


def test_the_public_check_sees_private_imports(tmp_path) -> None:
    (tmp_path / "cli").mkdir()
    probe = tmp_path / "cli" / "probe.py"
    probe.write_text(
        "from .._runs import versions\nfrom .._version import __version__\nfrom ..predict.volume import _plans\n"
        "from ..io._inputs import x\nfrom .common import _helper\nfrom medsamkit.evaluate.runner import _bar\n",
        encoding="utf-8",
    )
    found = _private_imports(probe, tmp_path)
    assert len(found) == 3, found
    assert "predict.volume ['_plans']" in found[0] and "io._inputs" in found[1] and "['_bar']" in found[2]
