"""The layering contract: imports inside gpuload run one way (issue 9).

format (bytes -> entries) -> plan (pure arithmetic) -> io (disk -> ring) -> backend (ring -> GPU)
-> scheduler -> api -> loader / distributed -> graph (the TF1 surface) -> the top-level package, cli, demo.

The check parses every module under gpuload/ with ``ast`` (no import is executed, so lazy
imports inside functions count too) and resolves relative imports and ``from pkg import mod``.
Today's known exceptions are an explicit allow-list below; a NEW upward import fails, and so
does an allow-list entry that is no longer needed (so the list only shrinks).
"""

from __future__ import annotations

import ast
import functools
import shutil
from pathlib import Path

import pytest
from conftest import REPO

PACKAGE = REPO / "gpuload"

# Imported by everything: they import nothing of gpuload themselves.
BASE = ("gpuload.errors", "gpuload.config", "gpuload.devices")

# layer -> the only gpuload layers it may import besides itself and BASE
ONLY_BELOW = {
    "gpuload.format": (),
    "gpuload.plan": ("gpuload.format",),
    "gpuload.io": ("gpuload.format", "gpuload.plan"),
}
# layer -> what it must not import
NOT_ABOVE = {
    "gpuload.backend": (
        "gpuload.scheduler",
        "gpuload.loader",
        "gpuload.distributed",
        "gpuload.graph",
        "gpuload.cli",
        "gpuload.demo",
    ),
    "gpuload.scheduler": ("gpuload.loader", "gpuload.distributed", "gpuload.graph", "gpuload.cli", "gpuload.demo"),
}
# Pure host-side layers: no CuPy, at any depth of the module.
NO_CUPY = ("gpuload.format", "gpuload.plan")
# The TF1 surface is imported only from the top-level package, the CLI, the demo and itself.
GRAPH = "gpuload.graph"
GRAPH_CLIENTS = ("gpuload", "gpuload.cli", "gpuload.demo", "gpuload.__main__", "gpuload.graph")

# Known violations (importer, imported); keep this list shrinking, never growing. Empty since
# the initializer op (gpuload.graph.ops) hands the loader and the collective load requests,
# not variables (issue 9).
KNOWN: set[tuple[str, str]] = set()


