"""The real exporter process: outages, scrapes by a real Prometheus, promtool, the CLI snapshot."""

from __future__ import annotations

import subprocess
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import yaml
from sklearn.metrics import confusion_matrix

from confusion_exporter.matrices import class_order

from .conftest import run_cli
from .helpers import Row, create_scored_events, exporter_config, insert_rows
from .processes import ExporterProcess, PrometheusProcess, TcpProxy, http_get, value, wait_until

MONITOR = "shop:m"


def seeded_rows(seed: int = 11) -> tuple[list[Row], dict[str, np.ndarray], list[str]]:
    """Rows well inside the current (20 min ago) and reference (2 h ago) windows."""
    rng = np.random.default_rng(seed)
    now = datetime.now(UTC)
    classes = ["ham", "spam", "phish"]
    rows, expected = [], {}
    for window, age in (("current", timedelta(minutes=20)), ("reference", timedelta(hours=2))):
        truth = rng.choice(classes, size=400, p=[0.7, 0.2, 0.1])
        predicted = np.where(rng.random(400) < 0.85, truth, rng.choice(classes, size=400))
        rows += [Row("m", "v1", now - age, str(p), str(t)) for t, p in zip(truth, predicted, strict=True)]
        expected[window] = confusion_matrix(truth, predicted, labels=list(class_order(classes)))
    return rows, expected, list(class_order(classes))


def test_database_outage_at_start_and_mid_run(cli, admin_engine, exporter_url, tmp_path):
    table = create_scored_events(admin_engine)
    rows, expected, classes = seeded_rows()
    insert_rows(admin_engine, table, rows)
    proxy = TcpProxy(exporter_url)
    exporter = ExporterProcess(cli, exporter_config(table), proxy.url_for(exporter_url), tmp_path)
    try:
        # Down at start: the exporter serves its health, counts failures, and waits.
        m = wait_until(
            lambda: (
                (x := exporter.metrics())
                and value(x, "confusion_exporter_refresh_failures_total", monitor=MONITOR) >= 2
                and x
            )
        )
        assert value(m, "confusion_exporter_last_refresh_success_timestamp_seconds", monitor=MONITOR) == 0
        assert value(m, "confusion_exporter_database_up") == 0
        assert not any(name == "confusion_matrix_predictions" for name, _ in m)

        proxy.start()
        m = wait_until(
            lambda: (
                (x := exporter.metrics())
                and value(x, "confusion_exporter_last_refresh_success_timestamp_seconds", monitor=MONITOR) > 0
                and x
            )
        )
        assert_matrix(m, expected, classes)

        # Down mid-run: the last good snapshot stays, scrapes stay fast, failures show it.
        proxy.stop()
        failures_before = value(m, "confusion_exporter_refresh_failures_total", monitor=MONITOR)
        m = wait_until(
            lambda: (
                (x := exporter.metrics())
                and value(x, "confusion_exporter_refresh_failures_total", monitor=MONITOR)
                >= failures_before + 3
                and x
            )
        )
        last_success = value(m, "confusion_exporter_last_refresh_success_timestamp_seconds", monitor=MONITOR)
        assert value(m, "confusion_exporter_database_up") == 0
        assert_matrix(m, expected, classes)
        latencies = [http_get(exporter.url("/metrics"))[2] for _ in range(50)]
        assert max(latencies) < 0.5, latencies  # a scrape never waits on the database
        status, _, _ = http_get(exporter.url("/healthz"))
        assert status == 200  # the process is healthy; the database is not its health

        proxy.start()
        m = wait_until(
            lambda: (
                (x := exporter.metrics())
                and value(x, "confusion_exporter_last_refresh_success_timestamp_seconds", monitor=MONITOR)
                > last_success
                and x
            )
        )
        assert value(m, "confusion_exporter_database_up") == 1
        assert_matrix(m, expected, classes)
    finally:
        proxy.stop()
        code = exporter.stop()
    assert code == 0
    log = exporter.log()
    password = exporter_url.split(":")[2].split("@")[0]
    assert password not in log
    assert "monitor refresh failed" in log and "stopped" in log


def assert_matrix(m: dict, expected: dict, classes: list[str]) -> None:  # type: ignore[type-arg]
    for window, matrix in expected.items():
        for i, t in enumerate(classes):
            for j, p in enumerate(classes):
                got = value(
                    m,
                    "confusion_matrix_predictions",
                    monitor=MONITOR,
                    model="m",
                    version="v1",
                    segment="__null__",
                    window=window,
                    true_class=t,
                    predicted_class=p,
                    correct=str(i == j).lower(),
                )
                assert got == matrix[i, j], (window, t, p)


