"""Static checks of the Grafana and Prometheus files: schemas, references, PromQL, drift.

Grafana is not available here, so what Grafana would reject or silently ignore is checked
against the schemas in ../shared/schemas (with the relaxations their SOURCES.md documents),
and every PromQL expression is parsed by the real promtool.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT.parent / "shared" / "schemas"
SDK_SCHEMAS = SCHEMAS / "grafana-foundation-sdk" / "v11.6.x"
DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
ALERTING = sorted((ROOT / "grafana" / "provisioning" / "alerting").glob("*.yaml"))
RULE_FILES = sorted((ROOT / "prometheus" / "rules").glob("*.yml"))
DATASOURCES = ROOT / "grafana" / "provisioning" / "datasources" / "prometheus.yaml"
DASHBOARD_PROVIDER = ROOT / "grafana" / "provisioning" / "dashboards" / "confusion-exporter.yaml"
RUNBOOK = ROOT / "docs" / "runbook.md"


def schema_file(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"{path} is missing: the tests expect ../shared/schemas beside the repository")
    return path


def relaxed(schema: Any) -> Any:
    """Apply SOURCES.md's documented relaxations of the cog-generated foundation-sdk schemas."""
    if isinstance(schema, dict):
        if (
            schema.get("type") == "object"
            and not schema.get("properties")
            and set(schema) <= {"type", "description", "additionalProperties"}
        ):
            return {}  # fields typed 'any' were emitted as objects (e.g. matcher.options)
        out = {k: relaxed(v) for k, v in schema.items()}
        if "oneOf" in out:
            out["anyOf"] = out.pop("oneOf")  # un-discriminated unions match several branches
        if isinstance(out.get("required"), list):
            out["required"] = [r for r in out["required"] if r not in ("align", "inspect")]
        props = out.get("properties")
        if isinstance(props, dict) and "unit" in props and "decimals" in props:
            props.setdefault("unitScale", {})  # fieldConfig.defaults.unitScale is absent
        return out
    if isinstance(schema, list):
        return [relaxed(s) for s in schema]
    return schema


