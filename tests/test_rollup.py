"""Incremental rollups stay equal to a full recount under concurrent, out-of-order writers,
late and corrected labels, aborted transactions, restarts and interrupted folds."""

from __future__ import annotations

import json
import random
import time
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from confusion_exporter.config import config_from_mapping
from confusion_exporter.source.rollup import fold, reset

from .helpers import NOW, REFERENCE_SOURCE, snapshot_at

BUCKET = 60
CLASSES = ["cat", "dog", "bird", None, "  "]  # NULL and blank classes are rejections, counted apart


def rollup_mapping(rollup: bool = True, exporter: dict | None = None, **monitor) -> dict:  # type: ignore[type-arg]
    """The config of one "*" monitor over the reference schema, as a user writes it."""
    return {
        **({"exporter": exporter} if exporter else {}),
        "sources": [{**REFERENCE_SOURCE, "rollup": rollup}],
        "monitors": [
            {
                "source": "ref",
                "model": "*",
                "window": "1h",
                "reference": {"kind": "trailing", "length": "3h"},
                **monitor,
            }
        ],
    }


def rollup_config(rollup: bool = True, **monitor):  # type: ignore[no-untyped-def]
    return config_from_mapping(rollup_mapping(rollup, **monitor), env={})


def recount(connection: sa.Connection) -> dict[tuple, tuple[int, float]]:  # type: ignore[type-arg]
    """An independent full recount of the source tables, keyed like the rollup."""
    rows = connection.execute(
        sa.text(
            """
            SELECT floor(extract(epoch FROM predicted_at) / 60)::bigint, model_name, model_version, segment,
                   predicted_class, true_class,
                   CASE WHEN (predicted_class IS NULL OR btrim(predicted_class) = '')
                             AND NOT (true_class IS NULL OR btrim(true_class) = '') THEN 'label_without_prediction'
                        WHEN predicted_class IS NULL OR btrim(predicted_class) = '' THEN 'missing_predicted_class'
                        WHEN true_class IS NOT NULL AND btrim(true_class) = '' THEN 'empty_true_class' END,
                   count(*),
                   -- a delay is the label's: none for a label row without a class
                   coalesce(sum(CASE WHEN true_class IS NOT NULL
                                     THEN greatest(extract(epoch FROM labeled_at - predicted_at), 0) END), 0)
              FROM inference.labeled_predictions
             GROUP BY 1, 2, 3, 4, 5, 6, 7
            """
        )
    ).fetchall()
    return {tuple(r[:7]): (int(r[7]), float(r[8])) for r in rows}


def stored(connection: sa.Connection) -> dict[tuple, tuple[int, float]]:  # type: ignore[type-arg]
    rows = connection.execute(
        sa.text(
            "SELECT bucket, model, version, segment, predicted, actual, reason, n, delay_sum "
            "FROM confusion_exporter.rollup_cells WHERE source = 'ref' AND tier = 0 AND n <> 0"
        )
    ).fetchall()
    return {tuple(r[:7]): (int(r[7]), float(r[8])) for r in rows}


def hours_mismatch(connection: sa.Connection) -> int:
    """Cells where the hourly tier differs from the sum of its minute buckets (EXCEPT: NULLs match)."""
    minutes = (
        "SELECT bucket / 60 AS hour, model, version, segment, predicted, actual, reason, sum(n) AS n "
        "FROM confusion_exporter.rollup_cells WHERE source = 'ref' AND tier = 0 "
        "GROUP BY 1, 2, 3, 4, 5, 6, 7 HAVING sum(n) <> 0"
    )
    hours = (
        "SELECT bucket AS hour, model, version, segment, predicted, actual, reason, n "
        "FROM confusion_exporter.rollup_cells WHERE source = 'ref' AND tier = 1 AND n <> 0"
    )
    return int(
        connection.execute(
            sa.text(
                f"SELECT (SELECT count(*) FROM ({minutes} EXCEPT {hours}) a) + (SELECT count(*) FROM ({hours} EXCEPT {minutes}) b)"
            )
        ).scalar_one()
    )


def assert_equal(connection: sa.Connection) -> None:
    assert hours_mismatch(connection) == 0
    got, want = stored(connection), recount(connection)
    assert set(got) == set(want), set(got) ^ set(want)
    for key, (n, delay) in want.items():
        assert got[key][0] == n, key
        assert got[key][1] == pytest.approx(delay, abs=1e-6), key


