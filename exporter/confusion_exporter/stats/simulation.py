"""Simulated classifiers and window pairs, to measure the shift tests' and the gate's false
alarms and power.

Pure numpy: used by ``benchmarks/shift_simulation.py`` (the tables in docs/statistics.md)
and by the test suite (the same study at a size that fits ``make test``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from .shift import ERROR_PATTERN, SHIFT, ShiftParameters, contingency, error_pattern_test

Matrix = NDArray[np.float64]


@dataclass(frozen=True)
class Classifier:
    """Class priors and P(predicted | true) of a simulated model."""

    priors: Matrix
    confusion: Matrix

    @property
    def accuracy(self) -> float:
        return float(self.priors @ np.diag(self.confusion))


def structured_classifier(k: int, accuracy: float = 0.9, rare_prevalence: float | None = None) -> Classifier:
    """K classes with Zipf-like priors; most of each class's errors go to one neighbour class."""
    if rare_prevalence is None:
        priors = 1 / np.arange(1, k + 1)
        priors /= priors.sum()
    else:
        priors = np.full(k, (1 - rare_prevalence) / (k - 1))
        priors[-1] = rare_prevalence
    confusion = np.zeros((k, k))
    error = 1 - accuracy
    for i in range(k):
        confusion[i, i] = accuracy
        if k == 2:
            confusion[i, 1 - i] = error
            continue
        others = [j for j in range(k) if j != i]
        confusion[i, others] = 0.3 * error / len(others)
        confusion[i, (i + 1) % k] += 0.7 * error
    return Classifier(priors, confusion)


def recall_drop(model: Classifier, cls: int, points: float) -> Classifier:
    """The same model with ``cls``'s recall lower by ``points``, lost to its neighbour class."""
    confusion = model.confusion.copy()
    confusion[cls, cls] -= points
    confusion[cls, (cls + 1) % len(confusion)] += points
    return Classifier(model.priors, confusion)


def fraud_error_swap() -> tuple[Classifier, Classifier]:
    """The seeds' fraud case: false negatives turn into false positives at the same accuracy."""
    priors = np.array([0.98, 0.02])
    before = np.array([[0.995, 0.005], [0.25, 0.75]])
    after = np.array([[0.992, 0.008], [0.103, 0.897]])
    return Classifier(priors, before), Classifier(priors, after)


def draw(rng: np.random.Generator, model: Classifier, n: int) -> NDArray[np.int64]:
    """A K x K matrix of ``n`` labeled predictions from ``model``."""
    support = rng.multinomial(n, model.priors)
    return np.vstack([rng.multinomial(s, row) for s, row in zip(support, model.confusion, strict=True)])


def plain_summed_p(reference: NDArray[np.int64], current: NDArray[np.int64]) -> float:
    """The naive test: summed per-row Pearson statistics against the chi-square, sparse or not."""
    tables = [contingency(reference[i], current[i]) for i in range(len(reference))]
    dof = sum(t.dof for t in tables)
    return float(stats.chi2.sf(sum(t.statistic for t in tables), dof)) if dof else 1.0


@dataclass(frozen=True)
class Rates:
    """Outcomes over simulated window pairs."""

    pairs: int
    decided_shift: float  # the exported decision: p < alpha, effect >= min_effect, enough samples
    significant: float  # the p-value alone below alpha
    naive_significant: float  # the plain asymptotic summed test below alpha
    monte_carlo_share: float


def error_pattern_rates(
    reference_model: Classifier,
    current_model: Classifier,
    n_reference: int,
    n_current: int,
    pairs: int,
    params: ShiftParameters,
    seed: int,
    progress: Callable[[int], None] | None = None,
) -> Rates:
    """Run the error-pattern test on ``pairs`` independent window pairs."""
    rng = np.random.default_rng(seed)
    classes = tuple(str(i) for i in range(len(reference_model.priors)))
    shifted = significant = naive = monte_carlo = 0
    for i in range(pairs):
        reference = draw(rng, reference_model, n_reference)
        current = draw(rng, current_model, n_current)
        result, _, _ = error_pattern_test(reference, current, classes, params)
        shifted += result.state == SHIFT
        significant += result.p_value < params.alpha
        naive += plain_summed_p(reference, current) < params.alpha
        monte_carlo += result.monte_carlo
        if progress:
            progress(i)
    return Rates(pairs, shifted / pairs, significant / pairs, naive / pairs, monte_carlo / pairs)


def scaled_errors(model: Classifier, factor: float) -> Classifier:
    """The same model with every error ``factor`` times as likely: with a zero-cost diagonal,
    its mean error cost is exactly ``factor`` times the model's."""
    confusion = model.confusion * factor
    np.fill_diagonal(confusion, 0.0)
    np.fill_diagonal(confusion, 1 - confusion.sum(axis=1))
    if (np.diag(confusion) < 0).any():
        raise ValueError(f"errors {factor} times as likely exceed probability 1")
    return Classifier(model.priors, confusion)


@dataclass(frozen=True)
class GateRates:
    """Share of simulated (stable, canary) pairs each rule of the deployment gate fails."""

    pairs: int
    raw_cost: float  # the point estimate alone above the limit (the rule before the test)
    cost: float  # the cost rule: p < alpha / 2
    error_pattern: float  # the error-pattern decision at alpha / 2
    gate: float  # either rule


def gate_rates(
    stable: Classifier,
    canary: Classifier,
    cost: Matrix,
    n: int,
    limit: float,
    params: ShiftParameters,
    pairs: int,
    seed: int,
    rules: int = 2,
) -> GateRates:
    """The gate's two rules on ``pairs`` independent windows of ``n`` labeled predictions each,
    each rule at ``params.alpha / rules`` (Bonferroni), as ``gate`` runs them."""
    from dataclasses import replace

    from .cost import cost_increase_test

    split = replace(params, alpha=params.alpha / rules)
    rng = np.random.default_rng(seed)
    classes = tuple(str(i) for i in range(len(stable.priors)))
    raw = failed_cost = failed_pattern = failed = 0
    for _ in range(pairs):
        reference, current = draw(rng, stable, n), draw(rng, canary, n)
        test = cost_increase_test(reference, current, cost, limit, split.alpha)
        cost_fails = test.p_value < split.alpha
        pattern_fails = error_pattern_test(reference, current, classes, split)[0].state == SHIFT
        raw += test.increase > limit
        failed_cost += cost_fails
        failed_pattern += pattern_fails
        failed += cost_fails or pattern_fails
    return GateRates(pairs, raw / pairs, failed_cost / pairs, failed_pattern / pairs, failed / pairs)


__all__ = [
    "ERROR_PATTERN",
    "Classifier",
    "GateRates",
    "Rates",
    "draw",
    "error_pattern_rates",
    "fraud_error_swap",
    "gate_rates",
    "recall_drop",
    "scaled_errors",
    "structured_classifier",
]
