"""The paging layer over time: how an alert rule turns a sequence of per-evaluation shift
decisions into pages, and simulated streams to measure it over weeks.

A test that is right 99% of the time per evaluation still pages every few days when it is
re-evaluated every minute on sliding windows. What an on-call team lives with is the number
of pages per month under no change and the delay to a page under a real change; both
depend on the decision (alpha, min_effect, min_samples) *and* on the rule's ``for`` and
``keep_firing_for``. This module emulates Prometheus's rule evaluation exactly (pending,
firing after ``for``, kept firing for ``keep_firing_for`` after the expression stops), so
``benchmarks/false_pages.py`` can measure the shipped rule, and the emulation is checked
against ``promtool test rules`` in the test suite.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .shift import ShiftParameters, error_pattern_test
from .simulation import Classifier

MINUTES_PER_DAY = 1440


@dataclass(frozen=True)
class AlertRule:
    """A Prometheus alerting rule's timing, in evaluation steps."""

    for_steps: int
    keep_firing_steps: int = 0


# The shift page as shipped (prometheus/rules, ConfusionErrorPatternShift) and the monitors'
# default alpha, as measured by benchmarks/false_pages.py: steps are minutes (one refresh of
# the 1-minute buckets per minute).
SHIFT_PAGE = AlertRule(for_steps=30, keep_firing_steps=30)
SHIFT_PAGE_ALPHA = 0.001
SHIFT_PAGE_MIN_EFFECT = 0.03
# The sequential layer's page (ConfusionErrorRateShift: ``confusion_sequential_shifted == 1``):
# no ``for`` (the CUSUM's threshold already demands persistent evidence; the detector latches),
# and ``keep_firing_for: 15m`` so that a latch re-entered within 15 minutes is the same page.
SEQUENTIAL_PAGE = AlertRule(for_steps=0, keep_firing_steps=15)


@dataclass(frozen=True)
class Episode:
    """One page: the step the alert fired at and the step it resolved at (None: still firing)."""

    fired: int
    resolved: int | None


def episodes(active: Sequence[bool], rule: AlertRule) -> list[Episode]:
    """Replay Prometheus's alert state machine over one series' per-step expression results.

    Pending from the first active step; firing once active for ``for_steps`` steps (the
    evaluation at which ``now - activeAt >= for``); a pending alert whose expression stops is
    dropped; a firing one stays firing until the expression has been inactive for
    ``keep_firing_steps`` steps (Prometheus's ``keep_firing_for``), and any active step in
    between resets that count.
    """
    out: list[Episode] = []
    active_since: int | None = None
    firing_since: int | None = None
    inactive_since: int | None = None
    for step, is_active in enumerate(active):
        if is_active:
            inactive_since = None
            if active_since is None:
                active_since = step
            if firing_since is None and step - active_since >= rule.for_steps:
                firing_since = step
                out.append(Episode(step, None))
            continue
        if firing_since is None:
            active_since = None
            continue
        if inactive_since is None:
            inactive_since = step
        if step - inactive_since >= rule.keep_firing_steps:
            out[-1] = Episode(firing_since, step)
            firing_since = active_since = inactive_since = None
    return out


def firing(active: Sequence[bool], rule: AlertRule) -> NDArray[np.bool_]:
    """Per step, whether the alert is firing (the replay of :func:`episodes`)."""
    out = np.zeros(len(active), bool)
    for episode in episodes(active, rule):
        out[episode.fired : len(active) if episode.resolved is None else episode.resolved] = True
    return out


def onsets(firing_steps: NDArray[np.bool_]) -> NDArray[np.int64]:
    """The steps at which a firing series starts firing: one page each. For several alerts
    joined (the page as a whole), pass their firing series OR-ed: overlapping pages of two
    alerts are one page."""
    f = np.asarray(firing_steps, bool)
    return np.flatnonzero(f & ~np.concatenate([[False], f[:-1]]))


@dataclass(frozen=True)
class Evaluations:
    """Per-evaluation outcomes of the error-pattern test over a simulated stream."""

    minutes: NDArray[np.int64]  # the evaluation instants, in minutes from the stream's start
    p_value: NDArray[np.float64]
    effect: NDArray[np.float64]
    n_reference: NDArray[np.int64]
    n_current: NDArray[np.int64]

    def decisions(self, alpha: float, min_effect: float, min_samples: int) -> NDArray[np.bool_]:
        """The exported ``shift`` state at each evaluation, for a choice of thresholds."""
        enough = np.minimum(self.n_reference, self.n_current) >= min_samples
        return (self.p_value < alpha) & (self.effect >= min_effect) & enough


