"""Pinned baselines in the exporter's schema.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UPGRADE = [
    """
    CREATE TABLE IF NOT EXISTS confusion_exporter.baseline_captures (
        name        text        NOT NULL,
        monitor     text        NOT NULL,
        range_start timestamptz NOT NULL,
        range_end   timestamptz NOT NULL,
        captured_at timestamptz NOT NULL,
        PRIMARY KEY (name, monitor)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS confusion_exporter.baseline_cells (
        name            text   NOT NULL,
        monitor         text   NOT NULL,
        model           text   NOT NULL,
        version         text   NOT NULL,
        segment         text   NOT NULL,
        true_class      text,
        predicted_class text   NOT NULL,
        predictions     bigint NOT NULL CHECK (predictions >= 0),
        FOREIGN KEY (name, monitor) REFERENCES confusion_exporter.baseline_captures (name, monitor)
            ON DELETE CASCADE
    )
    """,
    "CREATE INDEX IF NOT EXISTS baseline_cells_name_idx ON confusion_exporter.baseline_cells (name, monitor)",
    # Default privileges cover tables created after 0001 by the same migrating role; grant
    # explicitly as well, in case another role runs this revision.
    "GRANT SELECT, INSERT, UPDATE, DELETE ON confusion_exporter.baseline_captures TO confusion_exporter",
    "GRANT SELECT, INSERT, UPDATE, DELETE ON confusion_exporter.baseline_cells TO confusion_exporter",
]

DOWNGRADE = [
    "DROP TABLE IF EXISTS confusion_exporter.baseline_cells",
    "DROP TABLE IF EXISTS confusion_exporter.baseline_captures",
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