def load_schema(name: str) -> dict[str, Any]:
    schema = relaxed(json.loads(schema_file(SDK_SCHEMAS / name).read_text()))
    threshold = schema.get("definitions", {}).get("Threshold")
    if threshold:
        # One more false positive of the same kind: Grafana's base threshold step is
        # {"value": null} (-Infinity), which Grafana writes itself; cog types it as a number.
        threshold["properties"]["value"] = {"type": ["number", "null"]}
    return schema


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def test_generated_files_match_their_sources():
    result = subprocess.run(
        [sys.executable, str(ROOT / "grafana" / "generate.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_three_dashboards_with_stable_unique_uids():
    uids = [json.loads(p.read_text())["uid"] for p in DASHBOARDS]
    assert sorted(uids) == ["confusion-exporter-health", "confusion-model-detail", "confusion-overview"]
    assert [p.stem for p in DASHBOARDS] == sorted(uids)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_validates_against_the_schema(path):
    schema = load_schema("dashboard.jsonschema.json")
    dashboard = json.loads(path.read_text())
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(dashboard), key=str)
    assert not errors, [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in errors[:5]]
    table = load_schema("table.jsonschema.json")
    for panel in panels(dashboard):
        if panel["type"] != "table":
            continue
        for part, definition in (
            (panel.get("options", {}), "Options"),
            (panel["fieldConfig"]["defaults"].get("custom", {}), "TableFieldOptions"),
        ):
            sub = {**table, "$ref": f"#/definitions/{definition}"}
            errors = list(jsonschema.Draft7Validator(sub).iter_errors(part))
            assert not errors, (panel["title"], [e.message[:200] for e in errors[:3]])


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_every_panel_has_title_description_unit_and_a_known_datasource(path):
    text = path.read_text()
    assert "${DS_" not in text  # no import placeholders
    dashboard = json.loads(text)
    assert dashboard["title"] and dashboard["description"]
    provisioned = {d["uid"] for d in yaml.safe_load(DATASOURCES.read_text())["datasources"]}
    variable = next(v for v in dashboard["templating"]["list"] if v["type"] == "datasource")
    assert variable["current"]["value"] in provisioned
    for panel in panels(dashboard):
        if panel["type"] == "row":
            assert panel["title"]
            continue
        assert panel.get("title"), panel
        assert len(panel.get("description", "")) > 40, panel["title"]
        assert panel["fieldConfig"]["defaults"].get("unit"), panel["title"]
        for ref in [panel.get("datasource")] + [t.get("datasource") for t in panel.get("targets", [])]:
            assert ref and ref["uid"] in provisioned | {"${datasource}"}, panel["title"]
        assert panel.get("targets"), panel["title"]


def test_dashboards_folder_differs_from_the_alert_folder():
    dashboard_folders = {p["folder"] for p in yaml.safe_load(DASHBOARD_PROVIDER.read_text())["providers"]}
    rules = yaml.safe_load((ROOT / "grafana" / "provisioning" / "alerting" / "rules.yaml").read_text())
    alert_folders = {g["folder"] for g in rules["groups"]}
    assert alert_folders and not (alert_folders & dashboard_folders)


@pytest.mark.parametrize("path", ALERTING, ids=lambda p: p.name)
def test_alerting_file_validates_against_the_derived_schema(path):
    schema = json.loads(
        schema_file(SCHEMAS / "grafana-alerting-file-provisioning-v1.derived.schema.json").read_text()
    )
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(yaml.safe_load(path.read_text())))
    assert not errors, [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in errors[:5]]


def grafana_rules() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    rules = yaml.safe_load((ROOT / "grafana" / "provisioning" / "alerting" / "rules.yaml").read_text())
    return [(group, rule) for group in rules["groups"] for rule in group["rules"]]


def duration_seconds(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([smhd])", text))


def test_grafana_rules_are_well_formed():
    provisioned = {d["uid"] for d in yaml.safe_load(DATASOURCES.read_text())["datasources"]}
    uids = set()
    for group, rule in grafana_rules():
        interval = duration_seconds(group["interval"])
        assert interval > 0 and interval % 10 == 0, group["interval"]  # else Grafana exits at start
        refs = [d["refId"] for d in rule["data"]]
        assert rule["condition"] in refs, rule["title"]
        for item in rule["data"]:
            assert item["datasourceUid"] in provisioned | {"__expr__"}, rule["title"]
            assert item["model"]["refId"] == item["refId"]
            expression = item["model"].get("expression")
            if expression:
                assert expression in refs
        assert rule.get("for"), rule["title"]
        # A template may only read the values of the rule's own queries and expressions.
        for text in rule["annotations"].values():
            assert set(re.findall(r"\$values\.(\w+)", text)) <= set(refs), rule["title"]
            assert "| query" not in text, rule["title"]  # Grafana has no `query` function
        # Labels are interpolated from the environment by Grafana: a '$' there would vanish.
        assert not any("$" in str(v) for v in rule["labels"].values()), rule["title"]
        assert {"severity", "team"} <= set(rule["labels"]) or "team" not in rule["labels"]
        assert rule["uid"] not in uids and len(rule["uid"]) <= 40
        uids.add(rule["uid"])


def prometheus_alerts() -> list[dict[str, Any]]:
    out = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            out.extend(r for r in group["rules"] if "alert" in r)
    return out


def test_grafana_rules_mirror_the_prometheus_rules():
    grafana = {rule["title"]: rule for _, rule in grafana_rules()}
    prometheus = {r["alert"]: r for r in prometheus_alerts()}
    assert set(grafana) == set(prometheus)
    for name, source in prometheus.items():
        rule = grafana[name]
        assert rule["data"][0]["model"]["expr"] == source["expr"].strip()
        assert rule["for"] == source["for"]
        assert rule["labels"] == source["labels"]
        assert set(rule["annotations"]) == set(source["annotations"])


def test_every_alert_has_severity_team_summary_description_runbook_and_dashboard():
    runbook = RUNBOOK.read_text()
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
        for h in re.findall(r"^## (.+)$", runbook, re.M)
    }
    for rule in prometheus_alerts():
        assert re.fullmatch(r"Confusion[A-Z][A-Za-z]+", rule["alert"])
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert "team" in rule["labels"] or "group_left (team)" in rule["expr"], rule["alert"]
        annotations = rule["annotations"]
        assert "{{" not in annotations["summary"]  # static summary
        assert "{{" in annotations["description"]  # templated description
        anchor = annotations["runbook_url"].split("#", 1)[1]
        assert anchor == rule["alert"].lower() and anchor in anchors, rule["alert"]
        assert annotations["dashboard_url"].startswith("http")


def all_promql() -> list[tuple[str, str]]:
    """Every PromQL expression of the dashboards and rules, with template variables filled in."""
    exprs = []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                exprs.append((f"{path.stem}: {panel['title']}", target["expr"]))
        for variable in dashboard["templating"]["list"]:
            query = variable.get("query")
            if isinstance(query, dict):
                match = re.fullmatch(r"label_values\((.*), *\w+\)", query["query"])
                assert match, query
                exprs.append((f"{path.stem}: variable {variable['name']}", match.group(1)))
    for _, rule in grafana_rules():
        for item in rule["data"]:
            if item["datasourceUid"] != "__expr__":
                exprs.append((f"grafana rule {rule['title']} ({item['refId']})", item["model"]["expr"]))
    return exprs


def fill_variables(expr: str) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: "1m" if m.group(1) == "__rate_interval" else "x", expr)


