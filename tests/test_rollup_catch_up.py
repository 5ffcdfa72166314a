"""Turning on a rollup over an existing history: the first fold (or a backlog after an outage)
progresses in bounded batches under a small statement_timeout, monitors are served from the
source table until the rollup has caught up, and the rollup then equals a recount."""

from __future__ import annotations

import random
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
import yaml

from confusion_exporter.config import config_from_mapping
from confusion_exporter.folding import MIN_BATCH_ROWS, next_batch_rows
from confusion_exporter.source.reference_schema import VIEW, VIEW_COLUMNS, insert_labels, insert_predictions
from confusion_exporter.source.rollup import fold, recount_range, reset

from .conftest import run_cli
from .processes import ExporterProcess, http_get, value, wait_until
from .test_rollup import BUCKET, Writer, assert_equal, rollup_config

EPOCH = datetime.fromtimestamp(0, UTC)
FAR = datetime(2030, 1, 1, tzinfo=UTC)  # recount_range binds int32 seconds


def assert_equal_to_what_was_folded(connection: sa.Connection, config) -> None:  # type: ignore[no-untyped-def]
    """`rebuild --check`: the stored cells equal a recount of the folded rows (mid catch-up too)."""
    with connection.begin():
        stored, recounted = recount_range(connection, config.sources[0], BUCKET, EPOCH, FAR, write=False)
    assert stored.keys() == recounted.keys(), stored.keys() ^ recounted.keys()
    for key, (n, delay) in recounted.items():
        assert stored[key][0] == n, key
        assert stored[key][1] == pytest.approx(delay, abs=1e-6), key


def test_batch_size_moves_toward_the_target_duration_within_bounds():
    assert next_batch_rows(10_000, True, 0.1, 0.05) == 5_000  # twice too slow: half
    assert next_batch_rows(10_000, True, 1.0, 0.05) == 5_000  # at most halved per batch
    assert next_batch_rows(10_000, True, 0.001, 0.05) == 20_000  # at most doubled
    assert next_batch_rows(10_000, True, 0.04, 0.05) == 12_500
    assert next_batch_rows(10_000, False, 0.001, 0.05) == 10_000  # not cut by its limit: says nothing
    assert next_batch_rows(MIN_BATCH_ROWS, True, 10.0, 0.05) == MIN_BATCH_ROWS


@pytest.mark.parametrize("seed", range(4))
def test_bounded_folds_stay_equal_to_a_recount_of_what_they_folded(
    seed, clean_reference_schema, exporter_url
):
    """Folds of 1 to 10 ids per table under out-of-order writers, aborts, late labels and
    corrections: after every batch the rollup equals a recount of the folded rows (labels of
    predictions not folded yet wait), and once caught up, a full recount of the tables."""
    admin = clean_reference_schema
    clients = sa.create_engine(admin.url, poolclass=sa.pool.NullPool)
    rng = random.Random(100 + seed)
    config = rollup_config()
    source = config.sources[0]
    exporter = sa.create_engine(exporter_url)
    with exporter.begin() as conn:
        reset(conn, "ref")
    writers: list[Writer] = []
    limited = 0
    try:
        for _step in range(150):
            action = rng.random()
            if action < 0.3 or not writers:
                writers.append(Writer(clients, rng))
                writers[-1].predictions(rng.randint(1, 30))
            elif action < 0.5:
                rng.choice(writers).labels(rng.randint(1, 25))
            elif action < 0.7:
                writers.pop(rng.randrange(len(writers))).finish(commit=rng.random() < 0.85)
            else:
                with exporter.connect() as conn, conn.begin():
                    result = fold(conn, source, BUCKET, batch_rows=rng.choice([1, 2, 3, 10]))
                limited += not result.caught_up
                with exporter.connect() as conn:
                    assert_equal_to_what_was_folded(conn, config)
        for writer in writers:
            writer.finish(commit=True)
        writers.clear()
        deadline = time.monotonic() + 30
        while True:
            with exporter.connect() as conn, conn.begin():
                result = fold(conn, source, BUCKET, batch_rows=7)
            with exporter.connect() as conn:
                assert_equal_to_what_was_folded(conn, config)
            done = result.caught_up and result.pending_predictions == result.pending_labels == 0
            if done or time.monotonic() > deadline:
                break
            time.sleep(0.05 if not result.caught_up else 0.5)
        assert result.caught_up
        with admin.connect() as conn:
            assert_equal(conn)
        assert limited >= 5  # the batches really were cut short
    finally:
        for writer in writers:
            writer.finish(commit=False)
        exporter.dispose()
        clients.dispose()


