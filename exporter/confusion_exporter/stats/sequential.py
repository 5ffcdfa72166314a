"""Sequential detection of small, persistent changes in a monitor's error rates.

The window tests (``stats.shift``) decide on one window at a time: they catch large, fast
changes, but a 15% rise of a 3% false-positive rate is one and a half standard deviations in
an hour of 3,000 labels, and the trailing reference learns it within hours. This layer
accumulates the evidence instead, one CUSUM per error rate, against a reference that the
change cannot contaminate. See docs/statistics.md ("Sequential detection") for the design,
the measurements it was chosen by, and what is still approximate.

Cells (each a binomial rate, trials and successes read from the period's K x K matrix):

- ``confusion`` (true i, predicted j != i): the share of class i predicted as j, n_ij / n_i;
- ``error`` (true i): the share of class i predicted as any other class, 1 - recall_i (not
  for K = 2, where it is the one confusion rate of the row);
- ``false_discovery`` (optional; predicted j, true i != j): n_ij / n_.j. Off by default: it
  moves with the class mix, so a pure label shift (which is not the model's fault, and which
  ``label_prior`` reports) would page through it.

Per cell and period (e.g. 5 minutes of newly labeled predictions) with x successes of n
trials, against a reference rate p̂ estimated from the cell's own stable history:

  p0 = p̂ + z_guard sqrt(p̂ (1 - p̂) / n_ref)                  (the reference's upper bound)
  p1 = p̂ + a max(min_relative_change p̂, min_absolute_change)  (a x the smallest change worth a page)
  S  = max(0, S + x ln(p1 / p0) + (n - x) ln((1 - p1) / (1 - p0)))

one-sided Bernoulli CUSUMs (Page 1954) of p1 against p0, one per multiple a of
``alternatives`` (a ladder standing in for a GLR over the unknown magnitude). Only rises
are tested, because any harmful change of a row raises at least one of its error rates (a
falling error rate is good news, or the mirror of another rate's rise). When the true rate is at most p0 the
period's likelihood ratio has mean at most 1, so by Ville's inequality each restart of the
CUSUM reaches h with probability at most e^-h, and (Lorden 1971) false alarms are at least
e^h periods apart on average, whatever the periods' sizes. The threshold is Bonferroni over
the monitor's cells, segments and alternatives:

  h = ln(periods per 30 days x cells x segments x alternatives / false_alarms_per_30_days)

The guard ``z_guard`` is what keeps the reference's own sampling error from being read as a
change (a reference 2% low by chance is a fifth of the way to a 10% change, every period).

Reference: per cell, a ring of the last ``reference_hours`` hour bins in which the cell was
*stable*; a period is absorbed only when the cell is stable after it (not while evidence is
accumulating or in alarm), so the reference is frozen exactly when a change may be under way
and never learns it. With ``seasonal``, the reference for a period is read from the bins of
the same hour of day (plus or minus ``seasonal_band`` hours), shrunk towards the whole
ring's rate by empirical Bayes (as far as the cell shows no daily cycle, or its band holds
few errors): error rates follow the daily traffic
composition, and a reference averaged over the day would page every night on a large
stream, while on a small one the band alone would be too noisy to compare with.

Lifecycle: ``shift`` latches (the page keeps firing) until :func:`accept` takes the new
regime as the reference, either explicitly or automatically after ``accept_after_hours``; it
then resolves once. The new reference is the old one scaled by the change measured over the
run of evidence: it keeps the 14 days of seasonal profile (a reference rebuilt from the few
hours since the page would know nothing of the night, and page on it).

State is a frozen dataclass of arrays, updated by the pure :func:`update`; it holds every
count the decisions depend on, so it can be persisted (:func:`to_dict`, :func:`from_dict`)
and replayed: the same periods in the same order give the same state, bit for bit.

Pure numpy and ``math``: the exporter's run path must not import ``scipy.stats``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

CONFUSION = "confusion"
ERROR = "error"
FALSE_DISCOVERY = "false_discovery"

STABLE = "stable"
ACCUMULATING = "accumulating"
SHIFT = "shift"
INSUFFICIENT_DATA = "insufficient_data"
STATES = (STABLE, ACCUMULATING, SHIFT, INSUFFICIENT_DATA)

MINUTES_PER_30_DAYS = 30 * 1440
HOURS_PER_DAY = 24

Counts = NDArray[np.int64]
Floats = NDArray[np.float64]


@dataclass(frozen=True)
class SequentialParameters:
    """One monitor's sequential layer. The defaults are justified in docs/statistics.md."""

    # The smallest change worth a page: a relative rise, with an absolute floor so that
    # 0.01% -> 0.02% (+100%, but one in ten thousand) does not page on a huge stream.
    min_relative_change: float = 0.10
    min_absolute_change: float = 0.001
    # The CUSUMs run per cell, at these multiples of the smallest change (a ladder standing
    # in for a GLR over the unknown magnitude): the first is the most sensitive to a change of
    # the smallest size, the larger ones page sooner on large changes. Bonferroni over them
    # costs ln(3) nats of threshold: about 10% more delay on a change of the smallest size.
    alternatives: tuple[float, ...] = (1.0, 3.0, 10.0)
    # The page's budget for the monitor as a whole (all cells, all segments).
    false_alarms_per_30_days: float = 1.0
    segments: int = 1
    # The length of one update; the threshold counts updates, so it is part of the budget.
    period_minutes: int = 5
    # Reference: hour bins of stable periods kept per cell; 14 days hold 14 bins of each hour
    # of day, for the seasonal reference.
    reference_hours: int = 336
    min_reference_trials: int = 200
    seasonal: bool = True
    # The same hour of day only (+-1 h paged at the edges of a night that is a step: measured),
    # shrunk towards the whole ring as far as the cell's measured daily cycle allows.
    seasonal_band: int = 0
    guard_z: float = 2.0
    # "accumulating" from this share of the threshold on: the reference freezes from there.
    accumulating_share: float = 0.5
    interval_z: float = 1.96
    error_rates: bool = True
    false_discovery_rates: bool = False
    # A latched shift becomes the new reference after this long (None: only by accept()).
    accept_after_hours: float | None = 24.0

    def __post_init__(self) -> None:
        if self.min_relative_change <= 0 and self.min_absolute_change <= 0:
            raise ValueError("the smallest change worth a page must be positive")
        if self.period_minutes <= 0 or self.reference_hours <= 0 or self.segments <= 0:
            raise ValueError("period_minutes, reference_hours and segments must be positive")
        if not self.alternatives or min(self.alternatives) <= 0:
            raise ValueError("alternatives must be positive multiples of the smallest change")
        if self.false_alarms_per_30_days <= 0:
            raise ValueError("false_alarms_per_30_days must be positive")


