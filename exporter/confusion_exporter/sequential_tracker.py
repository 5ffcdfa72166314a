"""The sequential layer of one monitor over time: read label arrivals, advance the detectors.

One detector (stats/sequential.py) per (model, segment): a model's versions are pooled, since a
new version is exactly the change the layer exists to catch. The detectors advance one period
(5 minutes) of label arrivals at a time, from a fixed origin, in period order, with the accept
events dated in each period applied after it. Nothing else enters the state, so the state at an
instant T is a function of the data as it stood at T: a tracker built from nothing and advanced
to T (a restart, ``snapshot --at T``, ``backfill``) equals the live one that advanced to T a
refresh at a time. A period is read once ``settle`` has passed since its end.

The live tracker replays from the origin when it starts; it publishes nothing until it has
caught up (a state halfway through history could page on an alarm long since accepted), and
each refresh spends at most its budget on the replay.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import numpy as np
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from .config import MonitorConfig, SequentialConfig, SourceConfig
from .matrices import NULL, OTHER, class_order
from .parameters import sequential_parameters
from .snapshot import SequentialResult, SequentialSlice
from .source.accepts import AcceptEvent, read_accepts
from .source.arrivals import fetch_arrivals, first_arrival_query, period_query
from .source.class_cap import ClassCap
from .source.database import is_statement_timeout, timeout_hint
from .stats import sequential as seq

log = logging.getLogger("confusion_exporter.sequential")

# Periods read per query: a day of 5-minute periods keeps each statement short.
PERIODS_PER_QUERY = 288
BLOCK_SECONDS = 7 * 86400  # default origins move a week at a time
SliceId = tuple[str, str]  # (model, segment)


def utc_day(value: date | datetime) -> datetime:
    """The UTC day holding a column's value: a ``date`` column, a ``timestamp`` (read as UTC,
    the session's zone) or a ``timestamptz``."""
    if not isinstance(value, datetime):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.replace(hour=0, minute=0, second=0, microsecond=0)


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


