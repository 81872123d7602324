"""The public API is what ``import streaminfer`` offers, and every name of it is documented.

The API reference is built from the docstrings with pdoc, here as in CI."""

from __future__ import annotations

import doctest
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import streaminfer


def test_every_public_name_resolves_and_has_a_docstring() -> None:
    for name in streaminfer.__all__:
        value = getattr(streaminfer, name)
        assert (value.__doc__ or "").strip(), f"streaminfer.{name} has no docstring"


@pytest.mark.parametrize("module", ["streaminfer.streams.app", "streaminfer.models.module",
                                    "streaminfer.streams.worker", "streaminfer.streams.features"])
def test_docstring_examples_run(module: str) -> None:
    failed, _ = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert failed == 0


def test_the_api_reference_builds(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pdoc", "streaminfer", "-o", str(tmp_path)],
                   check=True, capture_output=True, timeout=300)
    page = (tmp_path / "streaminfer.html").read_text()
    for name in ("App", "Input", "Outputs", "Learning", "KeyedState", "Features", "Worker",
                 "TorchModel", "StreaminferError"):
        assert f'id="{name}"' in page, name
