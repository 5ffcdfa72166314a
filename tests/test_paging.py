"""The paging layer: the emulation of Prometheus's alert state machine that the false-page
study replays is checked against promtool itself, and the shift page resolves once."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from confusion_exporter.stats.paging import (
    SEQUENTIAL_PAGE,
    AlertRule,
    episodes,
    error_pattern_effects,
    evaluate_stream,
    firing,
    onsets,
    seasonal_priors_at,
    seasonal_rate,
    simulate_counts,
    simulate_stream,
)
from confusion_exporter.stats.shift import ShiftParameters, error_pattern_test
from confusion_exporter.stats.simulation import structured_classifier

ROOT = Path(__file__).resolve().parent.parent


def bursty(rng: np.random.Generator, steps: int) -> list[bool]:
    """Active runs of random lengths (1-12 steps) separated by random gaps (1-8 steps)."""
    out: list[bool] = []
    while len(out) < steps:
        out += [False] * int(rng.integers(1, 9)) + [True] * int(rng.integers(1, 13))
    return out[:steps]


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
@pytest.mark.parametrize(("for_m", "keep_m"), [(5, 0), (5, 3), (2, 6)])
def test_emulated_alert_states_equal_promtools(tmp_path, promtool, seed, for_m, keep_m):
    rng = np.random.default_rng(seed)
    active = bursty(rng, 90)
    rule = AlertRule(for_m, keep_m)
    pages = episodes(active, rule)
    firing = [
        any(e.fired <= t and (e.resolved is None or t < e.resolved) for e in pages)
        for t in range(len(active))
    ]
    alert: dict[str, object] = {"alert": "T", "expr": "x == 1", "for": f"{for_m}m"}
    if keep_m:
        alert["keep_firing_for"] = f"{keep_m}m"
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [alert]}]}))
    values = " ".join("1" if a else "0" for a in active)
    tests = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": "x", "values": values}],
                "alert_rule_test": [
                    {
                        "eval_time": f"{t}m",
                        "alertname": "T",
                        "exp_alerts": [{"exp_labels": {}}] if firing[t] else [],
                    }
                    for t in range(len(active))
                ],
            }
        ],
    }
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests))
    result = subprocess.run(
        [promtool, "test", "rules", str(tmp_path / "tests.yml")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert pages, "the sequence should page at least once"


def test_a_page_resolves_once_however_the_decision_flickers():
    """keep_firing_for: a shift decision that flickers (the p-value hovering at alpha) gives one
    page and one resolution, not a page per flicker."""
    flicker = [True] * 40 + [False, True, False, False, True, True, False, True] * 5 + [False] * 60
    without = episodes(flicker, AlertRule(30, 0))
    with_keep = episodes(flicker, AlertRule(30, 30))
    assert len(with_keep) == 1 and with_keep[0].resolved is not None
    assert len(without) == 1  # (here `for` alone already filters the flicker's restarts)
    restart = [True] * 40 + [False] * 3 + [True] * 40 + [False] * 60
    assert len(episodes(restart, AlertRule(30, 0))) == 2  # a dip pages twice without keep_firing_for
    assert len(episodes(restart, AlertRule(30, 30))) == 1


def test_shipped_rule_matches_the_studied_one():
    """The ErrorPatternShift rule carries the for and keep_firing_for that docs/statistics.md's
    false-page table was measured with, and the monitor's default alpha is the studied one."""
    from confusion_exporter.config import MonitorConfig
    from confusion_exporter.stats.paging import SHIFT_PAGE, SHIFT_PAGE_ALPHA, SHIFT_PAGE_MIN_EFFECT

    rules = yaml.safe_load((ROOT / "prometheus" / "rules" / "confusion-exporter.rules.yml").read_text())
    alert = next(
        r for g in rules["groups"] for r in g["rules"] if r.get("alert") == "ConfusionErrorPatternShift"
    )
    assert alert["for"] == f"{SHIFT_PAGE.for_steps}m"
    assert alert["keep_firing_for"] == f"{SHIFT_PAGE.keep_firing_steps}m"
    assert MonitorConfig.model_fields["alpha"].default == SHIFT_PAGE_ALPHA
    assert MonitorConfig.model_fields["min_effect"].default == SHIFT_PAGE_MIN_EFFECT


