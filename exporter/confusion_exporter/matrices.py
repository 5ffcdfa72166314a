"""Grouped count rows -> per-slice window matrices, with class sets, folding and rejections.

Pure: takes the rows a count query returned and the windows they were asked for.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .domain import NULL, OTHER, REJECT_REASONS, UNKNOWN_CLASS, SliceKey, WindowCounts
from .windows import CURRENT, Window


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


def _assign_windows(rows: pd.DataFrame, windows: Sequence[Window], bucket_seconds: int) -> pd.Series:
    labels = pd.Series(pd.NA, index=rows.index, dtype=object)
    future = rows["bucket"].isna()
    labels[future] = CURRENT  # rows dated after "now" are counted against the current window
    starts = rows["bucket"].astype("float64") * bucket_seconds
    for window in windows:
        for start, end in window.spans():
            inside = ~future & (starts >= start.timestamp()) & (starts < end.timestamp())
            labels[inside] = window.name
    return labels


def _choose_classes(valid: pd.DataFrame, max_classes: int) -> tuple[tuple[str, ...], set[str]]:
    """Discover the class set by frequency; beyond the cap, the rarest fold into ``__other__``."""
    observed = pd.concat(
        [
            valid[["predicted", "n"]].rename(columns={"predicted": "cls"}),
            valid.loc[valid["actual"].notna(), ["actual", "n"]].rename(columns={"actual": "cls"}),
        ]
    )
    totals = observed.groupby("cls")["n"].sum()
    if len(totals) <= max_classes:
        return class_order(list(totals.index)), set()
    ranked = sorted(totals.items(), key=lambda kv: (-kv[1], _order_key(kv[0])))
    kept = [name for name, _ in ranked[: max_classes - 1]]
    return class_order([*kept, OTHER]), {name for name, _ in ranked[max_classes - 1 :]}


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
    """
    if rows.empty:
        return {}
    frame = rows.copy()
    for column in ("model", "version", "segment"):
        frame[column] = frame[column].astype(object).where(frame[column].notna(), NULL)
    frame["window"] = _assign_windows(frame, windows, bucket_seconds)
    frame = frame[frame["window"].notna()]
    out: dict[SliceKey, dict[str, WindowCounts]] = {}
    for (model, version, segment), group in frame.groupby(["model", "version", "segment"], sort=True):
        group = group.copy()
        valid_mask = group["reason"].isna()
        if classes is not None:
            class_set = tuple(classes)
            known = set(class_set)
            outside = ~group["predicted"].isin(known) | (
                group["actual"].notna() & ~group["actual"].isin(known)
            )
            group.loc[valid_mask & outside, "reason"] = UNKNOWN_CLASS
            valid_mask = group["reason"].isna()
            folded_names: set[str] = set()
        else:
            class_set, folded_names = _choose_classes(group[valid_mask], max_classes)
        out[SliceKey(str(model), str(version), str(segment))] = {
            w.name: _window_counts(group, valid_mask, w, class_set, folded_names) for w in windows
        }
    return out


def _window_counts(
    group: pd.DataFrame,
    valid_mask: pd.Series,
    window: Window,
    class_set: tuple[str, ...],
    folded_names: set[str],
) -> WindowCounts:
    in_window = group["window"] == window.name
    rejected_rows = group[in_window & ~valid_mask]
    rejected = {reason: 0 for reason in REJECT_REASONS}
    for reason, n in rejected_rows.groupby("reason")["n"].sum().items():
        rejected[str(reason)] += int(n)

    valid = group[in_window & valid_mask]
    index = {name: i for i, name in enumerate(class_set)}
    predicted = valid["predicted"].map(lambda c: index.get(c, index.get(OTHER, -1)))
    folded = int(
        valid.loc[valid["predicted"].isin(folded_names) | valid["actual"].isin(folded_names), "n"].sum()
    )
    if "folded" in valid:  # capped in SQL (source/class_cap.py), which counted what it folded
        folded += int(valid["folded"].sum())
    k = len(class_set)
    matrix = np.zeros((k, k), dtype=np.int64)
    unlabeled = np.zeros(k, dtype=np.int64)
    labeled = valid["actual"].notna()
    if labeled.any():
        actual = valid.loc[labeled, "actual"].map(lambda c: index.get(c, index.get(OTHER, -1)))
        np.add.at(
            matrix,
            (actual.to_numpy(dtype=np.int64), predicted[labeled].to_numpy(dtype=np.int64)),
            valid.loc[labeled, "n"].to_numpy(dtype=np.int64),
        )
    if (~labeled).any():
        np.add.at(
            unlabeled,
            predicted[~labeled].to_numpy(dtype=np.int64),
            valid.loc[~labeled, "n"].to_numpy(dtype=np.int64),
        )
    matrix.setflags(write=False)
    unlabeled.setflags(write=False)
    delays = valid.loc[labeled, "delay_sum"] if "delay_sum" in valid else pd.Series(dtype="float64")
    delay_sum = float(delays.sum()) if delays.notna().any() else float("nan")
    return WindowCounts(window, class_set, matrix, unlabeled, rejected, folded, delay_sum)


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
