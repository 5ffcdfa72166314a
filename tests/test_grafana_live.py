"""Every dashboard query and alert expression against a real Prometheus scraping the real
exporter on simulated traffic; the shift alert fires for the shifted model only."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from pathlib import Path

import yaml

from .helpers import REFERENCE_SOURCE, simulate_with_shift
from .processes import ExporterProcess, PrometheusProcess, wait_until

ROOT = Path(__file__).resolve().parent.parent
SHIFTED = {"monitor": "digits", "model": "digits-rf", "version": "v1", "segment": "eu"}


def config() -> dict:  # type: ignore[type-arg]
    return {
        "exporter": {"refresh_interval": "2s", "bucket": "1m"},
        "sources": [{**REFERENCE_SOURCE, "name": "reference"}],
        "monitors": [
            {
                "source": "reference",
                "name": "digits",
                "model": "digits-rf",
                "window": "30m",
                "reference": {"kind": "trailing", "length": "2h"},
                "team": "vision",
                "recall_objective": 0.9,
            },
            {
                "source": "reference",
                "name": "intents",
                "model": "intent-router",
                "window": "30m",
                "reference": {"kind": "trailing", "length": "2h"},
                "team": "support-ml",
            },
            {
                "source": "reference",
                "name": "fraud-canary",
                "model": "fraud-gbm",
                "window": "30m",
                "reference": {"kind": "version", "version": "v3"},
                "team": "fraud-ml",
                "classes": ["legit", "fraud"],
                "positive_class": "fraud",
                "decision_thresholds": [0.3, 0.5, 0.7],
                "cost_matrix": {"fraud": {"legit": 50}, "legit": {"fraud": 2}},
            },
        ],
    }


def dashboard_queries() -> list[tuple[str, str]]:
    out = []
    for path in sorted((ROOT / "grafana" / "dashboards").glob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                out.append((f"{path.stem}: {panel['title']} ({target['refId']})", target["expr"]))
        for variable in dashboard["templating"]["list"]:
            if isinstance(variable.get("query"), dict):
                inner = re.fullmatch(r"label_values\((.*), *\w+\)", variable["query"]["query"]).group(1)
                out.append((f"{path.stem}: variable {variable['name']}", inner))
    return out


# The two-class monitor with decision thresholds, a cost matrix and scores: panels that only
# such a monitor fills are checked on it.
BINARY = {"monitor": "fraud-canary", "model": "fraud-gbm", "version": "v4-canary", "segment": "eu"}


def substitute(expr: str, values: dict[str, str] = SHIFTED) -> str:
    values = {**values, "__rate_interval": "1m"}
    return re.sub(r"\$\{?(\w+)\}?", lambda m: values[m.group(1)], expr)


def alert_rules() -> dict[str, str]:
    rules = {}
    for path in (ROOT / "prometheus" / "rules").glob("*.yml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            rules.update({r["alert"]: r["expr"] for r in group["rules"] if "alert" in r})
    return rules


def test_dashboards_and_alerts_against_live_prometheus(
    cli, clean_reference_schema, exporter_url, tmp_path, prometheus_binary, promtool
):
    simulate_with_shift(
        clean_reference_schema, ["digits-rf", "intent-router", "fraud-gbm"], ["digits-rf"], seed=17
    )
    exporter = ExporterProcess(cli, config(), exporter_url, tmp_path)
    # The project's rule file as it is, evaluated every 5 s instead of 30 s to keep the test short.
    source = (ROOT / "prometheus" / "rules" / "confusion-exporter.rules.yml").read_text()
    rules = tmp_path / "rules.yml"
    rules.write_text(source.replace("interval: 30s", "interval: 5s"))
    assert rules.read_text() != source
    prometheus = PrometheusProcess(prometheus_binary, [f"127.0.0.1:{exporter.port}"], tmp_path, [str(rules)])
    try:
        # Wait for the recording rules' first evaluation with data.
        wait_until(lambda: prometheus.query("confusion:shift_top_cell:residual"), timeout=90, interval=1)
        wait_until(lambda: prometheus.query("rate(confusion_exporter_refreshes_total[1m])"), timeout=30)

        empty = []
        for name, expr in dashboard_queries():
            values = BINARY if "confusion_threshold_matrix_predictions" in expr else SHIFTED
            if not prometheus.query(substitute(expr, values)):
                empty.append(f"{name}: {substitute(expr, values)}")
        assert not empty, "dashboard queries without data:\n" + "\n".join(empty)

        firing = {}
        for name, expr in alert_rules().items():
            firing[name] = prometheus.query(expr)  # raises if the expression fails to evaluate
        shifted = {
            (r["metric"]["monitor"], r["metric"]["segment"]) for r in firing["ConfusionErrorPatternShift"]
        }
        assert ("digits", "eu") in shifted and ("digits", "us") in shifted
        assert not any(monitor == "intents" for monitor, _ in shifted)  # no shift injected there
        top = next(r for r in firing["ConfusionErrorPatternShift"] if r["metric"]["segment"] == "eu")
        assert top["metric"]["team"] == "vision"
        assert (top["metric"]["true_class"], top["metric"]["predicted_class"]) in {("8", "1"), ("3", "8")}
        for healthy in ("ConfusionExporterDown", "ConfusionSnapshotStale", "ConfusionDatabaseDown"):
            assert not firing[healthy], healthy

        # Prometheus evaluates the project's rule file itself: the page is pending (for: 15m).
        pending = wait_until(
            lambda: prometheus.query('ALERTS{alertname="ConfusionErrorPatternShift"}'), timeout=75, interval=1
        )
        assert {r["metric"]["monitor"] for r in pending} == {"digits"}
        assert {r["metric"]["alertstate"] for r in pending} == {"pending"}

        # Every metric family, including cost, confidence and threshold matrices, passes promtool.
        with urllib.request.urlopen(exporter.url("/metrics"), timeout=10) as response:
            body = response.read()
        for family in (
            b"confusion_threshold_matrix_predictions{",
            b"confusion_calibration_error{",
            b"confusion_error_cost_increase_ratio{",
            b"confusion_mean_confidence{",
        ):
            assert family in body, family
        check = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True)
        assert check.returncode == 0, check.stderr.decode() + check.stdout.decode()
    finally:
        prometheus.stop()
        exporter.stop()
