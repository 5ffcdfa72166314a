"""HTTP: ``/`` (landing page), ``/report``, ``/metrics``, ``/healthz``; serves the published snapshot only."""

from __future__ import annotations

import html
import json
import logging
import threading
import time
from collections.abc import Callable
from urllib.parse import parse_qs, quote, urlsplit

from . import __version__
from . import exposition_formats as formats
from .exposition import CONTENT_TYPE, render_client_errors, render_process
from .httpserver import BufferedRequestHandler, EndpointServer
from .negotiation import accepts_gzip, wants_openmetrics
from .snapshot import Published, SequentialResult, Snapshot, WindowResult
from .stats.sequential import sentence
from .stats.shift import ShiftReport
from .webconfig import BasicAuth, WebConfig, ssl_context

log = logging.getLogger("confusion_exporter.web")


def _cell_style(value: int, row_total: int, diagonal: bool) -> str:
    share = value / row_total if row_total else 0.0
    hue = 140 if diagonal else 0
    alpha = min(1.0, share * (1 if diagonal else 4))
    return f"background:hsla({hue},70%,45%,{alpha:.2f})"


def _matrix_table(window: WindowResult) -> str:
    counts = window.counts
    classes = counts.classes
    head = "".join(f"<th>{html.escape(c)}</th>" for c in classes)
    rows = []
    for i, true_class in enumerate(classes):
        total = int(counts.matrix[i].sum())
        cells = "".join(
            f'<td style="{_cell_style(int(v), total, i == j)}" data-true="{html.escape(true_class)}" '
            f'data-predicted="{html.escape(classes[j])}">{int(v)}</td>'
            for j, v in enumerate(counts.matrix[i])
        )
        rows.append(f"<tr><th>{html.escape(true_class)}</th>{cells}</tr>")
    m = window.metrics
    total = counts.labeled_total + counts.unlabeled_total
    coverage = counts.labeled_total / total if total else float("nan")
    return (
        f'<table class=matrix data-window="{html.escape(counts.window.name)}"><caption>'
        f"{html.escape(counts.window.name)} "
        f"[{counts.window.start:%Y-%m-%d %H:%M} – {counts.window.end:%H:%M} UTC]: "
        f"{counts.labeled_total} labeled, {counts.unlabeled_total} unlabeled "
        f"(coverage {_fmt(coverage, '{:.0%}')}), accuracy {_fmt(m.accuracy)}, "
        f"macro-F1 {_fmt(m.macro_f1)}</caption>"
        f"<tr><th>true \\ predicted</th>{head}</tr>{''.join(rows)}</table>"
    )


_STATE_COLORS = {
    "shift": "#c62828",
    "accumulating": "#b26a00",
    "stable": "#2e7d32",
    "insufficient_data": "#757575",
}


def _sequential_summary(result: SequentialResult) -> str:
    """Per model and segment: the sequential layer's state and the cell nearest its threshold."""
    if not result.caught_up:
        when = f"{result.period_end:%Y-%m-%d %H:%M}" if result.period_end else "the origin"
        return f"<p class=sequential>Sequential layer: replaying label arrivals (read up to {when} UTC).</p>"
    items = []
    for piece in result.slices:
        top = piece.top
        detail = ""
        if top is not None:
            detail = (
                f" {html.escape(sentence(top))} <small>(evidence {top.evidence:.1f} of "
                f"{piece.threshold:.1f})</small>"
            )
        items.append(
            f'<li data-model="{html.escape(piece.model)}" data-segment="{html.escape(piece.segment)}">'
            f"{html.escape(piece.model)} segment {html.escape(piece.segment)}: "
            f'<span class=state data-state="{piece.state}" style="background:{_STATE_COLORS[piece.state]}">'
            f"{html.escape(piece.state.replace('_', ' '))}</span>{detail}</li>"
        )
    return (
        "<div class=sequential><b>Small persistent changes</b> (sequential layer)<ul>"
        + "".join(items)
        + "</ul></div>"
    )


def _shift_summary(report: ShiftReport) -> str:
    tests = " · ".join(
        f'<span class=state data-test="{html.escape(name)}" data-state="{t.state}" '
        f'style="background:{_STATE_COLORS[t.state]}">{html.escape(name)}: '
        f"{html.escape(t.state.replace('_', ' '))}</span>"
        + (f" <small>p={t.p_value:.2g}, V={t.effect_size:.3f}</small>" if t.dof else "")
        for name, t in report.tests.items()
    )
    moved = "".join(
        f"<li>true {html.escape(c.true_class)} predicted as {html.escape(c.predicted_class)}: "
        f"{c.reference_share:.1%} → {c.current_share:.1%} of {html.escape(c.true_class)}s "
        f"(residual {c.residual:+.1f})</li>"
        for c in report.cells[:5]
    )
    return f"<p>{tests}</p>" + (f"<ul class=cells>{moved}</ul>" if moved else "")