def seasonal_rate(rate_per_hour: float, amplitude: float = 0.5) -> Callable[[int], float]:
    """Predictions per minute, peaking in the afternoon and lowest at night."""
    return lambda minute: (
        rate_per_hour / 60 * (1 + amplitude * np.sin(2 * np.pi * (minute / MINUTES_PER_DAY - 0.25)))
    )


def seasonal_priors(priors: NDArray[np.float64], minute: int, amplitude: float = 0.3) -> NDArray[np.float64]:
    """The class mix drifting over the day (each class on its own phase)."""
    k = len(priors)
    phase = 2 * np.pi * (minute / MINUTES_PER_DAY + np.arange(k) / k)
    mixed = priors * (1 + amplitude * np.sin(phase))
    return mixed / mixed.sum()  # type: ignore[no-any-return]


def simulate_stream(
    rng: np.random.Generator,
    minutes: int,
    rate: Callable[[int], float],
    model_at: Callable[[int], Classifier],
    seasonal_mix: bool = True,
) -> NDArray[np.int64]:
    """Labeled predictions per minute as ``[minute, true, predicted]`` counts."""
    k = len(model_at(0).priors)
    out = np.zeros((minutes, k, k), dtype=np.int64)
    for minute in range(minutes):
        model = model_at(minute)
        n = rng.poisson(rate(minute))
        priors = seasonal_priors(model.priors, minute) if seasonal_mix else model.priors
        support = rng.multinomial(n, priors)
        for i, s in enumerate(support):
            if s:
                out[minute, i] = rng.multinomial(s, model.confusion[i])
    return out


def seasonal_priors_at(
    priors: NDArray[np.float64], minutes: NDArray[np.int64], amplitude: float = 0.3
) -> NDArray[np.float64]:
    """:func:`seasonal_priors` for many minutes at once, (minutes, K)."""
    k = len(priors)
    phase = 2 * np.pi * (np.asarray(minutes)[:, None] / MINUTES_PER_DAY + np.arange(k)[None, :] / k)
    mixed = priors[None, :] * (1 + amplitude * np.sin(phase))
    return mixed / mixed.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


def simulate_counts(
    rng: np.random.Generator,
    expected: NDArray[np.float64],
    priors: NDArray[np.float64],
    confusions: NDArray[np.float64],
    regime: NDArray[np.int64],
) -> NDArray[np.int64]:
    """Vectorised :func:`simulate_stream`: per minute, Poisson(``expected[m]``) labeled
    predictions, their true classes multinomial over ``priors[m]`` (minutes, K), their
    predictions multinomial over the rows of ``confusions[regime[m]]`` (one K x K matrix per
    regime: before / after a change, day / night). The same law as the per-minute loop, a
    hundred times faster: one draw per class and regime instead of one per minute."""
    minutes, k = priors.shape
    n = rng.poisson(expected)
    support = rng.multinomial(n, priors)
    out = np.zeros((minutes, k, k), np.int64)
    for g in np.unique(regime):
        rows = np.flatnonzero(regime == g)
        for i in range(k):
            out[rows, i] = rng.multinomial(support[rows, i], confusions[g, i])
    return out


def error_pattern_effects(
    reference: NDArray[np.int64], current: NDArray[np.int64], min_row_samples: int
) -> NDArray[np.float64]:
    """The error-pattern test's effect size (the largest per-true-class balanced Cramér's V
    among rows with enough samples, as :func:`stats.shift.error_pattern_test` computes it) for
    many (reference, current) pairs at once, (T, K, K) each. It decides nothing by itself: a
    study uses it to skip the exact test where the effect alone already rules ``shift`` out."""
    ref = np.asarray(reference, np.float64)
    cur = np.asarray(current, np.float64)
    n_ref, n_cur = ref.sum(axis=2), cur.sum(axis=2)
    keep = (ref + cur) > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        p = ref / n_ref[..., None]
        q = cur / n_cur[..., None]
        terms = np.where(keep, (p - q) ** 2 / ((p + q) / 2), 0.0)
        columns = keep.sum(axis=2)
        corrected = terms.sum(axis=2) - (columns - 1) * (1 / n_ref + 1 / n_cur)
    v = np.sqrt(np.maximum(0.0, np.nan_to_num(corrected)) / 4)
    eligible = (columns >= 2) & (np.minimum(n_ref, n_cur) >= max(1, min_row_samples))
    return np.where(eligible, v, 0.0).max(axis=1)  # type: ignore[no-any-return]


