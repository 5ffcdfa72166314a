"""Cost, confidence, calibration and decision-threshold figures from real Postgres equal direct
computations (and scikit-learn's confusion_matrix) on the same randomized rows."""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import timedelta

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix

from confusion_exporter.stats.cost import cost_matrix, mean_cost
from confusion_exporter.windows import bucket_end

from .helpers import NOW, Row, create_scored_events, insert_rows, make_config, snapshot_at

BUCKET_END = bucket_end(NOW, timedelta(minutes=1))


def random_rows(rng: np.random.Generator, classes: list[str], n: int) -> list[Row]:
    """Rows over the current hour and the 3 h before it (and a few in the future), with scores
    that include bin edges, 0, 1, NULL, NaN and values outside [0, 1]."""
    special = [0.0, 1.0, 0.3, 0.7, 0.5, 0.9, 0.1 * 3, None, float("nan"), 1.5, -0.2]
    rows = []
    for _ in range(n):
        actual = None if rng.random() < 0.1 else str(rng.choice(classes))
        predicted = str(rng.choice(classes)) if rng.random() < 0.4 or actual is None else actual
        score = special[rng.integers(len(special))] if rng.random() < 0.15 else float(rng.random())
        rows.append(
            Row(
                model="m",
                version=str(rng.choice(["v1", "v2"])),
                ts=BUCKET_END + timedelta(seconds=int(rng.integers(-4 * 3600, 120))),
                predicted=predicted,
                actual=actual,
                score=score,
            )
        )
    return rows


def in_window(rows: list[Row], window, version: str) -> list[Row]:  # type: ignore[no-untyped-def]
    return [
        r
        for r in rows
        if r.version == version and window.start <= r.ts < window.end and r.ts <= NOW and r.actual is not None
    ]


def direct_confidence(rows: list[Row], bins: int, high: float) -> dict[str, float]:
    """Expected calibration error as the textbook weighted mean of per-bin |accuracy - confidence|."""
    scored = [r for r in rows if r.score is not None and not math.isnan(r.score) and 0 <= r.score <= 1]
    by_bin: dict[int, list[Row]] = defaultdict(list)
    for r in scored:
        by_bin[min(math.floor(r.score * bins), bins - 1)].append(r)  # type: ignore[operator]
    total = len(scored)
    ece = sum(
        len(members)
        / total
        * abs(np.mean([r.predicted == r.actual for r in members]) - np.mean([r.score for r in members]))
        for members in by_bin.values()
    )
    right = [r.score for r in scored if r.predicted == r.actual]
    wrong = [r.score for r in scored if r.predicted != r.actual]
    return {
        "scored": total,
        "ece": ece,
        "correct": float(np.mean(right)),
        "incorrect": float(np.mean(wrong)),
        "high_share": sum(s >= high for s in wrong) / len(wrong),  # type: ignore[operator]
        "invalid": sum(1 for r in rows if r.score is not None and not (0 <= r.score <= 1)),
    }


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_confidence_and_cost_equal_direct_computation(admin_engine, exporter_url, seed):
    rng = np.random.default_rng(seed)
    classes = ["a", "b", "c"]
    table = create_scored_events(admin_engine)
    rows = random_rows(rng, classes, 1500)
    insert_rows(admin_engine, table, rows)
    costs = {
        c: {d: round(float(rng.uniform(0, 20)), 2) for d in classes if rng.random() < 0.6} for c in classes
    }
    bins, high = int(rng.choice([5, 10, 15])), float(rng.choice([0.8, 0.9]))
    config = make_config(
        table,
        model="m",
        extra_monitor={"cost_matrix": costs, "calibration_bins": bins, "high_confidence": high},
    )
    monitor = snapshot_at(config, exporter_url).monitors["shop:m"]
    checked = 0
    for result in monitor.slices:
        for name, window in result.windows.items():
            members = in_window(rows, window.counts.window, result.key.version)
            expected = direct_confidence(members, bins, high)
            got = window.confidence
            assert got is not None
            assert got.scored == expected["scored"]
            assert got.invalid == expected["invalid"]
            assert got.calibration_error == pytest.approx(expected["ece"], abs=1e-12)
            assert got.mean_confidence_correct == pytest.approx(expected["correct"])
            assert got.mean_confidence_incorrect == pytest.approx(expected["incorrect"])
            assert got.high_confidence_error_share == pytest.approx(expected["high_share"])
            assert sum(b.n for b in got.reliability) == expected["scored"]
            # The mean cost over every labeled row (scored or not), by direct lookup.
            direct = np.mean(
                [costs.get(r.actual, {}).get(r.predicted, float(r.actual != r.predicted)) for r in members]
            )  # type: ignore[arg-type]
            assert window.cost == pytest.approx(direct), name
            checked += 1
        cur, ref = result.windows["current"], result.windows["reference"]
        assert result.cost_difference == pytest.approx(cur.cost - ref.cost)
        assert result.cost_increase == pytest.approx((cur.cost - ref.cost) / ref.cost)
    assert checked == 4


