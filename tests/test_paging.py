"""The paging layer: the emulation of Prometheus's alert state machine that the false-page
study replays is checked against promtool itself, and the shift page resolves once."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from confusion_exporter.stats.paging import (
    AlertRule,
    episodes,
    evaluate_stream,
    seasonal_rate,
    simulate_stream,
)
from confusion_exporter.stats.shift import ShiftParameters
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