@dataclass(frozen=True)
class Cell:
    """One error rate of a matrix: ``kind`` and the classes it reads."""

    kind: str
    true_class: int  # -1: not fixed (never, for the kinds defined here)
    predicted_class: int  # -1: any other class (kind ``error``)


def cells_of(k: int, params: SequentialParameters) -> tuple[Cell, ...]:
    """The cells a K-class monitor watches, in a fixed order (the state's arrays follow it)."""
    out = [Cell(CONFUSION, i, j) for i in range(k) for j in range(k) if i != j]
    if params.error_rates and k > 2:
        out += [Cell(ERROR, i, -1) for i in range(k)]
    if params.false_discovery_rates:
        out += [Cell(FALSE_DISCOVERY, i, j) for j in range(k) for i in range(k) if i != j]
    return tuple(out)


def threshold(n_cells: int, params: SequentialParameters) -> float:
    """h such that the monitor's false alarms stay within budget (Ville + Bonferroni)."""
    periods = MINUTES_PER_30_DAYS / params.period_minutes
    tests = max(n_cells, 1) * params.segments * len(params.alternatives)
    return math.log(periods * tests / params.false_alarms_per_30_days)


def cell_counts(cells: Sequence[Cell], matrix: Counts) -> tuple[Counts, Counts]:
    """Successes and trials of each cell in one K x K matrix (rows: true, columns: predicted)."""
    m = np.asarray(matrix, np.int64)
    rows, cols = m.sum(axis=1), m.sum(axis=0)
    x = np.empty(len(cells), np.int64)
    n = np.empty(len(cells), np.int64)
    for c, cell in enumerate(cells):
        i, j = cell.true_class, cell.predicted_class
        if cell.kind == CONFUSION:
            x[c], n[c] = m[i, j], rows[i]
        elif cell.kind == ERROR:
            x[c], n[c] = rows[i] - m[i, i], rows[i]
        else:
            x[c], n[c] = m[i, j], cols[j]
    return x, n


