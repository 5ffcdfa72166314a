"""Snapshot and health state -> Prometheus metric families -> rendered exposition bytes.

The only module that builds metric families, each from its entry in metric_catalog.py (name,
type, help and labels live there only). Rendering happens once per refresh, never
per scrape, and not through ``generate_latest()`` (~11 µs of CPU a sample): the collectors
fill render.py's families, a slice-window's cells and classes as blocks, and render.py
writes the same bytes from label parts it keeps between refreshes (1-1.6 µs a sample).
``collect()`` still yields prometheus_client's families: a registry, promtool's check and
tests/test_render.py's byte-for-byte comparison read the collectors that way.
"""

from __future__ import annotations

import functools
import platform
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from . import __version__
from . import metric_catalog as catalog
from .domain import REJECT_REASONS
from .matrices import WindowCounts
from .render import RENDERER, Samples, add_block
from .snapshot import SequentialResult, SliceResult, Snapshot, WindowResult
from .stats import sequential as seq
from .stats.classification import ClassificationMetrics
from .stats.shift import STATES, ShiftReport
from .windows import CURRENT, REFERENCE

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

# A collector's families by catalog entry. Any, not Metric: add_metric is on the subclasses and
# takes a number, or a dict for the info family; the catalog entry says which.
Families = dict[catalog.Family, Any]


class _CatalogCollector(Collector):
    """Collects one concern's catalog families, in catalog order, all of them even when empty
    (a family without samples still has its HELP and TYPE lines).

    ``describe()`` returns those families empty, so a registry knows their names without
    collecting and refuses a second collector that exports one of them.
    """

    families: tuple[catalog.Family, ...] = ()

    def describe(self) -> Iterable[Metric]:
        return [family.new() for family in self.families]

    def collect(self) -> Iterator[Metric]:
        yield from self.filled().values()

    def filled(self, new: Callable[[catalog.Family], Any] = catalog.Family.new) -> Families:
        """The families filled: prometheus_client's by default, render.Samples for the renderer."""
        metrics = {family: new(family) for family in self.families}
        self._fill(metrics)
        return metrics

    def samples(self) -> list[Samples]:
        return list(self.filled(Samples).values())

    def _fill(self, f: Families) -> None:
        raise NotImplementedError


class _SnapshotPart(_CatalogCollector):
    def __init__(self, snapshot: Snapshot):
        self._snapshot = snapshot

    def _slices(self) -> Iterator[tuple[list[str], SliceResult]]:
        """Each slice with its label values (monitor, model, version, segment)."""
        for monitor in self._snapshot.monitors.values():
            for result in monitor.slices:
                yield [monitor.name, result.key.model, result.key.version, result.key.segment], result


class _MatrixCollector(_SnapshotPart):
    families = catalog.MATRIX

    def _fill(self, f: Families) -> None:
        for base, result in self._slices():
            for name, window in result.windows.items():
                _add_window(f, (*base, name), window.counts, window.metrics)


@functools.lru_cache(maxsize=1024)
def _cell_suffixes(classes: tuple[str, ...]) -> tuple[tuple[str, str, str], ...]:
    """The matrix cells' trailing labels (true_class, predicted_class, correct), row by row."""
    return tuple(
        (t, p, "true" if i == j else "false") for i, t in enumerate(classes) for j, p in enumerate(classes)
    )


@functools.lru_cache(maxsize=1024)
def _class_suffixes(classes: tuple[str, ...]) -> tuple[tuple[str], ...]:
    return tuple((c,) for c in classes)


_REASON_SUFFIXES = tuple((reason,) for reason in REJECT_REASONS)


