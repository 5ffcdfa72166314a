"""Every metric family the exporter exports, declared once as data, grouped by concern.

exposition.py builds its families from these entries and nothing else, so a name, a help text
or a label list exists in one place; its collectors' ``describe()`` returns them (empty), so a
registry refuses a second collector of the same names; and tests/test_metric_catalog.py checks
that every ``confusion_*`` name the alert rules and dashboards read is one of them, and that
the README documents each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric

Kind = Literal["gauge", "counter", "info"]

# The families of a snapshot hold what the last successful refresh computed, and say so.
CACHED = " Computed by the last successful refresh, not at scrape time."
SLICE = ("monitor", "model", "version", "segment")
WINDOW = (*SLICE, "window")
TEST = (*SLICE, "test")
DETECTOR = ("monitor", "model", "segment")  # the sequential layer pools a model's versions
CELL = (*DETECTOR, "kind", "true_class", "predicted_class")


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: each entry is one family
class Family:
    """One metric family: its name as prometheus_client spells it (a counter without
    ``_total``, an info without ``_info``), its type, help text and label names."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()

    def new(self) -> Metric:
        """An empty family, ready for ``add_metric(label_values, value)``."""
        family = {"gauge": GaugeMetricFamily, "counter": CounterMetricFamily, "info": InfoMetricFamily}
        return family[self.kind](self.name, self.help, labels=list(self.labels))


def _gauge(name: str, help: str, labels: tuple[str, ...] = ()) -> Family:
    return Family(name, "gauge", help, labels)


def _counter(name: str, help: str, labels: tuple[str, ...] = ()) -> Family:
    return Family(name, "counter", help, labels)


# --- Matrix and per-class metrics: one series per slice and window (and class) -------------

MATRIX_PREDICTIONS = _gauge(
    "confusion_matrix_predictions",
    "Labeled predictions per confusion-matrix cell (true_class predicted as "
    "predicted_class) in the window; every cell of the class set, zeros included." + CACHED,
    (*WINDOW, "true_class", "predicted_class", "correct"),
)
CLASS_PRECISION = _gauge(
    "confusion_class_precision",
    "Share of predictions of this class that were right (NaN when never predicted)." + CACHED,
    (*WINDOW, "class"),
)
CLASS_RECALL = _gauge(
    "confusion_class_recall",
    "Share of this true class that was predicted as itself (NaN without support)." + CACHED,
    (*WINDOW, "class"),
)
CLASS_F1 = _gauge(
    "confusion_class_f1_score",
    "Harmonic mean of precision and recall of this class (NaN when the class is absent)." + CACHED,
    (*WINDOW, "class"),
)
CLASS_SUPPORT = _gauge(
    "confusion_class_support",
    "Labeled predictions whose true class is this class." + CACHED,
    (*WINDOW, "class"),
)
ACCURACY = _gauge("confusion_accuracy", "Share of labeled predictions that were right." + CACHED, WINDOW)
MACRO_F1 = _gauge(
    "confusion_macro_f1", "Unweighted mean F1 over the classes seen as truth or prediction." + CACHED, WINDOW
)
BALANCED_ACCURACY = _gauge(
    "confusion_balanced_accuracy", "Unweighted mean recall over the classes seen as truth." + CACHED, WINDOW
)
LABELED = _gauge(
    "confusion_labeled_predictions",
    "Predictions in the window whose true class has arrived." + CACHED,
    WINDOW,
)
UNLABELED = _gauge(
    "confusion_unlabeled_predictions",
    "Predictions in the window whose true class has not arrived yet." + CACHED,
    WINDOW,
)
LABEL_COVERAGE = _gauge(
    "confusion_label_coverage_ratio",
    "Labeled predictions over all valid predictions in the window (0..1)." + CACHED,
    WINDOW,
)
REJECTED_ROWS = _gauge(
    "confusion_rejected_rows",
    "Rows in the window left out of the matrix, by reason (NULL or empty class, "
    "timestamp in the future, class outside the configured set, ...)." + CACHED,
    (*WINDOW, "reason"),
)
FOLDED = _gauge(
    "confusion_folded_predictions",
    "Predictions whose true or predicted class was folded into __other__ because the "
    "slice has more classes than max_classes." + CACHED,
    WINDOW,
)
LABEL_DELAY = _gauge(
    "confusion_mean_label_delay_seconds",
    "Mean time from prediction to label over the window's labeled predictions "
    "(NaN without a labeled_at column or labels)." + CACHED,
    WINDOW,
)
MATRIX = (
    MATRIX_PREDICTIONS,
    CLASS_PRECISION,
    CLASS_RECALL,
    CLASS_F1,
    CLASS_SUPPORT,
    ACCURACY,
    MACRO_F1,
    BALANCED_ACCURACY,
    LABELED,
    UNLABELED,
    LABEL_COVERAGE,
    REJECTED_ROWS,
    FOLDED,
    LABEL_DELAY,
)

