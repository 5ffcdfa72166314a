"""The sequential layer through the exporter, on a real PostgreSQL.

A seeded fraud stream (2% fraud; the false-positive rate of legit 3% for three days, then
4.5%) is written into a user's own table with label-arrival times. Through the product's
read path (source/arrivals.py, sequential_tracker.py):

- every hour's decisions equal the independent implementation in tests/stats/test_sequential.py
  fed with matrices counted here in Python from the generated rows (not from SQL);
- a tracker restarted mid-accumulation (built from nothing) equals the live one that advanced
  a refresh at a time, bit for bit, and so does ``snapshot --at`` (a historical Refresher);
- the page names the cell, its reference stays at the old rate (the freeze), and
  ``baseline accept`` resolves it once, at the same instant for a replay as live.
"""

from __future__ import annotations

import io
import json
import math
import re
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import sqlalchemy as sa

from confusion_exporter.config import Config, DatabaseUrl, config_from_mapping
from confusion_exporter.exposition import SnapshotCollector, render
from confusion_exporter.parameters import sequential_parameters
from confusion_exporter.refresher import Refresher
from confusion_exporter.report import build_report, to_json, to_text
from confusion_exporter.report_html import to_html
from confusion_exporter.sequential_tracker import SequentialTracker
from confusion_exporter.source.database import reader_engine
from confusion_exporter.stats import sequential as sq
from confusion_exporter.web import landing_page

from .conftest import run_cli
from .helpers import COLUMNS, create_scored_events
from .stats.test_sequential import Reference

START = datetime(2026, 10, 1, tzinfo=UTC)
ONSET = START + timedelta(days=3)
END = START + timedelta(days=4)
PER_HOUR = 2400
PERIOD = 300


def fraud_rows(seed: int, fp_after: float = 0.045) -> list[tuple]:  # type: ignore[type-arg]
    """(model, version, ts, predicted, actual, labeled_at, segment) of the whole stream; labels
    arrive 0-15 minutes after their predictions (so periods mix predictions of two hours)."""
    rng = np.random.default_rng(seed)
    n = int(PER_HOUR * (END - START).total_seconds() / 3600)
    offsets = np.sort(rng.uniform(0, (END - START).total_seconds(), n))
    fraud = rng.random(n) < 0.02
    fp = np.where(offsets < (ONSET - START).total_seconds(), 0.03, fp_after)
    u = rng.random(n)
    predicted_fraud = np.where(fraud, u >= 0.2, u < fp)
    delay = rng.uniform(0, 900, n)
    version = np.where(offsets < (ONSET - START).total_seconds(), "v1", "v2")  # the pipeline update
    rows = []
    for i in range(n):
        ts = START + timedelta(seconds=float(offsets[i]))
        rows.append(
            (
                "fraud-gbm",
                str(version[i]),
                ts,
                "fraud" if predicted_fraud[i] else "legit",
                "fraud" if fraud[i] else "legit",
                ts + timedelta(seconds=float(delay[i])),
                "eu",
            )
        )
    return rows


def copy_rows(engine: sa.Engine, table: str, rows: list[tuple]) -> None:  # type: ignore[type-arg]
    buffer = io.StringIO()
    for r in rows:
        buffer.write("\t".join([r[0], r[1], r[2].isoformat(), r[3], r[4], r[5].isoformat(), r[6]]) + "\n")
    buffer.seek(0)
    schema, name = table.split(".")
    raw = engine.raw_connection()
    try:
        with raw.cursor() as cursor:
            cursor.copy_expert(
                f'COPY "{schema}"."{name}" (clf, clf_ver, ts, yhat, y, y_at, region) FROM STDIN', buffer
            )
        raw.commit()
    finally:
        raw.close()


def config_for(table: str, **sequential: object) -> Config:
    return config_from_mapping(config_mapping(table, **sequential), env={})


def config_mapping(table: str, **sequential: object) -> dict:  # type: ignore[type-arg]
    """The fraud monitor over ``table``, as a config file holds it."""
    return {
        "sources": [{"name": "shop", "table": table, "columns": COLUMNS}],
        "monitors": [
            {
                "source": "shop",
                "model": "fraud-gbm",
                "name": "fraud",
                "window": "1h",
                "reference": {"kind": "trailing", "length": "24h"},
                "classes": ["fraud", "legit"],
                "sequential": sequential,
            }
        ],
    }


