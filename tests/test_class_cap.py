"""The class cap is applied in SQL: a table with thousands of distinct classes sends only
capped cells to Python, in both read paths, for every reference kind, and the comparison of
two windows never exceeds ``max_classes`` once a version or a baseline is merged in."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pandas as pd
import sqlalchemy as sa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from confusion_exporter.config import DatabaseUrl, config_from_mapping
from confusion_exporter.matrices import OTHER, _choose_classes, class_order
from confusion_exporter.refresher import Refresher
from confusion_exporter.snapshot import Snapshot
from confusion_exporter.source.reference_schema import insert_labels, insert_predictions
from confusion_exporter.source.rollup import reset

from .conftest import run_cli
from .helpers import COLUMNS, NOW, REFERENCE_SOURCE, Row, create_scored_events, insert_rows, make_config

MANY = 4_000  # distinct classes: enough that an uncapped read sends thousands of cells


ARRIVAL_ROWS: list[int] = []  # the sequential layer's reads in the last refresh()


@contextmanager
def rows_fetched(refresher: Refresher) -> Iterator[list[int]]:
    """Count the rows every window statement of ``refresher`` returns from the database (the
    sequential layer's reads, one row per cell per 5-minute period, go to ARRIVAL_ROWS)."""
    fetched: list[int] = []
    ARRIVAL_ROWS.clear()

    def count(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if cursor.description is not None:
            (ARRIVAL_ROWS if "arrivals_start" in statement else fetched).append(cursor.rowcount)

    sa.event.listen(refresher.engine, "after_cursor_execute", count)
    try:
        yield fetched
    finally:
        sa.event.remove(refresher.engine, "after_cursor_execute", count)


def refresh(config, url: str, now: datetime = NOW) -> tuple[Snapshot, int]:  # type: ignore[no-untyped-def]
    """One refresh as of ``now``; (its snapshot, the largest result set it fetched)."""
    refresher = Refresher(config, DatabaseUrl(url), clock=lambda: now)
    try:
        with rows_fetched(refresher) as fetched:
            assert refresher.refresh(), refresher.health.last_error
    finally:
        refresher.engine.dispose()
    assert refresher.published.snapshot is not None
    return refresher.published.snapshot, max(fetched)


def many_classes(version: str = "v1", prefix: str = "class-", count: int = MANY) -> list[Row]:
    """``count`` singleton classes spread over the current and reference windows, half mislabeled."""
    return [
        Row("m", version, NOW - timedelta(seconds=(i * 7) % 14_000), f"{prefix}{i}", f"{prefix}{(i + i % 2)}")
        for i in range(count)
    ]


def test_only_capped_cells_reach_python_for_thousands_of_classes(admin_engine, exporter_url):
    table = create_scored_events(admin_engine)
    common = [Row("m", "v1", NOW - timedelta(seconds=i), "common", "common") for i in range(300)]
    insert_rows(admin_engine, table, [*many_classes(), *common])
    snapshot, largest = refresh(make_config(table, extra_monitor={"max_classes": 20}), exporter_url)
    # Two windows of at most 20 x 20 labeled cells and 20 unlabeled ones, not thousands.
    assert largest <= 2 * (20 * 20 + 20)
    by_window = snapshot.monitors["shop:*"].slices[0].windows
    current, reference = by_window["current"].counts, by_window["reference"].counts
    assert current.classes == reference.classes and len(current.classes) == 20
    assert current.classes[-1] == OTHER and "common" in current.classes
    in_current = [r for r in many_classes() if current.window.start <= r.ts < current.window.end]
    assert current.labeled_total == len(in_current) + 300  # folding loses no prediction
    kept = set(current.classes)
    assert current.folded == sum(1 for r in in_current if r.predicted not in kept or r.actual not in kept)


def test_a_source_without_labeled_at_is_capped_too(admin_engine, exporter_url):
    table = create_scored_events(admin_engine)
    insert_rows(admin_engine, table, many_classes())
    columns = {k: v for k, v in COLUMNS.items() if k != "labeled_at"}
    snapshot, largest = refresh(
        make_config(table, columns=columns, extra_monitor={"max_classes": 20}), exporter_url
    )
    assert largest <= 2 * (20 * 20 + 20)
    current = snapshot.monitors["shop:*"].slices[0].windows["current"].counts
    assert len(current.classes) == 20 and current.folded > 0
    # Without labeled_at every labeled row is an arrival at its prediction time: the sequential
    # layer's read is capped too, per 5-minute period at its own 10 classes (not thousands).
    periods = len({int(r.ts.timestamp()) // 300 for r in many_classes()})
    assert ARRIVAL_ROWS and sum(ARRIVAL_ROWS) <= periods * (10 * 10)
    (piece,) = snapshot.monitors["shop:*"].sequential.slices  # type: ignore[union-attr]
    assert len(piece.classes) == 10 and piece.classes[-1] == "__other__"


def test_rejected_and_unknown_classes_are_counted_in_sql(admin_engine, exporter_url):
    table = create_scored_events(admin_engine)
    label_only = [Row("m", "v1", NOW - timedelta(seconds=i % 3000), None, f"orphan-{i}") for i in range(MANY)]
    insert_rows(admin_engine, table, [*many_classes(), *label_only])
    config = make_config(table, extra_monitor={"classes": ["class-0", "class-2"]})
    snapshot, largest = refresh(config, exporter_url)
    assert largest <= 50  # one row per window, reason and listed cell
    current = snapshot.monitors["shop:*"].slices[0].windows["current"].counts
    window = current.window
    in_current = [r for r in many_classes() if window.start <= r.ts < window.end]
    listed = [r for r in in_current if {r.predicted, r.actual} <= {"class-0", "class-2"}]
    assert current.classes == ("class-0", "class-2") and current.labeled_total == len(listed)
    assert current.rejected["unknown_class"] == len(in_current) - len(listed)
    assert current.rejected["label_without_prediction"] == sum(
        1 for r in label_only if window.start <= r.ts < window.end
    )


def test_a_version_reference_shares_one_capped_class_set_across_versions(admin_engine, exporter_url):
    table = create_scored_events(admin_engine)
    # Each version alone is within the cap; together they are not.
    stable = [Row("m", "stable", NOW - timedelta(seconds=i), f"a{i % 15}", f"a{i % 15}") for i in range(900)]
    canary = [Row("m", "canary", NOW - timedelta(seconds=i), f"b{i % 15}", f"b{i % 15}") for i in range(600)]
    insert_rows(admin_engine, table, [*stable, *canary])
    config = make_config(
        table, reference={"kind": "version", "version": "stable"}, extra_monitor={"max_classes": 20}
    )
    snapshot, _ = refresh(config, exporter_url)
    slices = {s.key.version: s for s in snapshot.monitors["shop:*"].slices}
    compared = set(slices["stable"].windows["current"].counts.classes) | set(
        slices["canary"].windows["current"].counts.classes
    )
    assert len(compared) <= 20 and OTHER in compared
    tested = {r.true_class for r in slices["canary"].shift.rows}
    assert 15 < len(tested) <= 20  # the tested matrix is 20 x 20, not 30 x 30
    canary_counts = slices["canary"].windows["current"].counts
    assert canary_counts.labeled_total == 600
    # The stable version's 15 classes are the most frequent: canary keeps 4 of its own.
    assert canary_counts.folded == 600 - 4 * 40


def test_a_baseline_is_ranked_with_the_current_window(admin_engine, exporter_url, cli, tmp_path):
    import yaml

    from confusion_exporter.config import load_config

    table = create_scored_events(admin_engine)
    deploy = NOW.replace(minute=0, second=0) - timedelta(days=2)
    past = [Row("m", "v1", deploy + timedelta(seconds=i), f"a{i % 15}", f"a{i % 15}") for i in range(900)]
    now = [Row("m", "v1", NOW - timedelta(seconds=i), f"b{i % 15}", f"b{i % 15}") for i in range(600)]
    insert_rows(admin_engine, table, [*past, *now])
    raw = {
        "sources": [{"name": "shop", "table": table, "columns": COLUMNS}],
        "monitors": [
            {
                "source": "shop",
                "model": "m",
                "name": "pinned",
                "window": "1h",
                "max_classes": 20,
                "reference": {"kind": "baseline", "name": "deploy"},
            }
        ],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    args = ["--monitor", "pinned", "--name", "deploy", "--from", deploy.isoformat()]
    args += ["--to", (deploy + timedelta(hours=1)).isoformat()]
    captured = run_cli(
        cli, "baseline", "capture", "--config", str(path), *args, env={"DATABASE_URL": exporter_url}
    )
    assert captured.returncode == 0, captured.stderr
    snapshot, _ = refresh(load_config(path, env={}), exporter_url)
    result = snapshot.monitors["pinned"].slices[0]
    reference, current = result.windows["reference"].counts, result.windows["current"].counts
    assert reference.classes == current.classes and len(current.classes) == 20
    assert reference.labeled_total == 900 and current.labeled_total == 600
    assert reference.folded == 0 and current.folded == 600 - 4 * 40
    assert 15 < len({r.true_class for r in result.shift.rows}) <= 20


def test_the_rollup_path_caps_in_sql_and_equals_the_full_query(clean_reference_schema, exporter_url):
    now = datetime.now(UTC).replace(second=30, microsecond=0)
    predictions = [
        {
            "model_name": "m",
            "model_version": "v1",
            "predicted_at": now - timedelta(seconds=(i * 7) % 14_000),
            "predicted_class": f"c{i % 2500}",
            "segment": None,
        }
        for i in range(5000)
    ]
    with clean_reference_schema.begin() as conn:
        ids = insert_predictions(conn, predictions)
        insert_labels(
            conn,
            [
                {"prediction_id": pid, "true_class": f"c{(i * 3) % 2500}", "labeled_at": now}
                for i, pid in enumerate(ids)
                if i % 3
            ],
        )
    with sa.create_engine(exporter_url).begin() as conn:
        reset(conn, "ref")

    def config(rollup: bool):  # type: ignore[no-untyped-def]
        return config_from_mapping(
            {
                "sources": [{**REFERENCE_SOURCE, "rollup": rollup}],
                "monitors": [
                    {
                        "source": "ref",
                        "model": "*",
                        "window": "1h",
                        "max_classes": 12,
                        "reference": {"kind": "trailing", "length": "3h"},
                    }
                ],
            },
            env={},
        )

    incremental, largest_rollup = refresh(config(True), exporter_url, now)
    full, largest_full = refresh(config(False), exporter_url, now)
    assert largest_rollup <= 2 * (12 * 12 + 12) and largest_full <= 2 * (12 * 12 + 12)
    for x, y in zip(incremental.monitors["ref:*"].slices, full.monitors["ref:*"].slices, strict=True):
        for window in ("current", "reference"):
            cx, cy = x.windows[window].counts, y.windows[window].counts
            assert cx.classes == cy.classes and len(cx.classes) == 12
            assert (cx.matrix == cy.matrix).all() and (cx.unlabeled == cy.unlabeled).all()
            assert cx.folded == cy.folded > 0


# Class names whose natural order is easy to get wrong: digit runs, leading zeros, case,
# non-ASCII digits (int() refuses "²"), the overflow class's own name.
names = st.one_of(
    st.sampled_from(
        ["2", "10", "007", "7", "a7", "a07", "a7b", "B", "b", "²", "x10y2", "x9y10", OTHER, "é1"]
    ),
    st.text(alphabet="a0123456789²Z", min_size=1, max_size=14),  # up to 7 digit runs
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(counts=st.dictionaries(names, st.integers(1, 4), min_size=1, max_size=14), cap=st.integers(2, 8))
# Equal in natural order, so only the code-point tie-break orders them (found by this test).
@example(counts={"2": 1, "10": 1, "007": 2, "7": 3}, cap=3)
def test_sql_ranking_keeps_the_classes_the_python_rule_keeps(counts, cap, admin_engine, exporter_url):
    table = create_scored_events(admin_engine)
    rows = [
        Row("m", "v1", NOW - timedelta(seconds=i), name, name) for name, n in counts.items() for i in range(n)
    ]
    insert_rows(admin_engine, table, rows)
    snapshot, _ = refresh(make_config(table, extra_monitor={"max_classes": cap}), exporter_url)
    counts_now = snapshot.monitors["shop:*"].slices[0].windows["current"].counts
    # Each row counts once as predicted and once as true, in SQL as in the Python rule.
    frame = pd.DataFrame({"predicted": list(counts), "actual": list(counts), "n": list(counts.values())})
    expected, _ = _choose_classes(frame, cap)
    assert counts_now.classes == expected
    assert counts_now.classes == class_order(list(counts_now.classes))
    assert counts_now.labeled_total == len(rows)


def test_a_baseline_capture_of_thousands_of_classes_fetches_only_capped_cells(admin_engine, exporter_url):
    from confusion_exporter.baseline import capture_baseline

    table = create_scored_events(admin_engine)
    start = NOW.replace(minute=0, second=0) - timedelta(hours=6)
    insert_rows(
        admin_engine,
        table,
        [Row("m", "v1", start + timedelta(seconds=i % 3000), f"c{i}", f"c{i}") for i in range(MANY)],
    )
    config = make_config(
        table, model="m", reference={"kind": "baseline", "name": "big"}, extra_monitor={"max_classes": 20}
    )
    engine = sa.create_engine(exporter_url)
    fetched: list[int] = []

    def count(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if cursor.description is not None:
            fetched.append(cursor.rowcount)

    sa.event.listen(engine, "after_cursor_execute", count)
    try:
        slices, cells = capture_baseline(
            engine, config, "shop:m", "big", start, start + timedelta(hours=1), NOW
        )
    finally:
        engine.dispose()
    assert slices == 1 and cells == 20  # 19 kept classes and __other__, on the diagonal
    assert max(fetched) <= 20 * 20 + 20