def _fmt(value: float, pattern: str = "{:.3f}") -> str:
    return "–" if value != value else pattern.format(value)  # NaN: undefined, not zero


def _class_table(window: WindowResult) -> str:
    """Per-class precision, recall, F1 and support of one window, worst F1 first."""
    m, classes = window.metrics, window.counts.classes
    order = sorted(range(len(classes)), key=lambda i: (m.f1[i] != m.f1[i], m.f1[i]))
    rows = "".join(
        f"<tr><th>{html.escape(classes[i])}</th><td>{_fmt(m.precision[i])}</td><td>{_fmt(m.recall[i])}</td>"
        f"<td>{_fmt(m.f1[i])}</td><td>{int(m.support[i])}</td></tr>"
        for i in order
    )
    return (
        f"<table class=classes><caption>per class, {html.escape(window.counts.window.name)} window</caption>"
        f"<tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>{rows}</table>"
    )


def landing_page(snapshot: Snapshot | None) -> bytes:
    """Render the human view of the snapshot: each slice's matrices as colored tables."""
    parts = [
        "<!doctype html><html><head><meta charset=utf-8><meta http-equiv=refresh content=30>"
        "<title>confusion-exporter</title>",
        "<style>body{font-family:sans-serif;margin:2em}table.matrix{border-collapse:collapse;"
        "margin:0 2em 1em 0;display:inline-table}td,th{border:1px solid #ccc;padding:2px 6px;"
        "text-align:right}caption{text-align:left;font-size:90%}table.classes{border-collapse:collapse;"
        "display:inline-table;vertical-align:top}"
        ".state{color:#fff;padding:1px 6px;border-radius:3px}</style></head><body>",
        f"<h1>confusion-exporter {html.escape(__version__)}</h1>",
        '<p><a href="/metrics">/metrics</a> · <a href="/healthz">/healthz</a></p>',
    ]
    if snapshot is None:
        parts.append("<p>No snapshot yet: the first refresh has not succeeded.</p>")
    else:
        parts.append(f"<p>Snapshot of {snapshot.taken_at:%Y-%m-%d %H:%M:%S} UTC.</p>")
        for monitor in snapshot.monitors.values():
            link = f"/report?monitor={quote(monitor.name)}"
            parts.append(
                f'<h2>{html.escape(monitor.name)} <small><a class=report href="{html.escape(link)}">'
                "error analysis report</a></small></h2>"
            )
            if monitor.sequential is not None:
                parts.append(_sequential_summary(monitor.sequential))
            if not monitor.slices:
                parts.append("<p>No predictions in the windows.</p>")
            for result in monitor.slices:
                key = result.key
                parts.append(
                    f'<section class=slice data-monitor="{html.escape(monitor.name)}" '
                    f'data-model="{html.escape(key.model)}" data-version="{html.escape(key.version)}" '
                    f'data-segment="{html.escape(key.segment)}">'
                    f"<h3>{html.escape(key.model)} version {html.escape(key.version)} "
                    f"segment {html.escape(key.segment)}</h3><div>"
                )
                if result.shift is not None:
                    parts.append(_shift_summary(result.shift))
                parts.extend(_matrix_table(w) for w in result.windows.values())
                if "current" in result.windows:
                    parts.append(_class_table(result.windows["current"]))
                parts.append("</div></section>")
    parts.append("</body></html>")
    return "".join(parts).encode("utf-8")


class _ReportCache:
    """The error-analysis report of each monitor, built from the published snapshot (no
    database), once per snapshot and format."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: int | None = None
        self._pages: dict[tuple[str, str], bytes] = {}

    def get(self, published: Published, monitor: str, fmt: str) -> bytes | None:
        from .report import build_report, to_json
        from .report_html import to_html

        snapshot = published.snapshot
        if snapshot is None or monitor not in snapshot.monitors:
            return None
        with self._lock:
            if id(snapshot) != self._key:
                self._pages, self._key = {}, id(snapshot)
            page = self._pages.get((monitor, fmt))
            if page is None:
                report = build_report(snapshot.monitors[monitor])
                page = (to_json(report) if fmt == "json" else to_html(report)).encode("utf-8")
                self._pages[(monitor, fmt)] = page
            return page


class _LandingCache:
    """Render the landing page once per published snapshot."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: int | None = None
        self._page = b""

    def get(self, published: Published) -> bytes:
        key = id(published.snapshot)
        with self._lock:
            if key != self._key:
                self._page, self._key = landing_page(published.snapshot), key
            return self._page


