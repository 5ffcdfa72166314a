"""Accept events of the sequential layer: "this new regime is the reference now".

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

The detector's state at an instant is replayed from the label arrivals and these events up to
that instant, so an accept is a dated row, never an edit of a state.
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UPGRADE = [
    """
    CREATE TABLE IF NOT EXISTS confusion_exporter.sequential_accepts (
        id          bigserial   PRIMARY KEY,
        monitor     text        NOT NULL,
        model       text,
        segment     text,
        accepted_at timestamptz NOT NULL DEFAULT now(),
        note        text
    )
    """,
    """CREATE INDEX IF NOT EXISTS sequential_accepts_monitor_idx
       ON confusion_exporter.sequential_accepts (monitor, accepted_at)""",
    "GRANT SELECT, INSERT ON confusion_exporter.sequential_accepts TO confusion_exporter",
    "GRANT USAGE ON SEQUENCE confusion_exporter.sequential_accepts_id_seq TO confusion_exporter",
    # Label arrivals per period are read by labeled_at (source/arrivals.py).
    "CREATE INDEX IF NOT EXISTS labels_labeled_at_idx ON inference.labels (labeled_at)",
]

DOWNGRADE = [
    "DROP INDEX IF EXISTS inference.labels_labeled_at_idx",
    "DROP TABLE IF EXISTS confusion_exporter.sequential_accepts",
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