class Writer:
    """One client with an open transaction, writing predictions and labels."""

    def __init__(self, engine: sa.Engine, rng: random.Random):
        self.connection = engine.connect()
        self.transaction = self.connection.begin()
        self.rng = rng

    def predictions(self, n: int) -> None:
        rows = [
            {
                "m": self.rng.choice(["fraud", "digits"]),
                "v": self.rng.choice(["v1", "v2"]),
                "at": NOW - timedelta(seconds=self.rng.uniform(0, 4 * 3600)),
                "p": self.rng.choice(CLASSES),
                "s": self.rng.choice(["eu", "us", None]),
            }
            for _ in range(n)
        ]
        self.connection.execute(
            sa.text(
                "INSERT INTO inference.predictions (model_name, model_version, predicted_at, predicted_class, segment) "
                "VALUES (:m, :v, :at, :p, :s)"
            ),
            rows,
        )

    def labels(self, n: int) -> None:
        # Labels for predictions this client can see: new, late, and corrections of labeled ones.
        targets = self.connection.execute(
            sa.text("SELECT id, predicted_at FROM inference.predictions ORDER BY random() LIMIT :n"), {"n": n}
        ).fetchall()
        rows = [
            {
                "p": pid,
                "c": self.rng.choice(CLASSES + ["cat", "dog"]),
                "at": at + timedelta(seconds=self.rng.uniform(1, 6 * 3600)),
            }
            for pid, at in targets
        ]
        if rows:
            self.connection.execute(
                sa.text(
                    "INSERT INTO inference.labels (prediction_id, true_class, labeled_at) VALUES (:p, :c, :at)"
                ),
                rows,
            )

    def finish(self, commit: bool) -> None:
        (self.transaction.commit if commit else self.transaction.rollback)()
        self.connection.close()


@pytest.mark.parametrize("seed", range(5))
def test_rollup_equals_a_full_recount_after_every_fold(seed, clean_reference_schema, exporter_url):
    admin = clean_reference_schema
    clients = sa.create_engine(admin.url, poolclass=sa.pool.NullPool)  # one connection per open writer
    rng = random.Random(seed)
    config = rollup_config()
    source = config.sources[0]
    exporter = sa.create_engine(exporter_url)
    with exporter.begin() as conn:
        reset(conn, "ref")
    writers: list[Writer] = []
    folds = 0
    try:
        for _step in range(120):
            action = rng.random()
            if action < 0.3 or not writers:
                writers.append(Writer(clients, rng))
                writers[-1].predictions(rng.randint(1, 30))
            elif action < 0.5:
                rng.choice(writers).labels(rng.randint(1, 20))
            elif action < 0.75:
                writer = writers.pop(rng.randrange(len(writers)))
                writer.finish(commit=rng.random() < 0.85)  # some transactions abort: their ids never appear
            elif action < 0.8:
                # A restart: the exporter's process and its connections are gone; its state is in the database.
                exporter.dispose()
                exporter = sa.create_engine(exporter_url)
            elif action < 0.85:
                # A fold interrupted before commit (a crash, a timeout): nothing of it may remain.
                with exporter.connect() as conn:
                    transaction = conn.begin()
                    fold(conn, source, BUCKET)
                    transaction.rollback()
            else:
                with exporter.connect() as conn, conn.begin():
                    fold(conn, source, BUCKET)
                folds += 1
                with admin.connect() as conn:
                    assert_equal(conn)
        for writer in writers:
            writer.finish(commit=True)
        writers.clear()
        # Pending ids: visible ones are folded; aborted ones are given up once no transaction
        # in the cluster could still hold them (another long transaction on a shared server
        # delays that, correctly, so wait a bounded time and then check they are really absent).
        deadline = time.monotonic() + 20
        while True:
            with exporter.connect() as conn, conn.begin():
                result = fold(conn, source, BUCKET)
            if result.pending_predictions == result.pending_labels == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        with admin.connect() as conn:
            assert_equal(conn)
            pending = conn.execute(
                sa.text("SELECT pending FROM confusion_exporter.rollup_state WHERE source = 'ref'")
            ).scalar_one()
            for table, key in (("predictions", "predictions"), ("labels", "labels")):
                ids = [int(i) for i in pending[key]]
                visible = conn.execute(
                    sa.text(f"SELECT count(*) FROM inference.{table} WHERE id = ANY(:ids)"), {"ids": ids}
                ).scalar_one()
                assert visible == 0  # whatever is still pending was never committed
        assert folds >= 5
    finally:
        for writer in writers:
            writer.finish(commit=False)
        exporter.dispose()
        clients.dispose()


