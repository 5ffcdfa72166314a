"""The class cap, applied in SQL: only capped cells ever reach Python.

A table whose model emits a million distinct classes must cost what a table of
``max_classes`` classes costs. The count query's cells (window, slice, predicted, true
class, rejection reason, n) are wrapped here: per slice, the classes are ranked by how often
they occur over every window that is compared (both windows of a trailing or offset
reference; all versions of a model and segment for a version reference, since each is
compared with the reference version; the stored baseline for a baseline reference), the
first ``max_classes - 1`` are kept and the rest become ``__other__``. Ties are broken by the
same natural order as :func:`matrices.class_order` ("2" before "10"), then by code point.

Rejected rows lose their class names here (only their reason and count are needed), so a
flood of distinct bad classes is one row per reason. A configured ``classes:`` list is never
ranked: a class outside it is rejected as ``unknown_class``, in SQL as well.

All names below (``cells``, ``cls``, ...) are this module's own aliases; configured
identifiers are quoted by SQLAlchemy where the inner query is built, values are bound.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..domain import NULL, OTHER, UNKNOWN_CLASS
from .baselines import cells as baseline_cells
from .counts import COUNT_COLUMNS

WINDOW, BASELINE = "window", "baseline"  # where a capped row comes from
CAPPED_COLUMNS = [*COUNT_COLUMNS, "folded", "origin"]


# The natural sort key of a class as a text[] in byte order (C collation: code point order in
# UTF-8), equal in order to matrices._natural_key: alternating runs of non-digits and digits,
# a digit run written as its length (10 digits, leading zeros dropped) and its digits, so runs
# compare as integers; a shorter prefix first, as with tuples.
def _digits(run: str) -> str:
    stripped = f"ltrim({run}, '0')"
    return f"CASE WHEN {run} = '' THEN '' ELSE lpad(length({stripped})::text, 10, '0') || {stripped} END"


_NATURAL_KEY = """ARRAY(SELECT part COLLATE "C"
         FROM regexp_matches(candidates.cls, '([^0-9]*)([0-9]*)', 'g') WITH ORDINALITY AS m(run, i),
              LATERAL (VALUES (1, run[1]), (2, {digits})) AS p(j, part)
        WHERE run[1] <> '' OR run[2] <> ''
        ORDER BY i, j)""".format(digits=_digits("run[2]"))  # noqa: S608 (constants only, no input)
# (Ordered COLLATE "C" as a whole too, whatever the database's default collation.)


@dataclass(frozen=True)
class ClassCap:
    """How a monitor's class set is bounded."""

    max_classes: int
    classes: Sequence[str] | None = None  # configured: no ranking, the rest is unknown_class
    across_versions: bool = False  # version reference: versions of a slice share one class set
    baseline: tuple[str, str] | None = None  # (baseline name, monitor): ranked with the windows