def test_every_promql_expression_parses(promtool, tmp_path):
    exprs = all_promql()
    rules = {
        "groups": [
            {
                "name": "parse",
                "rules": [
                    {"record": f"parse:check_{i}:x", "expr": fill_variables(expr)}
                    for i, (_, expr) in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "parse.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout


def test_prometheus_rules_check_and_unit_tests_pass(promtool):
    check = subprocess.run(
        [promtool, "check", "rules", *map(str, RULE_FILES)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    tests = sorted((ROOT / "prometheus" / "tests").glob("*.yml"))
    run = subprocess.run([promtool, "test", "rules", *map(str, tests)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout


def test_every_alert_is_unit_tested_firing_and_silent():
    tested_firing, tested_silent = set(), set()
    for path in (ROOT / "prometheus" / "tests").glob("*.yml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (tested_firing if check.get("exp_alerts") else tested_silent).add(check["alertname"])
    names = {r["alert"] for r in prometheus_alerts()}
    assert names <= tested_firing, names - tested_firing
    assert names <= tested_silent, names - tested_silent


def test_prometheus_config_passes_promtool(promtool):
    config = ROOT / "prometheus" / "prometheus.yml"
    result = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr
    assert "rules/*.yml" in yaml.safe_load(config.read_text())["rule_files"]


def test_sequential_panels_name_cells_in_the_alerts_words_and_code_the_state(promtool, tmp_path):
    """The sequential panels' queries, evaluated by promtool on the exporter's series for the
    three kinds of cell: each gets the alert's words in ``cell``, the version variable is not
    needed (the series have none), and the state (Model detail's stat, the Overview's table)
    reads 2 for a shift."""
    dashboard = json.loads((ROOT / "grafana" / "dashboards" / "confusion-model-detail.json").read_text())
    by_title = {p["title"]: p for p in panels(dashboard)}
    table = by_title["Error rates: reference, current, relative change"]
    rate = next(t["expr"] for t in table["targets"] if t["refId"] == "B")
    state = by_title["Sequential state"]["targets"][0]["expr"]
    overview = json.loads((ROOT / "grafana" / "dashboards" / "confusion-overview.json").read_text())
    per_slice = next(p for p in panels(overview) if p["title"].startswith("Sequential state per slice"))
    slice_state = per_slice["targets"][0]["expr"]
    values = {"monitor": "shop:intents", "model": "router", "segment": "us"}
    assert "$version" not in rate + state

    def fill(expr: str) -> str:
        return re.sub(r"\$\{?(\w+)\}?", lambda m: values[m.group(1)], expr)

    base = 'job="confusion-exporter", instance="a:9745", monitor="shop:intents", model="router", segment="us"'
    cells = {
        'kind="confusion", true_class="legit", predicted_class="fraud"': "legit predicted as fraud",
        'kind="error", true_class="billing"': "billing predicted as any other class",
        'kind="false_discovery", true_class="billing", predicted_class="refund"': "predicted refund but truly billing",
    }
    series = [
        {"series": f'confusion_sequential_error_rate{{{base}, {cell}, window="{w}"}}', "values": f"{v}x5"}
        for cell in cells
        for w, v in (("reference", "0.03"), ("current", "0.0345"))
    ]
    series += [
        {
            "series": f'confusion_sequential_state{{{base}, state="{s}"}}',
            "values": "1x5" if s == "shift" else "0x5",
        }
        for s in ("stable", "accumulating", "shift", "insufficient_data")
    ]
    expected = [
        {
            "labels": "{" + ", ".join([base.split(", ", 2)[2], cell, f'cell="{words}"']) + "}",
            "value": 0.0345,
        }
        for cell, words in cells.items()
    ]
    case = {
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [
                    {"expr": fill(rate), "eval_time": "3m", "exp_samples": expected},
                    {"expr": fill(state), "eval_time": "3m", "exp_samples": [{"labels": "{}", "value": 2}]},
                    {
                        "expr": slice_state,
                        "eval_time": "3m",
                        "exp_samples": [
                            {"labels": '{monitor="shop:intents", model="router", segment="us"}', "value": 2}
                        ],
                    },
                ],
            }
        ],
    }
    path = tmp_path / "sequential.test.yml"
    path.write_text(yaml.safe_dump(case, width=1000))
    run = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_rate_shift_value_is_the_estimate_when_positive_else_the_latch(promtool, tmp_path):
    """ConfusionErrorRateShift's expression, as the rule file has it, evaluated by promtool:
    the value is the relative change estimate while it is positive, 1 for a latched cell whose
    estimate is missing or not positive (so the Grafana copy, value > 0, fires on the same
    series), and nothing for a cell that is not latched."""
    expr = next(r["expr"] for r in prometheus_alerts() if r["alert"] == "ConfusionErrorRateShift")
    base = (
        'job="confusion-exporter", instance="a:9745", monitor="m", model="f", segment="eu", kind="confusion"'
    )
    cells = {"a": ("1", "0.15", 0.15), "b": ("1", "-0.02", 1), "c": ("1", None, 1), "d": ("0", "0.4", None)}
    series = [
        {
            "series": 'confusion_monitor_info{monitor="m", team="t", source="s", model_pattern="f"}',
            "values": "1x5",
        }
    ]
    expected = []
    for true, (shifted, estimate, value) in cells.items():
        cell = f'{base}, true_class="{true}", predicted_class="x"'
        series.append({"series": f"confusion_sequential_shifted{{{cell}}}", "values": f"{shifted}x5"})
        if estimate is not None:
            series.append(
                {
                    "series": f'confusion_sequential_relative_change_ratio{{{cell}, bound="estimate"}}',
                    "values": f"{estimate}x5",
                }
            )
        if value is not None:
            labels = f'{{{base}, true_class="{true}", predicted_class="x", team="t"}}'  # instance, job kept
            expected.append({"labels": labels, "value": value})
    case = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [{"expr": expr, "eval_time": "3m", "exp_samples": expected}],
            }
        ],
    }
    path = tmp_path / "value.test.yml"
    path.write_text(yaml.safe_dump(case, width=1000))
    run = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_every_sequential_panel_query_has_data_on_the_exporters_contract(promtool, tmp_path):
    """What tests/test_grafana_live.py demands of every panel (data for the slice), here for the
    sequential panels on the series the exporter's contract names, with the project's
    recording rules loaded: ``absent(query)`` is empty exactly when the query has data."""
    queries = []
    for path in DASHBOARDS:
        for panel in panels(json.loads(path.read_text())):
            for target in panel.get("targets", []):
                if "sequential" in target["expr"]:
                    queries.append((f"{path.stem}: {panel['title']} ({target['refId']})", target["expr"]))
    assert len(queries) >= 14, queries
    values = {"monitor": "shop:fraud", "model": "fraud", "segment": "eu", "version": "v1"}

    def fill(expr: str) -> str:
        return re.sub(r"\$\{?(\w+)\}?", lambda m: values[m.group(1)], expr)

    base = 'job="confusion-exporter", instance="a:9745", monitor="shop:fraud", model="fraud", segment="eu"'
    series = [
        {
            "series": 'confusion_monitor_info{monitor="shop:fraud", team="t", source="s", model_pattern="f"}',
            "values": "1x9",
        },
        {"series": f"confusion_sequential_threshold{{{base}}}", "values": "10.86x9"},
        {
            "series": 'confusion_sequential_period_end_timestamp_seconds{monitor="shop:fraud"}',
            "values": "0x9",
        },
    ]
    series += [
        {"series": f'confusion_sequential_state{{{base}, state="{s}"}}', "values": f"{int(s == 'stable')}x9"}
        for s in ("stable", "accumulating", "shift", "insufficient_data")
    ]
    for true, predicted in (("legit", "fraud"), ("fraud", "legit")):
        cell = f'{base}, kind="confusion", true_class="{true}", predicted_class="{predicted}"'
        series += [
            {"series": f"confusion_sequential_evidence{{{cell}}}", "values": "1.5x9"},
            {"series": f"confusion_sequential_shifted{{{cell}}}", "values": "0x9"},
        ]
        for window in ("reference", "current"):
            series += [
                {
                    "series": f'confusion_sequential_error_rate{{{cell}, window="{window}"}}',
                    "values": "0.03x9",
                },
                {"series": f'confusion_sequential_trials{{{cell}, window="{window}"}}', "values": "3000x9"},
            ]
        series += [
            {
                "series": f'confusion_sequential_relative_change_ratio{{{cell}, bound="{b}"}}',
                "values": "0.01x9",
            }
            for b in ("estimate", "lower", "upper")
        ]
    case = {
        "rule_files": [str(p) for p in RULE_FILES],
        "evaluation_interval": "30s",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [
                    {"expr": f"absent({fill(expr)})", "eval_time": "5m", "exp_samples": []}
                    for _, expr in queries
                ],
            }
        ],
    }
    path = tmp_path / "contract.test.yml"
    path.write_text(yaml.safe_dump(case, width=1000))
    run = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
