"""A fleet in one exporter: what a refresh costs against what its SQL costs (issue 18).

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python benchmarks/fleet_benchmark.py             # 1,000 slices, 200k rows
    .venv/bin/python benchmarks/fleet_benchmark.py --rows 10000000 # the issue's full run

Creates a scratch database (dropped afterwards) in the reference schema: ``--models`` models
x ``--versions`` versions x ``--segments`` segments, K = ``--classes``, ``--rows``
predictions over 8 days, 90% labeled 10 minutes later; folds it into the rollup once; then
runs ``--refreshes`` refreshes of one ``model: "*"`` monitor (1h window, trailing 7d
reference) through the exporter's own ``Refresher`` (fold, read, matrices, statistics,
render), the evaluation instant advancing by one bucket between them, so no refresh repeats
the previous one's instant. Scores and the sequential layer are left out (their own
slices of the issue): the source maps no score column and the sequential layer is off.

Prints medians over the refreshes:

- SQL alone: the fold with nothing new and the capped window read, run on their own;
- the whole refresh, and refresh / SQL (the issue's target: <= 1.5);
- ``build_slices`` before (the per-slice implementation kept in tests/test_build_slices.py)
  and after, on the same rows (the first ``--compare`` refreshes'), checked equal;
- the refresh split by phase (timed by wrapping the exporter's functions in this process).
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from confusion_exporter import evaluate, migrate, refresher
from confusion_exporter.config import Config, DatabaseUrl, config_from_mapping
from confusion_exporter.matrices import build_slices
from confusion_exporter.references import monitor_windows
from confusion_exporter.source.class_cap import capped_counts
from confusion_exporter.source.reference_schema import VIEW, VIEW_COLUMNS
from confusion_exporter.source.rollup import fold, window_rows_query

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.test_build_slices import assert_same, reference_build_slices  # noqa: E402

BUCKET = timedelta(minutes=1)
COLUMNS = {k: v for k, v in VIEW_COLUMNS.items() if k != "score"}


def generate(engine: sa.Engine, args: argparse.Namespace, now: datetime) -> None:
    """The fleet's predictions over 8 days, each slice with its own share of the traffic."""
    with engine.begin() as conn:
        conn.execute(
            sa.text("ALTER TABLE inference.labels DROP CONSTRAINT IF EXISTS labels_prediction_id_fkey")
        )
        conn.execute(
            sa.text(
                "INSERT INTO inference.predictions "
                "(model_name, model_version, segment, predicted_at, predicted_class) "
                "SELECT 'model-' || (i % :models), 'v' || ((i / :models) % :versions), "
                "'segment-' || ((i / (:models * :versions)) % :segments), "
                ":now - random() * interval '8 days', floor(random() * :k)::text "
                "FROM generate_series(1, :n) i"
            ),
            {
                "n": args.rows,
                "now": now,
                "models": args.models,
                "versions": args.versions,
                "segments": args.segments,
                "k": args.classes,
            },
        )
        conn.execute(
            sa.text(
                "INSERT INTO inference.labels (prediction_id, true_class, labeled_at) "
                "SELECT id, CASE WHEN random() < 0.9 THEN predicted_class "
                "ELSE floor(random() * :k)::text END, predicted_at + interval '10 minutes' "
                "FROM inference.predictions WHERE random() < 0.9 ORDER BY id"
            ),
            {"k": args.classes},
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


def fleet_config(args: argparse.Namespace) -> Config:
    return config_from_mapping(
        {
            "exporter": {"statement_timeout": "120s"},
            "sources": [{"name": "fleet", "table": VIEW, "columns": COLUMNS, "rollup": True}],
            "monitors": [
                {
                    "source": "fleet",
                    "model": "*",
                    "window": "1h",
                    "reference": {"kind": "trailing", "length": args.reference},
                    "sequential": {"enabled": False},
                }
            ],
        },
        env={},
    )


class Phases:
    """Seconds spent in each wrapped function during one refresh."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.build_inputs: list[tuple[Any, ...]] = []

    def wrap(self, module: Any, name: str, phase: str) -> None:
        original = getattr(module, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[phase] += time.perf_counter() - started

        setattr(module, name, timed)

    def keep_build_inputs(self) -> None:
        original = evaluate.build_slices

        def keeping(*args: Any) -> Any:
            self.build_inputs.append(args)
            return original(*args)

        evaluate.build_slices = keeping


@contextmanager
def scratch_database(admin_url: str) -> Iterator[str]:
    name = f"ce_fleet_{secrets.token_hex(3)}"
    server = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with server.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with server.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        server.dispose()


def sql_alone(engine: sa.Engine, config: Config, now: datetime) -> tuple[float, float]:
    """The refresh's database work on its own: a fold with nothing new, the capped window read."""
    source, monitor = config.sources[0], config.monitors[0]
    seconds = int(BUCKET.total_seconds())
    started = time.perf_counter()
    with engine.connect() as conn, conn.begin():
        conn.execute(sa.text("SET TRANSACTION READ WRITE"))
        fold(conn, source, seconds)
    folded = time.perf_counter() - started
    windows = monitor_windows(now, monitor, BUCKET)
    cells, params = window_rows_query(source.name, monitor.model, windows, now, seconds)
    query = capped_counts(cells, evaluate.class_cap(config, monitor))
    started = time.perf_counter()
    with engine.connect() as conn:
        conn.execute(query, params).fetchall()
    return folded, time.perf_counter() - started


def median_ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:,.0f} ms"


