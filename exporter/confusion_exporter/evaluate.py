"""Read one monitor's counts and compute its results: the step shared by every command."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.engine import Connection

from .config import Config, MonitorConfig
from .matrices import SliceKey, WindowCounts, align, build_slices
from .parameters import shift_parameters
from .references import (
    baseline_name,
    monitor_windows,
    ranks_across_versions,
    reference_of,
    reference_version,
)
from .sequential_tracker import SequentialTracker
from .snapshot import MonitorResult, SliceResult, WindowResult
from .source.baselines import read_capture_window
from .source.class_cap import ClassCap, capped_counts, fetch_capped
from .source.counts import count_query
from .source.rollup import unlabeled_without_delay, window_rows_query
from .source.scores import ScoreScope, WindowKey, fetch_confidence, fetch_threshold_counts
from .stats.calibration import ConfidenceCounts, summarize
from .stats.classification import classification_metrics
from .stats.cost import cost_increase_test, cost_matrix, mean_cost, relative_increase
from .stats.shift import ShiftParameters, ShiftReport, missing_reference_report, shift_report
from .stats.thresholds import ThresholdMatrix, threshold_matrices
from .windows import CURRENT, REFERENCE, Window

ScoreAggregates = tuple[dict[WindowKey, ConfidenceCounts], dict[WindowKey, tuple[ThresholdMatrix, ...]]]


@dataclass
class ScoreCache:
    """Score aggregates of each monitor, reused for up to ``max_age``.

    They cannot come from the rollup (it holds no scores), so each computation scans the
    windows' rows; calibration moves slowly, and recomputing it every few minutes instead of
    every refresh keeps a rollup source's refresh cost following the change.
    """

    max_age: timedelta
    _entries: dict[str, tuple[datetime, ScoreAggregates]] = field(default_factory=dict)

    def get(self, name: str, now: datetime, compute: Callable[[], ScoreAggregates]) -> ScoreAggregates:
        entry = self._entries.get(name)
        if entry is not None and timedelta(0) <= now - entry[0] < self.max_age:
            return entry[1]
        value = compute()
        self._entries[name] = (now, value)
        return value


def evaluate_monitor(
    connection: Connection,
    config: Config,
    monitor: MonitorConfig,
    now: datetime,
    use_rollup: bool = True,
    score_cache: ScoreCache | None = None,
    historical: bool = False,
    tracker: SequentialTracker | None = None,
    sequential_budget: timedelta | None = None,
    with_sequential: bool = True,
) -> MonitorResult:
    """Count ``monitor``'s windows as of ``now`` in the database and compute metrics and shift tests.

    ``use_rollup=False`` counts from the source table even where a rollup exists: one-off
    commands (gate, report) want the rows as they are now, not as of the last fold.
    ``historical`` evaluates a past instant as it was then (``snapshot --at``, ``backfill``):
    from the source table, with labels that arrived after ``now`` not counted yet.
    ``tracker`` carries the sequential layer from one evaluation to the next (the live
    exporter, ``backfill``); without one, the layer is replayed from its origin to ``now``.
    ``sequential_budget`` bounds the time one evaluation spends replaying it.
    """
    labels_as_of = now if historical else None
    use_rollup = use_rollup and not historical
    settings = config.exporter
    windows = monitor_windows(now, monitor, settings.bucket)
    source = config.source(monitor.source)
    bucket_seconds = int(settings.bucket.total_seconds())
    baseline = baseline_name(monitor.reference)
    baseline_window = None
    if baseline is not None:
        baseline_window = read_capture_window(connection, baseline, monitor.monitor_name)
    cap = class_cap(config, monitor, baseline_window)
    if source.rollup is not None and use_rollup:
        cells, cell_params = window_rows_query(source.name, monitor.model, windows, now, bucket_seconds)
        rows, baseline_rows = fetch_capped(connection, capped_counts(cells, cap), cell_params)
        rows = unlabeled_without_delay(rows)
    else:
        query = count_query(
            source, monitor, windows, now, settings.bucket, settings.future_tolerance, labels_as_of
        )
        rows, baseline_rows = fetch_capped(connection, capped_counts(query, cap))
    slices = build_slices(rows, windows, bucket_seconds, monitor.classes, cap.max_classes)
    if baseline_window is not None:
        baseline_rows["bucket"] = int(baseline_window.start.timestamp()) // bucket_seconds
        stored = build_slices(
            baseline_rows, (baseline_window,), bucket_seconds, monitor.classes, cap.max_classes
        )
        windows = (*windows, baseline_window)
        for key, counts in slices.items():
            if key in stored:
                # Both sides were ranked together in SQL: their union is within max_classes.
                counts[REFERENCE], counts[CURRENT] = align(stored[key][REFERENCE], counts[CURRENT])
    confidence: dict[WindowKey, ConfidenceCounts] = {}
    matrices_at: dict[WindowKey, tuple[ThresholdMatrix, ...]] = {}
    if source.columns.score is not None:
        scope = ScoreScope(
            source, monitor, windows, now, settings.bucket, labels_as_of, settings.future_tolerance
        )

        def compute() -> ScoreAggregates:
            at = _threshold_matrices(connection, scope) if monitor.decision_thresholds else {}
            return fetch_confidence(connection, scope), at

        confidence, matrices_at = (
            score_cache.get(monitor.monitor_name, now, compute) if score_cache is not None else compute()
        )
    params = shift_parameters(monitor)
    results = []
    for key, by_window in sorted(slices.items(), key=lambda kv: (kv[0].model, kv[0].version, kv[0].segment)):
        window_results = {}
        for name, window_counts in by_window.items():
            scores = confidence.get((key, name))
            window_results[name] = WindowResult(
                window_counts,
                classification_metrics(window_counts.matrix),
                cost=mean_cost(window_counts.matrix, cost_matrix(window_counts.classes, monitor.cost_matrix)),
                confidence=summarize(scores) if scores is not None else None,
                thresholds=matrices_at.get((key, name), ()),
            )
        compared = reference_of(reference_version(monitor.reference), key, by_window, slices)
        difference, increase = float("nan"), float("nan")
        cost_test = None
        if compared is not None:
            ref, cur = align(compared, by_window[CURRENT])
            costs = cost_matrix(cur.classes, monitor.cost_matrix)
            ref_cost, cur_cost = mean_cost(ref.matrix, costs), mean_cost(cur.matrix, costs)
            difference, increase = cur_cost - ref_cost, relative_increase(cur_cost, ref_cost)
            cost_test = cost_increase_test(
                ref.matrix, cur.matrix, costs, monitor.max_cost_increase, monitor.alpha
            )
        results.append(
            SliceResult(
                key=key,
                windows=window_results,
                shift=_shift(key, by_window, slices, monitor, params),
                cost_difference=difference,
                cost_increase=increase,
                cost_increase_p_value=cost_test.p_value if cost_test else float("nan"),
                cost_increase_lower_bound=cost_test.lower_bound if cost_test else float("nan"),
            )
        )
    classes = sorted({c for r in results for w in r.windows.values() for c in w.counts.classes})
    sequential = None
    if monitor.sequential.enabled and with_sequential:
        if tracker is None:
            tracker = SequentialTracker(monitor, source, settings.future_tolerance)
        sequential = tracker.advance(connection, now, sequential_budget)
    return MonitorResult(
        name=monitor.monitor_name,
        source=monitor.source,
        model=monitor.model,
        team=monitor.team,
        reference=monitor.reference.kind,
        recall_objectives={c: monitor.recall_objective_for(c) for c in classes},
        thresholds={
            "alpha": monitor.alpha,
            "min_effect": monitor.min_effect,
            "min_samples": monitor.min_samples,
            "max_cost_increase": monitor.max_cost_increase,
        },
        evaluated_at=now,
        windows=windows,
        slices=tuple(results),
        reference_version=reference_version(monitor.reference),
        sequential=sequential,
    )


def class_cap(config: Config, monitor: MonitorConfig, baseline: Window | None = None) -> ClassCap:
    """How ``monitor``'s classes are capped: ranked over every window it compares."""
    name = baseline_name(monitor.reference)
    return ClassCap(
        max_classes=monitor.max_classes or config.exporter.max_classes,
        classes=monitor.classes,
        across_versions=ranks_across_versions(monitor.reference),
        baseline=(name, monitor.monitor_name) if name is not None and baseline is not None else None,
    )


