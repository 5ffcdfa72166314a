"""History from day one: `backfill` writes OpenMetrics that the real promtool turns into TSDB
blocks, a real Prometheus answers queries from them, and the value at each instant equals
`snapshot --at` of that instant. A past instant is seen as it was: labels that came later
are not counted yet."""

from __future__ import annotations

import subprocess
from datetime import timedelta

import yaml

from confusion_exporter.config import DatabaseUrl
from confusion_exporter.refresher import Refresher

from .conftest import run_cli
from .helpers import (
    NOW,
    Row,
    create_scored_events,
    insert_rows,
    make_config,
    simulate_with_shift,
    snapshot_at,
)
from .processes import PrometheusProcess, samples
from .test_grafana_live import config as stack_config


def series(parsed: dict, name: str) -> dict:  # type: ignore[type-arg]
    return {labels: v for (n, labels), v in parsed.items() if n == name}


def test_backfilled_history_equals_snapshot_at_each_instant(
    cli, clean_reference_schema, exporter_url, tmp_path, promtool, prometheus_binary
):
    now = simulate_with_shift(clean_reference_schema, ["digits-rf", "intent-router"], ["digits-rf"], seed=31)
    settings = stack_config()
    settings["monitors"] = settings["monitors"][:2]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(settings))
    end = now.replace(second=0, microsecond=0) - timedelta(minutes=5)
    start = end - timedelta(minutes=50)
    out = tmp_path / "backfill"
    env = {"DATABASE_URL": exporter_url}
    result = run_cli(
        cli, "backfill", "--config", str(path), "--from", start.isoformat(), "--to", end.isoformat(),
        "--step", "10m", "--output", str(out), env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "6 instants" in result.stdout
    om = out / "confusion-exporter.om"
    assert om.read_text().endswith("# EOF\n")
    tsdb = tmp_path / "tsdb"
    blocks = subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", str(om), str(tsdb)],
        capture_output=True,
        text=True,
    )
    assert blocks.returncode == 0, blocks.stderr
    prometheus = PrometheusProcess(prometheus_binary, ["127.0.0.1:1"], tmp_path)
    try:
        for at in (start, start + timedelta(minutes=20), end):
            snap = run_cli(cli, "snapshot", "--config", str(path), "--at", at.isoformat(), env=env)
            assert snap.returncode == 0, snap.stderr
            expected = samples(snap.stdout.encode())
            for name in ("confusion_matrix_predictions", "confusion_shift_state", "confusion_shift_p_value"):
                want = series(expected, name)
                got = {
                    frozenset((k, v) for k, v in r["metric"].items() if k != "__name__"): float(r["value"][1])
                    for r in prometheus.query(name, at=at.timestamp())
                }
                assert want and got == want, (name, at)
        # The shift injected 28 minutes before "now" shows in the backfilled decisions, too.
        shifted = prometheus.query(
            'confusion_shift_state{monitor="digits", test="error_pattern", state="shift", segment="eu"}',
            at=end.timestamp(),
        )
        assert shifted and float(shifted[0]["value"][1]) == 1.0
    finally:
        prometheus.stop()


def test_a_past_instant_counts_only_the_labels_that_had_arrived(admin_engine, exporter_url):
    table = create_scored_events(admin_engine)
    at = NOW - timedelta(minutes=30)
    rows = [
        Row("m", "v1", at - timedelta(minutes=10), "a", "a", labeled_at=at - timedelta(minutes=5)),
        Row("m", "v1", at - timedelta(minutes=10), "a", "b", labeled_at=at + timedelta(minutes=5)),
        Row("m", "v1", at - timedelta(minutes=10), "b", "b", labeled_at=at + timedelta(days=2)),
    ]
    insert_rows(admin_engine, table, rows)
    config = make_config(table, model="m")
    refresher = Refresher(config, DatabaseUrl(exporter_url), clock=lambda: at, historical=True)
    try:
        assert refresher.refresh(), refresher.health.last_error
    finally:
        refresher.engine.dispose()
    assert refresher.published.snapshot is not None
    then = refresher.published.snapshot.monitors["shop:m"].slices[0].windows["current"].counts
    assert (then.labeled_total, then.unlabeled_total) == (1, 2)
    # The live view at the same instant counts every label already in the table.
    live = snapshot_at(config, exporter_url, at).monitors["shop:m"].slices[0].windows["current"].counts
    assert (live.labeled_total, live.unlabeled_total) == (3, 0)


def test_a_past_instant_leaves_out_the_rows_written_after_it(admin_engine, exporter_url, tmp_path):
    """At T, rows dated after T did not exist: a historical evaluation leaves them out (and
    reports future_timestamp 0); a live one at the same instant counts them as future."""
    from confusion_exporter.backfill import backfill
    from confusion_exporter.source.database import reader_engine

    table = create_scored_events(admin_engine)
    at = NOW.replace(second=0) - timedelta(minutes=30)
    before = [
        Row("m", "v1", at - timedelta(minutes=m), "a", "ab"[m % 2], labeled_at=at - timedelta(seconds=m))
        for m in range(1, 21)
    ]
    after = [Row("m", "v1", at + timedelta(minutes=m, seconds=7), "b", "b") for m in range(1, 11)]
    after += [Row("m", "v1", NOW + timedelta(days=1), "b", None), Row("m", "v1", "infinity", "b", None)]  # type: ignore[arg-type]
    labels_without_instant = [
        Row("m", "v1", at - timedelta(minutes=3), "a", "a", labeled_at="-infinity"),  # type: ignore[arg-type]
        Row("m", "v1", at - timedelta(minutes=3), "a", "a", labeled_at="infinity"),  # type: ignore[arg-type]
    ]
    insert_rows(admin_engine, table, before + after + labels_without_instant)
    config = make_config(table, model="m")
    refresher = Refresher(config, DatabaseUrl(exporter_url), clock=lambda: at, historical=True)
    try:
        assert refresher.refresh(), refresher.health.last_error
    finally:
        refresher.engine.dispose()
    assert refresher.published.snapshot is not None
    then = refresher.published.snapshot.monitors["shop:m"].slices[0].windows["current"].counts
    # A label dated 'infinity' has not arrived at any instant; '-infinity' has, and is rejected.
    assert (then.labeled_total, then.unlabeled_total) == (20, 1)
    assert then.rejected["future_timestamp"] == 0
    assert {k: v for k, v in then.rejected.items() if v} == {"non_finite_timestamp": 1}
    live = snapshot_at(config, exporter_url, at).monitors["shop:m"].slices[0].windows["current"].counts
    assert live.labeled_total == 20
    assert live.rejected["future_timestamp"] == len(after) - 1  # live: today's rule
    assert live.rejected["non_finite_timestamp"] == 3
    # backfill is the same historical evaluation at each step: every step says 0.
    engine = reader_engine(
        DatabaseUrl(exporter_url),
        statement_timeout=timedelta(seconds=20),
        connect_timeout=timedelta(seconds=5),
    )
    try:
        result = backfill(engine, config, at - timedelta(minutes=10), at, timedelta(minutes=5), tmp_path)
    finally:
        engine.dispose()
    lines = [
        line
        for line in result.path.read_text().splitlines()
        if line.startswith("confusion_rejected_rows{") and 'window="current"' in line
    ]
    future = [line for line in lines if 'reason="future_timestamp"' in line]
    assert len(future) == 3 and all(line.split()[1] == "0.0" for line in future), future
    others = [line for line in lines if 'reason="non_finite_timestamp"' not in line]
    assert all(line.split()[1] == "0.0" for line in others), others
