"""Exporter health: is what the other dashboards show fresh, complete and cheap to get?"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dash

from .common import dashboard, query, stat_panel, thresholds, timeseries_panel

UID = "confusion-exporter-health"


def build() -> dash.Dashboard:
    return (
        dashboard(
            UID,
            "Confusion exporter / Exporter health",
            "The exporter itself: refresh duration and failures, staleness per monitor, rejected rows by "
            "reason, database reachability and scrape health.",
        )
        .with_panel(
            stat_panel(
                "Targets up",
                "Exporter instances Prometheus scrapes successfully. 0 pages (ConfusionExporterDown).",
                "none",
                query('sum(up{job="confusion-exporter"})', instant=True),
            ).thresholds(thresholds((None, "red"), (1, "green")))
        )
        .with_panel(
            stat_panel(
                "Database reachable",
                "1 if the exporter's last refresh reached the database. While 0 the exporter serves its last "
                "good snapshot and retries with backoff.",
                "bool_yes_no",
                query("min(confusion_exporter_database_up)", instant=True),
            ).thresholds(thresholds((None, "red"), (1, "green")))
        )
        .with_panel(
            stat_panel(
                "Oldest monitor data",
                "Seconds since the least recently refreshed monitor succeeded; over 10 minutes pages "
                "(ConfusionSnapshotStale).",
                "s",
                query(
                    "max(time() - confusion_exporter_last_refresh_success_timestamp_seconds)", instant=True
                ),
            ).thresholds(thresholds((None, "green"), (120, "orange"), (600, "red")))
        )
        .with_panel(
            stat_panel(
                "Exporter memory",
                "Resident memory of the exporter process; it stays small because counting happens in the database.",
                "bytes",
                query('max(process_resident_memory_bytes{job="confusion-exporter"})', instant=True),
            )
        )
        .with_panel(
            timeseries_panel(
                "Refresh duration",
                "Wall time of the exporter's last refresh of all monitors (the database queries and the "
                "statistics; scrapes never wait for it).",
                "s",
                query("confusion_exporter_refresh_duration_seconds", legend="{{instance}}"),
            )
        )
        .with_panel(
            timeseries_panel(
                "Refresh failures per second",
                "Failed monitor refreshes (database unreachable, query error, statement timeout), per monitor. "
                "The error itself is in the exporter's log.",
                "ops",
                query("rate(confusion_exporter_refresh_failures_total[5m])", legend="{{monitor}}"),
            )
        )
        .with_panel(
            timeseries_panel(
                "Data age per monitor",
                "Seconds since each monitor last refreshed successfully.",
                "s",
                query(
                    "time() - confusion_exporter_last_refresh_success_timestamp_seconds", legend="{{monitor}}"
                ),
            )
        )
        .with_panel(
            timeseries_panel(
                "Rejected rows by reason",
                "Rows of the current windows left out of the matrices: NULL or blank classes, labels without a "
                "prediction, prediction times in the future, classes outside the configured set.",
                "none",
                query('sum by (reason) (confusion_rejected_rows{window="current"})', legend="{{reason}}"),
            )
        )
        .with_panel(
            timeseries_panel(
                "Scrape duration",
                "How long Prometheus takes to scrape the exporter: the exposition is pre-rendered, so this stays "
                "flat whatever the database does.",
                "s",
                query('scrape_duration_seconds{job="confusion-exporter"}', legend="{{instance}}"),
            )
        )
        .with_panel(
            timeseries_panel(
                "Series exported",
                "Samples per scrape: grows with models x versions x segments x classes squared; the class cap "
                "(max_classes) bounds it.",
                "none",
                query('scrape_samples_scraped{job="confusion-exporter"}', legend="{{instance}}"),
            )
        )
    )
