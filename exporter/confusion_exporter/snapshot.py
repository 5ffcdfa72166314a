"""Frozen results of one refresh: what the exporter knows, swapped in as a whole."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from .matrices import SliceKey, WindowCounts
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


@dataclass(frozen=True)
class Snapshot:
    """The latest result of every monitor that has succeeded at least once."""

    taken_at: datetime
    monitors: Mapping[str, MonitorResult]
