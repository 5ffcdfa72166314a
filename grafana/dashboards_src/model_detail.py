"""Model detail: the matrices, the shift and its cause, per class, labels; for one slice."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.models import common

from .common import (
    HIDDEN,
    SEQUENTIAL_SLICE,
    SLICE,
    bar_panel,
    cell_in_words,
    colored,
    dashboard,
    dynamic,
    hide_fields,
    label_variable,
    log_scale,
    query,
    sequential_state_code,
    sequential_state_mappings,
    stat_panel,
    state_mappings,
    table_panel,
    threshold_line,
    thresholds,
    timeseries_panel,
    transform,
)

UID = "confusion-model-detail"
CELL = "monitor, model, version, segment, window"


def matrix_panel(title: str, description: str, expr: str, unit: str, span: int = 12):  # type: ignore[no-untyped-def]
    """A confusion matrix: rows are true classes, columns predicted classes (groupingToMatrix)."""
    return (
        table_panel(
            title, description, unit, query(expr, instant=True, table_format=True), height=10, span=span
        )
        .with_transformation(
            transform(
                "groupingToMatrix",
                {
                    "rowField": "true_class",
                    "columnField": "predicted_class",
                    "valueField": "Value",
                    "emptyValue": "zero",
                },
            )
        )
        .cell_options(
            common.TableColoredBackgroundCellOptions(mode=common.TableCellBackgroundDisplayMode.GRADIENT)
        )
        .color_scheme(dash.FieldColor().mode("continuous-BlPu"))
        .override_by_name("true_class\\predicted_class", [dynamic("custom.cellOptions", {"type": "auto"})])
    )


def sequential_panels() -> list:  # type: ignore[type-arg]
    """The row "Small persistent changes (sequential)": evidence against threshold, the cells, the state."""

    def cells(metric: str, matcher: str = "") -> str:
        return cell_in_words(metric, SEQUENTIAL_SLICE + (f", {matcher}" if matcher else ""))

    evidence = (
        timeseries_panel(
            "Evidence against threshold, per error rate",
            "The sequential detector's evidence (a CUSUM, in nats) that each error rate of this model and "
            "segment is above its reference, all versions pooled (the version variable does not apply). It "
            "climbs while a rate stays above its reference and falls back to 0 otherwise; at the dashed "
            "threshold the cell latches and ConfusionErrorRateShift pages (1 false page per monitor per 30 days "
            "by construction). From half the threshold on the cell is 'accumulating' and its reference is "
            "frozen, so the change cannot be learnt as normal.",
            "none",
            query(cells("confusion_sequential_evidence"), legend="{{cell}}"),
            query(
                f"max(confusion_sequential_threshold{{{SEQUENTIAL_SLICE}}})",
                legend="threshold",
                ref="B",
            ),
            height=9,
            span=16,
        )
        .min(0)
        .override_by_name(*threshold_line("threshold"))
    )
    state = (
        stat_panel(
            "Sequential state",
            "The slice's state in the sequential layer (all versions pooled): stable; accumulating (some "
            "cell's evidence is past half its threshold, references frozen); shift (a cell is latched and "
            "pages until accepted: automatically after 24 h, or by confusion-exporter baseline accept); "
            "insufficient data (references too small to test yet).",
            "none",
            query(sequential_state_code(SEQUENTIAL_SLICE), instant=True),
            height=9,
            span=8,
        )
        .mappings(sequential_state_mappings())
        .color_mode(common.BigValueColorMode.BACKGROUND)
    )
    columns = {
        "A": ("reference rate", cells("confusion_sequential_error_rate", 'window="reference"')),
        "B": ("current rate", cells("confusion_sequential_error_rate", 'window="current"')),
        "C": ("change", cells("confusion_sequential_relative_change_ratio", 'bound="estimate"')),
        "D": ("change, 95% low", cells("confusion_sequential_relative_change_ratio", 'bound="lower"')),
        "E": ("change, 95% high", cells("confusion_sequential_relative_change_ratio", 'bound="upper"')),
        "F": ("current trials", cells("confusion_sequential_trials", 'window="current"')),
        "G": ("reference trials", cells("confusion_sequential_trials", 'window="reference"')),
        "H": ("evidence / threshold", cells("confusion:sequential_evidence:threshold_ratio")),
        "I": ("state", cells("confusion_sequential_shifted")),
    }
    table = (
        table_panel(
            "Error rates: reference, current, relative change",
            "Each error rate the sequential detector follows (all versions pooled): 'A predicted as B' is the "
            "share of true A predicted as B; 'A predicted as any other class' is 1 - recall of A; 'predicted B "
            "but truly A' is a false-discovery rate. Reference: the cell's own stable history (same hour of "
            "day), frozen while evidence accumulates; current: over the run of evidence (roughly since a "
            "change began); change: current / reference - 1 with its 95% interval; trials: labeled "
            "predictions behind each rate. State 'shift': latched, paging. Sorted by evidence.",
            "percentunit",
            *(query(expr, ref=ref, instant=True, table_format=True) for ref, (_, expr) in columns.items()),
            height=10,
            span=24,
        )
        .with_transformation(transform("merge", {}))
        .with_transformation(
            transform(
                "organize",
                {
                    "excludeByName": {
                        name: True
                        for name in (
                            "Time",
                            "monitor",
                            "model",
                            "segment",
                            "kind",
                            "true_class",
                            "predicted_class",
                        )
                    },
                    "indexByName": {"cell": 0, **{f"Value #{ref}": i + 1 for i, ref in enumerate(columns)}},
                    "renameByName": {f"Value #{ref}": title for ref, (title, _) in columns.items()},
                },
            )
        )
        .with_transformation(transform("sortBy", {"sort": [{"field": "evidence / threshold", "desc": True}]}))
        .decimals(2)
        .override_by_name("current trials", [dynamic("unit", "none"), dynamic("decimals", 0)])
        .override_by_name("reference trials", [dynamic("unit", "none"), dynamic("decimals", 0)])
        .override_by_name(
            "evidence / threshold",
            [
                dynamic("custom.cellOptions", {"type": "color-background", "mode": "basic"}),
                dynamic(
                    "thresholds",
                    {
                        "mode": "absolute",
                        "steps": [
                            {"value": None, "color": "green"},
                            {"value": 0.5, "color": "orange"},
                            {"value": 1, "color": "red"},
                        ],
                    },
                ),
            ],
        )
        .override_by_name(
            "state",
            [
                dynamic("unit", "none"),
                dynamic(
                    "mappings",
                    [
                        {
                            "type": "value",
                            "options": {
                                "0": {"text": "-", "index": 0},
                                "1": {"text": "shift", "color": "red", "index": 1},
                            },
                        }
                    ],
                ),
                dynamic("custom.cellOptions", {"type": "color-text"}),
            ],
        )
    )
    return [dash.Row("Small persistent changes (sequential)"), evidence, state, table]


def build() -> dash.Dashboard:
    counts = 'confusion_matrix_predictions{%s, window="%s"}'
    row_normalized = (
        f'confusion_matrix_predictions{{{SLICE}, window="current"}} / on ({CELL}, true_class) '
        f'group_left sum by ({CELL}, true_class) (confusion_matrix_predictions{{{SLICE}, window="current"}})'
    )
    column_normalized = (
        f'confusion_matrix_predictions{{{SLICE}, window="current"}} / on ({CELL}, predicted_class) '
        f'group_left sum by ({CELL}, predicted_class) (confusion_matrix_predictions{{{SLICE}, window="current"}})'
    )
    tests = (
        table_panel(
            "Shift decision per test",
            "The decision of each chi-square test of the current window against the reference: 'shift' when "
            "p < alpha, the effect size reaches min_effect and both windows hold min_samples labels. "
            "error_pattern (does the model err differently on some true class?) pages; label_prior and "
            "prediction_prior (did the class mix change?) open tickets.",
            "none",
            query(f"confusion_shift_state{{{SLICE}}} == 1", instant=True, table_format=True),
            height=7,
            span=8,
        )
        .with_transformation(hide_fields(*HIDDEN, "Value", "monitor", "model", "version", "segment"))
        .mappings(state_mappings())
        .override_by_name(*colored("state"))
    )
    cells = (
        table_panel(
            "Cells that moved most",
            "Adjusted standardized residual of each cell within its true class (current vs reference): "
            "+4 means true_class is predicted as predicted_class far more often than before; -4 far less. "
            "Values beyond about ±3 are not chance. This is where the error pattern moved.",
            "none",
            query(f"confusion_shift_cell_residual{{{SLICE}}}", instant=True, table_format=True),
            height=7,
            span=8,
        )
        .with_transformation(hide_fields(*HIDDEN, "monitor", "model", "version", "segment"))
        .with_transformation(transform("sortBy", {"sort": [{"field": "Value", "desc": True}]}))
        .decimals(1)
        .thresholds(thresholds((None, "blue"), (-3, "text"), (3, "red")))
        .override_by_name(*colored("Value"))
    )
    rows = (
        bar_panel(
            "Which true class moved",
            "Effect size (bias-corrected Cramér's V at balanced allocation, 0..1) of each true class's "
            "predicted-class distribution, current vs reference. The error_pattern effect is the largest of "
            "these; the dashed threshold is the monitor's min_effect.",
            "none",
            query(
                f"sort_desc(confusion_shift_row_effect_size{{{SLICE}}})",
                legend="true {{true_class}}",
                instant=True,
            ),
            height=7,
            span=8,
        )
        .min(0)
        .max(1)
        .thresholds(thresholds((None, "green"), (0.05, "red")))
    )
    p_values = (
        timeseries_panel(
            "Shift p-value over time",
            "p-value of each test (log scale). Below the dashed alpha line the change is statistically "
            "significant; it is only decided a shift when the effect size is large enough too.",
            "none",
            query(f"confusion_shift_p_value{{{SLICE}}}", legend="{{test}}"),
            query('max(confusion_shift_alpha{monitor="$monitor"})', legend="alpha", ref="B"),
            span=12,
        )
        .scale_distribution(log_scale())
        .override_by_name(*threshold_line("alpha"))
    )
    effects = timeseries_panel(
        "Shift effect size over time",
        "Effect size of each test (0: no change, 1: disjoint distributions); it does not grow with traffic, "
        "unlike the chi-square statistic. Above the dashed min_effect line (with p < alpha) the test decides "
        "'shift'.",
        "none",
        query(f"confusion_shift_effect_size{{{SLICE}}}", legend="{{test}}"),
        query('max(confusion_shift_min_effect{monitor="$monitor"})', legend="min_effect", ref="B"),
        span=12,
    ).override_by_name(*threshold_line("min_effect"))
    per_class = [
        timeseries_panel(
            f"{name.capitalize()} per class",
            f"{name.capitalize()} of each class in the current window over time. {explanation}",
            "percentunit",
            query(f'confusion_class_{metric}{{{SLICE}, window="current"}}', legend="{{class}}"),
            span=8,
        )
        .min(0)
        .max(1)
        for name, metric, explanation in (
            ("precision", "precision", "Low: the class is over-predicted (false alarms)."),
            ("recall", "recall", "Low: the class is under-predicted (misses)."),
            ("F1", "f1_score", "Harmonic mean of the two."),
        )
    ]
    confused = (
        table_panel(
            "Most confused pairs",
            "The largest off-diagonal cells of the current window: true class, the class it was mistaken "
            "for, and how many labeled predictions.",
            "none",
            query(
                f'topk(10, confusion_matrix_predictions{{{SLICE}, window="current", correct="false"}} > 0)',
                instant=True,
                table_format=True,
            ),
            height=8,
            span=8,
        )
        .with_transformation(
            hide_fields(*HIDDEN, "monitor", "model", "version", "segment", "window", "correct")
        )
        .with_transformation(transform("sortBy", {"sort": [{"field": "Value", "desc": True}]}))
    )
    coverage = (
        timeseries_panel(
            "Label coverage",
            "Share of each window's predictions whose true class has arrived. The matrix and the tests only "
            "see labeled predictions; a low coverage means they describe part of the traffic.",
            "percentunit",
            query(f"confusion_label_coverage_ratio{{{SLICE}}}", legend="{{window}}"),
            span=8,
        )
        .min(0)
        .max(1)
    )
    delay = timeseries_panel(
        "Mean label delay",
        "Mean time from prediction to label over each window's labeled predictions.",
        "s",
        query(f"confusion_mean_label_delay_seconds{{{SLICE}}}", legend="{{window}}"),
        span=8,
    )
    cost = timeseries_panel(
        "Cost of errors per labeled prediction",
        "Mean cost of the window's errors (the monitor's cost_matrix; without one every error costs 1, so "
        "this is the error rate). The alert fires when the lower confidence bound of the increase over the "
        "reference (confusion_error_cost_increase_lower_bound_ratio) exceeds max_cost_increase.",
        "none",
        query(f"confusion_error_cost_per_prediction{{{SLICE}}}", legend="{{window}}"),
        span=8,
    )
    calibration = timeseries_panel(
        "Expected calibration error",
        "Per window: the score-bin-weighted gap between accuracy and mean confidence (0: the scores are "
        "honest probabilities). Needs a score column.",
        "none",
        query(f"confusion_calibration_error{{{SLICE}}}", legend="{{window}}"),
        span=8,
    )
    confidence = (
        timeseries_panel(
            "Mean confidence when right and when wrong",
            "Current window. The two lines drifting together means the model no longer knows when it is wrong.",
            "percentunit",
            query(f'confusion_mean_confidence{{{SLICE}, window="current"}}', legend="{{outcome}}"),
            query(
                f'confusion_high_confidence_error_ratio{{{SLICE}, window="current"}}',
                legend="share of errors made with high confidence",
                ref="B",
            ),
            span=8,
        )
        .min(0)
        .max(1)
    )
    at_thresholds = (
        table_panel(
            "Decision thresholds: the current window's matrix at other thresholds",
            "Two-class monitors with decision_thresholds: labeled predictions per cell had the positive class "
            "been predicted whenever its probability reached the threshold (probability: the score where the "
            "model predicted the positive class, 1 - score otherwise).",
            "none",
            query(
                f'confusion_threshold_matrix_predictions{{{SLICE}, window="current"}}',
                instant=True,
                table_format=True,
            ),
            height=8,
            span=24,
        )
        .with_transformation(hide_fields(*HIDDEN, "monitor", "model", "version", "segment", "window"))
        .with_transformation(
            transform(
                "sortBy",
                {"sort": [{"field": "threshold"}, {"field": "true_class"}, {"field": "predicted_class"}]},
            )
        )
    )
    board = (
        dashboard(
            UID,
            "Confusion exporter / Model detail",
            "One model version in one segment: current and reference confusion matrices, the shift tests and "
            "where the errors moved, the sequential layer's error rates (all versions pooled), per-class "
            "metrics, labels.",
        )
        .with_variable(
            label_variable("monitor", "Monitor", "label_values(confusion_monitor_slices, monitor)")
        )
        .with_variable(
            label_variable("model", "Model", 'label_values(confusion_accuracy{monitor="$monitor"}, model)')
        )
        .with_variable(
            label_variable(
                "version",
                "Version",
                'label_values(confusion_accuracy{monitor="$monitor", model="$model"}, version)',
            )
        )
        .with_variable(
            label_variable(
                "segment",
                "Segment",
                'label_values(confusion_accuracy{monitor="$monitor", model="$model", version="$version"}, segment)',
            )
        )
        .with_variable(
            dash.TextBoxVariable("exporter_url")
            .label("Exporter URL (report link)")
            .default_value("http://localhost:9745")
        )
        .link(
            dash.DashboardLink("Error analysis report (in words)")
            .type("link")
            .url("${exporter_url}/report?monitor=${monitor}")
            .target_blank(True)
            .tooltip("The exporter's report of this monitor: what moved, per-class diagnosis, confidence")
        )
        .with_row(dash.Row("Shift: did the pattern of errors change, and where?"))
        .with_panel(tests)
        .with_panel(cells)
        .with_panel(rows)
        .with_panel(p_values)
        .with_panel(effects)
    )
    row, *sequential = sequential_panels()
    board = board.with_row(row)
    for panel in sequential:
        board = board.with_panel(panel)
    return (
        board.with_row(dash.Row("Confusion matrices (rows: true class, columns: predicted class)"))
        .with_panel(
            matrix_panel(
                "Current window: counts",
                "Labeled predictions of the current window per cell; the diagonal is right, the rest are errors.",
                counts % (SLICE, "current"),
                "none",
            )
        )
        .with_panel(
            matrix_panel(
                "Reference window: counts",
                "The same cells in the reference the current window is compared with (for a version reference, "
                "pick the reference version in the variables).",
                counts % (SLICE, "reference"),
                "none",
            )
        )
        .with_panel(
            matrix_panel(
                "Current window: share of each true class (recall)",
                "Each row divided by its total: the diagonal is each class's recall; a row's other cells say "
                "what that class is mistaken for.",
                row_normalized,
                "percentunit",
            )
        )
        .with_panel(
            matrix_panel(
                "Current window: share of each predicted class (precision)",
                "Each column divided by its total: the diagonal is each class's precision; a column's other "
                "cells say where that prediction's false alarms come from.",
                column_normalized,
                "percentunit",
            )
        )
        .with_row(dash.Row("Per class"))
        .with_panel(per_class[0])
        .with_panel(per_class[1])
        .with_panel(per_class[2])
        .with_row(dash.Row("Cost, confidence and decision thresholds"))
        .with_panel(cost)
        .with_panel(calibration)
        .with_panel(confidence)
        .with_panel(at_thresholds)
        .with_row(dash.Row("Labels"))
        .with_panel(confused)
        .with_panel(coverage)
        .with_panel(delay)
    )
