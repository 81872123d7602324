"""The built wheel, installed outside the repository, is one import root and a working CLI.

A user's project often has its own ``models`` package; streaminfer must not shadow it, and
``streaminfer dev``/``demo`` must find their services script in a plain (non-editable) install.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out), str(REPO)], check=True, cwd=out)
    (found,) = out.glob("streaminfer-*.whl")
    return found


def test_the_wheel_adds_one_top_level_name(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/", 1)[0] for name in names}
    assert {t for t in top if not t.endswith((".dist-info", ".data"))} == {"streaminfer"}
    for needed in ("streaminfer/deploy/local/services.sh", "streaminfer/deploy/local/kafka-pom.xml",
                   "streaminfer/schemas/event.avsc", "streaminfer/streams/worker.py",
                   "streaminfer/streams/apps/classifier.py", "streaminfer/py.typed"):
        assert needed in names


def test_installed_outside_the_repo_beside_a_user_models_package(wheel: Path,
                                                                 tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    # The heavy dependencies (torch, faust...) come from this interpreter's site-packages;
    # streaminfer itself only from the wheel.
    venv.create(env_dir, with_pip=True, system_site_packages=True)
    python = env_dir / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    "--ignore-installed", str(wheel)], check=True)
    project = tmp_path / "project"
    (project / "models").mkdir(parents=True)
    (project / "models" / "__init__.py").write_text("WHOSE = 'the user'\n")
    check = (
        "import models, streaminfer, streaminfer.streams.worker as w\n"
        "from streaminfer.streams.cli.dev import SERVICES_SCRIPT\n"
        "from streaminfer.connectors.avro import load_schema\n"
        "assert models.WHOSE == 'the user', models.__file__\n"
        f"assert streaminfer.__file__.startswith({str(env_dir)!r}), streaminfer.__file__\n"
        "assert SERVICES_SCRIPT.is_file(), SERVICES_SCRIPT\n"
        "assert load_schema('event')['name'] == 'Event'\n"
        "assert streaminfer.App.__module__ == 'streaminfer.streams.app'\n"
    )
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only the wheel
    subprocess.run([str(python), "-c", check], check=True, cwd=project, env=clean)
    help_text = subprocess.run([str(env_dir / "bin" / "streaminfer"), "--help"], check=True,
                               cwd=project, capture_output=True, text=True, env=clean).stdout
    assert "worker" in help_text and "dev" in help_text
