"""Shared test helpers: a mapped table with its own column names, rows, configs."""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from confusion_exporter.config import Config, DatabaseUrl, config_from_mapping
from confusion_exporter.refresher import Refresher
from confusion_exporter.snapshot import Snapshot
from confusion_exporter.source.reference_schema import VIEW, VIEW_COLUMNS

NOW = datetime(2026, 11, 23, 12, 34, 56, tzinfo=UTC)
COLUMNS = {
    "model": "clf",
    "version": "clf_ver",
    "predicted_at": "ts",
    "predicted": "yhat",
    "actual": "y",
    "labeled_at": "y_at",
    "score": "conf",
    "segment": "region",
}


# The reference schema's view, mapped as a source (the simulator writes into it).
REFERENCE_SOURCE = {"name": "ref", "table": VIEW, "columns": VIEW_COLUMNS}


def simulate_with_shift(engine: Engine, models: list[str], shifted: list[str], seed: int) -> datetime:
    """2 h 40 min of traffic up to now, the error pattern of ``shifted`` changed 28 minutes ago."""
    from confusion_exporter.simulate import SimulationSettings, Simulator

    now = datetime.now(UTC)
    settings = SimulationSettings(
        models=models,
        rate_per_second=3.0,
        mean_label_delay=timedelta(seconds=20),
        shift_at=now - timedelta(minutes=28),
        shift_models=shifted,
        seed=seed,
    )
    Simulator(engine, settings).backfill(now - timedelta(hours=2, minutes=40), now)
    return now


@dataclass
class Row:
    model: str | None
    version: str | None
    ts: datetime
    predicted: str | None
    actual: str | None
    segment: str | None = None
    labeled_at: datetime | None = None
    score: float | None = None


def create_scored_events(engine: Engine, schema: str = "shop_ml") -> str:
    """Create a fresh table shaped like a user's own, readable by the exporter role."""
    name = f"scored_events_{secrets.token_hex(4)}"
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        conn.execute(
            sa.text(
                f'CREATE TABLE "{schema}"."{name}" (clf text, clf_ver text, ts timestamptz, '
                "yhat text, y text, y_at timestamptz, conf double precision, region text)"
            )
        )
        conn.execute(sa.text(f'GRANT USAGE ON SCHEMA "{schema}" TO confusion_exporter'))
        conn.execute(sa.text(f'GRANT SELECT ON "{schema}"."{name}" TO confusion_exporter'))
    return f"{schema}.{name}"


def insert_rows(engine: Engine, table: str, rows: Iterable[Row]) -> None:
    schema, name = table.split(".")
    target = sa.table(
        name,
        *(sa.column(c) for c in ("clf", "clf_ver", "ts", "yhat", "y", "y_at", "conf", "region")),
        schema=schema,
    )
    payload = [
        {
            "clf": r.model,
            "clf_ver": r.version,
            "ts": r.ts,
            "yhat": r.predicted,
            "y": r.actual,
            "y_at": r.labeled_at,
            "conf": r.score,
            "region": r.segment,
        }
        for r in rows
    ]
    if payload:
        with engine.begin() as conn:
            conn.execute(sa.insert(target), payload)


def make_config(
    table: str,
    *,
    model: str = "*",
    window: str = "1h",
    reference: dict[str, Any] | None = None,
    columns: dict[str, str] | None = None,
    extra_monitor: dict[str, Any] | None = None,
    exporter: dict[str, Any] | None = None,
) -> Config:
    raw = {
        "exporter": exporter or {},
        "sources": [{"name": "shop", "table": table, "columns": columns or COLUMNS}],
        "monitors": [
            {
                "source": "shop",
                "model": model,
                "window": window,
                "reference": reference or {"kind": "trailing", "length": "3h"},
                **(extra_monitor or {}),
            }
        ],
    }
    return config_from_mapping(raw, env={})


def snapshot_at(config: Config, url: str, now: datetime = NOW) -> Snapshot:
    """Run one real refresh as of ``now`` through the exporter's own read path."""
    refresher = Refresher(config, DatabaseUrl(url), clock=lambda: now)
    try:
        assert refresher.refresh(), refresher.health.last_error
    finally:
        refresher.engine.dispose()
    snapshot = refresher.published.snapshot
    assert snapshot is not None
    return snapshot


def minutes(n: float) -> timedelta:
    return timedelta(minutes=n)


def pick(seq: Sequence[Any], index: int) -> Any:
    return seq[index % len(seq)]


def exporter_config(table: str, model: str = "m", **exporter: str) -> dict[str, Any]:
    """The config of an exporter process over one user table: 1 h window, trailing 3 h, fast
    refreshes and backoff (override any exporter setting by keyword)."""
    return {
        "exporter": {"refresh_interval": "1s", "initial_backoff": "200ms", "max_backoff": "1s", **exporter},
        "sources": [{"name": "shop", "table": table, "columns": COLUMNS}],
        "monitors": [
            {
                "source": "shop",
                "model": model,
                "window": "1h",
                "reference": {"kind": "trailing", "length": "3h"},
            }
        ],
    }
