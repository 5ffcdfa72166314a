"""The metric catalog is the one list of what the exporter exports: every ``confusion_*`` name
the alert rules, their tests and the dashboards read is in it, the README documents each of its
families, the collectors export exactly its families (a registry refuses a second copy) and the
rendered exposition passes ``promtool check metrics``. No services: a snapshot built in Python."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from confusion_exporter import metric_catalog as catalog
from confusion_exporter.exposition import (
    HealthCollector,
    SnapshotCollector,
    _ClientErrorsCollector,
    render,
    render_client_errors,
)
from confusion_exporter.snapshot import Snapshot

from . import metric_snapshots
from .conftest import ROOT

# A metric name of ours (a recording rule's name, confusion:..., has a colon instead).
NAME = re.compile(r"(?<![\w:])confusion_[A-Za-z0-9_]+")
RECORDED = re.compile(r"(?<![\w:])confusion:[A-Za-z0-9_:]+")
SUFFIX = {"gauge": "", "counter": "_total", "info": "_info"}  # prometheus_client's, no _created
CLIENT_ERRORS = {"disconnect": 3, "tls_handshake": 1}


def series_name(family: catalog.Family) -> str:
    """The name a family's samples have in Prometheus (a counter's ``_total``, an info's ``_info``)."""
    return family.name + SUFFIX[family.kind]


EXPORTED = {series_name(f) for f in catalog.ALL}


def _files(*patterns: str) -> list[Path]:
    found = [path for pattern in patterns for path in sorted(ROOT.glob(pattern))]
    assert found, f"nothing matches {patterns}"
    return found


def names_used(paths: Iterable[Path]) -> dict[str, set[str]]:
    """Each ``confusion_*`` name in the files, with the files that use it. A name ending in ``_``
    is the head of one put together in Python (an f-string); the generated dashboards hold the
    whole name."""
    used: dict[str, set[str]] = {}
    for path in paths:
        for name in NAME.findall(path.read_text(encoding="utf-8")):
            if not name.endswith("_"):
                used.setdefault(name, set()).add(path.name)
    return used


RULES = ("prometheus/rules/*.yml",)
RULE_TESTS = ("prometheus/tests/*.yml",)
DASHBOARDS = ("grafana/dashboards_src/*.py", "grafana/dashboards/*.json")
GRAFANA_ALERTS = ("grafana/provisioning/alerting/rules.yaml",)


@pytest.mark.parametrize("patterns", [RULES, RULE_TESTS, DASHBOARDS, GRAFANA_ALERTS], ids=lambda p: p[0])
def test_every_name_the_rules_and_dashboards_read_is_exported(patterns: tuple[str, ...]) -> None:
    used = names_used(_files(*patterns))
    assert used, f"no confusion_* name found in {patterns}: the scan is broken"
    missing = {name: sorted(files) for name, files in used.items() if name not in EXPORTED}
    assert not missing, f"read but not exported (a series that never exists): {missing}"


def test_every_recorded_series_read_elsewhere_is_recorded_by_a_rule() -> None:
    rules = "".join(path.read_text(encoding="utf-8") for path in _files(*RULES))
    recorded = set(re.findall(r"^\s*-?\s*record:\s*(\S+)", rules, re.M))
    assert recorded, "the rule file records no series: the scan is broken"
    used = {
        name
        for path in _files(*RULES, *RULE_TESTS, *DASHBOARDS, *GRAFANA_ALERTS)
        for name in RECORDED.findall(path.read_text(encoding="utf-8"))
    }
    assert used - recorded == set()


def test_the_scan_finds_a_name_that_is_not_exported(tmp_path: Path) -> None:
    """The check above can fail: a misspelt counter (no _total) and a made-up family are caught."""
    rule = tmp_path / "rule.yml"
    rule.write_text(
        "expr: rate(confusion_exporter_refreshes[5m]) > 0 and confusion_accuracy_ratio < 0.9\n"
        '  and confusion:accuracy_change:ratio > 0 and on (monitor) confusion_monitor_info{team="a"}\n'
    )
    used = names_used([rule])
    assert set(used) - EXPORTED == {"confusion_exporter_refreshes", "confusion_accuracy_ratio"}
    assert "confusion_monitor_info" in used