def _shift(
    key: SliceKey,
    by_window: Mapping[str, WindowCounts],
    slices: Mapping[SliceKey, Mapping[str, WindowCounts]],
    monitor: MonitorConfig,
    params: ShiftParameters,
) -> ShiftReport | None:
    """Compare the slice's current window with its reference, wherever that comes from."""
    version = reference_version(monitor.reference)
    if version is not None and key.version == version:
        return None  # the reference version is not compared with itself
    reference = reference_of(version, key, by_window, slices)
    if reference is None:
        return missing_reference_report()  # exported as insufficient_data, never as "fine"
    ref, cur = align(reference, by_window[CURRENT])
    return shift_report(ref.matrix, cur.matrix, ref.unlabeled, cur.unlabeled, cur.classes, params)


def _threshold_matrices(
    connection: Connection, scope: ScoreScope
) -> dict[WindowKey, tuple[ThresholdMatrix, ...]]:
    """The two-class matrices at each decision threshold, per (slice, window)."""
    monitor = scope.monitor
    assert monitor.classes is not None and monitor.positive_class is not None
    negative = next(c for c in monitor.classes if c != monitor.positive_class)
    return {
        key: threshold_matrices(negative, monitor.positive_class, scored, reaching)
        for key, (scored, reaching) in fetch_threshold_counts(connection, scope).items()
    }
