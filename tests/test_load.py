"""/metrics under concurrent scrapes (a bounded wrk run on loopback) at the largest size the
caps allow, with the database up and with it unreachable: every response is complete and 200.
Latency figures live in benchmarks/scrape_load.py and docs/performance.md."""

from __future__ import annotations

import re
import socket
import struct
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from .helpers import Row, create_scored_events, exporter_config, insert_rows
from .processes import ExporterProcess, TcpProxy, http_get, samples, value, wait_until

CLASSES = [f"c{i:02d}" for i in range(50)]  # the default cap: max_classes = 50


def big_rows() -> list[Row]:
    """4 models x 2 segments, 50 classes each, in the current and the reference window."""
    rows = []
    for model in ("m1", "m2", "m3", "m4"):
        for segment in ("eu", "us"):
            for age in (timedelta(minutes=20), timedelta(hours=2)):
                for i, cls in enumerate(CLASSES):
                    for j in range(4):
                        predicted = cls if j else CLASSES[(i + 1) % 50]
                        rows.append(
                            Row(model, "v1", datetime.now(UTC) - age, predicted, cls, segment=segment)
                        )
    return rows


def run_wrk(wrk: str, url: str, seconds: int = 3) -> dict[str, float]:
    out = subprocess.run(
        [wrk, "-t2", "-c8", f"-d{seconds}s", "--timeout", "5s", "--latency", url],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
    ).stdout
    assert "Non-2xx" not in out and "Socket errors" not in out, out
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return {"requests": requests}


def test_concurrent_scrapes_at_the_cap_succeed_with_the_database_up_and_down(
    cli, admin_engine, exporter_url, tmp_path, wrk
):
    table = create_scored_events(admin_engine)
    insert_rows(admin_engine, table, big_rows())
    proxy = TcpProxy(exporter_url)
    proxy.start()
    config = exporter_config(table, model="*")
    exporter = ExporterProcess(cli, config, proxy.url_for(exporter_url), tmp_path)
    try:
        metrics = wait_until(
            lambda: (
                (m := exporter.metrics())
                and value(m, "confusion_monitor_slices", monitor="shop:*") == 8
                and m
            ),
            timeout=60,
        )
        cells = sum(1 for name, _ in metrics if name == "confusion_matrix_predictions")
        assert cells == 8 * 2 * 50 * 50  # 40,000 matrix series
        up = run_wrk(wrk, exporter.url("/metrics"))
        proxy.stop()
        wait_until(lambda: value(exporter.metrics(), "confusion_exporter_database_up") == 0, timeout=30)
        down = run_wrk(wrk, exporter.url("/metrics"))
        still = samples(http_get(exporter.url("/metrics"))[1])
        assert sum(1 for name, _ in still if name == "confusion_matrix_predictions") == cells
    finally:
        proxy.stop()
        assert exporter.stop() == 0
    assert up["requests"] > 20 and down["requests"] > 20


@pytest.fixture(scope="module")
def big_exporter(cli, admin_engine, exporter_url, tmp_path_factory):  # type: ignore[no-untyped-def]
    """An exporter at the class cap (a 7 MB exposition: a response no socket buffer holds)."""
    table = create_scored_events(admin_engine)
    insert_rows(admin_engine, table, big_rows())
    exporter = ExporterProcess(
        cli, exporter_config(table, model="*"), exporter_url, tmp_path_factory.mktemp("big")
    )
    wait_until(
        lambda: value(exporter.metrics(), "confusion_monitor_slices", monitor="shop:*") == 8, timeout=60
    )
    yield exporter
    assert exporter.stop() == 0


def client_errors(exporter: ExporterProcess) -> dict[str, float]:
    return {
        dict(labels)["reason"]: v
        for (name, labels), v in exporter.metrics().items()
        if name == "confusion_exporter_http_client_errors_total"
    }