@pytest.mark.parametrize("seed", [4, 5])
def test_threshold_matrices_equal_confusion_matrix_on_thresholded_scores(admin_engine, exporter_url, seed):
    rng = np.random.default_rng(seed)
    classes = ["legit", "fraud"]
    table = create_scored_events(admin_engine)
    rows = random_rows(rng, classes, 1200)
    insert_rows(admin_engine, table, rows)
    thresholds = [0.3, 0.5, 0.7, float(np.round(rng.uniform(0.05, 0.95), 3))]
    config = make_config(
        table,
        model="m",
        extra_monitor={"classes": classes, "positive_class": "fraud", "decision_thresholds": thresholds},
    )
    monitor = snapshot_at(config, exporter_url).monitors["shop:m"]
    compared = 0
    for result in monitor.slices:
        for window in result.windows.values():
            members = [
                r
                for r in in_window(rows, window.counts.window, result.key.version)
                if r.score is not None and 0 <= r.score <= 1
            ]
            truth = [r.actual for r in members]
            # positive-class probability: the score where fraud was predicted, 1 - score otherwise
            positive = np.array([r.score if r.predicted == "fraud" else 1.0 - r.score for r in members])  # type: ignore[operator]
            assert [m.threshold for m in window.thresholds] == sorted(thresholds)
            for at in window.thresholds:
                predicted = np.where(positive >= at.threshold, "fraud", "legit")
                expected = confusion_matrix(truth, predicted, labels=["legit", "fraud"])
                np.testing.assert_array_equal(at.matrix, expected)
                compared += 1
    assert compared == 2 * 2 * len(thresholds)


def test_cost_matrix_defaults_and_mean_cost_on_random_matrices():
    rng = np.random.default_rng(0)
    for _ in range(200):
        k = int(rng.integers(2, 7))
        classes = [f"c{i}" for i in range(k)]
        matrix = rng.integers(0, 50, size=(k, k))
        spec = {
            classes[i]: {classes[j]: float(rng.uniform(0, 10)) for j in range(k) if rng.random() < 0.5}
            for i in range(k)
            if rng.random() < 0.7
        }
        spec["not-a-class"] = {"c0": 99.0}  # ignored: not in this matrix's classes
        cost = cost_matrix(classes, spec)
        direct = (
            sum(
                matrix[i, j] * spec.get(classes[i], {}).get(classes[j], 0.0 if i == j else 1.0)
                for i in range(k)
                for j in range(k)
            )
            / matrix.sum()
        )
        assert mean_cost(matrix, cost) == pytest.approx(direct)
    # With no matrix, the mean cost is the error rate.
    matrix = np.array([[80, 20], [5, 95]])
    assert mean_cost(matrix, cost_matrix(["a", "b"], {})) == pytest.approx(25 / 200)
    assert math.isnan(mean_cost(np.zeros((2, 2), np.int64), cost_matrix(["a", "b"], {})))


def test_score_aggregates_are_recomputed_every_score_refresh_interval(admin_engine, exporter_url):
    """Counts follow every refresh; the confidence figures (a scan of the windows' rows, which
    the rollup cannot answer) are reused until score_refresh_interval has passed."""
    from confusion_exporter.config import DatabaseUrl
    from confusion_exporter.refresher import Refresher

    table = create_scored_events(admin_engine)
    early = [Row("m", "v1", NOW - timedelta(minutes=30 - i % 20), "a", "a", score=0.95) for i in range(300)]
    insert_rows(admin_engine, table, early)
    config = make_config(table, model="m", exporter={"score_refresh_interval": "5m"})
    clock = {"now": NOW}
    refresher = Refresher(config, DatabaseUrl(exporter_url), clock=lambda: clock["now"])

    def current() -> tuple[int, int]:
        assert refresher.refresh(), refresher.health.last_error
        snapshot = refresher.published.snapshot
        assert snapshot is not None
        window = snapshot.monitors["shop:m"].slices[0].windows["current"]
        assert window.confidence is not None
        return window.counts.labeled_total, window.confidence.scored

    try:
        assert current() == (300, 300)
        late = [Row("m", "v1", NOW - timedelta(minutes=5), "a", "b", score=0.6) for _ in range(50)]
        insert_rows(admin_engine, table, late)
        clock["now"] = NOW + timedelta(minutes=1)
        assert current() == (350, 300)  # counts move at once, confidence waits
        clock["now"] = NOW + timedelta(minutes=5, seconds=30)
        assert current() == (350, 350)
    finally:
        refresher.engine.dispose()