def _add_window(
    f: Families, values: tuple[str, ...], counts: WindowCounts, metrics: ClassificationMetrics
) -> None:
    # The K^2 cells and K classes are most of the samples: added as blocks, whose label parts
    # the renderer keeps per slice-window and class set (render.py).
    classes = tuple(counts.classes)
    cells = [int(count) for row in counts.matrix.tolist() for count in row]
    add_block(f[catalog.MATRIX_PREDICTIONS], values, classes, _cell_suffixes(classes), cells, counts=True)
    per_class = _class_suffixes(classes)
    for family, figures, kind in (
        (catalog.CLASS_PRECISION, metrics.precision, float),
        (catalog.CLASS_RECALL, metrics.recall, float),
        (catalog.CLASS_F1, metrics.f1, float),
        (catalog.CLASS_SUPPORT, metrics.support, int),
    ):
        add_block(
            f[family], values, classes, per_class, [kind(x) for x in figures.tolist()], counts=kind is int
        )
    f[catalog.ACCURACY].add_metric(values, metrics.accuracy)
    f[catalog.MACRO_F1].add_metric(values, metrics.macro_f1)
    f[catalog.BALANCED_ACCURACY].add_metric(values, metrics.balanced_accuracy)
    labeled, unlabeled = counts.labeled_total, counts.unlabeled_total
    f[catalog.LABELED].add_metric(values, labeled)
    f[catalog.UNLABELED].add_metric(values, unlabeled)
    total = labeled + unlabeled
    f[catalog.LABEL_COVERAGE].add_metric(values, labeled / total if total else float("nan"))
    rejected = [int(counts.rejected.get(reason, 0)) for reason in REJECT_REASONS]
    add_block(f[catalog.REJECTED_ROWS], values, REJECT_REASONS, _REASON_SUFFIXES, rejected, counts=True)
    f[catalog.FOLDED].add_metric(values, counts.folded)
    f[catalog.LABEL_DELAY].add_metric(values, counts.mean_label_delay_seconds)


class _ShiftCollector(_SnapshotPart):
    families = catalog.SHIFT

    def _fill(self, f: Families) -> None:
        for base, result in self._slices():
            if result.shift is not None:
                _add_shift(f, base, result.shift)


def _add_shift(f: Families, values: list[str], report: ShiftReport) -> None:
    for name, test in report.tests.items():
        labels = [*values, name]
        f[catalog.SHIFT_STATISTIC].add_metric(labels, test.statistic)
        f[catalog.SHIFT_DOF].add_metric(labels, test.dof)
        f[catalog.SHIFT_P_VALUE].add_metric(labels, test.p_value)
        f[catalog.SHIFT_LOG10_P_VALUE].add_metric(labels, test.log10_p_value)
        f[catalog.SHIFT_EFFECT].add_metric(labels, test.effect_size)
        f[catalog.SHIFT_SAMPLES].add_metric([*labels, REFERENCE], test.n_reference)
        f[catalog.SHIFT_SAMPLES].add_metric([*labels, CURRENT], test.n_current)
        f[catalog.SHIFT_MONTE_CARLO].add_metric(labels, int(test.monte_carlo))
        states = [int(state == test.state) for state in STATES]
        add_block(f[catalog.SHIFT_STATE], tuple(labels), STATES, _SHIFT_STATE_SUFFIXES, states, counts=True)
    base, rows, cells = tuple(values), report.rows, report.cells
    row_classes = tuple((row.true_class,) for row in rows)
    add_block(f[catalog.SHIFT_ROW_STATISTIC], base, row_classes, row_classes, [r.statistic for r in rows])
    add_block(f[catalog.SHIFT_ROW_P_VALUE], base, row_classes, row_classes, [r.p_value for r in rows])
    add_block(f[catalog.SHIFT_ROW_EFFECT], base, row_classes, row_classes, [r.effect_size for r in rows])
    cell_classes = tuple((cell.true_class, cell.predicted_class) for cell in cells)
    add_block(f[catalog.SHIFT_CELL_RESIDUAL], base, cell_classes, cell_classes, [c.residual for c in cells])


_SHIFT_STATE_SUFFIXES = tuple((state,) for state in STATES)
_SEQUENTIAL_STATE_SUFFIXES = tuple((state,) for state in seq.STATES)