def generate_history(engine: sa.Engine, predictions: int, now: datetime, days: int = 10) -> None:
    """An existing history in time order (ids grow with time, as an append-only table's do):
    90% labeled ten minutes later, 5% of those corrected."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO inference.predictions (model_name, model_version, predicted_at, predicted_class, score) "
                "SELECT 'hist', 'v1', t, (i % 7)::text, 0.5 + (i % 50) / 100.0 FROM ("
                "  SELECT i, CAST(:now AS timestamptz) - :days * interval '1 day' * (1 - i::float8 / :n) AS t "
                "  FROM generate_series(1, :n) i) s ORDER BY t"
            ),
            {"n": predictions, "now": now, "days": days},
        )
        conn.execute(
            sa.text(
                "INSERT INTO inference.labels (prediction_id, true_class, labeled_at) "
                "SELECT id, CASE WHEN id % 10 = 0 THEN ((id + 1) % 7)::text ELSE predicted_class END, "
                "predicted_at + interval '10 minutes' FROM inference.predictions WHERE id % 10 <> 3 ORDER BY id"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO inference.labels (prediction_id, true_class, labeled_at) "
                "SELECT id, ((id + 2) % 7)::text, predicted_at + interval '1 hour' FROM inference.predictions "
                "WHERE id % 20 = 1 ORDER BY id"
            )
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE inference.predictions"))
        conn.execute(sa.text("VACUUM ANALYZE inference.labels"))


def late_writes(engine: sa.Engine, stop: threading.Event, before: datetime, written: list[int]) -> None:
    """Late labels and corrections for old predictions, and late-arriving old predictions with
    their labels, all before the monitors' windows, while the rollup catches up."""
    rng = random.Random(7)
    max_id = 0
    while not stop.is_set():
        with engine.begin() as conn:
            if not max_id:
                max_id = conn.execute(
                    sa.text("SELECT max(id) FROM inference.predictions WHERE predicted_at < :b"),
                    {"b": before},
                ).scalar_one()
            targets = [rng.randint(1, max_id) for _ in range(40)]
            insert_labels(
                conn,
                [
                    {"prediction_id": p, "true_class": str(rng.randint(0, 6)), "labeled_at": before}
                    for p in targets
                ],
            )
            ids = insert_predictions(
                conn,
                [
                    {
                        "model_name": "hist",
                        "model_version": "v1",
                        "predicted_at": before - timedelta(hours=rng.uniform(1, 48)),
                        "predicted_class": str(rng.randint(0, 6)),
                        "score": 0.5,
                    }
                    for _ in range(10)
                ],
            )
            insert_labels(
                conn, [{"prediction_id": i, "true_class": "1", "labeled_at": before} for i in ids[:7]]
            )
        written.append(len(targets) + len(ids) + 7)
        time.sleep(0.05)


def current_labeled(engine: sa.Engine, start: datetime, end: datetime) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM inference.labeled_predictions WHERE model_name = 'hist' "
                    "AND predicted_at >= :s AND predicted_at < :e AND true_class IS NOT NULL"
                ),
                {"s": start, "e": end},
            ).scalar_one()
        )