def test_real_prometheus_scrapes_the_exact_matrix(
    cli, admin_engine, exporter_url, tmp_path, prometheus_binary
):
    table = create_scored_events(admin_engine)
    rows, expected, classes = seeded_rows(seed=12)
    insert_rows(admin_engine, table, rows)
    exporter = ExporterProcess(cli, exporter_config(table), exporter_url, tmp_path)
    prometheus = PrometheusProcess(prometheus_binary, [f"127.0.0.1:{exporter.port}"], tmp_path)
    try:
        wait_until(lambda: prometheus.query('confusion_matrix_predictions{window="current"}'), timeout=30)
        (up,) = prometheus.query('up{job="confusion-exporter"}')
        assert up["value"][1] == "1"
        for window, matrix in expected.items():
            result = prometheus.query(
                f'confusion_matrix_predictions{{monitor="{MONITOR}",window="{window}"}}'
            )
            got = {
                (r["metric"]["true_class"], r["metric"]["predicted_class"]): float(r["value"][1])
                for r in result
            }
            assert len(got) == len(classes) ** 2  # every cell, zeros included
            for i, t in enumerate(classes):
                for j, p in enumerate(classes):
                    assert got[(t, p)] == matrix[i, j]
            # Summing the cells means something: the window's labeled predictions.
            (total,) = prometheus.query(f'sum(confusion_matrix_predictions{{window="{window}"}})')
            (labeled,) = prometheus.query(f'confusion_labeled_predictions{{window="{window}"}}')
            assert float(total["value"][1]) == float(labeled["value"][1]) == matrix.sum()
        # PromQL cannot compare two labels; the correct label makes accuracy a query.
        (acc,) = prometheus.query(
            'sum(confusion_matrix_predictions{window="current",correct="true"}) '
            '/ sum(confusion_matrix_predictions{window="current"})'
        )
        (exported,) = prometheus.query('confusion_accuracy{window="current"}')
        assert float(acc["value"][1]) == pytest.approx(float(exported["value"][1]))
    finally:
        prometheus.stop()
        exporter.stop()


def test_live_metrics_and_snapshot_cli_pass_promtool(cli, admin_engine, exporter_url, tmp_path, promtool):
    table = create_scored_events(admin_engine)
    rows, _, _ = seeded_rows(seed=13)
    insert_rows(admin_engine, table, rows)
    config = exporter_config(table)
    exporter = ExporterProcess(cli, config, exporter_url, tmp_path)
    try:
        wait_until(
            lambda: (
                ("confusion_matrix_predictions",)
                and any(name == "confusion_matrix_predictions" for name, _ in exporter.metrics())
            )
        )
        _, body, _ = http_get(exporter.url("/metrics"))
        status, page, _ = http_get(exporter.url("/"))
    finally:
        exporter.stop()
    assert status == 200
    assert b"error_pattern: " in page and b"<table class=matrix" in page
    live = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True)
    assert live.returncode == 0, live.stderr.decode() + live.stdout.decode()

    path = tmp_path / "snapshot.yaml"
    path.write_text(yaml.safe_dump(config))
    started = time.monotonic()
    snap = run_cli(cli, "snapshot", "--config", str(path), env={"DATABASE_URL": exporter_url})
    assert snap.returncode == 0, snap.stderr
    assert time.monotonic() - started < 60
    assert "confusion_matrix_predictions{" in snap.stdout
    check = subprocess.run([promtool, "check", "metrics"], input=snap.stdout.encode(), capture_output=True)
    assert check.returncode == 0, check.stderr.decode() + check.stdout.decode()


def test_snapshot_cli_fails_with_one_redacted_line_when_the_database_is_down(cli, admin_engine, tmp_path):
    config = exporter_config("shop_ml.whatever")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    url = "postgresql://someone:t0psecret@127.0.0.1:1/nowhere"
    result = run_cli(cli, "snapshot", "--config", str(path), env={"DATABASE_URL": url})
    assert result.returncode == 1
    assert "t0psecret" not in result.stderr + result.stdout
    assert f"monitor {MONITOR}:" in result.stderr
    assert "confusion_exporter_refresh_failures_total" in result.stdout
