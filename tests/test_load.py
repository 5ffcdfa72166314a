"""/metrics under concurrent scrapes (a bounded wrk run on loopback) at the largest size the
caps allow, with the database up and with it unreachable: every response is complete and 200.
Latency figures live in benchmarks/scrape_load.py and docs/performance.md."""

from __future__ import annotations

import re
import subprocess
from datetime import UTC, datetime, timedelta

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
