"""deploy/grafana/streaminfer.json only queries metrics that streams.observability registers.

A renamed metric otherwise leaves a dashboard panel silently empty. The metric names are taken
from each PromQL expression by removing what is not a metric (label matchers, ranges, strings,
functions, aggregation clauses, keywords, numbers) and compared with the sample names a fresh
``Observability`` registry can expose.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from streaminfer.streams.observability import Observability, metric_names

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy/grafana/streaminfer.json"
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
            "and", "or", "unless", "inf", "nan"}


def load() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dash["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # collapsed rows keep theirs inside
    return out


def exprs(dash: dict[str, Any]) -> list[tuple[str, str]]:
    found = [(p["title"], t["expr"]) for p in panels(dash) for t in p.get("targets", [])
             if t.get("expr")]
    for var in dash.get("templating", {}).get("list", []):
        query = var.get("query")
        text = query.get("query") if isinstance(query, dict) else query
        if var.get("type") == "query" and text:
            found.append((f"variable {var['name']}", text))
    return found


def metrics_in(expr: str) -> set[str]:
    """Metric names of a PromQL expression (or a Grafana ``label_values(metric, label)``)."""
    text = re.sub(r'"(?:\\.|[^"\\])*"', "", expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges, $__rate_interval
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"label_values\(([^,)]*),[^)]*\)", r"\1", text)  # keep the metric, not label
    text = re.sub(r"\b[a-zA-Z_][a-zA-Z0-9_]*\s*\(", "(", text)  # function names
    names = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", text))
    return {n for n in names if n.lower() not in KEYWORDS and not n.startswith("__")}


def test_expression_parser_finds_metrics_not_labels_or_functions() -> None:
    expr = ('histogram_quantile(0.99, sum by (le) (rate(streaminfer_x_bucket{app=~"$app", '
            'le!="+Inf"}[$__rate_interval]))) / on (app) group_left sum(up) and time()')
    assert metrics_in(expr) == {"streaminfer_x_bucket", "up"}
    assert metrics_in("label_values(streaminfer_events_total{a=\"b\"}, app)") == {
        "streaminfer_events_total"}


def test_every_panel_queries_registered_metrics() -> None:
    known = metric_names(Observability("classifier").registry)
    dash = load()
    unknown = sorted({f"{where}: {name}" for where, expr in exprs(dash)
                      for name in metrics_in(expr) if name not in known})
    assert not unknown, f"not registered by streams.observability: {unknown}"


def test_every_panel_has_a_query_and_an_id() -> None:
    dash = load()
    shown = [p for p in panels(dash) if p["type"] != "row"]
    assert all(p.get("targets") for p in shown)
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("needle", [
    "rate(streaminfer_events_total",  # throughput
    "streaminfer_consumer_lag",
    "histogram_quantile(0.99, sum by (le) (rate(streaminfer_event_latency_seconds_bucket",
    "histogram_quantile(0.5, sum by (le) (rate(streaminfer_event_latency_seconds_bucket",
    "streaminfer_batch_size_",
    "streaminfer_model_version_info",
    "streaminfer_progressive_auc",
    "streaminfer_rejected_total",
    "streaminfer_dead_letters_total",
    "streaminfer_lane_stalled",
])
def test_dashboard_shows(needle: str) -> None:
    assert any(needle in expr for _, expr in exprs(load())), needle


# ---------------------------------------------------------------- Prometheus and compose wiring

DEPLOY = DASHBOARD.parents[1]
ALERTS = DEPLOY / "prometheus/alerts.yml"
PROMETHEUS = DEPLOY / "prometheus/prometheus.yml"


def test_every_alert_queries_registered_metrics() -> None:
    import yaml

    known = metric_names(Observability("classifier").registry)
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} >= {"StreaminferConsumerLagHigh",
                                          "StreaminferLatencyP99High",
                                          "StreaminferDeadLetterRate", "StreaminferLaneStalled"}
    unknown = sorted({f"{r['alert']}: {name}" for r in rules for name in metrics_in(r["expr"])
                      if name not in known})
    assert not unknown, f"not registered by streams.observability: {unknown}"


def test_compose_prometheus_scrapes_the_workers_and_grafana_gets_the_dashboard() -> None:
    import yaml

    from streaminfer.streams.settings import Settings

    compose = yaml.safe_load((DEPLOY / "docker/compose.yaml").read_text())["services"]
    (job,) = yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]
    (sd,) = job["dns_sd_configs"]
    assert sd["port"] == Settings().metrics_port
    assert set(sd["names"]) <= set(compose) and "worker" in sd["names"]
    assert "ports" not in compose["worker"]  # --scale: no fixed host port per worker
    for service in ("prometheus", "grafana"):
        for volume in compose[service]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("../"):
                assert (DEPLOY / "docker" / source).resolve().exists(), volume
    assert "registry" in compose["schema-registry"]["profiles"]
    assert compose["worker"]["environment"]["STREAMINFER_CHECKPOINT_URL"].startswith(
        "redis://redis:")


def test_prometheus_and_grafana_files_pass_yamllint() -> None:
    import shutil
    import subprocess

    if not shutil.which("yamllint"):
        pytest.skip("yamllint not installed (pip install yamllint)")
    files = [ALERTS, PROMETHEUS, *sorted((DEPLOY / "grafana/provisioning").rglob("*.yaml"))]
    result = subprocess.run(
        ["yamllint", "--strict", "-d", "{extends: default, rules: {line-length: {max: 100}, "
         "document-start: disable, braces: {max-spaces-inside: 1}}}", *map(str, files)],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
