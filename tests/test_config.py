"""Config: the issue's example works as written; each kind of mistake exits 2 naming the key."""

from __future__ import annotations

import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from confusion_exporter.config import ConfigError, config_from_mapping, load_config, resolve_database_url

from .conftest import run_cli

EXAMPLE = """\
sources:
  - name: shop
    table: shop_ml.scored_events        # any table or view, schema-qualified
    columns: {model: clf, version: clf_ver, predicted_at: ts, predicted: yhat,
              actual: y, labeled_at: y_at, score: conf, segment: region}
monitors:
  - source: shop
    model: digits-rf                     # or "*" for every model found
    window: 1h
    reference: {kind: trailing, length: 24h}
    alpha: 0.01
    min_effect: 0.05
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_issue_example_is_valid_exactly_as_written(tmp_path, cli):
    path = write(tmp_path, EXAMPLE)
    result = run_cli(cli, "check-config", "--config", str(path), env={"DATABASE_URL": "postgresql://x@y/z"})
    assert result.returncode == 0, result.stderr
    assert "shop:digits-rf" in result.stdout
    config = load_config(path, env={})
    monitor = config.monitors[0]
    assert monitor.window == timedelta(hours=1)
    assert monitor.reference.length == timedelta(hours=24)  # type: ignore[union-attr]
    assert config.sources[0].schema_name == "shop_ml"
    assert config.sources[0].columns.segment == "region"


MISTAKES = [
    pytest.param(
        EXAMPLE.replace("window: 1h", "window: 1hour"),
        ["monitors[0].window: bad duration '1hour'"],
        id="bad-duration",
    ),
    pytest.param(
        EXAMPLE.replace("alpha: 0.01", "alpha: 0.01\n    alhpa: 0.05"),
        ["monitors[0].alhpa: unknown key"],
        id="unknown-key",
    ),
    pytest.param(
        EXAMPLE.replace("source: shop", "source: shp"),
        ["monitors[0].source: unknown source 'shp'; defined sources: shop"],
        id="unknown-source",
    ),
    pytest.param(
        EXAMPLE.replace("alpha: 0.01", "alpha: lots"),
        ["monitors[0].alpha:"],
        id="wrong-type",
    ),
    pytest.param(
        EXAMPLE.replace("kind: trailing", "kind: yesterday"),
        ["monitors[0].reference: unknown reference kind"],
        id="unknown-reference-kind",
    ),
    pytest.param(
        EXAMPLE.replace("{kind: trailing, length: 24h}", "{kind: seasonal, period: 30m}"),
        ["monitors[0].reference.period: 30m is shorter than the window (1h)"],
        id="seasonal-period-shorter-than-window",
    ),
    pytest.param(
        EXAMPLE.replace("{kind: trailing, length: 24h}", "{kind: seasonal, period: 90s}"),
        ["monitors[0].reference.period: must be a positive multiple of exporter.bucket (1m)"],
        id="seasonal-period-not-multiple-of-bucket",
    ),
    pytest.param(
        EXAMPLE.replace("{kind: trailing, length: 24h}", "{kind: seasonal, period: 1d, count: 0}"),
        ["monitors[0].reference.count:"],
        id="seasonal-count-zero",
    ),
    pytest.param(
        EXAMPLE.replace("{kind: trailing, length: 24h}", "{kind: seasonal, length: 24h}"),
        ["monitors[0].reference.length: unknown key"],
        id="seasonal-unknown-key",
    ),
    pytest.param(
        EXAMPLE.replace("predicted: yhat,", ""),
        ["sources[0].columns.predicted: required key is missing"],
        id="missing-column",
    ),
    pytest.param(
        EXAMPLE.replace("window: 1h", "window: 90s"),
        ["monitors[0].window: 90s is not a multiple of exporter.bucket (1m)"],
        id="window-not-multiple-of-bucket",
    ),
    pytest.param(
        EXAMPLE.replace("window: 1h", "window: 1x").replace("source: shop", "source: nope"),
        ["monitors[0].window: bad duration '1x'", "monitors[0].source: unknown source 'nope'"],
        id="two-problems-two-lines",
    ),
    pytest.param(
        "exporter: {port: 70000}\n" + EXAMPLE,
        ["exporter.port:"],
        id="port-out-of-range",
    ),
    pytest.param(
        "database: {url: 'postgresql://u:hunter2@h/d'}\n" + EXAMPLE,
        ["database.url: the database URL must not be written in the config file"],
        id="url-in-file",
    ),
    pytest.param("sources: [\n", ["is not valid YAML at line"], id="broken-yaml"),
    pytest.param("- just\n- a list\n", ["(top level): expected a mapping"], id="not-a-mapping"),
    pytest.param(
        EXAMPLE.replace("table: shop_ml.scored_events", "table: a.b.c"),
        ["sources[0].table: expected 'table' or 'schema.table'"],
        id="three-part-table",
    ),
    pytest.param(
        EXAMPLE.replace("min_effect: 0.05", "min_effect: 0.05\n    cost_matrix: {'8': {'1': 2, '3': -1}}"),
        [
            "monitors[0].cost_matrix: cell ['8']['3'] (true 8, predicted 3) is -1; a cost must be a finite number"
        ],
        id="negative-cost-cell",
    ),
    pytest.param(
        EXAMPLE.replace("min_effect: 0.05", "min_effect: 0.05\n    cost_matrix: {fraud: {legit: lots}}"),
        ["monitors[0].cost_matrix: cell ['fraud']['legit'] (true fraud, predicted legit) is 'lots'"],
        id="non-numeric-cost-cell",
    ),
    pytest.param(
        EXAMPLE.replace("min_effect: 0.05", "min_effect: 0.05\n    cost_matrix: {fraud: 50}"),
        ["monitors[0].cost_matrix: row 'fraud' must map predicted classes to costs"],
        id="cost-row-not-a-mapping",
    ),
    pytest.param(
        EXAMPLE.replace(
            "min_effect: 0.05",
            "min_effect: 0.05\n    classes: [legit, fraud]\n    cost_matrix: {fraud: {legti: 5}}",
        ),
        ["monitors[0].cost_matrix: cell ['fraud']['legti'] names predicted class 'legti'"],
        id="cost-cell-unknown-class",
    ),
    pytest.param(
        EXAMPLE.replace("min_effect: 0.05", "min_effect: 0.05\n    decision_thresholds: [0.3, 0.5]"),
        ["monitors[0].classes: decision thresholds need a two-class monitor"],
        id="thresholds-without-two-classes",
    ),
    pytest.param(
        EXAMPLE.replace(
            "min_effect: 0.05",
            "min_effect: 0.05\n    classes: [legit, fraud]\n    positive_class: frud\n    decision_thresholds: [0.5]",
        ),
        ["monitors[0].positive_class: must be one of monitors[0].classes (legit, fraud)"],
        id="positive-class-not-a-class",
    ),
]


@pytest.mark.parametrize(("text", "expected"), MISTAKES)
def test_each_mistake_exits_2_and_names_the_key(tmp_path, cli, text, expected):
    path = write(tmp_path, text)
    result = run_cli(cli, "check-config", "--config", str(path))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    for fragment in expected:
        assert any(fragment in line for line in lines), (fragment, lines)
    assert all(line.startswith("config error: ") for line in lines)
    assert "hunter2" not in result.stderr


def test_missing_config_file_exits_2(cli, tmp_path):
    result = run_cli(cli, "check-config", "--config", str(tmp_path / "absent.yaml"))
    assert result.returncode == 2
    assert "--config: cannot read" in result.stderr


def test_run_without_database_url_exits_2_naming_it(tmp_path, cli):
    path = write(tmp_path, EXAMPLE)
    env = {"DATABASE_URL": "", "DATABASE_URL_FILE": ""}
    result = run_cli(cli, "snapshot", "--config", str(path), env=env)
    assert result.returncode == 2
    assert "DATABASE_URL: not set" in result.stderr


def test_environment_twins_override_the_file():
    raw = {
        "exporter": {"port": 1234},
        "sources": [
            {
                "name": "s",
                "table": "t",
                "columns": {"model": "m", "predicted_at": "ts", "predicted": "p", "actual": "a"},
            }
        ],
        "monitors": [
            {"source": "s", "model": "x", "window": "5m", "reference": {"kind": "offset", "offset": "1d"}}
        ],
    }
    config = config_from_mapping(
        raw, env={"CONFUSION_EXPORTER_PORT": "9999", "CONFUSION_EXPORTER_REFRESH_INTERVAL": "5s"}
    )
    assert config.exporter.port == 9999
    assert config.exporter.refresh_interval == timedelta(seconds=5)
    with pytest.raises(ConfigError) as error:
        config_from_mapping(raw, env={"CONFUSION_EXPORTER_REFRESH_INTERVAL": "soon"})
    assert error.value.problems[0].startswith("exporter.refresh_interval: bad duration 'soon'")


def test_interpolation_from_environment():
    raw = {
        "sources": [
            {
                "name": "s",
                "table": "${TABLE}",
                "columns": {"model": "m", "predicted_at": "ts", "predicted": "p", "actual": "a"},
            }
        ],
        "monitors": [
            {
                "source": "s",
                "model": "${MODEL:-fallback}",
                "window": "5m",
                "reference": {"kind": "trailing", "length": "1h"},
            }
        ],
    }
    config = config_from_mapping(raw, env={"TABLE": "ml.events"})
    assert config.sources[0].table == "ml.events"
    assert config.monitors[0].model == "fallback"
    with pytest.raises(ConfigError) as error:
        config_from_mapping(raw, env={})
    assert error.value.problems == [
        "sources[0].table: environment variable TABLE is not set; set it or write ${TABLE:-default}"
    ]


def test_database_url_from_file_and_redaction(tmp_path):
    secret = tmp_path / "url"
    secret.write_text("postgresql://user:s3cret@db:5432/inference\n")
    url = resolve_database_url(None, env={"DATABASE_URL_FILE": str(secret)})
    assert url.url == "postgresql+psycopg2://user:s3cret@db:5432/inference"
    assert "s3cret" not in url.redacted() and "s3cret" not in repr(url) and "s3cret" not in str(url)
    with pytest.raises(ConfigError) as error:
        resolve_database_url(None, env={"DATABASE_URL_FILE": str(tmp_path / "missing")})
    assert error.value.problems[0].startswith("DATABASE_URL_FILE: cannot read")


def test_shipped_demo_config_is_valid(cli):
    from confusion_exporter.demo import demo_config_path

    result = run_cli(cli, "check-config", "--config", str(demo_config_path()))
    assert result.returncode == 0, result.stderr
    assert "digits" in result.stdout and "fraud-canary" in result.stdout


def test_a_port_in_use_exits_2_naming_the_key(tmp_path, cli):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        path = write(tmp_path, f"exporter: {{listen_address: 127.0.0.1, port: {port}}}\n" + EXAMPLE)
        result = run_cli(
            cli, "run", "--config", str(path), env={"DATABASE_URL": "postgresql://u@127.0.0.1:1/d"}
        )
    assert result.returncode == 2, result.stderr
    assert f"config error: exporter.port: cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("sequential", "expected"),
    [
        ("{min_relative_change: -0.1}", "monitors[0].sequential.min_relative_change"),
        ("{max_history: 3d}", "monitors[0].sequential.max_history: must be at least 15d"),
        ("{accept_after: soon}", "monitors[0].sequential.accept_after"),
        ("{origin: 2026-11-01T00:00:00}", "monitors[0].sequential.origin: give a time zone"),
        ("{max_clases: 5}", "monitors[0].sequential.max_clases"),
        ("{max_classes: 1}", "monitors[0].sequential.max_classes"),
    ],
)
def test_sequential_mistakes_exit_2_naming_the_key(tmp_path, cli, sequential, expected):
    path = write(tmp_path, EXAMPLE + f"    sequential: {sequential}\n")
    result = run_cli(cli, "check-config", "--config", str(path))
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_sequential_settings_reach_the_detector(tmp_path):
    path = write(
        tmp_path,
        EXAMPLE
        + "    sequential: {min_relative_change: 0.2, accept_after: null, false_alarms_per_30_days: 0.5}\n",
    )
    from confusion_exporter.parameters import sequential_parameters

    params = sequential_parameters(load_config(path, env={}).monitors[0].sequential, segments=3)
    assert (params.min_relative_change, params.accept_after_hours) == (0.2, None)
    assert (params.false_alarms_per_30_days, params.segments) == (0.5, 3)


@pytest.mark.parametrize(
    ("value", "period", "count"),
    [("seasonal:1d", timedelta(days=1), 7), ("seasonal:2h:14", timedelta(hours=2), 14)],
)
def test_a_seasonal_reference_on_the_command_line(value, period, count):  # type: ignore[no-untyped-def]
    from confusion_exporter.config import SeasonalReference, parse_reference

    assert parse_reference("--reference", value) == SeasonalReference(
        kind="seasonal", period=period, count=count
    )


@pytest.mark.parametrize("value", ["seasonal:1d:x", "seasonal:1d:0", "seasonal:soon"])
def test_a_bad_seasonal_reference_on_the_command_line_names_the_flag(value):  # type: ignore[no-untyped-def]
    from confusion_exporter.config import ConfigError, parse_reference

    with pytest.raises(ConfigError) as raised:
        parse_reference("--reference", value)
    assert str(raised.value).startswith("--reference: "), str(raised.value)
