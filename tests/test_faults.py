"""Faults with the real parts: a PostgreSQL server of the test's own that is stopped, crashed
and restarted; locks held by another session; the exporter killed with SIGKILL mid-fold and
stopped with SIGTERM, while writers commit bursts of predictions and labels."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from confusion_exporter import migrate
from confusion_exporter.config import DatabaseUrl
from confusion_exporter.simulate import SimulationSettings, Simulator
from confusion_exporter.source.reference_schema import insert_labels, insert_predictions

from .conftest import run_cli
from .helpers import REFERENCE_SOURCE
from .pgcluster import PgCluster
from .processes import ExporterProcess, http_get, samples, value, wait_until

MONITOR = "digits"
PASSWORD = "faults-secret-pw"


@pytest.fixture(scope="module")
def cluster():  # type: ignore[no-untyped-def]
    cluster = PgCluster()
    try:
        admin = sa.create_engine(cluster.url(), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text("CREATE DATABASE faults"))
        admin.dispose()
        migrate.upgrade(DatabaseUrl(cluster.url("faults")))
        engine = sa.create_engine(cluster.url("faults"))
        with engine.begin() as conn:
            conn.execute(sa.text(f"ALTER ROLE confusion_exporter PASSWORD '{PASSWORD}'"))
        now = datetime.now(UTC)
        settings = SimulationSettings(models=["digits-rf"], rate_per_second=2.0, seed=5)
        Simulator(engine, settings).backfill(now - timedelta(hours=1, minutes=30), now)
        engine.dispose()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def admin(cluster):  # type: ignore[no-untyped-def]
    engine = sa.create_engine(cluster.url("faults"))
    yield engine
    engine.dispose()


def exporter_url(cluster: PgCluster) -> str:
    return cluster.url("faults", "confusion_exporter", PASSWORD)


def config(rollup: bool = True, **exporter: str) -> dict:  # type: ignore[type-arg]
    source = {**REFERENCE_SOURCE, "name": "reference"}
    if rollup:
        source["rollup"] = True
    return {
        "exporter": {
            "refresh_interval": "500ms",
            "initial_backoff": "200ms",
            "max_backoff": "2s",
            "statement_timeout": "2s",
            "connect_timeout": "1s",
            **exporter,
        },
        "sources": [source],
        "monitors": [
            {
                "source": "reference",
                "name": MONITOR,
                "model": "digits-rf",
                "window": "30m",
                "reference": {"kind": "trailing", "length": "1h"},
            }
        ],
    }


def matrix(parsed: dict) -> dict:  # type: ignore[type-arg]
    return {labels: v for (name, labels), v in parsed.items() if name == "confusion_matrix_predictions"}


def health(parsed: dict, name: str) -> float:  # type: ignore[type-arg]
    if name == "confusion_exporter_database_up":
        return value(parsed, name)
    return value(parsed, name, monitor=MONITOR)


def write_traffic(engine: sa.Engine, n: int, rng: random.Random, label_share: float = 0.8) -> None:
    """One writer transaction: predictions of the last minutes, most with a label, some corrected."""
    now = datetime.now(UTC)
    with engine.begin() as conn:
        ids = insert_predictions(
            conn,
            [
                {
                    "model_name": "digits-rf",
                    "model_version": "v1",
                    "predicted_at": now - timedelta(seconds=rng.randint(0, 600)),
                    "predicted_class": str(rng.randint(0, 9)),
                    "score": rng.random(),
                    "segment": rng.choice(["eu", "us"]),
                }
                for _ in range(n)
            ],
        )
        labels = [
            {"prediction_id": i, "true_class": str(rng.randint(0, 9)), "labeled_at": now}
            for i in ids
            if rng.random() < label_share
        ]
        labels += [dict(label, true_class=str(rng.randint(0, 9))) for label in labels[: len(labels) // 10]]
        insert_labels(conn, labels)


def assert_rollup_exact(engine: sa.Engine, cli: list[str], tmp_path: Path) -> None:
    """Everything folded, each prediction counted once, and every cell equal to a recount."""
    with engine.connect() as conn:
        state = conn.execute(
            sa.text(
                "SELECT prediction_watermark, label_watermark, pending FROM confusion_exporter.rollup_state "
                "WHERE source = 'reference'"
            )
        ).one()
        max_p = conn.execute(sa.text("SELECT max(id) FROM inference.predictions")).scalar_one()
        max_l = conn.execute(sa.text("SELECT max(id) FROM inference.labels")).scalar_one()
        counted = conn.execute(
            sa.text(
                "SELECT sum(n) FROM confusion_exporter.rollup_cells WHERE source = 'reference' AND tier = 0"
            )
        ).scalar_one()
        labeled = conn.execute(
            sa.text(
                "SELECT sum(n) FROM confusion_exporter.rollup_cells "
                "WHERE source = 'reference' AND tier = 0 AND actual IS NOT NULL"
            )
        ).scalar_one()
        predictions = conn.execute(sa.text("SELECT count(*) FROM inference.predictions")).scalar_one()
        with_label = conn.execute(
            sa.text(
                "SELECT count(DISTINCT prediction_id) FROM inference.labels l WHERE true_class IS NOT NULL"
            )
        ).scalar_one()
    assert (state.prediction_watermark, state.label_watermark) == (max_p, max_l)
    assert not state.pending.get("predictions") and not state.pending.get("labels")
    assert counted == predictions  # no prediction lost, none counted twice
    # a label whose latest value is NULL is "unlabeled"; the simulator never writes one
    assert labeled == with_label
    path = tmp_path / "check.yaml"
    path.write_text(yaml.safe_dump(config()))
    check = run_cli(
        cli,
        "rebuild",
        "--config",
        str(path),
        "--source",
        "reference",
        "--check",
        env={"DATABASE_URL": engine.url.render_as_string(hide_password=False)},
    )
    assert check.returncode == 0 and " 0 differ" in check.stdout, check.stdout + check.stderr


def test_database_stopped_mid_run_and_restarted(cluster, admin, cli, tmp_path):
    exporter = ExporterProcess(cli, config(), exporter_url(cluster), tmp_path)
    try:
        before = wait_until(lambda: (m := exporter.metrics()) and matrix(m) and m, timeout=60)
        assert health(before, "confusion_exporter_database_up") == 1

        cluster.stop("immediate")  # a crash: sessions vanish mid-statement
        outage_started = time.monotonic()
        during, latencies = [], []
        while time.monotonic() - outage_started < 8:
            status, body, seconds = http_get(exporter.url("/metrics"))
            assert status == 200
            latencies.append(seconds)
            during.append(samples(body))
            time.sleep(0.2)
        last = during[-1]
        assert max(latencies) < 0.5, max(latencies)  # a scrape never waits on the database
        assert health(last, "confusion_exporter_database_up") == 0
        assert matrix(last) == matrix(before)  # the last good snapshot, untouched
        success = health(last, "confusion_exporter_last_refresh_success_timestamp_seconds")
        assert time.time() - success >= 7  # staleness shows the outage
        failures = health(last, "confusion_exporter_refresh_failures_total") - health(
            before, "confusion_exporter_refresh_failures_total"
        )
        # Backoff (200 ms doubling to 2 s) instead of a retry every 500 ms: 16 attempts.
        assert 2 <= failures <= 10, failures

        cluster.start()
        write_traffic(admin, 300, random.Random(1))  # changes to fold after the recovery
        recovered = wait_until(
            lambda: (
                (m := exporter.metrics())
                and health(m, "confusion_exporter_last_refresh_success_timestamp_seconds") > success
                and m
            ),
            timeout=60,
        )
        assert health(recovered, "confusion_exporter_database_up") == 1
        # The first snapshot after recovery equals a full recount at the same instant.
        at = value(recovered, "confusion_monitor_evaluation_timestamp_seconds", monitor=MONITOR)
        full = tmp_path / "full.yaml"
        full.write_text(yaml.safe_dump(config(rollup=False)))
        snap = run_cli(
            cli,
            "snapshot",
            "--config",
            str(full),
            "--at",
            datetime.fromtimestamp(at, UTC).isoformat(),
            env={"DATABASE_URL": exporter_url(cluster)},
        )
        assert snap.returncode == 0, snap.stderr
        assert matrix(samples(snap.stdout.encode())) == matrix(recovered)
    finally:
        if not cluster.ready():
            cluster.start()
        assert exporter.stop() == 0
    log = exporter.log()
    assert PASSWORD not in log and "monitor refresh failed" in log


def test_a_held_lock_and_a_slow_query_are_cut_off_and_counted(cluster, admin, cli, tmp_path):
    with admin.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE OR REPLACE VIEW inference.slow AS SELECT p.* FROM inference.labeled_predictions p "
                "CROSS JOIN LATERAL (SELECT pg_sleep(0.001)) s"
            )
        )
        conn.execute(sa.text("GRANT SELECT ON inference.slow TO confusion_exporter"))
    settings = config()
    settings["sources"].append({**REFERENCE_SOURCE, "name": "slow", "table": "inference.slow"})
    settings["monitors"].append({**settings["monitors"][0], "source": "slow", "name": "slow"})
    exporter = ExporterProcess(cli, settings, exporter_url(cluster), tmp_path)
    holder = admin.connect()
    try:
        wait_until(
            lambda: (m := exporter.metrics()) and health(m, "confusion_exporter_refreshes_total") >= 2,
            timeout=60,
        )
        lock = holder.begin()
        holder.execute(sa.text("LOCK TABLE inference.predictions IN ACCESS EXCLUSIVE MODE"))
        started = time.monotonic()
        failed = wait_until(
            lambda: (
                (m := exporter.metrics())
                and health(m, "confusion_exporter_refresh_failures_total") >= 2
                and m
            ),
            timeout=30,
        )
        # Two 2 s timeouts, not a hang; and scrapes never wait for the lock.
        assert time.monotonic() - started < 15
        latencies = [http_get(exporter.url("/metrics"))[2] for _ in range(20)]
        assert max(latencies) < 0.5
        lock.rollback()
        last = health(failed, "confusion_exporter_last_refresh_success_timestamp_seconds")
        wait_until(
            lambda: (
                (m := exporter.metrics())
                and health(m, "confusion_exporter_last_refresh_success_timestamp_seconds") > last
            ),
            timeout=30,
        )
        # The slow view (~1 ms per row over tens of thousands of rows) never finishes in 2 s:
        # each attempt is cancelled and counted, the other monitor keeps refreshing.
        slow = exporter.metrics()
        assert value(slow, "confusion_exporter_refresh_failures_total", monitor="slow") >= 1
        assert value(slow, "confusion_exporter_last_refresh_success_timestamp_seconds", monitor="slow") == 0
    finally:
        holder.close()
        assert exporter.stop() == 0
    log = exporter.log()
    assert "lock timeout" in log or "statement timeout" in log
    assert "canceling statement due to statement timeout" in log
    # ... and says what to do about it.
    assert "ran past exporter.statement_timeout (2000ms): raise it" in log


def burst_writers(engine: sa.Engine, stop: threading.Event, seed: int) -> list[threading.Thread]:
    """Four writers committing bursts concurrently (out of id order), until stopped."""

    def write(i: int) -> None:
        rng = random.Random(seed * 10 + i)
        while not stop.is_set():
            write_traffic(engine, rng.randint(1, 80), rng)
            time.sleep(rng.random() * 0.05)

    threads = [threading.Thread(target=write, args=(i,), daemon=True) for i in range(4)]
    for thread in threads:
        thread.start()
    return threads


def test_sigkill_mid_fold_under_write_bursts_loses_and_doubles_nothing(cluster, admin, cli, tmp_path):
    rng = random.Random(7)
    stop = threading.Event()
    writers = burst_writers(admin, stop, seed=3)
    settings = config(refresh_interval="200ms")
    kills, rounds = 0, int(os.environ.get("CE_SOAK_KILLS", "4"))  # `make soak` raises it
    try:
        for _ in range(rounds):
            exporter = ExporterProcess(cli, settings, exporter_url(cluster), tmp_path)
            wait_until(lambda e=exporter: matrix(e.metrics()), timeout=60)
            time.sleep(rng.uniform(0.3, 1.5))  # folds run every 200 ms: this lands mid-fold often
            exporter.process.send_signal(signal.SIGKILL)
            exporter.process.wait(10)
            kills += 1
    finally:
        stop.set()
        for thread in writers:
            thread.join(30)
    # Restart once more, with no manual repair, and let it catch up.
    exporter = ExporterProcess(cli, settings, exporter_url(cluster), tmp_path)
    try:
        with admin.connect() as conn:
            max_p = conn.execute(sa.text("SELECT max(id) FROM inference.predictions")).scalar_one()
        wait_until(
            lambda: (
                admin.connect()
                .execute(
                    sa.text(
                        "SELECT prediction_watermark FROM confusion_exporter.rollup_state WHERE source = 'reference'"
                    )
                )
                .scalar_one()
                >= max_p
            ),
            timeout=60,
        )
        time.sleep(1)  # one more fold: pending ids of the last burst
    finally:
        assert exporter.stop() == 0
    assert kills == rounds
    assert_rollup_exact(admin, cli, tmp_path)


def test_sigterm_shuts_down_cleanly_within_seconds(cluster, admin, cli, tmp_path):
    stop = threading.Event()
    writers = burst_writers(admin, stop, seed=4)
    exporter = ExporterProcess(cli, config(refresh_interval="200ms"), exporter_url(cluster), tmp_path)
    try:
        wait_until(lambda: matrix(exporter.metrics()), timeout=60)
        time.sleep(1.0)
        started = time.monotonic()
        exporter.process.send_signal(signal.SIGTERM)
        code = exporter.process.wait(15)
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        for thread in writers:
            thread.join(30)
        if exporter.process.poll() is None:
            exporter.process.kill()
    assert code == 0 and elapsed < 5, elapsed
    assert "stopped" in exporter.log()
    # No half-written state: what was folded is exact; a restart folds the rest.
    restarted = ExporterProcess(cli, config(refresh_interval="200ms"), exporter_url(cluster), tmp_path)
    try:
        wait_until(lambda: matrix(restarted.metrics()), timeout=60)
        time.sleep(1.5)
    finally:
        assert restarted.stop() == 0
    assert_rollup_exact(admin, cli, tmp_path)


def test_exporter_process_survives_sigpipe_like_client_disconnects(cluster, cli, tmp_path):
    """Clients that hang up mid-response do not kill the server or its threads."""
    exporter = ExporterProcess(cli, config(), exporter_url(cluster), tmp_path)
    try:
        wait_until(lambda: matrix(exporter.metrics()), timeout=60)
        import socket

        for _ in range(50):
            with socket.create_connection(("127.0.0.1", exporter.port), timeout=5) as raw:
                raw.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                raw.recv(10)  # then hang up with most of the body unsent
        assert matrix(exporter.metrics())
        assert exporter.process.poll() is None
    finally:
        assert exporter.stop() == 0


def test_ids_of_aborted_writes_are_given_up_and_counted(cluster, admin, cli, tmp_path):
    """An aborted INSERT takes ids that never appear: the fold keeps them pending, then gives
    them up once no transaction in the cluster could still hold them, and counts them. On a
    server of its own: another test's open transaction on a shared server would (rightly)
    hold the give-up back."""
    settings = config()
    settings["sources"][0]["name"] = "given-up"  # a rollup state of its own
    settings["monitors"][0]["source"] = "given-up"
    row = {
        "model_name": "digits-rf",
        "model_version": "v1",
        "predicted_at": datetime.now(UTC),
        "predicted_class": "3",
        "score": 0.9,
    }
    exporter = ExporterProcess(cli, settings, exporter_url(cluster), tmp_path)
    try:
        conn = admin.connect()
        aborted = conn.begin()
        taken = insert_predictions(conn, [row, row, row])  # three ids, never committed
        aborted.rollback()
        conn.close()
        with admin.begin() as conn:
            insert_predictions(conn, [row])  # a later id: the three are a gap below it
        counted = wait_until(
            lambda: (
                (m := exporter.metrics())
                and value(m, "confusion_exporter_rollup_given_up_ids_total", source="given-up") >= 3
                and value(m, "confusion_exporter_rollup_pending_ids", source="given-up") == 0
                and m
            ),
            timeout=60,
            interval=0.5,
        )
        assert counted
        with admin.connect() as conn:
            pending = conn.execute(
                sa.text("SELECT pending FROM confusion_exporter.rollup_state WHERE source = 'given-up'")
            ).scalar_one()
        assert not set(map(str, taken)) & set(pending["predictions"])
    finally:
        assert exporter.stop() == 0
