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