def folded_in(engine: sa.Engine, start: datetime, end: datetime) -> int:
    """Predictions of [start, end) the rollup holds so far."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text(
                    "SELECT coalesce(sum(n), 0) FROM confusion_exporter.rollup_cells WHERE source = 'history' "
                    "AND tier = 0 AND bucket >= :a AND bucket < :b"
                ),
                {"a": int(start.timestamp()) // BUCKET, "b": int(end.timestamp()) // BUCKET},
            ).scalar_one()
        )


def current_window(parsed: dict) -> tuple[datetime, datetime]:  # type: ignore[type-arg]
    start = value(parsed, "confusion_window_start_timestamp_seconds", monitor="hist", window="current")
    end = value(parsed, "confusion_window_end_timestamp_seconds", monitor="hist", window="current")
    return datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC)


def matrix_total(parsed: dict, window: str = "current") -> float:  # type: ignore[type-arg]
    return sum(
        v
        for (name, labels), v in parsed.items()
        if name == "confusion_matrix_predictions" and ("window", window) in labels
    )


def test_first_fold_of_a_long_history_catches_up_in_batches_under_a_200ms_statement_timeout(
    clean_reference_schema, exporter_url, cli, tmp_path, promtool
):
    admin = clean_reference_schema
    now = datetime.now(UTC)
    generate_history(admin, 400_000, now)
    source = {"name": "history", "table": VIEW, "columns": VIEW_COLUMNS, "rollup": True}
    config = {
        "exporter": {
            "statement_timeout": "200ms",
            "refresh_interval": "1s",
            "initial_backoff": "200ms",
            "max_backoff": "1s",
        },
        "sources": [source],
        "monitors": [
            {
                "source": "history",
                "name": "hist",
                "model": "hist",
                "window": "1h",
                "reference": {"kind": "trailing", "length": "3h"},
            }
        ],
    }
    parsed_config = config_from_mapping(config, env={})
    exporter_engine = sa.create_engine(exporter_url)
    with exporter_engine.begin() as conn:
        reset(conn, "history")
    # The data is large enough: one fold of the whole history exceeds the timeout.
    with exporter_engine.connect() as conn, conn.begin():
        conn.execute(sa.text("SET LOCAL statement_timeout = '200ms'"))
        with pytest.raises(sa.exc.OperationalError, match="statement timeout"):
            fold(conn, parsed_config.sources[0], BUCKET)

    # Late writes land before the reference window (trailing 3 h before the current hour).
    late_before = now - timedelta(hours=5)
    stop = threading.Event()
    written: list[int] = []
    writer = threading.Thread(target=late_writes, args=(admin, stop, late_before, written), daemon=True)
    exporter = ExporterProcess(cli, config, exporter_url, tmp_path)
    writer.start()
    try:
        # During catch-up: a snapshot is served, from the source table (its current window's rows
        # have the largest ids, so the rollup holds none of them yet).
        during = wait_until(
            lambda: (
                (m := exporter.metrics())
                and value(m, "confusion_exporter_rollup_caught_up", source="history") == 0
                and matrix_total(m) > 0
                and m
            ),
            timeout=60,
        )
        start, end = current_window(during)
        assert folded_in(admin, start, end) == 0
        assert matrix_total(during) == current_labeled(admin, start, end) > 1000
        assert (
            value(during, "confusion_exporter_rollup_backlog_rows", source="history", table="predictions") > 0
        )
        # Progress, then the switch.
        after = wait_until(
            lambda: (
                (m := exporter.metrics())
                and value(m, "confusion_exporter_rollup_caught_up", source="history") == 1
                and m
            ),
            timeout=240,
            interval=0.5,
        )
        stop.set()
        writer.join(10)
        assert sum(written) > 0
        batches = value(after, "confusion_exporter_rollup_folds_total", source="history")
        assert batches > 10  # many short transactions, not one statement
        assert value(after, "confusion_exporter_refresh_failures_total", monitor="hist") == 0
        assert value(after, "confusion_exporter_rollup_predictions_total", source="history") >= 400_000
        for table in ("predictions", "labels"):
            assert value(after, "confusion_exporter_rollup_backlog_rows", source="history", table=table) == 0
        assert matrix_total(after) == current_labeled(admin, *current_window(after))  # from the rollup now
        _, body, _ = http_get(exporter.url("/metrics"))
        check = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True)
        assert check.returncode == 0, check.stderr.decode() + check.stdout.decode()
        # The late writes of the last moments are folded by the next refreshes.
        wait_until(lambda: all_folded(admin), timeout=30, interval=0.5)
        log = exporter.log()
    finally:
        stop.set()
        exporter.stop()
        exporter_engine.dispose()
    assert "rollup catching up in batches" in log and "predictions_left=" in log
    assert "rollup caught up" in log
    assert "Traceback" not in log
    # No loss, no double count: the rollup equals an independent recount of the tables.
    with admin.connect() as conn:
        counted = conn.execute(
            sa.text(
                "SELECT sum(n) FROM confusion_exporter.rollup_cells WHERE source = 'history' AND tier = 0"
            )
        ).scalar_one()
        assert counted == conn.execute(sa.text("SELECT count(*) FROM inference.predictions")).scalar_one()
        assert_equal_history(conn)
    path = tmp_path / "check.yaml"
    path.write_text(yaml.safe_dump(config))
    check_cli = run_cli(
        cli,
        "rebuild",
        "--config",
        str(path),
        "--source",
        "history",
        "--check",
        env={"DATABASE_URL": exporter_url},
    )
    assert check_cli.returncode == 0 and " 0 differ" in check_cli.stdout, check_cli.stdout + check_cli.stderr


def all_folded(engine: sa.Engine) -> bool:
    with engine.connect() as conn:
        state = conn.execute(
            sa.text(
                "SELECT prediction_watermark, label_watermark, pending FROM confusion_exporter.rollup_state "
                "WHERE source = 'history'"
            )
        ).one()
        max_p = conn.execute(sa.text("SELECT max(id) FROM inference.predictions")).scalar_one()
        max_l = conn.execute(sa.text("SELECT max(id) FROM inference.labels")).scalar_one()
    pending = state.pending.get("predictions") or state.pending.get("labels")
    return (state.prediction_watermark, state.label_watermark) == (max_p, max_l) and not pending


def assert_equal_history(connection: sa.Connection) -> None:
    """tests/test_rollup.py's independent recount, for the source named 'history'."""
    rows = connection.execute(
        sa.text(
            "SELECT bucket, model, version, segment, predicted, actual, reason, n, delay_sum FROM "
            "confusion_exporter.rollup_cells WHERE source = 'history' AND tier = 0 AND n <> 0"
        )
    ).fetchall()
    got = {tuple(r[:7]): (int(r[7]), float(r[8])) for r in rows}
    want_rows = connection.execute(
        sa.text(
            """
            SELECT floor(extract(epoch FROM predicted_at) / 60)::bigint, model_name, model_version, segment,
                   predicted_class, true_class, NULL::text, count(*),
                   coalesce(sum(extract(epoch FROM labeled_at - predicted_at)), 0)
              FROM inference.labeled_predictions GROUP BY 1, 2, 3, 4, 5, 6
            """
        )
    ).fetchall()
    want = {tuple(r[:7]): (int(r[7]), float(r[8])) for r in want_rows}
    # Counts exactly; delay sums (double precision, summed in another order by the fold than by
    # the recount's plan) to a microsecond. Rounding both to 3 decimals was not that: a sum of
    # microsecond delays ends in ...5 at the 4th decimal one time in ten, and one ulp then
    # rounds it the other way.
    assert got.keys() == want.keys()
    assert {k: v[0] for k, v in got.items()} == {k: v[0] for k, v in want.items()}
    off = [k for k in got if abs(got[k][1] - want[k][1]) > 1e-6]
    assert not off, [(k, got[k], want[k]) for k in off[:10]]


