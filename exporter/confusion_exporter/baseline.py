"""Capture a pinned baseline: count a monitor's slices over a fixed span and store them."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from sqlalchemy.engine import Engine

from .config import Config, ConfigError
from .evaluate import class_cap
from .matrices import build_slices
from .source.baselines import write_baseline
from .source.class_cap import capped_counts, fetch_capped
from .source.counts import count_query
from .windows import REFERENCE, Window


def capture_baseline(
    engine: Engine,
    config: Config,
    monitor_name: str,
    name: str,
    start: datetime,
    end: datetime,
    now: datetime,
) -> tuple[int, int]:
    """Store baseline ``name`` for ``monitor_name`` over ``[start, end)``; return (slices, cells)."""
    monitors = {m.monitor_name: m for m in config.monitors}
    if monitor_name not in monitors:
        raise ConfigError([f"--monitor: unknown monitor {monitor_name!r}; monitors: {', '.join(monitors)}"])
    if not start < end:
        raise ConfigError(["--from/--to: --from must be earlier than --to"])
    if end > now:
        raise ConfigError(["--to: the span must have ended; a baseline is a finished window"])
    monitor = monitors[monitor_name]
    settings = config.exporter
    size = int(settings.bucket.total_seconds())
    for flag, instant in (("--from", start), ("--to", end)):
        if instant.timestamp() % size:
            raise ConfigError(
                [
                    f"{flag}: {instant.isoformat()} is not on a {size}s bucket boundary (exporter.bucket); "
                    "windows are sums of whole buckets"
                ]
            )
    window = Window(REFERENCE, start, end)
    query = count_query(
        config.source(monitor.source), monitor, (window,), now, settings.bucket, settings.future_tolerance
    )
    # Capped in SQL like a refresh (not ranked with an older capture of the same name).
    cap = replace(class_cap(config, monitor), baseline=None)
    with engine.begin() as connection:
        rows, _ = fetch_capped(connection, capped_counts(query, cap))
        slices = build_slices(rows, (window,), size, monitor.classes, cap.max_classes)
        by_slice = {key: by_window[REFERENCE] for key, by_window in slices.items()}
        cells = write_baseline(connection, name, monitor_name, window, by_slice, now)
    return len(by_slice), cells
