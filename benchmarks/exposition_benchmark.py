"""Rendering and compressing a fleet's exposition: prometheus_client against render.py.

    .venv/bin/python benchmarks/exposition_benchmark.py [--models 100] [--classes 5] [--repeat 3]

Builds a snapshot from the exporter's own types: models x 2 versions x 5 segments slices (1,000
at the default), K classes, two windows, every family filled (matrix, per-class, rejections,
scores, shift tests with rows and cells, the sequential layer per model and segment, monitor
figures). Then, in the same run and on the same snapshot: the old render
(``prometheus_client.generate_latest`` of the collectors), the new one (``exposition.render``,
a first render that builds the label parts and later ones that reuse them, as every refresh
after the first does), their ratio, and the gzip members ``Published`` builds once per refresh
(time and size), plus the OpenMetrics variant a first OpenMetrics scrape derives.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from datetime import UTC, datetime, timedelta

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest

from confusion_exporter.domain import REJECT_REASONS
from confusion_exporter.exposition import HealthCollector, HealthState, SnapshotCollector, render
from confusion_exporter.matrices import SliceKey, WindowCounts
from confusion_exporter.render import RENDERER
from confusion_exporter.snapshot import (
    MonitorResult,
    Published,
    SequentialResult,
    SequentialSlice,
    SliceResult,
    Snapshot,
    WindowResult,
)
from confusion_exporter.stats import sequential as seq
from confusion_exporter.stats.calibration import ConfidenceCounts, summarize
from confusion_exporter.stats.classification import classification_metrics
from confusion_exporter.stats.shift import ShiftParameters, shift_report
from confusion_exporter.stats.thresholds import ThresholdMatrix
from confusion_exporter.windows import CURRENT, REFERENCE, Window

VERSIONS = ("v1", "v2")
SEGMENTS = ("eu", "us", "apac", "latam", "__all__")


def _window_result(rng: np.random.Generator, window: Window, names: tuple[str, ...]) -> WindowResult:
    k = len(names)
    matrix = rng.poisson(5, size=(k, k)) + np.diag(rng.poisson(500, size=k))
    counts = WindowCounts(
        window,
        names,
        matrix.astype(np.int64),
        rng.poisson(20, size=k).astype(np.int64),
        dict.fromkeys(REJECT_REASONS, 1),
        0,
        60.0 * matrix.sum(),
    )
    confidence = ConfidenceCounts(
        bins=2,
        n=rng.poisson(300, size=(2, 2)).astype(np.int64),
        score_sum=rng.uniform(50, 200, size=(2, 2)),
        high=rng.poisson(100, size=2).astype(np.int64),
        high_threshold=0.9,
        invalid=1,
    )
    thresholds = (ThresholdMatrix(0.5, names, matrix.astype(np.int64)),)
    return WindowResult(counts, classification_metrics(matrix), 0.1, summarize(confidence), thresholds)


def _detector(rng: np.random.Generator, model: str, segment: str, names: tuple[str, ...]) -> SequentialSlice:
    cells = []
    for true_class in names:
        for predicted in names:
            kind = seq.ERROR if true_class == predicted else seq.CONFUSION
            cells.append(
                seq.CellReport(
                    kind,
                    true_class,
                    "" if kind == seq.ERROR else predicted,
                    "",
                    *rng.uniform(0, 1, 6),
                    threshold=11.5,
                    state=seq.STABLE,
                    current_trials=int(rng.integers(1000)),
                    reference_trials=int(rng.integers(10000)),
                )
            )
    return SequentialSlice(model, segment, seq.STABLE, 11.5, names, tuple(cells))


def fleet_snapshot(models: int, classes: int, seed: int = 18) -> Snapshot:
    rng = np.random.default_rng(seed)
    now = datetime(2026, 12, 1, 12, tzinfo=UTC)
    names = tuple(f"class_{i}" for i in range(classes))
    windows = (
        Window(CURRENT, now - timedelta(hours=1), now),
        Window(REFERENCE, now - timedelta(days=7), now),
    )
    reports = []  # a few distinct shift reports, cycled: the statistics are not what is measured
    for _ in range(8):
        pair = [_window_result(rng, w, names).counts for w in windows]
        parameters = ShiftParameters(monte_carlo_samples=0, top_cells=classes * classes)
        reports.append(
            shift_report(
                pair[1].matrix, pair[0].matrix, pair[1].unlabeled, pair[0].unlabeled, names, parameters
            )
        )
    slices, detectors = [], []
    for m in range(models):
        model = f"model-{m:03d}"
        for segment in SEGMENTS:
            detectors.append(_detector(rng, model, segment, names))
            for version in VERSIONS:
                results = {w.name: _window_result(rng, w, names) for w in windows}
                slices.append(
                    SliceResult(
                        SliceKey(model, version, segment), results, reports[len(slices) % len(reports)]
                    )
                )
    monitor = MonitorResult(
        name="fleet:*",
        source="fleet",
        model="*",
        team="platform",
        reference="trailing",
        recall_objectives={names[0]: 0.8},
        thresholds={"alpha": 0.001, "min_effect": 0.03, "min_samples": 200, "max_cost_increase": 0.15},
        evaluated_at=now,
        windows=windows,
        slices=tuple(slices),
        sequential=SequentialResult(now - timedelta(days=30), now, True, tuple(detectors)),
    )
    return Snapshot(now, {monitor.name: monitor})


def timed(function, repeat: int) -> tuple[float, float, object]:
    """The best wall and CPU time of ``repeat`` calls (on busy shared cores the minimum is the
    figure that repeats, and CPU time what the process itself spent; garbage collection on, as
    in the exporter) and the last result."""
    walls, cpus, result = [], [], None
    for _ in range(repeat):
        gc.collect()
        wall, cpu = time.perf_counter(), time.process_time()
        result = function()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus), result


def kept_label_parts() -> tuple[int, int]:
    """How many label parts the renderer keeps, and their bytes (the cost of the cache)."""
    strings = [
        text
        for parts in RENDERER._families.values()  # noqa: SLF001 - measuring the cache is the point
        for text in [*parts.parts.values(), *(p for block in parts.blocks.values() for p in block)]
    ]
    return len(strings), sum(sys.getsizeof(text) for text in strings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=100, help="models (x 2 versions x 5 segments slices)")
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=5, help="runs of each step (the old render: 2)")
    args = parser.parse_args()

    snapshot = fleet_snapshot(args.models, args.classes)
    health_bytes = render(HealthCollector(HealthState(monitors=list(snapshot.monitors))))

    def old() -> bytes:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(SnapshotCollector(snapshot))
        return generate_latest(registry)

    def new() -> bytes:
        return render(SnapshotCollector(snapshot))

    first_wall, first_cpu, body = timed(new, 1)  # the first render builds every series' label part
    old_wall, old_cpu, old_body = timed(old, min(args.repeat, 2))  # ~10 s of CPU a run by default
    new_wall, new_cpu, new_body = timed(new, args.repeat)
    assert new_body == old_body == body, "render.py and generate_latest disagree"
    assert isinstance(body, bytes)
    samples = body.count(b"\n") - 2 * body.count(b"\n# TYPE ")
    gzip_wall, gzip_cpu, published = timed(lambda: Published(snapshot, body, health_bytes), args.repeat)
    assert isinstance(published, Published)
    fresh = [Published(snapshot, body, health_bytes) for _ in range(args.repeat)]  # nothing derived yet
    om_wall, om_cpu, om_gzip = timed(lambda: fresh.pop().openmetrics(gzipped=True), args.repeat)
    assert isinstance(om_gzip, bytes)

    print(
        f"fleet: {len(snapshot.monitors['fleet:*'].slices):,} slices, K = {args.classes}, "
        f"{samples:,} samples, {len(body) / 1e6:.1f} MB of text; best of {args.repeat} (old: of 2)"
    )
    print(f"{'step':<46} {'wall s':>8} {'CPU s':>8} {'CPU µs/sample':>14} {'CPU s/300k':>11}")
    rows = [
        ("old: prometheus_client.generate_latest", old_wall, old_cpu),
        ("new: render(), first render (label parts)", first_wall, first_cpu),
        ("new: render(), every later refresh", new_wall, new_cpu),
        ("gzip members, once per refresh (Published)", gzip_wall, gzip_cpu),
        ("OpenMetrics gzip, on the first OM scrape", om_wall, om_cpu),
    ]
    for name, wall, cpu in rows:
        print(
            f"{name:<46} {wall:>8.3f} {cpu:>8.3f} {cpu / samples * 1e6:>14.2f} {cpu / samples * 3e5:>11.3f}"
        )
    print(f"ratio old / new (a later refresh): {old_cpu / new_cpu:.1f}x CPU, {old_wall / new_wall:.1f}x wall")
    print(
        f"gzip: {len(body) / 1e6:.1f} MB -> {len(published.metrics_gzip) / 1e6:.2f} MB "
        f"({len(body) / len(published.metrics_gzip):.0f}x smaller); OpenMetrics gzip {len(om_gzip) / 1e6:.2f} MB"
    )
    count, size = kept_label_parts()
    print(f"label parts kept between refreshes: {count:,} strings, {size / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
