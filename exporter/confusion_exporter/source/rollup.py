"""Incremental rollups of a reference-schema source: fold only what changed since the last fold.

The store (``confusion_exporter.rollup_cells``) holds counts per (bucket of prediction time,
model, version, segment, predicted class, true class or NULL while unlabeled, rejection
reason). Each fold runs in one REPEATABLE READ transaction that reads the changes, applies
them and moves the watermarks, so a crash or a restart can neither lose nor double a row.

What changed since the last fold:

- predictions with ``id > prediction_watermark`` (identity ids; rows are append-only);
- labels with ``id > label_watermark``; labels are append-only and the latest id of a
  prediction wins, so a new label moves its prediction's contribution from the previous
  label's cell (or from "unlabeled") to its own, and an older label arriving late changes
  nothing;
- ids that were pending: below a watermark but not yet visible.

Commit order is not id order: a writer may take id 100, a second id 101 and commit first. A
fold that saw 101 but not 100 records 100 as *pending* and looks it up again (by primary
key) on every fold. A pending id is given up only when it cannot appear any more: it was
still missing at a fold whose snapshot had ``xmin`` above the ``xmax`` recorded one fold after
the gap was first seen, i.e. every transaction that could hold the id has ended (the writer
takes its xid within the same INSERT that takes the id, long before the next fold).

A fold may be bounded (``batch_rows``): it then reads only the next ``batch_rows`` ids of
each table above its watermark, so the first fold of a long history (or a backlog after an
outage) is many short transactions instead of one statement over everything, each with the
guarantees above. The stored counts are always "every folded prediction, in the cell of its
latest folded label": a label is folded only with or after its prediction. A bounded fold
therefore stops its label range before the first label whose prediction lies beyond the
predictions it has folded, and a pending label that becomes visible while its prediction is
still beyond them stays pending (deferred, not given up) until the predictions reach it.
With the reference schema's foreign key a visible label's prediction is visible, so once the
predictions are caught up every visible label can be folded and the labels follow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..config import SourceConfig
from ..windows import Window
from .counts import COUNT_COLUMNS
from .rejections import RowFields, label_delay_seconds, rejection_reason, to_sql

STATE = "confusion_exporter.rollup_state"
CELLS = "confusion_exporter.rollup_cells"
KEY = "source, tier, bucket, model, version, segment, predicted, actual, reason"
HOUR = 3600


# The bucket of a prediction dated 'infinity' or '-infinity' (rejected): no window reaches it,
# and ``fetch_window_rows`` counts it against the current window, as the full query does.
NO_TIME = -(2**63)
# A new prediction's label columns, typed (an untyped NULL makes isfinite() ambiguous).
UNLABELED, UNLABELED_AT = "CAST(NULL AS text)", "CAST(NULL AS timestamptz)"


def _row(actual: str, labeled_at: str) -> RowFields:
    """A contribution's fields: the prediction ``p``'s, with the label's columns given."""
    return RowFields(
        model=sa.literal_column("p.model_name", sa.Text),
        predicted_at=sa.literal_column("p.predicted_at", sa.DateTime(timezone=True)),
        predicted=sa.literal_column("p.predicted_class", sa.Text),
        actual=sa.literal_column(actual, sa.Text),
        labeled_at=sa.literal_column(labeled_at, sa.DateTime(timezone=True)),
    )


def _reason(actual: str, labeled_at: str, label_tolerance: timedelta) -> str:
    """The rejection reason of a contribution: the full count query's own expression."""
    return to_sql(rejection_reason(_row(actual, labeled_at), label_tolerance))


def _delay(actual: str, labeled_at: str) -> str:
    """The label delay of a contribution: the full count query's own expression."""
    return to_sql(label_delay_seconds(_row(actual, labeled_at)))


def _bucket_of(seconds: str) -> str:
    """The bucket number of ``p.predicted_at``; ``NO_TIME`` where it has no instant (the
    arithmetic would fail the fold)."""
    return (
        f"CASE WHEN isfinite(p.predicted_at) THEN floor(extract(epoch FROM p.predicted_at) / {seconds})::bigint "
        f"ELSE {NO_TIME} END"
    )


def _quoted(connection: Connection, qualified: str) -> str:
    """Quote a schema-qualified table name from the config with SQLAlchemy's preparer."""
    preparer = connection.dialect.identifier_preparer
    return ".".join(preparer.quote_identifier(part) for part in qualified.split("."))