def test_a_statement_timeout_says_which_setting_cut_it_off(admin_engine, exporter_url, cli, tmp_path):
    """The twin on the full path: PostgreSQL says only "canceling statement due to statement
    timeout"; the refresher's line and a one-off command's name the setting and the fix."""
    with admin_engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE OR REPLACE VIEW inference.sleepy AS SELECT p.* FROM inference.labeled_predictions p "
                "CROSS JOIN LATERAL (SELECT pg_sleep(0.3)) s"
            )
        )
        conn.execute(sa.text("GRANT SELECT ON inference.sleepy TO confusion_exporter"))
        conn.execute(
            sa.text(
                "INSERT INTO inference.predictions (model_name, model_version, predicted_at, predicted_class) "
                "VALUES ('sleepy', 'v1', now() - interval '5 minutes', 'a')"
            )
        )
    config = {
        "exporter": {"statement_timeout": "200ms"},
        "sources": [{"name": "sleepy", "table": "inference.sleepy", "columns": VIEW_COLUMNS}],
        "monitors": [
            {
                "source": "sleepy",
                "name": "s",
                "model": "sleepy",
                "window": "1h",
                "reference": {"kind": "trailing", "length": "1h"},
            }
        ],
    }
    path = tmp_path / "sleepy.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {"DATABASE_URL": exporter_url}
    snapshot = run_cli(cli, "snapshot", "--config", str(path), env=env)
    report = run_cli(cli, "report", "--config", str(path), "--monitor", "s", env=env)
    for result in (snapshot, report):
        assert result.returncode == 1, result.stderr
        assert "statement timeout" in result.stderr
        assert "exporter.statement_timeout" in result.stderr and "raise it" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    assert "statement_timeout (200ms)" in snapshot.stderr


