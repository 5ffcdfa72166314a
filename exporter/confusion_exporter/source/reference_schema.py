"""Writes into the reference schema (``inference.*``), for the simulator and tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

# The view joining each prediction to its latest label, and its column mapping as a source.
VIEW = "inference.labeled_predictions"
VIEW_COLUMNS = {
    "model": "model_name",
    "version": "model_version",
    "predicted_at": "predicted_at",
    "predicted": "predicted_class",
    "actual": "true_class",
    "labeled_at": "labeled_at",
    "score": "score",
    "segment": "segment",
}

metadata = sa.MetaData(schema="inference")

predictions = sa.Table(
    "predictions",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("model_name", sa.Text, nullable=False),
    sa.Column("model_version", sa.Text, nullable=False),
    sa.Column("predicted_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("predicted_class", sa.Text),
    sa.Column("score", sa.Float),
    sa.Column("segment", sa.Text),
    sa.Column("request_id", sa.Text),
)

labels = sa.Table(
    "labels",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("prediction_id", sa.BigInteger, nullable=False),
    sa.Column("true_class", sa.Text),
    sa.Column("labeled_at", sa.DateTime(timezone=True), nullable=False),
)


def insert_predictions(connection: Connection, rows: Sequence[dict[str, Any]]) -> list[int]:
    """Insert predictions and return their ids in the order given."""
    if not rows:
        return []
    result = connection.execute(
        sa.insert(predictions).returning(predictions.c.id, sort_by_parameter_order=True), list(rows)
    )
    return [row[0] for row in result]


def insert_labels(connection: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Append label rows (a correction is just a later row for the same prediction)."""
    if rows:
        connection.execute(sa.insert(labels), list(rows))