@dataclass(frozen=True, eq=False)
class DetectorState:
    """Everything the decisions depend on, for one slice. Arrays are never mutated in place."""

    params: SequentialParameters
    classes: tuple[str, ...]
    cells: tuple[Cell, ...]
    threshold: float
    evidence: Floats  # S per cell and alternative, (cells, alternatives)
    shifted: NDArray[np.bool_]  # latched alarm per cell
    shift_periods: Counts  # periods spent in alarm
    # The current run (periods since S was last 0): the CUSUM's estimate of the change's span.
    run_x: Counts
    run_n: Counts
    run_expected: Floats  # sum of n x reference rate over the run (seasonally adjusted)
    # The reference's successes and trials behind those rates, summed weighted by n (divided
    # by run_n they are the run's volume-weighted reference size, for the interval).
    run_reference_x: Floats
    run_reference_n: Floats
    # The last period, for the report when there is no run.
    last_x: Counts
    last_n: Counts
    last_reference: Floats  # p̂ at the last period (NaN: no reference)
    last_reference_x: Floats  # the reference's effective successes and trials
    last_reference_n: Floats
    # Reference ring of stable hour bins, per cell (hour -1: empty).
    ref_x: Floats  # (cells, reference_hours); float: an accepted regime scales it
    ref_n: Counts
    ref_hour: Counts
    ref_head: Counts  # (cells,) index of the newest bin
    # The ring summed per hour of day, kept as bins enter and leave it (a reference is then
    # 24 sums per cell, not a pass over the whole ring every period: 7x faster at K = 10).
    hod_x: Floats  # (cells, 24)
    hod_n: Counts
    periods: int = 0
    last_hour: int = -1


def initial_state(classes: Sequence[str], params: SequentialParameters | None = None) -> DetectorState:
    """A detector with no history: every cell ``insufficient_data`` until its reference fills."""
    params = params or SequentialParameters()
    cells = cells_of(len(classes), params)
    c, r = len(cells), params.reference_hours
    return DetectorState(
        params=params,
        classes=tuple(classes),
        cells=cells,
        threshold=threshold(c, params),
        evidence=np.zeros((c, len(params.alternatives))),
        shifted=np.zeros(c, bool),
        shift_periods=np.zeros(c, np.int64),
        run_x=np.zeros(c, np.int64),
        run_n=np.zeros(c, np.int64),
        run_expected=np.zeros(c),
        run_reference_x=np.zeros(c),
        run_reference_n=np.zeros(c),
        last_x=np.zeros(c, np.int64),
        last_n=np.zeros(c, np.int64),
        last_reference=np.full(c, np.nan),
        last_reference_x=np.zeros(c),
        last_reference_n=np.zeros(c),
        ref_x=np.zeros((c, r)),
        ref_n=np.zeros((c, r), np.int64),
        ref_hour=np.full((c, r), -1, np.int64),
        ref_head=np.zeros(c, np.int64),
        hod_x=np.zeros((c, HOURS_PER_DAY)),
        hod_n=np.zeros((c, HOURS_PER_DAY), np.int64),
    )


@dataclass(frozen=True)
class ReferenceCounts:
    """Per cell, what a period in a given hour is compared with."""

    x_band: Floats  # successes and trials of the seasonal band (the whole ring when not seasonal)
    n_band: Counts
    x_all: Floats  # of the whole ring
    n_all: Counts
    # The relative variance of the hour-of-day rates around the ring's rate beyond sampling
    # noise (method of moments, >= 0): how much daily cycle the cell has.
    cycle: Floats


def reference_counts(state: DetectorState, hour: int) -> ReferenceCounts:
    x_hod, n_hod = state.hod_x, state.hod_n
    x_all, n_all = x_hod.sum(axis=1), n_hod.sum(axis=1)
    c = len(state.cells)
    if not state.params.seasonal:
        return ReferenceCounts(x_all, n_all, x_all, n_all, np.zeros(c))
    distance = np.abs(np.arange(HOURS_PER_DAY) - hour % HOURS_PER_DAY)
    band = (
        np.minimum(distance, HOURS_PER_DAY - distance) <= state.params.seasonal_band
    )  # 23:00 is next to 00:00
    overall = ((x_all + 0.5) / (n_all + 1.0))[:, None]
    expected = n_hod * overall
    excess = ((x_hod - expected) ** 2).sum(axis=1) - (expected * (1 - overall)).sum(axis=1)
    scale = (expected**2).sum(axis=1)
    cycle = np.clip(excess / np.maximum(scale, 1e-300), 0.0, 1.0)
    return ReferenceCounts(x_hod[:, band].sum(axis=1), n_hod[:, band].sum(axis=1), x_all, n_all, cycle)