# --- The README's metric table -----------------------------------------------------------------


def readme_table_rows() -> list[list[str]]:
    """The backticked names of each row of the README's metric table, full name first."""
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("\n## Metrics\n", 1)[1]
    lines = section.split("\n## ", 1)[0].splitlines()
    rows = [line for line in lines if line.startswith("| `confusion_")]
    assert len(rows) > 30, "the README's metric table was not found"
    return [re.findall(r"`([^`]+)`", row.split("|")[1]) for row in rows]


def expand(full: str, short: str) -> set[str]:
    """The names a shorthand such as ``_recall`` (after ``confusion_class_precision``), ``_end_``
    (after ``confusion_window_start_timestamp_seconds``) can stand for: ``full`` with one run of
    its ``_``-separated words replaced by it."""
    short = short.rstrip("_")
    cuts = [i for i, c in enumerate(full) if c == "_"] + [len(full)]
    return {full[:i] + short + full[j:] for i in cuts for j in cuts if i < j}


def documented() -> tuple[set[str], set[str]]:
    """The names the table spells out in full, and those its shorthands can stand for."""
    full: set[str] = set()
    candidates: set[str] = set()
    for names in readme_table_rows():
        head = names[0]
        for name in names:
            if name.startswith("confusion_"):
                full.add(name)
                head = name
            elif name.startswith("_"):
                candidates |= expand(head, name)
    return full, candidates


def test_every_family_is_in_the_readme_metric_table() -> None:
    full, candidates = documented()
    written = full | candidates
    missing = [series_name(f) for f in catalog.ALL if series_name(f) not in written]
    assert not missing, f"add a row to the README's metric table for {missing}"


def test_every_name_spelled_out_in_the_readme_table_is_exported() -> None:
    full, _ = documented()
    assert full - EXPORTED == set(), "the README documents a series the exporter does not export"


def test_a_shorthand_expands_the_way_the_table_writes_it() -> None:
    assert expand("confusion_class_precision", "_recall") >= {"confusion_class_recall"}
    assert "confusion_window_end_timestamp_seconds" in expand(
        "confusion_window_start_timestamp_seconds", "_end_"
    )
    assert "confusion_exporter_rollup_predictions_total" in expand(
        "confusion_exporter_rollup_folds_total", "_rollup_predictions_total"
    )
    assert "confusion_class_support" not in expand("confusion_class_precision", "_recall")


# --- The catalog and the collectors ------------------------------------------------------------


def test_names_are_unique_and_the_exposition_order_holds_each_family_once() -> None:
    names = [series_name(f) for f in catalog.ALL]
    assert len(names) == len(set(names)), "a family name declared twice"
    groups = (catalog.MATRIX, catalog.SHIFT, catalog.SEQUENTIAL, catalog.COST_AND_CONFIDENCE, catalog.MONITOR)
    grouped = [f for group in groups for f in group]
    assert len(catalog.SNAPSHOT) == len(grouped) and set(catalog.SNAPSHOT) == set(grouped)
    assert set(catalog.ALL) == set(grouped) | set(catalog.HEALTH) | set(catalog.ENDPOINT)
    assert all(re.fullmatch(r"confusion_[a-z0-9_]+", f.name) and f.help for f in catalog.ALL)


def collectors() -> list[Collector]:
    return [
        SnapshotCollector(metric_snapshots.snapshot()),
        HealthCollector(metric_snapshots.health()),
        _ClientErrorsCollector(CLIENT_ERRORS),
    ]


