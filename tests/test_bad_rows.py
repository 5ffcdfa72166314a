"""Bad rows are counted by reason, never crash a refresh, never change the other counts."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
import sqlalchemy as sa

from .helpers import NOW, Row, create_scored_events, insert_rows, make_config, snapshot_at

IN_CURRENT = NOW - timedelta(minutes=20)
IN_REFERENCE = NOW - timedelta(hours=2)


def good_rows() -> list[Row]:
    rng = np.random.default_rng(3)
    classes = ["cat", "dog", "bird"]
    rows = []
    for ts in (IN_CURRENT, IN_REFERENCE):
        for _ in range(300):
            rows.append(
                Row(
                    "m",
                    "v1",
                    ts,
                    str(rng.choice(classes)),
                    None if rng.random() < 0.1 else str(rng.choice(classes)),
                )
            )
    return rows


BAD_ROWS = [
    (Row("m", "v1", IN_CURRENT, None, "cat"), "label_without_prediction"),
    (Row("m", "v1", IN_CURRENT, "   ", "cat"), "label_without_prediction"),
    (Row("m", "v1", IN_CURRENT, None, None), "missing_predicted_class"),
    (Row("m", "v1", IN_CURRENT, "", None), "missing_predicted_class"),
    (Row("m", "v1", IN_CURRENT, "cat", ""), "empty_true_class"),
    (Row("m", "v1", IN_CURRENT, "cat", "  "), "empty_true_class"),
    (Row("m", "v1", NOW + timedelta(seconds=3), "cat", "cat"), "future_timestamp"),
    (Row("m", "v1", NOW + timedelta(days=3650), "cat", None), "future_timestamp"),
    # Blank is one definition for SQL and Python: any Unicode whitespace (and zero-width) only.
    (Row("m", "v1", IN_CURRENT, " \t", "cat"), "label_without_prediction"),
    (Row("m", "v1", IN_CURRENT, "\n", None), "missing_predicted_class"),
    (Row("m", "v1", IN_CURRENT, "\u00a0\u3000", None), "missing_predicted_class"),
    (Row("m", "v1", IN_CURRENT, "cat", "\t"), "empty_true_class"),
    (Row("m", "v1", IN_CURRENT, "cat", "\r\n\u2003"), "empty_true_class"),
    (Row("m", "v1", IN_CURRENT, "cat", "\u200b\ufeff"), "empty_true_class"),
    # Timestamps that are not instants: counted against the current window, never a failed refresh.
    (Row("m", "v1", "infinity", "cat", "cat"), "non_finite_timestamp"),  # type: ignore[arg-type]
    (Row("m", "v1", "-infinity", "cat", None), "non_finite_timestamp"),  # type: ignore[arg-type]
    (Row("m", "v1", IN_CURRENT, "cat", "dog", labeled_at="infinity"), "non_finite_timestamp"),  # type: ignore[arg-type]
    (Row("m", "v1", IN_CURRENT, "cat", "cat", labeled_at="-infinity"), "non_finite_timestamp"),  # type: ignore[arg-type]
    (Row("m", "v1", None, "cat", "cat"), "missing_timestamp"),  # type: ignore[arg-type]
    # A label dated before its prediction (beyond future_tolerance, 0 here).
    (
        Row("m", "v1", IN_CURRENT, "cat", "dog", labeled_at=IN_CURRENT - timedelta(hours=3)),
        "label_before_prediction",
    ),
]


def current_slice(snapshot):  # type: ignore[no-untyped-def]
    (monitor,) = snapshot.monitors.values()
    return {(s.key.model, s.key.version): s for s in monitor.slices}


@pytest.mark.parametrize("model", ["*", "m"])
def test_each_bad_row_is_counted_and_the_matrix_is_untouched(model, admin_engine, exporter_url):
    clean = create_scored_events(admin_engine)
    dirty = create_scored_events(admin_engine)
    insert_rows(admin_engine, clean, good_rows())
    insert_rows(admin_engine, dirty, good_rows() + [row for row, _ in BAD_ROWS])

    before = current_slice(snapshot_at(make_config(clean, model=model), exporter_url))[("m", "v1")]
    after = current_slice(snapshot_at(make_config(dirty, model=model), exporter_url))[("m", "v1")]

    expected: dict[str, int] = {}
    for _, reason in BAD_ROWS:
        expected[reason] = expected.get(reason, 0) + 1
    current = after.windows["current"].counts
    assert {k: v for k, v in current.rejected.items() if v} == expected
    assert not any(after.windows["reference"].counts.rejected.values())
    for name in ("current", "reference"):
        np.testing.assert_array_equal(after.windows[name].counts.matrix, before.windows[name].counts.matrix)
        np.testing.assert_array_equal(
            after.windows[name].counts.unlabeled, before.windows[name].counts.unlabeled
        )
        assert after.windows[name].counts.classes == before.windows[name].counts.classes


def test_null_model_is_rejected_for_a_wildcard_monitor(admin_engine, exporter_url):
    table = create_scored_events(admin_engine)
    insert_rows(
        admin_engine,
        table,
        [Row(None, "v1", IN_CURRENT, "cat", "cat"), Row("m", "v1", IN_CURRENT, "cat", "cat")],
    )
    slices = current_slice(snapshot_at(make_config(table), exporter_url))
    assert slices[("__null__", "v1")].windows["current"].counts.rejected["missing_model"] == 1
    assert slices[("__null__", "v1")].windows["current"].counts.labeled_total == 0
    assert slices[("m", "v1")].windows["current"].counts.labeled_total == 1


def test_classes_outside_the_configured_set_are_rejected(admin_engine, exporter_url):
    table = create_scored_events(admin_engine)
    rows = [
        Row("m", "v1", IN_CURRENT, "cat", "cat"),
        Row("m", "v1", IN_CURRENT, "cat", "dog"),
        Row("m", "v1", IN_CURRENT, "lion", "cat"),  # predicted outside the set
        Row("m", "v1", IN_CURRENT, "cat", "lion"),  # truth outside the set
        Row("m", "v1", IN_CURRENT, "lion", None),  # unlabeled, predicted outside the set
    ]
    insert_rows(admin_engine, table, rows)
    config = make_config(table, extra_monitor={"classes": ["cat", "dog", "bird"]})
    counts = current_slice(snapshot_at(config, exporter_url))[("m", "v1")].windows["current"].counts
    assert counts.classes == ("cat", "dog", "bird")  # configured order, absent "bird" included
    assert counts.rejected["unknown_class"] == 3
    assert counts.matrix.tolist() == [[1, 0, 0], [1, 0, 0], [0, 0, 0]]
    assert counts.unlabeled_total == 0


def test_class_cap_folds_the_rarest_into_other_and_counts_them(admin_engine, exporter_url):
    table = create_scored_events(admin_engine)
    rows = []
    for i in range(30):  # class c{i} appears 30 - i times
        rows += [Row("m", "v1", IN_CURRENT, f"c{i}", f"c{i}") for _ in range(30 - i)]
    insert_rows(admin_engine, table, rows)
    config = make_config(table, extra_monitor={"max_classes": 5})
    counts = current_slice(snapshot_at(config, exporter_url))[("m", "v1")].windows["current"].counts
    assert counts.classes == ("c0", "c1", "c2", "c3", "__other__")
    folded = sum(30 - i for i in range(4, 30))
    assert counts.folded == folded
    assert counts.matrix[4, 4] == folded
    assert counts.labeled_total == len(rows)  # folding keeps every prediction


def test_awkward_class_names_survive_to_a_valid_exposition(admin_engine, exporter_url, promtool, tmp_path):
    import subprocess

    from confusion_exporter.exposition import SnapshotCollector, render

    names = ['quote"d', "back\\slash", "new\nline", "ünï©ødé", "x" * 300, "{brace}", "7"]
    table = create_scored_events(admin_engine)
    insert_rows(admin_engine, table, [Row("m", "v1", IN_CURRENT, a, b) for a in names for b in names])
    snapshot = snapshot_at(make_config(table), exporter_url)
    counts = current_slice(snapshot)[("m", "v1")].windows["current"].counts
    assert set(counts.classes) == set(names)
    assert counts.matrix.sum() == len(names) ** 2 and (counts.matrix == 1).all()
    body = render(SnapshotCollector(snapshot))
    check = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True)
    assert check.returncode == 0, check.stderr.decode()


def test_class_names_are_escaped_on_the_landing_page(admin_engine, exporter_url):
    from confusion_exporter.web import landing_page

    table = create_scored_events(admin_engine)
    evil = "<script>alert(1)</script>"
    insert_rows(
        admin_engine,
        table,
        [Row("m", "v1", IN_CURRENT, evil, "cat"), Row("m", "v1", IN_REFERENCE, "cat", evil)],
    )
    page = landing_page(snapshot_at(make_config(table), exporter_url)).decode()
    assert evil not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_a_label_before_its_prediction_is_rejected_beyond_the_tolerance_and_clamped_within(
    admin_engine, exporter_url
):
    table = create_scored_events(admin_engine)
    rows = [
        Row("m", "v1", IN_CURRENT, "cat", "cat", labeled_at=IN_CURRENT + timedelta(seconds=100)),
        Row("m", "v1", IN_CURRENT, "cat", "dog", labeled_at=IN_CURRENT + timedelta(seconds=50)),
        # Within future_tolerance (5 s): clock skew between two hosts; counted, its delay is 0.
        Row("m", "v1", IN_CURRENT, "dog", "dog", labeled_at=IN_CURRENT - timedelta(seconds=4)),
        # 3 h 14 min before the prediction: not skew, a bad row.
        Row("m", "v1", IN_CURRENT, "dog", "cat", labeled_at=IN_CURRENT - timedelta(seconds=11_620)),
    ]
    insert_rows(admin_engine, table, rows)
    config = make_config(table, exporter={"future_tolerance": "5s"})
    counts = current_slice(snapshot_at(config, exporter_url))[("m", "v1")].windows["current"].counts
    assert counts.rejected["label_before_prediction"] == 1
    assert counts.labeled_total == 3
    assert counts.mean_label_delay_seconds == pytest.approx((100 + 50 + 0) / 3)
    # Without a tolerance, the 4 s one is rejected too: the delay can never go negative.
    strict = current_slice(snapshot_at(make_config(table), exporter_url))[("m", "v1")].windows["current"]
    assert strict.counts.rejected["label_before_prediction"] == 2
    assert strict.counts.mean_label_delay_seconds == pytest.approx(75)


def test_non_finite_timestamps_of_one_model_leave_the_others_refreshing(admin_engine, exporter_url):
    table = create_scored_events(admin_engine)
    insert_rows(admin_engine, table, good_rows())
    insert_rows(
        admin_engine,
        table,
        [
            Row("broken", "v1", "infinity", "cat", "cat"),  # type: ignore[arg-type]
            Row("broken", "v1", IN_CURRENT, "cat", "cat", labeled_at="infinity"),  # type: ignore[arg-type]
            Row("broken", "v1", IN_REFERENCE, "cat", "cat", labeled_at="-infinity"),  # type: ignore[arg-type]
        ],
    )
    clean = create_scored_events(admin_engine)
    insert_rows(admin_engine, clean, good_rows())
    slices = current_slice(snapshot_at(make_config(table), exporter_url))
    expected = current_slice(snapshot_at(make_config(clean), exporter_url))[("m", "v1")]
    for name in ("current", "reference"):
        np.testing.assert_array_equal(
            slices[("m", "v1")].windows[name].counts.matrix, expected.windows[name].counts.matrix
        )
    broken = slices[("broken", "v1")]
    assert broken.windows["current"].counts.rejected["non_finite_timestamp"] == 2
    assert broken.windows["reference"].counts.rejected["non_finite_timestamp"] == 1
    assert broken.windows["current"].counts.labeled_total == 0


def test_score_aggregates_leave_out_the_rows_the_matrix_rejects(admin_engine, exporter_url):
    table = create_scored_events(admin_engine)
    good = [Row("m", "v1", IN_CURRENT, "cat", c, score=0.8) for c in ("cat", "dog", "cat")]
    bad = [
        Row("m", "v1", IN_CURRENT, "cat", "cat", labeled_at="infinity", score=0.9),  # type: ignore[arg-type]
        Row("m", "v1", IN_CURRENT, "cat", "\t", score=0.9),
        Row("m", "v1", IN_CURRENT, "\u3000", "cat", score=0.9),
        Row("m", "v1", IN_CURRENT, "cat", "cat", labeled_at=IN_CURRENT - timedelta(hours=1), score=0.9),
        Row("m", "v1", "infinity", "cat", "cat", score=0.9),  # type: ignore[arg-type]
    ]
    insert_rows(admin_engine, table, good + bad)
    window = current_slice(snapshot_at(make_config(table), exporter_url))[("m", "v1")].windows["current"]
    assert window.counts.labeled_total == 3 and sum(window.counts.rejected.values()) == len(bad)
    assert window.confidence is not None
    assert window.confidence.scored == 3  # the same rows as the matrix, no more
    assert window.confidence.high_confidence_errors == 0  # the rejected 0.9 rows are not in it


def test_score_aggregates_leave_out_classes_outside_the_configured_set(admin_engine, exporter_url):
    table = create_scored_events(admin_engine)
    rows = [Row("m", "v1", IN_CURRENT, "cat", c, score=0.6) for c in ("cat", "dog", "dog")]
    rows += [
        Row("m", "v1", IN_CURRENT, "lion", "cat", score=0.99),
        Row("m", "v1", IN_CURRENT, "cat", "lion", score=0.99),
    ]
    insert_rows(admin_engine, table, rows)
    config = make_config(table, extra_monitor={"classes": ["cat", "dog"]})
    window = current_slice(snapshot_at(config, exporter_url))[("m", "v1")].windows["current"]
    assert window.counts.rejected["unknown_class"] == 2 and window.counts.labeled_total == 3
    assert window.confidence is not None and window.confidence.scored == 3
    assert window.confidence.high_confidence_errors == 0


def test_baseline_capture_report_and_gate_count_bad_rows_without_failing(admin_engine, exporter_url):
    from datetime import UTC, datetime

    from confusion_exporter.baseline import capture_baseline
    from confusion_exporter.config import DatabaseUrl
    from confusion_exporter.evaluate import evaluate_monitor
    from confusion_exporter.gate import run_gate
    from confusion_exporter.report import build_report, to_text
    from confusion_exporter.source.database import reader_engine

    table = create_scored_events(admin_engine)
    start = IN_REFERENCE.replace(minute=0, second=0)
    rows = [
        Row(
            "m",
            v,
            start + timedelta(minutes=i % 50),
            str(i % 2),
            str(i % 3 % 2),
            labeled_at=start + timedelta(hours=1),
        )
        for i in range(200)
        for v in ("v1", "v2")
    ]
    bad = [
        Row("m", "v2", "infinity", "1", "1"),  # type: ignore[arg-type]
        Row("m", "v2", start + timedelta(minutes=5), "1", "1", labeled_at="-infinity"),  # type: ignore[arg-type]
        Row("m", "v2", start + timedelta(minutes=5), "1", "\t"),
        Row("m", "v2", start + timedelta(minutes=5), "1", "0", labeled_at=start - timedelta(hours=5)),
    ]
    insert_rows(admin_engine, table, rows + bad)
    config = make_config(table, model="m", extra_monitor={"min_samples": 10})
    timeouts = {"statement_timeout": timedelta(seconds=20), "connect_timeout": timedelta(seconds=5)}
    engine = reader_engine(DatabaseUrl(exporter_url), **timeouts)
    writer = sa.create_engine(exporter_url)
    try:
        slices, cells = capture_baseline(
            writer, config, "shop:m", "b1", start, start + timedelta(hours=1), datetime.now(UTC)
        )
        assert slices == 2 and cells > 0
        at = start + timedelta(minutes=58)
        with engine.connect() as connection:
            gate = run_gate(connection, config, "shop:m", "v1", "v2", at, timedelta(hours=1))
            result = evaluate_monitor(connection, config, config.monitors[0], at, use_rollup=False)
        assert gate.segments[0].canary_labeled == gate.segments[0].stable_labeled == 200
        v2 = next(s for s in result.slices if s.key.version == "v2").windows["current"].counts
        assert sum(v2.rejected.values()) == len(bad) and v2.labeled_total == 200
        assert "v2" in to_text(build_report(result))
    finally:
        engine.dispose()
        writer.dispose()
    with admin_engine.connect() as conn:
        stored = conn.execute(
            sa.text(
                "SELECT version, sum(predictions) FROM confusion_exporter.baseline_cells "
                "WHERE name = 'b1' AND monitor = 'shop:m' GROUP BY 1 ORDER BY 1"
            )
        ).fetchall()
    assert [tuple(r) for r in stored] == [("v1", 200), ("v2", 200)]


@pytest.mark.parametrize("blank", ["  ", " \t", "\n", "\u00a0", "\u3000", "\u200b"])
def test_blank_class_names_in_the_config_are_config_errors(blank):
    from confusion_exporter.config import ConfigError

    with pytest.raises(ConfigError) as error:
        make_config("shop_ml.t", extra_monitor={"classes": ["cat", blank]})
    assert "monitors[0].classes" in str(error.value)


@pytest.mark.parametrize("time_type", ["timestamp", "timestamptz", "date"])
def test_non_finite_times_in_other_column_types(time_type, admin_engine, exporter_url):
    """Users' tables hold naive timestamps or dates too; 'infinity' is valid in each."""
    import secrets

    name = f"shop_ml.times_{secrets.token_hex(4)}"
    with admin_engine.begin() as conn:
        conn.execute(sa.text('CREATE SCHEMA IF NOT EXISTS "shop_ml"'))
        conn.execute(
            sa.text(
                f"CREATE TABLE {name} (clf text, clf_ver text, ts {time_type}, yhat text, y text, "
                f"y_at {time_type}, conf double precision, region text)"
            )
        )
        conn.execute(sa.text('GRANT USAGE ON SCHEMA "shop_ml" TO confusion_exporter'))
        conn.execute(sa.text(f"GRANT SELECT ON {name} TO confusion_exporter"))
        day = IN_CURRENT.date() if time_type == "date" else IN_CURRENT.replace(tzinfo=None)
        rows = [
            {"ts": day, "y_at": day, "y": "cat"},
            {"ts": day, "y_at": "infinity", "y": "cat"},
            {"ts": "-infinity", "y_at": day, "y": "cat"},
            {"ts": "infinity", "y_at": None, "y": None},
        ]
        for row in rows:
            conn.execute(
                sa.text(
                    f"INSERT INTO {name} (clf, clf_ver, ts, yhat, y, y_at) "
                    f"VALUES ('m', 'v1', CAST(:ts AS {time_type}), 'cat', :y, CAST(:y_at AS {time_type}))"
                ),
                {k: str(v) if v is not None else None for k, v in row.items()},
            )
    # A date column puts the row at midnight; a window of a day holds it.
    config = make_config(name, window="1d", reference={"kind": "trailing", "length": "1d"})
    window = current_slice(snapshot_at(config, exporter_url))[("m", "v1")].windows["current"].counts
    assert window.rejected["non_finite_timestamp"] == 3
    assert window.labeled_total == 1