def hour_of_day_sums(ref_x: Floats, ref_n: Counts, ref_hour: Counts) -> tuple[Floats, Counts]:
    """The ring's successes and trials per cell and hour of day (empty bins left out)."""
    c = ref_x.shape[0]
    filled = ref_hour >= 0
    slot = (np.arange(c)[:, None] * HOURS_PER_DAY + ref_hour % HOURS_PER_DAY)[filled]
    x = np.bincount(slot, ref_x[filled], c * HOURS_PER_DAY).astype(np.float64).reshape(c, HOURS_PER_DAY)
    n = np.bincount(slot, ref_n[filled], c * HOURS_PER_DAY).reshape(c, HOURS_PER_DAY)
    return x, np.rint(n).astype(np.int64)


@dataclass(frozen=True)
class Rates:
    """The reference rate, its guarded null p0, the alternative p1, and whether the cell can test."""

    estimate: Floats
    trials: Floats  # the effective number of reference trials behind the estimate
    null: Floats
    alternative: Floats  # (cells, alternatives)
    ready: NDArray[np.bool_]  # (cells, alternatives)


def rates(ref: ReferenceCounts, params: SequentialParameters) -> Rates:
    """The reference rate and the two hypotheses of the CUSUM.

    The ring's rate is p_a = (x_a + 1/2) / (n_a + 1) (half a success of continuity, so a zero
    count still gives a positive rate). Seasonal: the band's rate p_s = x_s / n_s shrunk
    towards p_a by empirical Bayes, p̂ = w p_s + (1 - w) p_a with
    w = tau^2 / (tau^2 + (1 - p_a) / (n_s p_a)), tau^2 the cell's measured daily cycle (the
    relative variance of its hour-of-day rates beyond sampling noise): a cell without a cycle
    pools the whole ring (the most precise reference), one with a cycle follows it as far as
    its band's errors allow. ``trials`` is the effective sample size of that mixture,
    1 / (w^2 / n_s + (1 - w)^2 / n_a). Then p0 = p̂ + z sqrt(p̂(1 - p̂)/trials),
    p1 = p̂ + max(rho p̂, floor) per alternative. A cell tests only when its reference holds
    enough trials and p1 > p0 (else the reference is too small to tell the change from its
    own noise)."""
    n_a = ref.n_all.astype(np.float64)
    overall = (ref.x_all + 0.5) / (n_a + 1.0)
    if params.seasonal:
        n_s = ref.n_band.astype(np.float64)
        signal = n_s * overall * ref.cycle
        weight = np.where(n_s > 0, signal / np.maximum(signal + (1 - overall), 1e-300), 0.0)
        band_rate = np.where(n_s > 0, ref.x_band / np.maximum(n_s, 1.0), overall)
        estimate = weight * band_rate + (1 - weight) * overall
        spread = weight**2 / np.maximum(n_s, 1.0) + (1 - weight) ** 2 / (n_a + 1.0)
        trials = 1.0 / spread
        # a band rate of 0 must not make the reference 0 (half a success, as for p_a)
        estimate = np.maximum(estimate, 0.5 / (n_a + 1.0))
    else:
        estimate, trials = overall, n_a + 1.0
    null = estimate + params.guard_z * np.sqrt(estimate * (1 - estimate) / trials)
    multiples = np.asarray(params.alternatives, np.float64)[None, :]
    step = np.maximum(
        params.min_relative_change * multiples * estimate[:, None], params.min_absolute_change * multiples
    )
    alternative = np.minimum(estimate[:, None] + step, 1 - 1e-12)
    usable = (ref.n_all >= params.min_reference_trials) & (null < 1)
    ready = usable[:, None] & (alternative > null[:, None])
    return Rates(estimate, trials, null, alternative, ready)


