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

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd
from sqlalchemy.engine import Connection

from .config import MonitorConfig, SourceConfig
from .matrices import NULL, OTHER, class_order
from .snapshot import SequentialResult, SequentialSlice
from .source.accepts import AcceptEvent, read_accepts
from .source.arrivals import fetch_arrivals, first_arrival_query, period_query
from .stats import sequential as seq

# Periods read per query: a day of 5-minute periods keeps each statement short.
PERIODS_PER_QUERY = 288
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
    period_seconds: int = field(init=False)

    def __post_init__(self) -> None:
        self.period_seconds = seq.SequentialParameters().period_minutes * 60

    @property
    def settings(self):  # type: ignore[no-untyped-def]
        return self.monitor.sequential

    def last_closed_period(self, now: datetime) -> int:
        """Periods below this number have ended ``settle`` before ``now``."""
        return math.floor((now - self.settings.settle).timestamp() / self.period_seconds)

    def _find_origin(self, connection: Connection) -> datetime | None:
        if self.settings.origin is not None:
            return self.settings.origin.astimezone(UTC)
        first = connection.execute(first_arrival_query(self.source, self.monitor)).scalar()
        if first is None:
            return None
        return utc_day(first)

    def advance(
        self, connection: Connection, now: datetime, budget: timedelta | None = None
    ) -> SequentialResult:
        """Read the periods closed by ``now`` (within ``budget`` of wall time, if given)."""
        if self.origin is None:
            self.origin = self._find_origin(connection)
            if self.origin is None:
                return SequentialResult(None, None, caught_up=True)
            self.next_period = math.ceil(self.origin.timestamp() / self.period_seconds)
        assert self.next_period is not None
        target = self.last_closed_period(now)
        started = time.monotonic()
        while self.next_period < target:
            end = min(target, self.next_period + PERIODS_PER_QUERY)
            saved = dict(self.states)  # the states are immutable: a shallow copy restores them
            try:
                self._read(connection, self.next_period, end)
            except BaseException:
                self.states = saved  # a failed read leaves the tracker where it was
                raise
            self.next_period = end
            if budget is not None and time.monotonic() - started > budget.total_seconds():
                break
        caught_up = self.next_period >= target
        period_end = _utc(self.next_period * self.period_seconds)
        if not caught_up:
            return SequentialResult(self.origin, period_end, caught_up=False)
        return SequentialResult(self.origin, period_end, caught_up=True, slices=self.slices())

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
        frame = fetch_arrivals(connection, query)
        for column in ("model", "segment", "predicted", "actual"):
            frame[column] = frame[column].astype(object).where(frame[column].notna(), NULL)
        events = read_accepts(connection, self.monitor.monitor_name, start_at, end_at)
        by_period = {int(p): group for p, group in frame.groupby("period", sort=True)}
        events_by_period: dict[int, list[AcceptEvent]] = {}
        for event in events:
            events_by_period.setdefault(int(event.accepted_at.timestamp()) // self.period_seconds, []).append(
                event
            )
        for period in range(first, end):
            rows = by_period.get(period)
            if rows is not None:
                self._admit(rows)
            self._update(period, rows)
            for event in events_by_period.get(period, ()):
                self._accept(event)

    def _admit(self, rows: pd.DataFrame) -> None:
        """New slices get a detector; new classes extend theirs (in a fixed order)."""
        added = False
        for (model, segment), group in rows.groupby(["model", "segment"], sort=True):
            key = (str(model), str(segment))
            state = self.states.get(key)
            known = state.classes if state is not None else ()
            names = set(group["predicted"]) | set(group["actual"])
            wanted = _watched_classes(known, names, self.monitor)
            if state is None:
                self.states[key] = seq.initial_state(wanted, self.settings.parameters())
                added = True
            elif wanted != known:
                self.states[key] = seq.extend_classes(state, wanted)
        if added:
            segments = len(self.states)
            self.states = {k: seq.with_segments(s, segments) for k, s in self.states.items()}

    def _update(self, period: int, rows: pd.DataFrame | None) -> None:
        hour = period * self.period_seconds // 3600
        matrices: dict[SliceId, np.ndarray] = {}
        if rows is not None:
            for (model, segment), group in rows.groupby(["model", "segment"], sort=False):
                key = (str(model), str(segment))
                matrices[key] = _matrix(self.states[key].classes, group)
        for key, state in self.states.items():
            k = len(state.classes)
            counts = matrices.get(key)
            self.states[key] = seq.update(
                state, counts if counts is not None else np.zeros((k, k), np.int64), hour
            )

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


def _matrix(classes: tuple[str, ...], rows: pd.DataFrame) -> np.ndarray:
    """The period's K x K counts (rows: true class) on the detector's classes; a class the
    detector does not watch counts as ``__other__`` if it has one, else not at all (a
    configured class list: ``unknown_class``)."""
    index = {c: i for i, c in enumerate(classes)}
    other = index.get(OTHER, -1)
    k = len(classes)
    true = np.array([index.get(a, other) for a in rows["actual"]], np.int64)
    predicted = np.array([index.get(p, other) for p in rows["predicted"]], np.int64)
    keep = (true >= 0) & (predicted >= 0)
    counts = np.zeros((k, k), np.int64)
    np.add.at(counts, (true[keep], predicted[keep]), rows["n"].to_numpy(np.int64)[keep])
    return counts
