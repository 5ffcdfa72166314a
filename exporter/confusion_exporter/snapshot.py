"""Frozen results of one refresh: what the exporter knows, swapped in as a whole."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from . import exposition_formats as formats
from .matrices import SliceKey, WindowCounts
from .stats import sequential as seq
from .stats.calibration import ConfidenceSummary
from .stats.classification import ClassificationMetrics
from .stats.shift import ShiftReport
from .stats.thresholds import ThresholdMatrix
from .windows import Window


@dataclass(frozen=True)
class WindowResult:
    """The counts of one slice in one window and the metrics computed from them."""

    counts: WindowCounts
    metrics: ClassificationMetrics
    cost: float = float("nan")  # mean cost of errors per labeled prediction (cost_matrix)
    confidence: ConfidenceSummary | None = None  # where the source maps a score
    thresholds: tuple[ThresholdMatrix, ...] = ()  # two-class monitors with decision thresholds


@dataclass(frozen=True)
class SliceResult:
    """One model version in one segment, in the current window and its reference."""

    key: SliceKey
    windows: Mapping[str, WindowResult]
    shift: ShiftReport | None = None  # None where the slice has no reference to compare with
    cost_difference: float = float("nan")  # current minus reference mean cost
    cost_increase: float = float("nan")  # relative: difference / reference cost
    # One-sided, of "the increase is at most max_cost_increase" (stats.cost.cost_increase_test)
    cost_increase_p_value: float = float("nan")
    # The increase's lower confidence bound at 1 - alpha: above max_cost_increase beyond noise
    cost_increase_lower_bound: float = float("nan")


@dataclass(frozen=True)
class SequentialSlice:
    """One detector's reading, as metrics, the landing page and the reports show it."""

    model: str
    segment: str
    state: str
    threshold: float
    classes: tuple[str, ...]
    cells: tuple[seq.CellReport, ...]

    @property
    def top(self) -> seq.CellReport | None:
        return seq.top_cell(self.cells)

    @property
    def shifted(self) -> tuple[seq.CellReport, ...]:
        return tuple(c for c in self.cells if c.state == seq.SHIFT)


@dataclass(frozen=True)
class SequentialResult:
    """The layer of one monitor at an instant. ``caught_up`` False: still replaying history,
    ``slices`` empty (nothing is published halfway)."""

    origin: datetime | None
    period_end: datetime | None  # end of the last period read
    caught_up: bool
    slices: tuple[SequentialSlice, ...] = ()


@dataclass(frozen=True)
class MonitorResult:
    """Everything one monitor computed as of ``evaluated_at``."""

    name: str
    source: str
    model: str
    team: str
    reference: str
    recall_objectives: Mapping[str, float]
    thresholds: Mapping[str, float]  # alpha, min_effect, min_samples, max_cost_increase
    evaluated_at: datetime
    windows: tuple[Window, ...]
    slices: tuple[SliceResult, ...]
    reference_version: str | None = None  # the compared-with version of a version reference
    sequential: SequentialResult | None = None  # None: the layer is off for this monitor


@dataclass(frozen=True)
class Snapshot:
    """The latest result of every monitor that has succeeded at least once."""

    taken_at: datetime
    monitors: Mapping[str, MonitorResult]


@dataclass(frozen=True)
class Published:
    """What the web server serves; replaced as a whole, never mutated (but for the
    OpenMetrics forms, derived on the first scrape that asks for them and kept here).

    Built once per refresh: the text exposition joined, and compressed as gzip members
    (exposition_formats.py), so a scrape only picks bytes."""

    snapshot: Snapshot | None
    snapshot_bytes: bytes
    health_bytes: bytes
    metrics_bytes: bytes = field(init=False, repr=False)
    metrics_gzip: bytes = field(init=False, repr=False)
    _segments: formats.Segments = field(init=False, repr=False, compare=False)
    _compressed: formats.Compressed = field(init=False, repr=False, compare=False)
    _openmetrics: dict[bool, bytes] = field(default_factory=dict, init=False, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Joined once here, not on every scrape: the exposition can be megabytes.
        text = self.snapshot_bytes + self.health_bytes
        parts = formats.segments(text)
        compressed = formats.compress(text, parts)
        object.__setattr__(self, "metrics_bytes", text)
        object.__setattr__(self, "_segments", parts)
        object.__setattr__(self, "_compressed", compressed)
        object.__setattr__(self, "metrics_gzip", compressed.body)

    def openmetrics(self, gzipped: bool) -> bytes:
        """The exposition in OpenMetrics (without ``# EOF``: per-scrape lines follow), plain or
        as gzip members; derived on the first call for each and kept, one derivation at a time."""
        body = self._openmetrics.get(gzipped)
        if body is None:
            with self._lock:
                body = self._openmetrics.get(gzipped)
                if body is None:
                    text, parts = self.metrics_bytes, self._segments
                    body = (
                        formats.openmetrics_gzip(text, self._compressed)
                        if gzipped
                        else formats.openmetrics(text, parts)
                    )
                    self._openmetrics[gzipped] = body
        return body
