"""The landing page in a real headless Chromium: it loads, its matrix cells equal the exported
metrics, and an injected shift shows as a shift."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from html.parser import HTMLParser

import pytest

from .browser import ReportReader, render_in_browser
from .helpers import simulate_with_shift
from .processes import ExporterProcess, value
from .test_grafana_live import config as stack_config


class PageReader(HTMLParser):
    """Collect the matrix cells and test states the browser rendered, by slice."""

    def __init__(self) -> None:
        super().__init__()
        self.slice: tuple[str, ...] | None = None
        self.window: str | None = None
        self.cell: tuple[str, str] | None = None
        self.cells: dict[tuple[str, ...], int] = {}
        self.states: dict[tuple[str, ...], str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section" and "data-monitor" in a:
            self.slice = (a["data-monitor"], a["data-model"], a["data-version"], a["data-segment"])  # type: ignore[assignment]
        elif tag == "table" and "data-window" in a:
            self.window = a["data-window"]
        elif tag == "td" and "data-true" in a and self.slice and self.window:
            self.cell = (a["data-true"], a["data-predicted"])  # type: ignore[assignment]
        elif tag == "span" and "data-test" in a and self.slice:
            self.states[(*self.slice, a["data-test"])] = a["data-state"]  # type: ignore[assignment]

    def handle_data(self, data: str) -> None:
        if self.cell and self.slice and self.window:
            self.cells[(*self.slice, self.window, *self.cell)] = int(data)
            self.cell = None


def test_landing_page_in_chromium_matches_metrics_and_shows_the_shift(
    cli, clean_reference_schema, exporter_url, tmp_path, chromium
):
    simulate_with_shift(clean_reference_schema, ["digits-rf", "intent-router"], ["digits-rf"], seed=23)
    settings = stack_config()
    settings["exporter"]["refresh_interval"] = "10m"  # one snapshot for the page and /metrics
    settings["monitors"] = settings["monitors"][:2]
    exporter = ExporterProcess(cli, settings, exporter_url, tmp_path)
    try:
        from .processes import wait_until

        # Monitors publish as each finishes (side by side): wait for every one of them, so the
        # page and /metrics below show the same, final snapshot.
        names = [m["name"] for m in settings["monitors"]]
        metrics = wait_until(
            lambda: (
                (m := exporter.metrics())
                and all(
                    value(m, "confusion_exporter_last_refresh_success_timestamp_seconds", monitor=n) > 0
                    for n in names
                )
                and m
            )
        )
        dom = render_in_browser(chromium, exporter.url("/"))
        page = PageReader()
        page.feed(dom)
        # The landing page links each monitor's error-analysis report, built from the same snapshot.
        assert 'href="/report?monitor=digits"' in dom
        with urllib.request.urlopen(
            exporter.url("/report?monitor=digits&format=json"), timeout=10
        ) as response:
            report = json.loads(response.read())
        report_page = ReportReader()
        report_page.feed(render_in_browser(chromium, exporter.url("/report?monitor=digits")))
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(exporter.url("/report?monitor=nope"), timeout=10)
        assert missing.value.code == 404
    finally:
        exporter.stop()

    from_json = {
        (entry["version"], entry["segment"], window, t, p): entry["matrices"][window][i][j]
        for entry in report["slices"]
        for window in ("current", "reference")
        for i, t in enumerate(entry["matrices"]["classes"])
        for j, p in enumerate(entry["matrices"]["classes"])
    }
    assert len(from_json) > 200 and report_page.cells == from_json
    # ... and equal the landing page's cells (which equal /metrics, below)
    assert all(page.cells[("digits", "digits-rf", *key)] == n for key, n in from_json.items())
    eu = next(e for e in report["slices"] if e["segment"] == "eu")
    assert {t["test"]: t["state"] for t in eu["shift"]["tests"]}["error_pattern"] == "shift"

    assert len(page.cells) > 400  # 2 models x 2 segments x 2 windows x K^2 cells
    for (monitor, model, version, segment, window, true_class, predicted_class), count in page.cells.items():
        exported = value(
            metrics,
            "confusion_matrix_predictions",
            monitor=monitor,
            model=model,
            version=version,
            segment=segment,
            window=window,
            true_class=true_class,
            predicted_class=predicted_class,
            correct=str(true_class == predicted_class).lower(),
        )
        assert count == exported, (monitor, segment, window, true_class, predicted_class)
    assert page.states[("digits", "digits-rf", "v1", "eu", "error_pattern")] == "shift"
    assert page.states[("intents", "intent-router", "v1", "eu", "error_pattern")] == "stable"
    for (monitor, model, version, segment, test), state in page.states.items():
        exported = value(
            metrics,
            "confusion_shift_state",
            monitor=monitor,
            model=model,
            version=version,
            segment=segment,
            test=test,
            state=state,
        )
        assert exported == 1.0