@pytest.fixture(scope="module")
def stream(admin_engine: sa.Engine) -> tuple[str, list[tuple]]:  # type: ignore[type-arg]
    table = create_scored_events(admin_engine)
    rows = fraud_rows(seed=5)
    copy_rows(admin_engine, table, rows)
    return table, rows


def python_matrices(rows: list[tuple], classes: tuple[str, ...]) -> dict[int, np.ndarray]:  # type: ignore[type-arg]
    """Per arrival period, the K x K counts, straight from the generated rows."""
    out: dict[int, np.ndarray] = {}
    index = {c: i for i, c in enumerate(classes)}
    for _, _, _, predicted, actual, labeled_at, _ in rows:
        period = math.floor(labeled_at.timestamp() / PERIOD)
        m = out.setdefault(period, np.zeros((len(classes), len(classes)), np.int64))
        m[index[actual], index[predicted]] += 1
    return out


def test_decisions_through_postgres_equal_the_independent_implementation(stream, exporter_url):
    table, rows = stream
    config = config_for(table)
    monitor = config.monitors[0]
    tracker = SequentialTracker(monitor, config.source("shop"))
    engine = reader_engine(
        DatabaseUrl(exporter_url),
        statement_timeout=timedelta(seconds=20),
        connect_timeout=timedelta(seconds=5),
    )
    params = sequential_parameters(monitor.sequential)
    ref = Reference(2, params)
    matrices = python_matrices(rows, ("fraud", "legit"))
    first = math.ceil(START.timestamp() / PERIOD)  # the origin: the day of the first prediction
    period = first
    zero = np.zeros((2, 2), np.int64)
    agreed = 0
    seen: set[str] = set()
    try:
        with engine.connect() as connection:
            at = START + timedelta(hours=1)
            while at <= END + timedelta(hours=1):
                result = tracker.advance(connection, at)
                assert result.caught_up
                last = math.floor((at - monitor.sequential.settle).timestamp() / PERIOD)
                theirs: list[str] = []
                while period < last:
                    theirs = ref.step(matrices.get(period, zero).tolist(), period * PERIOD // 3600)
                    period += 1
                (piece,) = result.slices
                assert piece.classes == ("fraud", "legit")
                ours = [c.state for c in piece.cells]
                assert ours == theirs, f"at {at}"
                seen.update(ours)
                evidence = [c.evidence for c in piece.cells]
                assert evidence == pytest.approx([max(c.s) for c in ref.cells], rel=1e-9, abs=1e-9)
                agreed += 1
                at += timedelta(hours=1)
    finally:
        engine.dispose()
    assert agreed == 97
    assert {"stable", "shift"} <= seen, "the +50% false-positive rate pages within a day"


def _sequential_lines(refresher: Refresher) -> list[str]:
    snapshot = refresher.published.snapshot
    assert snapshot is not None
    text = render(SnapshotCollector(snapshot)).decode()
    return sorted(line for line in text.splitlines() if line.startswith("confusion_sequential_"))


def _refresher(config: Config, url: str, clock: list[datetime], historical: bool = False) -> Refresher:
    return Refresher(config, DatabaseUrl(url), clock=lambda: clock[0], historical=historical)


def test_restart_and_snapshot_at_equal_the_live_exporter(stream, exporter_url):
    """The live exporter refreshes every 20 minutes through the onset; at an instant where the
    evidence is accumulating, a restarted exporter (a fresh Refresher) and a historical one
    (``snapshot --at``) publish exactly the same sequential series."""
    table, _ = stream
    config = config_for(table)
    clock = [ONSET - timedelta(hours=2)]
    live = _refresher(config, exporter_url, clock)
    checked = 0
    accumulating_seen = False
    try:
        while clock[0] <= ONSET + timedelta(hours=8):
            assert live.refresh(), live.health.last_error
            snapshot = live.published.snapshot
            assert snapshot is not None
            result = snapshot.monitors["fraud"].sequential
            assert result is not None and result.caught_up
            (piece,) = result.slices
            if piece.state in ("accumulating", "shift") and checked < 2:
                accumulating_seen = accumulating_seen or piece.state == "accumulating"
                for historical in (False, True):
                    restarted = _refresher(config, exporter_url, [clock[0]], historical=historical)
                    try:
                        # A restarted exporter replays within a budget per refresh: refresh
                        # until it has caught up (a historical one replays in one go).
                        for _ in range(30):
                            assert restarted.refresh(), restarted.health.last_error
                            done = restarted.published.snapshot.monitors["fraud"].sequential  # type: ignore[union-attr]
                            if done is not None and done.caught_up:
                                break
                        assert _sequential_lines(restarted) == _sequential_lines(live)
                        tracker = restarted._trackers["fraud"]
                        for key, state in live._trackers["fraud"].states.items():
                            assert sq.states_equal(state, tracker.states[key])
                    finally:
                        restarted.engine.dispose()
                checked += 1
            clock[0] += timedelta(minutes=20)
    finally:
        live.engine.dispose()
    assert checked == 2, "the run reached evidence worth checking"
    assert accumulating_seen, "one check fell while the evidence was accumulating (not yet paged)"


def test_the_page_names_the_cell_keeps_the_reference_and_accept_resolves_once(
    stream, exporter_url, cli, tmp_path, admin_engine
):
    table, _ = stream
    config = config_for(table, accept_after=None)
    clock = [END]
    live = _refresher(config, exporter_url, clock)
    try:
        assert live.refresh(), live.health.last_error
        result = live.published.snapshot.monitors["fraud"].sequential  # type: ignore[union-attr]
        (piece,) = result.slices
        assert piece.state == "shift"
        (paged,) = piece.shifted
        assert paged.description == "legit predicted as fraud"
        # Frozen: the reference is the old regime's rate, not a blend with the new one.
        assert paged.reference_rate == pytest.approx(0.03, rel=0.08)
        assert paged.current_rate == pytest.approx(0.045, rel=0.08)
        assert paged.relative_change_low > 0.2
        assert re.fullmatch(r"legit predicted as fraud: [23]\.\d\d% -> 4\.\d\d%, \+\d\d%", sq.sentence(paged))
        # The landing page and the report say it in words.
        snapshot = live.published.snapshot
        assert snapshot is not None
        page = landing_page(snapshot).decode()
        assert 'data-state="shift"' in page and "legit predicted as fraud: " in page
        report = build_report(snapshot.monitors["fraud"])
        section = report["sequential"]
        assert section["caught_up"] and section["slices"][0]["state"] == "shift"
        first = section["slices"][0]["cells"][0]
        assert first["description"] == "legit predicted as fraud" and first["state"] == "shift"
        assert json.loads(to_json(report))["sequential"] == section
        text = to_text(report)
        assert "small persistent changes" in text and "shift             legit predicted as fraud: " in text
        assert "legit predicted as fraud" in to_html(report)
        lines = _sequential_lines(live)
        assert any(
            line.startswith("confusion_sequential_shifted{")
            and 'true_class="legit"' in line
            and 'predicted_class="fraud"' in line
            and line.endswith(" 1.0")
            for line in lines
        )

        # The operator accepts the new regime (the event is dated by the database's clock, so
        # the test dates the accept in the data's past by moving the event afterwards).
        path = tmp_path / "config.yaml"
        import yaml

        path.write_text(yaml.safe_dump(config_mapping(table, accept_after=None)))
        done = run_cli(
            cli, "baseline", "accept", "--config", str(path), "--monitor", "fraud", "--model", "fraud-gbm",
            env={"DATABASE_URL": exporter_url},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "accepted the new regime of monitor 'fraud'" in done.stdout
        accepted_at = END + timedelta(minutes=1)
        with admin_engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE confusion_exporter.sequential_accepts SET accepted_at = :at"),
                {"at": accepted_at},
            )
        unknown = run_cli(
            cli, "baseline", "accept", "--config", str(path), "--monitor", "nope",
            env={"DATABASE_URL": exporter_url},
        )  # fmt: skip
        assert unknown.returncode == 2 and "--monitor: unknown monitor 'nope'" in unknown.stderr

        states = []
        for minutes in (5, 10, 30, 60, 120):
            clock[0] = END + timedelta(minutes=minutes)
            assert live.refresh(), live.health.last_error
            (piece,) = live.published.snapshot.monitors["fraud"].sequential.slices  # type: ignore[union-attr]
            states.append(piece.state)
        # Resolved at the period holding the event, and it stays resolved on the new regime.
        assert states[0] == "shift" or states[1] != "shift"
        assert "shift" not in states[1:], states
        # A replay reaches the same instant's state, before and after the event.
        for instant, expected in ((END, "shift"), (END + timedelta(minutes=120), states[-1])):
            replay = _refresher(config, exporter_url, [instant], historical=True)
            try:
                assert replay.refresh(), replay.health.last_error
                (piece,) = replay.published.snapshot.monitors["fraud"].sequential.slices  # type: ignore[union-attr]
                assert piece.state == expected
            finally:
                replay.engine.dispose()
    finally:
        live.engine.dispose()
        with admin_engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM confusion_exporter.sequential_accepts"))


def test_an_unchanged_stream_stays_unpaged(admin_engine, exporter_url):
    """The same stream without the change: four days, no cell ever latches."""
    table = create_scored_events(admin_engine)
    copy_rows(admin_engine, table, fraud_rows(seed=9, fp_after=0.03))
    config = config_for(table)
    clock = [START + timedelta(hours=12)]
    live = _refresher(config, exporter_url, clock)
    try:
        while clock[0] <= END:
            assert live.refresh(), live.health.last_error
            (piece,) = live.published.snapshot.monitors["fraud"].sequential.slices  # type: ignore[union-attr]
            assert piece.state != "shift", clock[0]
            clock[0] += timedelta(hours=6)
    finally:
        live.engine.dispose()


def _copy(engine: sa.Engine, target: str, columns: str, lines: list[str]) -> None:
    raw = engine.raw_connection()
    try:
        with raw.cursor() as cursor:
            cursor.copy_expert(f"COPY {target} ({columns}) FROM STDIN", io.StringIO("".join(lines)))
        raw.commit()
    finally:
        raw.close()


def test_corrections_after_the_first_label_replay_exactly_on_the_reference_schema(
    clean_reference_schema, exporter_url
):
    """Labels corrected after the live exporter has counted them: on a ``rollup`` source (the
    reference schema's append-only labels) a replay equals the live exporter, because each
    prediction counts once, at its first label. Read through the view, which shows only the
    latest label, the same history does not replay exactly (the approximation docs/sequential.md
    states): the check below can tell the two apart."""
    engine = clean_reference_schema
    rng = np.random.default_rng(21)
    n = int(PER_HOUR * 3 * 24)
    offsets = np.sort(rng.uniform(0, 3 * 86400, n))
    fraud = rng.random(n) < 0.02
    predicted_fraud = np.where(fraud, rng.random(n) >= 0.2, rng.random(n) < 0.03)
    first_at = offsets + rng.uniform(0, 900, n)
    cls = np.where(fraud, "fraud", "legit")
    t1 = 2.5 * 86400
    _copy(
        engine, "inference.predictions", "id, model_name, model_version, predicted_at, predicted_class, segment",
        [
            f"{i + 1}\tfraud-gbm\tv1\t{(START + timedelta(seconds=float(offsets[i]))).isoformat()}\t"
            f"{'fraud' if predicted_fraud[i] else 'legit'}\teu\n"
            for i in range(n)
        ],
    )  # fmt: skip
    _copy(
        engine, "inference.labels", "id, prediction_id, true_class, labeled_at",
        [
            f"{i + 1}\t{i + 1}\t{cls[i]}\t{(START + timedelta(seconds=float(first_at[i]))).isoformat()}\n"
            for i in range(n)
        ],
    )  # fmt: skip
    view = {"name": "ref", "table": "inference.labeled_predictions"}
    from confusion_exporter.source.reference_schema import VIEW_COLUMNS

    def config(rollup: bool) -> Config:
        return config_from_mapping(
            {
                "sources": [{**view, "columns": VIEW_COLUMNS, **({"rollup": True} if rollup else {})}],
                "monitors": [
                    {
                        "source": "ref",
                        "model": "fraud-gbm",
                        "name": "fraud",
                        "window": "1h",
                        "reference": {"kind": "trailing", "length": "6h"},
                        "classes": ["fraud", "legit"],
                    }
                ],
            },
            env={},
        )

    # The trackers the live exporter keeps, advanced every 30 minutes as its refreshes do (the
    # Refresher path is test_restart_and_snapshot_at_equal_the_live_exporter's).
    engine_ro = reader_engine(
        DatabaseUrl(exporter_url),
        statement_timeout=timedelta(seconds=60),
        connect_timeout=timedelta(seconds=5),
    )
    try:
        with engine_ro.connect() as connection:
            at = START + timedelta(seconds=t1)
            lives = {}
            for rollup in (True, False):
                c = config(rollup)
                lives[rollup] = SequentialTracker(c.monitors[0], c.source("ref"))
                assert lives[rollup].advance(connection, at).caught_up
            connection.rollback()
            # Corrections arrive now, for 20% of the predictions whose first label the exporter
            # has already counted: the class flipped, dated in the next six hours.
            with engine.begin() as conn:  # the copy set explicit ids; later rows take the next ones
                conn.execute(
                    sa.text(
                        "SELECT setval('inference.labels_id_seq', (SELECT max(id) FROM inference.labels))"
                    )
                )
            counted = np.flatnonzero((first_at < t1 - 600) & (offsets > 2 * 86400))
            chosen = rng.choice(counted, size=len(counted) // 5, replace=False)
            _copy(
                engine, "inference.labels", "prediction_id, true_class, labeled_at",
                [
                    f"{i + 1}\t{'legit' if cls[i] == 'fraud' else 'fraud'}\t"
                    f"{(START + timedelta(seconds=t1 + float(rng.uniform(0, 6 * 3600)))).isoformat()}\n"
                    for i in chosen
                ],
            )  # fmt: skip
            for _ in range(16):
                at += timedelta(minutes=30)
                for live in lives.values():
                    assert live.advance(connection, at).caught_up
                connection.rollback()  # a new transaction per refresh, as the exporter's
            matches = {}
            for rollup, live in lives.items():
                c = config(rollup)
                replay = SequentialTracker(c.monitors[0], c.source("ref"))
                result = replay.advance(connection, at)
                assert result.caught_up
                assert live.states.keys() == replay.states.keys() == {("fraud-gbm", "eu")}
                matches[rollup] = all(sq.states_equal(live.states[k], replay.states[k]) for k in live.states)
                if rollup:
                    assert result.slices == live.slices()
            assert matches == {True: True, False: False}
    finally:
        engine_ro.dispose()


def test_a_new_block_moves_the_origin_and_the_live_tracker_follows_exactly(admin_engine, exporter_url):
    """With ``max_history: 15d`` over 24 days of data the origin moves a week at a time. Across
    those moves the live tracker (advanced every day, the next origin replayed beside it)
    equals a tracker built from nothing at the same instant; with a budget too small to catch
    up at once, it keeps publishing from the old origin until the successor has caught up."""
    table = create_scored_events(admin_engine)
    rng = np.random.default_rng(3)
    begin = datetime(2026, 9, 1, tzinfo=UTC)
    n = 300 * 24 * 24
    offsets = np.sort(rng.uniform(0, 24 * 86400, n))
    fraud = rng.random(n) < 0.05
    predicted = np.where(fraud, rng.random(n) >= 0.2, rng.random(n) < 0.03)
    rows = []
    for i in range(n):
        ts = begin + timedelta(seconds=float(offsets[i]))
        p, a = ("fraud" if predicted[i] else "legit"), ("fraud" if fraud[i] else "legit")
        rows.append(("fraud-gbm", "v1", ts, p, a, ts + timedelta(seconds=60), "eu"))
    copy_rows(admin_engine, table, rows)
    config = config_for(table, max_history="15d")
    monitor = config.monitors[0]
    engine = reader_engine(
        DatabaseUrl(exporter_url),
        statement_timeout=timedelta(seconds=20),
        connect_timeout=timedelta(seconds=5),
    )
    try:
        with engine.connect() as connection:
            live = SequentialTracker(monitor, config.source("shop"))
            origins = set()
            at = begin + timedelta(days=16)
            while at <= begin + timedelta(days=24):
                result = live.advance(connection, at)
                assert result.caught_up
                fresh = SequentialTracker(monitor, config.source("shop"))
                assert fresh.advance(connection, at).origin == result.origin
                assert live.states.keys() == fresh.states.keys()
                assert all(sq.states_equal(live.states[k], fresh.states[k]) for k in live.states)
                origins.add(result.origin)
                at += timedelta(hours=24)
            assert len(origins) >= 2, "the origin moved with a new block"
            # A budget of nothing: one read per call, so the old origin stays published a while.
            slow = SequentialTracker(monitor, config.source("shop"))
            before = begin + timedelta(days=16)
            while not slow.advance(connection, before).caught_up:
                pass
            old_origin = slow.origin
            later = before + timedelta(days=7)
            seen = []
            for _ in range(100):
                result = slow.advance(connection, later, budget=timedelta(0))
                seen.append(result.origin)
                if result.origin != old_origin and result.caught_up:
                    break
            assert seen[0] == old_origin and seen[-1] != old_origin
            final = SequentialTracker(monitor, config.source("shop"))
            final.advance(connection, later)
            assert all(sq.states_equal(slow.states[k], final.states[k]) for k in final.states)
    finally:
        engine.dispose()


def test_the_first_label_read_probes_predictions_by_key_when_the_statistics_are_stale(
    clean_reference_schema,
):
    """A model the planner's statistics have not seen yet (a new model, or predictions copied in
    since the last ANALYZE) must not turn the per-label primary-key probe into a scan of the
    model's predictions per label: that plan took minutes per read on 170,000 predictions."""
    from confusion_exporter.source.arrivals import first_labels_query
    from confusion_exporter.source.class_cap import ClassCap, capped_counts
    from confusion_exporter.source.reference_schema import VIEW_COLUMNS

    engine = clean_reference_schema
    n = 20_000
    stamp = START.isoformat()
    _copy(
        engine, "inference.predictions", "id, model_name, model_version, predicted_at, predicted_class, segment",
        [f"{i + 1}\tother-model\tv1\t{stamp}\tlegit\teu\n" for i in range(n)],
    )  # fmt: skip
    with engine.begin() as conn:
        conn.execute(sa.text("ANALYZE inference.predictions"))
        conn.execute(sa.text("ANALYZE inference.labels"))
    _copy(
        engine, "inference.predictions", "id, model_name, model_version, predicted_at, predicted_class, segment",
        [f"{n + i + 1}\tfraud-gbm\tv1\t{stamp}\tlegit\teu\n" for i in range(n)],
    )  # fmt: skip
    _copy(
        engine, "inference.labels", "id, prediction_id, true_class, labeled_at",
        [f"{i + 1}\t{n + i + 1}\tlegit\t{(START + timedelta(seconds=i)).isoformat()}\n" for i in range(n)],
    )  # fmt: skip
    config = config_from_mapping(
        {
            "sources": [{"name": "ref", "table": "inference.labeled_predictions", "columns": VIEW_COLUMNS, "rollup": True}],
            "monitors": [
                {"source": "ref", "model": "fraud-gbm", "window": "1h",
                 "reference": {"kind": "trailing", "length": "6h"}, "classes": ["fraud", "legit"]}
            ],
        },
        env={},
    )  # fmt: skip
    monitor, source = config.monitors[0], config.sources[0]
    query = capped_counts(
        first_labels_query(
            source, monitor, START, START + timedelta(hours=1), timedelta(minutes=5), timedelta(0)
        ),
        ClassCap(max_classes=10, classes=monitor.classes),
    )
    compiled = query.compile(engine, compile_kwargs={"render_postcompile": True})
    with engine.connect() as conn:
        plan = conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {compiled}", compiled.params).scalar_one()
    scans = [node for node in _plan_nodes(plan[0]["Plan"]) if node.get("Relation Name") == "predictions"]
    assert scans, json.dumps(plan)[:3000]
    for node in scans:
        assert node["Node Type"] == "Index Scan" and node["Index Name"] == "predictions_pkey", json.dumps(
            node
        )[:2000]
        assert "prediction_id" in node["Index Cond"], json.dumps(node)[:2000]


def _plan_nodes(node: dict):  # type: ignore[no-untyped-def, type-arg]
    yield node
    for child in node.get("Plans", []):
        yield from _plan_nodes(child)
