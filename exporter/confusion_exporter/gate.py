"""Deployment gate: a canary version against the stable one, sequentially.

A pipeline polls ``gate`` every few minutes during a rollout. Every poll counts both
versions' labeled predictions over the same span, from a fixed start (``--since``; by
default the canary's first prediction, so polls agree without the pipeline passing it) to
now, and compares them with confidence sequences (stats/sequential_gate.py): time-uniform,
so polling as often as one likes keeps the chance of failing an identical canary within
alpha. Two rules share the monitor's alpha (alpha / 2 each):

- error rates: per cell of stats/sequential (for each true class, the share predicted as
  each other class), the canary's rate against stable's, each cell at alpha / 2 / cells;
- cost: the mean error cost per labeled prediction against stable's, at alpha / 2.

Verdicts, per segment: **fail** (exit 1) once a cell's rise is shown (its CS of the
difference excludes 0) or the cost's rise above ``max_cost_increase`` is shown; **pass**
(exit 0) once every cell is shown within the smallest change worth a page (relative
``min_relative_change``, absolute floor ``min_absolute_change``) and the cost shown below
``max_cost_increase``; **wait** (exit 3) while neither, or while either version has fewer than
the minimum labeled predictions. One failing segment fails the gate; it passes when all do.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .config import Config, ConfigError, MonitorConfig, VersionReference
from .domain import ALL
from .evaluate import evaluate_monitor
from .matrices import NULL, WindowCounts, align
from .printable import printable
from .snapshot import SliceResult
from .source.counts import source_table
from .stats.cost import cost_matrix
from .stats.sequential import SequentialParameters, cell_counts, cells_of, describe
from .stats.sequential_gate import CostBounds, GateParameters, RateBounds, cost_bounds, rate_bounds
from .stats.sequential_gate import sentence as cell_sentence
from .stats.shift import ERROR_PATTERN
from .windows import CURRENT, bucket_end

PASS, FAIL, WAIT = "pass", "fail", "insufficient_data"
RULES = 2  # the error-rate rule and the cost rule: each decides at alpha / RULES
EXIT_CODES = {PASS: 0, FAIL: 1, WAIT: 3}
# A cell's standing in the error-rate rule.
HARMFUL, WITHIN, UNDECIDED = "harmful", "within_margin", "undecided"
SHOWN_CELLS = 3  # cells a reason names at most
# How far back the default start is looked for: a rollout polled for longer gives --since.
START_LOOKBACK = timedelta(days=7)


@dataclass(frozen=True)
class CellVerdict:
    """One error rate of the canary against stable's, with its confidence sequence."""

    description: str  # "legit predicted as fraud"
    kind: str
    true_class: str
    predicted_class: str  # "" for kind "error" (predicted as any other class)
    state: str  # harmful, within_margin, undecided
    stable_rate: float
    canary_rate: float
    relative_change: float
    relative_change_low: float  # the CS of canary / stable - 1 (time-uniform, alpha per cell)
    relative_change_high: float
    difference_low: float  # the CS of canary - stable
    difference_high: float
    margin: float  # the smallest change worth a page, absolute: max(relative x stable, floor)
    stable_trials: int
    canary_trials: int
    sentence: str  # "legit predicted as fraud: 3.00% -> 3.45%, +15% [+4%, +27%]"


@dataclass(frozen=True)
class SegmentVerdict:
    segment: str
    verdict: str
    reasons: list[str]
    stable_labeled: int
    canary_labeled: int
    stable_accuracy: float
    canary_accuracy: float
    stable_cost: float
    canary_cost: float
    # The fixed-sample error-pattern test over the span, for reference (not the decision:
    # a fixed-sample p looked at on every poll is not a p; the cells' CSs decide).
    p_value: float
    effect_size: float
    cost_increase: float = float("nan")
    # Welch's fixed-sample p of "the increase is at most max_cost_increase", for reference.
    cost_p_value: float = float("nan")
    # The cost increase's confidence sequence at alpha / RULES (decides the cost rule).
    cost_increase_lower_bound: float = float("nan")
    cost_increase_upper_bound: float = float("nan")
    cell_alpha: float = float("nan")
    cost_alpha: float = float("nan")
    cells: list[CellVerdict] = field(default_factory=list)


