"""Shared defaults and panel factories for the dashboards (grafana-foundation-sdk builders)."""

from __future__ import annotations

from grafana_foundation_sdk.builders import bargauge, stat, table, timeseries
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.builders.common import ScaleDistributionConfig
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DataSourceRef,
    DataTransformerConfig,
    DynamicConfigValue,
    Threshold,
    ThresholdsMode,
    ValueMap,
    ValueMappingResult,
    VariableOption,
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

DATASOURCE_UID = "confusion-prometheus"  # grafana/provisioning/datasources/prometheus.yaml
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
SLICE = 'monitor="$monitor", model="$model", version="$version", segment="$segment"'
DETAIL_URL = (
    "/d/confusion-model-detail/model-detail?${__url_time_range}&var-monitor=${__data.fields.monitor}"
    "&var-model=${__data.fields.model}&var-version=${__data.fields.version}&var-segment=${__data.fields.segment}"
)
STATE_COLORS = {"shift": "red", "stable": "green", "insufficient_data": "text"}
# The sequential layer's series have no version label (the detector pools a model's
# versions: a new version is exactly the change to catch), so they filter by these only.
SEQUENTIAL_SLICE = 'monitor="$monitor", model="$model", segment="$segment"'
SEQUENTIAL_CELL = "monitor, model, segment, kind, true_class, predicted_class"
SEQUENTIAL_DETAIL_URL = (
    "/d/confusion-model-detail/model-detail?${__url_time_range}&var-monitor=${__data.fields.monitor}"
    "&var-model=${__data.fields.model}&var-segment=${__data.fields.segment}"
)
# The sequential state as one number (confusion_sequential_state is 1 for the current one).
SEQUENTIAL_STATES = {"stable": "green", "accumulating": "orange", "shift": "red", "insufficient_data": "text"}


def dashboard(uid: str, title: str, description: str) -> dash.Dashboard:
    """A dashboard with the project's defaults and a Prometheus datasource variable."""
    return (
        dash.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["confusion-exporter"])
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("browser")
        .editable()
        .with_variable(
            dash.DatasourceVariable("datasource")
            .label("Data source")
            .type("prometheus")
            .current(VariableOption(selected=True, text="Prometheus", value=DATASOURCE_UID))
        )
        .link(
            dash.DashboardLink("confusion-exporter dashboards")
            .type("dashboards")
            .tags(["confusion-exporter"])
            .as_dropdown(True)
            .include_vars(False)
            .keep_time(True)
        )
    )


def label_variable(name: str, label: str, query: str) -> dash.QueryVariable:
    return (
        dash.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query({"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery", "qryType": 1})
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
    )


def query(expr: str, legend: str = "", ref: str = "A", instant: bool = False, table_format: bool = False):  # type: ignore[no-untyped-def]
    q = prom.Dataquery().expr(expr).ref_id(ref).datasource(DATASOURCE)
    if legend:
        q = q.legend_format(legend)
    if instant:
        q = q.instant()
    if table_format:
        q = q.format(PromQueryFormat.TABLE)
    return q


def thresholds(*steps: tuple[float | None, str]) -> dash.ThresholdsConfig:
    return (
        dash.ThresholdsConfig()
        .mode(ThresholdsMode.ABSOLUTE)
        .steps([Threshold(value=v, color=c) for v, c in steps])
    )


def transform(kind: str, options: dict[str, object]) -> DataTransformerConfig:
    return DataTransformerConfig(id_val=kind, options=options)


def hide_fields(*names: str) -> DataTransformerConfig:
    return transform("organize", {"excludeByName": {n: True for n in names}, "renameByName": {}})


HIDDEN = ("Time", "__name__", "job", "instance")


def state_mappings() -> list[ValueMap]:
    return [
        ValueMap(
            options={
                state: ValueMappingResult(text=state.replace("_", " "), color=color, index=i)
                for i, (state, color) in enumerate(STATE_COLORS.items())
            }
        )
    ]


def colored(name: str) -> tuple[str, list[DynamicConfigValue]]:
    return name, [dynamic("custom.cellOptions", {"type": "color-background", "mode": "basic"})]


def timeseries_panel(title: str, description: str, unit: str, *queries, height: int = 8, span: int = 12):  # type: ignore[no-untyped-def]
    panel = timeseries.Panel().title(title).description(description).unit(unit).height(height).span(span)
    panel = panel.datasource(DATASOURCE).fill_opacity(5).line_width(1)
    for q in queries:
        panel = panel.with_target(q)
    return panel


