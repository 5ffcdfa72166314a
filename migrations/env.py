"""Alembic environment: runs against the connection handed in by ``confusion-exporter migrate``."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

STATE_SCHEMA = "confusion_exporter"


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        engine = sa.create_engine(context.config.get_main_option("sqlalchemy.url"))
        with engine.connect() as conn:
            _run(conn)
        return
    _run(connection)


def _run(connection: sa.Connection) -> None:
    # The version table lives in the exporter's own schema, which must exist first.
    connection.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{STATE_SCHEMA}"'))
    connection.commit()
    context.configure(
        connection=connection,
        version_table_schema=STATE_SCHEMA,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")
run_migrations_online()
