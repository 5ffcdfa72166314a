"""The exporter is not a way into the inference database: its role's privileges are exactly
SELECT plus its own schema, identifiers from config cannot inject SQL, and the database
password never leaves the process."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from confusion_exporter.config import ConfigError, DatabaseUrl, config_from_mapping
from confusion_exporter.refresher import Refresher

from .helpers import COLUMNS, NOW, Row, create_scored_events, exporter_config, insert_rows, make_config
from .processes import ExporterProcess, TcpProxy, http_get, wait_until

INFERENCE = ["inference.predictions", "inference.labels", "inference.labeled_predictions"]
WRITES = ["INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"]


def test_exporter_role_has_select_on_inference_and_writes_only_its_own_schema(admin_engine):
    with admin_engine.connect() as conn:
        role = conn.execute(
            sa.text(
                "SELECT rolsuper, rolcreatedb, rolcreaterole, rolbypassrls, rolreplication, rolinherit "
                "FROM pg_roles WHERE rolname = 'confusion_exporter'"
            )
        ).one()
        assert not any(role[:5])  # no superuser, createdb, createrole, bypassrls, replication
        memberships = conn.execute(
            sa.text(
                "SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member "
                "WHERE r.rolname = 'confusion_exporter'"
            )
        ).scalar_one()
        assert memberships == 0  # inherits nothing from other roles
        for table in INFERENCE:
            assert conn.execute(
                sa.text("SELECT has_table_privilege('confusion_exporter', :t, 'SELECT')"), {"t": table}
            ).scalar_one()
            for privilege in WRITES:
                assert not conn.execute(
                    sa.text("SELECT has_table_privilege('confusion_exporter', :t, :p)"),
                    {"t": table, "p": privilege},
                ).scalar_one(), (table, privilege)
        assert not conn.execute(
            sa.text("SELECT has_schema_privilege('confusion_exporter', 'inference', 'CREATE')")
        ).scalar_one()
        assert not conn.execute(
            sa.text("SELECT has_database_privilege('confusion_exporter', current_database(), 'CREATE')")
        ).scalar_one()
        # Where it writes: only the tables of its own schema (baselines, rollups).
        own = (
            conn.execute(
                sa.text(
                    "SELECT DISTINCT table_schema FROM information_schema.role_table_grants "
                    "WHERE grantee = 'confusion_exporter' AND privilege_type IN ('INSERT', 'UPDATE', 'DELETE')"
                )
            )
            .scalars()
            .all()
        )
        assert own == ["confusion_exporter"]


INJECTIONS = [
    {"predicted": 'yhat"; DROP TABLE shop_ml.canary; --'},
    {"actual": "y) OR 1=1; DROP TABLE shop_ml.canary; --"},
    {"model": "clf' OR '1'='1"},
]


@pytest.mark.parametrize("columns", INJECTIONS)
def test_injected_identifiers_are_quoted_and_fail_harmlessly(admin_engine, exporter_url, columns):
    table = create_scored_events(admin_engine)
    insert_rows(admin_engine, table, [Row("m", "v1", NOW, "a", "a")])
    with admin_engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE IF NOT EXISTS shop_ml.canary (x int)"))
        conn.execute(sa.text("GRANT SELECT ON shop_ml.canary TO confusion_exporter"))
    config = make_config(table, columns={**COLUMNS, **columns})
    refresher = Refresher(config, DatabaseUrl(exporter_url), clock=lambda: NOW)
    try:
        assert not refresher.refresh()
    finally:
        refresher.engine.dispose()
    error = refresher.health.last_error["shop:*"]
    assert "does not exist" in error  # the whole string was taken as one quoted column name
    with admin_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT to_regclass('shop_ml.canary')")).scalar() is not None


def test_rollup_table_names_must_be_plain_identifiers():
    raw = {
        "sources": [
            {
                "name": "s",
                "table": "inference.labeled_predictions",
                "columns": COLUMNS,
                "rollup": {
                    "predictions": "inference.predictions; DROP TABLE x",
                    "labels": "inference.labels",
                },
            }
        ],
        "monitors": [
            {"source": "s", "model": "m", "window": "1h", "reference": {"kind": "trailing", "length": "1h"}}
        ],
    }
    with pytest.raises(ConfigError) as error:
        config_from_mapping(raw, env={})
    assert any(line.startswith("sources[0].rollup.predictions:") for line in error.value.problems)


def test_the_password_never_appears_in_logs_pages_or_metrics(cli, admin_engine, exporter_url, tmp_path):
    """Provoke every kind of connection error, then look everywhere the exporter writes."""
    table = create_scored_events(admin_engine)
    password = make_url(exporter_url).password
    assert password
    # (the test servers trust local connections, so a wrong password would be accepted;
    # a missing database makes the server reject the login instead)
    wrong = (
        make_url(exporter_url)
        .set(password="Wr0ng-P4ssw0rd-xyzzy", database="no_such_database")
        .render_as_string(hide_password=False)
    )
    proxy = TcpProxy(exporter_url)
    config = exporter_config(table, refresh_interval="300ms", initial_backoff="100ms", max_backoff="500ms")
    runs = [
        (proxy.url_for(exporter_url), password),  # connection refused (proxy not started)
        (wrong, "Wr0ng-P4ssw0rd-xyzzy"),  # the server refuses the login
    ]
    for url, secret in runs:
        exporter = ExporterProcess(cli, config, url, tmp_path)
        try:
            wait_until(
                lambda e=exporter: (
                    e.metrics()[
                        ("confusion_exporter_refresh_failures_total", frozenset({("monitor", "shop:m")}))
                    ]
                    >= 3
                )
            )
            bodies = [
                http_get(exporter.url(path))[1] for path in ("/", "/metrics", "/healthz", "/report?monitor=x")
            ]
        finally:
            exporter.stop()
        log = exporter.log()
        assert "monitor refresh failed" in log
        for text in [log, *(b.decode() for b in bodies)]:
            assert secret not in text
            assert password not in text
        assert "***" in log  # the URL is logged, masked
