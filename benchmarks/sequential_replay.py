"""What the sequential layer costs: a replay from its origin against one window refresh.

A fraud classifier's table (2 classes, one segment) with ``--days`` of predictions at
``--rate`` per hour, labels 0-15 minutes later, in a fresh database. Measured in the same run:

- baseline: one evaluation of the monitor with the layer off (its window counts and tests);
- replay: the layer replayed from the origin to the end (what a start, a restart or
  ``snapshot --at`` pays), split into its SQL reads and the detector updates;
- steady state: one refresh of a caught-up layer (a new period or none).

    .venv/bin/python benchmarks/sequential_replay.py --days 30 --rate 3000
"""

from __future__ import annotations

import argparse
import io
import secrets
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from confusion_exporter.config import config_from_mapping  # noqa: E402
from confusion_exporter.evaluate import evaluate_monitor  # noqa: E402
from confusion_exporter.sequential_tracker import SequentialTracker  # noqa: E402
from confusion_exporter.source import arrivals  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--rate", type=int, default=3000, help="labeled predictions per hour")
    parser.add_argument("--admin-url", default="postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()

    name = f"ce_seq_bench_{secrets.token_hex(3)}"
    admin = sa.create_engine(args.admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(args.admin_url).set(database=name)
    engine = sa.create_engine(url)
    try:
        end = datetime(2026, 11, 1, tzinfo=UTC)
        start = end - timedelta(days=args.days)
        rows = write_table(engine, start, end, args.rate)
        config = config_from_mapping(
            {
                "sources": [
                    {
                        "name": "shop",
                        "table": "public.events",
                        "columns": {
                            "model": "model",
                            "predicted_at": "ts",
                            "predicted": "yhat",
                            "actual": "y",
                            "labeled_at": "y_at",
                            "segment": "region",
                        },
                    }
                ],
                "monitors": [
                    {
                        "source": "shop",
                        "model": "fraud",
                        "window": "1h",
                        "reference": {"kind": "trailing", "length": "24h"},
                        "classes": ["fraud", "legit"],
                    }
                ],
            },
            env={},
        )
        monitor = config.monitors[0]
        with engine.connect() as conn:
            t = time.perf_counter()
            evaluate_monitor(conn, config, monitor, end, use_rollup=False, with_sequential=False)
            baseline = time.perf_counter() - t

            reads = [0.0]
            original = arrivals.fetch_arrivals

            def timed(connection, query):  # type: ignore[no-untyped-def]
                t0 = time.perf_counter()
                try:
                    return original(connection, query)
                finally:
                    reads[0] += time.perf_counter() - t0

            arrivals.fetch_arrivals = timed  # type: ignore[assignment]
            import confusion_exporter.sequential_tracker as tracker_module

            tracker_module.fetch_arrivals = timed  # type: ignore[assignment]
            tracker = SequentialTracker(monitor, config.source("shop"))
            t = time.perf_counter()
            result = tracker.advance(conn, end)
            replay = time.perf_counter() - t
            assert result.caught_up
            periods = tracker.states[("fraud", "eu")].periods
            t = time.perf_counter()
            for minutes in range(5, 65, 5):
                tracker.advance(conn, end + timedelta(minutes=minutes))
            steady = (time.perf_counter() - t) / 12
        print(f"table: {rows:,} labeled predictions over {args.days} days at {args.rate:,}/h")
        print(f"baseline (one evaluation, window tests only): {baseline * 1000:8.1f} ms")
        print(
            f"replay from the origin ({periods:,} periods): {replay:8.2f} s = "
            f"{replay / baseline:6.1f}x baseline (SQL {reads[0]:.2f} s, detector {replay - reads[0]:.2f} s, "
            f"{(replay - reads[0]) / periods * 1e6:.0f} us per period)"
        )
        print(f"steady state (one more period): {steady * 1000:8.1f} ms = {steady / baseline:.3f}x baseline")
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


def write_table(engine: sa.Engine, start: datetime, end: datetime, rate: int) -> int:
    rng = np.random.default_rng(0)
    seconds = (end - start).total_seconds()
    n = int(rate * seconds / 3600)
    offsets = np.sort(rng.uniform(0, seconds, n))
    fraud = rng.random(n) < 0.02
    predicted = np.where(fraud, rng.random(n) >= 0.2, rng.random(n) < 0.03)
    delay = rng.uniform(0, 900, n)
    base = start.timestamp()
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE events (model text, ts timestamptz, yhat text, y text, y_at timestamptz, region text)"
            )
        )
    buffer = io.StringIO()
    for i in range(n):
        ts = datetime.fromtimestamp(base + offsets[i], UTC)
        buffer.write(
            f"fraud\t{ts.isoformat()}\t{'fraud' if predicted[i] else 'legit'}\t{'fraud' if fraud[i] else 'legit'}\t"
            f"{(ts + timedelta(seconds=float(delay[i]))).isoformat()}\teu\n"
        )
    buffer.seek(0)
    raw = engine.raw_connection()
    try:
        with raw.cursor() as cursor:
            cursor.copy_expert("COPY events (model, ts, yhat, y, y_at, region) FROM STDIN", buffer)
            cursor.execute("CREATE INDEX ON events (ts)")
            cursor.execute("CREATE INDEX ON events (y_at)")
            cursor.execute("ANALYZE events")
        raw.commit()
    finally:
        raw.close()
    return n


if __name__ == "__main__":
    main()
