"""False fails and power of the deployment gate's two rules, on simulated (stable, canary) pairs.

    .venv/bin/python benchmarks/gate_simulation.py [--pairs 4000]

Prints the tables of docs/statistics.md ("The gate's cost rule"). 3 classes, one expensive
error (true 0 predicted as 2 costs 5, other errors 1), the monitor's defaults otherwise; each
rule at alpha / 2 (Bonferroni), as `gate` runs them.
"""

from __future__ import annotations

import argparse

import numpy as np

from confusion_exporter.stats.shift import ShiftParameters
from confusion_exporter.stats.simulation import gate_rates, scaled_errors, structured_classifier

COST = np.array([[0, 1, 5], [1, 0, 1], [1, 1, 0]], dtype=np.float64)
LIMIT = 0.15


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=4000)
    args = parser.parse_args()
    print("identical canaries: share of pairs failed")
    print(
        f"{'alpha':>6} {'errors':>7} {'n each':>7} {'raw ratio > limit':>18} {'cost rule':>10} "
        f"{'pattern rule':>13} {'gate':>6}"
    )
    for alpha in (0.05, 0.001):
        for accuracy, n in ((0.98, 2400), (0.98, 200), (0.995, 2400), (0.8, 3000)):
            model = structured_classifier(3, accuracy=accuracy)
            r = gate_rates(model, model, COST, n, LIMIT, ShiftParameters(alpha=alpha), args.pairs, seed=n)
            print(
                f"{alpha:>6g} {1 - accuracy:>7.1%} {n:>7} {r.raw_cost:>18.4f} {r.cost:>10.4f} "
                f"{r.error_pattern:>13.4f} {r.gate:>6.4f}"
            )
    print("\ncanaries with every error f times as likely (mean cost x f), 2% errors, 2400 each, alpha 0.05")
    print(f"{'f':>5} {'raw ratio > limit':>18} {'cost rule':>10} {'gate':>6}")
    model = structured_classifier(3, accuracy=0.98)
    for factor in (1.15, 1.3, 1.5, 2.0, 2.2):
        canary = scaled_errors(model, factor)
        r = gate_rates(model, canary, COST, 2400, LIMIT, ShiftParameters(alpha=0.05), args.pairs, seed=7)
        print(f"{factor:>5g} {r.raw_cost:>18.4f} {r.cost:>10.4f} {r.gate:>6.4f}")
    print("\nthe README's bad canary: 20% errors, 3000 each, f = 2.2, alpha 0.001")
    model = structured_classifier(3, accuracy=0.8)
    r = gate_rates(model, scaled_errors(model, 2.2), COST, 3000, LIMIT, ShiftParameters(alpha=0.001), 500, 9)
    print(f"cost rule fails {r.cost:.3f}, gate fails {r.gate:.3f}")


if __name__ == "__main__":
    main()
