"""Snapshot and health state -> Prometheus metric families -> rendered exposition bytes.

The only module that builds metric families. Rendering happens once per refresh, never
per scrape: ``generate_latest()`` of tens of thousands of samples costs ~100 ms, while
serving pre-rendered bytes costs microseconds.
"""

from __future__ import annotations

import platform
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from . import __version__
from .domain import REJECT_REASONS
from .matrices import WindowCounts
from .snapshot import MonitorResult, SequentialResult, SliceResult, Snapshot, WindowResult
from .stats import sequential as seq
from .stats.classification import ClassificationMetrics
from .stats.shift import STATES, ShiftReport
from .windows import CURRENT, REFERENCE

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
SLICE_LABELS = ["monitor", "model", "version", "segment"]
CACHED = " Computed by the last successful refresh, not at scrape time."


def _slice_values(monitor: MonitorResult, result: SliceResult) -> list[str]:
    return [monitor.name, result.key.model, result.key.version, result.key.segment]


class SnapshotCollector(Collector):
    """Turn a snapshot into metric families; no I/O, so registering it is harmless.

    # HELP confusion_matrix_predictions Labeled predictions per confusion-matrix cell ...
    # TYPE confusion_matrix_predictions gauge
    confusion_matrix_predictions{monitor="shop:digits-rf",model="digits-rf",version="v1",
        segment="__all__",window="current",true_class="8",predicted_class="1",correct="false"} 12.0
    """

    def __init__(self, snapshot: Snapshot):
        self._snapshot = snapshot

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        g = _Families()
        for monitor in self._snapshot.monitors.values():
            g.monitor_info.add_metric(
                [monitor.name, monitor.source, monitor.model, monitor.team, monitor.reference], 1
            )
            for parameter, family in g.thresholds.items():
                family.add_metric([monitor.name], monitor.thresholds[parameter])
            for cls, objective in monitor.recall_objectives.items():
                g.recall_objective.add_metric([monitor.name, cls], objective)
            g.monitor_slices.add_metric([monitor.name], len(monitor.slices))
            g.evaluated.add_metric([monitor.name], monitor.evaluated_at.timestamp())
            for span in monitor.windows:
                g.window_start.add_metric([monitor.name, span.name], span.start.timestamp())
                g.window_end.add_metric([monitor.name, span.name], span.end.timestamp())
            for result in monitor.slices:
                base = _slice_values(monitor, result)
                for name, window in result.windows.items():
                    g.add_window([*base, name], window.counts, window.metrics)
                    g.add_window_extras([*base, name], window)
                g.cost_difference.add_metric(base, result.cost_difference)
                g.cost_increase.add_metric(base, result.cost_increase)
                g.cost_increase_lower_bound.add_metric(base, result.cost_increase_lower_bound)
                if result.shift is not None:
                    g.add_shift(base, result.shift)
            if monitor.sequential is not None:
                g.add_sequential(monitor.name, monitor.sequential)
        yield from g.all()


