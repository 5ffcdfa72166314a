"""Alerts delivered end to end: the real exporter on a real PostgreSQL with an injected shift,
a real Prometheus evaluating the shipped rules, a real Alertmanager loaded with the generated
alertmanager.yml, and a webhook server of the test as every receiver.

Only time is changed, by the two transforms below (nothing else of the shipped files):
- ``fast_rules``: every rule group evaluates each second, every ``for`` and ``keep_firing_for``
  is divided by one factor, to at least 1s: 600 for the shift (30m -> 3s), 300 for the outage
  (30m -> 6s, 5m -> 1s), whose test needs the outage alert to fire before the page would.
- ``alertmanager_config_for_test``: every webhook URL points at the test's server (same receiver
  names), every ``group_wait`` is 1s and ``group_interval`` 3s, the templates' path absolute.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from sqlalchemy.engine import Engine

from .alertmanager_process import AlertmanagerProcess, WebhookSink
from .helpers import REFERENCE_SOURCE, simulate_with_shift
from .processes import ExporterProcess, PrometheusProcess, TcpProxy, wait_until

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "prometheus" / "rules" / "confusion-exporter.rules.yml"
GENERATED = ROOT / "alertmanager" / "alertmanager.yml"
SHIFT_DIVISOR, OUTAGE_DIVISOR = 600, 300
GROUP_WAIT, GROUP_INTERVAL = "1s", "3s"


def _seconds(duration: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([smhd])", duration))


def fast_rules(path: Path, out: Path, divisor: int) -> Path:
    """The shipped rules with only their timing shortened (see the module docstring)."""
    document = yaml.safe_load(path.read_text())
    for group in document["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            for key in ("for", "keep_firing_for"):
                if key in rule:
                    rule[key] = f"{max(1, _seconds(rule[key]) // divisor)}s"
    out.write_text(yaml.safe_dump(document, sort_keys=False))
    return out


def alertmanager_config_for_test(sink: WebhookSink, out: Path) -> Path:
    """The generated alertmanager.yml with only its URLs and group timings changed."""
    config = yaml.safe_load(GENERATED.read_text())
    config["templates"] = [str(ROOT / "alertmanager" / t) for t in config["templates"]]
    for receiver in config["receivers"]:
        for webhook in receiver["webhook_configs"]:
            webhook["url"] = sink.url(receiver["name"])

    def shorten(route: dict[str, Any]) -> None:
        for key, value in (("group_wait", GROUP_WAIT), ("group_interval", GROUP_INTERVAL)):
            if key in route:
                route[key] = value
        for child in route.get("routes", []):
            shorten(child)

    shorten(config["route"])
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def exporter_config() -> dict[str, Any]:
    # The demo's teams; the sequential layer off, so the only page is the window test's
    # (its latch would hold the slice's group open past the end of the shift).
    monitor = {"source": "reference", "window": "30m", "reference": {"kind": "trailing", "length": "2h"}}
    return {
        "exporter": {
            "refresh_interval": "1s",
            "initial_backoff": "200ms",
            "max_backoff": "1s",
            "bucket": "1m",
        },
        "sources": [{**REFERENCE_SOURCE, "name": "reference"}],
        "monitors": [
            {
                **monitor,
                "name": "digits",
                "model": "digits-rf",
                "team": "vision",
                "sequential": {"enabled": False},
            },
            {
                **monitor,
                "name": "intents",
                "model": "intent-router",
                "team": "support-ml",
                "sequential": {"enabled": False},
            },
        ],
    }


class Stack:
    """Webhook sink, Alertmanager, exporter (through a proxy that can cut its database), Prometheus."""

    def __init__(self, cli, exporter_url, tmp_path, prometheus_binary, alertmanager_binary, divisor):  # type: ignore[no-untyped-def]
        self.started = time.monotonic()
        self.sink = WebhookSink()
        self.alertmanager = AlertmanagerProcess(
            alertmanager_binary,
            alertmanager_config_for_test(self.sink, tmp_path / "alertmanager.yml"),
            tmp_path,
        )
        self.proxy = TcpProxy(exporter_url)
        self.proxy.start()
        self.exporter = ExporterProcess(cli, exporter_config(), self.proxy.url_for(exporter_url), tmp_path)
        self.prometheus = PrometheusProcess(
            prometheus_binary,
            [f"127.0.0.1:{self.exporter.port}"],
            tmp_path,
            [str(fast_rules(RULES, tmp_path / "rules.yml", divisor))],
            alertmanagers=[f"127.0.0.1:{self.alertmanager.port}"],
        )

    def since_start(self, at: float | None = None) -> float:
        return (time.monotonic() if at is None else at) - self.started

    def stop(self) -> None:
        for part in (self.prometheus, self.exporter, self.alertmanager):
            with contextlib.suppress(Exception):  # a part the test stopped already
                part.stop()
        self.proxy.stop()
        self.sink.stop()


@pytest.fixture(scope="module")
def shifted_traffic(admin_engine: Engine) -> Iterator[Engine]:
    """2 h 40 min of traffic, digits-rf's errors shifted 28 minutes ago: simulated once for both
    tests (about 7 s); the outage test runs first, as it leaves the data as it found it."""
    with admin_engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE inference.labels, inference.predictions RESTART IDENTITY"))
    simulate_with_shift(admin_engine, ["digits-rf", "intent-router"], ["digits-rf"], seed=41)
    yield admin_engine


def shift_seen(stack: Stack) -> bool:
    return bool(
        stack.prometheus.query(
            'confusion_shift_state{monitor="digits", test="error_pattern", state="shift"} == 1'
        )
    )


def published_shift(stack: Stack) -> bool:
    metrics = stack.exporter.metrics()
    return any(
        name == "confusion_shift_state"
        and value == 1
        and ("state", "shift") in labels
        and ("test", "error_pattern") in labels
        for (name, labels), value in metrics.items()
    )


def firing_groups(stack: Stack) -> set[str]:
    return {
        n.payload["groupKey"] for n in stack.sink.received("vision-page") if n.payload["status"] == "firing"
    }


def test_an_outage_notifies_the_platform_once_and_holds_the_model_pages_back(
    cli, shifted_traffic, exporter_url, tmp_path, prometheus_binary, alertmanager_binary
):
    stack = Stack(cli, exporter_url, tmp_path, prometheus_binary, alertmanager_binary, OUTAGE_DIVISOR)
    try:
        # The shifted snapshot is published; then the database goes away. The
        # exporter keeps serving that snapshot, so the shift page fires during the outage.
        # Cut as soon as the exporter publishes it (not once Prometheus has it), so the outage
        # alert's 1s `for` starts with the page's 6s one.
        wait_until(lambda: published_shift(stack), timeout=60, interval=0.1)
        stack.proxy.stop()
        cut = time.monotonic()

        def inhibited_page() -> list:  # type: ignore[type-arg]
            alerts = stack.alertmanager.alerts(alertname="ConfusionErrorPatternShift", monitor="digits")
            return [a for a in alerts if a["status"]["state"] == "suppressed" and a["status"]["inhibitedBy"]]

        held = wait_until(inhibited_page, timeout=30, interval=0.3)
        assert all(a["labels"]["instance"] == f"127.0.0.1:{stack.exporter.port}" for a in held)
        platform = wait_until(lambda: stack.sink.received("ml-platform-ticket"), timeout=20, interval=0.2)
        print(f"\ndatabase outage notified {platform[0].at - cut:.1f} s after the cut")
        time.sleep(4.5)  # more than group_wait + group_interval with the page held back
        assert inhibited_page(), "the page must still be held back"
        assert not stack.sink.received("vision-page"), "a model page got through during the outage"
        outage = stack.sink.received()
        assert [n.receiver for n in outage] == ["ml-platform-ticket"], [
            (n.receiver, n.alertnames) for n in outage
        ]
        assert outage[0].alertnames == {"ConfusionDatabaseDown"} and outage[0].payload["status"] == "firing"

        # The exporter dies: ConfusionExporterDown pages the platform, once.
        stack.exporter.process.kill()
        killed = time.monotonic()
        down = wait_until(
            lambda: [
                n for n in stack.sink.received("ml-platform-page") if "ConfusionExporterDown" in n.alertnames
            ],
            timeout=20,
            interval=0.2,
        )
        print(f"exporter down paged {down[0].at - killed:.1f} s after the kill")
        time.sleep(3.5)  # a group interval and more: no second page
        pages = [n for n in stack.sink.received("ml-platform-page") if n.payload["status"] == "firing"]
        assert len(pages) == 1 and pages[0].alertnames == {"ConfusionExporterDown"}
        (alert,) = pages[0].payload["alerts"]
        assert alert["labels"]["instance"] == f"127.0.0.1:{stack.exporter.port}"
    finally:
        stack.stop()


def test_a_shift_pages_the_owning_team_once_per_slice_and_resolves_once(
    cli, shifted_traffic, exporter_url, tmp_path, prometheus_binary, alertmanager_binary, amtool
):
    stack = Stack(cli, exporter_url, tmp_path, prometheus_binary, alertmanager_binary, SHIFT_DIVISOR)
    try:
        wait_until(lambda: shift_seen(stack), timeout=60, interval=0.5)
        seen = time.monotonic()
        pages = wait_until(lambda: stack.sink.received("vision-page"), timeout=40, interval=0.2)
        first = pages[0]
        print(
            f"\nshift decision first scraped {stack.since_start(seen):.1f} s after start; page delivered "
            f"{first.at - seen:.1f} s later (for 30m/{SHIFT_DIVISOR}, group_wait {GROUP_WAIT})"
        )
        assert first.payload["status"] == "firing"
        (alert,) = first.payload["alerts"]
        labels, annotations = alert["labels"], alert["annotations"]
        assert labels["alertname"] == "ConfusionErrorPatternShift" and labels["team"] == "vision"
        assert labels["monitor"] == "digits" and labels["model"] == "digits-rf" and labels["version"] == "v1"
        segment = labels["segment"]
        # The cell in words, and where to go next.
        cell = f"true {labels['true_class']} predicted as {labels['predicted_class']}"
        assert cell in annotations["description"], annotations["description"]
        assert f"digits-rf v1 (segment {segment}, monitor digits)" in annotations["description"]
        assert annotations["runbook_url"].endswith("docs/runbook.md#confusionerrorpatternshift")
        assert f"var-model=digits-rf&var-version=v1&var-segment={segment}" in annotations["dashboard_url"]
        # Grouped as configured: one notification per team, monitor, model and segment.
        assert first.payload["groupLabels"] == {
            "team": "vision",
            "monitor": "digits",
            "model": "digits-rf",
            "segment": segment,
        }
        assert first.payload["receiver"] == "vision-page"
        # The chat and email text (alertmanager/templates) of this very notification.
        (tmp_path / "page.json").write_text(json.dumps(first.payload))
        rendered = subprocess.run(
            [
                amtool,
                "template",
                "render",
                f"--template.glob={ROOT / 'alertmanager' / 'templates' / '*.tmpl'}",
                f"--template.data={tmp_path / 'page.json'}",
                '--template.text={{ template "confusion.title" . }}\n{{ template "confusion.text" . }}',
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert rendered.returncode == 0, rendered.stderr
        title = rendered.stdout.splitlines()[0]
        assert title == f"[FIRING: 1] ConfusionErrorPatternShift digits-rf (segment {segment})", title
        assert cell in rendered.stdout and annotations["runbook_url"] in rendered.stdout

        # The shift ends: its labels are withdrawn, the decision clears, the page resolves once.
        with shifted_traffic.begin() as conn:
            conn.execute(
                sa.text(
                    "DELETE FROM inference.labels l USING inference.predictions p WHERE l.prediction_id = p.id "
                    "AND p.model_name = 'digits-rf' AND p.predicted_at > now() - interval '29 minutes'"
                )
            )
        ended = time.monotonic()

        def resolved() -> list:  # type: ignore[type-arg]
            return [n for n in stack.sink.received("vision-page") if n.payload["status"] == "resolved"]

        wait_until(
            lambda: len({n.payload["groupKey"] for n in resolved()}) == len(firing_groups(stack)),
            timeout=40,
            interval=0.2,
        )
        print(f"resolved {time.monotonic() - ended:.1f} s after the shifted labels were withdrawn")
        time.sleep(3.5)  # a group interval and more: nothing else may arrive
        notifications = stack.sink.received()
        # intents had no shift: no page for support-ml (nor for anyone but vision).
        assert {n.receiver for n in notifications if n.receiver.endswith("-page")} == {"vision-page"}
        by_group: dict[str, list[str]] = {}
        for n in stack.sink.received("vision-page"):
            assert n.alertnames == {"ConfusionErrorPatternShift"}
            assert (
                len({a["labels"]["segment"] for a in n.payload["alerts"]}) == 1
            )  # one slice per notification
            by_group.setdefault(n.payload["groupKey"], []).append(n.payload["status"])
        # Each slice's group: one page, one resolution (send_resolved), nothing repeated.
        assert by_group and all(statuses == ["firing", "resolved"] for statuses in by_group.values()), (
            by_group
        )
    finally:
        stack.stop()