# --- Shift tests: the chi-square tests of one slice, current against reference -------------

SHIFT_STATISTIC = _gauge(
    "confusion_shift_statistic",
    "Pearson chi-square statistic of the test between reference and current window "
    "(error_pattern: summed over true classes)." + CACHED,
    TEST,
)
SHIFT_DOF = _gauge("confusion_shift_degrees_of_freedom", "Degrees of freedom of the test." + CACHED, TEST)
SHIFT_P_VALUE = _gauge(
    "confusion_shift_p_value",
    "p-value of the test (Monte Carlo where expected counts are below 5; see "
    "confusion_shift_monte_carlo)." + CACHED,
    TEST,
)
SHIFT_LOG10_P_VALUE = _gauge(
    "confusion_shift_log10_p_value",
    "log10 of the p-value; stays finite far in the tail where the p-value itself would underflow." + CACHED,
    TEST,
)
SHIFT_EFFECT = _gauge(
    "confusion_shift_effect_size",
    "Bias-corrected Cramer's V of the test, 0..1, which does not grow with sample size "
    "(error_pattern: the largest over true classes)." + CACHED,
    TEST,
)
SHIFT_SAMPLES = _gauge(
    "confusion_shift_samples",
    "Predictions the test compared in each window (prediction_prior includes unlabeled ones)." + CACHED,
    (*TEST, "window"),
)
SHIFT_MONTE_CARLO = _gauge(
    "confusion_shift_monte_carlo",
    "1 if the p-value is a Monte Carlo conditional estimate (sparse table), 0 if asymptotic." + CACHED,
    TEST,
)
SHIFT_STATE = _gauge(
    "confusion_shift_state",
    "Decision of the test, one series per state, 1 for the current one: shift (p < alpha and "
    "effect >= min_effect with enough samples), stable, insufficient_data." + CACHED,
    (*TEST, "state"),
)
SHIFT_ROW_STATISTIC = _gauge(
    "confusion_shift_row_statistic",
    "Chi-square statistic of the error-pattern test for this true class alone." + CACHED,
    (*SLICE, "true_class"),
)
SHIFT_ROW_P_VALUE = _gauge(
    "confusion_shift_row_p_value",
    "p-value of the error-pattern test for this true class alone (not corrected for "
    "multiple comparisons: it says where, the summed test says whether)." + CACHED,
    (*SLICE, "true_class"),
)
SHIFT_ROW_EFFECT = _gauge(
    "confusion_shift_row_effect_size",
    "Bias-corrected Cramer's V of this true class's predicted-class distribution, reference vs "
    "current." + CACHED,
    (*SLICE, "true_class"),
)
SHIFT_CELL_RESIDUAL = _gauge(
    "confusion_shift_cell_residual",
    "Adjusted standardized residual of the cell within its true class, top cells by magnitude: "
    "positive means true_class is predicted as predicted_class more often than in the reference." + CACHED,
    (*SLICE, "true_class", "predicted_class"),
)
SHIFT = (
    SHIFT_STATISTIC,
    SHIFT_DOF,
    SHIFT_P_VALUE,
    SHIFT_LOG10_P_VALUE,
    SHIFT_EFFECT,
    SHIFT_SAMPLES,
    SHIFT_MONTE_CARLO,
    SHIFT_STATE,
    SHIFT_ROW_STATISTIC,
    SHIFT_ROW_P_VALUE,
    SHIFT_ROW_EFFECT,
    SHIFT_CELL_RESIDUAL,
)

# --- Sequential layer: one detector per model and segment, one CUSUM per error rate --------