class _Families:
    """The snapshot's metric families, filled slice by slice."""

    def __init__(self) -> None:
        w = [*SLICE_LABELS, "window"]
        gauge = GaugeMetricFamily
        self.matrix = gauge(
            "confusion_matrix_predictions",
            "Labeled predictions per confusion-matrix cell (true_class predicted as "
            "predicted_class) in the window; every cell of the class set, zeros included." + CACHED,
            labels=[*w, "true_class", "predicted_class", "correct"],
        )
        self.precision = gauge(
            "confusion_class_precision",
            "Share of predictions of this class that were right (NaN when never predicted)." + CACHED,
            labels=[*w, "class"],
        )
        self.recall = gauge(
            "confusion_class_recall",
            "Share of this true class that was predicted as itself (NaN without support)." + CACHED,
            labels=[*w, "class"],
        )
        self.f1 = gauge(
            "confusion_class_f1_score",
            "Harmonic mean of precision and recall of this class (NaN when the class is absent)." + CACHED,
            labels=[*w, "class"],
        )
        self.support = gauge(
            "confusion_class_support",
            "Labeled predictions whose true class is this class." + CACHED,
            labels=[*w, "class"],
        )
        self.accuracy = gauge(
            "confusion_accuracy", "Share of labeled predictions that were right." + CACHED, labels=w
        )
        self.macro_f1 = gauge(
            "confusion_macro_f1",
            "Unweighted mean F1 over the classes seen as truth or prediction." + CACHED,
            labels=w,
        )
        self.balanced_accuracy = gauge(
            "confusion_balanced_accuracy",
            "Unweighted mean recall over the classes seen as truth." + CACHED,
            labels=w,
        )
        self.labeled = gauge(
            "confusion_labeled_predictions",
            "Predictions in the window whose true class has arrived." + CACHED,
            labels=w,
        )
        self.unlabeled = gauge(
            "confusion_unlabeled_predictions",
            "Predictions in the window whose true class has not arrived yet." + CACHED,
            labels=w,
        )
        self.coverage = gauge(
            "confusion_label_coverage_ratio",
            "Labeled predictions over all valid predictions in the window (0..1)." + CACHED,
            labels=w,
        )
        self.rejected = gauge(
            "confusion_rejected_rows",
            "Rows in the window left out of the matrix, by reason (NULL or empty class, "
            "timestamp in the future, class outside the configured set, ...)." + CACHED,
            labels=[*w, "reason"],
        )
        self.folded = gauge(
            "confusion_folded_predictions",
            "Predictions whose true or predicted class was folded into __other__ because the "
            "slice has more classes than max_classes." + CACHED,
            labels=w,
        )
        self.window_start = gauge(
            "confusion_window_start_timestamp_seconds",
            "Start of the window's span of prediction time (inclusive; a seasonal reference: its"
            " latest span, repeated count times, period apart, before it)." + CACHED,
            labels=["monitor", "window"],
        )
        self.window_end = gauge(
            "confusion_window_end_timestamp_seconds",
            "End of the window's span of prediction time (exclusive)." + CACHED,
            labels=["monitor", "window"],
        )
        self.monitor_info = gauge(
            "confusion_monitor_info",
            "Configuration of the monitor: its source, model pattern, owning team and reference kind. "
            "Join on monitor to route alerts by team.",
            labels=["monitor", "source", "model_pattern", "team", "reference"],
        )
        self.recall_objective = gauge(
            "confusion_class_recall_objective",
            "Configured recall objective of the class (recall_objective / recall_objectives; 0: none).",
            labels=["monitor", "class"],
        )
        self.thresholds = {
            "alpha": gauge(
                "confusion_shift_alpha",
                "Significance level the monitor's shift tests use.",
                labels=["monitor"],
            ),
            "min_effect": gauge(
                "confusion_shift_min_effect",
                "Smallest effect size the monitor counts as a shift.",
                labels=["monitor"],
            ),
            "min_samples": gauge(
                "confusion_shift_min_samples",
                "Labeled predictions each window needs before the monitor's tests decide.",
                labels=["monitor"],
            ),
            "max_cost_increase": gauge(
                "confusion_error_cost_max_increase_ratio",
                "Configured relative increase of the mean error cost that alerts (max_cost_increase).",
                labels=["monitor"],
            ),
        }
        self.cost = gauge(
            "confusion_error_cost_per_prediction",
            "Mean cost of errors per labeled prediction, from the monitor's cost_matrix (default: 1 per "
            "error, so the error rate)." + CACHED,
            labels=w,
        )
        self.cost_difference = gauge(
            "confusion_error_cost_difference",
            "Mean error cost per labeled prediction, current minus reference." + CACHED,
            labels=SLICE_LABELS,
        )
        self.cost_increase = gauge(
            "confusion_error_cost_increase_ratio",
            "Relative change of the mean error cost, (current - reference) / reference (NaN: no reference "
            "cost)." + CACHED,
            labels=SLICE_LABELS,
        )
        self.cost_increase_lower_bound = gauge(
            "confusion_error_cost_increase_lower_bound_ratio",
            "One-sided 1 - alpha lower confidence bound of the relative change of the mean error cost "
            "(Welch); above confusion_error_cost_max_increase_ratio only when the rise is beyond noise "
            "(NaN: fewer than 2 labeled predictions in a window)." + CACHED,
            labels=SLICE_LABELS,
        )
        self.scored = gauge(
            "confusion_scored_predictions",
            "Labeled predictions with a score in [0, 1], the base of the confidence metrics." + CACHED,
            labels=w,
        )
        self.invalid_scores = gauge(
            "confusion_invalid_scores",
            "Labeled predictions whose score is outside [0, 1] or NaN, left out of confidence metrics."
            + CACHED,
            labels=w,
        )
        self.calibration_error = gauge(
            "confusion_calibration_error",
            "Expected calibration error: sum over score bins of (bin share) x |accuracy - mean score|."
            + CACHED,
            labels=w,
        )
        self.mean_confidence = gauge(
            "confusion_mean_confidence",
            "Mean score of the predicted class, over correct or incorrect labeled predictions." + CACHED,
            labels=[*w, "outcome"],
        )
        self.high_confidence_errors = gauge(
            "confusion_high_confidence_errors",
            "Incorrect predictions made with a score at or above high_confidence." + CACHED,
            labels=w,
        )
        self.high_confidence_error_ratio = gauge(
            "confusion_high_confidence_error_ratio",
            "Share of incorrect predictions made with a score at or above high_confidence." + CACHED,
            labels=w,
        )
        self.threshold_matrix = gauge(
            "confusion_threshold_matrix_predictions",
            "Labeled predictions per cell of a two-class matrix had the positive class been predicted at "
            "probability >= threshold." + CACHED,
            labels=[*w, "threshold", "true_class", "predicted_class"],
        )
        self.label_delay = gauge(
            "confusion_mean_label_delay_seconds",
            "Mean time from prediction to label over the window's labeled predictions "
            "(NaN without a labeled_at column or labels)." + CACHED,
            labels=w,
        )
        self.monitor_slices = gauge(
            "confusion_monitor_slices",
            "Model/version/segment slices the monitor found in its windows (0: no data)." + CACHED,
            labels=["monitor"],
        )
        t = [*SLICE_LABELS, "test"]
        self.shift_statistic = gauge(
            "confusion_shift_statistic",
            "Pearson chi-square statistic of the test between reference and current window "
            "(error_pattern: summed over true classes)." + CACHED,
            labels=t,
        )
        self.shift_dof = gauge(
            "confusion_shift_degrees_of_freedom", "Degrees of freedom of the test." + CACHED, labels=t
        )
        self.shift_p = gauge(
            "confusion_shift_p_value",
            "p-value of the test (Monte Carlo where expected counts are below 5; see "
            "confusion_shift_monte_carlo)." + CACHED,
            labels=t,
        )
        self.shift_log10_p = gauge(
            "confusion_shift_log10_p_value",
            "log10 of the p-value; stays finite far in the tail where the p-value itself would underflow."
            + CACHED,
            labels=t,
        )
        self.shift_effect = gauge(
            "confusion_shift_effect_size",
            "Bias-corrected Cramer's V of the test, 0..1, which does not grow with sample size "
            "(error_pattern: the largest over true classes)." + CACHED,
            labels=t,
        )
        self.shift_samples = gauge(
            "confusion_shift_samples",
            "Predictions the test compared in each window (prediction_prior includes unlabeled ones)."
            + CACHED,
            labels=[*t, "window"],
        )
        self.shift_monte_carlo = gauge(
            "confusion_shift_monte_carlo",
            "1 if the p-value is a Monte Carlo conditional estimate (sparse table), 0 if asymptotic."
            + CACHED,
            labels=t,
        )
        self.shift_state = gauge(
            "confusion_shift_state",
            "Decision of the test, one series per state, 1 for the current one: shift (p < alpha and "
            "effect >= min_effect with enough samples), stable, insufficient_data." + CACHED,
            labels=[*t, "state"],
        )
        self.row_statistic = gauge(
            "confusion_shift_row_statistic",
            "Chi-square statistic of the error-pattern test for this true class alone." + CACHED,
            labels=[*SLICE_LABELS, "true_class"],
        )
        self.row_p = gauge(
            "confusion_shift_row_p_value",
            "p-value of the error-pattern test for this true class alone (not corrected for "
            "multiple comparisons: it says where, the summed test says whether)." + CACHED,
            labels=[*SLICE_LABELS, "true_class"],
        )
        self.row_effect = gauge(
            "confusion_shift_row_effect_size",
            "Bias-corrected Cramer's V of this true class's predicted-class distribution, reference vs "
            "current." + CACHED,
            labels=[*SLICE_LABELS, "true_class"],
        )
        self.cell_residual = gauge(
            "confusion_shift_cell_residual",
            "Adjusted standardized residual of the cell within its true class, top cells by magnitude: "
            "positive means true_class is predicted as predicted_class more often than in the reference."
            + CACHED,
            labels=[*SLICE_LABELS, "true_class", "predicted_class"],
        )
        q = ["monitor", "model", "segment"]  # the sequential layer pools a model's versions
        cell = [*q, "kind", "true_class", "predicted_class"]
        self.seq_caught_up = gauge(
            "confusion_sequential_caught_up",
            "1 once the sequential layer has replayed its history up to now; 0 while it replays "
            "(it publishes no detector then)." + CACHED,
            labels=["monitor"],
        )
        self.seq_period_end = gauge(
            "confusion_sequential_period_end_timestamp_seconds",
            "End of the last period of label arrivals the sequential layer has read." + CACHED,
            labels=["monitor"],
        )
        self.seq_threshold = gauge(
            "confusion_sequential_threshold",
            "Evidence (nats) at which a cell pages: ln(periods per 30 days x cells x segments x "
            "alternatives / false_alarms_per_30_days)." + CACHED,
            labels=q,
        )
        self.seq_state = gauge(
            "confusion_sequential_state",
            "State of the slice's sequential layer, one series per state, 1 for the current one: shift "
            "(a cell's evidence reached the threshold; latched until accepted), accumulating (past half "
            "of it: the reference is frozen), stable, insufficient_data." + CACHED,
            labels=[*q, "state"],
        )
        self.seq_evidence = gauge(
            "confusion_sequential_evidence",
            "CUSUM statistic of the error rate (nats, the largest over its alternatives): evidence "
            "that the rate rose by at least the smallest change worth a page." + CACHED,
            labels=cell,
        )
        self.seq_shifted = gauge(
            "confusion_sequential_shifted",
            "1 while the cell's alarm is latched (until the new regime is accepted)." + CACHED,
            labels=cell,
        )
        self.seq_rate = gauge(
            "confusion_sequential_error_rate",
            "The error rate over the current run of evidence (the last period when there is none): "
            "the reference's and the observed." + CACHED,
            labels=[*cell, "window"],
        )
        self.seq_trials = gauge(
            "confusion_sequential_trials",
            "Labeled predictions behind each rate (the reference's effective size)." + CACHED,
            labels=[*cell, "window"],
        )
        self.seq_change = gauge(
            "confusion_sequential_relative_change_ratio",
            "Relative change of the error rate against its reference (0.15 is +15%), with its 95% "
            "interval (bound lower and upper)." + CACHED,
            labels=[*cell, "bound"],
        )
        self.evaluated = gauge(
            "confusion_monitor_evaluation_timestamp_seconds",
            "The instant the monitor's windows were last computed for.",
            labels=["monitor"],
        )

    def add_window(self, values: list[str], counts: WindowCounts, metrics: ClassificationMetrics) -> None:
        classes = counts.classes
        for i, true_class in enumerate(classes):
            for j, predicted_class in enumerate(classes):
                self.matrix.add_metric(
                    [*values, true_class, predicted_class, "true" if i == j else "false"],
                    int(counts.matrix[i, j]),
                )
            per_class = [*values, true_class]
            self.precision.add_metric(per_class, float(metrics.precision[i]))
            self.recall.add_metric(per_class, float(metrics.recall[i]))
            self.f1.add_metric(per_class, float(metrics.f1[i]))
            self.support.add_metric(per_class, int(metrics.support[i]))
        self.accuracy.add_metric(values, metrics.accuracy)
        self.macro_f1.add_metric(values, metrics.macro_f1)
        self.balanced_accuracy.add_metric(values, metrics.balanced_accuracy)
        labeled, unlabeled = counts.labeled_total, counts.unlabeled_total
        self.labeled.add_metric(values, labeled)
        self.unlabeled.add_metric(values, unlabeled)
        total = labeled + unlabeled
        self.coverage.add_metric(values, labeled / total if total else float("nan"))
        for reason in REJECT_REASONS:
            self.rejected.add_metric([*values, reason], counts.rejected.get(reason, 0))
        self.folded.add_metric(values, counts.folded)
        self.label_delay.add_metric(values, counts.mean_label_delay_seconds)

    def add_window_extras(self, values: list[str], window: WindowResult) -> None:
        """Cost, confidence and decision-threshold figures of one slice in one window."""
        self.cost.add_metric(values, window.cost)
        confidence = window.confidence
        if confidence is not None:
            self.scored.add_metric(values, confidence.scored)
            self.invalid_scores.add_metric(values, confidence.invalid)
            self.calibration_error.add_metric(values, confidence.calibration_error)
            self.mean_confidence.add_metric([*values, "correct"], confidence.mean_confidence_correct)
            self.mean_confidence.add_metric([*values, "incorrect"], confidence.mean_confidence_incorrect)
            self.high_confidence_errors.add_metric(values, confidence.high_confidence_errors)
            self.high_confidence_error_ratio.add_metric(values, confidence.high_confidence_error_share)
        for at in window.thresholds:
            for i, true_class in enumerate(at.classes):
                for j, predicted_class in enumerate(at.classes):
                    self.threshold_matrix.add_metric(
                        [*values, format(at.threshold, "g"), true_class, predicted_class],
                        int(at.matrix[i, j]),
                    )

    def add_shift(self, values: list[str], report: ShiftReport) -> None:
        for name, test in report.tests.items():
            labels = [*values, name]
            self.shift_statistic.add_metric(labels, test.statistic)
            self.shift_dof.add_metric(labels, test.dof)
            self.shift_p.add_metric(labels, test.p_value)
            self.shift_log10_p.add_metric(labels, test.log10_p_value)
            self.shift_effect.add_metric(labels, test.effect_size)
            self.shift_samples.add_metric([*labels, REFERENCE], test.n_reference)
            self.shift_samples.add_metric([*labels, CURRENT], test.n_current)
            self.shift_monte_carlo.add_metric(labels, int(test.monte_carlo))
            for state in STATES:
                self.shift_state.add_metric([*labels, state], int(state == test.state))
        for row in report.rows:
            labels = [*values, row.true_class]
            self.row_statistic.add_metric(labels, row.statistic)
            self.row_p.add_metric(labels, row.p_value)
            self.row_effect.add_metric(labels, row.effect_size)
        for cell in report.cells:
            self.cell_residual.add_metric([*values, cell.true_class, cell.predicted_class], cell.residual)

    def add_sequential(self, monitor: str, result: SequentialResult) -> None:
        self.seq_caught_up.add_metric([monitor], int(result.caught_up))
        if result.period_end is not None:
            self.seq_period_end.add_metric([monitor], result.period_end.timestamp())
        for piece in result.slices:
            base = [monitor, piece.model, piece.segment]
            self.seq_threshold.add_metric(base, piece.threshold)
            for state in seq.STATES:
                self.seq_state.add_metric([*base, state], int(state == piece.state))
            for cell in piece.cells:
                labels = [*base, cell.kind, cell.true_class, cell.predicted_class]
                self.seq_evidence.add_metric(labels, cell.evidence)
                self.seq_shifted.add_metric(labels, int(cell.state == seq.SHIFT))
                self.seq_rate.add_metric([*labels, REFERENCE], cell.reference_rate)
                self.seq_rate.add_metric([*labels, CURRENT], cell.current_rate)
                self.seq_trials.add_metric([*labels, REFERENCE], cell.reference_trials)
                self.seq_trials.add_metric([*labels, CURRENT], cell.current_trials)
                self.seq_change.add_metric([*labels, "estimate"], cell.relative_change)
                self.seq_change.add_metric([*labels, "lower"], cell.relative_change_low)
                self.seq_change.add_metric([*labels, "upper"], cell.relative_change_high)

    def all(self) -> Iterator[Metric]:
        yield from (value for value in vars(self).values() if isinstance(value, Metric))
        yield from self.thresholds.values()


