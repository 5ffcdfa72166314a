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


def test_seasonal_reference_counts_the_same_hour_of_each_earlier_day_exactly(admin_engine, exporter_url):
    """A seasonal reference (the window at the same time on each of the ``count`` previous days)
    counts exactly the rows in those spans, none between them, checked against sklearn on
    random rows spread over 9 days, many of them on the spans' edges."""
    from sklearn.metrics import confusion_matrix

    rng = np.random.default_rng(26)
    # The current window as the exporter aligns it: 1 h ending at the end of NOW's minute.
    current_end = NOW.replace(second=0) + timedelta(minutes=1)
    spans = [
        (current_end - timedelta(hours=1) - timedelta(days=k), current_end - timedelta(days=k))
        for k in (1, 2, 3, 4, 5)
    ]
    rows = stream(rng, 6_000, BEFORE, NOW - timedelta(days=9), timedelta(days=9) - timedelta(minutes=1))
    for start, end in spans:  # rows on each edge: the first and the last microsecond inside, and just outside
        for ts in (start, end - timedelta(microseconds=1), start - timedelta(microseconds=1), end):
            truth, predicted = rng.integers(0, 2, size=2)
            rows.append(Row("fraud", "v1", ts, CLASSES[predicted], CLASSES[truth]))
    table = create_scored_events(admin_engine)
    insert_rows(admin_engine, table, rows)
    reference = {"kind": "seasonal", "period": "1d", "count": 5}
    snapshot = snapshot_at(make_config(table, reference=reference), exporter_url)
    result = only_slice(snapshot)
    from confusion_exporter.report import build_report, to_text

    (monitor,) = snapshot.monitors.values()
    text = to_text(build_report(monitor))
    assert (
        f"reference {spans[0][0].isoformat()} .. {spans[0][1].isoformat()}, and the same span 4 more times, every 1d before it"
        in text
    ), text[:800]
    counts = result.windows["reference"].counts
    inside = [r for r in rows if any(start <= r.ts < end for start, end in spans)]
    expected = confusion_matrix(
        [r.actual for r in inside], [r.predicted for r in inside], labels=list(counts.classes)
    )
    assert counts.labeled_total == len(inside) > 100
    np.testing.assert_array_equal(counts.matrix, expected)
    assert result.windows["current"].counts.labeled_total == sum(
        current_end - timedelta(hours=1) <= r.ts < current_end for r in rows
    )


def test_a_daily_error_rate_cycle_is_a_shift_against_the_trailing_day_not_against_the_same_hours(
    admin_engine, exporter_url
):
    """Errors twice as frequent from 00:00 to 06:00 as by day, every day, nothing else
    changing: at night the window tests against the trailing 24 h see a shift (the night
    against a day-and-night average), against the same hours of the last 7 days they do not."""
    rng = np.random.default_rng(27)
    night = np.array([[0.96, 0.04], [0.60, 0.40]])  # the day's error rates (BEFORE) times 2
    at = NOW.replace(hour=3, minute=34)  # 03:34: the window 02:35-03:35
    rows = []
    for day in range(8):
        start = at.replace(hour=0, minute=0, second=0) - timedelta(days=day)
        rows += stream(rng, 12_000, night, start, timedelta(hours=6))
        if day:  # the day hours after this night (today's have not come yet)
            rows += stream(rng, 36_000, BEFORE, start + timedelta(hours=6), timedelta(hours=18))
    rows = [r for r in rows if r.ts < at]
    table = create_scored_events(admin_engine)
    insert_rows(admin_engine, table, rows)
    trailing = only_slice(
        snapshot_at(make_config(table, reference={"kind": "trailing", "length": "24h"}), exporter_url, at)
    )
    seasonal = only_slice(
        snapshot_at(
            make_config(table, reference={"kind": "seasonal", "period": "1d", "count": 7}), exporter_url, at
        )
    )
    assert trailing.shift.tests[ERROR_PATTERN].state == SHIFT, trailing.shift.tests[ERROR_PATTERN]
    assert seasonal.shift.tests[ERROR_PATTERN].state == STABLE, seasonal.shift.tests[ERROR_PATTERN]
    assert (
        seasonal.windows["reference"].counts.labeled_total
        > 6 * trailing.windows["current"].counts.labeled_total
    )
