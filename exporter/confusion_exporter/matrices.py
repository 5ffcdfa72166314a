"""Grouped count rows -> per-slice window matrices, with class sets, folding and rejections.

Pure: takes the rows a count query returned and the windows they were asked for.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from .domain import NULL, OTHER, REJECT_REASONS, UNKNOWN_CLASS, SliceKey, WindowCounts
from .windows import CURRENT, Window


@functools.lru_cache(maxsize=1 << 16)  # a fleet's slices share their few class names
def _natural_key(name: str) -> tuple[object, ...]:
    # ASCII digits only, as the SQL cap's key (source/class_cap.py) reads them.
    # Odd positions are the digit runs; str.isdigit would also take "²", which int() refuses.
    return tuple(int(p) if i % 2 else p for i, p in enumerate(re.split(r"([0-9]+)", name)))


def _order_key(name: str) -> tuple[tuple[object, ...], str]:
    # Names equal in natural order ("7" and "007") by code point, as the SQL cap breaks the
    # tie: otherwise their order, and so the matrix's rows, followed the order rows arrived in.
    return _natural_key(name), name


def class_order(names: Sequence[str]) -> tuple[str, ...]:
    """Order classes naturally ("2" before "10"), with the overflow class last."""
    return tuple(sorted((n for n in names if n != OTHER), key=_order_key)) + (
        (OTHER,) if OTHER in names else ()
    )


def _window_codes(
    rows: pd.DataFrame, names: Sequence[str], windows: Sequence[Window], bucket_seconds: int
) -> NDArray[np.int64]:
    """Each row's window as an index into ``names``; -1 for a row outside every window.

    A later window wins where windows overlap, as the order of ``windows`` says.
    """
    code = {name: i for i, name in enumerate(names)}
    buckets = rows["bucket"].to_numpy(dtype=np.float64, na_value=np.nan)
    out = np.full(len(rows), -1, dtype=np.int64)
    future = np.isnan(buckets)
    out[future] = code[CURRENT]  # rows dated after "now" are counted against the current window
    starts = buckets * bucket_seconds
    for window in windows:
        for start, end in window.spans():
            out[~future & (starts >= start.timestamp()) & (starts < end.timestamp())] = code[window.name]
    return out


def _cap_classes(totals: Sequence[tuple[str, int]], max_classes: int) -> tuple[tuple[str, ...], set[str]]:
    """The class set of (class, count) totals; beyond the cap, the rarest fold into ``__other__``."""
    if len(totals) <= max_classes:
        return class_order([name for name, _ in totals]), set()
    ranked = sorted(totals, key=lambda kv: (-kv[1], _order_key(kv[0])))
    kept = [name for name, _ in ranked[: max_classes - 1]]
    return class_order([*kept, OTHER]), {name for name, _ in ranked[max_classes - 1 :]}


def _choose_classes(valid: pd.DataFrame, max_classes: int) -> tuple[tuple[str, ...], set[str]]:
    """Discover the class set by frequency; beyond the cap, the rarest fold into ``__other__``."""
    observed = pd.concat(
        [
            valid[["predicted", "n"]].rename(columns={"predicted": "cls"}),
            valid.loc[valid["actual"].notna(), ["actual", "n"]].rename(columns={"actual": "cls"}),
        ]
    )
    totals = observed.groupby("cls")["n"].sum()
    return _cap_classes([(name, int(n)) for name, n in totals.items()], max_classes)


@dataclass(frozen=True)
class _Rows:
    """The rows inside some window, as arrays; classes and slices as codes."""

    slice_code: NDArray[np.int64]  # into the sorted slice keys
    window_code: NDArray[np.int64]  # into the window names
    reason_code: NDArray[np.int64]  # into REJECT_REASONS; -1 for a row that counts
    predicted: NDArray[np.int64]  # into the class names; -1 for none
    actual: NDArray[np.int64]  # into the class names; -1 for an unlabeled row
    n: NDArray[np.int64]
    sql_folded: NDArray[np.int64]  # what the SQL cap folded into the row
    delay: NDArray[np.float64]


def build_slices(
    rows: pd.DataFrame,
    windows: Sequence[Window],
    bucket_seconds: int,
    classes: Sequence[str] | None,
    max_classes: int,
) -> dict[SliceKey, dict[str, WindowCounts]]:
    """Sum bucket rows into one matrix per slice and window.

    Every window of a slice shares one class set (the union of what either window saw, or
    the configured list), so the matrices are comparable cell for cell.

    One pass over all slices and windows: slices, windows and class names become integer
    codes and the counts are scattered into per-slice arrays (a fleet has a thousand slices;
    filtering a frame per slice and window cost more than the SQL that produced it).
    """
    if rows.empty:
        return {}
    names = list(dict.fromkeys([CURRENT, *(w.name for w in windows)]))
    window_code = _window_codes(rows, names, windows, bucket_seconds)
    inside = window_code >= 0
    frame = rows[inside]
    if frame.empty:
        return {}
    keys, slice_code = _slice_codes(frame)
    class_names, predicted, actual = _class_codes(frame)
    reason_code = _reason_codes(frame)
    if classes is not None:
        configured = set(classes)
        known = np.array([name in configured for name in class_names] + [False], dtype=bool)
        # Index -1 (no class) reads the trailing False: a counted row without one is unknown too.
        outside = ~known[predicted] | ((actual >= 0) & ~known[actual])
        reason_code[(reason_code < 0) & outside] = REJECT_REASONS.index(UNKNOWN_CLASS)
    data = _Rows(
        slice_code=slice_code,
        window_code=window_code[inside],
        reason_code=reason_code,
        predicted=predicted,
        actual=actual,
        n=frame["n"].to_numpy(dtype=np.int64),
        sql_folded=(
            frame["folded"].to_numpy(dtype=np.int64)
            if "folded" in frame  # capped in SQL (source/class_cap.py), which counted what it folded
            else np.zeros(len(frame), dtype=np.int64)
        ),
        delay=(
            frame["delay_sum"].to_numpy(dtype=np.float64, na_value=np.nan)
            if "delay_sum" in frame
            else np.full(len(frame), np.nan)
        ),
    )
    if classes is not None:
        layout = _configured_classes(tuple(classes), class_names, data, len(keys))
    else:
        layout = _discovered_classes(class_names, data, len(keys), max_classes)
    return _assemble(keys, windows, names, data, layout)


def _slice_codes(frame: pd.DataFrame) -> tuple[list[SliceKey], NDArray[np.int64]]:
    """The slices in sorted order, and each row's slice as an index into them."""
    combined = np.zeros(len(frame), dtype=np.int64)
    levels = []
    for column in ("model", "version", "segment"):
        values = frame[column].astype(object).where(frame[column].notna(), NULL)
        codes, uniques = pd.factorize(values, sort=True)
        combined = combined * len(uniques) + codes
        levels.append((list(uniques), len(uniques)))
    present, slice_code = np.unique(combined, return_inverse=True)
    keys = []
    for value in present.tolist():
        parts = []
        for uniques, size in reversed(levels):
            value, code = divmod(value, size)
            parts.append(str(uniques[code]))
        segment, version, model = parts
        keys.append(SliceKey(model, version, segment))
    return keys, slice_code.astype(np.int64)


