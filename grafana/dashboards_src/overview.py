"""Overview: every monitored model at a glance; click through to the model detail."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.models.dashboard import DataSourceRef

from .common import (
    DETAIL_URL,
    HIDDEN,
    colored,
    dashboard,
    hide_fields,
    query,
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
    ).thresholds(thresholds((None, "green"), (120, "orange"), (600, "red")))
    shifted = stat_panel(
        "Slices with an error-pattern shift",
        "How many model version/segment slices the error_pattern test currently calls 'shift': these page.",
        "none",
        query(
            'count(confusion_shift_state{test="error_pattern", state="shift"} == 1) or vector(0)',
            instant=True,
        ),
    ).thresholds(thresholds((None, "green"), (1, "red")))
    scrape = stat_panel(
        "Exporter targets up",
        "Exporter instances Prometheus scrapes successfully, out of those it knows.",
        "none",
        query('sum(up{job="confusion-exporter"})', instant=True),
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
            "Every monitored classifier at a glance: shift state per test, accuracy and macro-F1 against the "
            "reference, label coverage and exporter freshness.",
        )
        .with_panel(shifted)
        .with_panel(freshness)
        .with_panel(scrape)
        .with_panel(
            stat_panel(
                "Monitored slices",
                "Model version/segment slices with data in their windows, over all monitors.",
                "none",
                query("sum(confusion_monitor_slices)", instant=True),
            )
        )
        .with_panel(shift_states)
        .with_panel(glance)
        .with_panel(accuracy)
    )


__all__ = ["UID", "build", "DataSourceRef"]