SEQUENTIAL_CAUGHT_UP = _gauge(
    "confusion_sequential_caught_up",
    "1 once the sequential layer has replayed its history up to now; 0 while it replays "
    "(it publishes no detector then)." + CACHED,
    ("monitor",),
)
SEQUENTIAL_PERIOD_END = _gauge(
    "confusion_sequential_period_end_timestamp_seconds",
    "End of the last period of label arrivals the sequential layer has read." + CACHED,
    ("monitor",),
)
SEQUENTIAL_THRESHOLD = _gauge(
    "confusion_sequential_threshold",
    "Evidence (nats) at which a cell pages: ln(periods per 30 days x cells x segments x "
    "alternatives / false_alarms_per_30_days)." + CACHED,
    DETECTOR,
)
SEQUENTIAL_STATE = _gauge(
    "confusion_sequential_state",
    "State of the slice's sequential layer, one series per state, 1 for the current one: shift "
    "(a cell's evidence reached the threshold; latched until accepted), accumulating (past half "
    "of it: the reference is frozen), stable, insufficient_data." + CACHED,
    (*DETECTOR, "state"),
)
SEQUENTIAL_EVIDENCE = _gauge(
    "confusion_sequential_evidence",
    "CUSUM statistic of the error rate (nats, the largest over its alternatives): evidence "
    "that the rate rose by at least the smallest change worth a page." + CACHED,
    CELL,
)
SEQUENTIAL_SHIFTED = _gauge(
    "confusion_sequential_shifted",
    "1 while the cell's alarm is latched (until the new regime is accepted)." + CACHED,
    CELL,
)
SEQUENTIAL_ERROR_RATE = _gauge(
    "confusion_sequential_error_rate",
    "The error rate over the current run of evidence (the last period when there is none): "
    "the reference's and the observed." + CACHED,
    (*CELL, "window"),
)
SEQUENTIAL_TRIALS = _gauge(
    "confusion_sequential_trials",
    "Labeled predictions behind each rate (the reference's effective size)." + CACHED,
    (*CELL, "window"),
)
SEQUENTIAL_RELATIVE_CHANGE = _gauge(
    "confusion_sequential_relative_change_ratio",
    "Relative change of the error rate against its reference (0.15 is +15%), with its 95% "
    "interval (bound lower and upper)." + CACHED,
    (*CELL, "bound"),
)
SEQUENTIAL = (
    SEQUENTIAL_CAUGHT_UP,
    SEQUENTIAL_PERIOD_END,
    SEQUENTIAL_THRESHOLD,
    SEQUENTIAL_STATE,
    SEQUENTIAL_EVIDENCE,
    SEQUENTIAL_SHIFTED,
    SEQUENTIAL_ERROR_RATE,
    SEQUENTIAL_TRIALS,
    SEQUENTIAL_RELATIVE_CHANGE,
)

# --- Costs and confidence: error cost, calibration, decision thresholds ---------------------

ERROR_COST = _gauge(
    "confusion_error_cost_per_prediction",
    "Mean cost of errors per labeled prediction, from the monitor's cost_matrix (default: 1 per "
    "error, so the error rate)." + CACHED,
    WINDOW,
)
ERROR_COST_DIFFERENCE = _gauge(
    "confusion_error_cost_difference",
    "Mean error cost per labeled prediction, current minus reference." + CACHED,
    SLICE,
)
ERROR_COST_INCREASE = _gauge(
    "confusion_error_cost_increase_ratio",
    "Relative change of the mean error cost, (current - reference) / reference (NaN: no reference "
    "cost)." + CACHED,
    SLICE,
)
ERROR_COST_INCREASE_LOWER_BOUND = _gauge(
    "confusion_error_cost_increase_lower_bound_ratio",
    "One-sided 1 - alpha lower confidence bound of the relative change of the mean error cost "
    "(Welch); above confusion_error_cost_max_increase_ratio only when the rise is beyond noise "
    "(NaN: fewer than 2 labeled predictions in a window)." + CACHED,
    SLICE,
)
SCORED = _gauge(
    "confusion_scored_predictions",
    "Labeled predictions with a score in [0, 1], the base of the confidence metrics." + CACHED,
    WINDOW,
)
INVALID_SCORES = _gauge(
    "confusion_invalid_scores",
    "Labeled predictions whose score is outside [0, 1] or NaN, left out of confidence metrics." + CACHED,
    WINDOW,
)
CALIBRATION_ERROR = _gauge(
    "confusion_calibration_error",
    "Expected calibration error: sum over score bins of (bin share) x |accuracy - mean score|." + CACHED,
    WINDOW,
)
MEAN_CONFIDENCE = _gauge(
    "confusion_mean_confidence",
    "Mean score of the predicted class, over correct or incorrect labeled predictions." + CACHED,
    (*WINDOW, "outcome"),
)
HIGH_CONFIDENCE_ERRORS = _gauge(
    "confusion_high_confidence_errors",
    "Incorrect predictions made with a score at or above high_confidence." + CACHED,
    WINDOW,
)
HIGH_CONFIDENCE_ERROR_RATIO = _gauge(
    "confusion_high_confidence_error_ratio",
    "Share of incorrect predictions made with a score at or above high_confidence." + CACHED,
    WINDOW,
)
THRESHOLD_MATRIX = _gauge(
    "confusion_threshold_matrix_predictions",
    "Labeled predictions per cell of a two-class matrix had the positive class been predicted at "
    "probability >= threshold." + CACHED,
    (*WINDOW, "threshold", "true_class", "predicted_class"),
)
COST_AND_CONFIDENCE = (
    ERROR_COST,
    ERROR_COST_DIFFERENCE,
    ERROR_COST_INCREASE,
    ERROR_COST_INCREASE_LOWER_BOUND,
    SCORED,
    INVALID_SCORES,
    CALIBRATION_ERROR,
    MEAN_CONFIDENCE,
    HIGH_CONFIDENCE_ERRORS,
    HIGH_CONFIDENCE_ERROR_RATIO,
    THRESHOLD_MATRIX,
)

