"""/metrics in the format and encoding a scrape asks for: gzip when Accept-Encoding allows it
(q-values honoured), OpenMetrics when Accept prefers it, the text format otherwise.

The OpenMetrics form is derived from the text bytes (exposition_formats.py); it is checked
byte for byte against prometheus_client's own OpenMetrics writer, then on the real exporter
process with raw HTTP requests, and by a real Prometheus scraping it (which sends
``Accept-Encoding: gzip`` and prefers OpenMetrics).
"""

from __future__ import annotations

import gzip
import http.client
import json
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics import exposition as om_exposition
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from confusion_exporter import exposition_formats as formats
from confusion_exporter.exposition import HealthCollector, SnapshotCollector, render
from confusion_exporter.negotiation import accepts_gzip, wants_openmetrics
from confusion_exporter.snapshot import Published

from . import metric_snapshots
from .helpers import Row, create_scored_events, exporter_config, insert_rows
from .processes import ExporterProcess, PrometheusProcess, http_get, wait_until
from .test_render import hostile_snapshot

PROMETHEUS_ACCEPT = (  # what Prometheus 2.42 sends
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, False),
        ("", False),
        ("gzip", True),
        ("GZIP", True),
        ("x-gzip", True),
        ("gzip, deflate, br", True),
        ("deflate, br", False),
        ("identity", False),
        ("gzip;q=0", False),
        ("gzip; q=0.0, identity", False),
        ("gzip;q=0.001", True),
        ("identity;q=1, gzip;q=0.5", True),
        ("*", True),
        ("*;q=0", False),
        ("*, gzip;q=0", False),  # named beats the wildcard
        ("gzip;q=abc", False),  # an unreadable q is no
        ("gzip;q=2", False),
    ],
)
def test_accept_encoding(header, expected):
    assert accepts_gzip(header) is expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, False),
        ("*/*", False),
        ("text/plain;version=0.0.4", False),
        ("application/openmetrics-text; version=1.0.0", True),
        ("application/openmetrics-text;version=0.0.1", True),
        ("application/openmetrics-text", True),
        ("application/openmetrics-text; version=2.0.0", False),  # a version we do not write
        ("application/openmetrics-text;version=1.0.0;q=0", False),
        ("text/plain;q=1, application/openmetrics-text;q=0.5", False),
        ("text/plain;q=0.5, application/openmetrics-text;q=1", True),
        (PROMETHEUS_ACCEPT, True),
    ],
)
def test_accept(header, expected):
    assert wants_openmetrics(header) is expected


def _registry(*collectors) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    return registry


def test_openmetrics_is_what_prometheus_client_writes():
    # The rich snapshot with hostile labels, the health (an info and counters) and the
    # per-scrape process lines: derived from the text, the same bytes as the OM writer's.
    collectors = (SnapshotCollector(hostile_snapshot()), HealthCollector(metric_snapshots.health()))
    registry = _registry(*collectors)
    text = render(*collectors)
    expected = om_exposition.generate_latest(registry)
    assert formats.to_openmetrics(text) + formats.EOF == expected
    assert b"# TYPE confusion_exporter_build info\n" in expected
    assert b"# TYPE confusion_exporter_refreshes counter\n" in expected
    assert b"# TYPE confusion_monitor_info gauge\n" in expected  # a gauge named *_info stays one
    process = CollectorRegistry(auto_describe=False)  # the per-scrape process lines, as render_process
    ProcessCollector(registry=process)
    PlatformCollector(registry=process)
    assert formats.to_openmetrics(generate_latest(process)) + formats.EOF == om_exposition.generate_latest(
        process
    )


@pytest.mark.parametrize("reuse_bytes", [1, formats.REUSE_BYTES])
def test_published_forms_agree(monkeypatch, reuse_bytes):
    # reuse_bytes=1: every family's samples are a member of their own, reused by OpenMetrics
    monkeypatch.setattr(formats, "REUSE_BYTES", reuse_bytes)
    snapshot = hostile_snapshot()
    published = Published(
        snapshot, render(SnapshotCollector(snapshot)), render(HealthCollector(metric_snapshots.health()))
    )
    text = published.metrics_bytes
    assert gzip.decompress(published.metrics_gzip) == text
    members = published.metrics_gzip.count(b"\x1f\x8b\x08\x00\x00\x00\x00\x00")  # mtime 0
    assert members > 50 if reuse_bytes == 1 else members == 1
    families = text.count(b"# HELP ")
    openmetrics = published.openmetrics(gzipped=False)
    assert gzip.decompress(published.openmetrics(gzipped=True)) == openmetrics
    assert published.openmetrics(gzipped=True) is published.openmetrics(gzipped=True)  # kept
    parsed = {f.name: f.type for f in parse_openmetrics((openmetrics + formats.EOF).decode())}
    assert parsed["confusion_exporter_build"] == "info"
    assert parsed["confusion_exporter_refresh_failures"] == "counter"
    assert len(parsed) == families


