"""Apply or reverse the reference schema with Alembic, from the migrations shipped in the package."""

from __future__ import annotations

from importlib.resources import files

from alembic import command
from alembic.config import Config as AlembicConfig

from .config import DatabaseUrl
from .source.database import admin_engine


def _alembic_config() -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(files("confusion_exporter.migrations")))
    return cfg


EXPORTER_ROLE = "confusion_exporter"


def upgrade(url: DatabaseUrl, revision: str = "head") -> None:
    """Bring the database up to ``revision``; running it again changes nothing."""
    _run(url, lambda cfg: command.upgrade(cfg, revision))


def set_exporter_password(url: DatabaseUrl, password: str) -> None:
    """Give the exporter's role a password (psycopg2 quotes it; it is never logged)."""
    from psycopg2 import sql

    engine = admin_engine(url)
    try:
        with engine.begin() as connection:
            cursor = connection.connection.cursor()
            cursor.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(EXPORTER_ROLE), sql.Literal(password)
                )
            )
    finally:
        engine.dispose()


def downgrade(url: DatabaseUrl, revision: str) -> None:
    """Reverse the schema down to ``revision`` (``base`` removes it)."""
    _run(url, lambda cfg: command.downgrade(cfg, revision))


def current(url: DatabaseUrl) -> None:
    _run(url, lambda cfg: command.current(cfg))


def _run(url: DatabaseUrl, action) -> None:  # type: ignore[no-untyped-def]
    cfg = _alembic_config()
    engine = admin_engine(url)
    try:
        with engine.connect() as connection:
            cfg.attributes["connection"] = connection
            action(cfg)
    finally:
        engine.dispose()
