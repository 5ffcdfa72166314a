"""Degenerate slices are valid input of every renderer: a slice whose rows are all rejected
(zero classes), a slice seen only in the reference window, one class, predictions without
labels (NaN metrics). Real rows in PostgreSQL; the real CLI (report in each format, gate,
backfill) and a real exporter process's `/report` and landing page."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from .browser import ReportReader
from .conftest import run_cli
from .helpers import COLUMNS, Row, create_scored_events, insert_rows
from .processes import ExporterProcess, http_get


def degenerate_rows(now: datetime) -> list[Row]:
    """Around ``now`` (the real clock: the exporter process evaluates at its own now)."""
    current_ts, reference_ts = now - timedelta(minutes=20), now - timedelta(hours=2)
    rows = []
    for ts in (current_ts, reference_ts):
        for i in range(60):
            truth = "ab"[i % 2]
            score = 0.5 + (i % 5) / 10
            rows.append(Row("m", "v1", ts, truth if i % 7 else "ab"[(i + 1) % 2], truth, score=score))
            # every row of "rejected" is a bad row: no predicted class, or a blank one
            rows.append(Row("m", "rejected", ts, None if i % 2 else " ", "a", score=score))
            rows.append(Row("m", "one_class", ts, "a", "a", score=score))
            rows.append(Row("m", "unlabeled", ts, "ab"[i % 2], None, score=score))
        rows.append(Row("m", "reference_only", reference_ts, "a", "b", score=0.7))
    return rows


def write_config(tmp_path, table: str, reference: dict) -> str:  # type: ignore[no-untyped-def]
    config = {
        "sources": [{"name": "shop", "table": table, "columns": COLUMNS}],
        "monitors": [{"source": "shop", "model": "m", "name": "m", "window": "1h", "reference": reference}],
    }
    path = tmp_path / f"config-{reference['kind']}-{reference.get('version', '')}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.fixture(scope="module")
def table(admin_engine):  # type: ignore[no-untyped-def]
    name = create_scored_events(admin_engine)
    insert_rows(admin_engine, name, degenerate_rows(datetime.now(UTC)))
    return name


REFERENCES = [
    {"kind": "trailing", "length": "3h"},
    {"kind": "version", "version": "v1"},  # the all-rejected slice compared with a good version
    {"kind": "version", "version": "rejected"},  # a good version compared with the all-rejected one
    {"kind": "version", "version": "absent"},  # a reference version without a single row
]


def report(cli, exporter_url, path, fmt):  # type: ignore[no-untyped-def]
    result = run_cli(
        cli,
        "report",
        "--config",
        path,
        "--monitor",
        "m",
        "--format",
        fmt,
        env={"DATABASE_URL": exporter_url},
    )
    return result


@pytest.mark.parametrize("reference", REFERENCES, ids=lambda r: r.get("version", r["kind"]))
def test_report_renders_degenerate_slices_in_every_format(cli, exporter_url, table, tmp_path, reference):
    path = write_config(tmp_path, table, reference)
    outputs = {}
    for fmt in ("json", "text", "html"):
        result = report(cli, exporter_url, path, fmt)
        assert result.returncode == 0, (fmt, result.stderr[-3000:])
        assert "Traceback" not in result.stderr
        outputs[fmt] = result.stdout
    data = json.loads(outputs["json"])
    slices = {s["version"]: s for s in data["slices"]}
    if reference["kind"] == "trailing":
        assert set(slices) == {"v1", "rejected", "one_class", "unlabeled", "reference_only"}
        empty = slices["rejected"]
        assert empty["matrices"] == {"classes": [], "current": [], "reference": []}
        assert empty["overall"]["current"]["rejected"] == 60  # says why it is empty
        assert empty["overall"]["current"]["accuracy"] is None
        assert slices["reference_only"]["overall"]["current"]["labeled"] == 0
        assert slices["one_class"]["matrices"]["current"] == [[60]]
        assert slices["unlabeled"]["overall"]["current"]["macro_f1"] is None
    # The HTML's matrix cells are the JSON's, slice by slice, including the empty ones.
    reader = ReportReader()
    reader.feed(outputs["html"])
    expected = {
        (entry["version"], entry["segment"], window, t, p): entry["matrices"][window][i][j]
        for entry in data["slices"]
        for window in ("current", "reference")
        if entry["matrices"][window] is not None
        for i, t in enumerate(entry["matrices"]["classes"])
        for j, p in enumerate(entry["matrices"]["classes"])
    }
    assert reader.cells == expected
    for entry in data["slices"]:
        assert f'data-version="{entry["version"]}"' in outputs["html"]
        assert f"version {entry['version']}" in outputs["text"]
    if reference["kind"] == "trailing":
        assert "no labeled predictions" in outputs["html"]


def test_report_endpoint_and_landing_page_serve_degenerate_slices(cli, exporter_url, table, tmp_path):
    config = yaml.safe_load(Path(write_config(tmp_path, table, REFERENCES[0])).read_text())
    config["exporter"] = {"refresh_interval": "10m"}
    exporter = ExporterProcess(cli, config, exporter_url, tmp_path)
    try:
        from .processes import wait_until

        wait_until(lambda: http_get(exporter.url("/report?monitor=m&format=json"))[0] == 200)
        for fmt in ("html", "json"):
            status, body, _ = http_get(exporter.url(f"/report?monitor=m&format={fmt}"))
            assert status == 200, (fmt, body[:500])
            assert b"rejected" in body
        status, body, _ = http_get(exporter.url("/"))
        assert status == 200 and b'data-version="rejected"' in body
    finally:
        exporter.stop()
    assert "Traceback" not in exporter.log()


@pytest.mark.parametrize(
    ("stable", "canary"), [("v1", "rejected"), ("rejected", "v1"), ("v1", "reference_only")]
)
def test_gate_waits_on_a_degenerate_version(cli, exporter_url, table, tmp_path, stable, canary):
    path = write_config(tmp_path, table, REFERENCES[0])
    for fmt in ("text", "json"):
        result = run_cli(
            cli,
            "gate",
            "--config",
            path,
            "--monitor",
            "m",
            "--reference",
            f"version:{stable}",
            "--current",
            f"version:{canary}",
            "--min-samples",
            "10",
            "--format",
            fmt,
            env={"DATABASE_URL": exporter_url},
        )
        assert result.returncode == 3, (fmt, result.stdout, result.stderr[-3000:])
        assert "Traceback" not in result.stderr
    verdict = json.loads(result.stdout)
    assert verdict["verdict"] == "insufficient_data"


def test_backfill_over_degenerate_slices(cli, exporter_url, table, tmp_path):
    path = write_config(tmp_path, table, REFERENCES[0])
    now = datetime.now(UTC).replace(microsecond=0)
    result = run_cli(
        cli,
        "backfill",
        "--config",
        path,
        "--from",
        (now - timedelta(minutes=10)).isoformat(),
        "--to",
        now.isoformat(),
        "--step",
        "5m",
        "--output",
        str(tmp_path / "backfill"),
        env={"DATABASE_URL": exporter_url},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    written = (tmp_path / "backfill" / "confusion-exporter.om").read_text()
    assert 'version="rejected"' in written and written.endswith("# EOF\n")