RETRY = {"Retry-After": "1"}


def make_server(
    address: str,
    port: int,
    published: Callable[[], Published],
    healthy: Callable[[], bool],
    web: WebConfig | None = None,
) -> EndpointServer:
    """Build the HTTP server; ``published`` returns what to serve right now; ``web`` adds
    TLS and basic authentication (see webconfig). Connections, deadlines and client errors
    are httpserver's job; this is the routes."""
    landing = _LandingCache()
    reports = _ReportCache()
    auth = BasicAuth(web.basic_auth_users if web else {})

    class Handler(BufferedRequestHandler):
        server_version = f"confusion-exporter/{__version__}"
        server: EndpointServer

        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            url = urlsplit(self.path)
            path = url.path
            allowed = True if path == "/healthz" else auth.check(self.headers.get("Authorization"))
            if allowed is None:
                self._send(
                    429, "text/plain; charset=utf-8", b"too many password checks at once\n", headers=RETRY
                )
                return
            if not allowed:
                self._send(
                    401,
                    "text/plain; charset=utf-8",
                    b"unauthorized\n",
                    headers={"WWW-Authenticate": 'Basic realm="confusion-exporter", charset="UTF-8"'},
                )
                return
            if path == "/metrics":
                self._metrics()
            elif path == "/healthz":
                ok = healthy()
                current = published()
                body = {
                    "status": "ok" if ok else "refresher stopped",
                    "snapshot_age_seconds": (
                        round(time.time() - current.snapshot.taken_at.timestamp(), 3)
                        if current.snapshot
                        else None
                    ),
                }
                self._send(200 if ok else 503, "application/json", json.dumps(body).encode())
            elif path == "/":
                self._send(200, "text/html; charset=utf-8", landing.get(published()))
            elif path == "/report":
                query = parse_qs(url.query)
                monitor = query.get("monitor", [""])[0]
                fmt = query.get("format", ["html"])[0]
                try:
                    page = reports.get(published(), monitor, fmt) if fmt in ("html", "json") else None
                except Exception as error:  # a renderer's bug: a status and a line, not a dropped connection
                    log.error("report of monitor %r failed: %s: %s", monitor, type(error).__name__, error)
                    self._send(500, "text/plain; charset=utf-8", b"the report could not be rendered\n")
                    return
                if page is None:
                    self._send(
                        404, "text/plain; charset=utf-8", b"no such monitor in the snapshot (or format)\n"
                    )
                else:
                    kind = "application/json" if fmt == "json" else "text/html; charset=utf-8"
                    self._send(200, kind, page)
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found\n")

        def _metrics(self) -> None:
            """The published exposition, in the format and encoding the scrape asked for, and
            the few per-scrape lines (process, client errors) after it: bytes picked, never
            rendered here but for those lines."""
            current = published()
            gzipped = accepts_gzip(self.headers.get("Accept-Encoding"))
            tail = render_process() + render_client_errors(self.server.client_errors.counts())
            if wants_openmetrics(self.headers.get("Accept")):
                content_type, body = formats.OPENMETRICS_CONTENT_TYPE, current.openmetrics(gzipped)
                tail = formats.to_openmetrics(tail) + formats.EOF
            else:
                content_type = CONTENT_TYPE
                body = current.metrics_gzip if gzipped else current.metrics_bytes
            headers = {"Vary": "Accept, Accept-Encoding"}
            if gzipped:
                # one more gzip member after the published ones (exposition_formats.py)
                tail = formats.gzip_member(tail)
                headers["Content-Encoding"] = "gzip"
            # Parts, not one concatenation: a copy of a multi-megabyte exposition per
            # concurrent scrape is what would make memory grow with the scrape load.
            self._send(200, content_type, body, tail, headers=headers)

        def _send(
            self, status: int, content_type: str, *parts: bytes, headers: dict[str, str] | None = None
        ) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(sum(len(p) for p in parts)))
            self.end_headers()
            for part in parts:
                self.wfile.write(part)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            log.debug(format % args)

    return EndpointServer((address, port), Handler, ssl_context(web) if web is not None else None)
