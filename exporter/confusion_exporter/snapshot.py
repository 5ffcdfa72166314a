"""Frozen results of one refresh: what the exporter knows, swapped in as a whole."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

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
    """What the web server serves; replaced as a whole, never mutated."""

    snapshot: Snapshot | None
    snapshot_bytes: bytes
    health_bytes: bytes
    metrics_bytes: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Joined once here, not on every scrape: the exposition can be megabytes.
        object.__setattr__(self, "metrics_bytes", self.snapshot_bytes + self.health_bytes)
