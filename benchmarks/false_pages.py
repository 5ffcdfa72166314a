"""False pages per month and detection delays of the shift page, over simulated weeks.

    .venv/bin/python benchmarks/false_pages.py [--days 30] [--reps 6] [--processes 2]
    .venv/bin/python benchmarks/false_pages.py --whole-page [--quick] [--months 4] [--reps 12]

``--whole-page``: issue 15's targets, for the page as a whole (see "The page as a whole"
below). Without it, the window tests' page alone:

Drives the exporter's own error-pattern test (``stats.shift.error_pattern_test``, exact and
unchanged) every minute over simulated streams: a 1 h current window against the trailing
24 h, labeled predictions with daily seasonality in volume (±50%) and class mix (±30% per
class), at 300, 3,000 and 100,000 labeled predictions per hour and K = 2 and 10. The page
is the shipped alert rule replayed exactly (``stats.paging.episodes``: pending, firing after
``for``, ``keep_firing_for``), for the shipped defaults and for the candidates it was chosen
among. Prints:

- false pages per monitor per 30 days under no change (one slice per monitor), and for a
  fleet of 20 monitors x 3 segments (60 independent slices);
- detection delay (median, 90th percentile over --reps streams) from the change to the page
  for: an error swap at constant accuracy; a 5-point recall drop on a 2%-prevalence class; 5%
  of traffic with corrupted input (uniformly random predictions); the error swap growing
  linearly over 24 h. "-" means not paged within 24 h (48 h for the linear growth).
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import pickle
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from confusion_exporter.stats import sequential as sq
from confusion_exporter.stats.paging import (
    SEQUENTIAL_PAGE,
    SHIFT_PAGE,
    SHIFT_PAGE_ALPHA,
    SHIFT_PAGE_MIN_EFFECT,
    AlertRule,
    Evaluations,
    episodes,
    evaluate_stream,
    firing,
    onsets,
    seasonal_priors_at,
    seasonal_rate,
    simulate_counts,
    simulate_stream,
)
from confusion_exporter.stats.shift import ShiftParameters
from confusion_exporter.stats.simulation import (
    Classifier,
    fraud_error_swap,
    recall_drop,
    structured_classifier,
)

WINDOW, REFERENCE = 60, 1440  # minutes: 1 h against the trailing 24 h
WARMUP = WINDOW + REFERENCE + 60
RATES = (300, 3000, 100_000)
KS = (2, 10)
# As a monitor at the shipped alpha runs it (the Monte Carlo budget rises to 10/alpha - 1 =
# 9,999 tables); the thresholds are applied afterwards, per candidate.
PARAMS = ShiftParameters(alpha=SHIFT_PAGE_ALPHA, min_effect=0.0, min_samples=1)


@dataclass(frozen=True)
class Candidate:
    name: str
    alpha: float
    min_effect: float
    min_samples: int
    rule: AlertRule


CANDIDATES = (
    Candidate("before: alpha 0.01, min_effect 0.05, for 15m", 0.01, 0.05, 200, AlertRule(15, 0)),
    Candidate("alpha 0.01, min_effect 0.05, for 30m, keep 30m", 0.01, 0.05, 200, AlertRule(30, 30)),
    Candidate("alpha 0.001, min_effect 0.03, for 15m, keep 30m", 0.001, 0.03, 200, AlertRule(15, 30)),
    Candidate(
        "shipped: alpha 0.001, min_effect 0.03, for 30m, keep 30m",
        SHIFT_PAGE_ALPHA,
        SHIFT_PAGE_MIN_EFFECT,
        200,
        SHIFT_PAGE,
    ),
    Candidate("alpha 0.001, min_effect 0.05, for 30m, keep 30m", 0.001, 0.05, 200, AlertRule(30, 30)),
)
STRICTEST = CANDIDATES[-1]  # every other candidate pages no later than this one


def base_model(k: int) -> Classifier:
    """K=2: balanced classes, 5% false positives, 15% false negatives; K=10: structured errors."""
    if k == 2:
        return Classifier(np.array([0.5, 0.5]), np.array([[0.95, 0.05], [0.15, 0.85]]))
    return structured_classifier(k)


def swapped(k: int) -> Classifier:
    """The same accuracy, other errors: K=2 the false-positive and false-negative rates trade
    places; K>2 each class's main confusion moves from its next class to the one after."""
    if k == 2:
        return Classifier(np.array([0.5, 0.5]), np.array([[0.85, 0.15], [0.05, 0.95]]))
    model = structured_classifier(k)
    confusion = model.confusion.copy()
    for i in range(k):
        moved = confusion[i, (i + 1) % k] - confusion[i, (i + 2) % k]
        confusion[i, (i + 1) % k] -= moved
        confusion[i, (i + 2) % k] += moved
    return Classifier(model.priors, confusion)


