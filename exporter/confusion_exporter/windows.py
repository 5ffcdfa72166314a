"""Window arithmetic: which span of prediction time each comparison covers at a given instant."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

CURRENT = "current"
REFERENCE = "reference"


@dataclass(frozen=True)
class Window:
    """A half-open span ``[start, end)`` of prediction time, aligned to bucket boundaries;
    with ``repeats`` > 1, that span and the ``repeats - 1`` spans ``every``, ``2 * every``, ...
    before it, counted as one window (a seasonal reference)."""

    name: str
    start: datetime
    end: datetime
    repeats: int = 1
    every: timedelta = timedelta(0)

    def spans(self) -> tuple[tuple[datetime, datetime], ...]:
        """The disjoint spans counted, latest first."""
        return tuple((self.start - k * self.every, self.end - k * self.every) for k in range(self.repeats))

    @property
    def earliest(self) -> datetime:
        return self.spans()[-1][0]

    def contains_bucket(self, bucket_start_epoch: float) -> bool:
        return any(s.timestamp() <= bucket_start_epoch < e.timestamp() for s, e in self.spans())


def bucket_end(now: datetime, bucket: timedelta) -> datetime:
    """The end of the bucket holding ``now``: windows include the bucket still filling."""
    size = int(bucket.total_seconds())
    epoch = int(now.timestamp())
    return datetime.fromtimestamp((epoch // size + 1) * size, tz=UTC)
