"""Counts and per-class metrics from real Postgres equal scikit-learn on the same rows."""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta

import numpy as np
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from confusion_exporter.matrices import NULL, class_order
from confusion_exporter.references import monitor_windows
from confusion_exporter.windows import bucket_end

from .helpers import NOW, REFERENCE_SOURCE, Row, create_scored_events, insert_rows, make_config, snapshot_at

BUCKET_END = bucket_end(NOW, timedelta(minutes=1))
CLASS_POOL = ["cat", "dog", "2", "10", "bird"]

row_strategy = st.builds(
    lambda model, version, segment, minute, second, predicted, actual: Row(
        model=model,
        version=version,
        segment=segment,
        ts=BUCKET_END + timedelta(minutes=minute, seconds=second),
        predicted=predicted,
        actual=actual,
    ),
    model=st.sampled_from(["m1", "m2"]),
    version=st.sampled_from(["v1", "v2"]),
    segment=st.sampled_from(["eu", "us", None]),
    # Whole minutes hit window boundaries exactly; the range reaches past both windows
    # and a few minutes into the future.
    minute=st.integers(-260, 4),
    second=st.sampled_from([0, 0, 0, 17, 59]),
    predicted=st.sampled_from(CLASS_POOL),
    actual=st.one_of(st.none(), st.sampled_from(CLASS_POOL)),
)


def expected_by_slice(rows: list[Row], windows) -> dict:  # type: ignore[no-untyped-def]
    """The reference computation: plain Python over the rows, scikit-learn for the metrics."""
    slices: dict = defaultdict(
        lambda: {w.name: {"labeled": [], "unlabeled": 0, "future": 0} for w in windows}
    )
    current = windows[0].name
    for r in rows:
        key = (r.model, r.version, r.segment if r.segment is not None else NULL)
        if r.ts > NOW:
            slices[key][current]["future"] += 1
            continue
        for w in windows:
            if w.start <= r.ts < w.end:
                bucket = slices[key][w.name]
                if r.actual is None:
                    bucket["unlabeled"] += 1
                    bucket.setdefault("unlabeled_classes", []).append(r.predicted)
                else:
                    bucket["labeled"].append((r.actual, r.predicted))
    return slices


def check_against_sklearn(rows: list[Row], snapshot, config) -> None:  # type: ignore[no-untyped-def]
    monitor = snapshot.monitors[config.monitors[0].monitor_name]
    windows = monitor_windows(NOW, config.monitors[0], config.exporter.bucket)
    expected = expected_by_slice(rows, windows)
    got = {(s.key.model, s.key.version, s.key.segment): s for s in monitor.slices}
    assert set(got) == set(expected)
    for key, by_window in expected.items():
        result = got[key]
        seen = set()
        for data in by_window.values():
            seen.update(c for pair in data["labeled"] for c in pair)
            seen.update(data.get("unlabeled_classes", []))
        classes = list(class_order(sorted(seen)))
        for name, data in by_window.items():
            window = result.windows[name]
            assert list(window.counts.classes) == classes
            assert window.counts.unlabeled_total == data["unlabeled"]
            assert window.counts.rejected["future_timestamp"] == data["future"]
            labeled = data["labeled"]
            if not labeled:
                assert window.counts.labeled_total == 0
                assert np.isnan(window.metrics.accuracy)
                continue
            y_true = [t for t, _ in labeled]
            y_pred = [p for _, p in labeled]
            np.testing.assert_array_equal(
                window.counts.matrix, confusion_matrix(y_true, y_pred, labels=classes)
            )
            precision, recall, f1, support = precision_recall_fscore_support(
                y_true, y_pred, labels=classes, zero_division=np.nan
            )
            m = window.metrics
            np.testing.assert_allclose(m.precision, precision, equal_nan=True)
            np.testing.assert_allclose(m.recall, recall, equal_nan=True)
            present = [c for c in classes if c in set(y_true) | set(y_pred)]
            np.testing.assert_allclose(
                m.f1[[classes.index(c) for c in present]],
                f1[[classes.index(c) for c in present]],
            )
            np.testing.assert_array_equal(m.support, support)
            assert m.accuracy == pytest.approx(accuracy_score(y_true, y_pred))
            assert m.macro_f1 == pytest.approx(
                f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)
            )
            assert m.balanced_accuracy == pytest.approx(balanced_accuracy_score(y_true, y_pred))


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rows=st.lists(row_strategy, max_size=120))
def test_matrices_and_metrics_equal_sklearn(rows, admin_engine, exporter_url):
    table = create_scored_events(admin_engine)
    insert_rows(admin_engine, table, rows)
    config = make_config(table)
    check_against_sklearn(rows, snapshot_at(config, exporter_url), config)


