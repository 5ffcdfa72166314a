"""Read one monitor's counts and compute its results: the step shared by every command."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.engine import Connection

from .config import Config, MonitorConfig
from .matrices import build_slices
from .snapshot import MonitorResult, SliceResult, WindowResult
from .source.counts import count_query, fetch_counts
from .stats.classification import classification_metrics
from .windows import monitor_windows


def evaluate_monitor(
    connection: Connection, config: Config, monitor: MonitorConfig, now: datetime
) -> MonitorResult:
    """Count ``monitor``'s windows as of ``now`` in the database and compute their metrics."""
    settings = config.exporter
    windows = monitor_windows(now, monitor, settings.bucket)
    source = config.source(monitor.source)
    query = count_query(source, monitor, windows, now, settings.bucket, settings.future_tolerance)
    rows = fetch_counts(connection, query)
    slices = build_slices(
        rows,
        windows,
        int(settings.bucket.total_seconds()),
        monitor.classes,
        monitor.max_classes or settings.max_classes,
    )
    results = tuple(
        SliceResult(
            key=key,
            windows={
                name: WindowResult(counts, classification_metrics(counts.matrix))
                for name, counts in by_window.items()
            },
        )
        for key, by_window in sorted(
            slices.items(), key=lambda kv: (kv[0].model, kv[0].version, kv[0].segment)
        )
    )
    return MonitorResult(
        name=monitor.monitor_name,
        source=monitor.source,
        evaluated_at=now,
        windows=windows,
        slices=results,
    )