def test_no_change_stream_rarely_decides_shift_and_never_pages_in_a_day():
    """A small run of the study itself (the benchmark runs 30 days per point)."""
    rng = np.random.default_rng(3)
    model = structured_classifier(10)
    stream = simulate_stream(rng, 1560 + 1440, seasonal_rate(3000), lambda _: model)
    params = ShiftParameters(alpha=0.001, min_effect=0.0, min_samples=1, monte_carlo_samples=9999)
    evaluations = evaluate_stream(stream, 60, 1440, 1560, 5, params)
    decided = evaluations.decisions(0.001, 0.05, 200)
    assert len(decided) == 289
    assert decided.mean() < 0.02
    assert not episodes(decided, AlertRule(6, 6))  # 30 minutes at a 5-minute step


def test_vectorised_stream_has_the_loops_law():
    """simulate_counts draws what simulate_stream draws: per regime, the counts of each cell
    over 20,000 minutes are within 4 standard deviations of their expectation (computed here
    from the rate, the mix and the confusion, not by the product's code), and regimes switch
    exactly where asked."""
    rng = np.random.default_rng(7)
    minutes = np.arange(20_000)
    rate = 30 * (1 + 0.5 * np.sin(2 * np.pi * minutes / 1440))
    priors = np.tile([0.7, 0.2, 0.1], (len(minutes), 1))
    priors[minutes % 1440 < 360] = [0.5, 0.3, 0.2]
    confusions = np.array(
        [
            [[0.9, 0.08, 0.02], [0.1, 0.85, 0.05], [0.2, 0.1, 0.7]],
            [[0.6, 0.3, 0.1], [0.3, 0.6, 0.1], [0.0, 0.0, 1.0]],
        ]
    )
    regime = (minutes >= 12_345).astype(np.int64)
    counts = simulate_counts(rng, rate, priors, confusions, regime)
    assert counts.shape == (20_000, 3, 3)
    assert counts[12_345:, 2, :2].sum() == 0  # the second regime never errs on class 2
    for g in (0, 1):
        rows = regime == g
        expected = np.einsum("m,mi,ij->ij", rate[rows], priors[rows], confusions[g])
        observed = counts[rows].sum(axis=0)
        z = (observed - expected) / np.sqrt(np.maximum(expected, 1e-12))
        assert np.abs(z).max() < 4, z


def test_effect_filter_is_the_exact_tests_effect():
    """error_pattern_effects equals error_pattern_test's effect size table by table (random
    tables with empty cells, empty rows and rows under min_row_samples)."""
    rng = np.random.default_rng(11)
    # The effect does not depend on the p-value: a small Monte Carlo budget keeps this fast.
    params = ShiftParameters(alpha=0.5, min_effect=0.0, min_samples=1, monte_carlo_samples=99)
    refs, curs = [], []
    for _ in range(200):
        k = 3
        ref = rng.poisson(rng.choice([0.5, 5, 50], size=(k, k)))
        cur = rng.poisson(rng.choice([0.5, 5, 50], size=(k, k)))
        refs.append(ref)
        curs.append(cur)
    effects = error_pattern_effects(np.array(refs), np.array(curs), params.min_row_samples)
    for ref, cur, got in zip(refs, curs, effects, strict=True):
        result, _, _ = error_pattern_test(ref, cur, ("a", "b", "c"), params)
        assert abs(got - result.effect_size) < 1e-12


def test_the_effect_filter_changes_no_decision():
    """With skip_effect_below = min_effect, the decisions of a no-change and a changed stream
    are those of the exact test at every evaluation, while a share of the exact tests is skipped."""
    rng = np.random.default_rng(5)
    before = structured_classifier(3)
    after = structured_classifier(3, accuracy=0.8)
    m = np.arange(1560 + 720)
    counts = simulate_counts(
        rng,
        seasonal_rate(3000)(m),
        seasonal_priors_at(before.priors, m),
        np.stack([before.confusion, after.confusion]),
        (m >= 1560 + 360).astype(np.int64),
    )
    params = ShiftParameters(alpha=0.001, min_effect=0.0, min_samples=1)
    exact = evaluate_stream(counts, 60, 1440, 1560, 7, params)
    fast = evaluate_stream(counts, 60, 1440, 1560, 7, params, skip_effect_below=0.03)
    for min_effect in (0.03, 0.05):
        decided = exact.decisions(0.001, min_effect, 200)
        assert np.array_equal(decided, fast.decisions(0.001, min_effect, 200))
    assert decided.any() and not decided.all()
    assert (fast.p_value == 1.0).mean() > 0.2  # skipped: the point of the filter