def test_late_labels_and_corrections_move_counts_between_cells(clean_reference_schema, exporter_url):
    admin = clean_reference_schema
    config = rollup_config()
    exporter = sa.create_engine(exporter_url)
    at = NOW - timedelta(minutes=20)
    with exporter.begin() as conn:
        reset(conn, "ref")
    with admin.begin() as conn:
        pid = conn.execute(
            sa.text(
                "INSERT INTO inference.predictions (model_name, model_version, predicted_at, predicted_class) "
                "VALUES ('m', 'v1', :at, 'cat') RETURNING id"
            ),
            {"at": at},
        ).scalar_one()

    def cells() -> dict:  # type: ignore[type-arg]
        with admin.connect() as conn:
            return {(k[5]): v[0] for k, v in stored(conn).items()}

    def fold_now() -> None:
        with exporter.connect() as conn, conn.begin():
            fold(conn, config.sources[0], BUCKET)

    fold_now()
    assert cells() == {None: 1}  # unlabeled
    for true_class, expected in (("dog", {"dog": 1}), ("cat", {"cat": 1})):  # a label, then a correction
        with admin.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO inference.labels (prediction_id, true_class, labeled_at) "
                    "VALUES (:p, :c, :at)"
                ),
                {"p": pid, "c": true_class, "at": at + timedelta(hours=1)},
            )
        fold_now()
        assert {k: v for k, v in cells().items() if v} == expected
    exporter.dispose()


@pytest.mark.parametrize(
    "monitor",
    [
        {},
        # Three 70-minute spans 110 minutes apart: each holds whole hours (tier 1) and edges.
        {"window": "70m", "reference": {"kind": "seasonal", "period": "110m", "count": 3}},
    ],
    ids=["trailing", "seasonal"],
)
def test_monitors_read_the_same_matrices_from_the_rollup_as_from_a_full_query(
    clean_reference_schema, exporter_url, monitor
):
    from confusion_exporter.simulate import SimulationSettings, Simulator

    now = datetime.now(UTC).replace(second=30)
    Simulator(
        clean_reference_schema,
        SimulationSettings(models=["digits-rf", "fraud-gbm"], rate_per_second=1, seed=9),
    ).backfill(now - timedelta(hours=6 if monitor else 4), now)
    with sa.create_engine(exporter_url).begin() as conn:
        reset(conn, "ref")
    with sa.create_engine(exporter_url).begin() as conn:
        # Caught up before the refresh, so its monitors read the rollup (a source still behind
        # is read from its table, which would compare the full query with itself).
        assert fold(conn, rollup_config().sources[0], BUCKET).caught_up
    incremental = snapshot_at(rollup_config(**monitor), exporter_url, now)
    full = snapshot_at(
        rollup_config(rollup=False, **monitor),
        exporter_url,
        now,
    )
    a, b = incremental.monitors["ref:*"], full.monitors["ref:*"]
    assert [s.key for s in a.slices] == [s.key for s in b.slices] and a.slices
    for x, y in zip(a.slices, b.slices, strict=True):
        for window in ("current", "reference"):
            cx, cy = x.windows[window].counts, y.windows[window].counts
            assert cx.classes == cy.classes
            assert (cx.matrix == cy.matrix).all() and (cx.unlabeled == cy.unlabeled).all()
            assert cx.mean_label_delay_seconds == pytest.approx(cy.mean_label_delay_seconds, nan_ok=True)
        assert x.shift.tests["error_pattern"].statistic == pytest.approx(
            y.shift.tests["error_pattern"].statistic
        )


