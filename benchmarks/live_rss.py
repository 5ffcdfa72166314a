"""Peak memory of a live exporter process: the demo's monitors over simulated traffic.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python benchmarks/live_rss.py [--history 26h] [--scrapes 40]

Creates a scratch database (dropped afterwards), writes --history of the simulator's traffic
(4 models, 5 predictions per second each), starts `confusion-exporter run` with the demo's
configuration (rollup on), scrapes /metrics every 2 s while it refreshes, and prints the
process's peak resident set (VmHWM) next to the import footprint of its libraries, measured
in this process as the baseline.
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
from importlib import resources
from pathlib import Path

import sqlalchemy as sa


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    assert match, "no VmHWM in /proc (Linux only)"
    return int(match.group(1)) / 1024


def import_footprint_mb(modules: str) -> float:
    # VmHWM, not ru_maxrss: a child's ru_maxrss keeps the peak its parent had when it forked.
    code = f"import os, {modules}; print(os.getpid()); input()"
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None and child.stdin is not None
    pid = int(child.stdout.readline())
    peak = peak_rss_mb(pid)
    child.communicate("\n")
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--history", default="26h")
    parser.add_argument("--scrapes", type=int, default=40)
    args = parser.parse_args()
    admin_url = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"ce_rss_{secrets.token_hex(3)}"
    server = sa.create_engine(
        admin_url.replace("postgresql://", "postgresql+psycopg2://", 1), isolation_level="AUTOCOMMIT"
    )
    with server.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    env = {**os.environ, "DATABASE_URL": url}
    cli = [sys.executable, "-m", "confusion_exporter.cli"]
    try:
        subprocess.run([*cli, "migrate"], env=env, check=True, capture_output=True)
        started = time.perf_counter()
        subprocess.run(
            [*cli, "simulate", "--history", args.history, "--duration", "0s"],
            env=env,
            check=True,
            capture_output=True,
        )
        print(f"simulated {args.history} of traffic in {time.perf_counter() - started:.0f} s")
        port = free_port()
        demo = resources.files("confusion_exporter").joinpath("demo.yaml").read_text()
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "config.yaml"
            config.write_text(demo.replace("exporter:\n", f"exporter:\n  port: {port}\n", 1))
            process = subprocess.Popen(
                [*cli, "run", "--config", str(config)], env=env, stderr=subprocess.DEVNULL
            )
            try:
                series = 0
                for _ in range(args.scrapes):
                    time.sleep(2)
                    try:
                        with urllib.request.urlopen(
                            f"http://127.0.0.1:{port}/metrics", timeout=5
                        ) as response:
                            body = response.read().decode()
                        series = sum(1 for line in body.splitlines() if line and not line.startswith("#"))
                    except OSError:
                        continue
                peak = peak_rss_mb(process.pid)
            finally:
                process.terminate()
                process.wait(timeout=30)
    finally:
        with server.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        server.dispose()
    libraries = import_footprint_mb("numpy, scipy.special, pandas, sqlalchemy, psycopg2, prometheus_client")
    interpreter = import_footprint_mb("sys")  # the bare interpreter
    print(f"series exposed: {series:,}")
    print(f"exporter peak RSS (VmHWM): {peak:.0f} MB (target < 150 MB)")
    print(f"baseline: interpreter {interpreter:.0f} MB; importing its libraries {libraries:.0f} MB")
    print(f"exporter / library import footprint: {peak / libraries:.2f}x")


if __name__ == "__main__":
    main()