def scenario_models(name: str, k: int) -> tuple[Classifier, Classifier]:
    if name == "error swap":
        return base_model(k), swapped(k)
    if name == "fraud swap (2% fraud)":
        if k != 2:
            return base_model(k), base_model(k)  # a binary case only: no change for K > 2
        return fraud_error_swap()
    if name == "recall -5 pts, 2% class":
        rare = structured_classifier(k, rare_prevalence=0.02)
        return rare, recall_drop(rare, k - 1, 0.05)
    if name == "5% corrupted input":
        before = base_model(k)
        noisy = 0.95 * before.confusion + 0.05 / k
        return before, Classifier(before.priors, noisy)
    if name == "swap growing over 24h":
        return base_model(k), swapped(k)
    raise ValueError(name)


SCENARIOS = (
    "error swap",
    "fraud swap (2% fraud)",
    "recall -5 pts, 2% class",
    "5% corrupted input",
    "swap growing over 24h",
)


def model_at(name: str, k: int, onset: int) -> Callable[[int], Classifier]:
    before, after = scenario_models(name, k)
    ramp = 1440 if name == "swap growing over 24h" else 0

    def at(minute: int) -> Classifier:
        if minute < onset:
            return before
        share = 1.0 if ramp == 0 else min(1.0, (minute - onset) / ramp)
        return Classifier(before.priors, (1 - share) * before.confusion + share * after.confusion)

    return at


def run_task(task: tuple[str, int, int, int, int]) -> tuple[tuple[str, int, int, int], Evaluations, int]:
    kind, k, rate, seed, days = task
    rng = np.random.default_rng([seed, k, rate, zlib.crc32(kind.encode())])  # str hash() varies per run
    if kind == "null":
        minutes = WARMUP + days * 1440
        stream = simulate_stream(rng, minutes, seasonal_rate(rate), lambda _: base_model(k))
        return (kind, k, rate, seed), evaluate_stream(stream, WINDOW, REFERENCE, WARMUP, 1, PARAMS), WARMUP
    onset = WARMUP
    horizon = 2880 if kind == "swap growing over 24h" else 1440
    stream = simulate_stream(rng, onset + horizon, seasonal_rate(rate), model_at(kind, k, onset))
    # Every candidate pages no later than the strictest one: stop once it has.
    strictest = STRICTEST
    run = {"active": 0}

    def paged(p: float, effect: float, n_ref: int, n_cur: int) -> bool:
        decided = (
            p < strictest.alpha
            and effect >= strictest.min_effect
            and min(n_ref, n_cur) >= strictest.min_samples
        )
        run["active"] = run["active"] + 1 if decided else 0
        return run["active"] > strictest.rule.for_steps

    return (kind, k, rate, seed), evaluate_stream(stream, WINDOW, REFERENCE, onset, 1, PARAMS, paged), onset


def pages_per_30_days(evaluations: Evaluations, candidate: Candidate) -> float:
    decided = evaluations.decisions(candidate.alpha, candidate.min_effect, candidate.min_samples)
    days = len(decided) / 1440
    return len(episodes(decided, candidate.rule)) * 30 / days


