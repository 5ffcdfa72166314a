"""Overview: every monitored model at a glance; click through to the model detail."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.models.dashboard import DataSourceRef

from .common import (
    DETAIL_URL,
    HIDDEN,
    SEQUENTIAL_CELL,
    SEQUENTIAL_DETAIL_URL,
    colored,
    dashboard,
    dynamic,
    hide_fields,
    query,
    sequential_state_code,
    sequential_state_mapping_overrides,
    stat_panel,
    state_mappings,
    table_panel,
    thresholds,
    timeseries_panel,
    transform,
)

UID = "confusion-overview"
BY_SLICE = "monitor, model, version, segment"


def build() -> dash.Dashboard:
    detail_link = dash.DashboardLink("Model detail").url(DETAIL_URL)
    shift_states = (
        table_panel(
            "Shift state per test",
            "One row per model version and segment, one column per chi-square test of the current window "
            "against its reference. 'shift' (red) means the test is significant at the monitor's alpha AND "
            "the effect size reaches min_effect with enough labels; error_pattern is the test that pages. "
            "Click a model to open its detail.",
            "none",
            query("confusion_shift_state == 1", instant=True, table_format=True),
            height=9,
            span=24,
        )
        .with_transformation(hide_fields(*HIDDEN, "Value"))
        .mappings(state_mappings())
        .override_by_name(*colored("state"))
        .data_links([detail_link])
    )
    sequential_slice = "monitor, model, segment"
    sequential_states = (
        table_panel(
            "Sequential state per slice (all versions pooled)",
            "The sequential layer, which accumulates evidence per error rate for small persistent changes "
            "the window tests cannot see (a 15% rise of a 3% false-positive rate): one row per model and "
            "segment, its versions pooled. 'shift' (red) pages (ConfusionErrorRateShift) until the new "
            "regime is accepted; 'accumulating': some rate's evidence is past half its threshold; the share "
            "is the largest evidence as a fraction of the threshold (1 pages). Click to open the detail.",
            "none",
            query(sequential_state_code("", by=sequential_slice), ref="A", instant=True, table_format=True),
            query(
                f"max by ({sequential_slice}) (confusion:sequential_evidence:threshold_ratio)",
                ref="B",
                instant=True,
                table_format=True,
            ),
            height=7,
            span=24,
        )
        .with_transformation(transform("merge", {}))
        .with_transformation(
            transform(
                "organize",
                {
                    "excludeByName": {"Time": True},
                    "renameByName": {"Value #A": "state", "Value #B": "evidence / threshold"},
                },
            )
        )
        .with_transformation(transform("sortBy", {"sort": [{"field": "evidence / threshold", "desc": True}]}))
        .override_by_name(
            "state",
            [
                dynamic("mappings", sequential_state_mapping_overrides()),
                dynamic("custom.cellOptions", {"type": "color-background", "mode": "basic"}),
            ],
        )
        .override_by_name("evidence / threshold", [dynamic("unit", "percentunit"), dynamic("decimals", 0)])
        .data_links([dash.DashboardLink("Model detail").url(SEQUENTIAL_DETAIL_URL)])
    )
    glance = (
        table_panel(
            "Models at a glance",
            "Accuracy and macro-F1 of the current window next to the reference window's, and label coverage "
            "(the share of the current window's predictions whose true class has arrived). Accuracy can stay "
            "flat while the errors change: read it with the shift states above.",
            "percentunit",
            query(
                f'max by ({BY_SLICE}) (confusion_accuracy{{window="current"}})',
                ref="A",
                instant=True,
                table_format=True,
            ),
            query(
                f'max by ({BY_SLICE}) (confusion_accuracy{{window="reference"}})',
                ref="B",
                instant=True,
                table_format=True,
            ),
            query(
                f'max by ({BY_SLICE}) (confusion_macro_f1{{window="current"}})',
                ref="C",
                instant=True,
                table_format=True,
            ),
            query(
                f'max by ({BY_SLICE}) (confusion_macro_f1{{window="reference"}})',
                ref="D",
                instant=True,
                table_format=True,
            ),
            query(
                f'max by ({BY_SLICE}) (confusion_label_coverage_ratio{{window="current"}})',
                ref="E",
                instant=True,
                table_format=True,
            ),
            height=9,
            span=24,
        )
        .with_transformation(transform("merge", {}))
        .with_transformation(
            transform(
                "organize",
                {
                    "excludeByName": {"Time": True},
                    "renameByName": {
                        "Value #A": "accuracy now",
                        "Value #B": "accuracy reference",
                        "Value #C": "macro-F1 now",
                        "Value #D": "macro-F1 reference",
                        "Value #E": "label coverage",
                    },
                },
            )
        )
        .decimals(3)
        .data_links([detail_link])
    )
    freshness = stat_panel(
        "Oldest monitor data",
        "Seconds since the least recently refreshed monitor last succeeded. Above a few refresh intervals "
        "the numbers on this page are stale and alerts are blind (see the exporter health dashboard).",
        "s",
        query("max(time() - confusion_exporter_last_refresh_success_timestamp_seconds)", instant=True),
        span=5,
    ).thresholds(thresholds((None, "green"), (120, "orange"), (600, "red")))
    shifted = stat_panel(
        "Slices with an error-pattern shift",
        "How many model version/segment slices the error_pattern test currently calls 'shift': these page.",
        "none",
        query(
            'count(confusion_shift_state{test="error_pattern", state="shift"} == 1) or vector(0)',
            instant=True,
        ),
        span=5,
    ).thresholds(thresholds((None, "green"), (1, "red")))
    latched = stat_panel(
        "Error rates latched (sequential)",
        "How many error rates (cells, over all models and segments, versions pooled) the sequential layer "
        "has latched as shifted: each pages as ConfusionErrorRateShift until accepted.",
        "none",
        query(
            f"count(max by ({SEQUENTIAL_CELL}) (confusion_sequential_shifted) == 1) or vector(0)",
            instant=True,
        ),
        span=5,
    ).thresholds(thresholds((None, "green"), (1, "red")))
    scrape = stat_panel(
        "Exporter targets up",
        "Exporter instances Prometheus scrapes successfully, out of those it knows.",
        "none",
        query('sum(up{job="confusion-exporter"})', instant=True),
        span=5,
    ).thresholds(thresholds((None, "red"), (1, "green")))
    accuracy = timeseries_panel(
        "Accuracy of the current window",
        "Accuracy of each slice's current window over time. It moves slowly by design (the window slides); "
        "a step marks a change in the model or its traffic.",
        "percentunit",
        query('confusion_accuracy{window="current"}', legend="{{model}} {{version}} {{segment}}"),
        span=24,
    )
    return (
        dashboard(
            UID,
            "Confusion exporter / Overview",
            "Every monitored classifier at a glance: shift state per test and of the sequential layer, accuracy "
            "and macro-F1 against the reference, label coverage and exporter freshness.",
        )
        .with_panel(shifted)
        .with_panel(latched)
        .with_panel(freshness)
        .with_panel(scrape)
        .with_panel(
            stat_panel(
                "Monitored slices",
                "Model version/segment slices with data in their windows, over all monitors.",
                "none",
                query("sum(confusion_monitor_slices)", instant=True),
                span=4,
            )
        )
        .with_panel(shift_states)
        .with_panel(sequential_states)
        .with_panel(glance)
        .with_panel(accuracy)
    )


__all__ = ["UID", "build", "DataSourceRef"]