def capped_counts(cells_query: sa.Select[Any] | sa.TextualSelect, cap: ClassCap) -> sa.Select[Any]:
    """Wrap a count query (columns ``COUNT_COLUMNS``) so its classes are capped in SQL.

    The result has ``CAPPED_COLUMNS``: the counts with folded classes renamed ``__other__``,
    ``folded`` (how many of the row's predictions had a class folded) and ``origin``
    (``window`` for the windows' rows, ``baseline`` for the stored baseline's cells).
    """
    inner = cells_query.subquery("inner_cells")
    parts = [sa.select(*inner.c, sa.literal(WINDOW, sa.Text).label("origin"))]
    if cap.baseline is not None:
        bc = baseline_cells.c
        name, monitor = cap.baseline
        parts.append(
            sa.select(
                sa.cast(sa.null(), sa.BigInteger).label("bucket"),
                bc.model,
                bc.version,
                bc.segment,
                bc.predicted_class.label("predicted"),
                bc.true_class.label("actual"),
                sa.cast(sa.null(), sa.Text).label("reason"),
                bc.predictions.label("n"),
                sa.cast(sa.null(), sa.Float).label("delay_sum"),
                sa.literal(BASELINE, sa.Text).label("origin"),
            ).where(
                bc.name == sa.bindparam("baseline_name", name),
                bc.monitor == sa.bindparam("baseline_monitor", monitor),
            )
        )
    cells = (sa.union_all(*parts) if len(parts) > 1 else parts[0]).cte("cells")
    c = cells.c
    if cap.classes is not None:
        return _with_configured_classes(cells, cap.classes)

    def partition(t: Any) -> list[sa.ColumnElement[Any]]:
        # NULL and "__null__" are one slice in Python (matrices.NULL), so one partition here.
        version = sa.literal("", sa.Text) if cap.across_versions else sa.func.coalesce(t.version, NULL)
        return [sa.func.coalesce(t.model, NULL), version, sa.func.coalesce(t.segment, NULL)]

    valid = c.reason.is_(None)
    observed = sa.union_all(
        sa.select(*partition(c), c.predicted.label("cls"), c.n).where(valid),
        sa.select(*partition(c), c.actual.label("cls"), c.n).where(valid, c.actual.is_not(None)),
    ).subquery("observed")
    o = observed.c
    keys = list(o)[:3]
    totals = (
        sa.select(*(k.label(f"p{i}") for i, k in enumerate(keys)), o.cls, sa.func.sum(o.n).label("total"))
        .group_by(*keys, o.cls)
        .cte("totals")
    )
    t = totals.c
    limit: sa.BindParameter[int] = sa.bindparam("max_classes", cap.max_classes)
    # No sort of a million classes: how many classes have each count (few distinct counts)
    # gives the count of the last kept class (the boundary); every class above it is kept,
    # and only the classes at it (the tie) are ordered by the natural key.
    hist = (
        sa.select(t.p0, t.p1, t.p2, t.total, sa.func.count().label("classes"))
        .group_by(t.p0, t.p1, t.p2, t.total)
        .subquery("hist")
    )
    h = hist.c
    part = [h.p0, h.p1, h.p2]
    cumulative = sa.select(
        *part,
        h.total,
        h.classes,
        sa.func.sum(h.classes).over(partition_by=part, order_by=h.total.desc()).label("at_least"),
        sa.func.sum(h.classes).over(partition_by=part).label("seen"),
    ).subquery("cumulative")
    u = cumulative.c
    boundary = (
        sa.select(
            u.p0,
            u.p1,
            u.p2,
            u.total.label("boundary"),
            (limit - 1 - (u.at_least - u.classes)).label("need"),
        )
        .where(u.seen > limit, u.at_least >= limit - 1, u.at_least - u.classes < limit - 1)
        .cte("boundary")
    )
    b = boundary.c

    def same_slice(x: Any, y: Any) -> sa.ColumnElement[bool]:
        return sa.and_(x.p0 == y.p0, x.p1 == y.p1, x.p2 == y.p2)

    untied = (
        sa.select(t.p0, t.p1, t.p2, t.cls)
        .select_from(totals.join(boundary, same_slice(t, b), isouter=True))
        .where(sa.or_(b.boundary.is_(None), t.total > b.boundary))
    )
    # The tie can be every class (a million singletons): order it first by the key's first
    # two runs (leading text, first number), which the full natural key only refines, and
    # compute the full key for the few that can still be kept.
    leading = sa.func.substring(t.cls, "^[^0-9]*")
    first_number = sa.func.substring(t.cls, "^[^0-9]*([0-9]*)")
    tie = (
        sa.select(t.p0, t.p1, t.p2, t.cls, b.need, leading.label("leading"), first_number.label("number"))
        .select_from(totals.join(boundary, same_slice(t, b)))
        .where(t.total == b.boundary)
        .subquery("tie")
    )
    number_key: sa.ColumnElement[str] = sa.literal_column(_digits("tie.number"))
    coarse = sa.select(
        *(tie.c[k] for k in ("p0", "p1", "p2", "cls", "need")),
        sa.func.rank()
        .over(
            partition_by=[tie.c.p0, tie.c.p1, tie.c.p2],
            order_by=[tie.c.leading.collate("C"), number_key.collate("C")],
        )
        .label("coarse_rank"),
    ).subquery("coarse")
    candidates = sa.select(coarse).where(coarse.c.coarse_rank <= coarse.c.need).subquery("candidates")
    a = candidates.c
    ranked = sa.select(
        a.p0,
        a.p1,
        a.p2,
        a.cls,
        a.need,
        sa.func.row_number()
        .over(
            partition_by=[a.p0, a.p1, a.p2],
            order_by=[sa.literal_column(_NATURAL_KEY).collate("C"), a.cls.collate("C")],
        )
        .label("rank"),
    ).subquery("ranked")
    r = ranked.c
    kept = sa.union_all(untied, sa.select(r.p0, r.p1, r.p2, r.cls).where(r.rank <= r.need)).cte("kept")

    def is_kept(column: sa.ColumnElement[Any]) -> sa.ColumnElement[bool]:
        # An uncorrelated IN over the few kept classes: Postgres hashes it once, where a
        # join on a misestimated million-row side can turn into a nested comparison.
        return sa.tuple_(*partition(c), column).in_(sa.select(kept.c.p0, kept.c.p1, kept.c.p2, kept.c.cls))

    predicted_folded = sa.not_(is_kept(c.predicted))
    actual_folded = sa.and_(c.actual.is_not(None), sa.not_(is_kept(c.actual)))
    predicted = sa.case((sa.not_(valid), sa.null()), (predicted_folded, OTHER), else_=c.predicted)
    actual = sa.case(
        (sa.or_(sa.not_(valid), c.actual.is_(None)), sa.null()), (actual_folded, OTHER), else_=c.actual
    )
    folded = sa.case((sa.and_(valid, sa.or_(predicted_folded, actual_folded)), c.n), else_=0)
    source = cells
    return _grouped(source, c, predicted, actual, c.reason, folded)