def run(url: str, args: argparse.Namespace) -> None:
    migrate.upgrade(DatabaseUrl(url))
    engine = sa.create_engine(url)
    started_at = datetime.now(UTC).replace(second=0, microsecond=0)
    started = time.perf_counter()
    generate(engine, args, started_at)
    print(f"generated {args.rows:,} predictions in {time.perf_counter() - started:.1f} s", flush=True)
    config = fleet_config(args)
    started = time.perf_counter()
    with engine.connect() as conn, conn.begin():
        fold(conn, config.sources[0], int(BUCKET.total_seconds()))
    print(f"folded once in {time.perf_counter() - started:.1f} s", flush=True)

    phases = Phases()
    phases.wrap(refresher.Refresher, "_fold_rollups", "fold")
    phases.wrap(evaluate, "fetch_capped", "SQL read (capped window rows)")
    phases.keep_build_inputs()
    phases.wrap(evaluate, "build_slices", "build_slices")
    phases.wrap(evaluate, "classification_metrics", "per-class metrics")
    phases.wrap(evaluate, "cost_increase_test", "cost test")
    phases.wrap(evaluate, "_shift", "shift tests")
    phases.wrap(refresher, "render", "render")
    instant = {"now": started_at}
    exporter = refresher.Refresher(config, DatabaseUrl(url), clock=lambda: instant["now"])
    refreshes, sql_fold, sql_read, before, after = [], [], [], [], []
    split: dict[str, list[float]] = defaultdict(list)
    slices = 0
    try:
        for i in range(args.refreshes + 1):  # the first warms caches and is not counted
            instant["now"] = started_at + i * BUCKET
            phases.seconds.clear()
            phases.build_inputs.clear()
            started = time.perf_counter()
            assert exporter.refresh(), exporter.health.last_error
            elapsed = time.perf_counter() - started
            folded, read = sql_alone(engine, config, instant["now"])
            rows, windows, *rest = phases.build_inputs[0]
            started = time.perf_counter()
            ours = build_slices(rows, windows, *rest)
            after.append(time.perf_counter() - started)
            slices = len(ours)
            if i < args.compare:  # the per-slice version takes seconds at a fleet's size
                started = time.perf_counter()
                theirs = reference_build_slices(rows, windows, *rest)
                before.append(time.perf_counter() - started)
                assert_same(ours, theirs)
            if i == 0:
                continue
            refreshes.append(elapsed)
            sql_fold.append(folded)
            sql_read.append(read)
            accounted = 0.0
            for phase, seconds in phases.seconds.items():
                split[phase].append(seconds)
                accounted += seconds
            split["other (snapshot, cost, glue)"].append(elapsed - accounted)
    finally:
        exporter.engine.dispose()
        engine.dispose()
    sql = [f + r for f, r in zip(sql_fold, sql_read, strict=True)]
    ratio = statistics.median(r / s for r, s in zip(refreshes, sql, strict=True))
    print(
        f"\n{slices:,} slices ({args.models} models x {args.versions} versions x {args.segments} "
        f"segments), K = {args.classes}, {args.rows:,} predictions over 8 days, 1h + trailing "
        f"{args.reference}, rollup; medians of {args.refreshes} refreshes, the instant one "
        f"bucket later each time\n"
    )
    print("| what | median |\n|---|---|")
    print(f"| SQL alone: fold with nothing new | {median_ms(sql_fold)} |")
    print(f"| SQL alone: capped window read | {median_ms(sql_read)} |")
    print(f"| SQL alone: total | {median_ms(sql)} |")
    print(f"| whole refresh (Refresher.refresh) | {median_ms(refreshes)} |")
    print(f"| **refresh / SQL** (target <= 1.5) | **{ratio:.2f}** |")
    print(f"| build_slices before (per slice, pandas) | {median_ms(before)} |")
    print(f"| build_slices after (one pass) | {median_ms(after)} |")
    print(f"| build_slices before / after | {statistics.median(before) / statistics.median(after):.0f}x |")
    print("\n| phase of the refresh | median | share |\n|---|---|---|")
    total = statistics.median(refreshes)
    for phase, values in sorted(split.items(), key=lambda kv: -statistics.median(kv[1])):
        print(f"| {phase} | {median_ms(values)} | {statistics.median(values) / total:.0%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--versions", type=int, default=2)
    parser.add_argument("--segments", type=int, default=5)
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--rows", type=int, default=200_000, help="predictions over 8 days")
    parser.add_argument("--reference", default="7d", help="the trailing reference's length")
    parser.add_argument("--refreshes", type=int, default=5, help="measured refreshes (after one warm-up)")
    parser.add_argument(
        "--compare", type=int, default=2, help="refreshes whose rows are also built the per-slice way"
    )
    args = parser.parse_args()
    admin_url = os.environ.get("DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
    admin_url = admin_url.replace("postgresql://", "postgresql+psycopg2://", 1)
    with scratch_database(admin_url) as url:
        run(url, args)


if __name__ == "__main__":
    main()