def _class_codes(frame: pd.DataFrame) -> tuple[list[str], NDArray[np.int64], NDArray[np.int64]]:
    """The class names either column holds, and each row's predicted and true class as
    indexes into them (-1 for none)."""
    both = pd.concat([frame["predicted"].astype(object), frame["actual"].astype(object)], ignore_index=True)
    codes, uniques = pd.factorize(both)
    codes = codes.astype(np.int64)
    # The readers return class names as text (source/counts.py casts them).
    return cast(list[str], list(uniques)), codes[: len(frame)], codes[len(frame) :]


def _reason_codes(frame: pd.DataFrame) -> NDArray[np.int64]:
    """Each row's reject reason as an index into REJECT_REASONS; -1 for a row that counts."""
    codes, uniques = pd.factorize(frame["reason"].astype(object))
    position = {reason: i for i, reason in enumerate(REJECT_REASONS)}
    # An unknown reason is a bug in the readers, not data: a KeyError, as before.
    lookup = np.array([position[str(reason)] for reason in uniques] + [-1], dtype=np.int64)
    return lookup[codes]


@dataclass(frozen=True)
class _Layout:
    """Each slice's class set, and where each counted row's cell lies in it."""

    class_sets: list[tuple[str, ...]]
    predicted: NDArray[np.int64]  # position of the row's predicted class in its slice's set
    actual: NDArray[np.int64]  # position of its true class; -1 for an unlabeled row
    folded: NDArray[np.bool_]  # a class of the row was folded into __other__ in Python


