"""False pages per month and detection delays of the shift page, over simulated weeks.

    .venv/bin/python benchmarks/false_pages.py [--days 30] [--reps 6] [--processes 2]

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
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from confusion_exporter.stats.paging import (
    SHIFT_PAGE,
    SHIFT_PAGE_ALPHA,
    SHIFT_PAGE_MIN_EFFECT,
    AlertRule,
    Evaluations,
    episodes,
    evaluate_stream,
    seasonal_rate,
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
    parser.add_argument("--months", type=int, default=1, help="no-change streams per point")
    parser.add_argument("--reps", type=int, default=6, help="streams per detection scenario and point")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--save", help="also pickle the per-evaluation results here (for re-analysis)")
    parser.add_argument("--load", help="re-analyse results saved with --save instead of simulating")
    args = parser.parse_args()
    started = time.monotonic()
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


if __name__ == "__main__":
    main()
