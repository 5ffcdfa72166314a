"""The Prometheus text format (0.0.4) of catalog families, written without prometheus_client's
per-sample objects, byte for byte as ``prometheus_client.generate_latest`` writes it.

``generate_latest`` spends ~36 µs a sample line: a dict of labels per sample, the label names
sorted and every label name and value escaped again on each refresh. Yet a series' labels do
not change from one refresh to the next, only its value does. So each family keeps the label
part of its series (``name{a="..",b=".."} ``), keyed by the label values, across renders,
and a render formats values only. tests/test_render.py compares the output with
``generate_latest`` on hostile labels and values.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

from .metric_catalog import Family

_INF = float("inf")

# A family's label parts are kept while they are in use: a cache holding more than twice the
# series of the last render (a fleet that lost models) is rebuilt from that render's series.
_SLACK = 2


def go_float(value: float) -> str:
    """A sample value as prometheus_client writes it (its ``floatToGoString``): NaN, +Inf,
    -Inf, Python's shortest repr otherwise (``1.0``, ``-0.0``, ``1e-300``), except that a
    positive number with more than 6 integer digits switches to an exponent as Go does."""
    number = float(value)
    if -_INF < number < 1e6:  # the common case: finite and short (NaN is not in any range)
        return repr(number)
    if number != number:
        return "NaN"
    if number == _INF:
        return "+Inf"
    if number == -_INF:
        return "-Inf"
    text = repr(number)
    if number > 0:
        dot = text.find(".")
        if dot > 6:  # e.g. 12345678.5 -> 1.23456785e+07
            digits = text[:dot] + text[dot + 1 :]
            return f"{(digits[0] + '.' + digits[1:]).rstrip('0.')}e+{dot - 1:02d}"
    return text


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


class _Block:
    """Samples of one family sharing leading label values (``base``): a slice-window's matrix
    cells, its per-class figures. ``group`` names the trailing label values (``suffixes``,
    e.g. the class set), so the block's label parts are kept under (base, group) and a hit
    costs one lookup for the whole block."""

    __slots__ = ("base", "group", "suffixes", "values", "counts")

    def __init__(
        self,
        base: tuple[str, ...],
        group: Hashable,
        suffixes: Sequence[tuple[str, ...]],
        values: list[Any],
        counts: bool,
    ):
        self.base, self.group, self.suffixes, self.values = base, group, suffixes, values
        self.counts = counts


class Samples:
    """A family being filled for the renderer: ``add_metric`` as on prometheus_client's
    families, but it keeps only (label values, value) pairs, or blocks of them."""

    __slots__ = ("family", "rows")

    def __init__(self, family: Family):
        self.family = family
        self.rows: list[tuple[tuple[str, ...], Any] | _Block] = []

    def add_metric(self, labels: Sequence[str], value: Any) -> None:
        self.rows.append((tuple(labels), value))

    def add_block(
        self,
        base: tuple[str, ...],
        group: Hashable,
        suffixes: Sequence[tuple[str, ...]],
        values: list[Any],
        counts: bool = False,
    ) -> None:
        """Samples labelled ``(*base, *suffix)`` for each suffix, in order, with ``values``;
        ``suffixes`` must be the same whenever ``group`` is. ``counts``: every value is an
        int (then a zero can be memoised: an int has no -0.0)."""
        self.rows.append(_Block(base, group, suffixes, values, counts))


def add_block(
    family: Any,
    base: tuple[str, ...],
    group: Hashable,
    suffixes: Sequence[tuple[str, ...]],
    values: list[Any],
    counts: bool = False,
) -> None:
    """``Samples.add_block`` on the renderer's families, one add_metric per sample on
    prometheus_client's (the reference path: ``collect()``)."""
    if isinstance(family, Samples):
        family.add_block(base, group, suffixes, values, counts)
    else:
        for suffix, value in zip(suffixes, values, strict=True):
            family.add_metric((*base, *suffix), value)


def _count_texts(values: list[int], memo: dict[int, str]) -> list[str]:
    """Counts' texts, looked up in ``memo`` at C speed, the misses formatted and kept (ints
    only: 0 == -0.0 share a key but not a text, so a float must never reach this memo)."""
    texts: list[Any] = list(map(memo.get, values))
    if None in texts:
        for i, known in enumerate(texts):
            if known is None:
                texts[i] = memo[values[i]] = go_float(values[i])
    return texts


