"""Metric history for a past span: every monitor evaluated at each step, as OpenMetrics with
timestamps, the input of ``promtool tsdb create-blocks-from openmetrics``.

Each step is a historical evaluation (the same code as ``snapshot --at``: windows,
references, statistics, decisions, with labels that arrived later not yet counted), so a new
installation shows weeks of matrices and tests on its first day and a past incident can be
replayed. OpenMetrics wants each family's samples together, so samples are appended to one
part file per family while the steps run (memory stays flat however long the span), and
the parts are joined at the end.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.openmetrics.exposition import generate_latest
from prometheus_client.registry import Collector
from sqlalchemy.engine import Engine

from .config import Config
from .evaluate import evaluate_monitor
from .exposition import SnapshotCollector
from .sequential_tracker import SequentialTracker
from .snapshot import Snapshot

log = logging.getLogger("confusion_exporter.backfill")
OUTPUT_NAME = "confusion-exporter.om"


@dataclass(frozen=True)
class BackfillResult:
    path: Path
    steps: int
    samples: int
    families: int
    seconds: float


class _Fixed(Collector):
    def __init__(self, family: Metric):
        self._family = family

    def collect(self) -> Iterator[Metric]:
        yield self._family


def _timestamped(family: Metric, at: float) -> Metric:
    stamped = Metric(family.name, family.documentation, family.type, family.unit)
    stamped.samples = [sample._replace(timestamp=at) for sample in family.samples]
    return stamped


def instants(start: datetime, end: datetime, step: timedelta) -> Iterator[datetime]:
    """``start``, ``start + step``, ... up to and including ``end``."""
    at = start
    while at <= end:
        yield at
        at += step


def backfill(
    engine: Engine, config: Config, start: datetime, end: datetime, step: timedelta, output: Path
) -> BackfillResult:
    started = time.monotonic()
    parts_dir = output / ".parts"
    shutil.rmtree(parts_dir, ignore_errors=True)
    parts_dir.mkdir(parents=True)
    headers: dict[str, list[str]] = {}
    parts: dict[str, object] = {}
    steps = samples = 0
    # One sequential tracker per monitor, advanced step by step: the same state as a replay
    # from the origin to each step, read once instead of once per step.
    trackers = {
        m.monitor_name: SequentialTracker(m, config.source(m.source), config.exporter.future_tolerance)
        for m in config.monitors
    }
    try:
        for at in instants(start, end, step):
            with engine.connect() as connection:
                monitors = {
                    m.monitor_name: evaluate_monitor(
                        connection, config, m, at, historical=True, tracker=trackers[m.monitor_name]
                    )
                    for m in config.monitors
                }
            for family in SnapshotCollector(Snapshot(at, monitors)).collect():
                if not family.samples:
                    continue
                registry = CollectorRegistry(auto_describe=False)
                registry.register(_Fixed(_timestamped(family, at.timestamp())))
                lines = generate_latest(registry).decode("utf-8").splitlines()
                body = [line for line in lines if line and not line.startswith("#")]
                headers.setdefault(
                    family.name, [line for line in lines if line.startswith("# ") and line != "# EOF"]
                )
                handle = parts.get(family.name)
                if handle is None:
                    handle = parts[family.name] = (parts_dir / f"{len(parts)}.part").open(
                        "w", encoding="utf-8"
                    )
                handle.write("\n".join(body) + "\n")  # type: ignore[attr-defined]
                samples += len(body)
            steps += 1
            if steps % 50 == 0:
                log.info("backfilling", extra={"fields": {"at": at.isoformat(), "steps": steps}})
    finally:
        for handle in parts.values():
            handle.close()  # type: ignore[attr-defined]
    path = output / OUTPUT_NAME
    with path.open("w", encoding="utf-8") as out:
        for i, name in enumerate(parts):
            out.write("\n".join(headers[name]) + "\n")
            with (parts_dir / f"{i}.part").open(encoding="utf-8") as part:
                shutil.copyfileobj(part, out)
        out.write("# EOF\n")
    shutil.rmtree(parts_dir, ignore_errors=True)
    return BackfillResult(path, steps, samples, len(parts), time.monotonic() - started)
