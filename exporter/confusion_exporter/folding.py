"""Fold rollup sources in bounded batches under the statement timeout, and show the progress.

The first fold of a long history (or a backlog after an outage) as one statement would run
into ``statement_timeout`` and retry for ever. Instead each batch is one short transaction of
:func:`source.rollup.fold` with ``batch_rows`` (same watermarks and pending ids, so exactly
once), and the batch size adapts so that a batch takes a fraction of the timeout. The
refresher folds one bounded step before its monitors; a source that is still behind is read
from its table (the full path) while :class:`CatchUp` folds the rest in the background, and
its monitors switch to the rollup once a fold reaches the newest rows.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from .config import SourceConfig
from .source.database import is_statement_timeout
from .source.rollup import FoldResult, fold

log = logging.getLogger("confusion_exporter.folding")

INITIAL_BATCH_ROWS = 10_000
MIN_BATCH_ROWS = 100
MAX_BATCH_ROWS = 1_000_000
# A batch aims at this share of statement_timeout, so each of its statements stays well under.
TARGET_SHARE = 0.25
# Beyond ~1 s a batch adds little throughput and holds the source's state row lock longer.
MAX_TARGET_SECONDS = 1.0
PROGRESS_LOG_SECONDS = 10.0

OnBatch = Callable[[str, FoldResult, float, int], None]


def target_seconds(statement_timeout: timedelta) -> float:
    return min(MAX_TARGET_SECONDS, TARGET_SHARE * statement_timeout.total_seconds())


def next_batch_rows(rows: int, limited: bool, seconds: float, target: float) -> int:
    """The next batch size after a batch of ``rows`` took ``seconds``.

    Only a batch that was cut by its limit says how long ``rows`` take; the size moves toward
    the target duration, at most halving or doubling per batch so one outlier cannot swing it.
    """
    if not limited or seconds <= 0:
        return rows
    scaled = rows * target / seconds
    return int(max(MIN_BATCH_ROWS, min(MAX_BATCH_ROWS, rows * 2, max(rows / 2, scaled))))


class SourceFolder:
    """One rollup source's batched folding: its batch size, whether it has caught up, and a lock
    so that the refresher and the catch-up thread never fold it at the same time."""

    def __init__(
        self,
        source: SourceConfig,
        bucket_seconds: int,
        statement_timeout: timedelta,
        label_tolerance: timedelta = timedelta(0),
    ):
        self.source = source
        self.bucket_seconds = bucket_seconds
        self.label_tolerance = label_tolerance  # exporter.future_tolerance (rejection reasons)
        self.statement_timeout = statement_timeout
        self.target = target_seconds(statement_timeout)
        self.batch_rows = INITIAL_BATCH_ROWS
        self.caught_up: bool | None = None  # unknown until the first fold
        self.lock = threading.Lock()
        self._episode: dict[str, float] | None = None  # the catch-up under way, for its log lines

    def fold(
        self, engine: Engine, budget_seconds: float, on_batch: OnBatch, blocking: bool = True
    ) -> bool | None:
        """Fold batches until caught up or ``budget_seconds`` spent (at least one batch);
        return whether the rollup has caught up; None if another thread is folding it."""
        if not self.lock.acquire(blocking=blocking):
            return None
        try:
            deadline = time.monotonic() + budget_seconds
            while True:
                rows = self.batch_rows
                result, seconds = self._batch(engine)
                on_batch(self.source.name, result, seconds, self.batch_rows)
                self._log_progress(result, rows, seconds)
                if result.caught_up or time.monotonic() >= deadline:
                    return self.caught_up
        finally:
            self.lock.release()

    def _batch(self, engine: Engine) -> tuple[FoldResult, float]:
        while True:
            rows = self.batch_rows
            started = time.monotonic()
            try:
                with engine.connect() as connection, connection.begin():
                    result = fold(
                        connection, self.source, self.bucket_seconds, self.label_tolerance, batch_rows=rows
                    )
            except sa.exc.OperationalError as error:
                if not is_statement_timeout(error):
                    raise  # a lock timeout or an outage: smaller batches would not help
                if rows <= MIN_BATCH_ROWS:
                    timeout = int(self.statement_timeout.total_seconds() * 1000)
                    raise RuntimeError(
                        f"source {self.source.name!r}: a fold of {rows} rows per table still exceeds "
                        f"exporter.statement_timeout ({timeout}ms); raise exporter.statement_timeout"
                    ) from None
                # Rolled back whole: nothing of it stays. Retry at once with a quarter.
                self.batch_rows = max(MIN_BATCH_ROWS, rows // 4)
                log.warning(
                    "rollup fold batch exceeded statement_timeout, retrying smaller",
                    extra={
                        "fields": {"source": self.source.name, "batch_rows": rows, "next": self.batch_rows}
                    },
                )
                continue
            seconds = time.monotonic() - started
            self.batch_rows = next_batch_rows(rows, not result.caught_up, seconds, self.target)
            self.caught_up = result.caught_up
            return result, seconds

    def _log_progress(self, result: FoldResult, rows: int, seconds: float) -> None:
        """One logfmt line when a catch-up starts, every PROGRESS_LOG_SECONDS, and when it ends."""
        now = time.monotonic()
        episode = self._episode
        if episode is None:
            if result.caught_up:
                return  # the usual fold: nothing to tell
            episode = self._episode = {"started": now - seconds, "logged": 0.0, "predictions": 0, "labels": 0}
        episode["predictions"] += result.predictions
        episode["labels"] += result.labels
        elapsed = now - episode["started"]
        fields = {
            "source": self.source.name,
            "folded_predictions": int(episode["predictions"]),
            "folded_labels": int(episode["labels"]),
            "predictions_left": result.predictions_left,
            "labels_left": result.labels_left,
            "batch_rows": rows,
            "elapsed_s": f"{elapsed:.1f}",
            "rows_per_s": f"{(episode['predictions'] + episode['labels']) / elapsed:.0f}"
            if elapsed > 0
            else "",
        }
        if result.caught_up:
            self._episode = None
            log.info("rollup caught up, monitors read it from now on", extra={"fields": fields})
        elif episode["logged"] == 0.0 or now - episode["logged"] >= PROGRESS_LOG_SECONDS:
            episode["logged"] = now
            log.info(
                "rollup catching up in batches, monitors read the source table meanwhile",
                extra={"fields": fields},
            )


class CatchUp:
    """A thread that folds the sources that are behind, batch after batch, until they catch up.

    The refresher's own fold before its monitors stays one bounded step, so a long catch-up
    never delays a refresh or a scrape; failures back off and retry, like a monitor's.
    """

    SLICE_SECONDS = 5.0  # folding of one source before the others get their turn

    def __init__(
        self,
        folders: Iterable[SourceFolder],
        engine: Engine,
        on_batch: OnBatch,
        on_error: Callable[[str, BaseException, float], None],
        initial_backoff: timedelta,
        max_backoff: timedelta,
    ):
        self.folders = list(folders)
        self.engine = engine
        self.on_batch = on_batch
        self.on_error = on_error
        self.initial_backoff = initial_backoff.total_seconds()
        self.max_backoff = max_backoff.total_seconds()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        if self.folders:
            self._thread = threading.Thread(target=self._run, name="rollup-catch-up", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            behind = [f for f in self.folders if f.caught_up is False]
            if not behind:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            for folder in behind:
                if self._stop.is_set():
                    return
                try:
                    folder.fold(self.engine, self.SLICE_SECONDS, self.on_batch)
                    failures = 0
                except Exception as error:  # the database may be down: back off, keep the thread
                    failures += 1
                    delay = min(self.max_backoff, self.initial_backoff * 2 ** (failures - 1))
                    self.on_error(folder.source.name, error, delay)
                    self._stop.wait(delay)