# The effect filter's margin: summation order differs from the exact test's by ~1e-16.
EFFECT_FILTER_MARGIN = 1e-9


def evaluate_stream(
    stream: NDArray[np.int64],
    window: int,
    reference: int,
    start: int,
    step: int,
    params: ShiftParameters,
    stop: Callable[[float, float, int, int], bool] | None = None,
    skip_effect_below: float | None = None,
    offset: int | None = None,
    seasonal: tuple[int, int] | None = None,
) -> Evaluations:
    """The error-pattern test every ``step`` minutes from ``start``: the last ``window``
    minutes against the ``reference`` minutes before them (a trailing reference).

    ``stop(p, effect, n_reference, n_current)`` ends the run early once it returns True (a
    detection study needs the stream only up to the page).

    ``skip_effect_below``: where the effect size (:func:`error_pattern_effects`) is below it,
    the exact test is not run and p is recorded as 1.0: decisions with ``min_effect`` at
    least this value are unchanged (the effect alone rules ``shift`` out), and a month of
    no-change evaluations at a large rate costs seconds instead of minutes.

    ``offset``: the reference is the current window shifted back by this many minutes (the
    product's ``offset`` reference, e.g. a day for a daily cycle) instead of the trailing
    ``reference`` minutes.

    ``seasonal=(period, count)``: the product's ``seasonal`` reference, the current window
    shifted back by ``k * period`` minutes for k = 1..count, pooled (the matrices summed), e.g.
    ``(1440, 7)`` for the same hour on each of the last 7 days. ``offset=d`` is
    ``seasonal=(d, 1)``. Evaluations start where the whole reference exists (``count *
    period + window`` minutes into the stream, or ``start`` if later)."""
    k = stream.shape[1]
    classes = tuple(str(i) for i in range(k))
    cumulative = np.concatenate([np.zeros((1, k, k), np.int64), np.cumsum(stream, axis=0)])
    if offset is not None and seasonal is not None:
        raise ValueError("offset and seasonal are two references: pass one")
    # The reference of an evaluation at minute m: the sum of the slices
    # [m - back - length, m - back) over (back, length) in ``slices``.
    if seasonal is not None:
        period, count = seasonal
        if period < 1 or count < 1:
            raise ValueError(f"seasonal needs a period and a count of at least 1, got {seasonal}")
        slices = [(k * period, window) for k in range(1, count + 1)]
    elif offset is not None:
        slices = [(offset, window)]
    else:
        slices = [(window, reference)]

    def reference_at(m: NDArray[np.int64] | np.int64) -> NDArray[np.int64]:
        return sum(  # type: ignore[return-value]
            (cumulative[m - back] - cumulative[m - back - length] for back, length in slices),
            np.zeros((*np.shape(m), k, k), np.int64),
        )

    at = np.arange(max(start, max(back + length for back, length in slices)), stream.shape[0] + 1, step)
    p, effect, n_ref, n_cur = (np.empty(len(at)) for _ in range(4))
    skip = np.zeros(len(at), bool)
    if skip_effect_below is not None:
        for lo in range(0, len(at), MINUTES_PER_DAY):  # a day at a time: bounded memory
            m = at[lo : lo + MINUTES_PER_DAY]
            cur_all = cumulative[m] - cumulative[m - window]
            ref_all = reference_at(m)
            effects = error_pattern_effects(ref_all, cur_all, params.min_row_samples)
            chunk = effects < skip_effect_below - EFFECT_FILTER_MARGIN
            skip[lo : lo + len(m)] = chunk
            effect[lo : lo + len(m)] = effects
            p[lo : lo + len(m)] = 1.0
            n_ref[lo : lo + len(m)] = ref_all.sum(axis=(1, 2))
            n_cur[lo : lo + len(m)] = cur_all.sum(axis=(1, 2))
    for i, minute in enumerate(at):
        if not skip[i]:
            current = cumulative[minute] - cumulative[minute - window]
            ref = reference_at(minute)
            result, _, _ = error_pattern_test(ref, current, classes, params)
            p[i], effect[i], n_ref[i], n_cur[i] = (
                result.p_value,
                result.effect_size,
                result.n_reference,
                result.n_current,
            )
        if stop is not None and stop(p[i], effect[i], int(n_ref[i]), int(n_cur[i])):
            end = i + 1
            return Evaluations(
                at[:end], p[:end], effect[:end], n_ref[:end].astype(np.int64), n_cur[:end].astype(np.int64)
            )
    return Evaluations(at, p, effect, n_ref.astype(np.int64), n_cur.astype(np.int64))