def _with_configured_classes(cells: sa.CTE, classes: Sequence[str]) -> sa.Select[Any]:
    """A configured class list: a row with a class outside it is rejected, never ranked."""
    c = cells.c
    listed: sa.BindParameter[list[str]] = sa.bindparam("configured_classes", list(classes), expanding=True)
    outside = sa.or_(c.predicted.not_in(listed), sa.and_(c.actual.is_not(None), c.actual.not_in(listed)))
    reason = sa.case((c.reason.is_not(None), c.reason), (outside, UNKNOWN_CLASS), else_=sa.null())
    rejected = reason.is_not(None)
    predicted = sa.case((rejected, sa.null()), else_=c.predicted)
    actual = sa.case((rejected, sa.null()), else_=c.actual)
    return _grouped(cells, c, predicted, actual, reason, sa.literal(0))


def _grouped(
    source: Any,
    c: Any,
    predicted: sa.ColumnElement[Any],
    actual: sa.ColumnElement[Any],
    reason: sa.ColumnElement[Any],
    folded: sa.ColumnElement[Any],
) -> sa.Select[Any]:
    grouped = [
        c.bucket,
        c.model,
        c.version,
        c.segment,
        predicted.label("predicted"),
        actual.label("actual"),
        reason.label("reason"),
    ]
    return (
        sa.select(
            *grouped,
            sa.func.sum(c.n).label("n"),
            # Typed: a source without labeled_at sends an untyped NULL, which a CTE makes text.
            sa.func.sum(sa.cast(c.delay_sum, sa.Float)).label("delay_sum"),
            sa.func.sum(folded).label("folded"),
            c.origin,
        )
        .select_from(source)
        .group_by(*(sa.literal_column(str(i)) for i in range(1, len(grouped) + 1)), c.origin)
    )


def fetch_capped(
    connection: Connection, query: sa.Select[Any], params: dict[str, Any] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run a capped count query; return (the windows' rows, the baseline's rows)."""
    frame = pd.DataFrame(connection.execute(query, params or {}).fetchall(), columns=CAPPED_COLUMNS)
    for column in ("n", "folded"):
        frame[column] = pd.to_numeric(frame[column]).fillna(0).astype("int64")
    frame["delay_sum"] = pd.to_numeric(frame["delay_sum"], errors="coerce").astype("float64")
    is_baseline = frame["origin"] == BASELINE
    columns = [*COUNT_COLUMNS, "folded"]
    return (
        frame.loc[~is_baseline, columns].reset_index(drop=True),
        frame.loc[is_baseline, columns].reset_index(drop=True),
    )