@dataclass
class SequentialTracker:
    """Detectors of one monitor and how far they have read."""

    monitor: MonitorConfig
    source: SourceConfig
    future_tolerance: timedelta = timedelta(0)
    origin: datetime | None = None
    next_period: int | None = None  # the next period to read, numbered from the epoch
    states: dict[SliceId, seq.DetectorState] = field(default_factory=dict)
    first_day: datetime | None = None  # the day of the monitor's first prediction (cached)
    # A tracker replaying from the next origin (the origin moved with a new 7-day block); it
    # replaces this one once caught up, so a new block costs no gap in what is published.
    successor: SequentialTracker | None = None
    periods_per_query: int = PERIODS_PER_QUERY  # halved after a statement timeout
    last_slices: tuple[SequentialSlice, ...] = ()  # the last caught-up reading
    period_seconds: int = field(init=False)

    def __post_init__(self) -> None:
        self.period_seconds = seq.SequentialParameters().period_minutes * 60

    @property
    def settings(self) -> SequentialConfig:
        return self.monitor.sequential

    def last_closed_period(self, now: datetime) -> int:
        """Periods below this number have ended ``settle`` before ``now``."""
        return math.floor((now - self.settings.settle).timestamp() / self.period_seconds)

    def origin_for(self, connection: Connection, now: datetime) -> datetime | None:
        """Where a replay to ``now`` starts: the configured origin, else the later of the first
        prediction's day and the 7-day block holding ``now - max_history``. A function of the
        data and the instant only, so a replay and the live exporter agree."""
        if self.settings.origin is not None:
            return self.settings.origin.astimezone(UTC)  # type: ignore[no-any-return]
        if self.first_day is None:
            first = connection.execute(first_arrival_query(self.source, self.monitor)).scalar()
            if first is None:
                return None
            self.first_day = utc_day(first)
        earliest = (now - self.settings.max_history).timestamp()
        block = _utc(math.floor(earliest / BLOCK_SECONDS) * BLOCK_SECONDS)
        return max(self.first_day, block)

    def advance(
        self, connection: Connection, now: datetime, budget: timedelta | None = None
    ) -> SequentialResult:
        """Read the periods closed by ``now`` (within ``budget`` of wall time, if given).

        A failed read (a statement timeout on a long history, say) never fails the monitor's
        window results: it runs in a savepoint, is logged, halves the periods per query when
        the statement ran out of time, and the layer reports what it had (not caught up)."""
        try:
            with connection.begin_nested():
                result = self._advance(connection, now, budget)
        except SQLAlchemyError as error:
            if is_statement_timeout(error):
                self.periods_per_query = max(1, self.periods_per_query // 2)
            log.warning(
                "sequential layer read failed",
                extra={
                    "fields": {
                        "monitor": self.monitor.monitor_name,
                        # The driver's first line ("canceling statement due to statement
                        # timeout"), not the statement or its parameters.
                        "error": type(error).__name__
                        + ": "
                        + str(getattr(error, "orig", None) or "").split("\n", 1)[0]
                        + timeout_hint(error),
                        "periods_per_query": self.periods_per_query,
                    }
                },
            )
            period_end = None if self.next_period is None else _utc(self.next_period * self.period_seconds)
            # The last caught-up reading stays published (caught_up 0 says it is not fresh): a
            # page must not resolve because one read failed.
            return SequentialResult(self.origin, period_end, caught_up=False, slices=self.last_slices)
        if result.caught_up:
            self.last_slices = result.slices
        return result

    def _advance(self, connection: Connection, now: datetime, budget: timedelta | None) -> SequentialResult:
        wanted = self.origin_for(connection, now)
        if wanted is None:
            return SequentialResult(None, None, caught_up=True)
        if self.origin is None:
            self._start(wanted)
        elif wanted != self.origin:
            # A new block: replay from the new origin beside this tracker, then take its place.
            if self.successor is None or self.successor.origin != wanted:
                self.successor = SequentialTracker(self.monitor, self.source, self.future_tolerance)
                self.successor.periods_per_query = self.periods_per_query
                self.successor.first_day = self.first_day
                self.successor._start(wanted)
            started = time.monotonic()
            self.successor._read_until(connection, self.last_closed_period(now), budget)
            if (
                self.successor.next_period is not None
                and self.successor.next_period >= self.last_closed_period(now)
            ):
                self.origin, self.next_period = self.successor.origin, self.successor.next_period
                self.states, self.successor = self.successor.states, None
            elif budget is not None:
                budget = max(timedelta(0), budget - timedelta(seconds=time.monotonic() - started))
        target = self.last_closed_period(now)
        self._read_until(connection, target, budget)
        assert self.next_period is not None
        caught_up = self.next_period >= target
        period_end = _utc(self.next_period * self.period_seconds)
        if not caught_up:
            return SequentialResult(self.origin, period_end, caught_up=False)
        return SequentialResult(self.origin, period_end, caught_up=True, slices=self.slices())

    def _start(self, origin: datetime) -> None:
        self.origin = origin
        self.next_period = math.ceil(origin.timestamp() / self.period_seconds)
        self.states = {}

    def _read_until(self, connection: Connection, target: int, budget: timedelta | None) -> None:
        assert self.next_period is not None
        started = time.monotonic()
        while self.next_period < target:
            end = min(target, self.next_period + self.periods_per_query)
            saved = dict(self.states)  # the states are immutable: a shallow copy restores them
            try:
                self._read(connection, self.next_period, end)
            except BaseException:
                self.states = saved  # a failed read leaves the tracker where it was
                raise
            self.next_period = end
            if budget is not None and time.monotonic() - started > budget.total_seconds():
                break

    def _read(self, connection: Connection, first: int, end: int) -> None:
        start_at, end_at = _utc(first * self.period_seconds), _utc(end * self.period_seconds)
        query = period_query(
            self.source,
            self.monitor,
            start_at,
            end_at,
            timedelta(seconds=self.period_seconds),
            self.future_tolerance,
        )
        cap = ClassCap(max_classes=self.settings.max_classes, classes=self.monitor.classes)
        frame = fetch_arrivals(connection, query, cap)
        events = read_accepts(connection, self.monitor.monitor_name, start_at, end_at)
        # Plain tuples per period and slice: a period holds a few cells, and pandas' groupby
        # per period cost 10 ms where this costs microseconds.
        by_period: dict[int, dict[SliceId, list[tuple[str, str, int]]]] = {}
        for period, model, segment, predicted, actual, n in frame.itertuples(index=False, name=None):
            key = (_name(model), _name(segment))
            by_period.setdefault(int(period), {}).setdefault(key, []).append(
                (_name(predicted), _name(actual), int(n))
            )
        events_by_period: dict[int, list[AcceptEvent]] = {}
        for event in events:
            when = int(event.accepted_at.timestamp()) // self.period_seconds
            events_by_period.setdefault(when, []).append(event)
        for period in range(first, end):
            cells = by_period.get(period, {})
            if cells:
                self._admit(cells)
            self._update(period, cells)
            for event in events_by_period.get(period, ()):
                self._accept(event)

    def _admit(self, cells: dict[SliceId, list[tuple[str, str, int]]]) -> None:
        """New slices get a detector; new classes extend theirs (in a fixed order)."""
        added = False
        for key in sorted(cells):
            state = self.states.get(key)
            known = state.classes if state is not None else ()
            names = {c for predicted, actual, _ in cells[key] for c in (predicted, actual)}
            wanted = _watched_classes(known, names, self.monitor)
            if state is None:
                self.states[key] = seq.initial_state(wanted, sequential_parameters(self.settings))
                added = True
            elif wanted != known:
                self.states[key] = seq.extend_classes(state, wanted)
        if added:
            segments = len(self.states)
            self.states = {k: seq.with_segments(s, segments) for k, s in self.states.items()}

    def _update(self, period: int, cells: dict[SliceId, list[tuple[str, str, int]]]) -> None:
        hour = period * self.period_seconds // 3600
        for key, state in self.states.items():
            self.states[key] = seq.update(state, _matrix(state.classes, cells.get(key, ())), hour)

    def _accept(self, event: AcceptEvent) -> None:
        for key, state in self.states.items():
            if event.covers(*key):
                self.states[key] = seq.accept(state)

    def slices(self) -> tuple[SequentialSlice, ...]:
        out = []
        for (model, segment), state in sorted(self.states.items()):
            out.append(
                SequentialSlice(
                    model=model,
                    segment=segment,
                    state=seq.monitor_state(state),
                    threshold=state.threshold,
                    classes=state.classes,
                    cells=seq.report(state),
                )
            )
        return tuple(out)


def _watched_classes(known: tuple[str, ...], names: Iterable[str], monitor: MonitorConfig) -> tuple[str, ...]:
    """``known`` extended by the classes of ``names`` the detector watches: the configured
    classes (in their order), else new classes in natural order as they first appear; beyond
    ``sequential.max_classes``, the rest share ``__other__``."""
    cap = monitor.sequential.max_classes
    configured = monitor.classes
    if configured is not None:
        listed = tuple(configured) if len(configured) <= cap else (*configured[: cap - 1], OTHER)
        return known if known else listed
    out = list(known)
    # Appended only (a detector's cells keep their places); one slot stays for __other__.
    for name in class_order([n for n in set(names) if n not in known and n != OTHER]):
        if len(out) < cap - 1:
            out.append(name)
        elif OTHER not in out:
            out.append(OTHER)
    return tuple(out)


def _name(value: object) -> str:
    return NULL if value is None else str(value)


def _matrix(classes: tuple[str, ...], cells: Iterable[tuple[str, str, int]]) -> np.ndarray:
    """The period's K x K counts (rows: true class) on the detector's classes; a class the
    detector does not watch counts as ``__other__`` if it has one, else not at all (a
    configured class list: ``unknown_class``)."""
    index = {c: i for i, c in enumerate(classes)}
    other = index.get(OTHER, -1)
    counts = np.zeros((len(classes), len(classes)), np.int64)
    for predicted, actual, n in cells:
        i, j = index.get(actual, other), index.get(predicted, other)
        if i >= 0 and j >= 0:
            counts[i, j] += n
    return counts