@dataclass(frozen=True)
class GateReport:
    monitor: str
    model: str
    stable: str
    canary: str
    window_start: str  # = since: every poll counts from here
    window_end: str
    verdict: str
    segments: list[SegmentVerdict] = field(default_factory=list)
    since: str = ""
    since_source: str = ""  # "--since" or "the canary's first prediction"
    alpha: float = float("nan")
    min_relative_change: float = float("nan")
    min_absolute_change: float = float("nan")
    max_cost_increase: float = float("nan")

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]

    def to_json(self) -> str:
        return json.dumps(_finite(asdict(self)), indent=2) + "\n"

    def to_text(self) -> str:
        lines = [
            f"gate {self.verdict.upper()}: {self.model} {self.canary} (canary) against {self.stable} "
            "(stable), "
            f"monitor {self.monitor}, predictions from {self.window_start} to {self.window_end}"
        ]
        if self.since:
            lines.append(
                f"  counting since {self.since} ({self.since_source}); "
                f"margin +{self.min_relative_change:.0%} relative or "
                f"+{100 * self.min_absolute_change:.2g} points; alpha {self.alpha:g}"
            )
        for s in self.segments:
            where = "" if s.segment == ALL else f" segment {'(none)' if s.segment == NULL else s.segment}:"
            lines.append(f"-{where} {s.verdict}")
            lines.extend(f"    {reason}" for reason in s.reasons)
        # Names from the data (versions, segments, classes in reasons) written as escapes:
        # one line stays one line and nothing reaches the terminal as a control.
        return "\n".join(printable(line) for line in lines) + "\n"


def _finite(value: object) -> object:
    """JSON has no NaN: undefined figures become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def parse_version_selector(flag: str, value: str) -> str:
    kind, _, version = value.partition(":")
    if kind != "version" or not version:
        raise ConfigError([f"{flag}: expected version:NAME (e.g. version:v7), got {value!r}"])
    return version


def gate_parameters(monitor: MonitorConfig) -> GateParameters:
    """The margin as the monitor's sequential layer has it (the smallest change worth a page),
    alpha and the cost limit as the monitor's."""
    layer = monitor.sequential
    return GateParameters(
        alpha=monitor.alpha,
        min_relative_change=layer.min_relative_change,
        min_absolute_change=layer.min_absolute_change,
        max_cost_increase=monitor.max_cost_increase,
        rules=RULES,
    )


def gate_monitor(config: Config, name: str, stable: str, window: timedelta) -> MonitorConfig:
    """The monitor as configured, compared against the stable version over ``window`` (the
    span since the start), its window tests at alpha / RULES (shown for reference)."""
    monitor = config.monitor(name)
    if monitor.model == "*":
        raise ConfigError([f"--monitor: {name!r} watches every model ('*'); gate a monitor of one model"])
    return monitor.model_copy(
        update={
            "reference": VersionReference(kind="version", version=stable),
            "alpha": monitor.alpha / RULES,
            "window": window,
        }
    )


def first_prediction(
    connection: Connection, config: Config, monitor: MonitorConfig, version: str, now: datetime
) -> datetime | None:
    """The default start: the version's first prediction at or before ``now`` within
    START_LOOKBACK (a fact of the data, so every poll of a rollout finds the same one). The
    lower bound keeps the query an index range on the time column: unbounded, a table of
    years would be read from its oldest row to find a canary of this morning."""
    source = config.source(monitor.source)
    cols = source.columns
    if cols.version is None:
        return None
    table = source_table(source)
    predicted_at = table.c[cols.predicted_at]
    query = sa.select(sa.func.min(predicted_at)).where(
        table.c[cols.model] == sa.bindparam("model", monitor.model),
        sa.cast(table.c[cols.version], sa.Text) == sa.bindparam("version", version),
        predicted_at <= sa.bindparam("now", now),
        predicted_at >= sa.bindparam("earliest", now - START_LOOKBACK),
    )
    value = connection.execute(query).scalar()
    return value if isinstance(value, datetime) else None