def _configured_classes(
    class_set: tuple[str, ...], class_names: list[str], data: _Rows, slices: int
) -> _Layout:
    index = {name: i for i, name in enumerate(class_set)}
    position = np.array([index.get(name, -1) for name in class_names] + [-1], dtype=np.int64)
    return _Layout(
        [class_set] * slices,
        position[data.predicted],
        np.where(data.actual >= 0, position[data.actual], -1),
        np.zeros(len(data.n), dtype=bool),
    )


def _discovered_classes(class_names: list[str], data: _Rows, slices: int, max_classes: int) -> _Layout:
    """Per slice, the classes its counted rows name in any window, capped by frequency."""
    counted = data.reason_code < 0
    labeled = counted & (data.actual >= 0)
    observed = counted & (data.predicted >= 0)
    width = len(class_names)
    # One observation per class a row names: its predicted class, and its true class if any.
    keys = np.concatenate(
        [
            data.slice_code[observed] * width + data.predicted[observed],
            data.slice_code[labeled] * width + data.actual[labeled],
        ]
    )
    present, inverse = np.unique(keys, return_inverse=True)
    totals = np.zeros(len(present), dtype=np.int64)
    np.add.at(totals, inverse, np.concatenate([data.n[observed], data.n[labeled]]))
    owner = present // width
    bounds = np.searchsorted(owner, np.arange(slices + 1))
    position = np.full(len(present), -1, dtype=np.int64)
    folds = np.zeros(len(present), dtype=bool)
    class_sets: list[tuple[str, ...]] = []
    names = [class_names[c] for c in (present % width).tolist()]
    counts = totals.tolist()
    for s in range(slices):
        lo, hi = int(bounds[s]), int(bounds[s + 1])
        class_set, folded = _cap_classes(list(zip(names[lo:hi], counts[lo:hi], strict=True)), max_classes)
        class_sets.append(class_set)
        index = {name: i for i, name in enumerate(class_set)}
        other = index.get(OTHER, -1)
        for j in range(lo, hi):
            position[j] = index.get(names[j], other)
            folds[j] = names[j] in folded
    row_position = np.full(len(data.n), -1, dtype=np.int64)
    row_folded = np.zeros(len(data.n), dtype=bool)
    n_observed = int(observed.sum())
    row_position[observed] = position[inverse[:n_observed]]
    row_folded[observed] = folds[inverse[:n_observed]]
    actual_position = np.full(len(data.n), -1, dtype=np.int64)
    actual_position[labeled] = position[inverse[n_observed:]]
    row_folded[labeled] |= folds[inverse[n_observed:]]
    return _Layout(class_sets, row_position, actual_position, row_folded)