def reset(sock: socket.socket) -> None:
    """Close with a TCP reset, as a client that crashes or gives up does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def threads(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^Threads:\s+(\d+)", status, re.MULTILINE).group(1))  # type: ignore[union-attr]


GET_METRICS = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def test_clients_hanging_up_mid_scrape_cost_a_count_and_a_line_not_a_traceback(big_exporter):
    """Clients hanging up mid-scrape gave 210 lines of BrokenPipe and ConnectionReset tracebacks."""
    exporter = big_exporter
    before = client_errors(exporter)
    lines = exporter.log().count("client connection ended")
    for _ in range(20):  # read the first bytes of the response, then reset
        sock = socket.create_connection(("127.0.0.1", exporter.port), timeout=5)
        sock.sendall(GET_METRICS)
        sock.recv(10)
        reset(sock)
    for _ in range(10):  # read the first bytes, then an orderly close with most of the body unsent
        with socket.create_connection(("127.0.0.1", exporter.port), timeout=5) as sock:
            sock.sendall(GET_METRICS)
            sock.recv(10)
    for _ in range(10):  # send the request and reset at once
        sock = socket.create_connection(("127.0.0.1", exporter.port), timeout=5)
        sock.sendall(GET_METRICS)
        reset(sock)
    for _ in range(10):  # half a request head, then leave
        with socket.create_connection(("127.0.0.1", exporter.port), timeout=5) as sock:
            sock.sendall(b"GET /metr")

    after = wait_until(
        lambda: (c := client_errors(exporter))["disconnect"] - before["disconnect"] >= 50 and c
    )
    assert after["disconnect"] - before["disconnect"] == 50, (before, after)
    wait_until(lambda: exporter.log().count("client connection ended") - lines >= 50)
    assert exporter.log().count("client connection ended") - lines == 50  # one line per event
    assert "Traceback" not in exporter.log()
    assert http_get(exporter.url("/metrics"))[0] == 200


def test_slow_clients_hold_no_thread_and_prometheus_is_still_answered(big_exporter):
    """106 slow-trickling sockets held 110 threads for over 30 s. Now: 600 sockets trickling a
    request head a byte at a time and 30 that never read their response, while a scraper
    reads the whole 7 MB exposition every half second; then the readers hit the response
    deadline."""
    exporter = big_exporter
    pid = exporter.process.pid
    idle_threads = threads(pid)
    before = client_errors(exporter)
    readers = []
    for _ in range(30):  # ask for the exposition, never read it
        sock = socket.create_connection(("127.0.0.1", exporter.port), timeout=5)
        sock.sendall(GET_METRICS)
        readers.append(sock)
    trickling = []
    for _ in range(600):
        sock = socket.create_connection(("127.0.0.1", exporter.port), timeout=5)
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        trickling.append(sock)
    stop = threading.Event()

    def trickle() -> None:
        while not stop.is_set():
            for sock in list(trickling):
                try:
                    sock.send(b"X")  # a header line that never ends
                except OSError:  # the server closed it: evicted or timed out
                    trickling.remove(sock)
            stop.wait(0.5)

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    scrapes, thread_counts = [], []
    started = time.monotonic()
    try:
        while time.monotonic() - started < 13:  # past the 10 s head deadline
            status, body, elapsed = http_get(exporter.url("/metrics"), timeout=10)
            assert status == 200 and body.endswith(b"\n")
            scrapes.append(elapsed)
            thread_counts.append(threads(pid))
            time.sleep(0.5)
    finally:
        stop.set()
        trickler.join(5)
    after = client_errors(exporter)
    for sock in trickling:
        sock.close()
    # the readers that never read are cut at the 30 s response deadline
    cut = wait_until(
        lambda: (c := client_errors(exporter))["response_timeout"] - before["response_timeout"] >= 30 and c,
        timeout=30,
        interval=0.5,
    )
    assert cut["response_timeout"] - before["response_timeout"] == 30
    assert all(sock.recv(1 << 24) for sock in readers)  # what was sent before the cut is readable
    for sock in readers:
        reset(sock)

    assert len(scrapes) >= 10 and max(scrapes) < 2.0, scrapes
    assert max(thread_counts) <= idle_threads + 8, (idle_threads, thread_counts)  # the workers at most
    # every trickling head ended by the server: evicted to keep 512 connections at most, or timed out
    ended = sum(after[r] - before[r] for r in ("evicted", "head_timeout"))
    assert ended == 600 and after["evicted"] - before["evicted"] >= 600 + 30 - 512, (before, after)
    assert not trickling
    assert "Traceback" not in exporter.log()