def log_likelihood_ratio(x: Counts, n: Counts, r: Rates) -> Floats:
    """Per cell and alternative, ln P(x | p1) / P(x | p0) for x successes in n binomial trials."""
    p0 = np.where(r.ready, r.null[:, None], 0.5)
    p1 = np.where(r.ready, r.alternative, 0.5)
    xs, ns = x[:, None], n[:, None]
    return np.where(  # type: ignore[no-any-return]
        r.ready, xs * np.log(p1 / p0) + (ns - xs) * (np.log1p(-p1) - np.log1p(-p0)), 0.0
    )


def update(state: DetectorState, counts: Counts, hour: int) -> DetectorState:
    """The state after one period: ``counts`` is the K x K matrix of the labeled predictions
    new in the period, ``hour`` the absolute hour it falls in (e.g. hours since the epoch;
    periods of the same hour share a reference bin, and its hour of day picks the seasonal
    reference). Hours must not decrease."""
    if state.periods and hour < state.last_hour:
        raise ValueError(f"hour {hour} is before the last period's hour {state.last_hour}")
    p = state.params
    k = len(state.classes)
    if np.shape(counts) != (k, k):
        raise ValueError(f"a {k} x {k} matrix is expected, got shape {np.shape(counts)}")
    x, n = cell_counts(state.cells, counts)
    r = rates(reference_counts(state, hour), p)
    # The reference's effective successes and trials, for the interval of the change.
    testing = r.ready.any(axis=1)
    x_ref = np.where(testing, r.estimate * r.trials, 0.0)
    n_ref = np.where(testing, r.trials, 0.0)
    llr = log_likelihood_ratio(x, n, r)
    # A cell without a usable reference accumulates nothing (there is nothing to compare with);
    # a latched one keeps its evidence for the page and the report.
    evidence = np.where(r.ready, np.maximum(0.0, state.evidence + llr), 0.0)
    evidence = np.where(state.shifted[:, None] & ~r.ready, state.evidence, evidence)
    shifted = state.shifted | (r.ready & (evidence >= state.threshold)).any(axis=1)
    shift_periods = state.shift_periods + shifted
    strongest = evidence.max(axis=1)
    # The run: periods since the evidence was last 0 (kept whole while latched).
    in_run = (strongest > 0) | shifted
    expected = n * np.where(testing, r.estimate, 0.0)
    run_x = np.where(in_run, state.run_x + x, 0)
    run_n = np.where(in_run, state.run_n + n, 0)
    run_expected = np.where(in_run, state.run_expected + expected, 0.0)
    run_reference_x = np.where(in_run, state.run_reference_x + n * x_ref, 0.0)
    run_reference_n = np.where(in_run, state.run_reference_n + n * n_ref, 0.0)
    # Freeze: the period enters the reference only if the cell is stable after it. A cell
    # whose evidence is building (or in alarm) may be seeing the change: absorbing it would
    # pull the reference towards the new regime and erase the very evidence being accumulated.
    absorb = ~shifted & (strongest < p.accumulating_share * state.threshold)
    ref_x, ref_n, ref_hour, ref_head, hod_x, hod_n = _absorb(state, absorb, x, n, hour)
    out = replace(
        state,
        evidence=evidence,
        shifted=shifted,
        shift_periods=shift_periods,
        run_x=run_x,
        run_n=run_n,
        run_expected=run_expected,
        run_reference_x=run_reference_x,
        run_reference_n=run_reference_n,
        last_x=x,
        last_n=n,
        last_reference=np.where(testing, r.estimate, np.nan),
        last_reference_x=x_ref,
        last_reference_n=n_ref,
        ref_x=ref_x,
        ref_n=ref_n,
        ref_hour=ref_hour,
        ref_head=ref_head,
        hod_x=hod_x,
        hod_n=hod_n,
        periods=state.periods + 1,
        last_hour=hour,
    )
    if p.accept_after_hours is not None:
        due = shifted & (shift_periods * p.period_minutes >= p.accept_after_hours * 60)
        if due.any():
            out = accept(out, due)
    return out