def test_an_offset_reference_is_the_window_a_day_earlier():
    """With ``offset``, each evaluation compares the last hour with the same hour a day
    earlier: equal to the exact test on windows sliced by hand."""
    rng = np.random.default_rng(9)
    model = structured_classifier(3)
    m = np.arange(1500 + 120)
    counts = simulate_counts(
        rng, seasonal_rate(3000)(m), seasonal_priors_at(model.priors, m), model.confusion[None], 0 * m
    )
    params = ShiftParameters(alpha=0.01, min_effect=0.0, min_samples=1, monte_carlo_samples=99)
    ev = evaluate_stream(counts, 60, 1440, 0, 40, params, offset=1440)
    assert list(ev.minutes) == [1500, 1540, 1580, 1620]
    for minute, p, effect in zip(ev.minutes, ev.p_value, ev.effect, strict=True):
        ref = counts[minute - 1500 : minute - 1440].sum(axis=0)
        cur = counts[minute - 60 : minute].sum(axis=0)
        result, _, _ = error_pattern_test(ref, cur, ("0", "1", "2"), params)
        assert (p, effect) == (result.p_value, result.effect_size)


def test_the_page_as_a_whole_joins_overlapping_pages():
    """firing replays episodes step by step; the union of two alerts' firing series pages once
    where their pages overlap, and once per separate page elsewhere."""
    window = [False] * 5 + [True] * 40 + [False] * 100
    sequential = [False] * 20 + [True] * 3 + [False] * 80 + [True] * 2 + [False] * 40
    w = firing(window, AlertRule(30, 30))
    s = firing(sequential, SEQUENTIAL_PAGE)
    assert list(np.flatnonzero(w)[[0, -1]]) == [35, 74]  # fires after `for`, kept 30 steps
    assert list(np.flatnonzero(s[:100])[[0, -1]]) == [20, 37]  # no `for`, kept 15 steps
    assert list(onsets(w)) == [35] and list(onsets(s)) == [20, 103]
    assert list(onsets(w | s)) == [20, 103]  # the overlap is one page (the sequential layer first)


@pytest.mark.parametrize("skip", [None, 0.03])
def test_a_seasonal_reference_pools_the_window_on_earlier_periods(skip):
    """With ``seasonal=(period, count)``, each evaluation compares the last window with the sum
    of the same window shifted back by 1..count periods: equal to the exact test on slices of
    the raw stream summed by hand (a stream whose volume and errors change every period, so a
    trailing or single-offset reference would differ); evaluations start once the whole
    reference exists; and with the effect filter, the decisions are the same."""
    rng = np.random.default_rng(21)
    before, after = structured_classifier(3), structured_classifier(3, accuracy=0.8)
    period, count, window = 50, 3, 10
    m = np.arange(count * period + window + 60)
    counts = simulate_counts(
        rng,
        np.where((m // period) % 2 == 0, 40.0, 8.0),
        seasonal_priors_at(before.priors, m * 29),
        np.stack([before.confusion, after.confusion]),
        ((m // 7) % 3 == 0).astype(np.int64),
    )
    params = ShiftParameters(alpha=0.01, min_effect=0.0, min_samples=1, monte_carlo_samples=99)
    ev = evaluate_stream(counts, window, 1440, 0, 3, params, skip_effect_below=skip, seasonal=(period, count))
    first = count * period + window
    assert ev.minutes[0] == first and list(ev.minutes) == list(range(first, len(m) + 1, 3))
    checked = []
    for minute, p, effect, n_ref, n_cur in zip(
        ev.minutes, ev.p_value, ev.effect, ev.n_reference, ev.n_current, strict=True
    ):
        ref = sum(
            counts[minute - j * period - window : minute - j * period].sum(axis=0)
            for j in range(1, count + 1)
        )
        cur = counts[minute - window : minute].sum(axis=0)
        result, _, _ = error_pattern_test(ref, cur, ("0", "1", "2"), params)
        assert (n_ref, n_cur) == (result.n_reference, result.n_current)
        assert abs(effect - result.effect_size) < 1e-12
        if skip is None or effect >= skip:
            assert p == result.p_value
        checked.append(result.p_value < 0.01 and result.effect_size >= 0.03)
        decided = p < 0.01 and effect >= 0.03
        assert decided == checked[-1]
    assert any(checked) and not all(checked)  # both decisions occur: the comparison has teeth
    # offset=d is seasonal=(d, 1)
    one = evaluate_stream(counts, window, 1440, 0, 3, params, seasonal=(period, 1))
    off = evaluate_stream(counts, window, 1440, 0, 3, params, offset=period)
    assert np.array_equal(one.minutes, off.minutes) and np.array_equal(one.p_value, off.p_value)
    with pytest.raises(ValueError):
        evaluate_stream(counts, window, 1440, 0, 3, params, offset=period, seasonal=(period, 2))