# --- Monitor configuration and evaluation: what the rules and dashboards join or draw -------

MONITOR_INFO = _gauge(
    "confusion_monitor_info",
    "Configuration of the monitor: its source, model pattern, owning team and reference kind. "
    "Join on monitor to route alerts by team.",
    ("monitor", "source", "model_pattern", "team", "reference"),
)
RECALL_OBJECTIVE = _gauge(
    "confusion_class_recall_objective",
    "Configured recall objective of the class (recall_objective / recall_objectives; 0: none).",
    ("monitor", "class"),
)
SHIFT_ALPHA = _gauge(
    "confusion_shift_alpha", "Significance level the monitor's shift tests use.", ("monitor",)
)
SHIFT_MIN_EFFECT = _gauge(
    "confusion_shift_min_effect", "Smallest effect size the monitor counts as a shift.", ("monitor",)
)
SHIFT_MIN_SAMPLES = _gauge(
    "confusion_shift_min_samples",
    "Labeled predictions each window needs before the monitor's tests decide.",
    ("monitor",),
)
ERROR_COST_MAX_INCREASE = _gauge(
    "confusion_error_cost_max_increase_ratio",
    "Configured relative increase of the mean error cost that alerts (max_cost_increase).",
    ("monitor",),
)
# The monitor's configured thresholds, by their key in MonitorResult.thresholds.
THRESHOLDS = {
    "alpha": SHIFT_ALPHA,
    "min_effect": SHIFT_MIN_EFFECT,
    "min_samples": SHIFT_MIN_SAMPLES,
    "max_cost_increase": ERROR_COST_MAX_INCREASE,
}
WINDOW_START = _gauge(
    "confusion_window_start_timestamp_seconds",
    "Start of the window's span of prediction time (inclusive; a seasonal reference: its"
    " latest span, repeated count times, period apart, before it)." + CACHED,
    ("monitor", "window"),
)
WINDOW_END = _gauge(
    "confusion_window_end_timestamp_seconds",
    "End of the window's span of prediction time (exclusive)." + CACHED,
    ("monitor", "window"),
)
MONITOR_SLICES = _gauge(
    "confusion_monitor_slices",
    "Model/version/segment slices the monitor found in its windows (0: no data)." + CACHED,
    ("monitor",),
)
MONITOR_EVALUATED = _gauge(
    "confusion_monitor_evaluation_timestamp_seconds",
    "The instant the monitor's windows were last computed for.",
    ("monitor",),
)
MONITOR = (
    MONITOR_INFO,
    RECALL_OBJECTIVE,
    *THRESHOLDS.values(),
    WINDOW_START,
    WINDOW_END,
    MONITOR_SLICES,
    MONITOR_EVALUATED,
)

# Everything a snapshot exports, in exposition order: the order the families had before this
# catalog, kept so that a snapshot renders byte for byte as it did (a diff of two scrapes or
# backfill files across the change shows nothing). What belongs together is the groups above;
# tests/test_metric_catalog.py checks this holds each of their families exactly once.
SNAPSHOT = (
    *MATRIX[:-1],
    WINDOW_START,
    WINDOW_END,
    MONITOR_INFO,
    RECALL_OBJECTIVE,
    *COST_AND_CONFIDENCE,
    LABEL_DELAY,
    MONITOR_SLICES,
    *SHIFT,
    *SEQUENTIAL,
    MONITOR_EVALUATED,
    *THRESHOLDS.values(),
)

