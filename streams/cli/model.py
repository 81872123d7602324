"""``streaminfer model``: the model registry (versions, labels, promote, rollback, export).

Workers of an app serve the version its ``active`` label names and follow the label within
about a second (docs/lifecycle.md), so ``promote`` and ``rollback`` act on live workers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from streaminfer.streams.cli._common import settings_from

__all__ = ["model"]


def _registry(ctx: click.Context, url: str | None) -> Any:
    from streaminfer.errors import ConfigError
    from streaminfer.streams.wiring import registry_from_settings

    settings = settings_from(ctx, **({"registry_url": url} if url else {}))
    registry = registry_from_settings(settings)
    if registry is None:
        raise ConfigError("no registry: give --registry URL or set STREAMINFER_REGISTRY_URL")
    return registry


def _run(fn: Any) -> Any:
    from streaminfer.errors import StreaminferError

    try:
        return fn()
    except (StreaminferError, LookupError) as exc:
        raise click.ClickException(str(exc)) from None


_registry_option = click.option(
    "--registry", "registry_url", metavar="URL",
    help="Registry: a directory, file:///dir, redis://... or s3://bucket/prefix [env "
    "STREAMINFER_REGISTRY_URL].")


@click.group()
def model() -> None:
    """Registered model versions: list, show, register, promote, rollback, label, ensemble,
    export, diff, compare, search."""


@model.command("list")
@click.argument("name", required=False)
@_registry_option
@click.pass_context
def list_(ctx: click.Context, name: str | None, registry_url: str | None) -> None:
    """Models, or the versions of NAME with their labels."""
    def go() -> None:
        registry = _registry(ctx, registry_url)
        if name is None:
            for found in registry.names():
                labels = registry.labels(found)
                click.echo(f"{found}\tversions={len(registry.versions(found))}\t"
                           + " ".join(f"{k}=v{v}" for k, v in sorted(labels.items())))
            return
        labels = registry.labels(name)
        for version in registry.versions(name):
            manifest = registry.manifest(name, version)
            tags = ",".join(k for k, v in sorted(labels.items()) if v == version)
            click.echo(f"v{version}\t{manifest['created']}\tparent="
                       f"{manifest.get('parent')}\t{manifest.get('source')}\t{tags}")
    _run(go)


@model.command()
@click.argument("name")
@click.argument("version", type=int)
@_registry_option
@click.pass_context
def show(ctx: click.Context, name: str, version: int, registry_url: str | None) -> None:
    """The manifest of VERSION of NAME (JSON)."""
    _run(lambda: click.echo(json.dumps(_registry(ctx, registry_url).manifest(name, version),
                                       indent=2, sort_keys=True)))


@model.command()
@click.argument("name")
@click.argument("source")
@click.option("--parent", type=int, help="Version this one derives from [default: active].")
@click.option("--metrics", "metrics_json", help="JSON object of metrics to record.")
@click.option("--promote", "promote_now", is_flag=True, help="Make it the active version.")
@_registry_option
@click.pass_context
def register(ctx: click.Context, name: str, source: str, parent: int | None,
             metrics_json: str | None, promote_now: bool, registry_url: str | None) -> None:
    """Register SOURCE as the next version of NAME.

    SOURCE is a checkpoint directory (safetensors + manifest), params:APP:latest (a live
    worker's published parameters in Redis), or a TorchScript / torch.export (.pt2) file.
    """
    def go() -> None:
        from streaminfer.connectors.params_publisher import read_params, read_params_manifest
        from streaminfer.connectors.redis_client import connect as connect_redis
        from streaminfer.models import checkpoint
        from streaminfer.models.export import tensors_from_file

        registry = _registry(ctx, registry_url)
        metrics = json.loads(metrics_json) if metrics_json else None
        common = {"parent": parent, "metrics": metrics, "source": source}
        if source.startswith("params:"):
            _, app, version = [*source.split(":"), "latest"][:3]
            settings = settings_from(ctx)
            client = connect_redis(settings.redis_url)
            tensors = read_params(client, app, version)
            manifest = read_params_manifest(client, app, version)
            number = registry.register_tensors(
                name, tensors, model_class=manifest.get("model_class"),
                model_name=manifest.get("name"), config=manifest.get("config"), **common)
        elif Path(source).is_dir():
            manifest, tensors = checkpoint.read_tensors(
                source, max_bytes=settings_from(ctx).max_model_bytes)
            number = registry.register_tensors(
                name, tensors, model_class=manifest.get("model_class"),
                model_name=manifest.get("name"), config=manifest.get("config"), **common)
        elif Path(source).is_file():
            number = registry.register_tensors(name, tensors_from_file(source),
                                               model_class=None, **common)
        else:
            raise click.ClickException(f"{source}: not a checkpoint directory, a model file "
                                       "or params:APP[:VERSION]")
        if promote_now:
            registry.promote(name, number)
        click.echo(f"registered {name} v{number}" + (" (active)" if promote_now else ""))
    _run(go)


@model.command()
@click.argument("name")
@click.argument("version", type=int)
@_registry_option
@click.pass_context
def promote(ctx: click.Context, name: str, version: int, registry_url: str | None) -> None:
    """Point NAME's active label at VERSION; its workers switch within seconds."""
    def go() -> None:
        _registry(ctx, registry_url).promote(name, version)
        click.echo(f"{name}: active -> v{version}")
    _run(go)


@model.command()
@click.argument("name")
@click.option("--to", "to", type=int, help="Version to return to [default: the previous "
              "active one].")
@_registry_option
@click.pass_context
def rollback(ctx: click.Context, name: str, to: int | None, registry_url: str | None) -> None:
    """Point NAME's active label back (at --to, or at the version active before)."""
    def go() -> None:
        version = _registry(ctx, registry_url).rollback(name, to)
        click.echo(f"{name}: active -> v{version}")
    _run(go)


@model.command()
@click.argument("name")
@click.argument("label")
@click.argument("version", required=False)
@_registry_option
@click.pass_context
def label(ctx: click.Context, name: str, label: str, version: str | None,
          registry_url: str | None) -> None:
    """Point LABEL (canary, shadow, any name) at VERSION; 'none' removes it; no VERSION
    shows it."""
    def go() -> None:
        registry = _registry(ctx, registry_url)
        if version is None:
            click.echo(registry.labels(name).get(label, "none"))
            return
        registry.label(name, label, None if version == "none" else int(version))
        click.echo(f"{name}: {label} -> {version}")
    _run(go)


@model.command()
@click.argument("name")
@click.argument("versions", nargs=-1, type=int)
@click.option("--weights", type=click.Choice(["learnt", "equal"]), default="learnt",
              show_default=True, help="learnt: Hedge on each member's progressive loss; "
              "equal: the plain mean.")
@click.option("--eta", type=click.FloatRange(min=0, min_open=True), default=0.05,
              show_default=True, help="Learning rate of learnt weights (per label of loss).")
@click.option("--off", is_flag=True, help="End the ensemble: the active version serves.")
@_registry_option
@click.pass_context
def ensemble(ctx: click.Context, name: str, versions: tuple[int, ...], weights: str,
             eta: float, off: bool, registry_url: str | None) -> None:
    """Serve the mean of VERSIONS' scores (stamped ens(v3,v5)); no VERSIONS shows it."""
    def go() -> None:
        registry = _registry(ctx, registry_url)
        if off or versions:
            registry.set_ensemble(name, None if off else list(versions), weights, eta)
        click.echo(json.dumps(registry.ensemble(name)))
    _run(go)


@model.command()
@click.argument("name")
@click.argument("version", type=int)
@click.option("--out", "out", type=click.Path(path_type=Path), required=True,
              help="File to write (.pt for TorchScript, .pt2 for torch.export).")
@click.option("--format", "kind", type=click.Choice(["torchscript", "export"]),
              help="Default: by --out's suffix (.pt2 = export).")
@click.option("--app", "app_spec", help="The app whose model the version fits [default: "
              "NAME if built in, else STREAMINFER_APP].")
@_registry_option
@click.pass_context
def export(ctx: click.Context, name: str, version: int, out: Path, kind: str | None,
           app_spec: str | None, registry_url: str | None) -> None:
    """Write VERSION of NAME as a TorchScript or torch.export file."""
    def go() -> None:
        from streaminfer.models.export import export_file
        from streaminfer.streams.app import load_app
        from streaminfer.streams.settings import BUILT_IN

        settings = settings_from(ctx, app=app_spec or (name if name in BUILT_IN else None))
        registry = _registry(ctx, registry_url)
        target = load_app(settings.app, settings).build_model(settings)
        registry.load_into(target, name, version)
        export_file(target, out, kind or ("export" if out.suffix == ".pt2" else "torchscript"))
        click.echo(f"wrote {out}")
    _run(go)


@model.command()
@click.argument("name")
@click.argument("a", type=int)
@click.argument("b", type=int)
@_registry_option
@click.pass_context
def diff(ctx: click.Context, name: str, a: int, b: int, registry_url: str | None) -> None:
    """Per tensor of versions A and B: shapes and max / mean absolute difference."""
    def go() -> None:
        registry = _registry(ctx, registry_url)
        for key, row in registry.diff(name, a, b).items():
            click.echo(f"{key}\t{json.dumps(row)}")
    _run(go)


@model.command()
@click.argument("name")
@click.pass_context
def compare(ctx: click.Context, name: str) -> None:
    """The live per-version metrics of app NAME: its active, shadow and canary versions,
    scored by the workers on the same labels (test-then-train), side by side."""
    def go() -> None:
        from streaminfer.connectors.redis_client import connect
        from streaminfer.streams.candidates import compare as table

        client = connect(settings_from(ctx).redis_url)
        snaps = [json.loads(raw) for key in sorted(client.scan_iter(f"metrics:{name}:*"))
                 if (raw := client.get(key))]
        rows = table(snaps)
        if not rows:
            raise click.ClickException(f"no per-version metrics from {name}'s workers (none "
                                       "running, or no shadow/canary label, or no labels yet)")
        keys = [k for k in ("count", "auc", "logloss", "accuracy", "rmse", "mae", "rows",
                            "errors") if any(k in r for r in rows.values())]
        click.echo("version\t" + "\t".join("labels" if k == "count" else k for k in keys))
        for version, row in sorted(rows.items()):
            cells = [f"{row[k]:.4f}" if k in row and k not in ("count", "rows", "errors")
                     else (str(int(row[k])) if k in row else "-") for k in keys]
            click.echo(f"{version}\t" + "\t".join(cells))
    _run(go)


@model.command()
@click.argument("name")
@click.option("--grid", metavar="SPEC", help="Candidates: 'lr=0.01,0.05,0.1;l2=0,1e-4' (every "
              "combination, at most 8; axes lr, l2, optimizer).")
@click.option("--min-labels", type=click.IntRange(min=1), default=2000, show_default=True,
              help="Labels the best candidate needs (over all workers) before it may win.")
@click.option("--margin", type=click.FloatRange(min=0), default=0.01, show_default=True,
              help="How much it must beat the active version by, over the same labels, on "
              "the primary metric (AUC, RMSE or accuracy).")
@click.option("--promote/--no-promote", default=True, show_default=True,
              help="Register and promote the winner.")
@click.option("--status", is_flag=True, help="Print the leaderboard, best first.")
@click.option("--stop", is_flag=True, help="End the search; its learners are dropped.")
@click.pass_context
def search(ctx: click.Context, name: str, grid: str | None, min_labels: int, margin: float,
           promote: bool, status: bool, stop: bool) -> None:
    """Online hyperparameter search on app NAME's live stream: its workers run one learner
    per point of --grid beside the active version, each learning from the same labels and
    scored by progressive validation; the leaderboard lives in Redis (search:NAME:board)."""
    def go() -> None:
        from streaminfer.connectors.redis_client import connect
        from streaminfer.streams.search import leaderboard, start_search

        client = connect(settings_from(ctx).redis_url)
        if stop:
            client.delete(f"search:{name}")
            click.echo(f"search of {name} stopped")
        elif grid is not None:
            spec = start_search(client, name, grid, min_labels=min_labels, margin=margin,
                                promote=promote)
            click.echo(f"search {spec['id']}: {len(spec['points'])} candidates for {name}'s "
                       "workers (they start within a registry poll)")
        elif not status:
            raise click.UsageError("give --grid, --status or --stop")
        if status:
            board = leaderboard(client, name)
            spec = board["search"]
            if spec is None:
                raise click.ClickException(f"no search for {name}")
            state = (f"done: {spec.get('winner')} promoted as v{spec['promoted']}"
                     if spec.get("done") else "running")
            click.echo(f"search {spec['id']} ({state})")
            metric = board.get("metric", "auc")
            click.echo(f"rank\tparams\tlabels\t{metric}\tactive {metric}")
            for rank, row in enumerate(board["rows"], 1):
                click.echo(f"{rank}\t{row['params']}\t{int(row['count'])}\t"
                           f"{row[metric]:.4f}\t{row['active'][metric]:.4f}")
    _run(go)