@dataclass(frozen=True)
class FoldResult:
    """What one fold did."""

    predictions: int
    labels_changed: int
    pending_predictions: int
    pending_labels: int
    given_up: int
    labels: int = 0  # label rows read (new or pending), whether or not they changed a count
    predictions_left: int = 0  # ids above the watermark after this fold (a bound on rows left)
    labels_left: int = 0

    @property
    def caught_up(self) -> bool:
        """True when this fold reached the newest visible row of both tables."""
        return self.predictions_left == 0 and self.labels_left == 0


def _tiers(bucket_seconds: int) -> list[tuple[int, str]]:
    """(tier, bucket expression) to maintain: the configured bucket, and hours when they align."""
    tiers = [(0, _bucket_of(":bucket"))]
    if HOUR % bucket_seconds == 0 and bucket_seconds < HOUR:
        tiers.append((1, _bucket_of(str(HOUR))))
    return tiers


def _upsert(select_sql: str) -> str:
    """Add rows (source, tier, bucket, slice, cell, n, delay) to the counts already stored."""
    return (
        f"INSERT INTO {CELLS} AS r ({KEY}, n, delay_sum) {select_sql} "
        f"ON CONFLICT ({KEY}) DO UPDATE SET n = r.n + EXCLUDED.n, delay_sum = r.delay_sum + EXCLUDED.delay_sum"
    )


def _state(connection: Connection, source: str, bucket_seconds: int) -> dict[str, Any]:
    try:
        connection.execute(
            sa.text(
                f"INSERT INTO {STATE} (source, bucket_seconds) VALUES (:source, :bucket) "
                "ON CONFLICT (source) DO NOTHING"
            ),
            {"source": source, "bucket": bucket_seconds},
        )
    except sa.exc.ProgrammingError as error:
        if "does not exist" in str(error.orig):
            raise RuntimeError(
                f"source {source!r} has rollup enabled but the rollup tables are missing; "
                "run `confusion-exporter migrate` against this database"
            ) from None
        raise
    row = connection.execute(
        sa.text(
            f"SELECT bucket_seconds, prediction_watermark, label_watermark, pending FROM {STATE} "
            "WHERE source = :source FOR UPDATE"
        ),
        {"source": source},
    ).one()
    if row.bucket_seconds != bucket_seconds:
        raise RuntimeError(
            f"source {source!r}: the rollup was built with {row.bucket_seconds}s buckets, the config says "
            f"{bucket_seconds}s; run `confusion-exporter rebuild --source {source}`"
        )
    pending = row.pending if isinstance(row.pending, dict) else json.loads(row.pending)
    return {"predictions_wm": row.prediction_watermark, "labels_wm": row.label_watermark, "pending": pending}


def _batch_end(connection: Connection, table: str, watermark: int, batch_rows: int | None) -> int:
    """The largest id a fold reads above ``watermark``: the ``batch_rows``-th visible one, or the last."""
    if batch_rows is None:
        query = f"SELECT coalesce(max(id), :wm) FROM {table} WHERE id > :wm"
    else:  # an index range read of batch_rows entries, whatever gaps the ids have
        query = f"SELECT coalesce(max(id), :wm) FROM (SELECT id FROM {table} WHERE id > :wm ORDER BY id LIMIT :rows) s"
    return int(connection.execute(sa.text(query), {"wm": watermark, "rows": batch_rows}).scalar_one())


def _ids_left(connection: Connection, table: str, watermark: int) -> int:
    """Ids above ``watermark`` up to the newest visible one: rows left to fold, or a bound on them
    (aborted writes leave gaps); one index probe, where ``count(*)`` would scan the backlog."""
    newest = connection.execute(sa.text(f"SELECT coalesce(max(id), 0) FROM {table}")).scalar_one()
    return max(0, int(newest) - watermark)