# --- Exporter health: the refresher, the rollups, the endpoint ------------------------------

BUILD = Family(
    "confusion_exporter_build", "info", "Version of confusion-exporter and of the Python running it."
)
REFRESH_DURATION = _gauge(
    "confusion_exporter_refresh_duration_seconds",
    "Wall time of the last refresh (of all monitors in a one-off snapshot; when serving, of the "
    "monitor that finished last: monitors refresh side by side).",
)
DATABASE_UP = _gauge("confusion_exporter_database_up", "1 if the last refresh reached the database, else 0.")
REFRESHES = _counter("confusion_exporter_refreshes", "Monitor refreshes attempted.", ("monitor",))
REFRESH_FAILURES = _counter(
    "confusion_exporter_refresh_failures",
    "Monitor refreshes that failed (database unreachable, query error or timeout).",
    ("monitor",),
)
LAST_REFRESH_SUCCESS = _gauge(
    "confusion_exporter_last_refresh_success_timestamp_seconds",
    "When the monitor last refreshed successfully (0: never); "
    "time() minus this is the age of what /metrics shows.",
    ("monitor",),
)
ROLLUP_FOLDS = _counter(
    "confusion_exporter_rollup_folds", "Incremental folds of the source into its rollup.", ("source",)
)
ROLLUP_PREDICTIONS = _counter(
    "confusion_exporter_rollup_predictions", "New predictions folded into the rollup.", ("source",)
)
ROLLUP_LABEL_CHANGES = _counter(
    "confusion_exporter_rollup_label_changes",
    "Predictions whose counted label changed (first label, late label or correction).",
    ("source",),
)
ROLLUP_PENDING_IDS = _gauge(
    "confusion_exporter_rollup_pending_ids",
    "Ids below a watermark not visible yet (uncommitted or aborted writes), re-checked each fold.",
    ("source",),
)
ROLLUP_FOLD_DURATION = _gauge(
    "confusion_exporter_rollup_fold_duration_seconds",
    "Wall time of the source's last fold (one batch).",
    ("source",),
)
ROLLUP_LABELS = _counter(
    "confusion_exporter_rollup_labels",
    "Label rows folded into the rollup (first labels, late labels, corrections).",
    ("source",),
)
ROLLUP_BATCH_ROWS = _gauge(
    "confusion_exporter_rollup_batch_rows",
    "Ids per table the next fold batch reads at most (adapted to statement_timeout).",
    ("source",),
)
ROLLUP_CAUGHT_UP = _gauge(
    "confusion_exporter_rollup_caught_up",
    "1 when the rollup has caught up and the source's monitors read it; 0 while it "
    "folds a backlog in batches and they read the source table.",
    ("source",),
)
ROLLUP_GIVEN_UP_IDS = _counter(
    "confusion_exporter_rollup_given_up_ids",
    "Ids that never became visible (aborted writes, sequence jumps), given up once no "
    "transaction could still hold them.",
    ("source",),
)
ROLLUP_BACKLOG_ROWS = _gauge(
    "confusion_exporter_rollup_backlog_rows",
    "Rows left to fold after the last fold batch (ids above the watermark: a bound on rows).",
    ("source", "table"),
)
HEALTH = (
    BUILD,
    REFRESH_DURATION,
    DATABASE_UP,
    REFRESHES,
    REFRESH_FAILURES,
    LAST_REFRESH_SUCCESS,
    ROLLUP_FOLDS,
    ROLLUP_PREDICTIONS,
    ROLLUP_LABEL_CHANGES,
    ROLLUP_PENDING_IDS,
    ROLLUP_FOLD_DURATION,
    ROLLUP_LABELS,
    ROLLUP_BATCH_ROWS,
    ROLLUP_CAUGHT_UP,
    ROLLUP_GIVEN_UP_IDS,
    ROLLUP_BACKLOG_ROWS,
)
# Counted by the endpoint and rendered per scrape, apart from the refresher's health.
HTTP_CLIENT_ERRORS = _counter(
    "confusion_exporter_http_client_errors",
    "Connections the endpoint ended because of the client, by reason: tls_handshake, "
    "disconnect (hung up before the response was sent), head_timeout, head_too_large, "
    "response_timeout, evicted (a slow head closed to make room). Counted at scrape time.",
    ("reason",),
)
ENDPOINT = (HTTP_CLIENT_ERRORS,)

ALL = (*SNAPSHOT, *HEALTH, *ENDPOINT)
