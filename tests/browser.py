"""Headless Chromium for the HTML the product serves or writes, and a reader of report cells."""

from __future__ import annotations

import subprocess
import tempfile
from html.parser import HTMLParser

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


class ReportReader(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.version: str | None = None
        self.segment: str | None = None
        self.window: str | None = None
        self.cell: tuple[str, str] | None = None
        self.cells: dict[
            tuple[str, str, str, str, str], int
        ] = {}  # version, segment, window, true, predicted
        self.svgs = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section":
            self.version, self.segment = a.get("data-version"), a.get("data-segment")
        elif tag == "td" and "data-true" in a:
            self.window = a["data-window"]
            self.cell = (a["data-true"], a["data-predicted"])  # type: ignore[assignment]
        elif tag == "svg":
            self.svgs += 1

    def handle_data(self, data: str) -> None:
        if self.cell and self.version and self.segment and self.window:
            self.cells[(self.version, self.segment, self.window, *self.cell)] = int(data)
            self.cell = None