def _get(port: int, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    """A raw request: exactly these headers (urllib would add its own Accept-Encoding)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/metrics", headers=headers)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def _published_part(body: bytes) -> bytes:
    """The exposition without the per-scrape lines (process figures move between scrapes)."""
    return body[: body.index(b"# HELP process_")]


@pytest.fixture
def exporter(cli, admin_engine, exporter_url, tmp_path):
    table = create_scored_events(admin_engine)
    now = datetime.now(UTC)
    rows = [
        Row("m", "v1", now - timedelta(minutes=20 + i % 30), p, t)
        for i, (t, p) in enumerate([("ham", "ham"), ("spam", "ham"), ('sp"am\\', "spam")] * 40)
    ]
    insert_rows(admin_engine, table, rows)
    # one refresh, then none: two scrapes see the same published bytes
    process = ExporterProcess(cli, exporter_config(table, refresh_interval="1h"), exporter_url, tmp_path)
    try:
        wait_until(
            lambda: b"confusion_matrix_predictions{" in http_get(process.url("/metrics"))[1], timeout=30
        )
        yield process
    finally:
        assert process.stop() == 0


def test_gzip_and_openmetrics_on_the_real_exporter(exporter):
    status, plain_headers, plain = _get(exporter.port, {})
    assert status == 200
    assert "content-encoding" not in plain_headers
    assert plain_headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "Accept-Encoding" in plain_headers["vary"]
    assert {f.name for f in parse_text(plain.decode())} >= {
        "confusion_matrix_predictions",
        "process_cpu_seconds",
    }

    status, headers, body = _get(exporter.port, {"Accept-Encoding": "gzip"})
    assert status == 200 and headers["content-encoding"] == "gzip" and "Accept-Encoding" in headers["vary"]
    assert int(headers["content-length"]) == len(body) < len(plain) / 3
    unzipped = gzip.decompress(body)
    assert _published_part(unzipped) == _published_part(plain)
    assert b"# HELP confusion_exporter_http_client_errors_total" in unzipped  # the last member, per scrape

    for refused in ("gzip;q=0", "br", "identity"):
        _, headers, body = _get(exporter.port, {"Accept-Encoding": refused})
        assert "content-encoding" not in headers, refused
        assert _published_part(body) == _published_part(plain), refused

    for accept in (
        "application/openmetrics-text; version=1.0.0",
        "application/openmetrics-text;version=0.0.1",
    ):
        for encoding in ({}, {"Accept-Encoding": "gzip"}):
            _, headers, body = _get(exporter.port, {"Accept": accept, **encoding})
            assert headers["content-type"] == "application/openmetrics-text; version=1.0.0; charset=utf-8"
            if encoding:
                assert headers["content-encoding"] == "gzip"
                body = gzip.decompress(body)
            assert body.endswith(b"\n# EOF\n") and body.count(b"# EOF") == 1
            families = {f.name: f for f in parse_openmetrics(body.decode())}  # raises on any error
            assert families["confusion_exporter_refreshes"].type == "counter"
            assert families["confusion_exporter_build"].type == "info"
            assert families["process_cpu_seconds"].type == "counter"
            cells = {
                (s.labels["true_class"], s.labels["predicted_class"], s.labels["window"]): s.value
                for s in families["confusion_matrix_predictions"].samples
            }
            assert cells[('sp"am\\', "spam", "current")] == 40


def test_a_real_prometheus_reads_the_gzipped_openmetrics(exporter, prometheus_binary, tmp_path):
    # Prometheus sends Accept-Encoding: gzip and prefers OpenMetrics: it gets the gzip members.
    prometheus = PrometheusProcess(prometheus_binary, [f"127.0.0.1:{exporter.port}"], tmp_path)
    try:
        cell = 'confusion_matrix_predictions{window="current",true_class="spam",predicted_class="ham"}'
        wait_until(lambda: prometheus.query(cell), timeout=30)
        (got,) = prometheus.query(cell)
        assert float(got["value"][1]) == 40
        # The per-scrape lines are the stream's last member: read, so every member was.
        for tail in ("confusion_exporter_http_client_errors_total", "process_resident_memory_bytes"):
            assert prometheus.query(tail), tail
        # Read as OpenMetrics: the metadata names the counter's family without _total, the info as info.
        status, body, _ = http_get(f"http://127.0.0.1:{prometheus.port}/api/v1/metadata")
        metadata = json.loads(body)["data"]
        assert status == 200
        assert metadata["confusion_exporter_refreshes"][0]["type"] == "counter"
        assert metadata["confusion_exporter_build"][0]["type"] == "info"
    finally:
        prometheus.stop()


def test_openmetrics_headers_of_hostile_help_texts():
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    gauge = GaugeMetricFamily(
        "test_gauge", 'quotes "q", a \\ backslash,\na newline, \u2028 and \r', labels=["a"]
    )
    gauge.add_metric(['v"\\\n'], float("nan"))
    counter = CounterMetricFamily("test_events", 'counted "things"', labels=["a"])
    counter.add_metric(["x"], 3)

    class Fixed:
        def collect(self):
            return [gauge, counter]

    registry = _registry(Fixed())
    text = generate_latest(registry)
    assert formats.to_openmetrics(text) + formats.EOF == om_exposition.generate_latest(registry)
