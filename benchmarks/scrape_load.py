"""/metrics under concurrent load (wrk on loopback) at the caps, with the database up and down.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python benchmarks/scrape_load.py [--seconds 10] [--connections 16]

Creates a scratch database (dropped afterwards) with 4 models x 2 segments x 50 classes (the
default class cap) in a current and a reference window: 40,000 matrix series, ~46,000 in
all. Runs `confusion-exporter run` against it as a role of its own, then wrk (2 threads,
--connections) for --seconds: first with the database reachable, then with the role's
logins refused and its sessions terminated (every refresh fails: the exporter's view of a
database outage). Prints p50/p90/p99 latency and requests per second of each run, their
ratio (down / up: the baseline is the up run, in the same process), and the exporter's
peak RSS.
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
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
import yaml

from confusion_exporter import migrate
from confusion_exporter.config import DatabaseUrl

ROLE = "ce_bench_scraper"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fill(engine: sa.Engine, password: str) -> None:
    now = datetime.now(UTC)
    classes = [f"c{i:02d}" for i in range(50)]
    rows = []
    for model in ("m1", "m2", "m3", "m4"):
        for segment in ("eu", "us"):
            for age in (timedelta(minutes=20), timedelta(hours=2)):
                for i, cls in enumerate(classes):
                    for j in range(20):
                        predicted = cls if j % 5 else classes[(i + j) % 50]
                        rows.append({"m": model, "s": segment, "t": now - age, "p": predicted, "y": cls})
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE SCHEMA bench"))
        conn.execute(sa.text("CREATE TABLE bench.events (m text, s text, t timestamptz, p text, y text)"))
        conn.execute(sa.text("INSERT INTO bench.events VALUES (:m, :s, :t, :p, :y)"), rows)
        conn.execute(sa.text(f"DROP ROLE IF EXISTS {ROLE}"))
        conn.execute(sa.text(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{password}'"))
        conn.execute(sa.text(f"GRANT USAGE ON SCHEMA bench TO {ROLE}"))
        conn.execute(sa.text(f"GRANT SELECT ON bench.events TO {ROLE}"))


def wrk(url: str, seconds: int, connections: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"wrk saw errors:\n{out}")

    def ms(label: str) -> float:
        match = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\b", out, re.M)
        assert match, out
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return {"p50": ms("50%"), "p90": ms("90%"), "p99": ms("99%"), "rps": rps}


def peak_rss_mb(pid: int) -> float:
    match = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(match.group(1)) / 1024 if match else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    admin_url = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    admin_url = admin_url.replace("postgresql://", "postgresql+psycopg2://", 1)
    name = f"ce_load_{secrets.token_hex(3)}"
    server = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with server.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(admin_url).set(database=name)
    password = secrets.token_hex(8)
    process = None
    try:
        migrate.upgrade(DatabaseUrl(url.render_as_string(hide_password=False)))
        engine = sa.create_engine(url)
        fill(engine, password)
        port = free_port()
        config = {
            "exporter": {"port": port, "listen_address": "127.0.0.1", "refresh_interval": "5s"},
            "sources": [
                {
                    "name": "bench",
                    "table": "bench.events",
                    "columns": {
                        "model": "m",
                        "segment": "s",
                        "predicted_at": "t",
                        "predicted": "p",
                        "actual": "y",
                    },
                }
            ],
            "monitors": [
                {
                    "source": "bench",
                    "model": "*",
                    "window": "1h",
                    "reference": {"kind": "trailing", "length": "3h"},
                }
            ],
        }
        exporter_url = url.set(username=ROLE, password=password).render_as_string(hide_password=False)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "config.yaml"
            path.write_text(yaml.safe_dump(config))
            process = subprocess.Popen(
                [sys.executable, "-m", "confusion_exporter.cli", "run", "--config", str(path)],
                env={**os.environ, "DATABASE_URL": exporter_url},
                stderr=subprocess.DEVNULL,
            )
            metrics = f"http://127.0.0.1:{port}/metrics"
            body = b""
            for _ in range(300):
                time.sleep(0.2)
                try:
                    body = urllib.request.urlopen(metrics, timeout=5).read()
                except OSError:
                    continue
                if body.count(b"confusion_matrix_predictions{") >= 40_000:
                    break
            series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
            up = wrk(metrics, args.seconds, args.connections)
            with engine.begin() as conn:
                conn.execute(sa.text(f"ALTER ROLE {ROLE} NOLOGIN"))
                conn.execute(
                    sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :r"),
                    {"r": ROLE},
                )
            time.sleep(6)  # at least one refresh fails
            assert b"confusion_exporter_database_up 0.0" in urllib.request.urlopen(metrics, timeout=5).read()
            down = wrk(metrics, args.seconds, args.connections)
            rss = peak_rss_mb(process.pid)
        engine.dispose()
    finally:
        if process is not None:
            process.terminate()
            process.wait(30)
        with server.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(sa.text(f"DROP ROLE IF EXISTS {ROLE}"))
        server.dispose()
    print(
        f"series: {series:,}  exposition: {len(body) / 1e6:.1f} MB  wrk: 2 threads, {args.connections} connections, {args.seconds} s"
    )
    print("| database | p50 | p90 | p99 | requests/s |\n|---|---|---|---|---|")
    for label, run in (("reachable", up), ("unreachable (every refresh fails)", down)):
        print(
            f"| {label} | {run['p50']:.2f} ms | {run['p90']:.2f} ms | {run['p99']:.2f} ms | {run['rps']:.0f} |"
        )
    print(f"ratio down/up: p50 {down['p50'] / up['p50']:.2f}x, p99 {down['p99'] / up['p99']:.2f}x")
    print(f"exporter peak RSS: {rss:.0f} MB")


if __name__ == "__main__":
    main()
