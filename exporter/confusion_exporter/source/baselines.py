"""Pinned baselines: named matrices captured once and stored in the exporter's own schema."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..domain import SliceKey, WindowCounts
from ..windows import REFERENCE, Window

metadata = sa.MetaData(schema="confusion_exporter")

captures = sa.Table(
    "baseline_captures",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("monitor", sa.Text, primary_key=True),
    sa.Column("range_start", sa.DateTime(timezone=True), nullable=False),
    sa.Column("range_end", sa.DateTime(timezone=True), nullable=False),
    sa.Column("captured_at", sa.DateTime(timezone=True), nullable=False),
)

cells = sa.Table(
    "baseline_cells",
    metadata,
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("monitor", sa.Text, nullable=False),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("version", sa.Text, nullable=False),
    sa.Column("segment", sa.Text, nullable=False),
    sa.Column("true_class", sa.Text),  # NULL: unlabeled predictions of predicted_class
    sa.Column("predicted_class", sa.Text, nullable=False),
    sa.Column("predictions", sa.BigInteger, nullable=False),
)


def write_baseline(
    connection: Connection,
    name: str,
    monitor: str,
    window: Window,
    slices: Mapping[SliceKey, WindowCounts],
    captured_at: datetime,
) -> int:
    """Replace baseline ``name`` of ``monitor`` with ``slices``; return the cells written."""
    connection.execute(sa.delete(cells).where(cells.c.name == name, cells.c.monitor == monitor))
    connection.execute(sa.delete(captures).where(captures.c.name == name, captures.c.monitor == monitor))
    connection.execute(
        sa.insert(captures),
        [
            {
                "name": name,
                "monitor": monitor,
                "range_start": window.start,
                "range_end": window.end,
                "captured_at": captured_at,
            }
        ],
    )
    rows = []
    for key, counts in slices.items():
        base = {
            "name": name,
            "monitor": monitor,
            "model": key.model,
            "version": key.version,
            "segment": key.segment,
        }
        for i, true_class in enumerate(counts.classes):
            for j, predicted_class in enumerate(counts.classes):
                if counts.matrix[i, j]:
                    rows.append(
                        {
                            **base,
                            "true_class": true_class,
                            "predicted_class": predicted_class,
                            "predictions": int(counts.matrix[i, j]),
                        }
                    )
            if counts.unlabeled[i]:
                rows.append(
                    {
                        **base,
                        "true_class": None,
                        "predicted_class": true_class,
                        "predictions": int(counts.unlabeled[i]),
                    }
                )
    if rows:
        connection.execute(sa.insert(cells), rows)
    return len(rows)


def read_capture_window(connection: Connection, name: str, monitor: str) -> Window | None:
    """The span baseline ``name`` of ``monitor`` was captured over, or None if never captured.

    Its cells are read with the windows' counts (source/class_cap.py), so one class cap
    ranks both and the comparison stays within ``max_classes``.
    """
    capture = connection.execute(
        sa.select(captures.c.range_start, captures.c.range_end).where(
            captures.c.name == name, captures.c.monitor == monitor
        )
    ).first()
    return None if capture is None else Window(REFERENCE, capture.range_start, capture.range_end)
