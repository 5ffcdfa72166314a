"""The landing page in a real headless Chromium: it loads, its matrix cells equal the exported
metrics, and an injected shift shows as a shift."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from html.parser import HTMLParser

import pytest

from .helpers import simulate_with_shift
from .processes import ExporterProcess, value
from .test_grafana_live import config as stack_config

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium not found: `make test` installs Debian's chromium package")
    return path


def render_in_browser(chromium: str, url: str) -> str:
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


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

        metrics = wait_until(
            lambda: (m := exporter.metrics()) and any(n == "confusion_matrix_predictions" for n, _ in m) and m
        )
        page = PageReader()
        page.feed(render_in_browser(chromium, exporter.url("/")))
    finally:
        exporter.stop()

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