@dataclass
class HealthState:
    """The refresher's own figures; mutated under ``lock`` by the refresher only."""

    monitors: list[str]
    lock: threading.Lock = field(default_factory=threading.Lock)
    refresh_duration_seconds: float = float("nan")
    database_up: int = 0
    refreshes: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    last_success: dict[str, float] = field(default_factory=dict)
    last_error: dict[str, str] = field(default_factory=dict)
    folds: dict[str, dict[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.monitors:
            self.refreshes.setdefault(name, 0)
            self.failures.setdefault(name, 0)
            self.last_success.setdefault(name, 0.0)


class HealthCollector(Collector):
    """The exporter's own health, so a dead refresher or database shows up in metrics.

    # HELP confusion_exporter_refresh_failures_total Monitor refreshes that failed ...
    # TYPE confusion_exporter_refresh_failures_total counter
    confusion_exporter_refresh_failures_total{monitor="shop:digits-rf"} 3.0
    """

    def __init__(self, state: HealthState):
        self._state = state

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        state = self._state
        with state.lock:
            info = InfoMetricFamily(
                "confusion_exporter_build",
                "Version of confusion-exporter and of the Python running it.",
                value={"version": __version__, "python_version": platform.python_version()},
            )
            duration = GaugeMetricFamily(
                "confusion_exporter_refresh_duration_seconds",
                "Wall time of the last refresh (of all monitors in a one-off snapshot; when serving, of the "
                "monitor that finished last: monitors refresh side by side).",
                value=state.refresh_duration_seconds,
            )
            database_up = GaugeMetricFamily(
                "confusion_exporter_database_up",
                "1 if the last refresh reached the database, else 0.",
                value=state.database_up,
            )
            refreshes = CounterMetricFamily(
                "confusion_exporter_refreshes",
                "Monitor refreshes attempted.",
                labels=["monitor"],
            )
            failures = CounterMetricFamily(
                "confusion_exporter_refresh_failures",
                "Monitor refreshes that failed (database unreachable, query error or timeout).",
                labels=["monitor"],
            )
            last_success = GaugeMetricFamily(
                "confusion_exporter_last_refresh_success_timestamp_seconds",
                "When the monitor last refreshed successfully (0: never); "
                "time() minus this is the age of what /metrics shows.",
                labels=["monitor"],
            )
            for name in state.monitors:
                refreshes.add_metric([name], state.refreshes[name])
                failures.add_metric([name], state.failures[name])
                last_success.add_metric([name], state.last_success[name])
            rollup: list[CounterMetricFamily | GaugeMetricFamily] = [
                CounterMetricFamily(
                    "confusion_exporter_rollup_folds",
                    "Incremental folds of the source into its rollup.",
                    labels=["source"],
                ),
                CounterMetricFamily(
                    "confusion_exporter_rollup_predictions",
                    "New predictions folded into the rollup.",
                    labels=["source"],
                ),
                CounterMetricFamily(
                    "confusion_exporter_rollup_label_changes",
                    "Predictions whose counted label changed (first label, late label or correction).",
                    labels=["source"],
                ),
                GaugeMetricFamily(
                    "confusion_exporter_rollup_pending_ids",
                    "Ids below a watermark not visible yet (uncommitted or aborted writes), "
                    "re-checked each fold.",
                    labels=["source"],
                ),
                GaugeMetricFamily(
                    "confusion_exporter_rollup_fold_duration_seconds",
                    "Wall time of the source's last fold (one batch).",
                    labels=["source"],
                ),
            ]
            rollup += [
                CounterMetricFamily(
                    "confusion_exporter_rollup_labels",
                    "Label rows folded into the rollup (first labels, late labels, corrections).",
                    labels=["source"],
                ),
                GaugeMetricFamily(
                    "confusion_exporter_rollup_batch_rows",
                    "Ids per table the next fold batch reads at most (adapted to statement_timeout).",
                    labels=["source"],
                ),
                GaugeMetricFamily(
                    "confusion_exporter_rollup_caught_up",
                    "1 when the rollup has caught up and the source's monitors read it; 0 while it "
                    "folds a backlog in batches and they read the source table.",
                    labels=["source"],
                ),
                CounterMetricFamily(
                    "confusion_exporter_rollup_given_up_ids",
                    "Ids that never became visible (aborted writes, sequence jumps), given up once no "
                    "transaction could still hold them.",
                    labels=["source"],
                ),
            ]
            backlog = GaugeMetricFamily(
                "confusion_exporter_rollup_backlog_rows",
                "Rows left to fold after the last fold batch (ids above the watermark: a bound on rows).",
                labels=["source", "table"],
            )
            keys = (
                "folds",
                "predictions",
                "labels",
                "pending",
                "duration",
                "label_rows",
                "batch_rows",
                "caught_up",
                "given_up",
            )
            for source, stats in state.folds.items():
                for family, key in zip(rollup, keys, strict=True):
                    family.add_metric([source], stats.get(key, 0))
                backlog.add_metric([source, "predictions"], stats.get("predictions_left", 0))
                backlog.add_metric([source, "labels"], stats.get("labels_left", 0))
        yield from (info, duration, database_up, refreshes, failures, last_success, *rollup, backlog)


def render(*collectors: Collector) -> bytes:
    """Render collectors to the Prometheus text format (0.0.4)."""
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    return generate_latest(registry)


_PROCESS_REGISTRY = CollectorRegistry(auto_describe=False)
ProcessCollector(registry=_PROCESS_REGISTRY)
PlatformCollector(registry=_PROCESS_REGISTRY)


def render_process() -> bytes:
    """Render process_* and python_info: a few lines, cheap enough to do per scrape."""
    return generate_latest(_PROCESS_REGISTRY)


class _ClientErrorsCollector(Collector):
    def __init__(self, counts: Mapping[str, int]):
        self._counts = counts

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "confusion_exporter_http_client_errors",
            "Connections the endpoint ended because of the client, by reason: tls_handshake, "
            "disconnect (hung up before the response was sent), head_timeout, head_too_large, "
            "response_timeout, evicted (a slow head closed to make room). Counted at scrape time.",
            labels=["reason"],
        )
        for reason, count in self._counts.items():
            family.add_metric([reason], count)
        yield family


def render_client_errors(counts: Mapping[str, int]) -> bytes:
    """Render the endpoint's client error counters: a few lines, rendered per scrape."""
    return render(_ClientErrorsCollector(counts))