def _in(module: str, layer: str) -> bool:
    return module == layer or module.startswith(layer + ".")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, root: Path) -> set[str]:
    """Every module ``path`` imports (absolute names), wherever in the file the import is."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                # `from gpuload import config` imports the module gpuload.config, not the package.
                sub = root.parent.joinpath(*f"{source}.{alias.name}".split("."))
                found.add(f"{source}.{alias.name}" if sub.with_suffix(".py").is_file() or sub.is_dir() else source)
    return found


def violations(root: Path = PACKAGE) -> set[tuple[str, str, str]]:
    """(importer, imported, rule) for every import that breaks the contract under ``root``."""
    out = set()
    for path in sorted(root.rglob("*.py")):
        importer = module_name(path, root)
        for imported in imports(path, root):
            if _in(imported, "cupy") and any(_in(importer, layer) for layer in NO_CUPY):
                out.add((importer, imported, "format and plan import no CuPy"))
            if not _in(imported, "gpuload"):
                continue
            for layer, allowed in ONLY_BELOW.items():
                ok = (layer, *allowed, *BASE)
                if _in(importer, layer) and not any(_in(imported, a) for a in ok):
                    out.add((importer, imported, f"{layer} imports only {', '.join(ok)}"))
            for layer, banned in NOT_ABOVE.items():
                if _in(importer, layer) and any(_in(imported, b) for b in banned):
                    out.add((importer, imported, f"{layer} imports nothing above it"))
            if any(_in(importer, b) for b in BASE) and imported not in BASE:
                out.add((importer, imported, "errors, config and devices import nothing of gpuload"))
            if _in(imported, GRAPH) and importer not in GRAPH_CLIENTS and not _in(importer, GRAPH):
                out.add((importer, imported, "only the top-level package, cli and demo import gpuload.graph"))
    return out


@functools.cache
def _today() -> frozenset[tuple[str, str, str]]:
    return frozenset(violations())


def test_no_import_breaks_the_layering():
    new = sorted(v for v in _today() if v[:2] not in KNOWN)
    assert not new, "upward imports:\n" + "\n".join(f"  {a} imports {b}: {rule}" for a, b, rule in new)


def test_every_known_exception_still_exists():
    """An allow-list entry whose import is gone must go too (the list only shrinks)."""
    stale = KNOWN - {v[:2] for v in _today()}
    assert not stale, f"these imports are gone; delete them from KNOWN in {Path(__file__).name}: {sorted(stale)}"


def test_the_checker_sees_every_module():
    names = {module_name(p, PACKAGE) for p in PACKAGE.rglob("*.py")}
    assert {
        "gpuload",
        "gpuload.format.bundle",
        "gpuload.plan.plan",
        "gpuload.io.ring",
        "gpuload.backend.cuda",
        "gpuload.scheduler",
        "gpuload.graph.store",
        "gpuload.graph.ops",
        "gpuload.graph.scopes",
        "gpuload.graph.variables",
    } <= names
    # Resolution of `from gpuload import config` and of relative imports, on real modules.
    assert "gpuload.config" in imports(PACKAGE / "format" / "reader.py", PACKAGE)
    assert "gpuload.format.crc" in imports(PACKAGE / "format" / "sstable.py", PACKAGE)


@pytest.fixture(scope="module")
def _copy(tmp_path_factory):
    root = tmp_path_factory.mktemp("layering") / "gpuload"
    shutil.copytree(PACKAGE, root, ignore=shutil.ignore_patterns("__pycache__"))
    return root


@pytest.fixture
def tree(_copy):
    """A scratch copy of the package to plant imports in (restored after each test)."""
    before = {p: p.read_bytes() for p in _copy.rglob("*.py")}
    assert violations(_copy) == _today()
    yield _copy
    for p in set(_copy.rglob("*.py")) - set(before):
        p.unlink()
    for p, text in before.items():
        p.write_bytes(text)


PLANTED = [
    # (file, planted line(s), the (importer, imported) that must be reported)
    ("format/crc.py", "from gpuload.io import ring", ("gpuload.format.crc", "gpuload.io.ring")),
    ("format/crc.py", "def f():\n    import cupy", ("gpuload.format.crc", "cupy")),
    ("format/slices.py", "from ..plan import plan", ("gpuload.format.slices", "gpuload.plan.plan")),
    ("plan/copies.py", "from gpuload import scheduler", ("gpuload.plan.copies", "gpuload.scheduler")),
    ("plan/plan.py", "import cupy.cuda", ("gpuload.plan.plan", "cupy.cuda")),
    ("io/ring.py", "from gpuload.backend import host", ("gpuload.io.ring", "gpuload.backend.host")),
    ("backend/host.py", "def f():\n    from .. import loader", ("gpuload.backend.host", "gpuload.loader")),
    ("backend/placement.py", "from gpuload.graph import store", ("gpuload.backend.placement", "gpuload.graph.store")),
    ("scheduler.py", "import gpuload.loader", ("gpuload.scheduler", "gpuload.loader")),
    ("errors.py", "from gpuload.format import crc", ("gpuload.errors", "gpuload.format.crc")),
    ("devices.py", "from gpuload.backend import placement", ("gpuload.devices", "gpuload.backend.placement")),
    ("loader.py", "from gpuload.graph import partition", ("gpuload.loader", "gpuload.graph.partition")),
    ("distributed/load.py", "from gpuload.graph import vocab", ("gpuload.distributed.load", "gpuload.graph.vocab")),
    # The seam issue 9 closed: the loader and the collective load see requests, never variables.
    ("loader.py", "from gpuload.graph import store", ("gpuload.loader", "gpuload.graph.store")),
    ("loader.py", "def f():\n    from gpuload.graph.ops import _assign_all", ("gpuload.loader", "gpuload.graph.ops")),
    ("distributed/load.py", "from gpuload.graph import store", ("gpuload.distributed.load", "gpuload.graph.store")),
    ("distributed/__init__.py", "import gpuload.graph.variables", ("gpuload.distributed", "gpuload.graph.variables")),
]


@pytest.mark.parametrize("file,line,expected", PLANTED, ids=[p[0] + ":" + p[1].split()[-1] for p in PLANTED])
def test_a_planted_upward_import_fails(tree, file, line, expected):
    path = tree / file
    path.write_text(path.read_text() + "\n\n" + line + "\n")
    found = violations(tree)
    assert expected in {v[:2] for v in found}
    assert expected not in KNOWN
    # ... and the real test would report it.
    assert {v for v in found if v[:2] not in KNOWN} - _today()


def test_a_new_module_importing_graph_fails(tree):
    (tree / "api.py").write_text("def load():\n    from gpuload.graph.store import get_variable\n")
    assert ("gpuload.api", "gpuload.graph.store") in {v[:2] for v in violations(tree)}
    # The clients allowed to import it are not reported.
    (tree / "api.py").unlink()
    (tree / "cli.py").write_text((tree / "cli.py").read_text() + "\nimport gpuload.graph.store\n")
    assert violations(tree) == _today()


def test_tf_device_is_a_plain_function_not_a_callable_module():
    """``gpuload.device`` is TensorFlow's ``tf.device``; importing the backends does not shadow it."""
    import inspect
    import types

    import gpuload
    import gpuload.backend.host  # noqa: F401  (a submodule import must not rebind gpuload.device)

    assert inspect.isfunction(gpuload.device) and not isinstance(gpuload.device, types.ModuleType)
    assert type(gpuload.backend) is types.ModuleType  # no module-class swap anywhere
    with gpuload.device("/cpu:0") as dev:
        assert dev == "/device:CPU:0"
