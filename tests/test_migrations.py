"""Migrations: idempotent, reversible; the exporter's role reads and cannot write."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from confusion_exporter.source.reference_schema import insert_labels, insert_predictions

from .conftest import run_cli


@pytest.fixture
def scratch_database(pg_admin_url):  # type: ignore[no-untyped-def]
    name = f"ce_mig_{secrets.token_hex(4)}"
    admin = sa.create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def objects(url: str) -> set[str]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT n.nspname || '.' || c.relname FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname IN ('inference', 'confusion_exporter')"
            )
        ).scalars()
        found = set(rows)
    engine.dispose()
    return found


def test_upgrade_twice_downgrade_and_upgrade_again(scratch_database, cli):
    env = {"DATABASE_URL": scratch_database}
    first = run_cli(cli, "migrate", env=env)
    assert first.returncode == 0, first.stderr
    created = objects(scratch_database)
    assert {
        "inference.predictions",
        "inference.labels",
        "inference.labeled_predictions",
        "inference.predictions_model_time_idx",
        "inference.labels_prediction_latest_idx",
        "confusion_exporter.alembic_version",
    } <= created

    again = run_cli(cli, "migrate", env=env)
    assert again.returncode == 0, again.stderr
    assert objects(scratch_database) == created

    down = run_cli(cli, "migrate", "--downgrade", "base", env=env)
    assert down.returncode == 0, down.stderr
    assert objects(scratch_database) == {
        "confusion_exporter.alembic_version",
        "confusion_exporter.alembic_version_pkc",
    }

    up = run_cli(cli, "migrate", env=env)
    assert up.returncode == 0, up.stderr
    assert objects(scratch_database) == created


def test_view_shows_the_latest_label_and_unlabeled_predictions(clean_reference_schema):
    engine = clean_reference_schema
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    with engine.begin() as conn:
        ids = insert_predictions(
            conn,
            [
                {"model_name": "m", "model_version": "v", "predicted_at": t0, "predicted_class": "a"},
                {"model_name": "m", "model_version": "v", "predicted_at": t0, "predicted_class": "b"},
            ],
        )
        insert_labels(
            conn,
            [
                {"prediction_id": ids[0], "true_class": "b", "labeled_at": t0 + timedelta(hours=1)},
                {"prediction_id": ids[0], "true_class": "a", "labeled_at": t0 + timedelta(hours=2)},
            ],
        )
        rows = conn.execute(
            sa.text("SELECT prediction_id, true_class FROM inference.labeled_predictions ORDER BY 1")
        ).fetchall()
    assert rows == [(ids[0], "a"), (ids[1], None)]


def test_a_label_for_an_unknown_prediction_is_refused_by_the_database(clean_reference_schema):
    with pytest.raises(sa.exc.IntegrityError), clean_reference_schema.begin() as conn:
        insert_labels(
            conn, [{"prediction_id": 987654321, "true_class": "a", "labeled_at": datetime.now(UTC)}]
        )


FORBIDDEN = [
    "INSERT INTO inference.predictions (model_name, model_version, predicted_at) VALUES ('m', 'v', now())",
    "UPDATE inference.labels SET true_class = 'x'",
    "DELETE FROM inference.predictions",
    "TRUNCATE inference.labels",
    "DROP TABLE inference.labels",
    "ALTER TABLE inference.predictions ADD COLUMN evil int",
    "CREATE TABLE inference.evil (x int)",
    "DROP VIEW inference.labeled_predictions",
]


@pytest.mark.parametrize("statement", FORBIDDEN)
def test_exporter_role_cannot_write_or_alter_inference_tables(exporter_url, statement):
    # A plain session (not the exporter's read-only one): the role itself must refuse.
    engine = sa.create_engine(exporter_url)
    try:
        with pytest.raises(sa.exc.ProgrammingError) as error, engine.begin() as conn:
            conn.execute(sa.text(statement))
        assert "permission denied" in str(error.value) or "must be owner" in str(error.value)
    finally:
        engine.dispose()


def test_exporter_role_can_read_the_view(exporter_url, clean_reference_schema):
    engine = sa.create_engine(exporter_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM inference.labeled_predictions")).scalar() == 0
    finally:
        engine.dispose()
