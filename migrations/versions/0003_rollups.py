"""Incremental rollups: bucketed counts of a source and the state that makes folding exact.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UPGRADE = [
    # Counts per (bucket of prediction time, slice, predicted class, true class or NULL for
    # unlabeled, rejection reason or NULL). Window matrices are sums over buckets. Tier 0 holds
    # the configured bucket; tier 1 the same counts per hour, so a 7-day window sums 168 hourly
    # buckets and only its edges from tier 0.
    """
    CREATE TABLE IF NOT EXISTS confusion_exporter.rollup_cells (
        source    text   NOT NULL,
        tier      smallint NOT NULL DEFAULT 0,
        bucket    bigint NOT NULL,
        model     text,
        version   text,
        segment   text,
        predicted text,
        actual    text,
        reason    text,
        n         bigint NOT NULL,
        delay_sum double precision NOT NULL DEFAULT 0
    )
    """,
    # NULLS NOT DISTINCT (PostgreSQL 15+): an unlabeled cell (actual NULL) is one row, so
    # folding can add to it with ON CONFLICT.
    """
    CREATE UNIQUE INDEX IF NOT EXISTS rollup_cells_key
        ON confusion_exporter.rollup_cells
           (source, tier, bucket, model, version, segment, predicted, actual, reason)
        NULLS NOT DISTINCT
    """,
    # What has been folded: ids up to the watermarks, except the pending gaps (ids below a
    # watermark not yet visible: a transaction that had not committed, or that aborted).
    """
    CREATE TABLE IF NOT EXISTS confusion_exporter.rollup_state (
        source               text PRIMARY KEY,
        bucket_seconds       integer NOT NULL,
        prediction_watermark bigint NOT NULL DEFAULT 0,
        label_watermark      bigint NOT NULL DEFAULT 0,
        pending              jsonb NOT NULL DEFAULT '{"predictions": {}, "labels": {}}',
        folds                bigint NOT NULL DEFAULT 0,
        updated_at           timestamptz NOT NULL DEFAULT now()
    )
    """,
    "GRANT SELECT, INSERT, UPDATE, DELETE ON confusion_exporter.rollup_cells TO confusion_exporter",
    "GRANT SELECT, INSERT, UPDATE, DELETE ON confusion_exporter.rollup_state TO confusion_exporter",
]

DOWNGRADE = [
    "DROP TABLE IF EXISTS confusion_exporter.rollup_state",
    "DROP TABLE IF EXISTS confusion_exporter.rollup_cells",
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
