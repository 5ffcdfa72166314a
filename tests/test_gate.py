"""The deployment gate, as a pipeline runs it: the real CLI, a real database, exit codes.

The gate is sequential (stats/sequential_gate.py): it fails once a rise is shown, passes once
every error rate and the cost are shown within the margin, and waits otherwise. The polling
tests run the gate's own code in-process on seeded streams in PostgreSQL, one poll after
another from the same start, as a pipeline would.
"""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import timedelta

import numpy as np
import pytest
import sqlalchemy as sa
import yaml

from confusion_exporter.config import config_from_mapping
from confusion_exporter.gate import run_gate
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


def test_gate_fails_a_swapped_canary_and_waits_on_an_identical_one_and_for_labels(
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
    assert "error rate up in" in swapped.stdout
    # Names the cells that moved, in words, with the change and its confidence sequence:
    # a predicted as c was never seen in stable, 20% of a's in the canary.
    assert re.search(r"a predicted as c: 0\.00% -> 1\d\.\d\d%, \+inf \[\+\d+%, \+inf\]", swapped.stdout)
    assert "the canary's first prediction" in swapped.stdout

    # An identical canary at 3,000 labeled predictions and 20% errors: nothing is shown up,
    # but a 10% margin on error rates of 20% needs far more labels to be shown: wait.
    same = gate(cli, tmp_path, exporter_url, table, "same", "--format", "json")
    report = json.loads(same.stdout)
    assert same.returncode == 3, same.stdout + same.stderr
    (segment,) = report["segments"]
    assert {c["state"] for c in segment["cells"]} == {"undecided"}
    assert any("not yet shown within the margin +10%" in r for r in segment["reasons"])
    assert report["min_relative_change"] == 0.1 and report["min_absolute_change"] == 0.001
    cell = next(c for c in segment["cells"] if c["description"] == "a predicted as b")
    assert cell["relative_change_low"] < cell["relative_change"] < cell["relative_change_high"]
    assert cell["margin"] == pytest.approx(0.1 * cell["stable_rate"])

    young = gate(cli, tmp_path, exporter_url, table, "young")
    assert young.returncode == 3, young.stdout + young.stderr
    assert "not enough labeled predictions yet: canary 20" in young.stdout

    # A lower minimum lets the young canary be judged: 20 labels show nothing either way.
    judged = gate(cli, tmp_path, exporter_url, table, "young", "--min-samples", "10", "--format", "json")
    report = json.loads(judged.stdout)
    assert judged.returncode == 3 and report["verdict"] == "insufficient_data"
    assert report["segments"][0]["canary_labeled"] == 20
    assert report["segments"][0]["cells"], "judged cell by cell, not waiting for labels"


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
    # A sliding window would make every poll a new test: named, with the flag to use instead.
    window = gate(cli, tmp_path, exporter_url, table, "x", "--window", "2h")
    assert window.returncode == 2 and "--window: the gate is sequential" in window.stderr
    assert "use --since TIMESTAMP" in window.stderr and "Traceback" not in window.stderr
    late = gate(cli, tmp_path, exporter_url, table, "x", "--since", (NOW + timedelta(hours=1)).isoformat())
    assert late.returncode == 2 and "--since: " in late.stderr and "is not before" in late.stderr
    # No prediction of the canary yet: wait, and say so.
    none = gate(cli, tmp_path, exporter_url, table, "x")
    assert none.returncode == 3 and "no predictions of x yet" in none.stdout


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
    assert any(f"{printable(names[c])} predicted as" in text.stdout for c in CLASSES)
    report = json.loads(gate(cli, tmp_path, exporter_url, table, canary, "--format", "json").stdout)
    assert (report["canary"], report["segments"][0]["segment"]) == (canary, segment)


# --------------------------------------------------------------------------------------------
# Polling: the same start on every poll, a growing sample
# --------------------------------------------------------------------------------------------

START = NOW - timedelta(hours=8)
POLLS = [START + timedelta(minutes=30 * i) for i in range(1, 17)]  # every 30 min for 8 hours


def copy_stream(
    engine,  # type: ignore[no-untyped-def]
    table: str,
    rng: np.random.Generator,
    classes: list[str],
    priors: list[float],
    confusion: dict[str, list[float]],
    versions: dict[str, float],
    per_hour: float,
    hours: float,
    model: str = "fraud",
) -> None:
    """Seeded traffic from START for ``hours``: each version takes its share of ``per_hour``
    labeled predictions; ``confusion[version]`` is the error rate of each true class, P(predicted
    as the other class | true class) (K = 2). Written with COPY: a rollout's volume in a second or two."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    for version, share in versions.items():
        n = int(rng.poisson(per_hour * hours * share))
        seconds = np.sort(rng.uniform(0, hours * 3600, n))
        truth = rng.choice(len(classes), size=n, p=priors)
        flips = rng.random(n) < np.asarray(confusion[version])[truth]
        predicted = np.where(flips, 1 - truth, truth)
        for second, t, p in zip(seconds, truth, predicted, strict=True):
            ts = (START + timedelta(seconds=float(second))).isoformat()
            writer.writerow([model, version, ts, classes[p], classes[t]])
    schema, name = table.split(".")
    buffer.seek(0)
    raw = engine.raw_connection()
    try:
        with raw.cursor() as cursor:
            cursor.copy_expert(
                f'COPY "{schema}"."{name}" (clf, clf_ver, ts, yhat, y) FROM STDIN WITH CSV', buffer
            )
        raw.commit()
    finally:
        raw.close()


def gate_config(table: str, alpha: float):  # type: ignore[no-untyped-def]
    return config_from_mapping(
        {
            "sources": [{"name": "shop", "table": table, "columns": COLUMNS}],
            "monitors": [
                {
                    "source": "shop",
                    "model": "fraud",
                    "name": "fraud",
                    "window": "1h",
                    "reference": {"kind": "trailing", "length": "1d"},
                    "alpha": alpha,
                }
            ],
        },
        env={},
    )


def poll(exporter_url: str, config, canary: str, instants):  # type: ignore[no-untyped-def]
    """The gate's verdict at each instant, each counted from the canary's first prediction."""
    engine = sa.create_engine(exporter_url)
    try:
        with engine.connect() as connection:
            return [run_gate(connection, config, "fraud", "stable", canary, at) for at in instants]
    finally:
        engine.dispose()


def test_an_identical_canary_never_fails_across_polls_and_passes_eventually(admin_engine, exporter_url):
    """Two classes at 50/50, 25% errors each way, a canary on half of 10,000 labeled
    predictions an hour: 16 polls over 8 hours. Every poll counts from the same start (the
    canary's first prediction); none fails, and once the margin (+10% of 25%, 2.5 points) is
    shown for both error rates and the cost, the gate passes and stays passing."""
    rng = np.random.default_rng(21)
    table = create_scored_events(admin_engine)
    copy_stream(
        admin_engine,
        table,
        rng,
        ["ham", "spam"],
        [0.5, 0.5],
        {"stable": [0.25, 0.25], "twin": [0.25, 0.25]},
        {"stable": 0.5, "twin": 0.5},
        per_hour=10_000,
        hours=8,
    )
    reports = poll(exporter_url, gate_config(table, 0.01), "twin", POLLS)
    verdicts = [r.verdict for r in reports]
    assert "fail" not in verdicts, verdicts
    assert {r.since for r in reports} == {reports[0].since}  # one start for every poll
    assert reports[0].since_source == "the canary's first prediction"
    first_pass = verdicts.index("pass")
    assert 0 < first_pass < len(verdicts) - 1, verdicts  # waited first, then passed
    assert set(verdicts[first_pass:]) == {"pass"}, verdicts
    (segment,) = reports[first_pass].segments
    assert {c.state for c in segment.cells} == {"within_margin"}
    assert all(c.relative_change_high < 0.10 or c.difference_high < 0.001 for c in segment.cells)
    assert segment.cost_increase_upper_bound < 0.15
    assert any("every error rate within the margin" in reason for reason in segment.reasons)


def test_the_seed_incident_fails_and_names_the_cell(cli, tmp_path, admin_engine, exporter_url):
    """Issue 15's incident on a canary: 2% fraud, legit predicted as fraud 3.00% -> 3.45%
    (+15%), accuracy 96.7% -> 96.2%, each version on half of 30,000 labeled predictions an
    hour. Polled every hour, the gate waits, then fails on that cell (never passes),
    at the default alpha 0.001; the CLI prints the cell in words."""
    rng = np.random.default_rng(22)
    table = create_scored_events(admin_engine)
    copy_stream(
        admin_engine,
        table,
        rng,
        ["legit", "fraud"],
        [0.98, 0.02],
        {"stable": [0.03, 0.18], "seeded": [0.0345, 0.18]},
        {"stable": 0.5, "seeded": 0.5},
        per_hour=30_000,
        hours=8,
    )
    reports = poll(exporter_url, gate_config(table, 0.001), "seeded", POLLS[1::2])  # hourly
    verdicts = [r.verdict for r in reports]
    assert "pass" not in verdicts, verdicts
    first_fail = verdicts.index("fail")
    assert first_fail > 0, verdicts  # the first looks cannot tell +15% from noise
    (segment,) = reports[first_fail].segments
    (harmful,) = (c for c in segment.cells if c.state == "harmful")
    assert harmful.description == "legit predicted as fraud"
    assert harmful.difference_low > 0 and harmful.relative_change_low > 0
    config = tmp_path / "seed.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "sources": [{"name": "shop", "table": table, "columns": COLUMNS}],
                "monitors": [
                    {
                        "source": "shop",
                        "model": "fraud",
                        "name": "fraud",
                        "window": "1h",
                        "reference": {"kind": "trailing", "length": "1d"},
                    }
                ],
            }
        )
    )
    text = run_cli(
        cli,
        "gate",
        "--config",
        str(config),
        "--monitor",
        "fraud",
        "--reference",
        "version:stable",
        "--current",
        "version:seeded",
        "--at",
        NOW.isoformat(),
        "--since",
        START.isoformat(),
        env={"DATABASE_URL": exporter_url},
    )
    assert text.returncode == 1, text.stdout + text.stderr
    line = next(line for line in text.stdout.splitlines() if "legit predicted as fraud:" in line)
    assert re.search(r"legit predicted as fraud: 3\.\d\d% -> 3\.\d\d%, \+1\d% \[\+\d+%, \+\d+%\]", line), line
    assert "counting since " + START.isoformat() + " (--since)" in text.stdout
