"""False-alarm rate and power of the error-pattern decision, on simulated window pairs.

    .venv/bin/python benchmarks/shift_simulation.py [--pairs 2000] [--power-pairs 200]

Prints the tables of docs/statistics.md. Uses the exporter's own statistics code
(confusion_exporter.stats) with its documented defaults.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from confusion_exporter.stats.shift import (
    ERROR_PATTERN,
    LABEL_PRIOR,
    SHIFT,
    ShiftParameters,
    shift_report,
)
from confusion_exporter.stats.simulation import (
    Classifier,
    draw,
    error_pattern_rates,
    fraud_error_swap,
    recall_drop,
    structured_classifier,
)

PARAMS = ShiftParameters()


def calibration_row(job: tuple[int, int, int, int, int]) -> str:
    k, n_current, n_reference, pairs, seed = job
    model = structured_classifier(k)
    started = time.perf_counter()
    r = error_pattern_rates(model, model, n_reference, n_current, pairs, PARAMS, seed)
    ms = (time.perf_counter() - started) / pairs * 1000
    return (
        f"| {k} | {n_current:,} | {n_reference:,} | {pairs:,} | {r.decided_shift:.2%} | {r.significant:.2%} "
        f"| {r.naive_significant:.2%} | {r.monte_carlo_share:.0%} | {ms:.1f} |"
    )


def power_row(job: tuple[str, Classifier, Classifier, int, int, int]) -> str:
    name, before, after, n_current, pairs, seed = job
    r = error_pattern_rates(before, after, n_current * 10, n_current, pairs, PARAMS, seed)
    sizes = f"{n_current:,} | {n_current * 10:,}"
    return f"| {name} | {sizes} | {pairs} | {r.decided_shift:.0%} | {r.significant:.0%} |"


def prior_shift_row(job: tuple[int, int, int]) -> str:
    n_current, pairs, seed = job
    rng = np.random.default_rng(seed)
    model = structured_classifier(10)
    shifted_priors = model.priors[::-1].copy()  # the rarest class becomes the most common
    world = Classifier(shifted_priors, model.confusion)
    label = error = 0
    classes = tuple(str(i) for i in range(10))
    zeros = np.zeros(10, np.int64)
    for _ in range(pairs):
        report = shift_report(
            draw(rng, model, n_current * 10), draw(rng, world, n_current), zeros, zeros, classes, PARAMS
        )
        label += report.tests[LABEL_PRIOR].state == SHIFT
        error += report.tests[ERROR_PATTERN].state == SHIFT
    return f"| {n_current:,} | {pairs} | {label / pairs:.0%} | {error / pairs:.1%} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=2000, help="window pairs per calibration row")
    parser.add_argument("--power-pairs", type=int, default=200, help="window pairs per power row")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    calibration = [
        (k, n_current, n_reference, args.pairs, 1000 * k + i)
        for k in (2, 10, 50)
        for i, (n_current, n_reference) in enumerate(((200, 4_800), (3_000, 72_000), (100_000, 1_000_000)))
    ]
    before, after = fraud_error_swap()
    rare = structured_classifier(10, rare_prevalence=0.01)
    dropped = recall_drop(rare, cls=9, points=0.05)
    power = [
        ("error swap, fraud 2%, same accuracy", before, after, n, args.power_pairs, 7 + n)
        for n in (1_000, 3_000, 10_000, 30_000)
    ]
    power += [
        ("recall -5 points, class of 1%, K=10", rare, dropped, n, args.power_pairs, 11 + n)
        for n in (10_000, 30_000, 100_000, 300_000)
    ]
    priors = [(n, args.power_pairs, 13 + n) for n in (3_000, 30_000)]

    with ProcessPoolExecutor(args.workers) as pool:
        print(
            f"alpha={PARAMS.alpha} min_effect={PARAMS.min_effect} min_samples={PARAMS.min_samples} "
            f"monte_carlo_samples={PARAMS.monte_carlo_samples}\n"
        )
        print("No shift: alarm rates of error_pattern (reference and current drawn from the same model)\n")
        print(
            "| K | current labels | reference labels | pairs | decided shift | p < alpha | naive p < alpha "
            "| Monte Carlo | ms/pair |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for line in pool.map(calibration_row, calibration):
            print(line)
        print("\nPower: share of window pairs decided as shift (reference 10x the current window)\n")
        print("| change | current labels | reference labels | pairs | decided shift | p < alpha |")
        print("|---|---|---|---|---|---|")
        for line in pool.map(power_row, power):
            print(line)
        print("\nLabel shift with an unchanged model (K=10, class priors reversed)\n")
        print("| current labels | pairs | label_prior shift | error_pattern shift |")
        print("|---|---|---|---|")
        for line in pool.map(prior_shift_row, priors):
            print(line)


if __name__ == "__main__":
    main()
