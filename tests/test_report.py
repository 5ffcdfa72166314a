"""The error-analysis report from the real CLI over a real database: its figures equal
scikit-learn and a direct calibration computation on the same rows, its shift reads in words,
and its HTML opens in headless Chromium with cells equal to the JSON."""

from __future__ import annotations

import json
from datetime import timedelta

import numpy as np
import pytest
import yaml
from sklearn.metrics import classification_report, confusion_matrix

from confusion_exporter.printable import printable

from .browser import ReportReader, render_in_browser
from .conftest import run_cli
from .helpers import COLUMNS, NOW, Row, create_scored_events, insert_rows
from .test_hostile_input import HOSTILE_NAMES, unsafe_characters
from .test_scores import direct_confidence

CLASSES = ["a", "b", 'c "<q>&']  # a class name that must be escaped in HTML
END = NOW.replace(second=0, microsecond=0)
START = END - timedelta(hours=1)


def make_rows(rng: np.random.Generator) -> list[Row]:
    """v1 and v2 over 4 h; in the last hour v1 confuses a with b four times as often."""
    rows = []
    for version in ("v1", "v2"):
        for _ in range(2400):
            ts = END - timedelta(seconds=int(rng.integers(1, 4 * 3600)))
            truth = str(rng.choice(CLASSES, p=[0.5, 0.3, 0.2]))
            confusion = 0.32 if (version == "v1" and truth == "a" and ts >= START) else 0.08
            predicted = truth
            if rng.random() < confusion:
                predicted = "b" if truth == "a" else str(rng.choice([c for c in CLASSES if c != truth]))
            right = predicted == truth
            score = float(np.clip(rng.beta(8, 2) if right else rng.beta(3, 3), 1 / 3, 1.0))
            actual = None if rng.random() < 0.1 else truth
            rows.append(Row("m", version, ts, predicted, actual, score=score))
    return rows


@pytest.fixture(scope="module")
def report_setup(admin_engine, exporter_url, tmp_path_factory):  # type: ignore[no-untyped-def]
    rows = make_rows(np.random.default_rng(21))
    table = create_scored_events(admin_engine)
    insert_rows(admin_engine, table, rows)
    config = {
        "sources": [{"name": "shop", "table": table, "columns": COLUMNS}],
        "monitors": [
            {
                "source": "shop",
                "model": "m",
                "name": "m",
                "window": "1h",
                "reference": {"kind": "trailing", "length": "3h"},
                "high_confidence": 0.8,
            }
        ],
    }
    path = tmp_path_factory.mktemp("report") / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return rows, path


