"""The schedule: read -> compute -> build snapshot -> render -> swap, with per-monitor backoff.

A scrape never waits for this: it serves whatever :class:`Published` was swapped in last.
A monitor that fails keeps its last good result (its age is visible through
``confusion_exporter_last_refresh_success_timestamp_seconds``) and retries with backoff.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy.engine import Engine

from .config import Config, DatabaseUrl, MonitorConfig
from .evaluate import ScoreCache, evaluate_monitor
from .exposition import HealthCollector, HealthState, SnapshotCollector, render
from .folding import CatchUp, SourceFolder
from .sequential_tracker import SequentialTracker
from .snapshot import MonitorResult, Published, Snapshot
from .source.database import reader_engine, redact_error, timeout_hint
from .source.rollup import FoldResult

log = logging.getLogger("confusion_exporter.refresher")

REFRESH_WORKERS = 4  # the reader engine's connections (pool_size 2 + max_overflow 2)

Clock = Callable[[], datetime]
T = TypeVar("T")

# The fold before the monitors: enough for the usual change, bounded for a backlog (the
# catch-up thread folds the rest while the monitors read the source table).
FOLD_BEFORE_REFRESH_SECONDS = 2.0
# The most one refresh of a monitor spends replaying its sequential layer (at start, from the
# origin); the rest continues at the next refresh, so the windows publish at once and the
# layer follows a few refreshes later. Caught up, a refresh reads a period or none.
SEQUENTIAL_BUDGET = timedelta(seconds=2)


def utc_now() -> datetime:
    return datetime.now(UTC)


def backoff_delay(failures: int, initial: timedelta, maximum: timedelta, jitter: float = 0.1) -> float:
    """Seconds to wait after ``failures`` consecutive failures: doubling, capped, jittered."""
    base = min(maximum.total_seconds(), initial.total_seconds() * 2 ** max(0, failures - 1))
    return base * random.uniform(1 - jitter, 1 + jitter)


class Workers:
    """A fixed pool of daemon threads running refreshes.

    Not ``ThreadPoolExecutor``: its threads are joined at exit, so a query still running
    (up to ``statement_timeout``) would hold a stopping process.
    """

    def __init__(self, size: int):
        self._tasks: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]] | None]
        self._tasks = queue.SimpleQueue()
        self._size = size
        for i in range(size):
            threading.Thread(target=self._run, name=f"refresh-{i}", daemon=True).start()

    def submit(self, task: Callable[..., T], *args: Any) -> Future[T]:
        future: Future[T] = Future()
        self._tasks.put((future, task, args))
        return future

    def _run(self) -> None:
        while (item := self._tasks.get()) is not None:
            future, task, args = item
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(task(*args))
                except BaseException as error:  # handed to whoever waits on the future
                    future.set_exception(error)

    def shutdown(self) -> None:
        for _ in range(self._size):
            self._tasks.put(None)


class Refresher:
    """Owns the engine, the health figures and the published snapshot."""

    def __init__(
        self,
        config: Config,
        url: DatabaseUrl,
        *,
        clock: Clock = utc_now,
        engine: Engine | None = None,
        historical: bool = False,
    ):
        self.config = config
        self.url = url
        self.clock = clock
        # A past instant as it was (snapshot --at): no folding, labels that came later not counted.
        self.historical = historical
        settings = config.exporter
        self.engine = engine or reader_engine(
            url,
            statement_timeout=settings.statement_timeout,
            connect_timeout=settings.connect_timeout,
        )
        names = [m.monitor_name for m in config.monitors]
        self._monitor_names = names
        self.health = HealthState(monitors=names)
        self._results: dict[str, MonitorResult] = {}
        self._scores = ScoreCache(settings.score_refresh_interval)
        # One per monitor, each used by one refresh at a time (a monitor never runs twice at once).
        self._trackers: dict[str, SequentialTracker] = {}
        self._consecutive_failures = dict.fromkeys(names, 0)
        self._next_due = dict.fromkeys(names, 0.0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        bucket_seconds = int(settings.bucket.total_seconds())
        self._folders = {
            s.name: SourceFolder(s, bucket_seconds, settings.statement_timeout, settings.future_tolerance)
            for s in config.sources
            if s.rollup is not None
        }
        self._catch_up = CatchUp(
            self._folders.values(),
            self.engine,
            self._record_fold,
            self._catch_up_failed,
            settings.initial_backoff,
            settings.max_backoff,
        )
        # Monitors refresh side by side on a pool no larger than the engine's connection pool
        # (source/database.py: 2 + 2 overflow), so a worker never waits for a connection.
        self._workers = Workers(min(REFRESH_WORKERS, max(1, len(names))))
        self._in_flight: set[str] = set()  # monitors whose refresh is queued or running
        self._scheduling = threading.Lock()  # guards _in_flight
        self._publishing = threading.Lock()  # one render and swap at a time
        self._wake = threading.Event()  # a refresh finished: reschedule now
        self.published = Published(None, b"", render(HealthCollector(self.health)))

    def refresh(self, only_due: bool = False) -> bool:
        """Refresh every monitor (or only those due) once, side by side; True if all succeeded."""
        started = time.monotonic()
        now = self.clock()
        due = [m for m in self.config.monitors if not only_due or self._next_due[m.monitor_name] <= started]
        failed_sources, behind = (
            ({}, set()) if self.historical else self._fold_rollups({m.source for m in due})
        )
        pending = [self._workers.submit(self._refresh_monitor, m, now, failed_sources, behind) for m in due]
        outcomes = [future.result() for future in pending]
        with self.health.lock:
            self.health.refresh_duration_seconds = time.monotonic() - started
        with self._publishing:
            self._publish(now, rebuild_snapshot=any(outcomes))
        return all(outcomes)

    def _refresh_monitor(
        self,
        monitor: MonitorConfig,
        now: datetime,
        failed_sources: dict[str, str],
        behind: set[str] | frozenset[str] = frozenset(),
    ) -> bool:
        """Evaluate one monitor and record the outcome; never raises (one failure stops no other)."""
        name = monitor.monitor_name
        with self.health.lock:
            self.health.refreshes[name] += 1
        reached_db = False
        try:
            if monitor.source in failed_sources:
                raise RuntimeError(f"folding source {monitor.source!r}: {failed_sources[monitor.source]}")
            with self.engine.connect() as connection:
                reached_db = True
                with connection.begin():
                    result = evaluate_monitor(
                        connection,
                        self.config,
                        monitor,
                        now,
                        # Until its rollup has caught up, a source is read from its table.
                        use_rollup=monitor.source not in behind,
                        score_cache=None if self.historical else self._scores,
                        historical=self.historical,
                        tracker=self._tracker(monitor),
                        sequential_budget=None if self.historical else SEQUENTIAL_BUDGET,
                    )
        except Exception as error:  # any failure of one monitor must not stop the others
            self._consecutive_failures[name] += 1
            delay = backoff_delay(
                self._consecutive_failures[name],
                self.config.exporter.initial_backoff,
                self.config.exporter.max_backoff,
            )
            self._next_due[name] = time.monotonic() + delay
            message = redact_error(error, self.url) + timeout_hint(
                error, self.config.exporter.statement_timeout
            )
            with self.health.lock:
                self.health.failures[name] += 1
                self.health.last_error[name] = message
                self.health.database_up = int(reached_db)
            log.warning(
                "monitor refresh failed",
                extra={"fields": {"monitor": name, "error": message, "retry_in_s": f"{delay:.1f}"}},
            )
            return False
        with self._publishing:  # _publish copies the results under the same lock
            self._results[name] = result
        self._consecutive_failures[name] = 0
        self._next_due[name] = time.monotonic() + self.config.exporter.refresh_interval.total_seconds()
        with self.health.lock:
            self.health.last_success[name] = time.time()
            self.health.last_error.pop(name, None)
            self.health.database_up = 1
        return True

    def _tracker(self, monitor: MonitorConfig) -> SequentialTracker:
        """The monitor's sequential layer, kept across refreshes (a new one replays from its origin)."""
        tracker = self._trackers.get(monitor.monitor_name)
        if tracker is None:
            tracker = SequentialTracker(
                monitor, self.config.source(monitor.source), self.config.exporter.future_tolerance
            )
            self._trackers[monitor.monitor_name] = tracker
        return tracker

    def _fold_rollups(self, sources: set[str]) -> tuple[dict[str, str], set[str]]:
        """Fold every due rollup source for a bounded time; return the errors of those that failed
        and the sources still behind (their monitors read the source table meanwhile)."""
        failed, behind = {}, set()
        for name, folder in self._folders.items():
            if name not in sources:
                continue
            try:
                # Not blocking: when the catch-up thread holds the source, it is behind anyway.
                caught_up = folder.fold(
                    self.engine, FOLD_BEFORE_REFRESH_SECONDS, self._record_fold, blocking=False
                )
            except Exception as error:  # its monitors fail and retry with backoff
                failed[name] = redact_error(error, self.url)
                continue
            if not caught_up:
                behind.add(name)
                self._catch_up.wake()
        with self.health.lock:
            for name in (sources & self._folders.keys()) - failed.keys():
                self.health.folds.setdefault(name, {})["caught_up"] = int(name not in behind)
        return failed, behind

    def _record_fold(self, source: str, result: FoldResult, seconds: float, batch_rows: int) -> None:
        """Health figures of one committed fold batch (from the refresher or the catch-up thread)."""
        with self.health.lock:
            stats = self.health.folds.setdefault(source, {})
            stats["folds"] = stats.get("folds", 0) + 1
            stats["predictions"] = stats.get("predictions", 0) + result.predictions
            stats["labels"] = stats.get("labels", 0) + result.labels_changed
            stats["label_rows"] = stats.get("label_rows", 0) + result.labels
            stats["pending"] = result.pending_predictions + result.pending_labels
            stats["given_up"] = stats.get("given_up", 0) + result.given_up
            stats["duration"] = seconds
            stats["predictions_left"] = result.predictions_left
            stats["labels_left"] = result.labels_left
            stats["batch_rows"] = batch_rows
            if not result.caught_up:
                stats["caught_up"] = 0

    def _catch_up_failed(self, source: str, error: BaseException, retry_in: float) -> None:
        log.warning(
            "rollup catch-up failed",
            extra={
                "fields": {
                    "source": source,
                    "error": redact_error(error, self.url),
                    "retry_in_s": f"{retry_in:.1f}",
                }
            },
        )

    def _publish(self, now: datetime, rebuild_snapshot: bool) -> None:
        """Render and swap; the caller holds ``_publishing`` (refreshes finish on several threads)."""
        previous = self.published
        if rebuild_snapshot:
            # In the config's order, not the order refreshes finished in (they run side by
            # side): the same data renders the same bytes, whichever monitor was faster.
            ordered = {n: self._results[n] for n in self._monitor_names if n in self._results}
            snapshot: Snapshot | None = Snapshot(taken_at=now, monitors=ordered)
            snapshot_bytes = render(SnapshotCollector(snapshot))  # type: ignore[arg-type]
        else:
            snapshot, snapshot_bytes = previous.snapshot, previous.snapshot_bytes
        # One assignment: a concurrent scrape sees the old or the new, never a mix.
        self.published = Published(snapshot, snapshot_bytes, render(HealthCollector(self.health)))

    def run_forever(self) -> None:
        """Start each monitor's refresh as it falls due until :meth:`stop` is called.

        Monitors do not wait for each other: each due source is folded and its due monitors
        run on the worker pool, and each publishes as it finishes, so a monitor with a slow
        query delays only itself (docs/architecture.md, "Monitors refresh side by side").
        """
        while not self._stop.is_set():
            try:
                self._start_due()
            except Exception:  # a bug here must not kill the thread silently
                log.exception("refresh loop error")
            with self._scheduling:
                idle = [self._next_due[n] for n in self._next_due if n not in self._in_flight]
            wake = min(idle, default=time.monotonic() + 1)
            self._wake.wait(max(0.05, wake - time.monotonic()))
            self._wake.clear()

    def _start_due(self) -> None:
        started = time.monotonic()
        with self._scheduling:
            due = [
                m
                for m in self.config.monitors
                if self._next_due[m.monitor_name] <= started and m.monitor_name not in self._in_flight
            ]
            self._in_flight.update(m.monitor_name for m in due)
        by_source: dict[str, list[MonitorConfig]] = {}
        for monitor in due:
            by_source.setdefault(monitor.source, []).append(monitor)
        for source, monitors in by_source.items():
            self._workers.submit(self._refresh_source, source, monitors)

    def _refresh_source(self, source: str, monitors: list[MonitorConfig]) -> None:
        """Fold ``source`` once, then refresh each of its due monitors on its own worker."""
        try:
            now = self.clock()
            failed_sources, behind = ({}, set()) if self.historical else self._fold_rollups({source})
        except Exception as error:  # never leave the monitors marked in flight
            log.exception("refresh loop error")
            failed_sources, behind = {source: redact_error(error, self.url)}, set()
            now = self.clock()
        for monitor in monitors:
            self._workers.submit(self._refresh_and_publish, monitor, now, failed_sources, behind)

    def _refresh_and_publish(
        self, monitor: MonitorConfig, now: datetime, failed_sources: dict[str, str], behind: set[str]
    ) -> None:
        started = time.monotonic()
        try:
            ok = self._refresh_monitor(monitor, now, failed_sources, behind)
            with self.health.lock:
                self.health.refresh_duration_seconds = time.monotonic() - started
            with self._publishing:
                self._publish(now, rebuild_snapshot=ok)
        except Exception:
            log.exception("refresh loop error")
        finally:
            with self._scheduling:
                self._in_flight.discard(monitor.monitor_name)
            self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run_forever, name="refresher", daemon=True)
        self._thread.start()
        self._catch_up.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._catch_up.stop(timeout)
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        # Running queries end with their connections (or at statement_timeout): do not wait.
        self._workers.shutdown()
        self.engine.dispose()