def delay(evaluations: Evaluations, candidate: Candidate, onset: int) -> float:
    decided = evaluations.decisions(candidate.alpha, candidate.min_effect, candidate.min_samples)
    fired = [e.fired for e in episodes(decided, candidate.rule)]
    return float(evaluations.minutes[fired[0]] - onset) if fired else float("inf")


def fmt_delay(values: list[float]) -> str:
    if not values:
        return "-"
    median = float(np.median(values))
    p90 = float(np.quantile(values, 0.9))

    def one(v: float) -> str:
        return "-" if not np.isfinite(v) else f"{v / 60:.1f} h" if v >= 120 else f"{v:.0f} m"

    missed = sum(1 for v in values if not np.isfinite(v))
    return f"{one(median)} / {one(p90)}" + (f" ({missed}/{len(values)} missed)" if missed else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=30, help="simulated days per no-change stream")
    parser.add_argument("--months", type=int, help="no-change streams per point (1; --whole-page: 4)")
    parser.add_argument(
        "--reps", type=int, help="streams per detection scenario and point (6; --whole-page: 12)"
    )
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--save", help="also pickle the per-evaluation results here (for re-analysis)")
    parser.add_argument("--load", help="re-analyse results saved with --save instead of simulating")
    parser.add_argument("--whole-page", action="store_true", help="issue 15's study of the page as a whole")
    parser.add_argument(
        "--quick", action="store_true", help="with --whole-page: a smoke run (under a minute)"
    )
    args = parser.parse_args()
    started = time.monotonic()
    if args.whole_page:
        whole_page(args.months or 4, args.reps or 12, args.processes, args.quick, args.save, args.load)
        return
    args.months, args.reps = args.months or 1, args.reps or 6
    if args.load:
        with open(args.load, "rb") as handle:
            report(pickle.load(handle), "re-analysed from " + args.load)
        return
    tasks = [("null", k, r, s, args.days) for k, r, s in itertools.product(KS, RATES, range(args.months))]
    tasks += [
        (sc, k, r, s, 0)
        for sc, k, r, s in itertools.product(SCENARIOS, KS, RATES, range(args.reps))
        if not (sc == "fraud swap (2% fraud)" and k != 2)
    ]
    with multiprocessing.Pool(args.processes) as pool:
        results = pool.map(run_task, tasks, chunksize=1)
    if args.save:
        with open(args.save, "wb") as handle:
            pickle.dump(results, handle)
    report(results, f"{time.monotonic() - started:.0f} s on {args.processes} processes")


def report(results: list[tuple[tuple[str, int, int, int], Evaluations, int]], how: str) -> None:
    print(
        f"{len(results)} simulated streams, {sum(len(e.minutes) for _, e, _ in results):,} evaluations of the "
        f"error-pattern test, {how}\n"
    )
    print("False pages under no change (per monitor per 30 days; a fleet of 20 monitors x 3 segments)\n")
    print("| rule | " + " | ".join(f"K={k} {r:,}/h" for k in KS for r in RATES) + " |")
    print("|---|" + "---|" * (len(KS) * len(RATES)))
    for candidate in CANDIDATES:
        cells = []
        for k, r in itertools.product(KS, RATES):
            rates = [
                pages_per_30_days(e, candidate)
                for (kind, kk, rr, _), e, _ in results
                if (kind, kk, rr) == ("null", k, r)
            ]
            mean = float(np.mean(rates))
            cells.append(f"{mean:.2f} (fleet {60 * mean:.0f})")
        print(f"| {candidate.name} | " + " | ".join(cells) + " |")
    for candidate in CANDIDATES:
        print(f"\nDetection delay, median / 90th percentile: {candidate.name}\n")
        print("| change | " + " | ".join(f"K={k} {r:,}/h" for k in KS for r in RATES) + " |")
        print("|---|" + "---|" * (len(KS) * len(RATES)))
        for scenario in SCENARIOS:
            cells = []
            for k, r in itertools.product(KS, RATES):
                if scenario == "fraud swap (2% fraud)" and k != 2:
                    cells.append("n/a")
                    continue
                delays = [
                    delay(e, candidate, onset)
                    for (kind, kk, rr, _), e, onset in results
                    if (kind, kk, rr) == (scenario, k, r)
                ]
                cells.append(fmt_delay(delays))
            print(f"| {scenario} | " + " | ".join(cells) + " |")


