"""A model that emits a million distinct classes, beside an ordinary monitor: what it costs.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python benchmarks/huge_classes.py [--classes 1000000] [--seconds 90]

Creates a scratch database (dropped afterwards) with two tables: ``huge`` (one row per class,
each row a distinct predicted and true class, spread over the current and reference windows)
and ``small`` (3 classes, 2,000 rows). Starts `confusion-exporter run` with one monitor on
each (refresh_interval 1s), scrapes /metrics every 50 ms and prints: the huge monitor's
first refresh (from process start), the small monitor's first refresh and how often it
refreshed while the huge one was still in its first, the scrape latency (p50, p99, max)
during that time, and the process's peak resident set (VmHWM).
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import sqlalchemy as sa
import yaml

COLUMNS = {"model": "clf", "version": "clf_ver", "predicted_at": "ts", "predicted": "yhat", "actual": "y"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def peak_rss_mb(pid: int) -> float:
    match = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    assert match, "no VmHWM in /proc (Linux only)"
    return int(match.group(1)) / 1024


def gauge(body: str, name: str, monitor: str) -> float:
    match = re.search(rf'^{name}{{monitor="{re.escape(monitor)}"}} (\S+)$', body, re.M)
    return float(match.group(1)) if match else 0.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=90, help="give up waiting after this long")
    parser.add_argument("--log", default=os.devnull, help="write the exporter's log here")
    args = parser.parse_args()
    admin_url = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"ce_classes_{secrets.token_hex(3)}"
    server = sa.create_engine(
        admin_url.replace("postgresql://", "postgresql+psycopg2://", 1), isolation_level="AUTOCOMMIT"
    )
    with server.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    scratch = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg2://", 1))
    try:
        with scratch.begin() as conn:
            for table in ("huge", "small"):
                conn.execute(
                    sa.text(
                        f"CREATE TABLE {table} (clf text, clf_ver text, ts timestamptz, yhat text, y text)"
                    )
                )
            # Spread over 4 hours: the current hour and the 3 h trailing reference.
            conn.execute(
                sa.text(
                    "INSERT INTO huge SELECT 'm', 'v1', now() - (i % 14000) * interval '1 second', "
                    "'class-' || i, 'class-' || (i + i % 2) FROM generate_series(1, :n) i"
                ),
                {"n": args.classes},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO small SELECT 'm', 'v1', now() - (i % 14000) * interval '1 second', "
                    "(ARRAY['a','b','c'])[1 + i % 3], (ARRAY['a','b','c'])[1 + (i * 7) % 3] "
                    "FROM generate_series(1, 2000) i"
                )
            )
            conn.execute(sa.text("ANALYZE huge; ANALYZE small"))
        monitor = {"model": "m", "window": "1h", "reference": {"kind": "trailing", "length": "3h"}}
        config = {
            "exporter": {"port": free_port(), "listen_address": "127.0.0.1", "refresh_interval": "1s"},
            "sources": [{"name": t, "table": f"public.{t}", "columns": COLUMNS} for t in ("huge", "small")],
            "monitors": [{"source": t, **monitor} for t in ("huge", "small")],
        }
        port = config["exporter"]["port"]
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "config.yaml"
            path.write_text(yaml.safe_dump(config))
            started = time.time()
            process = subprocess.Popen(
                [sys.executable, "-m", "confusion_exporter.cli", "run", "--config", str(path)],
                env={**os.environ, "DATABASE_URL": url},
                stderr=open(args.log, "wb"),  # noqa: SIM115 (closed with the process)
            )
            latencies: list[float] = []
            small_first = huge_first = 0.0
            small_refreshes_during = 0.0
            try:
                while time.time() - started < args.seconds:
                    before = time.perf_counter()
                    try:
                        with urllib.request.urlopen(
                            f"http://127.0.0.1:{port}/metrics", timeout=30
                        ) as response:
                            body = response.read().decode()
                    except OSError:
                        time.sleep(0.05)
                        continue
                    latencies.append(time.perf_counter() - before)
                    small = gauge(
                        body, "confusion_exporter_last_refresh_success_timestamp_seconds", "small:m"
                    )
                    huge = gauge(body, "confusion_exporter_last_refresh_success_timestamp_seconds", "huge:m")
                    if small and not small_first:
                        small_first = small - started
                    if huge:
                        huge_first = huge - started
                        break
                    small_refreshes_during = gauge(body, "confusion_exporter_refreshes_total", "small:m")
                    time.sleep(0.05)
                peak = peak_rss_mb(process.pid)
            finally:
                process.terminate()
                process.wait(timeout=30)
    finally:
        scratch.dispose()
        with server.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        server.dispose()
    print(f"classes in the huge table: {args.classes:,}")
    print(
        f"huge monitor, first refresh done after: {huge_first:.1f} s from process start"
        if huge_first
        else "huge monitor: no refresh within --seconds"
    )
    print(
        f"small monitor, first refresh done after: {small_first:.1f} s; refreshes while the huge one ran: {small_refreshes_during:.0f}"
    )
    print(
        f"scrapes during the huge refresh: {len(latencies)}, p50 {percentile(latencies, 0.5) * 1000:.1f} ms, "
        f"p99 {percentile(latencies, 0.99) * 1000:.1f} ms, max {max(latencies, default=float('nan')) * 1000:.1f} ms"
    )
    print(f"exporter peak RSS (VmHWM): {peak:.0f} MB")


if __name__ == "__main__":
    main()