class _LabelParts:
    """One family's sample-name-and-labels prefixes, by label values."""

    def __init__(self, family: Family):
        suffix = {"counter": "_total", "info": "_info"}.get(family.kind, "")
        self.sample_name = family.name + suffix
        names = family.labels
        # generate_latest writes labels sorted by name; the order is fixed per family.
        self.order = sorted(range(len(names)), key=names.__getitem__)
        self.names = names
        self.parts: dict[tuple[str, ...], str] = {}
        self.blocks: dict[tuple[tuple[str, ...], Hashable], list[str]] = {}
        self.header = (
            f"# HELP {self.sample_name} {escape_help(family.help)}\n"
            f"# TYPE {self.sample_name} {'gauge' if family.kind == 'info' else family.kind}\n"
        )

    def build(self, values: tuple[str, ...]) -> str:
        if not values:
            return self.sample_name + " "
        names = self.names
        labels = ",".join(f'{names[i]}="{escape_label_value(values[i])}"' for i in self.order)
        return f"{self.sample_name}{{{labels}}} "

    def info_line(self, values: tuple[str, ...], info: Mapping[str, str]) -> str:
        """An info sample: the family's labels and the info's keys, sorted together, value 1."""
        pairs = sorted([*zip(self.names, values, strict=True), *info.items()])
        labels = ",".join(f'{name}="{escape_label_value(value)}"' for name, value in pairs)
        return f"{self.sample_name}{{{labels}}} 1.0\n" if pairs else f"{self.sample_name} 1.0\n"


class TextRenderer:
    """Renders filled families to text, keeping each family's label parts between renders.

    Safe to share between threads: a cache entry is a pure function of its key, so two
    renders racing on one family can at worst build an entry twice or drop one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._families: dict[Family, _LabelParts] = {}

    def _parts(self, family: Family) -> _LabelParts:
        parts = self._families.get(family)
        if parts is None:
            with self._lock:
                parts = self._families.setdefault(family, _LabelParts(family))
        return parts

    def render(self, families: Iterable[Samples]) -> bytes:
        out: list[str] = []
        for samples in families:
            out.append(self._render_family(samples))
        return "".join(out).encode("utf-8")

    def _render_family(self, samples: Samples) -> str:
        lines = self._parts(samples.family)
        rows = samples.rows
        if samples.family.kind == "info":
            info_rows: list[Any] = rows  # info families take add_metric only
            return lines.header + "".join(lines.info_line(labels, info) for labels, info in info_rows)
        cache, blocks = lines.parts, lines.blocks
        build = lines.build
        counts: dict[int, str] = {}  # blocks of ints: counts repeat a lot
        # single samples: zeros (0 == -0.0) and NaN (equal to nothing) never kept
        floats: dict[Any, str] = {}

        def text(value: Any) -> str:
            known = floats.get(value)
            if known is None:
                known = go_float(value)
                if value == value and value:
                    floats[value] = known
            return known

        out = [lines.header]
        append = out.append
        for row in rows:
            if type(row) is _Block:
                if not row.values:  # e.g. a shift report without moved cells: no lines at all
                    continue
                key = (row.base, row.group)
                prefixes = blocks.get(key)
                if prefixes is None:
                    base = row.base
                    prefixes = blocks[key] = [build((*base, *suffix)) for suffix in row.suffixes]
                if len(prefixes) != len(row.values):
                    raise ValueError(
                        f"{lines.sample_name}: a block of {len(row.values)} values for {len(prefixes)} series"
                    )
                # measured values rarely repeat: a memo only pays for counts
                texts = _count_texts(row.values, counts) if row.counts else map(go_float, row.values)
                append("\n".join(map(str.__add__, prefixes, texts)))
                append("\n")
                continue
            labels, value = row  # type: ignore[misc]
            prefix = cache.get(labels)
            if prefix is None:
                prefix = cache[labels] = build(labels)
            append(prefix)
            append(text(value))
            append("\n")
        if len(cache) + len(blocks) > _SLACK * len(rows) + 64:
            lines.parts = {row[0]: cache[row[0]] for row in rows if type(row) is tuple}
            # An empty block was skipped above and never cached: nothing to keep for it.
            lines.blocks = {
                (b.base, b.group): blocks[(b.base, b.group)]
                for b in rows
                if type(b) is _Block and (b.base, b.group) in blocks
            }
        return "".join(out)


RENDERER = TextRenderer()
