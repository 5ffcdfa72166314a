"""Deployment gate: a canary version against the stable one, over the same window.

The canary fails when its error pattern differs from the stable version's (the monitor's
``error_pattern`` test decides, with its minimum effect) or when its mean error cost exceeds
the stable version's by more than ``max_cost_increase`` beyond noise (a one-sided Welch test,
stats.cost). The two rules share the monitor's alpha (Bonferroni: alpha / 2 each), so an
identical canary fails at most at rate alpha. It waits (exit 3) while either version has
fewer labeled predictions than the minimum. Each segment is judged on its own; one failing
segment fails the gate.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.engine import Connection

from .config import Config, ConfigError, MonitorConfig, VersionReference
from .evaluate import evaluate_monitor
from .matrices import NULL
from .printable import printable
from .snapshot import SliceResult, WindowResult
from .source.counts import ALL
from .stats.shift import ERROR_PATTERN, SHIFT
from .windows import CURRENT

PASS, FAIL, WAIT = "pass", "fail", "insufficient_data"
RULES = 2  # the error-pattern rule and the cost rule: each decides at alpha / RULES
EXIT_CODES = {PASS: 0, FAIL: 1, WAIT: 3}


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
    p_value: float
    effect_size: float
    cost_increase: float = float("nan")
    cost_p_value: float = float("nan")  # of "the increase is at most max_cost_increase"
    cost_increase_lower_bound: float = float("nan")  # at 1 - alpha / RULES


@dataclass(frozen=True)
class GateReport:
    monitor: str
    model: str
    stable: str
    canary: str
    window_start: str
    window_end: str
    verdict: str
    segments: list[SegmentVerdict] = field(default_factory=list)

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


def gate_monitor(config: Config, name: str, stable: str, window: timedelta | None) -> MonitorConfig:
    """The monitor as configured, compared against the stable version over ``window``, each
    rule at alpha / RULES."""
    monitor = config.monitor(name)
    if monitor.model == "*":
        raise ConfigError([f"--monitor: {name!r} watches every model ('*'); gate a monitor of one model"])
    update: dict[str, object] = {
        "reference": VersionReference(kind="version", version=stable),
        "alpha": monitor.alpha / RULES,
    }
    if window is not None:
        update["window"] = window
    return monitor.model_copy(update=update)


def judge(
    result: SliceResult, stable: SliceResult | None, monitor: MonitorConfig, min_samples: int
) -> SegmentVerdict:
    """The verdict for one segment: the canary's slice compared with the stable version's."""
    canary_window = result.windows[CURRENT]
    stable_window = stable.windows[CURRENT] if stable else None
    canary_n = canary_window.metrics.labeled
    stable_n = stable_window.metrics.labeled if stable_window else 0
    test = result.shift.tests.get(ERROR_PATTERN) if result.shift else None
    reasons: list[str] = []
    if min(canary_n, stable_n) < min_samples:
        verdict = WAIT
        reasons.append(
            f"not enough labeled predictions yet: canary {canary_n}, stable {stable_n}, "
            f"need {min_samples} each"
        )
    else:
        verdict = PASS
        if test is not None and test.state == SHIFT:
            verdict = FAIL
            reasons.append(
                f"error pattern differs from stable: p = {test.p_value:.2g}"
                f"{' (Monte Carlo)' if test.monte_carlo else ''} < alpha {monitor.alpha}, "
                f"effect size {test.effect_size:.3f} >= {monitor.min_effect}"
            )
            for cell in (result.shift.cells if result.shift else ())[:3]:
                reasons.append(
                    f"  true {cell.true_class} predicted as {cell.predicted_class}: "
                    f"{cell.reference_share:.1%} of {cell.true_class}s in stable -> "
                    f"{cell.current_share:.1%} in canary"
                )
        elif test is not None:
            reasons.append(
                f"error pattern consistent with stable: p = {test.p_value:.2g}, "
                f"effect size {test.effect_size:.3f}"
            )
        reason, cost_fails = cost_reason(result, canary_window.cost, stable_window, monitor)
        reasons.append(reason)
        if cost_fails:
            verdict = FAIL
    return SegmentVerdict(
        segment=result.key.segment,
        verdict=verdict,
        reasons=reasons,
        stable_labeled=stable_n,
        canary_labeled=canary_n,
        stable_accuracy=stable_window.metrics.accuracy if stable_window else float("nan"),
        canary_accuracy=canary_window.metrics.accuracy,
        stable_cost=stable_window.cost if stable_window else float("nan"),
        canary_cost=canary_window.cost,
        p_value=test.p_value if test else float("nan"),
        effect_size=test.effect_size if test else float("nan"),
        cost_increase=result.cost_increase,
        cost_p_value=result.cost_increase_p_value,
        cost_increase_lower_bound=result.cost_increase_lower_bound,
    )


def cost_reason(
    result: SliceResult, canary_cost: float, stable_window: WindowResult | None, monitor: MonitorConfig
) -> tuple[str, bool]:
    """The cost rule's sentence, and whether it fails the canary: the rise above the limit
    must be beyond noise (p < alpha), not only in the point estimate."""
    stable_cost = stable_window.cost if stable_window else float("nan")
    increase, p = result.cost_increase, result.cost_increase_p_value
    limit, alpha = monitor.max_cost_increase, monitor.alpha
    change = f"{increase:+.1%}" if math.isfinite(increase) else "up from none" if canary_cost > 0 else "none"
    head = f"mean error cost {canary_cost:.4g} per prediction is {change} against stable {stable_cost:.4g}"
    if not math.isfinite(p):
        return head + " (too few labeled predictions to test)", False
    bound = f"at least {result.cost_increase_lower_bound:+.1%} with {1 - alpha:.2%} confidence"
    if p < alpha:
        return f"{head} (limit +{limit:.0%}; {bound}, p = {p:.2g} < alpha {alpha:g})", True
    if math.isfinite(increase) and increase <= limit:
        return f"{head}, within the limit +{limit:.0%} ({bound})", False
    noise = f"{bound}, p = {p:.2g} >= alpha {alpha:g}"
    return f"{head}: above the limit +{limit:.0%} within noise ({noise})", False


def run_gate(
    connection: Connection,
    config: Config,
    name: str,
    stable: str,
    canary: str,
    now: datetime,
    window: timedelta | None = None,
    min_samples: int | None = None,
) -> GateReport:
    monitor = gate_monitor(config, name, stable, window)
    result = evaluate_monitor(connection, config, monitor, now, use_rollup=False)
    needed = monitor.min_samples if min_samples is None else min_samples
    by_key = {(s.key.version, s.key.segment): s for s in result.slices}
    segments = sorted({s.key.segment for s in result.slices if s.key.version in (stable, canary)})
    verdicts = []
    for segment in segments:
        canary_slice = by_key.get((canary, segment))
        if canary_slice is None:
            verdicts.append(
                SegmentVerdict(
                    segment, WAIT, [f"no predictions of {canary} in the window"], 0, 0, *([float("nan")] * 6)
                )
            )
            continue
        verdicts.append(judge(canary_slice, by_key.get((stable, segment)), monitor, needed))
    if not verdicts:
        verdicts.append(
            SegmentVerdict(
                "__all__",
                WAIT,
                ["no predictions of either version in the window"],
                0,
                0,
                *([float("nan")] * 6),
            )
        )
    states = {v.verdict for v in verdicts}
    verdict = FAIL if FAIL in states else WAIT if WAIT in states else PASS
    current = result.windows[0]
    return GateReport(
        monitor=monitor.monitor_name,
        model=monitor.model,
        stable=stable,
        canary=canary,
        window_start=current.start.isoformat(),
        window_end=current.end.isoformat(),
        verdict=verdict,
        segments=verdicts,
    )