# ---------------------------------------------------------------------------------------------
# The page as a whole (issue 15's Targets): the window tests' page (ConfusionErrorPatternShift,
# replayed with its shipped for/keep_firing_for) OR the sequential layer's
# (ConfusionErrorRateShift: the detector's latch, no `for`, keep_firing_for 15m). A page is an
# onset of the two alerts' union (overlapping pages of the two are one page); each layer's own
# onsets are counted too. The window tests run against the shipped, recommended reference,
# ``{kind: seasonal, period: 1d, count: 7}`` (the current hour on each of the last 7 days,
# pooled); "today's rule" is the window tests' page against the trailing 24 h, for comparison.
# Streams: the window study's daily seasonality in volume (+-50%) and
# class mix (+-30% per class), and a daily cycle in the error rates themselves: the first
# class's errors (the false-positive rate among legit, for the fraud model) 1.2 times as high
# from 00:00 to 06:00 as by day, every day, before and after a change. The detector gets its
# reference only from the stream: every stream starts with 14 days of stable traffic (the
# reference ring's 336 hours), and the window tests' references come from the same stream.
# ---------------------------------------------------------------------------------------------

DAY = 1440
WARMUP_DAYS = 14
HORIZON_HOURS = 72
NIGHT_FACTOR = 1.2
NIGHT_MINUTES = 360  # 00:00-06:00
SEASONAL = (DAY, 7)  # the window tests' reference: {kind: seasonal, period: 1d, count: 7}
# Minutes of history a window evaluation reads: against the trailing 24 h, and the seasonal one.
CARRY = WINDOW + REFERENCE
CARRY_SEASONAL = SEASONAL[0] * SEASONAL[1] + WINDOW
assert CARRY_SEASONAL <= WARMUP_DAYS * DAY
SEQ = sq.SequentialParameters()
SHIPPED_WINDOW = CANDIDATES[3]
assert SHIPPED_WINDOW.rule == SHIFT_PAGE and SHIPPED_WINDOW.alpha == SHIFT_PAGE_ALPHA


def fraud(fp: float = 0.03, fn: float = 0.18) -> Classifier:
    """Issue 15's fraud model: 2% fraud, FP among legit 3.00%, FN 18% (accuracy 96.7%)."""
    return Classifier(np.array([0.98, 0.02]), np.array([[1 - fp, fp], [fn, 1 - fn]]))


def at_night(model: Classifier, factor: float = NIGHT_FACTOR) -> Classifier:
    """The first class's errors ``factor`` times as likely (its diagonal pays for them)."""
    confusion = model.confusion.copy()
    confusion[0, 1:] *= factor
    confusion[0, 0] = 1 - confusion[0, 1:].sum()
    return Classifier(model.priors, confusion)


def corrupted(model: Classifier, share: float = 0.05) -> Classifier:
    """``share`` of the traffic with corrupted input: uniformly random predictions."""
    k = len(model.priors)
    return Classifier(model.priors, (1 - share) * model.confusion + share / k)


NULL_MODELS = {
    "fraud K=2": fraud(),
    "balanced K=2": base_model(2),
    "K=10": structured_classifier(10),
}
NULL_RATES = (300, 3_000, 100_000)
SEED_RATES = (3_000, 30_000, 300_000)


@dataclass(frozen=True)
class Change:
    name: str
    before: Classifier
    after: Classifier
    cycle: bool  # the daily error-rate cycle present
    rates: tuple[int, ...]
    goal: float  # the target, as a multiple of the change's Lorden bound (0: an absolute goal)
    goal_minutes: float = 0.0


