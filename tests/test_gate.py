"""The deployment gate, as a pipeline runs it: the real CLI, a real database, exit codes."""

from __future__ import annotations

import json
from datetime import timedelta

import numpy as np
import yaml

from confusion_exporter.printable import printable

from .conftest import run_cli
from .helpers import COLUMNS, NOW, Row, create_scored_events, insert_rows
from .test_hostile_input import HOSTILE_NAMES, unsafe_characters

CLASSES = ["a", "b", "c"]
STABLE_ERRORS = {"a": "b", "b": "c", "c": "a"}
SWAPPED_ERRORS = {"a": "c", "b": "a", "c": "b"}  # the same accuracy, other mistakes


def traffic(rng: np.random.Generator, version: str, n: int, errors: dict[str, str], error_rate: float = 0.2):
    rows = []
    for _ in range(n):
        truth = str(rng.choice(CLASSES))
        predicted = errors[truth] if rng.random() < error_rate else truth
        rows.append(
            Row(
                model="fraud",
                version=version,
                ts=NOW - timedelta(seconds=int(rng.integers(1, 3500))),
                predicted=predicted,
                actual=truth,
                score=float(rng.uniform(0.5, 1.0)),
            )
        )
    return rows


def gate(cli, tmp_path, exporter_url, table, canary, *extra):  # type: ignore[no-untyped-def]
    config = {
        "sources": [{"name": "shop", "table": table, "columns": COLUMNS}],
        "monitors": [
            {
                "source": "shop",
                "model": "fraud",
                "name": "fraud",
                "window": "1h",
                "reference": {"kind": "trailing", "length": "1d"},
                "cost_matrix": {"a": {"c": 5}},
            }
        ],
    }
    path = tmp_path / "gate.yaml"
    path.write_text(yaml.safe_dump(config))
    return run_cli(
        cli,
        "gate",
        "--config",
        str(path),
        "--monitor",
        "fraud",
        "--reference",
        "version:stable",
        "--current",
        f"version:{canary}",
        "--at",
        NOW.isoformat(),
        *extra,
        env={"DATABASE_URL": exporter_url},
    )


def test_gate_fails_a_swapped_canary_passes_an_identical_one_and_waits_for_labels(
    cli, tmp_path, admin_engine, exporter_url
):
    rng = np.random.default_rng(11)
    table = create_scored_events(admin_engine)
    insert_rows(
        admin_engine,
        table,
        traffic(rng, "stable", 3000, STABLE_ERRORS)
        + traffic(rng, "same", 3000, STABLE_ERRORS)
        + traffic(rng, "swapped", 3000, SWAPPED_ERRORS)
        + traffic(rng, "young", 20, STABLE_ERRORS),
    )

    swapped = gate(cli, tmp_path, exporter_url, table, "swapped")
    assert swapped.returncode == 1, swapped.stdout + swapped.stderr
    assert swapped.stdout.startswith("gate FAIL")
    assert "error pattern differs from stable" in swapped.stdout
    assert "predicted as" in swapped.stdout  # names the cells that moved

    same = gate(cli, tmp_path, exporter_url, table, "same")
    assert same.returncode == 0, same.stdout + same.stderr
    assert same.stdout.startswith("gate PASS")
    assert "error pattern consistent with stable" in same.stdout

    young = gate(cli, tmp_path, exporter_url, table, "young")
    assert young.returncode == 3, young.stdout + young.stderr
    assert "not enough labeled predictions yet: canary 20" in young.stdout

    # A lower minimum lets the young canary be judged (and it behaves like stable).
    judged = gate(cli, tmp_path, exporter_url, table, "young", "--min-samples", "10", "--format", "json")
    report = json.loads(judged.stdout)
    assert judged.returncode in (0, 1) and report["verdict"] in ("pass", "fail")
    assert report["segments"][0]["canary_labeled"] == 20


def test_gate_fails_on_error_cost_alone(cli, tmp_path, admin_engine, exporter_url):
    """Same error rate, but the canary's mistakes are the expensive ones (a predicted as c costs 5):
    the cost rule fails it even with a min_effect the pattern test cannot reach."""
    rng = np.random.default_rng(12)
    table = create_scored_events(admin_engine)
    expensive = {"a": "c", "b": "c", "c": "a"}
    insert_rows(
        admin_engine,
        table,
        traffic(rng, "stable", 3000, STABLE_ERRORS) + traffic(rng, "pricey", 3000, expensive),
    )
    result = gate(cli, tmp_path, exporter_url, table, "pricey", "--format", "json")
    report = json.loads(result.stdout)
    assert result.returncode == 1
    segment = report["segments"][0]
    assert segment["canary_cost"] > segment["stable_cost"] * 1.15
    assert any("mean error cost" in reason and "limit" in reason for reason in segment["reasons"])


def test_gate_argument_mistakes_exit_2(cli, tmp_path, admin_engine, exporter_url):
    table = create_scored_events(admin_engine)
    bad = gate(cli, tmp_path, exporter_url, table, "x").args  # a valid call, to reuse its config
    config = bad[bad.index("--config") + 1]
    wrong_selector = run_cli(
        cli,
        "gate",
        "--config",
        config,
        "--monitor",
        "fraud",
        "--reference",
        "stable",
        "--current",
        "version:x",
    )
    assert wrong_selector.returncode == 2
    assert "--reference: expected version:NAME" in wrong_selector.stderr
    unknown = run_cli(
        cli,
        "gate",
        "--config",
        config,
        "--monitor",
        "nope",
        "--reference",
        "version:a",
        "--current",
        "version:b",
        env={"DATABASE_URL": exporter_url},
    )
    assert unknown.returncode == 2
    assert "--monitor: no monitor named 'nope'; configured monitors: fraud" in unknown.stderr


def test_hostile_versions_segments_and_classes_print_escaped(cli, tmp_path, admin_engine, exporter_url):
    """The gate's text is read in CI logs: a name cannot forge a "gate PASS" line or drive the
    terminal; the JSON keeps every name exactly."""
    names = dict(zip(CLASSES, HOSTILE_NAMES[1:4], strict=True))
    canary, segment = HOSTILE_NAMES[0], HOSTILE_NAMES[4]
    rng = np.random.default_rng(13)
    rows = traffic(rng, "stable", 1500, STABLE_ERRORS) + traffic(rng, canary, 1500, SWAPPED_ERRORS)
    for row in rows:
        row.predicted, row.actual, row.segment = names[row.predicted], names[row.actual], segment  # type: ignore[index]
    table = create_scored_events(admin_engine)
    insert_rows(admin_engine, table, rows)
    text = gate(cli, tmp_path, exporter_url, table, canary)
    assert text.returncode == 1, text.stdout + text.stderr
    assert not unsafe_characters(text.stdout)
    lines = text.stdout.splitlines()
    assert lines[0].startswith("gate FAIL") and not any(line.startswith("FORGED") for line in lines)
    assert (
        f"{printable(canary)} (canary)" in lines[0] and f"segment {printable(segment)}: fail" in text.stdout
    )
    assert any(f"true {printable(names[c])} predicted as" in text.stdout for c in CLASSES)
    report = json.loads(gate(cli, tmp_path, exporter_url, table, canary, "--format", "json").stdout)
    assert (report["canary"], report["segments"][0]["segment"]) == (canary, segment)