def test_rebuild_detects_and_repairs_a_damaged_rollup(clean_reference_schema, exporter_url, cli, tmp_path):
    import yaml

    from confusion_exporter.simulate import SimulationSettings, Simulator

    from .conftest import run_cli

    Simulator(
        clean_reference_schema, SimulationSettings(models=["digits-rf"], rate_per_second=0.5, seed=4)
    ).backfill(NOW - timedelta(hours=3), NOW)
    path = tmp_path / "rollup.yaml"
    path.write_text(yaml.safe_dump(rollup_mapping(reference={"kind": "trailing", "length": "2h"})))
    env = {"DATABASE_URL": exporter_url}
    rebuilt = run_cli(cli, "rebuild", "--config", str(path), "--source", "ref", env=env)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert (
        run_cli(cli, "rebuild", "--config", str(path), "--source", "ref", "--check", env=env).returncode == 0
    )
    with clean_reference_schema.begin() as conn:
        assert_equal(conn)
        damaged = conn.execute(
            sa.text(
                "UPDATE confusion_exporter.rollup_cells SET n = n + 7 WHERE ctid = "
                "(SELECT ctid FROM confusion_exporter.rollup_cells WHERE source = 'ref' AND tier = 0 AND n > 0 LIMIT 1) "
                "RETURNING bucket"
            )
        ).scalar_one()
    at = datetime.fromtimestamp(damaged * BUCKET, UTC)
    check = run_cli(cli, "rebuild", "--config", str(path), "--source", "ref", "--check", env=env)
    # The damaged minute cell differs, and so does the hour summed from it.
    assert check.returncode == 1 and "2 differ" in check.stdout, check.stdout + check.stderr
    span = [
        "--from",
        (at - timedelta(minutes=5)).isoformat(),
        "--to",
        (at + timedelta(minutes=5)).isoformat(),
    ]
    repair = run_cli(cli, "rebuild", "--config", str(path), "--source", "ref", *span, env=env)
    assert repair.returncode == 0 and "were repaired" in repair.stdout, repair.stdout + repair.stderr
    assert (
        run_cli(cli, "rebuild", "--config", str(path), "--source", "ref", "--check", env=env).returncode == 0
    )
    with clean_reference_schema.connect() as conn:
        assert_equal(conn)
    wrong = run_cli(cli, "rebuild", "--config", str(path), "--source", "nope", env=env)
    assert wrong.returncode == 2 and "--source: 'nope' is not a source with rollup enabled" in wrong.stderr


DIRTY_CLASSES = ["cat", "dog", "bird", None, "", " \t", "\n", "\u00a0\u2003", "\u200b", "\u3000"]


def dirty_reference_tables(admin: sa.Engine, rng: random.Random) -> None:
    """Predictions and labels with every kind of bad row, written through the reference schema."""
    predictions = []
    for i in range(600):
        at: str = (NOW - timedelta(seconds=rng.uniform(60, 4 * 3600))).isoformat()
        if i % 50 == 0:
            at = rng.choice(["infinity", "-infinity"])
        elif i % 45 == 0:
            at = (NOW + timedelta(hours=2)).isoformat()  # future, beyond the bucket holding now
        elif i % 40 == 0:
            at = datetime(1901, 1, 1, 0, i % 60, tzinfo=UTC).isoformat()  # negative buckets
        predictions.append(
            {
                "m": rng.choice(["fraud", "digits", " \t"]) if i % 7 == 0 else "fraud",
                "v": rng.choice(["v1", "v2"]),
                "at": at,
                "p": rng.choice(DIRTY_CLASSES) if i % 3 == 0 else rng.choice(["cat", "dog", "bird"]),
            }
        )
    with admin.begin() as conn:
        ids = conn.execute(
            sa.text(
                "INSERT INTO inference.predictions (model_name, model_version, predicted_at, predicted_class) "
                "SELECT m, v, CAST(at AS timestamptz), p FROM json_to_recordset(CAST(:rows AS json)) "
                "AS r(m text, v text, at text, p text) "
                "RETURNING id, CASE WHEN isfinite(predicted_at) THEN predicted_at END"
            ),
            {"rows": json.dumps(predictions)},
        ).fetchall()
    labels = []
    for pid, predicted_at in ids:
        for _ in range(rng.choice([0, 1, 1, 2])):  # unlabeled, labeled, corrected
            kind = rng.random()
            if kind < 0.08:
                labeled_at = rng.choice(["infinity", "-infinity"])
            elif predicted_at is None or kind < 0.12:
                labeled_at = NOW.isoformat()
            elif kind < 0.2:
                labeled_at = (predicted_at - timedelta(seconds=rng.uniform(6, 5 * 3600))).isoformat()  # bad
            elif kind < 0.3:
                labeled_at = (predicted_at - timedelta(seconds=rng.uniform(0, 5))).isoformat()  # skew
            else:
                labeled_at = (predicted_at + timedelta(seconds=rng.uniform(1, 3600))).isoformat()
            labels.append({"p": pid, "c": rng.choice(DIRTY_CLASSES), "at": labeled_at})
    with admin.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO inference.labels (prediction_id, true_class, labeled_at) "
                "VALUES (:p, :c, CAST(:at AS timestamptz))"
            ),
            labels,
        )


def dirty_config(rollup: bool):  # type: ignore[no-untyped-def]
    return config_from_mapping(
        {
            "exporter": {"future_tolerance": "5s"},
            "sources": [{**REFERENCE_SOURCE, "rollup": rollup}],
            "monitors": [
                {
                    "source": "ref",
                    "model": "*",
                    "window": "1h",
                    "reference": {"kind": "trailing", "length": "3h"},
                }
            ],
        },
        env={},
    )


