"""/metrics latency and memory at ~20k series: pre-rendered bytes vs rendering per scrape.

    .venv/bin/python benchmarks/scrape_benchmark.py [--slices 34] [--classes 10] [--scrapes 1000]

Builds a snapshot from the exporter's own types (slices x 2 windows x K^2 cells, per-class
metrics, shift tests), serves it with the exporter's HTTP server on loopback, and times
sequential scrapes; the baseline renders the exposition on every scrape, in the same process.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta

import numpy as np

from confusion_exporter.domain import REJECT_REASONS
from confusion_exporter.exposition import HealthCollector, HealthState, SnapshotCollector, render
from confusion_exporter.matrices import SliceKey, WindowCounts
from confusion_exporter.snapshot import MonitorResult, Published, SliceResult, Snapshot, WindowResult
from confusion_exporter.stats.classification import classification_metrics
from confusion_exporter.stats.shift import ShiftParameters, shift_report
from confusion_exporter.web import make_server
from confusion_exporter.windows import Window


def synthetic_snapshot(slices: int, classes: int, seed: int = 0) -> Snapshot:
    rng = np.random.default_rng(seed)
    now = datetime.now(UTC)
    names = tuple(str(i) for i in range(classes))
    windows = (
        Window("current", now - timedelta(hours=1), now),
        Window("reference", now - timedelta(hours=25), now),
    )
    results = []
    for i in range(slices):
        by_window = {}
        for window in windows:
            matrix = rng.poisson(5, size=(classes, classes)) + np.diag(rng.poisson(500, size=classes))
            counts = WindowCounts(
                window,
                names,
                matrix,
                rng.poisson(20, size=classes),
                dict.fromkeys(REJECT_REASONS, 0),
                0,
                60.0 * matrix.sum(),
            )
            by_window[window.name] = WindowResult(counts, classification_metrics(matrix))
        report = shift_report(
            by_window["reference"].counts.matrix,
            by_window["current"].counts.matrix,
            by_window["reference"].counts.unlabeled,
            by_window["current"].counts.unlabeled,
            names,
            ShiftParameters(),
        )
        results.append(SliceResult(SliceKey(f"model-{i % 10}", f"v{i // 10}", "__all__"), by_window, report))
    monitor = MonitorResult(
        "bench",
        "bench",
        "*",
        "ml",
        "trailing",
        {},
        {"alpha": 0.01, "min_effect": 0.05, "min_samples": 200, "max_cost_increase": 0.15},
        now,
        windows,
        tuple(results),
    )
    return Snapshot(now, {"bench": monitor})


def scrape_latencies(url: str, scrapes: int) -> list[float]:
    out = []
    for _ in range(scrapes):
        started = time.perf_counter()
        with urllib.request.urlopen(url, timeout=10) as response:
            response.read()
        out.append(time.perf_counter() - started)
    return out


def serve(published, scrapes: int) -> tuple[list[float], int]:  # type: ignore[no-untyped-def]
    server = make_server("127.0.0.1", 0, published, lambda: True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        latencies = scrape_latencies(f"http://127.0.0.1:{server.server_address[1]}/metrics", scrapes)
    finally:
        server.shutdown()
        server.server_close()
    return latencies, len(published().metrics_bytes)


def quantile(values: list[float], q: float) -> float:
    return float(np.quantile(values, q)) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=52)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--scrapes", type=int, default=1000)
    args = parser.parse_args()

    snapshot = synthetic_snapshot(args.slices, args.classes)
    health = HealthState(monitors=["bench"])
    started = time.perf_counter()
    published = Published(snapshot, render(SnapshotCollector(snapshot)), render(HealthCollector(health)))
    render_ms = (time.perf_counter() - started) * 1000
    series = sum(1 for line in published.metrics_bytes.splitlines() if line and not line.startswith(b"#"))

    pre, size = serve(lambda: published, args.scrapes)
    served_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def render_every_time() -> Published:  # the baseline: what a naive collector does per scrape
        return Published(snapshot, render(SnapshotCollector(snapshot)), render(HealthCollector(health)))

    naive, _ = serve(render_every_time, max(20, args.scrapes // 20))
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"series: {series:,}  exposition: {size / 1e6:.1f} MB  render once: {render_ms:.0f} ms")
    print("| /metrics | p50 | p99 | scrapes |\n|---|---|---|---|")
    print(
        f"| pre-rendered (the exporter) | {quantile(pre, 0.5):.2f} ms | {quantile(pre, 0.99):.2f} ms | {len(pre)} |"
    )
    print(
        f"| rendered per scrape (baseline) | {quantile(naive, 0.5):.1f} ms | {quantile(naive, 0.99):.1f} ms "
        f"| {len(naive)} |"
    )
    print(f"ratio p50 baseline/pre-rendered: {statistics.median(naive) / statistics.median(pre):.0f}x")
    print(f"peak RSS serving the pre-rendered snapshot (what the exporter holds): {served_rss_mb:.0f} MB")
    print(f"peak RSS after the per-scrape rendering baseline: {rss_mb:.0f} MB")


if __name__ == "__main__":
    main()