def _advance(
    connection: Connection,
    table: str,
    watermark: int,
    end: int,
    pending: dict[str, Any],
    snapshot: tuple[int, int],
    deferred: frozenset[int] = frozenset(),
) -> tuple[int, dict[str, Any], int]:
    """New watermark and pending ids of ``table`` after folding its ids up to ``end``; returns
    (watermark, pending, given up). ``deferred`` ids are visible but not folded yet: they stay."""
    xmin, xmax = snapshot
    new_max = connection.execute(
        sa.text(f"SELECT coalesce(max(id), :wm) FROM {table} WHERE id > :wm AND id <= :end"),
        {"wm": watermark, "end": end},
    ).scalar_one()
    visible = set(
        connection.execute(
            sa.text(f"SELECT id FROM {table} WHERE id = ANY(:ids)"), {"ids": [int(i) for i in pending]}
        ).scalars()
    )
    gaps = connection.execute(
        sa.text(
            f"SELECT g FROM generate_series(CAST(:wm AS bigint) + 1, CAST(:new_max AS bigint)) g "
            f"EXCEPT SELECT id FROM {table} WHERE id > :wm AND id <= :new_max"
        ),
        {"wm": watermark, "new_max": new_max},
    ).scalars()
    still: dict[str, Any] = {}
    given_up = 0
    for key, entry in pending.items():
        if int(key) in deferred:
            still[key] = entry  # visible, so never given up; folded once its prediction is
        elif int(key) in visible:
            continue  # folded in this transaction
        elif entry.get("xmax") is None:
            still[key] = {"xmax": xmax}  # from now on, every writer that could hold it has an xid
        elif xmin > entry["xmax"]:
            given_up += 1  # every transaction that could have held the id has ended
        else:
            still[key] = entry
    for gap in gaps:
        still[str(gap)] = {"xmax": None}
    return int(new_max), still, given_up


