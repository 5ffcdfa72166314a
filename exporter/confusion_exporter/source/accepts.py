"""Accept events of the sequential layer, stored in the exporter's own schema.

``confusion-exporter baseline accept`` records one; every evaluation reads those dated before
its instant, so a replay applies them exactly where the live exporter did.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

metadata = sa.MetaData(schema="confusion_exporter")

accepts = sa.Table(
    "sequential_accepts",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("monitor", sa.Text, nullable=False),
    sa.Column("model", sa.Text),  # NULL: every model of the monitor
    sa.Column("segment", sa.Text),  # NULL: every segment
    sa.Column("accepted_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("note", sa.Text),
)


@dataclass(frozen=True)
class AcceptEvent:
    id: int
    model: str | None
    segment: str | None
    accepted_at: datetime

    def covers(self, model: str, segment: str) -> bool:
        return self.model in (None, model) and self.segment in (None, segment)


def table_exists(connection: Connection) -> bool:
    """False on a database migrated before revision 0004 (a user's own, say): no events."""
    found = connection.execute(sa.text("SELECT to_regclass('confusion_exporter.sequential_accepts')"))
    return found.scalar() is not None


def read_accepts(connection: Connection, monitor: str, start: datetime, end: datetime) -> list[AcceptEvent]:
    """The monitor's events dated in ``[start, end)``, in time order."""
    if not table_exists(connection):
        return []
    rows = connection.execute(
        sa.select(accepts.c.id, accepts.c.model, accepts.c.segment, accepts.c.accepted_at)
        .where(
            accepts.c.monitor == monitor,
            accepts.c.accepted_at >= start,
            accepts.c.accepted_at < end,
        )
        .order_by(accepts.c.accepted_at, accepts.c.id)
    )
    return [AcceptEvent(r.id, r.model, r.segment, r.accepted_at) for r in rows]


def record_accept(
    connection: Connection, monitor: str, model: str | None, segment: str | None, note: str | None
) -> datetime:
    """Store an accept dated by the database's clock (the one the replays compare with)."""
    row = connection.execute(
        sa.insert(accepts)
        .values(monitor=monitor, model=model, segment=segment, note=note, accepted_at=sa.func.now())
        .returning(accepts.c.accepted_at)
    ).one()
    return row.accepted_at  # type: ignore[no-any-return]