@pytest.mark.parametrize("seed", range(6))
def test_larger_random_streams_equal_sklearn(seed, admin_engine, exporter_url):
    rng = np.random.default_rng(seed)
    n = 3000
    classes = [str(c) for c in range(int(rng.integers(2, 12)))]
    rows = [
        Row(
            model=str(rng.choice(["fraud", "digits"])),
            version="v1",
            segment=None,
            ts=BUCKET_END + timedelta(seconds=float(rng.uniform(-4.2 * 3600, 120))),
            predicted=str(rng.choice(classes)),
            actual=None if rng.random() < 0.2 else str(rng.choice(classes)),
        )
        for _ in range(n)
    ]
    table = create_scored_events(admin_engine)
    insert_rows(admin_engine, table, rows)
    config = make_config(table)
    check_against_sklearn(rows, snapshot_at(config, exporter_url), config)


def test_empty_source_exports_no_slices(admin_engine, exporter_url):
    table = create_scored_events(admin_engine)
    snapshot = snapshot_at(make_config(table), exporter_url)
    assert [m.slices for m in snapshot.monitors.values()] == [()]


def test_single_class_and_class_only_in_one_window(admin_engine, exporter_url):
    table = create_scored_events(admin_engine)
    in_current = BUCKET_END - timedelta(minutes=10)
    in_reference = BUCKET_END - timedelta(hours=2)
    rows = [Row("m", "v", in_current, "a", "a") for _ in range(5)]
    rows += [Row("m", "v", in_reference, "a", "a") for _ in range(3)]
    rows += [Row("m", "v", in_reference, "b", "a")]  # "b" appears only in the reference
    insert_rows(admin_engine, table, rows)
    config = make_config(table)
    snapshot = snapshot_at(config, exporter_url)
    check_against_sklearn(rows, snapshot, config)
    (result,) = snapshot.monitors["shop:*"].slices
    current = result.windows["current"]
    assert current.counts.classes == ("a", "b")
    assert current.counts.matrix.tolist() == [[5, 0], [0, 0]]
    assert np.isnan(current.metrics.precision[1]) and np.isnan(current.metrics.recall[1])
    assert current.metrics.accuracy == 1.0


def test_named_model_and_label_delay_and_offset_reference(admin_engine, exporter_url):
    table = create_scored_events(admin_engine)
    rows = [
        Row("wanted", "v", BUCKET_END - timedelta(minutes=m), "x", "y" if m % 3 else "x")
        for m in range(1, 200)
    ]
    rows += [Row("other", "v", BUCKET_END - timedelta(minutes=5), "x", "x")]
    insert_rows(admin_engine, table, rows)
    config = make_config(
        table,
        model="wanted",
        reference={"kind": "offset", "offset": "2h"},
        extra_monitor={"label_delay": "15m"},
    )
    snapshot = snapshot_at(config, exporter_url)
    check_against_sklearn([r for r in rows if r.model == "wanted"], snapshot, config)
    current, reference = monitor_windows(NOW, config.monitors[0], config.exporter.bucket)
    assert current.end == BUCKET_END - timedelta(minutes=15)
    assert reference.start == current.start - timedelta(hours=2)


