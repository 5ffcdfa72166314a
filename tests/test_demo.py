"""`confusion-exporter demo` (what `make demo` runs) on the fresh-machine path: no
DATABASE_URL, so an embedded PostgreSQL; live matrices on the landing page; Ctrl-C stops it
cleanly and keeps the data."""

from __future__ import annotations

import os
import signal
import subprocess

import sqlalchemy as sa

from .processes import free_port, http_get, wait_until


def test_demo_runs_on_embedded_postgres_and_stops_cleanly(cli, tmp_path):
    port = free_port()
    data_dir = tmp_path / "pgdata"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DATABASE_URL_FILE")}
    env["CONFUSION_EXPORTER_PORT"] = str(port)
    env["CONFUSION_EXPORTER_REFRESH_INTERVAL"] = "2s"
    log = (tmp_path / "demo.log").open("wb")
    process = subprocess.Popen(
        [*cli, "demo", "--data-dir", str(data_dir), "--history", "40m", "--rate", "4"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        monitors = (b"digits", b"fraud", b"fraud-canary", b"intents")
        # Monitors publish side by side, each as it finishes: wait for all four.
        page = wait_until(
            lambda: (
                (r := http_get(f"http://127.0.0.1:{port}/"))[0] == 200
                and b"<table class=matrix" in r[1]
                and all(b"<h2>" + m + b" <small><a class=report" in r[1] for m in monitors)
                and r[1]
            ),
            timeout=120,
            interval=0.5,
        )
        # The sequential layer replays its (short) history and shows on the page.
        page = wait_until(
            lambda: (
                (r := http_get(f"http://127.0.0.1:{port}/"))[1].count(b"<div class=sequential>") == 4 and r[1]
            ),
            timeout=60,
            interval=0.5,
        )
        assert b"Small persistent changes" in page
        _, metrics, _ = http_get(f"http://127.0.0.1:{port}/metrics")
        assert b"confusion_matrix_predictions{" in metrics
        assert b"confusion_shift_state{" in metrics
        uri = wait_until(lambda: next(data_dir.glob("postmaster.pid"), None), timeout=5) and str(data_dir)
        engine = sa.create_engine(f"postgresql+psycopg2://postgres@/postgres?host={uri}")
        with engine.connect() as conn:
            first = conn.execute(sa.text("SELECT count(*) FROM inference.predictions")).scalar()
        wait_until(lambda: _count(engine) > first, timeout=15)  # live traffic keeps coming
        engine.dispose()
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(30)
        log.close()
    text = (tmp_path / "demo.log").read_text()
    assert code == 0, text[-3000:]
    assert "stopped" in text
    assert not list(data_dir.glob("postmaster.pid"))  # the embedded server was shut down
    assert (data_dir / "PG_VERSION").exists()  # and its data kept for the next start


def _count(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM inference.predictions")).scalar() or 0)