@pytest.mark.parametrize("seed", range(2))
def test_full_query_and_rollup_agree_on_a_dirty_table(seed, clean_reference_schema, exporter_url):
    """Same rows, two paths: every count, every rejection by reason and the mean delay agree."""
    from confusion_exporter.source.rollup import recount_range

    rng = random.Random(seed)
    with sa.create_engine(exporter_url).begin() as conn:
        reset(conn, "ref")
    dirty_reference_tables(clean_reference_schema, rng)
    incremental = snapshot_at(dirty_config(rollup=True), exporter_url).monitors["ref:*"]
    full = snapshot_at(dirty_config(rollup=False), exporter_url).monitors["ref:*"]
    assert [s.key for s in incremental.slices] == [s.key for s in full.slices]
    seen: dict[str, int] = {}
    for a, b in zip(incremental.slices, full.slices, strict=True):
        for window in ("current", "reference"):
            x, y = a.windows[window].counts, b.windows[window].counts
            assert x.classes == y.classes, a.key
            assert (x.matrix == y.matrix).all() and (x.unlabeled == y.unlabeled).all(), a.key
            assert dict(x.rejected) == dict(y.rejected), (a.key, window)
            assert x.mean_label_delay_seconds == pytest.approx(y.mean_label_delay_seconds, nan_ok=True)
            assert not x.mean_label_delay_seconds < 0
            for reason, n in y.rejected.items():
                seen[reason] = seen.get(reason, 0) + n
    for reason in (
        "non_finite_timestamp",
        "label_before_prediction",
        "future_timestamp",
        "missing_model",
        "missing_predicted_class",
        "label_without_prediction",
        "empty_true_class",
    ):
        assert seen[reason] > 0, (reason, seen)
    assert not any(
        c.strip() == "" or c == "\u200b" for s in full.slices for c in s.windows["current"].counts.classes
    )
    # `rebuild --check` over everything: the recount agrees with what the folds stored.
    with sa.create_engine(exporter_url).connect() as conn, conn.begin():
        stored_cells, recounted = recount_range(
            conn,
            dirty_config(rollup=True).sources[0],
            BUCKET,
            datetime(1, 1, 1, tzinfo=UTC),  # what `rebuild --check` covers without --from
            NOW + timedelta(days=3650),
            write=False,
            label_tolerance=timedelta(seconds=5),
        )
    differing = {
        k
        for k in stored_cells.keys() | recounted.keys()
        if stored_cells.get(k, (0,))[0] != recounted.get(k, (0,))[0]
    }
    assert not differing, differing
    assert any(k[0] == -(2**63) for k in recounted)  # the no-instant rows are recounted too


def test_rebuild_check_covers_rows_before_1970_and_rows_without_an_instant(
    clean_reference_schema, exporter_url, cli, tmp_path
):
    import yaml

    from .conftest import run_cli

    with sa.create_engine(exporter_url).begin() as conn:
        reset(conn, "ref")
    dirty_reference_tables(clean_reference_schema, random.Random(7))
    path = tmp_path / "rollup.yaml"
    path.write_text(yaml.safe_dump(rollup_mapping(exporter={"future_tolerance": "5s"})))
    env = {"DATABASE_URL": exporter_url}

    def rebuild(*args: str):  # type: ignore[no-untyped-def]
        return run_cli(cli, "rebuild", "--config", str(path), "--source", "ref", *args, env=env)

    assert rebuild().returncode == 0
    check = rebuild("--check")
    assert check.returncode == 0 and " 0 differ" in check.stdout, check.stdout + check.stderr
    with clean_reference_schema.begin() as conn:
        for where in ("bucket < 0 AND bucket > -(2^62)::bigint", f"bucket = {-(2**63)}"):
            conn.execute(
                sa.text(
                    "UPDATE confusion_exporter.rollup_cells SET n = n + 3 WHERE ctid = (SELECT ctid FROM "
                    f"confusion_exporter.rollup_cells WHERE source = 'ref' AND tier = 0 AND {where} LIMIT 1)"
                )
            )
    damaged = rebuild("--check")
    # The two damaged cells differ, and the hours summed from them (reported as one entry).
    assert damaged.returncode == 1 and " 3 differ" in damaged.stdout, damaged.stdout + damaged.stderr
    repair = rebuild("--from", "1900-01-01T00:00:00Z", "--to", NOW.isoformat())
    assert repair.returncode == 0, repair.stderr
    assert rebuild("--check").returncode == 0
