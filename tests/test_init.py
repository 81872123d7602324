"""``streaminfer init`` writes a project whose own test passes against the local services."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_init_refuses_a_folder_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("mine")
    proc = subprocess.run([sys.executable, "-m", "streaminfer", "init", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "not empty" in proc.stderr


@pytest.mark.services
def test_the_generated_project_passes_its_own_test(tmp_path: Path, services: Any) -> None:
    project = tmp_path / "churnapp"
    subprocess.run([sys.executable, "-m", "streaminfer", "init", str(project)], check=True)
    assert {p.name for p in project.iterdir()} >= {
        "churnapp.py", "models.py", "event.avsc", "label.avsc", "Dockerfile", "tests"}
    env = {**os.environ, "KAFKA_BOOTSTRAP": services.bootstrap,
           "REDIS_URL": services.redis_url,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                          cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "1 passed" in proc.stdout
