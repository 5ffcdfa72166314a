"""Reference kinds in one place: what each kind counts, where a slice's reference comes
from, and how it reads to a person.

A monitor compares its current window with a reference. The kinds differ in three ways only,
and each is answered here, for every caller (the refresh, ``report``, ``gate``, ``backfill``):

- the windows counted besides the current one (:func:`monitor_windows`): a span before it
  (``trailing``), the same span earlier (``offset``), the same span on each of several earlier
  periods (``seasonal``), or none (``version`` compares versions inside the current window; a
  ``baseline`` is stored, read by its own query);
- whose counts a slice is compared with (:func:`reference_of`): its own reference window, or the
  current window of the reference version's slice of the same model and segment;
- how the class cap ranks classes: across versions for a version reference, so both sides of
  a comparison share their classes (:func:`ranks_across_versions`).

Adding a kind means a config model (config.py) and a branch in each function below.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TypeVar

from .config import (
    BaselineReference,
    MonitorConfig,
    OffsetReference,
    Reference,
    SeasonalReference,
    TrailingReference,
    VersionReference,
)
from .matrices import SliceKey
from .windows import CURRENT, REFERENCE, Window, bucket_end

T = TypeVar("T")


def monitor_windows(now: datetime, monitor: MonitorConfig, bucket: timedelta) -> tuple[Window, ...]:
    """The windows to count for ``monitor`` as of ``now``: the current one first, then the
    reference's own window where its kind counts one."""
    current_end = bucket_end(now, bucket) - monitor.label_delay
    current = Window(CURRENT, current_end - monitor.window, current_end)
    reference = reference_window(monitor.reference, current)
    return (current,) if reference is None else (current, reference)


def reference_window(reference: Reference, current: Window) -> Window | None:
    """The reference's window for ``current``, or None where the kind counts none."""
    if isinstance(reference, TrailingReference):
        return Window(REFERENCE, current.start - reference.length, current.start)
    if isinstance(reference, OffsetReference):
        return Window(REFERENCE, current.start - reference.offset, current.end - reference.offset)
    if isinstance(reference, SeasonalReference):
        return Window(
            REFERENCE,
            current.start - reference.period,
            current.end - reference.period,
            repeats=reference.count,
            every=reference.period,
        )
    return None


def reference_version(reference: Reference) -> str | None:
    """The version a version reference compares with (its slices are the reference, not
    compared with themselves); None for every other kind."""
    return reference.version if isinstance(reference, VersionReference) else None


def ranks_across_versions(reference: Reference) -> bool:
    """Whether the class cap ranks classes across versions: both sides of a version comparison
    are slices of different versions and must share one class set."""
    return isinstance(reference, VersionReference)


def baseline_name(reference: Reference) -> str | None:
    """The stored capture a baseline reference reads; None for every other kind."""
    return reference.name if isinstance(reference, BaselineReference) else None


def reference_of(
    version: str | None,
    key: SliceKey,
    own: Mapping[str, T],
    slices: Mapping[SliceKey, Mapping[str, T]],
) -> T | None:
    """What the slice ``key`` is compared with, given its windows ``own`` and every slice's
    windows: the current window of the reference ``version``'s slice (same model and
    segment), or the slice's own reference window. None: nothing to compare with (the slice
    is the reference version itself, or the reference has no data), which the tests report
    as insufficient data, never as "fine". Generic: the refresh passes window counts, the
    report window results."""
    if version is not None:
        if key.version == version:
            return None
        other = slices.get(SliceKey(key.model, version, key.segment))
        return other.get(CURRENT) if other else None
    return own.get(REFERENCE)