def _absorb(
    state: DetectorState, absorb: NDArray[np.bool_], x: Counts, n: Counts, hour: int
) -> tuple[Floats, Counts, Counts, Counts, Floats, Counts]:
    """Add the period to the newest bin of each absorbing cell, or start a new bin (overwriting
    the oldest) when the newest bin is of another hour; the hour-of-day sums follow."""
    rows = np.arange(len(state.cells))
    head = state.ref_head.copy()
    newest_hour = state.ref_hour[rows, head]
    new_bin = absorb & (newest_hour != hour)
    head[new_bin] = (head[new_bin] + 1) % state.params.reference_hours
    ref_x, ref_n, ref_hour = state.ref_x.copy(), state.ref_n.copy(), state.ref_hour.copy()
    hod_x, hod_n = state.hod_x.copy(), state.hod_n.copy()
    evicted = rows[new_bin]
    old_hour = ref_hour[evicted, head[new_bin]]
    leaving = old_hour >= 0
    hod_x[evicted[leaving], old_hour[leaving] % HOURS_PER_DAY] -= ref_x[
        evicted[leaving], head[new_bin][leaving]
    ]
    hod_n[evicted[leaving], old_hour[leaving] % HOURS_PER_DAY] -= ref_n[
        evicted[leaving], head[new_bin][leaving]
    ]
    ref_x[evicted, head[new_bin]] = 0
    ref_n[evicted, head[new_bin]] = 0
    ref_hour[evicted, head[new_bin]] = hour
    ref_x[rows[absorb], head[absorb]] += x[absorb]
    ref_n[rows[absorb], head[absorb]] += n[absorb]
    hod_x[rows[absorb], hour % HOURS_PER_DAY] += x[absorb]
    hod_n[rows[absorb], hour % HOURS_PER_DAY] += n[absorb]
    return ref_x, ref_n, ref_hour, head, hod_x, hod_n


def accept(state: DetectorState, cells: NDArray[np.bool_] | None = None) -> DetectorState:
    """Take the new regime as the reference of the latched cells (all, or those of ``cells``):
    their reference's successes are scaled by the change measured over the run of evidence
    (observed / expected), their evidence restarts at 0, and the page resolves. A cell that is
    not latched keeps its reference. (``baseline accept`` and the automatic acceptance after
    ``accept_after_hours`` both land here.)

    Scaling keeps the reference's size and its daily profile. The alternatives fail: a
    reference rebuilt from the hours since the page is small and knows one day's cycle at
    most (measured: it paged again at night, was accepted again, and so on), and one that
    merely restarts absorbing still holds the old regime and pages again on the same change."""
    chosen = state.shifted & (True if cells is None else np.asarray(cells, bool))
    if not chosen.any():
        return state
    ratio = np.where(state.run_expected > 0, state.run_x / np.maximum(state.run_expected, 1e-300), 1.0)
    ref_x = np.where(chosen[:, None], state.ref_x * ratio[:, None], state.ref_x)
    ref_x = np.minimum(ref_x, state.ref_n)  # a rate stays a rate
    hod_x, hod_n = hour_of_day_sums(ref_x, state.ref_n, state.ref_hour)
    zero_i, zero_f = np.zeros_like(state.run_x), np.zeros_like(state.run_expected)
    return replace(
        state,
        evidence=np.where(chosen[:, None], 0.0, state.evidence),
        shifted=state.shifted & ~chosen,
        shift_periods=np.where(chosen, 0, state.shift_periods),
        run_x=np.where(chosen, zero_i, state.run_x),
        run_n=np.where(chosen, zero_i, state.run_n),
        run_expected=np.where(chosen, zero_f, state.run_expected),
        run_reference_x=np.where(chosen, zero_f, state.run_reference_x),
        run_reference_n=np.where(chosen, zero_f, state.run_reference_n),
        ref_x=ref_x,
        hod_x=hod_x,
        hod_n=hod_n,
    )


def _cell_names(state: DetectorState) -> list[tuple[str, str, str]]:
    return [
        (
            c.kind,
            state.classes[c.true_class],
            state.classes[c.predicted_class] if c.predicted_class >= 0 else "",
        )
        for c in state.cells
    ]


def extend_classes(state: DetectorState, classes: Sequence[str]) -> DetectorState:
    """The state over a larger class set: ``classes`` starts with the state's classes, in
    order. A cell that existed keeps everything it holds; a new cell starts with an empty
    reference (``insufficient_data`` until it fills). The threshold follows the number of
    cells, so the monitor's false-alarm budget holds as classes appear."""
    classes = tuple(classes)
    if classes == state.classes:
        return state
    if classes[: len(state.classes)] != state.classes:
        raise ValueError("new classes must extend the state's classes, in order")
    grown = initial_state(classes, state.params)
    old = {name: c for c, name in enumerate(_cell_names(state))}
    mapping = [(new, old[name]) for new, name in enumerate(_cell_names(grown)) if name in old]
    arrays: dict[str, Any] = {}
    for name in _ARRAYS:
        target = getattr(grown, name).copy()
        source = getattr(state, name)
        for new, previous in mapping:
            target[new] = source[previous]
        arrays[name] = target
    return replace(grown, **arrays, periods=state.periods, last_hour=state.last_hour)