def _assemble(
    keys: list[SliceKey], windows: Sequence[Window], names: list[str], data: _Rows, layout: _Layout
) -> dict[SliceKey, dict[str, WindowCounts]]:
    """Scatter the rows into every slice's and window's arrays, then cut them out."""
    slices, width = len(keys), len(names)
    cell = data.slice_code * width + data.window_code  # one (slice, window) pair
    counted = data.reason_code < 0
    labeled = counted & (layout.actual >= 0)
    unlabeled = counted & (layout.actual < 0)
    rejected = np.zeros((slices * width, len(REJECT_REASONS)), dtype=np.int64)
    np.add.at(rejected, (cell[~counted], data.reason_code[~counted]), data.n[~counted])
    folded = np.zeros(slices * width, dtype=np.int64)
    np.add.at(
        folded, cell[counted], np.where(layout.folded[counted], data.n[counted], 0) + data.sql_folded[counted]
    )

    k = np.array([len(c) for c in layout.class_sets], dtype=np.int64)
    matrix_start = np.concatenate([[0], np.cumsum(width * k * k)])
    vector_start = np.concatenate([[0], np.cumsum(width * k)])
    matrices = np.zeros(int(matrix_start[-1]), dtype=np.int64)
    vectors = np.zeros(int(vector_start[-1]), dtype=np.int64)
    s, w = data.slice_code, data.window_code
    ks = k[s]
    at = matrix_start[s] + w * ks * ks + layout.actual * ks + layout.predicted
    np.add.at(matrices, at[labeled], data.n[labeled])
    at = vector_start[s] + w * ks + layout.predicted
    np.add.at(vectors, at[unlabeled], data.n[unlabeled])
    delays = _delay_sums(cell[labeled], data.delay[labeled], slices * width)

    out: dict[SliceKey, dict[str, WindowCounts]] = {}
    code = {name: i for i, name in enumerate(names)}
    for i, key in enumerate(keys):
        class_set, size = layout.class_sets[i], int(k[i])
        by_window = {}
        for window in windows:
            j = code[window.name]
            m = (
                matrices[matrix_start[i] + j * size * size : matrix_start[i] + (j + 1) * size * size]
                .reshape(size, size)
                .copy()
            )
            u = vectors[vector_start[i] + j * size : vector_start[i] + (j + 1) * size].copy()
            m.setflags(write=False)
            u.setflags(write=False)
            by_window[window.name] = WindowCounts(
                window,
                class_set,
                m,
                u,
                dict(zip(REJECT_REASONS, rejected[i * width + j].tolist(), strict=True)),
                int(folded[i * width + j]),
                float(delays[i * width + j]),
            )
        out[key] = by_window
    return out


def _delay_sums(cell: NDArray[np.int64], delay: NDArray[np.float64], cells: int) -> NDArray[np.float64]:
    """Per (slice, window) pair, the sum of its labeled rows' delays; NaN where none has one.

    Each pair's delays are summed in row order by ``ndarray.sum`` (pairwise summation), as
    pandas sums one pair's rows: ``np.add.reduceat`` adds sequentially, which differs in the
    last bits on long windows.
    """
    out = np.full(cells, np.nan)
    present = ~np.isnan(delay)
    if not present.any():
        return out
    order = np.argsort(cell, kind="stable")
    cell, present = cell[order], present[order]
    filled = np.where(present, delay[order], 0.0)
    bounds = np.flatnonzero(np.r_[True, cell[1:] != cell[:-1], True])
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        if present[lo:hi].any():
            out[cell[lo]] = filled[lo:hi].sum()
    return out


def reindex(counts: WindowCounts, classes: tuple[str, ...]) -> WindowCounts:
    """The same counts on a larger class order (zeros for the classes it lacks)."""
    if counts.classes == classes:
        return counts
    index = {name: i for i, name in enumerate(classes)}
    k = len(classes)
    matrix = np.zeros((k, k), dtype=np.int64)
    unlabeled = np.zeros(k, dtype=np.int64)
    positions = [index[c] for c in counts.classes]
    matrix[np.ix_(positions, positions)] = counts.matrix
    unlabeled[positions] = counts.unlabeled
    matrix.setflags(write=False)
    unlabeled.setflags(write=False)
    return WindowCounts(
        counts.window,
        classes,
        matrix,
        unlabeled,
        counts.rejected,
        counts.folded,
        counts.label_delay_sum_seconds,
    )


def align(reference: WindowCounts, current: WindowCounts) -> tuple[WindowCounts, WindowCounts]:
    """Put two windows on the union of their class sets, so they compare cell by cell."""
    classes = class_order(list(dict.fromkeys(reference.classes + current.classes)))
    return reindex(reference, classes), reindex(current, classes)
