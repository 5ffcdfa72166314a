"""Refresh cost with the incremental rollup vs a full GROUP BY vs the seeds' pandas path.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python benchmarks/rollup_benchmark.py --rows 1000000 10000000

Creates a scratch database per size (dropped afterwards): 3 models, K = 10, predictions over
8 days, 90% labeled; then, for a 1 h current window with a 24 h and with a 7 d reference,
times (median of --repeat runs, warm cache):

- fold: bringing the rollup up to date after 10k new labeled predictions, and after 10k late
  labels for old predictions (the incremental work of one refresh);
- read: summing the rollup's buckets for one model's windows;
- full: one GROUP BY over the source for the same windows (the exporter without rollup);
- naive: pandas.read_sql of the rows + sklearn.metrics.confusion_matrix (the seeds' code).

``--catch-up`` instead measures turning the rollup on over that existing history: the
exporter's batched first fold (``folding.SourceFolder``, through the exporter's own engine
with its statement_timeout), until it has caught up, over a history whose ids grow with time
(an append-only table's); prints batches, the longest batch, and rows (predictions + labels)
per second:

    .venv/bin/python benchmarks/rollup_benchmark.py --catch-up --rows 10000000 --statement-timeout 20s
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pandas as pd
import sqlalchemy as sa
from sklearn.metrics import confusion_matrix

from confusion_exporter import migrate
from confusion_exporter.config import DatabaseUrl, config_from_mapping, parse_duration
from confusion_exporter.folding import SourceFolder
from confusion_exporter.references import monitor_windows
from confusion_exporter.source.counts import count_query, fetch_counts
from confusion_exporter.source.database import reader_engine
from confusion_exporter.source.reference_schema import VIEW, VIEW_COLUMNS
from confusion_exporter.source.rollup import FoldResult, fetch_window_rows, fold, reset

SOURCE = {"name": "ref", "table": VIEW, "columns": VIEW_COLUMNS, "rollup": True}


def timed(action: Callable[[], object], repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def generate(engine: sa.Engine, rows: int, now: datetime, in_time_order: bool = False) -> None:
    """``rows`` predictions over 8 days, 90% labeled; ``in_time_order``: ids grow with time, as
    in an append-only table that has been written for a while (what a first fold meets)."""
    order = "ORDER BY 3" if in_time_order else ""
    with engine.begin() as conn:
        conn.execute(
            sa.text("ALTER TABLE inference.labels DROP CONSTRAINT IF EXISTS labels_prediction_id_fkey")
        )
        conn.execute(
            sa.text(
                "INSERT INTO inference.predictions (model_name, model_version, predicted_at, predicted_class) "
                "SELECT 'model-' || (i % 3), 'v1', :now - random() * interval '8 days', floor(random() * 10)::text "
                f"FROM generate_series(1, :n) i {order}"
            ),
            {"n": rows, "now": now},
        )
        conn.execute(
            sa.text(
                "INSERT INTO inference.labels (prediction_id, true_class, labeled_at) "
                "SELECT id, CASE WHEN random() < 0.9 THEN predicted_class ELSE floor(random() * 10)::text END, "
                "predicted_at + interval '10 minutes' FROM inference.predictions WHERE random() < 0.9 ORDER BY id"
            )
        )
        conn.execute(
            sa.text(
                "ALTER TABLE inference.labels ADD CONSTRAINT labels_prediction_id_fkey "
                "FOREIGN KEY (prediction_id) REFERENCES inference.predictions (id) ON DELETE CASCADE"
            )
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE inference.predictions"))
        conn.execute(sa.text("VACUUM ANALYZE inference.labels"))


def add_new_labeled(engine: sa.Engine, now: datetime, n: int = 10_000) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "WITH p AS (INSERT INTO inference.predictions (model_name, model_version, predicted_at, predicted_class) "
                "SELECT 'model-' || (i % 3), 'v1', :now - random() * interval '50 minutes', floor(random() * 10)::text "
                "FROM generate_series(1, :n) i RETURNING id, predicted_class, predicted_at) "
                "INSERT INTO inference.labels (prediction_id, true_class, labeled_at) "
                "SELECT id, predicted_class, predicted_at + interval '1 minute' FROM p"
            ),
            {"n": n, "now": now},
        )


def add_late_labels(engine: sa.Engine, n: int = 10_000) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO inference.labels (prediction_id, true_class, labeled_at) "
                "SELECT id, floor(random() * 10)::text, now() FROM inference.predictions "
                "WHERE id IN (SELECT floor(random() * (SELECT max(id) FROM inference.predictions))::bigint + 1 "
                "FROM generate_series(1, :n))"
            ),
            {"n": n},
        )


def naive(engine: sa.Engine, windows: tuple, model: str) -> None:  # type: ignore[type-arg]
    for window in windows:
        frame = pd.read_sql(
            sa.text(
                "SELECT true_class, predicted_class FROM inference.labeled_predictions WHERE model_name = :m "
                "AND predicted_at >= :s AND predicted_at < :e AND true_class IS NOT NULL"
            ),
            engine,
            params={"m": model, "s": window.start, "e": window.end},
        )
        confusion_matrix(frame["true_class"], frame["predicted_class"], labels=[str(i) for i in range(10)])


def measure_reference(
    engine: sa.Engine, rows: int, reference: str, now: datetime, bucket: int, repeat: int
) -> list[str]:
    """Time the incremental, full and naive paths for a 1 h window against one reference length."""
    config = config_from_mapping(
        {
            "sources": [SOURCE],
            "monitors": [
                {
                    "source": "ref",
                    "model": "model-1",
                    "window": "1h",
                    "reference": {"kind": "trailing", "length": reference},
                }
            ],
        },
        env={},
    )
    source, monitor = config.sources[0], config.monitors[0]
    windows = monitor_windows(now, monitor, config.exporter.bucket)
    lines = []

    def fold_once() -> None:
        with engine.connect() as conn, conn.begin():
            fold(conn, source, bucket)

    def read() -> None:
        with engine.connect() as conn:
            fetch_window_rows(conn, "ref", "model-1", windows, now, bucket)

    def full() -> None:
        with engine.connect() as conn:
            fetch_counts(conn, count_query(source, monitor, windows, now, config.exporter.bucket))

    started = time.perf_counter()
    fold_once()  # the whole history the first time, then only what changed
    lines.append(f"| {rows:,} | fold before measuring | {time.perf_counter() - started:.1f} s | |")
    fold_new, fold_late = [], []
    for _ in range(repeat):
        add_new_labeled(engine, now)
        fold_new.append(timed(fold_once, 1))
        add_late_labels(engine)
        fold_late.append(timed(fold_once, 1))
    new_s, late_s = statistics.median(fold_new), statistics.median(fold_late)
    read_s = timed(read, repeat)
    full_s = timed(full, repeat)
    naive_s = timed(lambda: naive(engine, windows, "model-1"), max(1, repeat // 2))
    refresh_s = new_s + read_s
    for label, seconds, ratio in (
        ("fold after 10k new labeled rows", new_s, ""),
        ("fold after 10k late labels", late_s, ""),
        ("read windows from the rollup", read_s, ""),
        (
            "refresh with rollup (fold new + read)",
            refresh_s,
            f"full/rollup {full_s / refresh_s:.1f}x, naive/rollup {naive_s / refresh_s:.0f}x",
        ),
        ("full GROUP BY", full_s, ""),
        ("naive pandas + sklearn", naive_s, ""),
    ):
        lines.append(f"| {rows:,} | 1h + {reference}: {label} | {seconds * 1000:.1f} ms | {ratio} |")
    return lines


def measure_catch_up(url: str, rows: int, statement_timeout: str) -> str:
    """Fold the whole history from an empty rollup in the exporter's batches; one table row."""
    monitor = {
        "source": "ref",
        "model": "*",
        "window": "1h",
        "reference": {"kind": "trailing", "length": "1h"},
    }
    config = config_from_mapping({"sources": [SOURCE], "monitors": [monitor]}, env={})
    timeout = parse_duration(statement_timeout)
    engine = reader_engine(DatabaseUrl(url), statement_timeout=timeout, connect_timeout=parse_duration("5s"))
    with engine.connect() as conn, conn.begin():
        conn.execute(sa.text("SET TRANSACTION READ WRITE"))
        reset(conn, "ref")
    folder = SourceFolder(config.sources[0], 60, timeout)
    totals = {"batches": 0, "rows": 0, "longest": 0.0}

    def on_batch(_source: str, result: FoldResult, seconds: float, _next_rows: int) -> None:
        totals["batches"] += 1
        totals["rows"] += result.predictions + result.labels
        totals["longest"] = max(totals["longest"], seconds)

    started = time.perf_counter()
    while not folder.fold(engine, 60.0, on_batch):
        pass
    elapsed = time.perf_counter() - started
    engine.dispose()
    return (
        f"| {rows:,} | {statement_timeout} | {totals['batches']:,} | {totals['longest'] * 1000:.0f} ms "
        f"| {folder.batch_rows:,} | {elapsed:.1f} s | {totals['rows'] / elapsed:,.0f} |"
    )


