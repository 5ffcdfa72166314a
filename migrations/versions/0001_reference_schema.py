"""Reference schema: predictions, append-only labels, the joining view, the exporter's role.

Revision ID: 0001
Revises:
Create Date: 2026-11-23

Every statement is written to be idempotent (IF NOT EXISTS / IF EXISTS, role created only
when missing), so a half-applied migration can be re-run, and the whole revision reverses.
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ROLE = "confusion_exporter"

UPGRADE = [
    "CREATE SCHEMA IF NOT EXISTS inference",
    "CREATE SCHEMA IF NOT EXISTS confusion_exporter",
    """
    CREATE TABLE IF NOT EXISTS inference.predictions (
        id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        model_name      text        NOT NULL,
        model_version   text        NOT NULL,
        predicted_at    timestamptz NOT NULL,
        predicted_class text,
        score           double precision,
        segment         text,
        request_id      text
    )
    """,
    # Append-only: a correction is a new row, the latest id wins. "What changed since id N"
    # is then an index range read instead of a scan for rows updated in place.
    """
    CREATE TABLE IF NOT EXISTS inference.labels (
        id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        prediction_id bigint      NOT NULL REFERENCES inference.predictions (id) ON DELETE CASCADE,
        true_class    text,
        labeled_at    timestamptz NOT NULL DEFAULT now()
    )
    """,
    # Window queries filter one model by prediction time.
    """CREATE INDEX IF NOT EXISTS predictions_model_time_idx
       ON inference.predictions (model_name, predicted_at)""",
    # Monitors over every model ("*") filter by time alone.
    """CREATE INDEX IF NOT EXISTS predictions_time_idx ON inference.predictions (predicted_at)""",
    # The latest label of a prediction: one index probe per prediction in the view.
    """CREATE INDEX IF NOT EXISTS labels_prediction_latest_idx
       ON inference.labels (prediction_id, id DESC)""",
    # One row per prediction with its latest label (NULL while none has arrived).
    """
    CREATE OR REPLACE VIEW inference.labeled_predictions AS
    SELECT p.id AS prediction_id,
           p.model_name,
           p.model_version,
           p.segment,
           p.predicted_at,
           p.predicted_class,
           p.score,
           p.request_id,
           l.true_class,
           l.labeled_at,
           l.id AS label_id
      FROM inference.predictions p
      LEFT JOIN LATERAL (
            SELECT lb.id, lb.true_class, lb.labeled_at
              FROM inference.labels lb
             WHERE lb.prediction_id = p.id
             ORDER BY lb.id DESC
             LIMIT 1
      ) l ON true
    """,
    f"""
    DO $$
    BEGIN
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '{ROLE}') THEN
            CREATE ROLE {ROLE} LOGIN NOINHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE;
        END IF;
    END
    $$
    """,
    f"GRANT USAGE ON SCHEMA inference TO {ROLE}",
    f"GRANT SELECT ON ALL TABLES IN SCHEMA inference TO {ROLE}",
    f"ALTER DEFAULT PRIVILEGES IN SCHEMA inference GRANT SELECT ON TABLES TO {ROLE}",
    # Its own schema: state tables it reads and writes (rollups, baselines), nothing else.
    f"GRANT USAGE ON SCHEMA confusion_exporter TO {ROLE}",
    f"""ALTER DEFAULT PRIVILEGES IN SCHEMA confusion_exporter
        GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {ROLE}""",
    f"""ALTER DEFAULT PRIVILEGES IN SCHEMA confusion_exporter
        GRANT USAGE, SELECT ON SEQUENCES TO {ROLE}""",
]

DOWNGRADE = [
    f"""ALTER DEFAULT PRIVILEGES IN SCHEMA confusion_exporter
        REVOKE USAGE, SELECT ON SEQUENCES FROM {ROLE}""",
    f"""ALTER DEFAULT PRIVILEGES IN SCHEMA confusion_exporter
        REVOKE SELECT, INSERT, UPDATE, DELETE ON TABLES FROM {ROLE}""",
    f"ALTER DEFAULT PRIVILEGES IN SCHEMA inference REVOKE SELECT ON TABLES FROM {ROLE}",
    "DROP VIEW IF EXISTS inference.labeled_predictions",
    "DROP TABLE IF EXISTS inference.labels",
    "DROP TABLE IF EXISTS inference.predictions",
    "DROP SCHEMA IF EXISTS inference",
    f"REVOKE ALL ON SCHEMA confusion_exporter FROM {ROLE}",
    # The role is cluster-wide; other databases may still grant it privileges, in which
    # case it stays (dropping it would fail the whole downgrade).
    f"""
    DO $$
    BEGIN
        IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '{ROLE}') THEN
            BEGIN
                DROP ROLE {ROLE};
            EXCEPTION WHEN dependent_objects_still_exist THEN
                RAISE NOTICE 'role {ROLE} kept: still granted privileges elsewhere';
            END;
        END IF;
    END
    $$
    """,
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
