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
from collections.abc import Iterable, Mapping, Sequence
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


class Samples:
    """A family being filled for the renderer: ``add_metric`` as on prometheus_client's
    families, but it keeps only (label values, value) pairs."""

    __slots__ = ("family", "rows")

    def __init__(self, family: Family):
        self.family = family
        self.rows: list[tuple[tuple[str, ...], Any]] = []

    def add_metric(self, labels: Sequence[str], value: Any) -> None:
        self.rows.append((tuple(labels), value))


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
            return lines.header + "".join(lines.info_line(labels, info) for labels, info in rows)
        cache = lines.parts
        build = lines.build
        ints: dict[int, str] = {}  # counts repeat a lot; ints only: 0 == -0.0 would collide
        out = [lines.header]
        append = out.append
        for labels, value in rows:
            prefix = cache.get(labels)
            if prefix is None:
                prefix = cache[labels] = build(labels)
            if type(value) is int:
                text = ints.get(value)
                if text is None:
                    text = ints[value] = go_float(value)
            else:
                text = go_float(value)
            append(prefix)
            append(text)
            append("\n")
        if len(cache) > _SLACK * len(rows) + 64:
            lines.parts = {labels: cache[labels] for labels, _ in rows}
        return "".join(out)


RENDERER = TextRenderer()