@functools.lru_cache(maxsize=4096)
def _tagged(cells: tuple[tuple[str, ...], ...], tags: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    """Each cell's labels followed by each tag: (*cell, tag) for cell, for tag."""
    return tuple((*cell, tag) for cell in cells for tag in tags)


class _SequentialCollector(_SnapshotPart):
    families = catalog.SEQUENTIAL

    def _fill(self, f: Families) -> None:
        for monitor in self._snapshot.monitors.values():
            if monitor.sequential is not None:
                _add_sequential(f, monitor.name, monitor.sequential)


def _add_sequential(f: Families, monitor: str, result: SequentialResult) -> None:
    f[catalog.SEQUENTIAL_CAUGHT_UP].add_metric([monitor], int(result.caught_up))
    if result.period_end is not None:
        f[catalog.SEQUENTIAL_PERIOD_END].add_metric([monitor], result.period_end.timestamp())
    rate, trials, change = (
        f[catalog.SEQUENTIAL_ERROR_RATE],
        f[catalog.SEQUENTIAL_TRIALS],
        f[catalog.SEQUENTIAL_RELATIVE_CHANGE],
    )
    windows, bounds = (REFERENCE, CURRENT), ("estimate", "lower", "upper")
    for piece in result.slices:
        base = (monitor, piece.model, piece.segment)
        f[catalog.SEQUENTIAL_THRESHOLD].add_metric(base, piece.threshold)
        states = [int(state == piece.state) for state in seq.STATES]
        add_block(
            f[catalog.SEQUENTIAL_STATE], base, seq.STATES, _SEQUENTIAL_STATE_SUFFIXES, states, counts=True
        )
        cells = piece.cells
        # a detector's cells as blocks: one lookup of their label parts per family and detector
        names = tuple((c.kind, c.true_class, c.predicted_class) for c in cells)
        add_block(f[catalog.SEQUENTIAL_EVIDENCE], base, names, names, [c.evidence for c in cells])
        shifted = [int(c.state == seq.SHIFT) for c in cells]
        add_block(f[catalog.SEQUENTIAL_SHIFTED], base, names, names, shifted, counts=True)
        by_window = _tagged(names, windows)
        add_block(
            rate, base, names, by_window, [v for c in cells for v in (c.reference_rate, c.current_rate)]
        )
        trials_values = [int(v) for c in cells for v in (c.reference_trials, c.current_trials)]
        add_block(trials, base, names, by_window, trials_values, counts=True)
        changes = [
            v for c in cells for v in (c.relative_change, c.relative_change_low, c.relative_change_high)
        ]
        add_block(change, base, names, _tagged(names, bounds), changes)


class _CostAndConfidenceCollector(_SnapshotPart):
    families = catalog.COST_AND_CONFIDENCE

    def _fill(self, f: Families) -> None:
        for base, result in self._slices():
            for name, window in result.windows.items():
                _add_window_extras(f, [*base, name], window)
            f[catalog.ERROR_COST_DIFFERENCE].add_metric(base, result.cost_difference)
            f[catalog.ERROR_COST_INCREASE].add_metric(base, result.cost_increase)
            f[catalog.ERROR_COST_INCREASE_LOWER_BOUND].add_metric(base, result.cost_increase_lower_bound)


def _add_window_extras(f: Families, values: list[str], window: WindowResult) -> None:
    """Cost, confidence and decision-threshold figures of one slice in one window."""
    f[catalog.ERROR_COST].add_metric(values, window.cost)
    confidence = window.confidence
    if confidence is not None:
        f[catalog.SCORED].add_metric(values, confidence.scored)
        f[catalog.INVALID_SCORES].add_metric(values, confidence.invalid)
        f[catalog.CALIBRATION_ERROR].add_metric(values, confidence.calibration_error)
        mean_confidence = f[catalog.MEAN_CONFIDENCE]
        mean_confidence.add_metric([*values, "correct"], confidence.mean_confidence_correct)
        mean_confidence.add_metric([*values, "incorrect"], confidence.mean_confidence_incorrect)
        f[catalog.HIGH_CONFIDENCE_ERRORS].add_metric(values, confidence.high_confidence_errors)
        f[catalog.HIGH_CONFIDENCE_ERROR_RATIO].add_metric(values, confidence.high_confidence_error_share)
    for at in window.thresholds:
        threshold, classes = format(at.threshold, "g"), tuple(at.classes)
        cells = [int(count) for row in at.matrix.tolist() for count in row]
        suffixes = _threshold_suffixes(threshold, classes)
        add_block(
            f[catalog.THRESHOLD_MATRIX], tuple(values), (threshold, classes), suffixes, cells, counts=True
        )


@functools.lru_cache(maxsize=1024)
def _threshold_suffixes(threshold: str, classes: tuple[str, ...]) -> tuple[tuple[str, str, str], ...]:
    return tuple((threshold, t, p) for t in classes for p in classes)


class _MonitorCollector(_SnapshotPart):
    families = catalog.MONITOR

    def _fill(self, f: Families) -> None:
        for monitor in self._snapshot.monitors.values():
            f[catalog.MONITOR_INFO].add_metric(
                [monitor.name, monitor.source, monitor.model, monitor.team, monitor.reference], 1
            )
            for cls, objective in monitor.recall_objectives.items():
                f[catalog.RECALL_OBJECTIVE].add_metric([monitor.name, cls], objective)
            for parameter, family in catalog.THRESHOLDS.items():
                f[family].add_metric([monitor.name], monitor.thresholds[parameter])
            for span in monitor.windows:
                f[catalog.WINDOW_START].add_metric([monitor.name, span.name], span.start.timestamp())
                f[catalog.WINDOW_END].add_metric([monitor.name, span.name], span.end.timestamp())
            f[catalog.MONITOR_SLICES].add_metric([monitor.name], len(monitor.slices))
            f[catalog.MONITOR_EVALUATED].add_metric([monitor.name], monitor.evaluated_at.timestamp())


_SNAPSHOT_PARTS = (
    _MatrixCollector,
    _ShiftCollector,
    _SequentialCollector,
    _CostAndConfidenceCollector,
    _MonitorCollector,
)


class SnapshotCollector(Collector):
    """Turn a snapshot into metric families (one collector per concern, in the order of
    catalog.SNAPSHOT); no I/O, so registering it is harmless.

    # HELP confusion_matrix_predictions Labeled predictions per confusion-matrix cell ...
    # TYPE confusion_matrix_predictions gauge
    confusion_matrix_predictions{monitor="shop:digits-rf",model="digits-rf",version="v1",
        segment="__all__",window="current",true_class="8",predicted_class="1",correct="false"} 12.0
    """

    def __init__(self, snapshot: Snapshot):
        self._parts = [part(snapshot) for part in _SNAPSHOT_PARTS]

    def describe(self) -> Iterable[Metric]:
        return [family.new() for family in catalog.SNAPSHOT]

    def collect(self) -> Iterator[Metric]:
        yield from self._filled(catalog.Family.new)

    def samples(self) -> list[Samples]:
        return self._filled(Samples)

    def _filled(self, new: Callable[[catalog.Family], Any]) -> list[Any]:
        metrics: Families = {}
        for part in self._parts:
            metrics.update(part.filled(new))
        return [metrics[family] for family in catalog.SNAPSHOT]


@dataclass
class HealthState:
    """The refresher's own figures; mutated under ``lock`` by the refresher only."""

    monitors: list[str]
    lock: threading.Lock = field(default_factory=threading.Lock)
    refresh_duration_seconds: float = float("nan")
    database_up: int = 0
    refreshes: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    last_success: dict[str, float] = field(default_factory=dict)
    last_error: dict[str, str] = field(default_factory=dict)
    folds: dict[str, dict[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.monitors:
            self.refreshes.setdefault(name, 0)
            self.failures.setdefault(name, 0)
            self.last_success.setdefault(name, 0.0)


# The rollup's counters and gauges, by their key in a source's HealthState.folds entry.
_FOLD_FIGURES = (
    (catalog.ROLLUP_FOLDS, "folds"),
    (catalog.ROLLUP_PREDICTIONS, "predictions"),
    (catalog.ROLLUP_LABEL_CHANGES, "labels"),
    (catalog.ROLLUP_PENDING_IDS, "pending"),
    (catalog.ROLLUP_FOLD_DURATION, "duration"),
    (catalog.ROLLUP_LABELS, "label_rows"),
    (catalog.ROLLUP_BATCH_ROWS, "batch_rows"),
    (catalog.ROLLUP_CAUGHT_UP, "caught_up"),
    (catalog.ROLLUP_GIVEN_UP_IDS, "given_up"),
)


class HealthCollector(_CatalogCollector):
    """The exporter's own health, so a dead refresher or database shows up in metrics.

    # HELP confusion_exporter_refresh_failures_total Monitor refreshes that failed ...
    # TYPE confusion_exporter_refresh_failures_total counter
    confusion_exporter_refresh_failures_total{monitor="shop:digits-rf"} 3.0
    """

    families = catalog.HEALTH

    def __init__(self, state: HealthState):
        self._state = state

    def _fill(self, f: Families) -> None:
        state = self._state
        with state.lock:
            build = {"version": __version__, "python_version": platform.python_version()}
            f[catalog.BUILD].add_metric([], build)
            f[catalog.REFRESH_DURATION].add_metric([], state.refresh_duration_seconds)
            f[catalog.DATABASE_UP].add_metric([], state.database_up)
            for name in state.monitors:
                f[catalog.REFRESHES].add_metric([name], state.refreshes[name])
                f[catalog.REFRESH_FAILURES].add_metric([name], state.failures[name])
                f[catalog.LAST_REFRESH_SUCCESS].add_metric([name], state.last_success[name])
            for source, stats in state.folds.items():
                for family, key in _FOLD_FIGURES:
                    f[family].add_metric([source], stats.get(key, 0))
                backlog = f[catalog.ROLLUP_BACKLOG_ROWS]
                backlog.add_metric([source, "predictions"], stats.get("predictions_left", 0))
                backlog.add_metric([source, "labels"], stats.get("labels_left", 0))


def render(*collectors: Collector) -> bytes:
    """Render collectors to the Prometheus text format (0.0.4), the same bytes as
    ``generate_latest`` of a registry holding them: the catalog's collectors through
    render.py (label parts kept between refreshes), any other through prometheus_client."""
    parts = []
    for collector in collectors:
        if isinstance(collector, _CatalogCollector | SnapshotCollector):
            parts.append(RENDERER.render(collector.samples()))
        else:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(collector)
            parts.append(generate_latest(registry))
    return b"".join(parts)


_PROCESS_REGISTRY = CollectorRegistry(auto_describe=False)
ProcessCollector(registry=_PROCESS_REGISTRY)
PlatformCollector(registry=_PROCESS_REGISTRY)


def render_process() -> bytes:
    """Render process_* and python_info: a few lines, cheap enough to do per scrape."""
    return generate_latest(_PROCESS_REGISTRY)


class _ClientErrorsCollector(_CatalogCollector):
    families = catalog.ENDPOINT

    def __init__(self, counts: Mapping[str, int]):
        self._counts = counts

    def _fill(self, f: Families) -> None:
        for reason, count in self._counts.items():
            f[catalog.HTTP_CLIENT_ERRORS].add_metric([reason], count)


def render_client_errors(counts: Mapping[str, int]) -> bytes:
    """Render the endpoint's client error counters: a few lines, rendered per scrape."""
    return render(_ClientErrorsCollector(counts))