def with_segments(state: DetectorState, segments: int) -> DetectorState:
    """The state with the monitor's number of segments (slices) in its threshold's Bonferroni."""
    if segments == state.params.segments:
        return state
    params = replace(state.params, segments=segments)
    return replace(state, params=params, threshold=threshold(len(state.cells), params))


def cell_states(state: DetectorState) -> tuple[str, ...]:
    """``shift`` (latched), ``accumulating`` (evidence past the freeze mark), ``stable``, or
    ``insufficient_data`` (the last period had no usable reference for the cell)."""
    out = []
    mark = state.params.accumulating_share * state.threshold
    for c in range(len(state.cells)):
        if state.shifted[c]:
            out.append(SHIFT)
        elif state.periods == 0 or math.isnan(state.last_reference[c]):
            out.append(INSUFFICIENT_DATA)
        elif state.evidence[c].max() >= mark:
            out.append(ACCUMULATING)
        else:
            out.append(STABLE)
    return tuple(out)


def monitor_state(state: DetectorState) -> str:
    """The slice's state: the most severe of its cells' (shift > accumulating > stable), and
    ``insufficient_data`` only when no cell can test."""
    states = set(cell_states(state))
    for candidate in (SHIFT, ACCUMULATING, STABLE):
        if candidate in states:
            return candidate
    return INSUFFICIENT_DATA


@dataclass(frozen=True)
class CellReport:
    """One error rate as a page, a metric or a report shows it."""

    kind: str
    true_class: str
    predicted_class: str  # "" for kind ``error``
    description: str  # "legit predicted as fraud"
    reference_rate: float
    current_rate: float
    relative_change: float
    relative_change_low: float
    relative_change_high: float
    evidence: float
    threshold: float
    state: str
    current_trials: int
    reference_trials: int


def describe(cell: Cell, classes: Sequence[str]) -> str:
    if cell.kind == CONFUSION:
        return f"{classes[cell.true_class]} predicted as {classes[cell.predicted_class]}"
    if cell.kind == ERROR:
        return f"{classes[cell.true_class]} predicted as another class"
    return f"predicted {classes[cell.predicted_class]} but {classes[cell.true_class]}"


def relative_change_interval(
    x: float, n: float, expected: float, x_ref: float, n_ref: float, z: float
) -> tuple[float, float, float]:
    """The observed/expected ratio minus 1 and its interval, on the log scale with the binomial
    variances of both rates, var ln p̂ = 1/x - 1/n (the reference's too: it is estimated).
    Half a count stands in for a zero so the interval stays finite."""
    if n <= 0 or expected <= 0:
        return math.nan, math.nan, math.nan
    ratio = x / expected
    xc, xr = max(x, 0.5), max(x_ref, 0.5)
    variance = max(0.0, 1 / xc - 1 / n) + (max(0.0, 1 / xr - 1 / n_ref) if n_ref > 0 else math.inf)
    centre = math.log(max(x, 0.5) / expected)
    half = z * math.sqrt(variance)
    return ratio - 1, math.exp(centre - half) - 1, math.exp(centre + half) - 1