def run_report(cli, exporter_url, path, *extra):  # type: ignore[no-untyped-def]
    result = run_cli(
        cli,
        "report",
        "--config",
        str(path),
        "--monitor",
        "m",
        "--from",
        START.isoformat(),
        "--to",
        END.isoformat(),
        *extra,
        env={"DATABASE_URL": exporter_url},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def labeled(rows: list[Row], version: str, start, end) -> list[Row]:  # type: ignore[no-untyped-def]
    return [r for r in rows if r.version == version and start <= r.ts < end and r.actual is not None]


def test_report_figures_equal_sklearn_and_direct_calibration(cli, exporter_url, report_setup):
    rows, path = report_setup
    report = json.loads(run_report(cli, exporter_url, path, "--format", "json"))
    assert report["windows"]["current"] == {"start": START.isoformat(), "end": END.isoformat()}
    assert report["windows"]["reference"]["start"] == (START - timedelta(hours=3)).isoformat()
    assert [s["version"] for s in report["slices"]] == ["v1", "v2"]
    for entry in report["slices"]:
        classes = entry["matrices"]["classes"]
        assert sorted(classes) == sorted(CLASSES)
        for window, (start, end) in {
            "current": (START, END),
            "reference": (START - timedelta(hours=3), START),
        }.items():
            members = labeled(rows, entry["version"], start, end)
            truth, predicted = [r.actual for r in members], [r.predicted for r in members]
            expected = confusion_matrix(truth, predicted, labels=classes)
            assert entry["matrices"][window] == expected.tolist()
            sk = classification_report(
                truth, predicted, labels=classes, output_dict=True, zero_division=np.nan
            )
            assert entry["overall"][window]["labeled"] == len(members)
            assert entry["overall"][window]["accuracy"] == pytest.approx(sk["accuracy"])
            assert entry["overall"][window]["macro_f1"] == pytest.approx(sk["macro avg"]["f1-score"])
            conf = entry["confidence"][window]
            direct = direct_confidence(members, 10, 0.8)
            assert conf["scored"] == direct["scored"]
            assert conf["expected_calibration_error"] == pytest.approx(direct["ece"], abs=1e-12)
            assert conf["mean_confidence_incorrect"] == pytest.approx(direct["incorrect"])
            assert conf["high_confidence_error_share"] == pytest.approx(direct["high_share"])
            if window == "current":
                by_class = {c["class"]: c for c in entry["classes"]}
                for name in classes:
                    assert by_class[name]["precision"] == pytest.approx(sk[name]["precision"])
                    assert by_class[name]["recall"] == pytest.approx(sk[name]["recall"])
                    assert by_class[name]["f1"] == pytest.approx(sk[name]["f1-score"])
                    assert by_class[name]["support"] == sk[name]["support"]
                f1s = [c["f1"] for c in entry["classes"]]
                assert f1s == sorted(f1s)  # worst first
                for c in entry["classes"]:
                    expected_diagnosis = (
                        "over-predicted"
                        if c["precision"] < c["recall"]
                        else "under-predicted"
                        if c["recall"] < c["precision"]
                        else "balanced"
                    )
                    assert c["diagnosis"] == expected_diagnosis
        # Most-confused pairs: the largest off-diagonal cells, with their row shares.
        current = np.array(entry["matrices"]["current"])
        top = entry["confused_pairs"][0]
        i, j = classes.index(top["true_class"]), classes.index(top["predicted_class"])
        assert top["count"] == max(current[x, y] for x in range(3) for y in range(3) if x != y)
        assert top["share"] == pytest.approx(current[i, j] / current[i].sum())
    v1, v2 = report["slices"]
    states = {t["test"]: t["state"] for t in v1["shift"]["tests"]}
    assert states["error_pattern"] == "shift"
    assert {t["test"]: t["state"] for t in v2["shift"]["tests"]}["error_pattern"] != "shift"
    first = v1["shift"]["cells"][0]
    assert (first["true_class"], first["predicted_class"]) in {("a", "b"), ("a", "a")}
    assert "a" in [r["true_class"] for r in v1["shift"]["rows_moved"]]


def test_report_text_says_what_moved_in_words(cli, exporter_url, report_setup):
    _, path = report_setup
    text = run_report(cli, exporter_url, path)
    report = json.loads(run_report(cli, exporter_url, path, "--format", "json"))
    cell = next(
        c
        for c in report["slices"][0]["shift"]["cells"]
        if (c["true_class"], c["predicted_class"]) == ("a", "b")
    )
    sentence = f"true a predicted as b: {cell['reference_share']:.1%} → {cell['current_share']:.1%} of as"
    assert sentence in text
    assert text.count("The error pattern shifted") == 1  # v1 only
    assert cell["current_share"] > 2 * cell["reference_share"]


def test_html_report_is_self_contained_and_its_cells_equal_the_json(
    cli,
    exporter_url,
    report_setup,
    tmp_path,
    chromium,  # noqa: F811
):
    _, path = report_setup
    out = tmp_path / "report.html"
    run_report(cli, exporter_url, path, "--format", "html", "--output", str(out))
    html = out.read_text()
    assert "<script" not in html and "<q>" not in html  # the class name was escaped
    for attribute in ("src=", "href=", "@import", "url("):
        assert attribute not in html  # no external assets
    report = json.loads(run_report(cli, exporter_url, path, "--format", "json"))
    reader = ReportReader()
    reader.feed(render_in_browser(chromium, out.as_uri()))
    expected = {
        (entry["version"], entry["segment"], window, t, p): entry["matrices"][window][i][j]
        for entry in report["slices"]
        for window in ("current", "reference")
        for i, t in enumerate(entry["matrices"]["classes"])
        for j, p in enumerate(entry["matrices"]["classes"])
    }
    assert expected and reader.cells == expected
    assert reader.svgs == 2  # one reliability diagram per slice


def test_hostile_names_in_the_rows_print_escaped_in_text_and_exact_in_json(
    cli, admin_engine, exporter_url, tmp_path
):
    """Class, version and segment names that would forge lines or drive a terminal."""
    classes = [HOSTILE_NAMES[0], HOSTILE_NAMES[1], HOSTILE_NAMES[2], HOSTILE_NAMES[4], HOSTILE_NAMES[-1]]
    version, segment = HOSTILE_NAMES[3], HOSTILE_NAMES[5]
    rng = np.random.default_rng(5)
    rows = []
    for _ in range(3000):
        ts = END - timedelta(seconds=int(rng.integers(1, 4 * 3600)))
        truth = str(rng.choice(classes))
        moved = truth == classes[0] and ts >= START and rng.random() < 0.4
        predicted = classes[1] if moved else truth if rng.random() > 0.1 else str(rng.choice(classes))
        rows.append(
            Row("m", version, ts, predicted, truth, segment=segment, score=float(rng.uniform(0.4, 1)))
        )
    table = create_scored_events(admin_engine)
    insert_rows(admin_engine, table, rows)
    config = {
        "sources": [{"name": "shop", "table": table, "columns": COLUMNS}],
        "monitors": [
            {"source": "shop", "model": "m", "name": "m", "window": "1h", "reference": {"kind": "trailing", "length": "3h"}}
        ],
    }  # fmt: skip
    path = tmp_path / "hostile.yaml"
    path.write_text(yaml.safe_dump(config))
    text = run_report(cli, exporter_url, path)
    assert not unsafe_characters(text)
    assert not any(line.startswith("FORGED") for line in text.splitlines())
    assert "The error pattern shifted" in text  # the slice was rendered in full
    for name in [*classes, version, segment]:
        assert printable(name) in text, name
    report = json.loads(run_report(cli, exporter_url, path, "--format", "json"))
    entry = report["slices"][0]
    assert (entry["version"], entry["segment"]) == (version, segment)
    assert sorted(entry["matrices"]["classes"]) == sorted(classes)  # JSON keeps the names exactly
    html = run_report(cli, exporter_url, path, "--format", "html")
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


@pytest.mark.parametrize("command", ["report", "backfill"])
def test_an_output_path_that_cannot_be_written_is_exit_2_naming_the_flag(
    cli, exporter_url, report_setup, tmp_path, command
):
    """A user's mistake (a directory, a path under a file), one line, nothing left half-written.
    Root can write anywhere, so the paths fail for any user: a directory and a file as parent."""
    _, path = report_setup
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    targets = [tmp_path] if command == "report" else []
    targets.append(blocker / "below")
    for target in targets:
        span = ["--from", START.isoformat(), "--to", END.isoformat()]
        extra = ["--monitor", "m"] if command == "report" else ["--step", "30m"]
        result = run_cli(
            cli,
            command,
            "--config",
            str(path),
            *extra,
            *span,
            "--output",
            str(target),
            env={"DATABASE_URL": exporter_url},
        )
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        assert result.stderr.startswith("config error: --output: cannot write"), result.stderr
