"""Snapshots and health states built in Python, no database: every family gets samples, so a
test of the exposition sees each family's labels, types and values (NaN included)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from confusion_exporter.exposition import HealthState
from confusion_exporter.matrices import SliceKey, WindowCounts
from confusion_exporter.snapshot import (
    MonitorResult,
    SequentialResult,
    SequentialSlice,
    SliceResult,
    Snapshot,
    WindowResult,
)
from confusion_exporter.stats import sequential as seq
from confusion_exporter.stats.calibration import ConfidenceCounts, summarize
from confusion_exporter.stats.classification import classification_metrics
from confusion_exporter.stats.shift import ShiftParameters, shift_report
from confusion_exporter.stats.thresholds import ThresholdMatrix
from confusion_exporter.windows import CURRENT, REFERENCE, Window

AT = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
CLASSES = ("legit", "fraud")
MATRICES = {REFERENCE: np.array([[900, 30], [40, 130]]), CURRENT: np.array([[850, 80], [70, 100]])}


def _window(name: str, hours_back: int) -> Window:
    end = AT - timedelta(hours=hours_back)
    return Window(name, end - timedelta(hours=24), end)


def _window_result(window: Window, matrix: np.ndarray) -> WindowResult:
    counts = WindowCounts(
        window=window,
        classes=CLASSES,
        matrix=matrix.astype(np.int64),
        unlabeled=np.array([12, 3], np.int64),
        rejected={"unknown_class": 2, "future_timestamp": 1},
        folded=0,
        label_delay_sum_seconds=float(matrix.sum()) * 90.0,
    )
    confidence = ConfidenceCounts(
        bins=2,
        n=np.array([[60, 50], [300, 690]], np.int64),
        score_sum=np.array([[20.0, 40.0], [120.0, 600.0]]),
        high=np.array([25, 500], np.int64),
        high_threshold=0.9,
        invalid=1,
    )
    thresholds = (ThresholdMatrix(0.5, CLASSES, np.array([[880, 50], [60, 110]], np.int64)),)
    return WindowResult(
        counts=counts,
        metrics=classification_metrics(matrix),
        cost=0.13,
        confidence=summarize(confidence),
        thresholds=thresholds,
    )


def _sequential() -> SequentialResult:
    cell = seq.CellReport(
        kind=seq.CONFUSION,
        true_class="fraud",
        predicted_class="legit",
        description="fraud predicted as legit",
        reference_rate=0.235,
        current_rate=0.41,
        relative_change=0.74,
        relative_change_low=0.31,
        relative_change_high=1.2,
        evidence=14.2,
        threshold=11.5,
        state=seq.SHIFT,
        current_trials=170,
        reference_trials=1700,
    )
    piece = SequentialSlice("fraud-gb", "__all__", seq.SHIFT, 11.5, CLASSES, (cell,))
    return SequentialResult(origin=AT - timedelta(days=30), period_end=AT, caught_up=True, slices=(piece,))


def snapshot() -> Snapshot:
    """One monitor with every optional part present: shift tests, scores, thresholds, sequential."""
    windows = (_window(CURRENT, 0), _window(REFERENCE, 24 * 7))
    results = {w.name: _window_result(w, MATRICES[w.name]) for w in windows}
    shift = shift_report(
        MATRICES[REFERENCE],
        MATRICES[CURRENT],
        np.array([12, 3]),
        np.array([12, 3]),
        CLASSES,
        ShiftParameters(monte_carlo_samples=200, top_cells=2),
    )
    piece = SliceResult(
        key=SliceKey("fraud-gb", "v2", "__all__"),
        windows=results,
        shift=shift,
        cost_difference=0.05,
        cost_increase=0.6,
        cost_increase_p_value=0.001,
        cost_increase_lower_bound=0.2,
    )
    monitor = MonitorResult(
        name="shop:fraud-gb",
        source="shop",
        model="fraud-gb",
        team="risk",
        reference="trailing",
        recall_objectives={"fraud": 0.8},
        thresholds={"alpha": 0.01, "min_effect": 0.05, "min_samples": 200, "max_cost_increase": 0.15},
        evaluated_at=AT,
        windows=windows,
        slices=(piece,),
        sequential=_sequential(),
    )
    return Snapshot(AT, {monitor.name: monitor})


def health() -> HealthState:
    """A health state with one monitor and one rollup source, every counter nonzero."""
    state = HealthState(monitors=["shop:fraud-gb"])
    state.refresh_duration_seconds = 0.25
    state.database_up = 1
    state.refreshes["shop:fraud-gb"] = 7
    state.failures["shop:fraud-gb"] = 1
    state.last_success["shop:fraud-gb"] = AT.timestamp()
    state.folds["shop"] = {
        "folds": 5,
        "predictions": 1000,
        "labels": 900,
        "pending": 2,
        "duration": 0.04,
        "label_rows": 950,
        "batch_rows": 50000,
        "caught_up": 1,
        "given_up": 0,
        "predictions_left": 10,
        "labels_left": 4,
    }
    return state