def bench(admin_url: str, rows: int, repeat: int, catch_up: list[str] | None = None) -> list[str]:
    name = f"ce_bench_{secrets.token_hex(3)}"
    server = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with server.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    lines = []
    try:
        migrate.upgrade(DatabaseUrl(url))
        engine = sa.create_engine(url)
        now = datetime.now(UTC)
        started = time.perf_counter()
        generate(engine, rows, now, in_time_order=bool(catch_up))
        lines.append(f"| {rows:,} | generate | {time.perf_counter() - started:.1f} s | |")
        if catch_up:
            engine.dispose()
            return [measure_catch_up(url, rows, timeout) for timeout in catch_up]
        bucket = 60
        for reference in ("24h", "7d"):
            lines += measure_reference(engine, rows, reference, now, bucket, repeat)
        engine.dispose()
    finally:
        with server.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        server.dispose()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--catch-up", action="store_true", help="time the first fold of the history instead")
    parser.add_argument("--statement-timeout", nargs="+", default=["20s"], help="with --catch-up")
    args = parser.parse_args()
    admin_url = os.environ.get("DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
    admin_url = admin_url.replace("postgresql://", "postgresql+psycopg2://", 1)
    if args.catch_up:
        print(
            "| rows | statement_timeout | batches | longest batch | last batch size | catch-up | rows/s |\n"
            "|---|---|---|---|---|---|---|"
        )
    else:
        print("| rows | what | median | ratio |\n|---|---|---|---|")
    for rows in args.rows:
        for line in bench(admin_url, rows, args.repeat, args.statement_timeout if args.catch_up else None):
            print(line, flush=True)


if __name__ == "__main__":
    main()
