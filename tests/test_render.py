"""render.py against the reference it replaces: ``prometheus_client.generate_latest``.

The exporter's own renderer must write the same bytes as prometheus_client for the same
families (a diff of two scrapes across the change shows nothing), with hostile label values
(quotes, backslashes, newlines, unicode) and values (NaN, infinities, -0.0, subnormal-sized
and huge numbers), on the first render and on later ones that reuse the kept label parts.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.utils import floatToGoString

from confusion_exporter import metric_catalog as catalog
from confusion_exporter.exposition import HealthCollector, SnapshotCollector, render
from confusion_exporter.matrices import SliceKey
from confusion_exporter.render import Samples, TextRenderer, go_float
from confusion_exporter.snapshot import Snapshot

from . import metric_snapshots

HOSTILE_LABELS = (
    'quo"te',
    "back\\slash",
    "new\nline",
    "\\n literal",
    'all \\"\n three',
    "ünïcødé ✓ 数字",
    "",
    "trailing\\",
    "{brace}=,comma",
)
HOSTILE_VALUES = (
    0,
    1,
    -1,
    0.0,
    -0.0,
    1.5,
    float("nan"),
    float("inf"),
    float("-inf"),
    1e-300,
    5e-324,
    1e300,
    2**62,
    10**17 + 3,
    123456.0,
    1234567.0,
    12345678.25,
    0.1 + 0.2,
    True,
    np.float64(2.5),
    np.int64(7),
)


def reference(*families) -> bytes:
    """What prometheus_client writes for these families."""

    class Fixed:
        def collect(self):
            return families

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed())  # type: ignore[arg-type]
    return generate_latest(registry)


@pytest.mark.parametrize("value", HOSTILE_VALUES, ids=repr)
def test_values_are_formatted_as_prometheus_client_does(value):
    assert go_float(value) == floatToGoString(value)


def test_go_float_over_many_magnitudes():
    # the exponent switch happens at 7 integer digits: cover both sides, positive and negative
    rng = np.random.default_rng(18)
    numbers = [*(10.0 ** rng.uniform(-320, 308, 2000)), *(rng.integers(0, 10**12, 2000) / 7)]
    for number in numbers:
        for value in (float(number), -float(number), int(number)):
            assert go_float(value) == floatToGoString(value), value


def _hostile_family(kind: str) -> catalog.Family:
    return catalog.Family(
        f"test_hostile_{kind}",
        kind,  # type: ignore[arg-type]
        'help with a \\ backslash,\na newline and "quotes"',
        ("zeta", "alpha", "mid") if kind != "info" else ("zeta", "alpha"),
    )


@pytest.mark.parametrize("kind", ["gauge", "counter"])
def test_hostile_labels_and_values_render_identically(kind):
    family = _hostile_family(kind)
    size = len(HOSTILE_LABELS)
    rows = [
        ((HOSTILE_LABELS[i % size], HOSTILE_LABELS[-1 - i % size], HOSTILE_LABELS[(i + 3) % size]), value)
        for i, value in enumerate(HOSTILE_VALUES)
    ]
    rows += [(("same", "labels", label), value) for label in HOSTILE_LABELS for value in HOSTILE_VALUES[:4]]
    expected_family = (GaugeMetricFamily if kind == "gauge" else CounterMetricFamily)(
        family.name, family.help, labels=list(family.labels)
    )
    ours = Samples(family)
    for labels, value in rows:
        expected_family.add_metric(list(labels), value)
        ours.add_metric(list(labels), value)
    renderer = TextRenderer()
    expected = reference(expected_family)
    assert renderer.render([ours]) == expected
    assert b"\\n" in expected and b'\\"' in expected and b"\\\\" in expected  # the escapes were exercised
    # Again with the label parts kept from the first render: still the same bytes.
    assert renderer.render([ours]) == expected


def test_info_and_unlabeled_families_render_identically():
    info = _hostile_family("info")
    expected_info = InfoMetricFamily(info.name, info.help, labels=list(info.labels))
    ours_info = Samples(info)
    plain = catalog.Family("test_plain", "gauge", "no labels")
    expected_plain = GaugeMetricFamily(plain.name, plain.help)
    ours_plain = Samples(plain)
    for labels, value in [
        (("z\n", 'a"'), {"version": "1.0\\", "python": "3.11 ✓"}),
        (("", ""), {"b": ""}),
    ]:
        expected_info.add_metric(list(labels), value)
        ours_info.add_metric(labels, value)
    expected_plain.add_metric([], -0.0)
    ours_plain.add_metric([], -0.0)
    empty = catalog.Family("test_empty", "counter", "a family without samples")
    expected_empty = CounterMetricFamily(empty.name, empty.help)
    assert TextRenderer().render([ours_info, ours_plain, Samples(empty)]) == reference(
        expected_info, expected_plain, expected_empty
    )


def hostile_snapshot() -> Snapshot:
    """The rich snapshot (every family has samples) with hostile names and values."""
    rich = metric_snapshots.snapshot()
    (monitor,) = rich.monitors.values()
    (piece,) = monitor.slices
    windows = {}
    for name, window in piece.windows.items():
        counts = dataclasses.replace(
            window.counts,
            classes=('fr"aud\\', "le\ngit ✓"),
            matrix=np.array([[2**62, 0], [10**17 + 3, 1]], np.int64),
            rejected={"unknown_class": 2**40},
        )
        windows[name] = dataclasses.replace(window, counts=counts, cost=-0.0)
    piece = dataclasses.replace(
        piece,
        key=SliceKey('mo"del\\x', "v\n2", "seg ünï"),
        windows=windows,
        cost_difference=float("-inf"),
        cost_increase=1e-300,
        cost_increase_lower_bound=float("nan"),
    )
    monitor = dataclasses.replace(
        monitor,
        name='shop:"weird"\\\nname',
        team="ri\\sk",
        slices=(piece,),
        thresholds={**monitor.thresholds, "alpha": 5e-324, "min_samples": 10**18, "min_effect": float("inf")},
        recall_objectives={'fr"aud\\': -0.0, "数字": 12345678.25},
    )
    return Snapshot(rich.taken_at, {monitor.name: monitor, "plain": rich.monitors["shop:fraud-gb"]})


def test_rich_snapshot_renders_identically_to_generate_latest():
    snapshot = hostile_snapshot()
    health = metric_snapshots.health()
    health.refresh_duration_seconds = float("nan")
    health.folds["shop"]["pending"] = float("-inf")
    health.folds['we"ird\n'] = {"folds": 10**19, "duration": -0.0}
    health.monitors.append('m"\\')
    health.refreshes['m"\\'] = 2**53 + 1
    health.failures['m"\\'] = 0
    health.last_success['m"\\'] = 1e300

    collectors = (SnapshotCollector(snapshot), HealthCollector(health))
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    expected = generate_latest(registry)
    first = render(*collectors)
    assert first == expected
    # Every family of the catalog wrote at least one sample (the comparison covers them all).
    for family in catalog.SNAPSHOT + catalog.HEALTH:
        name = family.name + {"counter": "_total", "info": "_info"}.get(family.kind, "")
        assert f"\n{name}{{".encode() in expected or f"\n{name} ".encode() in expected, name
    assert render(*collectors) == expected  # with the label parts kept from the first render


def test_a_later_render_with_new_values_and_series_is_still_identical():
    renderer = TextRenderer()
    family = _hostile_family("gauge")
    for round_ in range(4):
        ours = Samples(family)
        expected = GaugeMetricFamily(family.name, family.help, labels=list(family.labels))
        # each round drops some series, keeps others with new values and adds new ones
        for i in range(round_ * 50, round_ * 50 + 120):
            labels = [f"s{i}", HOSTILE_LABELS[i % len(HOSTILE_LABELS)], str(i % 3)]
            value = HOSTILE_VALUES[(i + round_) % len(HOSTILE_VALUES)]
            ours.add_metric(labels, value)
            expected.add_metric(labels, value)
        assert renderer.render([ours]) == reference(expected)
    # the kept label parts are bounded by the series in use, not by every series ever seen
    kept = renderer._families[family].parts  # noqa: SLF001 - the bound is the point of the test
    assert len(kept) <= 2 * 120 + 64


def test_nan_and_negative_zero_survive_the_integer_memo():
    # 0 == -0.0 == False and they hash alike: a memo keyed by value would print one for all
    family = catalog.Family("test_zeros", "gauge", "zeros", ("i",))
    ours = Samples(family)
    expected = GaugeMetricFamily(family.name, family.help, labels=["i"])
    for i, value in enumerate([0, -0.0, 0.0, False, math.nan, 0, -0.0]):
        ours.add_metric([str(i)], value)
        expected.add_metric([str(i)], value)
    body = TextRenderer().render([ours])
    assert body == reference(expected)
    assert b'{i="1"} -0.0\n' in body and b'{i="0"} 0.0\n' in body


def test_a_slice_whose_class_set_changes_between_refreshes():
    # The kept label parts of a block are keyed by the slice-window and its class set: a
    # class appearing (or folded away) renders its own cells, never the old set's labels.
    from confusion_exporter.stats.classification import classification_metrics

    rich = metric_snapshots.snapshot()
    (monitor,) = rich.monitors.values()
    (piece,) = monitor.slices

    def with_classes(classes: tuple[str, ...]) -> Snapshot:
        k = len(classes)
        matrix = np.arange(k * k, dtype=np.int64).reshape(k, k)
        windows = {}
        for name, window in piece.windows.items():
            counts = dataclasses.replace(
                window.counts, classes=classes, matrix=matrix, unlabeled=np.zeros(k, np.int64)
            )
            windows[name] = dataclasses.replace(
                window, counts=counts, metrics=classification_metrics(matrix), thresholds=()
            )
        changed = dataclasses.replace(piece, windows=windows, shift=None)
        return Snapshot(rich.taken_at, {monitor.name: dataclasses.replace(monitor, slices=(changed,))})

    for classes in [("a", "b"), ("a", "b", "c"), ("b", "c"), ("a", "b")]:
        collector = SnapshotCollector(with_classes(classes))
        registry = CollectorRegistry(auto_describe=False)
        registry.register(collector)
        assert render(collector) == generate_latest(registry), classes


def test_blocks_render_as_their_samples_would_empty_ones_included():
    from confusion_exporter.render import add_block

    family = _hostile_family("gauge")
    ours, expected = Samples(family), GaugeMetricFamily(family.name, family.help, labels=list(family.labels))
    suffixes = tuple((label,) for label in HOSTILE_LABELS)
    for target in (ours, expected):
        add_block(target, ("b", "a"), "empty", (), [])  # nothing to write, not a blank line
        add_block(target, ('x"', "y\n"), "all", suffixes, list(HOSTILE_VALUES[: len(suffixes)]))
        target.add_metric(["single", "", ""], -0.0)
        add_block(target, ("b", "a"), "empty", (), [])
        if isinstance(target, Samples):
            target.add_block(("c", "d"), "counts", suffixes[:3], [0, 10**17 + 3, -5], counts=True)
        else:
            add_block(target, ("c", "d"), "counts", suffixes[:3], [0, 10**17 + 3, -5])
    body = TextRenderer().render([ours])
    assert body == reference(expected)
    assert b"\n\n" not in body


def test_an_empty_block_survives_the_cache_being_trimmed():
    """A refresh with far fewer series than the last trims the kept label parts; an empty block
    (a shift report without moved cells) was never kept and must not break the trim (found by
    the live sequential tests: a KeyError in the refresh)."""
    from confusion_exporter.render import add_block

    family = _hostile_family("gauge")
    renderer = TextRenderer()

    def refresh(singles: int) -> tuple[bytes, bytes]:
        ours, expected = (
            Samples(family),
            GaugeMetricFamily(family.name, family.help, labels=list(family.labels)),
        )
        for target in (ours, expected):
            add_block(target, ("b", "a"), "empty", (), [])
            for i in range(singles):
                target.add_metric([f"s{i}", "", ""], float(i))
        return renderer.render([ours]), reference(expected)

    for singles in (500, 3):  # the second is below the trim threshold of the first's cache
        body, expected = refresh(singles)
        assert body == expected
