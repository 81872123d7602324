"""Size of the CPU and CUDA images' Python environment (/opt/venv), without a Docker engine.

There is no Docker engine (and no pip cache of the 4 GB of CUDA wheels) on the dev machine, so
the images are not built here. Instead, for each image, this adds up what its Dockerfile puts in
/opt/venv:

* an empty venv with pip (``python -m venv``, built and measured here);
* every distribution pinned in deploy/docker/constraints.txt, at the size its installed files
  (pip's RECORD, .pyc included) take in this environment, which has those exact versions
  (a version that differs is flagged);
* streaminfer's own packages and schemas.

The CUDA image installs all of that. The CPU image is an estimate: the same set minus the
distributions only the CUDA torch needs (``nvidia-*``, ``cuda-*``, ``triton``) and minus the
CUDA-only libraries inside torch (``libtorch_cuda*``, ``libc10_cuda``, ``libcaffe2_nvrtc``,
``libtorch_nvshmem``); the CPU wheel from download.pytorch.org cannot be fetched here to
measure. The base image (python:3.11.x-slim-bookworm) is not included in either figure.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from _common import docs_footer, markdown_table, start_run, write_docs_section  # noqa: E402

CONSTRAINTS = ROOT / "deploy/docker/constraints.txt"
PACKAGES = ["streaminfer", "streams", "models", "connectors", "schemas", "deploy/local"]
CUDA_ONLY_DIST = re.compile(r"^(nvidia-|cuda-|triton$)")
CUDA_ONLY_TORCH_LIB = re.compile(r"^lib(torch_cuda|c10_cuda|caffe2_nvrtc|torch_nvshmem)")
MB = 1e6


def pins() -> dict[str, str]:
    out = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            out[canonicalize_name(name)] = version
    return out


def dist_sizes(name: str) -> tuple[int, int, str]:
    """(bytes of the installed files, bytes of CUDA-only torch libraries among them, version)."""
    dist = md.distribution(name)
    total = cuda_only = 0
    for f in dist.files or []:
        path = Path(str(f.locate()))
        if path.is_file():
            size = path.stat().st_size
            total += size
            if name == "torch" and CUDA_ONLY_TORCH_LIB.match(path.name):
                cuda_only += size
    return total, cuda_only, dist.version


def tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*")
               if p.is_file() and "__pycache__" not in p.parts)


def empty_venv_size() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "venv", f"{tmp}/venv"], check=True)
        return tree_size(Path(tmp) / "venv") + sum(
            p.stat().st_size for p in (Path(tmp) / "venv").rglob("__pycache__/*") if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-docs", action="store_true",
                        help="rewrite the image_size section of docs/benchmarks.md")
    args = parser.parse_args()
    load = start_run()

    groups = {"torch": 0, "torch CUDA-only libraries": 0, "nvidia-*, cuda-*": 0, "triton": 0,
              "other dependencies": 0}
    mismatched = []
    for name, version in pins().items():
        size, cuda_only, installed = dist_sizes(name)
        if installed.split("+")[0] != version:
            mismatched.append(f"{name} {installed} (pinned {version})")
        if name == "torch":
            groups["torch"] += size - cuda_only
            groups["torch CUDA-only libraries"] += cuda_only
        elif name == "triton":
            groups["triton"] += size
        elif CUDA_ONLY_DIST.match(name):
            groups["nvidia-*, cuda-*"] += size
        else:
            groups["other dependencies"] += size
    groups["streaminfer (sources)"] = sum(tree_size(ROOT / p) for p in PACKAGES)
    groups["empty venv with pip"] = empty_venv_size()

    cuda_total = sum(groups.values())
    cpu_drop = groups["torch CUDA-only libraries"] + groups["nvidia-*, cuda-*"] + groups["triton"]
    cpu_total = cuda_total - cpu_drop
    rows = [(part, f"{size / MB:,.0f}", "yes" if part in ("torch CUDA-only libraries",
                                                            "nvidia-*, cuda-*", "triton")
             else "no") for part, size in groups.items()]
    table = markdown_table(["part of /opt/venv", "MB", "CUDA image only"], rows)
    summary = (f"CUDA image /opt/venv: {cuda_total / MB:,.0f} MB (measured from the installed "
               f"files); CPU image /opt/venv: about {cpu_total / MB:,.0f} MB (estimated); "
               f"CPU / CUDA = {cpu_total / cuda_total:.2f}")
    print(table)
    print(summary)
    if mismatched:
        print("installed versions differ from constraints.txt: " + ", ".join(mismatched))
    if args.write_docs:
        note = ("" if not mismatched else
                "\n\nVersions that differed from constraints.txt: " + ", ".join(mismatched) + ".")
        write_docs_section("image_size", f"""## Image size (`bench/image_size.py`)

The Python environment each image installs in /opt/venv (deploy/docker/Dockerfile: CPU,
Dockerfile.cuda: CUDA), without a Docker engine: the installed files (pip's RECORD, .pyc
included) of every distribution pinned in deploy/docker/constraints.txt, measured in the
environment the tests ran in (same versions), plus a fresh `python -m venv` and streaminfer's
sources. The CPU figure is an estimate: the CUDA set minus what only the CUDA torch brings
(nvidia-*/cuda-* wheels, triton, torch's CUDA libraries); the CPU wheel itself is on
download.pytorch.org, which this machine cannot reach. The base image (python:3.11 slim,
Debian bookworm) comes on top of both and is not measured.

{table}

{summary}.{note}

{docs_footer(load)}
""")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
