"""One monitor's slow refresh holds back neither the other monitors nor a scrape."""

from __future__ import annotations

import re
import secrets
import time
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from .helpers import Row, create_scored_events, exporter_config, insert_rows
from .processes import ExporterProcess, http_get, value, wait_until

SLOW_SECONDS = 8


def test_a_slow_monitor_holds_back_neither_the_others_nor_a_scrape(cli, admin_engine, exporter_url, tmp_path):
    table = create_scored_events(admin_engine)
    now = datetime.now(UTC)
    insert_rows(
        admin_engine, table, [Row("m", "v1", now - timedelta(minutes=5), "a", "a") for _ in range(20)]
    )
    # A real slow query: a view that sleeps once per statement in the database, as a huge
    # table's scan would.
    schema, name = table.split(".")
    slow = f"slow_{secrets.token_hex(4)}"
    with admin_engine.begin() as conn:
        conn.execute(
            sa.text(
                f'CREATE VIEW "{schema}"."{slow}" AS WITH s AS MATERIALIZED (SELECT pg_sleep({SLOW_SECONDS})) '
                f'SELECT t.* FROM "{schema}"."{name}" t, s'
            )
        )
        conn.execute(sa.text(f'GRANT SELECT ON "{schema}"."{slow}" TO confusion_exporter'))
    config = exporter_config(table)
    source = config["sources"][0]
    config["sources"].append({**source, "name": "slow", "table": f"{schema}.{slow}"})
    # The slow monitor first in the config: published after the other, it is still rendered first.
    config["monitors"].insert(0, {**config["monitors"][0], "source": "slow"})
    exporter = ExporterProcess(cli, config, exporter_url, tmp_path)
    try:
        first = wait_until(
            lambda: (
                (x := exporter.metrics())
                and value(x, "confusion_exporter_refreshes_total", monitor="slow:m") >= 1
                and x
            )
        )
        started = time.monotonic()
        latencies = []
        while time.monotonic() - started < SLOW_SECONDS - 3:
            before = time.perf_counter()
            status, _, _ = http_get(exporter.url("/metrics"))
            latencies.append(time.perf_counter() - before)
            assert status == 200
            time.sleep(0.1)
        during = exporter.metrics()
        # The slow monitor is still in its first refresh...
        assert (
            value(during, "confusion_exporter_last_refresh_success_timestamp_seconds", monitor="slow:m") == 0
        )
        assert value(during, "confusion_exporter_refreshes_total", monitor="slow:m") == 1
        # ...while the other refreshed every second, and every scrape answered at once.
        fast_before = value(first, "confusion_exporter_refreshes_total", monitor="shop:m")
        assert value(during, "confusion_exporter_refreshes_total", monitor="shop:m") >= fast_before + 3
        assert (
            value(during, "confusion_exporter_last_refresh_success_timestamp_seconds", monitor="shop:m") > 0
        )
        assert max(latencies) < 0.5, max(latencies)
        # The slow one finishes too, and is published beside the other.
        wait_until(
            lambda: (
                value(
                    exporter.metrics(),
                    "confusion_exporter_last_refresh_success_timestamp_seconds",
                    monitor="slow:m",
                )
                > 0
            ),
            timeout=SLOW_SECONDS * 3,
        )
        # Rendered in the config's order, not in the order the refreshes finished.
        _, body, _ = http_get(exporter.url("/metrics"))
        info = [line for line in body.decode().splitlines() if line.startswith("confusion_monitor_info{")]
        assert [re.search(r'monitor="([^"]+)"', line).group(1) for line in info] == ["slow:m", "shop:m"], info  # type: ignore[union-attr]
    finally:
        exporter.stop()
