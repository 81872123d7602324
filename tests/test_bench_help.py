"""Every benchmark explains itself: ``--help`` prints its options and runs nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
# naive_faust.py is a Faust app: its --help is Faust's own command line.
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py")
                 if not p.name.startswith("_") and p.name != "naive_faust.py")


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_describes_the_options_and_runs_nothing(script: str) -> None:
    proc = subprocess.run([sys.executable, str(BENCH / script), "--help"], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage:"), proc.stdout[:500]
    assert "--" in proc.stdout.split("options:", 1)[-1]