CHANGES = (
    Change("seed incident: FP 3.00% -> 3.45%", fraud(), fraud(0.0345), False, SEED_RATES, 2.0),
    Change("seed incident, daily error-rate cycle", fraud(), fraud(0.0345), True, SEED_RATES, 3.0),
    Change("recall -5 pts on the 2% class (FN 18% -> 23%)", fraud(), fraud(fn=0.23), True, SEED_RATES, 2.0),
    Change("5% corrupted input (fraud model)", fraud(), corrupted(fraud()), True, SEED_RATES, 2.0),
    Change("error swap, K=2 (FP 5% <-> FN 15%)", base_model(2), swapped(2), True, (3_000,), 0.0, 45),
    Change("error swap, K=10", base_model(10), swapped(10), True, (3_000,), 0.0, 45),
)


def whole_stream(
    rng: np.random.Generator,
    rate: int,
    minutes: int,
    before: Classifier,
    after: Classifier,
    onset: int,
    cycle: bool = True,
) -> NDArray[np.int64]:
    """Labeled predictions per minute, (minutes, K, K); minute 0 is 00:00."""
    m = np.arange(minutes)
    models = [before, at_night(before), after, at_night(after)]
    regime = 2 * (m >= onset) + (cycle & (m % DAY < NIGHT_MINUTES))
    return simulate_counts(
        rng,
        seasonal_rate(rate)(m),
        seasonal_priors_at(before.priors, m),
        np.stack([c.confusion for c in models]),
        regime.astype(np.int64),
    )