def fold(
    connection: Connection,
    source: SourceConfig,
    bucket_seconds: int,
    label_tolerance: timedelta = timedelta(0),
    *,
    batch_rows: int | None = None,
) -> FoldResult:
    """Fold the changes of ``source`` into its rollup; the caller commits (one transaction).

    ``label_tolerance`` is ``exporter.future_tolerance``: reasons are decided when a row is
    folded, so a changed tolerance applies to rows folded later (``rebuild`` applies it to all).
    With ``batch_rows``, at most that many new ids of each table (see the module docstring);
    ``FoldResult.caught_up`` tells whether more is left.
    """
    connection.execute(sa.text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ WRITE"))
    return _fold(connection, source, bucket_seconds, label_tolerance, batch_rows)


def _fold(
    connection: Connection,
    source: SourceConfig,
    bucket_seconds: int,
    label_tolerance: timedelta,
    batch_rows: int | None = None,
) -> FoldResult:
    assert source.rollup is not None
    predictions = _quoted(connection, source.rollup.predictions)
    labels = _quoted(connection, source.rollup.labels)
    state = _state(connection, source.name, bucket_seconds)
    snapshot = connection.execute(
        sa.text(
            "SELECT pg_snapshot_xmin(s)::text::bigint, pg_snapshot_xmax(s)::text::bigint "
            "FROM pg_current_snapshot() s"
        )
    ).one()
    pending_p = [int(i) for i in state["pending"].get("predictions", {})]
    pending_l = [int(i) for i in state["pending"].get("labels", {})]
    phi = _batch_end(connection, predictions, state["predictions_wm"], batch_rows)
    lhi = _batch_end(connection, labels, state["labels_wm"], batch_rows)
    predictions_left = _ids_left(connection, predictions, phi)
    params = {
        "source": source.name,
        "bucket": bucket_seconds,
        "pwm": state["predictions_wm"],
        "lwm": state["labels_wm"],
        "ppending": pending_p,
        "lpending": pending_l,
        "phi": phi,
        "lhi": lhi,
    }
    deferred: frozenset[int] = frozenset()
    if predictions_left:
        # Predictions beyond phi are not folded yet: their labels wait (module docstring).
        first_ahead = connection.execute(
            sa.text(f"SELECT min(id) FROM {labels} WHERE id > :lwm AND id <= :lhi AND prediction_id > :phi"),
            params,
        ).scalar_one()
        if first_ahead is not None:
            params["lhi"] = lhi = int(first_ahead) - 1
        deferred = frozenset(
            connection.execute(
                sa.text(f"SELECT id FROM {labels} WHERE id = ANY(:lpending) AND prediction_id > :phi"), params
            ).scalars()
        )
    params["ldeferred"] = sorted(deferred)
    tiers = _tiers(bucket_seconds)
    # Two index range reads, not "id > :pwm OR id = ANY(...)", which would scan the table.
    new_predictions = (
        f"FROM (SELECT * FROM {predictions} WHERE id > :pwm AND id <= :phi UNION ALL "
        f"SELECT * FROM {predictions} WHERE id = ANY(:ppending) AND id <= :pwm) p"
    )
    folded_predictions = connection.execute(
        sa.text(f"SELECT count(*) {new_predictions}"), params
    ).scalar_one()
    for tier, bucket in tiers:
        connection.execute(
            sa.text(
                _upsert(
                    f"SELECT :source, {tier}, {bucket}, p.model_name, p.model_version, p.segment, "
                    f"p.predicted_class, NULL, {_reason(UNLABELED, UNLABELED_AT, label_tolerance)}, count(*), 0 "
                    f"{new_predictions} GROUP BY 3, 4, 5, 6, 7, 9"
                )
            ),
            params,
        )
    applied = ", ".join(
        f"applied_{tier} AS ("
        + _upsert(
            f"SELECT :source, {tier}, {bucket}, p.model_name, p.model_version, p.segment, p.predicted_class, "
            f"p.actual, {_reason('p.actual', 'p.labeled_at', label_tolerance)}, sum(p.n), "
            f"coalesce(sum(p.n * {_delay('p.actual', 'p.labeled_at')}), 0) "
            "FROM deltas p GROUP BY 3, 4, 5, 6, 7, 8, 9"
        )
        + " RETURNING 1)"
        for tier, bucket in tiers
    )
    changed, labels_read = connection.execute(
        sa.text(
            f"""
            WITH batch_rows AS (
                SELECT * FROM {labels} WHERE id > :lwm AND id <= :lhi UNION ALL
                SELECT * FROM {labels} WHERE id = ANY(:lpending) AND id <= :lwm AND id <> ALL(:ldeferred)
            ), batch AS (
                SELECT DISTINCT ON (l.prediction_id) l.prediction_id, l.id, l.true_class, l.labeled_at
                  FROM batch_rows l
                 ORDER BY l.prediction_id, l.id DESC
            ), moved AS (
                SELECT b.prediction_id, b.true_class AS new_class, b.labeled_at AS new_at,
                       old.id AS old_id, old.true_class AS old_class, old.labeled_at AS old_at
                  FROM batch b
                  LEFT JOIN LATERAL (
                        SELECT o.id, o.true_class, o.labeled_at FROM {labels} o
                         WHERE o.prediction_id = b.prediction_id AND o.id <= :lwm AND o.id <> ALL(:lpending)
                         ORDER BY o.id DESC LIMIT 1
                  ) old ON true
                 WHERE old.id IS NULL OR b.id > old.id
            ), deltas AS (
                SELECT p.*, m.old_class AS actual, m.old_at AS labeled_at, -1 AS n
                  FROM moved m JOIN {predictions} p ON p.id = m.prediction_id
                UNION ALL
                SELECT p.*, m.new_class, m.new_at, 1
                  FROM moved m JOIN {predictions} p ON p.id = m.prediction_id
            ), {applied}
            SELECT (SELECT count(*) FROM moved), (SELECT count(*) FROM batch_rows)
            """
        ),
        params,
    ).one()
    pwm, p_pending, p_given_up = _advance(
        connection,
        predictions,
        state["predictions_wm"],
        phi,
        state["pending"].get("predictions", {}),
        snapshot,
    )
    lwm, l_pending, l_given_up = _advance(
        connection, labels, state["labels_wm"], lhi, state["pending"].get("labels", {}), snapshot, deferred
    )
    connection.execute(
        sa.text(
            f"UPDATE {STATE} SET prediction_watermark = :pwm, label_watermark = :lwm, "
            "pending = CAST(:pending AS jsonb), folds = folds + 1, updated_at = now() WHERE source = :source"
        ),
        {
            "pwm": pwm,
            "lwm": lwm,
            "source": source.name,
            "pending": json.dumps({"predictions": p_pending, "labels": l_pending}),
        },
    )
    return FoldResult(
        int(folded_predictions),
        int(changed),
        len(p_pending),
        len(l_pending),
        p_given_up + l_given_up,
        labels=int(labels_read),
        predictions_left=predictions_left,
        labels_left=_ids_left(connection, labels, lwm),
    )


def window_rows_query(
    source: str,
    model: str,
    windows: tuple[Window, ...],
    now: datetime,
    bucket_seconds: int,
) -> tuple[sa.TextualSelect, dict[str, Any]]:
    """The windows' rows summed from the rollup, shaped like the full count query's (query, params).

    Rows in buckets that start after ``now`` are rejected as ``future_timestamp`` (the full
    query compares each row's own time; here the bucket holding ``now`` counts as present).
    """
    model_filter = "" if model == "*" else "AND model = :model"
    # Buckets after the one holding "now" are future; a plain range on bucket keeps the index.
    per_hour = HOUR // bucket_seconds if len(_tiers(bucket_seconds)) > 1 else 0
    params: dict[str, Any] = {
        "source": source,
        "model": model,
        "bucket": bucket_seconds,
        "now_bucket": int(now.timestamp()) // bucket_seconds,
    }
    parts = []
    cells = "model, version, segment, predicted, actual, reason, n, delay_sum"
    for i, window in enumerate(windows):
        # The window's first bucket stands for the whole window (all of its spans).
        params[f"w{i}"] = int(window.start.timestamp()) // bucket_seconds
        for k, (span_start, span_end) in enumerate(window.spans()):
            w = f"{i}_{k}"
            first = int(span_start.timestamp()) // bucket_seconds
            end = -(-int(span_end.timestamp()) // bucket_seconds)
            ranges = [(first, end)]
            if per_hour:
                hour_first, hour_end = -(-first // per_hour), end // per_hour
                if hour_first < hour_end:  # whole hours from tier 1, the edges from tier 0
                    params[f"hf{w}"], params[f"he{w}"] = hour_first, hour_end
                    parts.append(
                        f"SELECT :w{i} AS wbucket, {cells} FROM {CELLS} WHERE source = :source AND tier = 1 "
                        f"AND bucket >= :hf{w} AND bucket < :he{w} {model_filter}"
                    )
                    ranges = [(first, hour_first * per_hour), (hour_end * per_hour, end)]
            for j, (a, b) in enumerate(ranges):
                if a >= b:
                    continue
                params[f"a{w}_{j}"], params[f"b{w}_{j}"] = a, b
                parts.append(
                    f"SELECT :w{i} AS wbucket, {cells} FROM {CELLS} WHERE source = :source AND tier = 0 "
                    f"AND bucket >= :a{w}_{j} AND bucket < :b{w}_{j} {model_filter}"
                )
    parts.append(
        f"SELECT NULL AS wbucket, model, version, segment, predicted, actual, 'future_timestamp' AS reason, n, "
        f"delay_sum FROM {CELLS} WHERE source = :source AND tier = 0 AND bucket > :now_bucket {model_filter}"
    )
    # Predictions with no instant (their reason is stored) count against the current window.
    parts.append(
        f"SELECT NULL AS wbucket, {cells} FROM {CELLS} WHERE source = :source AND tier = 0 "
        f"AND bucket = {NO_TIME} {model_filter}"
    )
    union = " UNION ALL ".join(parts)
    # One group per window: only window-level sums travel to Python.
    query = sa.text(
        f"SELECT wbucket AS bucket, model, version, segment, predicted, actual, reason, sum(n) AS n, "
        f"sum(delay_sum) AS delay_sum FROM ({union}) c GROUP BY 1, 2, 3, 4, 5, 6, 7 HAVING sum(n) <> 0"
    ).columns(
        sa.column("bucket", sa.BigInteger),
        *(
            sa.column(name, sa.Text)
            for name in ("model", "version", "segment", "predicted", "actual", "reason")
        ),
        sa.column("n", sa.BigInteger),
        sa.column("delay_sum", sa.Float),
    )
    return query, params


def unlabeled_without_delay(frame: pd.DataFrame) -> pd.DataFrame:
    """Unlabeled cells carry no delay; the full query reports NULL there, not 0."""
    frame.loc[frame["actual"].isna(), "delay_sum"] = float("nan")
    return frame


def fetch_window_rows(
    connection: Connection,
    source: str,
    model: str,
    windows: tuple[Window, ...],
    now: datetime,
    bucket_seconds: int,
) -> pd.DataFrame:
    """The uncapped rows of :func:`window_rows_query` (the monitors read them capped: evaluate)."""
    query, params = window_rows_query(source, model, windows, now, bucket_seconds)
    frame = pd.DataFrame(connection.execute(query, params).fetchall(), columns=COUNT_COLUMNS)
    frame["n"] = frame["n"].astype("int64")
    frame["delay_sum"] = pd.to_numeric(frame["delay_sum"], errors="coerce").astype("float64")
    return unlabeled_without_delay(frame)


def reset(connection: Connection, source: str) -> None:
    """Forget a source's rollup and state: the next fold recounts it from scratch."""
    connection.execute(sa.text("SET TRANSACTION READ WRITE"))
    connection.execute(sa.text(f"DELETE FROM {CELLS} WHERE source = :source"), {"source": source})
    connection.execute(sa.text(f"DELETE FROM {STATE} WHERE source = :source"), {"source": source})


def rebuild(
    connection: Connection,
    source: SourceConfig,
    bucket_seconds: int,
    label_tolerance: timedelta = timedelta(0),
) -> FoldResult:
    """Recount the whole source from scratch, atomically (readers see the old rollup until commit)."""
    connection.execute(sa.text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ WRITE"))
    connection.execute(sa.text(f"DELETE FROM {CELLS} WHERE source = :source"), {"source": source.name})
    connection.execute(sa.text(f"DELETE FROM {STATE} WHERE source = :source"), {"source": source.name})
    return _fold(connection, source, bucket_seconds, label_tolerance)


Cells = dict[tuple[Any, ...], tuple[int, float]]


def recount_range(
    connection: Connection,
    source: SourceConfig,
    bucket_seconds: int,
    start: datetime,
    end: datetime,
    write: bool,
    label_tolerance: timedelta = timedelta(0),
) -> tuple[Cells, Cells]:
    """Recount ``[start, end)`` from the rows already folded; return (stored, recounted) cells.

    The predictions with no instant (bucket ``NO_TIME``) belong to every range: they are
    recounted and compared each time.

    With ``write`` the stored cells of the range are replaced by the recount (repair);
    without, nothing changes (verification). Only folded rows count, so a recount never
    takes a row the next fold would add again.
    """
    assert source.rollup is not None
    mode = "READ WRITE" if write else "READ ONLY"
    connection.execute(sa.text(f"SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, {mode}"))
    predictions = _quoted(connection, source.rollup.predictions)
    labels = _quoted(connection, source.rollup.labels)
    state = _state(connection, source.name, bucket_seconds) if write else _read_state(connection, source.name)
    params = {
        "source": source.name,
        "bucket": bucket_seconds,
        "pwm": state["predictions_wm"],
        "lwm": state["labels_wm"],
        "ppending": [int(i) for i in state["pending"].get("predictions", {})],
        "lpending": [int(i) for i in state["pending"].get("labels", {})],
        "first": int(start.timestamp()) // bucket_seconds,
        "end": -(-int(end.timestamp()) // bucket_seconds),
    }
    bucket = _bucket_of(":bucket")
    recounted = {
        tuple(row[:7]): (int(row[7]), float(row[8]))
        for row in connection.execute(
            sa.text(
                f"""
                SELECT {bucket}, p.model_name, p.model_version, p.segment, p.predicted_class, l.true_class,
                       {_reason("l.true_class", "l.labeled_at", label_tolerance)}, count(*),
                       coalesce(sum({_delay("l.true_class", "l.labeled_at")}), 0)
                  FROM {predictions} p
                  LEFT JOIN LATERAL (
                        SELECT o.true_class, o.labeled_at FROM {labels} o
                         WHERE o.prediction_id = p.id AND o.id <= :lwm AND o.id <> ALL(:lpending)
                         ORDER BY o.id DESC LIMIT 1
                  ) l ON true
                 WHERE p.id <= :pwm AND p.id <> ALL(:ppending)
                   AND ((p.predicted_at >= to_timestamp(CAST(:first AS bigint) * :bucket)
                         AND p.predicted_at < to_timestamp(CAST(:end AS bigint) * :bucket))
                        OR p.predicted_at IN ('infinity', '-infinity'))
                 GROUP BY 1, 2, 3, 4, 5, 6, 7
                """
            ),
            params,
        )
    }
    stored = {
        tuple(row[:7]): (int(row[7]), float(row[8]))
        for row in connection.execute(
            sa.text(
                f"SELECT bucket, model, version, segment, predicted, actual, reason, n, delay_sum FROM {CELLS} "
                f"WHERE source = :source AND tier = 0 AND {_in_range('bucket')} AND n <> 0"
            ),
            params,
        )
    }
    if write:
        connection.execute(
            sa.text(f"DELETE FROM {CELLS} WHERE source = :source AND tier = 0 AND {_in_range('bucket')}"),
            params,
        )
        rows = [
            {
                "source": source.name,
                "bucket": k[0],
                "model": k[1],
                "version": k[2],
                "segment": k[3],
                "predicted": k[4],
                "actual": k[5],
                "reason": k[6],
                "n": n,
                "delay_sum": d,
            }
            for k, (n, d) in recounted.items()
        ]
        if rows:
            connection.execute(
                sa.text(
                    f"INSERT INTO {CELLS} ({KEY}, n, delay_sum) VALUES (:source, 0, :bucket, :model, :version, "
                    ":segment, :predicted, :actual, :reason, :n, :delay_sum)"
                ),
                rows,
            )
    if len(_tiers(bucket_seconds)) > 1:
        hours = _hours_from_base(connection, params, write)
        # An hour that disagrees with its buckets counts as one differing cell.
        stored[("hours",)] = (hours, 0.0)
        recounted[("hours",)] = (0, 0.0)
    return stored, recounted


def _in_range(bucket: str) -> str:
    """Buckets ``[:first, :end)`` of tier 0, and the no-instant bucket, which every range holds."""
    return f"(({bucket} >= :first AND {bucket} < :end) OR {bucket} = {NO_TIME})"


def _hours_from_base(connection: Connection, params: dict[str, Any], write: bool) -> int:
    """Compare (or, with ``write``, rebuild) tier 1 with the sums of tier 0 for the range's hours."""
    per_hour = HOUR // params["bucket"]
    hours = {
        "source": params["source"],
        "hf": params["first"] // per_hour,
        "he": -(-params["end"] // per_hour),
        "per_hour": per_hour,
    }
    # floor, not integer division (which rounds toward 0): buckets before 1970 are negative.
    # The no-instant bucket is its own hour.
    from_base = (
        f"SELECT source, 1 AS tier, CASE WHEN bucket = {NO_TIME} THEN bucket "
        "ELSE floor(bucket::numeric / :per_hour)::bigint END AS bucket, model, version, segment, predicted, "
        f"actual, reason, sum(n) AS n, sum(delay_sum) AS delay_sum FROM {CELLS} WHERE source = :source "
        "AND tier = 0 AND ((bucket >= CAST(:hf AS bigint) * :per_hour AND bucket < CAST(:he AS bigint) * :per_hour) "
        f"OR bucket = {NO_TIME}) "
        "GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9"
    )
    in_hours = f"((bucket >= :hf AND bucket < :he) OR bucket = {NO_TIME})"
    stored_hours = (
        f"SELECT source, tier, bucket, model, version, segment, predicted, actual, reason, n, delay_sum FROM {CELLS} "
        f"WHERE source = :source AND tier = 1 AND {in_hours}"
    )
    if write:
        connection.execute(
            sa.text(f"DELETE FROM {CELLS} WHERE source = :source AND tier = 1 AND {in_hours}"),
            hours,
        )
        connection.execute(sa.text(f"INSERT INTO {CELLS} ({KEY}, n, delay_sum) {from_base}"), hours)
        return 0
    differing = connection.execute(
        sa.text(
            f"SELECT count(*) FROM (SELECT source, tier, bucket, model, version, segment, predicted, actual, "
            f"reason, n FROM ({from_base}) b WHERE n <> 0 "
            f"EXCEPT SELECT source, tier, bucket, model, version, segment, predicted, actual, reason, n "
            f"FROM ({stored_hours}) s WHERE n <> 0) d"
        ),
        hours,
    ).scalar_one()
    extra = connection.execute(
        sa.text(
            f"SELECT count(*) FROM (SELECT source, tier, bucket, model, version, segment, predicted, actual, "
            f"reason, n FROM ({stored_hours}) s WHERE n <> 0 EXCEPT SELECT source, tier, bucket, model, version, "
            f"segment, predicted, actual, reason, n FROM ({from_base}) b WHERE n <> 0) d"
        ),
        hours,
    ).scalar_one()
    return int(differing) + int(extra)


def _read_state(connection: Connection, source: str) -> dict[str, Any]:
    row = connection.execute(
        sa.text(f"SELECT prediction_watermark, label_watermark, pending FROM {STATE} WHERE source = :source"),
        {"source": source},
    ).one_or_none()
    if row is None:
        return {"predictions_wm": 0, "labels_wm": 0, "pending": {}}
    pending = row.pending if isinstance(row.pending, dict) else json.loads(row.pending)
    return {"predictions_wm": row.prediction_watermark, "labels_wm": row.label_watermark, "pending": pending}