@pytest.mark.parametrize("auto_describe", [False, True])
def test_a_registry_refuses_a_collector_registered_twice(auto_describe: bool) -> None:
    """render() uses auto_describe=False: only a real describe() lets it see the names."""
    for collector in collectors():
        registry = CollectorRegistry(auto_describe=auto_describe)
        registry.register(collector)
        with pytest.raises(ValueError, match="Duplicated timeseries"):
            registry.register(collector)
        with pytest.raises(ValueError, match="Duplicated timeseries"):
            registry.register(_copy(collector))


def _copy(collector: Collector) -> Collector:
    """Another collector of the same kind (a second exporter wired into the same registry)."""
    if isinstance(collector, SnapshotCollector):
        return SnapshotCollector(Snapshot(metric_snapshots.AT, {}))
    if isinstance(collector, HealthCollector):
        return HealthCollector(metric_snapshots.health())
    return _ClientErrorsCollector({})


def test_all_collectors_and_the_default_ones_fit_in_one_registry() -> None:
    """No family is exported by two collectors, nor clashes with process_* and python_info."""
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors():
        registry.register(collector)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    names = {metric.name for metric in registry.collect()}
    assert {f.name for f in catalog.ALL} <= names


def _signature(metric: Metric) -> tuple[str, str, str]:
    return metric.name, metric.type, metric.documentation


def test_collectors_export_exactly_the_catalog_with_its_labels() -> None:
    """describe() and collect() agree with the catalog, in its order; every sample carries the
    family's declared labels, no more, no fewer (an info family: plus its value's keys)."""
    parts = {
        SnapshotCollector: catalog.SNAPSHOT,
        HealthCollector: catalog.HEALTH,
        _ClientErrorsCollector: catalog.ENDPOINT,
    }
    seen: set[str] = set()
    for collector in collectors():
        declared = parts[type(collector)]
        expected = [(f.name, f.kind, f.help) for f in declared]
        assert [_signature(m) for m in collector.describe()] == expected
        assert all(not m.samples for m in collector.describe())
        collected = list(collector.collect())
        assert [_signature(m) for m in collected] == expected
        for family, metric in zip(declared, collected, strict=True):
            assert metric.samples, f"the test snapshot leaves {family.name} empty"
            for sample in metric.samples:
                assert sample.name == series_name(family)
                labels = set(sample.labels)
                if family.kind == "info":
                    labels -= {"version", "python_version"}
                assert labels == set(family.labels), (family.name, sample.labels)
            seen.add(family.name)
    assert seen == {f.name for f in catalog.ALL}


def test_the_package_spells_no_family_name_outside_the_catalog() -> None:
    """No second copy of a name: outside metric_catalog.py, no string literal is a family's name."""
    package = ROOT / "exporter" / "confusion_exporter"
    names = {f.name for f in catalog.ALL} | EXPORTED
    copies = {
        f"{path.relative_to(ROOT)}: {literal}"
        for path in package.rglob("*.py")
        if path.name != "metric_catalog.py"
        for literal in re.findall(r"[\"'](confusion_[a-z0-9_]+)[\"']", path.read_text(encoding="utf-8"))
        if literal in names
    }
    assert not copies


# --- promtool ----------------------------------------------------------------------------------


@pytest.mark.parametrize("monitors", ["one", "none"])
def test_promtool_finds_the_exposition_clean(promtool: str, monitors: str) -> None:
    snapshot = metric_snapshots.snapshot() if monitors == "one" else Snapshot(metric_snapshots.AT, {})
    body = (
        render(SnapshotCollector(snapshot))
        + render(HealthCollector(metric_snapshots.health()))
        + render_client_errors(CLIENT_ERRORS)
    )
    lint = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=60)
    assert lint.returncode == 0, (lint.stdout + lint.stderr).decode()
    assert lint.stdout + lint.stderr == b"", "promtool's lint warns"
    families = re.findall(rb"^# TYPE (\S+) ", body, re.M)
    assert len(families) == len(set(families)) == len(catalog.ALL)
