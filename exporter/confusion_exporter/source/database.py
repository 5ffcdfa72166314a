"""Engines for reading inference tables: read-only sessions with timeouts, UTC, a name."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from .. import redaction
from ..config import DatabaseUrl

APPLICATION_NAME = "confusion-exporter"


def _millis(value: timedelta) -> int:
    return max(1, int(value.total_seconds() * 1000))


QUERY_CANCELED = "57014"  # SQLSTATE of statement_timeout (lock_timeout is 55P03)


def is_statement_timeout(error: BaseException) -> bool:
    # SQLAlchemy wraps the driver's error in .orig; a raw psycopg2 error carries pgcode itself.
    driver_error = getattr(error, "orig", None) or error
    return getattr(driver_error, "pgcode", None) == QUERY_CANCELED


def timeout_hint(error: BaseException, statement_timeout: timedelta | None = None) -> str:
    """What to do about a statement cut off by ``statement_timeout`` (PostgreSQL says only that
    it was canceled); empty for any other error."""
    if not is_statement_timeout(error):
        return ""
    limit = f" ({_millis(statement_timeout)}ms)" if statement_timeout is not None else ""
    return (
        f"; the query ran past exporter.statement_timeout{limit}: raise it "
        "(or CONFUSION_EXPORTER_STATEMENT_TIMEOUT), or shorten the monitor's windows"
    )


def reader_engine(url: DatabaseUrl, *, statement_timeout: timedelta, connect_timeout: timedelta) -> Engine:
    """Create the engine the refresher reads through.

    Every session is read-only by default, so a bug in this program cannot write to the
    inference tables even when the role it runs as could; a statement timeout bounds a
    query that waits on a lock; timestamps are compared in UTC.
    """
    options = " ".join(
        [
            f"-c statement_timeout={_millis(statement_timeout)}",
            f"-c lock_timeout={_millis(statement_timeout)}",
            "-c default_transaction_read_only=on",
            "-c timezone=UTC",
        ]
    )
    return sa.create_engine(
        url.url,
        pool_pre_ping=True,
        pool_size=2,
        max_overflow=2,
        pool_recycle=1800,
        connect_args={
            "connect_timeout": max(1, int(connect_timeout.total_seconds())),
            "application_name": APPLICATION_NAME,
            "options": options,
            # A server that vanishes without closing the socket must not hang a refresh:
            # keepalives notice within ~20s, tcp_user_timeout bounds unacknowledged writes.
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 2,
            "tcp_user_timeout": _millis(statement_timeout + connect_timeout),
        },
    )


def admin_engine(url: DatabaseUrl) -> Engine:
    """Create an engine for migrations and the simulator, which must write."""
    return sa.create_engine(
        url.url,
        pool_pre_ping=True,
        connect_args={"application_name": APPLICATION_NAME, "options": "-c timezone=UTC"},
    )


def redact_error(error: BaseException, url: DatabaseUrl) -> str:
    """Describe a database error in one line without any secret it might echo.

    Scrubbed before it is cut to length, so a cut cannot leave half a password behind.
    """
    message = " ".join(str(getattr(error, "orig", None) or error).split())
    return redaction.scrub(f"{type(error).__name__}: {message}", url.secrets)[:500]