def _percent(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "+inf" if value > 0 else "-inf"
    return f"{100 * value:+.0f}%"


def cell_verdicts(stable: WindowCounts, canary: WindowCounts, params: GateParameters) -> list[CellVerdict]:
    """Every cell of the two versions' matrices (aligned to the same classes)."""
    defaults = SequentialParameters()
    cells = cells_of(len(canary.classes), defaults)
    if not cells:
        return []
    x_s, n_s = cell_counts(cells, stable.matrix)
    x_c, n_c = cell_counts(cells, canary.matrix)
    b: RateBounds = rate_bounds(x_c, n_c, x_s, n_s, params, len(cells))
    out = []
    for c, cell in enumerate(cells):
        state = HARMFUL if b.harmful[c] else WITHIN if b.within[c] else UNDECIDED
        out.append(
            CellVerdict(
                description=describe(cell, canary.classes),
                kind=cell.kind,
                true_class=canary.classes[cell.true_class],
                predicted_class=canary.classes[cell.predicted_class] if cell.predicted_class >= 0 else "",
                state=state,
                stable_rate=float(b.stable_rate[c]),
                canary_rate=float(b.canary_rate[c]),
                relative_change=float(b.relative_change[c]),
                relative_change_low=float(b.relative_low[c]),
                relative_change_high=float(b.relative_high[c]),
                difference_low=float(b.difference_low[c]),
                difference_high=float(b.difference_high[c]),
                margin=float(b.margin[c]),
                stable_trials=int(n_s[c]),
                canary_trials=int(n_c[c]),
                sentence=cell_sentence(cell, canary.classes, b, c),
            )
        )
    return out


def _cell_reasons(cells: list[CellVerdict], params: GateParameters) -> list[str]:
    confidence = f"{1 - params.cell_alpha(len(cells)):.4%} confidence sequence"
    margin = f"+{params.min_relative_change:.0%} or +{100 * params.min_absolute_change:.2g} points"
    harmful = [c for c in cells if c.state == HARMFUL]
    if harmful:
        head = [
            f"error rate up in {len(harmful)} of {len(cells)} cells (the {confidence} excludes no change):"
        ]
        worst = sorted(harmful, key=lambda c: -c.difference_low)[:SHOWN_CELLS]
        return head + [f"  {c.sentence}" for c in worst]
    undecided = [c for c in cells if c.state == UNDECIDED]
    if not undecided:
        closest = max(cells, key=lambda c: c.relative_change_high, default=None)
        tail = f"; closest: {closest.sentence}" if closest else ""
        return [f"every error rate within the margin {margin} ({confidence}s){tail}"]
    head = [
        f"{len(undecided)} of {len(cells)} error rates not yet shown within the margin {margin} "
        f"nor shown up ({confidence}s):"
    ]
    widest = sorted(undecided, key=lambda c: -c.relative_change_high)[:SHOWN_CELLS]
    return head + [f"  {c.sentence}" for c in widest]


def cost_reason(bounds: CostBounds, params: GateParameters) -> str:
    """The cost rule's sentence: the increase and its confidence sequence, against the limit."""
    stable, canary = float(bounds.stable_cost), float(bounds.canary_cost)
    increase = float(bounds.increase)
    limit = f"+{params.max_cost_increase:.0%}"
    change = (
        _percent(increase)
        if math.isfinite(increase)
        else "up from none"
        if canary > 0
        else "none"
        if canary == 0
        else "n/a"
    )
    head = f"mean error cost {canary:.4g} per prediction is {change} against stable {stable:.4g}"
    if not bounds.testable:
        return head + " (too few labeled predictions to test)"
    ci = (
        f"[{_percent(float(bounds.low))}, {_percent(float(bounds.high))}], "
        f"{1 - params.cost_alpha:.2%} confidence sequence"
    )
    if bounds.harmful:
        return f"{head} {ci}: above the limit {limit}"
    if bounds.within:
        return f"{head} {ci}: within the limit {limit}"
    return f"{head} {ci}: not yet shown within the limit {limit}"


def judge(
    result: SliceResult,
    stable: SliceResult | None,
    monitor: MonitorConfig,
    params: GateParameters,
    min_samples: int,
) -> SegmentVerdict:
    """The verdict for one segment: the canary's slice compared with the stable version's."""
    canary_window = result.windows[CURRENT]
    stable_window = stable.windows[CURRENT] if stable else None
    canary_n = canary_window.metrics.labeled
    stable_n = stable_window.metrics.labeled if stable_window else 0
    test = result.shift.tests.get(ERROR_PATTERN) if result.shift else None
    reasons: list[str] = []
    cells: list[CellVerdict] = []
    nan = float("nan")
    bounds: CostBounds | None = None
    if stable_window is None or min(canary_n, stable_n) < min_samples:
        verdict = WAIT
        reasons.append(
            f"not enough labeled predictions yet: canary {canary_n}, stable {stable_n}, "
            f"need {min_samples} each"
        )
    else:
        ref, cur = align(stable_window.counts, canary_window.counts)
        cells = cell_verdicts(ref, cur, params)
        bounds = cost_bounds(ref.matrix, cur.matrix, cost_matrix(cur.classes, monitor.cost_matrix), params)
        states = {c.state for c in cells}
        if HARMFUL in states or bool(bounds.harmful):
            verdict = FAIL
        elif states <= {WITHIN} and bool(bounds.within):
            verdict = PASS
        else:
            verdict = WAIT
        if cells:
            reasons.extend(_cell_reasons(cells, params))
        reasons.append(cost_reason(bounds, params))
    return SegmentVerdict(
        segment=result.key.segment,
        verdict=verdict,
        reasons=reasons,
        stable_labeled=stable_n,
        canary_labeled=canary_n,
        stable_accuracy=stable_window.metrics.accuracy if stable_window else nan,
        canary_accuracy=canary_window.metrics.accuracy,
        stable_cost=stable_window.cost if stable_window else nan,
        canary_cost=canary_window.cost,
        p_value=test.p_value if test else nan,
        effect_size=test.effect_size if test else nan,
        cost_increase=float(bounds.increase) if bounds is not None else result.cost_increase,
        cost_p_value=result.cost_increase_p_value,
        cost_increase_lower_bound=float(bounds.low) if bounds is not None else nan,
        cost_increase_upper_bound=float(bounds.high) if bounds is not None else nan,
        cell_alpha=params.cell_alpha(len(cells)) if cells else nan,
        cost_alpha=params.cost_alpha,
        cells=cells,
    )


def _waiting(segment: str, reason: str) -> SegmentVerdict:
    nan = float("nan")
    return SegmentVerdict(segment, WAIT, [reason], 0, 0, nan, nan, nan, nan, nan, nan)


def run_gate(
    connection: Connection,
    config: Config,
    name: str,
    stable: str,
    canary: str,
    now: datetime,
    window: timedelta | None = None,
    min_samples: int | None = None,
    *,
    since: datetime | None = None,
    historical: bool = False,
) -> GateReport:
    """Judge ``canary`` against ``stable`` on the labeled predictions from ``since`` (default:
    the canary's first prediction) to ``now``. ``window`` instead counts the span of that
    length ending at ``now`` (one look for in-process callers; the CLI refuses it, because a
    span that slides with every poll is a new test each time). ``historical``: as the data
    stood at ``now``, labels that arrived later not counted (where the source has
    ``labeled_at``)."""
    configured = config.monitor(name)
    params = gate_parameters(configured)
    end = bucket_end(now, config.exporter.bucket) - configured.label_delay
    source = "--since"
    if since is None and window is not None:
        since, source = end - window, f"a window of {window}"
    if since is None:
        since = first_prediction(connection, config, configured, canary, now)
        source = "the canary's first prediction"
    report = {
        "monitor": configured.monitor_name,
        "model": configured.model,
        "stable": stable,
        "canary": canary,
        "alpha": params.alpha,
        "min_relative_change": params.min_relative_change,
        "min_absolute_change": params.min_absolute_change,
        "max_cost_increase": params.max_cost_increase,
    }
    if since is None or since >= end:
        gate_monitor(config, name, stable, timedelta(hours=1))  # the monitor's own mistakes first
        why = (
            f"no predictions of {canary} yet"
            if since is None
            else f"the start {since.isoformat()} is not before {end.isoformat()}"
        )
        shown = since.isoformat() if since is not None else ""
        return GateReport(
            **report,  # type: ignore[arg-type]
            window_start=shown,
            window_end=end.isoformat(),
            verdict=WAIT,
            segments=[_waiting(ALL, why)],
            since=shown,
            since_source=source,
        )
    # Counted from the start of the bucket holding ``since`` (windows are whole buckets): the
    # same instant on every poll, so the span still only grows.
    size = int(config.exporter.bucket.total_seconds())
    start = datetime.fromtimestamp(int(since.timestamp()) // size * size, tz=UTC)
    monitor = gate_monitor(config, name, stable, end - start)
    result = evaluate_monitor(
        connection, config, monitor, now, use_rollup=False, historical=historical, with_sequential=False
    )
    needed = monitor.min_samples if min_samples is None else min_samples
    by_key = {(s.key.version, s.key.segment): s for s in result.slices}
    segments = sorted({s.key.segment for s in result.slices if s.key.version in (stable, canary)})
    verdicts = []
    for segment in segments:
        canary_slice = by_key.get((canary, segment))
        if canary_slice is None:
            verdicts.append(_waiting(segment, f"no predictions of {canary} in the window"))
            continue
        verdicts.append(judge(canary_slice, by_key.get((stable, segment)), monitor, params, needed))
    if not verdicts:
        verdicts.append(_waiting(ALL, "no predictions of either version in the window"))
    states = {v.verdict for v in verdicts}
    verdict = FAIL if FAIL in states else WAIT if WAIT in states else PASS
    current = result.windows[0]
    return GateReport(
        **report,  # type: ignore[arg-type]
        window_start=current.start.isoformat(),
        window_end=current.end.isoformat(),
        verdict=verdict,
        segments=verdicts,
        since=since.isoformat(),
        since_source=source,
    )
