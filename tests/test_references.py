"""Every reference kind end to end through Postgres: the error swap that keeps accuracy is caught."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import yaml

from confusion_exporter.stats.shift import ERROR_PATTERN, INSUFFICIENT_DATA, SHIFT, STABLE, TESTS

from .conftest import run_cli
from .helpers import COLUMNS, NOW, Row, create_scored_events, insert_rows, make_config, snapshot_at

CLASSES = ("legit", "fraud")
PRIORS = np.array([0.9, 0.1])
BEFORE = np.array([[0.98, 0.02], [0.30, 0.70]])
# False negatives turn into false positives; accuracy stays 0.952 (0.9*0.02+0.1*0.30 = 0.9*0.0467+0.1*0.06).
AFTER = np.array([[0.9533, 0.0467], [0.06, 0.94]])


def stream(rng, n, confusion, start, span, model="fraud", version="v1"):  # type: ignore[no-untyped-def]
    truth = rng.choice(2, size=n, p=PRIORS)
    rows = []
    for t in truth:
        predicted = rng.choice(2, p=confusion[t])
        ts = start + timedelta(seconds=float(rng.uniform(0, span.total_seconds())))
        rows.append(Row(model, version, ts, CLASSES[predicted], CLASSES[t]))
    return rows


def only_slice(snapshot, version="v1"):  # type: ignore[no-untyped-def]
    (monitor,) = snapshot.monitors.values()
    return next(s for s in monitor.slices if s.key.version == version)


def test_trailing_reference_catches_an_error_swap_at_constant_accuracy(admin_engine, exporter_url):
    rng = np.random.default_rng(21)
    current_start = NOW - timedelta(minutes=55)
    rows = stream(rng, 20_000, BEFORE, NOW - timedelta(hours=3, minutes=55), timedelta(hours=2, minutes=50))
    rows += stream(rng, 4_000, AFTER, current_start, timedelta(minutes=50))
    table = create_scored_events(admin_engine)
    insert_rows(admin_engine, table, rows)
    result = only_slice(snapshot_at(make_config(table), exporter_url))
    accuracy = [result.windows[w].metrics.accuracy for w in ("reference", "current")]
    assert abs(accuracy[0] - accuracy[1]) < 0.01  # accuracy alone says nothing happened
    test = result.shift.tests[ERROR_PATTERN]
    assert test.state == SHIFT, test
    assert test.n_reference == 20_000 and test.n_current == 4_000
    top = result.shift.cells[0]
    assert (top.true_class, top.predicted_class) in {("fraud", "fraud"), ("legit", "fraud")}


def test_no_change_stays_stable(admin_engine, exporter_url):
    rng = np.random.default_rng(22)
    rows = stream(rng, 20_000, BEFORE, NOW - timedelta(hours=3, minutes=55), timedelta(hours=2, minutes=50))
    rows += stream(rng, 4_000, BEFORE, NOW - timedelta(minutes=55), timedelta(minutes=50))
    table = create_scored_events(admin_engine)
    insert_rows(admin_engine, table, rows)
    result = only_slice(
        snapshot_at(make_config(table, reference={"kind": "offset", "offset": "3h"}), exporter_url)
    )
    assert result.shift.tests[ERROR_PATTERN].state == STABLE


def test_version_reference_compares_canary_with_stable(admin_engine, exporter_url):
    rng = np.random.default_rng(23)
    start, span = NOW - timedelta(minutes=55), timedelta(minutes=50)
    rows = stream(rng, 8_000, BEFORE, start, span, version="stable")
    rows += stream(rng, 4_000, AFTER, start, span, version="canary")
    rows += stream(rng, 4_000, BEFORE, start, span, version="shadow")
    table = create_scored_events(admin_engine)
    insert_rows(admin_engine, table, rows)
    config = make_config(table, reference={"kind": "version", "version": "stable"})
    snapshot = snapshot_at(config, exporter_url)
    assert only_slice(snapshot, "stable").shift is None  # not compared with itself
    assert only_slice(snapshot, "canary").shift.tests[ERROR_PATTERN].state == SHIFT
    assert only_slice(snapshot, "shadow").shift.tests[ERROR_PATTERN].state == STABLE
    assert only_slice(snapshot, "canary").shift.tests[ERROR_PATTERN].n_reference == 8_000


def test_baseline_captured_once_then_compared(admin_engine, exporter_url, cli, tmp_path):
    rng = np.random.default_rng(24)
    deploy = NOW.replace(minute=0, second=0) - timedelta(days=2)
    rows = stream(rng, 10_000, BEFORE, deploy, timedelta(hours=6))
    rows += stream(rng, 4_000, AFTER, NOW - timedelta(minutes=55), timedelta(minutes=50))
    table = create_scored_events(admin_engine)
    insert_rows(admin_engine, table, rows)
    raw = {
        "sources": [{"name": "shop", "table": table, "columns": COLUMNS}],
        "monitors": [
            {
                "source": "shop",
                "model": "fraud",
                "name": "pinned",
                "window": "1h",
                "reference": {"kind": "baseline", "name": "deploy-v1"},
            },
            {
                "source": "shop",
                "model": "fraud",
                "name": "unpinned",
                "window": "1h",
                "reference": {"kind": "baseline", "name": "never-captured"},
            },
        ],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))

    def capture_baseline(monitor, name, start, end):  # type: ignore[no-untyped-def]
        # The exporter's role may write its own schema.
        args = ["--monitor", monitor, "--name", name, "--from", start.isoformat(), "--to", end.isoformat()]
        return run_cli(
            cli, "baseline", "capture", "--config", str(path), *args, env={"DATABASE_URL": exporter_url}
        )

    capture = capture_baseline("pinned", "deploy-v1", deploy, deploy + timedelta(hours=6))
    assert capture.returncode == 0, capture.stderr
    assert "1 slice(s)" in capture.stdout

    from confusion_exporter.config import load_config

    snapshot = snapshot_at(load_config(path, env={}), exporter_url)
    pinned = snapshot.monitors["pinned"].slices[0]
    assert pinned.windows["reference"].counts.labeled_total == 10_000
    assert pinned.shift.tests[ERROR_PATTERN].state == SHIFT
    unpinned = snapshot.monitors["unpinned"].slices[0]
    assert {unpinned.shift.tests[t].state for t in TESTS} == {INSUFFICIENT_DATA}

    misaligned = capture_baseline("pinned", "x", deploy + timedelta(seconds=30), deploy + timedelta(hours=1))
    assert misaligned.returncode == 2 and "--from:" in misaligned.stderr
    unknown = capture_baseline("nope", "x", deploy, deploy + timedelta(hours=1))
    assert unknown.returncode == 2 and "--monitor: unknown monitor 'nope'" in unknown.stderr


def test_every_reference_kind_exports_tests_rows_cells_and_states(admin_engine, exporter_url, promtool):
    import subprocess

    from prometheus_client.parser import text_string_to_metric_families

    from confusion_exporter.exposition import SnapshotCollector, render

    rng = np.random.default_rng(25)
    start, span = NOW - timedelta(minutes=55), timedelta(minutes=50)
    past, past_span = NOW - timedelta(hours=3, minutes=55), timedelta(hours=2, minutes=50)
    rows = stream(rng, 3_000, BEFORE, past, past_span, version="stable")
    rows += stream(rng, 3_000, BEFORE, past, past_span, version="canary")
    rows += stream(rng, 1_000, BEFORE, start, span, version="stable")
    rows += stream(rng, 1_000, AFTER, start, span, version="canary")
    table = create_scored_events(admin_engine)
    insert_rows(admin_engine, table, rows)
    for reference in (
        {"kind": "trailing", "length": "3h"},
        {"kind": "version", "version": "stable"},
        {"kind": "baseline", "name": "missing"},
    ):
        snapshot = snapshot_at(make_config(table, reference=reference), exporter_url)
        body = render(SnapshotCollector(snapshot))
        check = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True)
        assert check.returncode == 0, check.stderr.decode() + check.stdout.decode()
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        states = [s for s in families["confusion_shift_state"].samples if s.value == 1]
        tested = {(s.labels["version"], s.labels["test"]) for s in states}
        versions = {"canary"} if reference["kind"] == "version" else {"stable", "canary"}
        assert tested == {(v, t) for v in versions for t in TESTS}, reference  # one state per test
        if reference["kind"] != "baseline":
            assert families["confusion_shift_row_effect_size"].samples
            assert families["confusion_shift_cell_residual"].samples