def table_panel(title: str, description: str, unit: str, *queries, height: int = 8, span: int = 12):  # type: ignore[no-untyped-def]
    panel = table.Panel().title(title).description(description).unit(unit).height(height).span(span)
    panel = panel.frame_index(0).show_header(True)
    panel = panel.datasource(DATASOURCE)
    for q in queries:
        panel = panel.with_target(q)
    return panel


def stat_panel(title: str, description: str, unit: str, *queries, height: int = 4, span: int = 6):  # type: ignore[no-untyped-def]
    panel = stat.Panel().title(title).description(description).unit(unit).height(height).span(span)
    panel = panel.datasource(DATASOURCE)
    for q in queries:
        panel = panel.with_target(q)
    return panel


def bar_panel(title: str, description: str, unit: str, *queries, height: int = 8, span: int = 12):  # type: ignore[no-untyped-def]
    panel = bargauge.Panel().title(title).description(description).unit(unit).height(height).span(span)
    panel = panel.datasource(DATASOURCE).orientation(common.VizOrientation.HORIZONTAL)
    for q in queries:
        panel = panel.with_target(q)
    return panel


def dynamic(key: str, value: object) -> DynamicConfigValue:
    return DynamicConfigValue(id_val=key, value=value)


def threshold_line(name: str) -> tuple[str, list[DynamicConfigValue]]:
    """Draw series ``name`` as a dashed red line: a configured threshold, not data."""
    return name, [
        dynamic("custom.lineStyle", {"fill": "dash", "dash": [10, 10]}),
        dynamic("color", {"mode": "fixed", "fixedColor": "red"}),
    ]


def log_scale() -> ScaleDistributionConfig:
    return ScaleDistributionConfig().type(common.ScaleDistribution.LOG).log(10)


def cell_in_words(metric: str, matchers: str) -> str:
    """The series ``metric{matchers}`` per sequential cell, with a label ``cell`` naming the
    error rate as the alert does: "legit predicted as fraud", "billing predicted as any other
    class", "predicted refund but truly billing". Built with label_join and literal
    label_replace only: a ``$1`` in a dashboard query would be read as a template variable."""

    def kind(name: str) -> str:
        return f'max by ({SEQUENTIAL_CELL}) ({metric}{{{matchers}, kind="{name}"}})'

    def literal(expr: str, label: str, text: str, name: str) -> str:
        return f'label_replace({expr}, "{label}", "{text}", "kind", "{name}")'

    confusion = f'label_join({kind("confusion")}, "cell", " predicted as ", "true_class", "predicted_class")'
    error = literal(kind("error"), "suffix", " predicted as any other class", "error")
    error = f'label_join({error}, "cell", "", "true_class", "suffix")'
    discovery = literal(kind("false_discovery"), "prefix", "predicted ", "false_discovery")
    discovery = literal(discovery, "infix", " but truly ", "false_discovery")
    discovery = f'label_join({discovery}, "cell", "", "prefix", "predicted_class", "infix", "true_class")'
    return f"max by ({SEQUENTIAL_CELL}, cell) (\n  {confusion}\n  or {error}\n  or {discovery}\n)"


def sequential_state_code(selector: str, by: str = "") -> str:
    """The slice's sequential state as 0 stable, 1 accumulating, 2 shift, 3 insufficient data."""
    group = f" by ({by})" if by else ""
    return " + ".join(
        f'{i} * max{group} (confusion_sequential_state{{{selector}{", " if selector else ""}state="{state}"}})'
        for i, state in enumerate(SEQUENTIAL_STATES)
        if i
    )


def sequential_state_mappings() -> list[ValueMap]:
    return [
        ValueMap(
            options={
                str(i): ValueMappingResult(text=state.replace("_", " "), color=color, index=i)
                for i, (state, color) in enumerate(SEQUENTIAL_STATES.items())
            }
        )
    ]


def sequential_state_mapping_overrides() -> list[dict[str, object]]:
    """:func:`sequential_state_mappings` as a field override's JSON (one column of a table)."""
    return [
        {
            "type": "value",
            "options": {
                str(i): {"text": state.replace("_", " "), "color": color, "index": i}
                for i, (state, color) in enumerate(SEQUENTIAL_STATES.items())
            },
        }
    ]