def sequential_latched(
    stream: NDArray[np.int64], state: sq.DetectorState, accept_before: int | None = None
) -> tuple[NDArray[np.bool_], sq.DetectorState]:
    """Per period, whether the monitor is latched (any cell in ``shift``) after it, with the
    shipped lifecycle (automatic acceptance after ``accept_after_hours``). ``accept_before``:
    an alarm ending before this minute is accepted at once (an operator acknowledging a
    false page before the change under study, so that the onset finds the page quiet)."""
    period = SEQ.period_minutes
    k = stream.shape[1]
    n = stream.shape[0] // period
    matrices = stream[: n * period].reshape(n, period, k, k).sum(axis=1)
    out = np.zeros(n, bool)
    for index, matrix in enumerate(matrices):
        state = sq.update(state, matrix, (index * period) // 60)
        out[index] = bool(state.shifted.any())
        if out[index] and accept_before is not None and (index + 1) * period < accept_before:
            state = sq.accept(state)
    return out, state


def per_minute(latched: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """The exported gauge per minute: a period's state is published at its end and holds
    until the next period's."""
    shifted = np.repeat(latched, SEQ.period_minutes)
    return np.concatenate([np.zeros(SEQ.period_minutes, bool), shifted[: -SEQ.period_minutes]])


def window_decisions(
    stream: NDArray[np.int64], start: int, end: int, seasonal: tuple[int, int] | None = None
) -> NDArray[np.bool_]:
    """The shipped window decision at every minute in [start, end) (evaluation at minute m reads
    the minutes before m); a day at a time, so memory stays bounded. ``seasonal``: against the
    current hour on each of the last ``count`` periods, pooled (``SEASONAL``, the shipped
    reference), instead of the trailing 24 h (today's rule)."""
    carry = CARRY if seasonal is None else seasonal[0] * seasonal[1] + WINDOW
    out = []
    for lo in range(start, end, DAY):
        hi = min(end, lo + DAY)
        chunk = stream[lo - carry : hi]
        ev = evaluate_stream(
            chunk,
            WINDOW,
            REFERENCE,
            carry,
            1,
            PARAMS,
            skip_effect_below=SHIFT_PAGE_MIN_EFFECT,
            seasonal=seasonal,
        )
        decided = ev.decisions(SHIPPED_WINDOW.alpha, SHIPPED_WINDOW.min_effect, SHIPPED_WINDOW.min_samples)
        out.append(decided[: hi - lo])
    return np.concatenate(out)


def null_task(task: tuple[str, int, int]) -> tuple[tuple[str, int], dict[str, int]]:
    """One no-change month: 14 days of warm-up, then 30 days counted."""
    name, rate, month = task
    model = NULL_MODELS[name]
    rng = np.random.default_rng([month, rate, zlib.crc32(name.encode()), 15])
    start, minutes = WARMUP_DAYS * DAY, (WARMUP_DAYS + 30) * DAY
    stream = whole_stream(rng, rate, minutes, model, model, minutes)
    state = sq.initial_state(tuple(str(i) for i in range(len(model.priors))), SEQ)
    latched, _ = sequential_latched(stream, state)
    seq_firing = firing(per_minute(latched), SEQUENTIAL_PAGE)
    window_firing = np.zeros(minutes, bool)
    window_firing[start:] = firing(window_decisions(stream, start, minutes, SEASONAL), SHIFT_PAGE)
    today_firing = np.zeros(minutes, bool)  # today's rule: the window tests against the trailing 24 h
    today_firing[start:] = firing(window_decisions(stream, start, minutes), SHIFT_PAGE)

    def counted(series: NDArray[np.bool_]) -> int:
        return int((onsets(series) >= start).sum())  # a page of the warm-up is not counted

    out = {
        "whole": counted(seq_firing | window_firing),
        "window": counted(window_firing),
        "sequential": counted(seq_firing),
        "today": counted(today_firing),
        "whole, today's window": counted(seq_firing | today_firing),
    }
    return (name, rate), out


def detect_task(task: tuple[int, int, int]) -> tuple[tuple[int, int], dict[str, float]]:
    """One change: 14 days of warm-up, the onset at a random hour of day 15, 72 h after it.
    Delays in minutes from onset to each layer's first page (inf: none within the horizon)."""
    index, rate, rep = task
    change = CHANGES[index]
    rng = np.random.default_rng([rep, rate, zlib.crc32(change.name.encode()), 15])
    onset = WARMUP_DAYS * DAY + int(rng.integers(0, 24)) * 60
    minutes = onset + HORIZON_HOURS * 60
    stream = whole_stream(rng, rate, minutes, change.before, change.after, onset, change.cycle)
    k = len(change.before.priors)
    latched, _ = sequential_latched(stream, sq.initial_state(tuple(str(i) for i in range(k)), SEQ), onset)
    ends = (np.flatnonzero(latched) + 1) * SEQ.period_minutes
    after = ends[ends >= onset]
    sequential = float(after[0] - onset) if after.size else float("inf")

    def window_delay(seasonal: tuple[int, int] | None) -> float:
        run = {"active": 0}

        def paged(p: float, effect: float, n_ref: int, n_cur: int) -> bool:
            decided = p < SHIFT_PAGE_ALPHA and effect >= SHIFT_PAGE_MIN_EFFECT and min(n_ref, n_cur) >= 200
            run["active"] = run["active"] + 1 if decided else 0
            return run["active"] > SHIFT_PAGE.for_steps

        ev = evaluate_stream(
            stream,
            WINDOW,
            REFERENCE,
            onset,
            1,
            PARAMS,
            paged,
            skip_effect_below=SHIFT_PAGE_MIN_EFFECT,
            seasonal=seasonal,
        )
        return delay(ev, SHIPPED_WINDOW, onset)

    window, today = window_delay(SEASONAL), window_delay(None)
    return (index, rate), {
        "window": window,
        "today": today,
        "sequential": sequential,
        "whole": min(window, sequential),
    }


def change_bound_hours(change: Change, rate: int) -> float:
    """Lorden's bound ln(gamma)/KL (stats.sequential.lorden_bound_hours) for the change's most
    informative cell at the day's rates and the mean class mix, gamma = 30 days of its trials
    (one false page per 30 days)."""
    best = float("inf")
    k = len(change.before.priors)
    for i, j in itertools.product(range(k), range(k)):
        p0, p1 = change.before.confusion[i, j], change.after.confusion[i, j]
        if i != j and p1 > p0:
            best = min(best, sq.lorden_bound_hours(p0, p1, rate * change.before.priors[i], 30 * 24))
    return best


def poisson_upper(count: int, confidence: float = 0.95) -> float:
    """The one-sided upper confidence bound of a Poisson mean from one count (exact, Garwood)."""
    from scipy.stats import chi2  # a benchmark, not the run path

    return float(chi2.ppf(confidence, 2 * (count + 1)) / 2)


def timed(task: tuple[str, tuple[object, ...]]) -> tuple[str, tuple[object, dict[str, float]], float]:
    """Run one task of either kind; with its CPU seconds."""
    kind, args = task
    started = time.process_time()
    result = null_task(args) if kind == "null" else detect_task(args)  # type: ignore[arg-type]
    return kind, result, time.process_time() - started


def whole_page(
    months: int, reps: int, processes: int, quick: bool, save: str | None, load: str | None
) -> None:
    started = time.monotonic()
    if load:
        with open(load, "rb") as handle:
            saved = pickle.load(handle)
        print(saved["how"] + f" (re-analysed from {load})\n")
        whole_page_report(saved["nulls"], saved["detections"], saved["reps"])
        return
    null_rates, changes = NULL_RATES, range(len(CHANGES))
    if quick:  # a smoke run: every code path, none of the figures
        months, reps, null_rates = 1, 1, (3_000,)
    tasks_null = [(n, r, m) for n, r, m in itertools.product(NULL_MODELS, null_rates, range(months))]
    tasks_detect = [(i, r, s) for i in changes for r in CHANGES[i].rates for s in range(reps)]
    if quick:
        tasks_null = [t for t in tasks_null if t[0] == "fraud K=2"]
        tasks_detect = [t for t in tasks_detect if t[1] == 300_000 or t[0] == 4]
    # The heaviest tasks first, so the processes finish together.
    tasks_null.sort(key=lambda t: (t[0] != "K=10", t[1] == 100_000))
    tasks = [("null", t) for t in tasks_null] + [("detect", t) for t in tasks_detect]
    nulls, detections, cpu = [], [], 0.0
    with multiprocessing.Pool(processes) as pool:
        for done, (kind, result, seconds) in enumerate(pool.imap_unordered(timed, tasks), 1):
            (nulls if kind == "null" else detections).append(result)
            cpu += seconds
            print(
                f"[{time.monotonic() - started:5.0f} s] {done}/{len(tasks)} {kind} {result[0]}: {seconds:.0f} s CPU",
                file=sys.stderr,
                flush=True,
            )
    how = (
        f"The page as a whole: {len(tasks_null)} no-change months ({WARMUP_DAYS}-day warm-up + 30 days each), "
        f"{len(tasks_detect)} change streams ({HORIZON_HOURS} h after onset); {time.monotonic() - started:.0f} s "
        f"on {processes} processes ({cpu:.0f} s CPU)"
    )
    if save:
        with open(save, "wb") as handle:
            pickle.dump({"how": how, "nulls": nulls, "detections": detections, "reps": reps}, handle)
    print(how + "\n")
    whole_page_report(nulls, detections, reps)


def whole_page_report(
    nulls: list[tuple[tuple[str, int], dict[str, int]]],
    detections: list[tuple[tuple[int, int], dict[str, float]]],
    reps: int,
) -> None:
    print("False pages under no change, per monitor per 30 days: the page as a whole (window tests against")
    print("the seasonal reference, 1d x 7, OR sequential layer), each layer's share, the 95% upper bound,")
    print("the fleet of 60 slices; and today's rule (the window tests against the trailing 24 h)\n")
    print(
        "| monitor | labels/h | months | whole page | window tests (seasonal 1d x 7) | sequential | 95% upper "
        "| fleet (60) | fleet 95% upper | <= 1 | today's rule (trailing 24 h) | whole page with today's rule |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    total_months, total_pages = 0, 0
    for name in NULL_MODELS:
        for rate in NULL_RATES:
            runs = [c for (n, r), c in nulls if (n, r) == (name, rate)]
            if not runs:
                continue
            whole = sum(c["whole"] for c in runs)
            window = sum(c["window"] for c in runs)
            seq = sum(c["sequential"] for c in runs)
            today = sum(c["today"] for c in runs)
            whole_today = sum(c["whole, today's window"] for c in runs)
            m = len(runs)
            total_months, total_pages = total_months + m, total_pages + whole
            upper = poisson_upper(whole) / m
            met = "yes" if whole / m <= 1 else "**no**"
            print(
                f"| {name} | {rate:,} | {m} | {whole / m:.2f} ({whole}) | {window / m:.2f} ({window}) | "
                f"{seq / m:.2f} ({seq}) | {upper:.2f} | {60 * whole / m:.1f} | {60 * upper:.0f} | {met} | "
                f"{today / m:.2f} ({today}) | {whole_today / m:.2f} ({whole_today}) |"
            )
    if total_months:
        upper = poisson_upper(total_pages) / total_months
        print(
            f"| all points pooled | | {total_months} | {total_pages / total_months:.3f} ({total_pages}) | | | "
            f"{upper:.3f} | {60 * total_pages / total_months:.1f} | {60 * upper:.1f} | | | |"
        )
    print("\nDetection delay, median (90th percentile) over", reps, "streams: the page as a whole, its two")
    print("layers, today's rule (the window tests against the trailing 24 h), and Lorden's bound")
    print("ln(gamma)/KL with gamma = 30 days of the cell's trials; the goal and whether the median")
    print('meets it ("-": no page within 72 h)\n')
    print(
        "| change | labels/h | whole page | ratio to bound | sequential layer | window tests (seasonal 1d x 7) "
        "| today's rule (trailing 24 h) | bound | goal | met |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for index, change in enumerate(CHANGES):
        for rate in change.rates:
            runs = [d for (i, r), d in detections if (i, r) == (index, rate)]
            if not runs:
                continue
            bound = change_bound_hours(change, rate) * 60
            whole = float(np.median([d["whole"] for d in runs]))
            goal = change.goal * bound if change.goal else change.goal_minutes
            goal_text = (
                f"{change.goal:.0f}x = {fmt_minutes(goal)}" if change.goal else f"<= {fmt_minutes(goal)}"
            )
            met = "yes" if whole <= goal else "**no**"
            ratio = f"{whole / bound:.1f}x" if np.isfinite(whole) else "-"
            print(
                f"| {change.name} | {rate:,} | {fmt_values([d['whole'] for d in runs])} | {ratio} | "
                f"{fmt_values([d['sequential'] for d in runs])} | {fmt_values([d['window'] for d in runs])} | "
                f"{fmt_values([d['today'] for d in runs])} | {fmt_minutes(bound)} | {goal_text} | {met} |"
            )


def fmt_minutes(v: float) -> str:
    if not np.isfinite(v):
        return "-"
    return f"{v / 60:.1f} h" if v >= 120 else f"{v:.0f} m" if v >= 10 else f"{v:.1f} m"


def fmt_values(values: list[float]) -> str:
    ranked = sorted(values)  # nearest rank: a quantile of "never" is "never", not NaN
    median, p90 = float(np.median(ranked)), ranked[max(0, int(np.ceil(0.9 * len(ranked))) - 1)]
    missed = sum(not np.isfinite(v) for v in values)
    tail = f", {missed}/{len(values)} missed" if missed else ""
    return f"{fmt_minutes(median)} ({fmt_minutes(p90)}{tail})"


if __name__ == "__main__":
    main()