def test_a_batch_cut_off_by_the_statement_timeout_is_retried_smaller(
    clean_reference_schema, exporter_url, caplog
):
    from confusion_exporter.config import DatabaseUrl
    from confusion_exporter.folding import SourceFolder
    from confusion_exporter.source.database import reader_engine

    generate_history(clean_reference_schema, 200_000, datetime.now(UTC))
    config = config_from_mapping(
        {
            "sources": [{"name": "history", "table": VIEW, "columns": VIEW_COLUMNS, "rollup": True}],
            "monitors": [
                {
                    "source": "history",
                    "model": "*",
                    "window": "1h",
                    "reference": {"kind": "trailing", "length": "1h"},
                }
            ],
        },
        env={},
    )
    timeout = timedelta(milliseconds=200)
    engine = reader_engine(
        DatabaseUrl(exporter_url), statement_timeout=timeout, connect_timeout=timedelta(seconds=5)
    )
    # Forget an earlier test's rollup with the admin engine: deleting its cells is setup, not
    # a fold, and may itself take longer than the 200 ms under test.
    with clean_reference_schema.begin() as conn:
        reset(conn, "history")
    folder = SourceFolder(config.sources[0], BUCKET, timeout)
    folder.batch_rows = 1_000_000  # the whole history at once: cannot fit in 200 ms
    batches: list[int] = []
    try:
        with caplog.at_level("WARNING", logger="confusion_exporter.folding"):
            caught_up = folder.fold(
                engine, 0.5, lambda _s, result, _t, _n: batches.append(result.predictions)
            )
    finally:
        engine.dispose()
    assert "exceeded statement_timeout, retrying smaller" in caplog.text
    assert folder.batch_rows < 200_000 and batches and batches[0] > 0 and not caught_up
    with clean_reference_schema.connect() as conn:
        folded = conn.execute(
            sa.text(
                "SELECT sum(n) FROM confusion_exporter.rollup_cells WHERE source = 'history' AND tier = 0"
            )
        ).scalar_one()
    assert folded == sum(batches)  # the cancelled attempts left nothing behind