def report(state: DetectorState) -> tuple[CellReport, ...]:
    """Per cell: reference and current rates over the current run (the periods since its
    evidence was last 0; the last period when there is none), the relative change with its
    interval, the evidence, the threshold and the state."""
    out = []
    states = cell_states(state)
    for c, cell in enumerate(state.cells):
        if state.run_n[c] > 0:
            x, n, e = float(state.run_x[c]), float(state.run_n[c]), float(state.run_expected[c])
            x_ref = float(state.run_reference_x[c]) / n
            n_ref = float(state.run_reference_n[c]) / n
        else:
            x, n = float(state.last_x[c]), float(state.last_n[c])
            rate = float(state.last_reference[c])
            e = n * rate if not math.isnan(rate) else 0.0
            x_ref, n_ref = float(state.last_reference_x[c]), float(state.last_reference_n[c])
        change, low, high = relative_change_interval(x, n, e, x_ref, n_ref, state.params.interval_z)
        out.append(
            CellReport(
                kind=cell.kind,
                true_class=state.classes[cell.true_class],
                predicted_class=state.classes[cell.predicted_class] if cell.predicted_class >= 0 else "",
                description=describe(cell, state.classes),
                reference_rate=e / n if n > 0 and e > 0 else float(state.last_reference[c]),
                current_rate=x / n if n > 0 else math.nan,
                relative_change=change,
                relative_change_low=low,
                relative_change_high=high,
                evidence=float(state.evidence[c].max()),
                threshold=state.threshold,
                state=states[c],
                current_trials=int(n),
                reference_trials=int(n_ref),
            )
        )
    return tuple(out)


def top_cell(reports: Sequence[CellReport]) -> CellReport | None:
    """The cell closest to (or furthest past) its threshold: the one a page names."""
    if not reports:
        return None
    return max(reports, key=lambda r: (r.state == SHIFT, r.evidence / r.threshold))


def _percent(rate: float) -> str:
    return "n/a" if math.isnan(rate) else f"{100 * rate:.2f}%"


def sentence(cell: CellReport) -> str:
    """ "legit predicted as fraud: 3.00% -> 3.45%, +15%"."""
    change = cell.relative_change
    shown = "n/a" if math.isnan(change) else f"{100 * change:+.0f}%"
    return f"{cell.description}: {_percent(cell.reference_rate)} -> {_percent(cell.current_rate)}, {shown}"


_ARRAYS = (
    "evidence",
    "shifted",
    "shift_periods",
    "run_x",
    "run_n",
    "run_expected",
    "run_reference_x",
    "run_reference_n",
    "last_x",
    "last_n",
    "last_reference",
    "last_reference_x",
    "last_reference_n",
    "ref_x",
    "ref_n",
    "ref_hour",
    "ref_head",
    "hod_x",
    "hod_n",
)


def to_dict(state: DetectorState) -> dict[str, Any]:
    """A JSON-serialisable form (floats round-trip exactly through JSON's repr)."""
    out: dict[str, Any] = {name: getattr(state, name).tolist() for name in _ARRAYS}
    out["params"] = {f: getattr(state.params, f) for f in state.params.__dataclass_fields__}
    out["classes"] = list(state.classes)
    out["periods"] = state.periods
    out["last_hour"] = state.last_hour
    return out


def from_dict(data: dict[str, Any]) -> DetectorState:
    """The inverse of :func:`to_dict`; raises if the stored parameters or classes do not fit."""
    stored = dict(data["params"])
    stored["alternatives"] = tuple(stored["alternatives"])
    params = SequentialParameters(**stored)
    state = initial_state(data["classes"], params)
    arrays: dict[str, Any] = {
        name: np.asarray(data[name], dtype=getattr(state, name).dtype).reshape(getattr(state, name).shape)
        for name in _ARRAYS
    }
    return replace(
        state,
        **arrays,
        periods=int(data["periods"]),
        last_hour=int(data["last_hour"]),
    )


def states_equal(a: DetectorState, b: DetectorState) -> bool:
    """Bit-for-bit equality of two states (replay and restart checks)."""
    if (a.params, a.classes, a.periods, a.last_hour) != (
        b.params,
        b.classes,
        b.periods,
        b.last_hour,
    ):
        return False
    return all(np.array_equal(getattr(a, f), getattr(b, f), equal_nan=True) for f in _ARRAYS)


def kl_bernoulli(p: float, q: float) -> float:
    """KL(Bernoulli(p) || Bernoulli(q)) in nats: the information per trial of a change from q to p."""
    terms = 0.0
    if p > 0:
        terms += p * math.log(p / q)
    if p < 1:
        terms += (1 - p) * math.log((1 - p) / (1 - q))
    return terms


def lorden_bound_hours(
    p_before: float, p_after: float, trials_per_hour: float, false_alarm_hours: float
) -> float:
    """Lorden's bound ln(gamma) / KL for a known change, in hours: gamma is the false-alarm
    spacing in trials (the optimum for one cell whose rates before and after are both known)."""
    gamma = false_alarm_hours * trials_per_hour
    return math.log(gamma) / kl_bernoulli(p_after, p_before) / trials_per_hour