def test_snapshot_counts_equal_direct_sql_count(admin_engine, exporter_url):
    """The acceptance check: snapshot matrices against a hand-written SQL count."""
    table = create_scored_events(admin_engine)
    rng = np.random.default_rng(7)
    rows = [
        Row(
            "m",
            "v1",
            BUCKET_END - timedelta(seconds=float(rng.uniform(0, 3.9 * 3600))),
            str(rng.integers(0, 4)),
            str(rng.integers(0, 4)),
        )
        for _ in range(2000)
    ]
    insert_rows(admin_engine, table, rows)
    config = make_config(table)
    snapshot = snapshot_at(config, exporter_url)
    current, _ = monitor_windows(NOW, config.monitors[0], config.exporter.bucket)
    with admin_engine.connect() as conn:
        direct = conn.execute(
            sa.text(
                f"SELECT y, yhat, count(*) FROM {table} WHERE ts >= :s AND ts < :e "
                "AND ts <= :now GROUP BY 1, 2"
            ),
            {"s": current.start, "e": current.end, "now": NOW},
        ).fetchall()
    (result,) = snapshot.monitors["shop:*"].slices
    counts = result.windows["current"].counts
    for true_class, predicted_class, n in direct:
        i, j = counts.classes.index(true_class), counts.classes.index(predicted_class)
        assert counts.matrix[i, j] == n
    assert counts.labeled_total == sum(n for *_, n in direct)


def test_mean_label_delay_over_labeled_predictions(admin_engine, exporter_url):
    table = create_scored_events(admin_engine)
    at = BUCKET_END - timedelta(minutes=30)
    rows = [
        Row("m", "v", at, "a", "a", labeled_at=at + timedelta(minutes=10)),
        Row("m", "v", at, "a", "b", labeled_at=at + timedelta(minutes=50)),
        Row("m", "v", at, "a", None),  # unlabeled: no delay yet
    ]
    insert_rows(admin_engine, table, rows)
    (result,) = snapshot_at(make_config(table), exporter_url).monitors["shop:*"].slices
    assert result.windows["current"].counts.mean_label_delay_seconds == pytest.approx(30 * 60)
    assert np.isnan(result.windows["reference"].counts.mean_label_delay_seconds)


@pytest.mark.parametrize("model", ["fraud-gbm", "*"])
def test_the_count_query_reads_its_windows_by_index_not_by_scanning_the_table(admin_engine, model):
    """The bad-row arms of the filter (future, NULL, non-finite times) must stay index ranges:
    a scan of the whole history makes every refresh cost the table's size (it hit a 200 ms
    statement timeout at 400k rows). With sequential scans disabled, the planner still has to
    choose one when no index can answer the filter."""
    import json

    from confusion_exporter.config import config_from_mapping
    from confusion_exporter.source.counts import count_query

    config = config_from_mapping(
        {
            "sources": [REFERENCE_SOURCE],
            "monitors": [
                {
                    "source": "ref",
                    "model": model,
                    "window": "1h",
                    "reference": {"kind": "trailing", "length": "24h"},
                }
            ],
        },
        env={},
    )
    monitor, source = config.monitors[0], config.sources[0]
    windows = monitor_windows(NOW, monitor, config.exporter.bucket)
    for historical in (None, NOW):
        query = count_query(source, monitor, windows, NOW, config.exporter.bucket, timedelta(0), historical)
        compiled = query.compile(admin_engine, compile_kwargs={"render_postcompile": True})
        with admin_engine.connect() as conn:
            conn.execute(sa.text("SET LOCAL enable_seqscan = off"))
            plan = conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {compiled}", compiled.params).scalar_one()
        plan_text = json.dumps(plan)
        scans = [n for n in _plan_nodes(plan[0]["Plan"]) if n["Node Type"] == "Seq Scan"]
        assert not [n for n in scans if n.get("Relation Name") == "predictions"], plan_text[:3000]


def _plan_nodes(node: dict):  # type: ignore[no-untyped-def, type-arg]
    yield node
    for child in node.get("Plans", []):
        yield from _plan_nodes(child)
