"""The layers point one way: ``models/`` is pure torch and ``connectors/`` knows no models.

``models/`` must run (and be unit-tested) without Redis, Kafka or Faust installed or reachable,
so it imports none of them, and not ``streaminfer.connectors`` either (every connector pulls in
a client library). ``connectors/`` and ``models/`` never import ``streaminfer.streams``, and
``connectors/`` never imports ``streaminfer.models``: ``streams/`` is the one layer that wires
the two together. Imports under ``if TYPE_CHECKING:`` are for type checkers only and allowed.
Pure: parses the source with :mod:`ast`, imports nothing, needs no servers.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

CLIENTS = ("redis", "confluent_kafka", "faust", "aiokafka")
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "models": (*CLIENTS, "streaminfer.connectors", "streaminfer.streams"),
    "connectors": ("streaminfer.models", "streaminfer.streams"),
}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.AST) -> Iterator[tuple[int, str, list[str]]]:
    """``(line, module, [module and module.name, ...])`` of every import run at run time.

    The candidates catch ``from streaminfer import connectors``, which names the package in the
    alias; imports under ``if TYPE_CHECKING:`` are skipped (their ``else`` does run).
    """
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name, [alias.name]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            yield node.lineno, node.module, names
        stack.extend(ast.iter_child_nodes(node))


def _banned(candidates: list[str], banned: tuple[str, ...]) -> str | None:
    """The first of ``banned`` that one of ``candidates`` is (or lies inside)."""
    for name in candidates:
        for b in banned:
            if name == b or name.startswith(b + "."):
                return b
    return None


def violations(layer: str) -> list[str]:
    """``path:line imports module`` for each forbidden import under ``layer/``."""
    found = []
    for path in sorted((ROOT / layer).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for line, module, candidates in sorted(_runtime_imports(tree)):
            banned = _banned(candidates, FORBIDDEN[layer])
            if banned is not None:
                where = path.relative_to(ROOT)
                found.append(f"{where}:{line} imports {module} ({layer}/ must not use {banned})")
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_only_what_it_may(layer: str) -> None:
    assert (ROOT / layer).is_dir()
    bad = violations(layer)
    assert not bad, "layering broken:\n  " + "\n  ".join(bad)


def test_the_check_catches_a_forbidden_import(tmp_path: Path) -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "import torch\n"
        "if TYPE_CHECKING:\n"
        "    from streaminfer.streams.settings import Settings\n"
        "def f() -> None:\n"
        "    import redis.asyncio\n"
        "from streaminfer import connectors\n"
    )
    found = {m: _banned(c, FORBIDDEN["models"]) for _, m, c in _runtime_imports(ast.parse(source))}
    assert found == {
        "typing": None, "torch": None,
        "redis.asyncio": "redis", "streaminfer": "streaminfer.connectors",
    }


def test_models_import_without_any_client_library() -> None:
    """Indirect needs too: every ``models`` module imports with the clients made unimportable."""
    dotted = (".".join(p.relative_to(ROOT).with_suffix("").parts)
              for p in (ROOT / "models").rglob("*.py"))
    modules = sorted("streaminfer." + d.removesuffix(".__init__") for d in dotted)
    blocked = ", ".join(f"{c!r}: None" for c in CLIENTS)
    code = (
        f"import sys; sys.modules.update({{{blocked}}})\n"  # None in sys.modules: ImportError
        "import importlib\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
    )
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}  # this checkout's code, whatever is installed
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, f"models/ needs a client library:\n{done.stderr[-2000:]}"


BUILT_IN_APPS = {"classifier", "recommender"}
#: Where app names may appear: the built-ins themselves, the settings' table of them, and the
#: demo, which publishes synthetic data shaped for the built-ins.
APP_NAME_ALLOWED = ("streams/apps/", "streams/settings.py", "streams/demo.py", "streams/cli/")


def test_the_pipeline_never_asks_which_app_it_runs() -> None:
    """Any app runs through the same code: no comparison with a built-in app's name."""
    found = []
    for path in sorted((ROOT / "streams").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(APP_NAME_ALLOWED):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Compare):
                values = [node.left, *node.comparators]
                names = {v.value for v in values if isinstance(v, ast.Constant)}
                if names & BUILT_IN_APPS:
                    found.append(f"{rel}:{node.lineno} compares with {sorted(names)}")
    assert not found, "\n".join(found)
