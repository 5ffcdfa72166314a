"""The sequential layer (stats/sequential.py) against an independent implementation.

``Reference`` below is written from the formulas in docs/statistics.md ("Sequential
detection"), one cell at a time in plain Python lists and ``math`` (no numpy arrays, no ring
indices, none of the product's code): the product's decisions and evidence on seeded and
randomized streams must equal it. Then the properties the design rests on: the reference
freeze (a reference that absorbs the change would not page, or would drift), the seasonal
reference (a daily error-rate cycle does not page every night), the lifecycle (one page,
resolved once by accept), restart and replay (persisted state continues bit for bit), and
the exporter path's imports.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import dataclass, field, replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from confusion_exporter.stats import sequential as sq

# --------------------------------------------------------------------------------------------
# The independent implementation
# --------------------------------------------------------------------------------------------


@dataclass
class RefCell:
    kind: str
    i: int
    j: int
    ring: list[list[float]] = field(default_factory=list)  # [hour, x, n], oldest first
    s: list[float] = field(default_factory=list)  # one CUSUM per alternative
    shifted: bool = False
    shift_periods: int = 0
    run_x: int = 0  # successes and expected successes since the evidence was last 0
    run_expected: float = 0.0
    ready: bool = False


class Reference:
    """One slice's detector, cell by cell, straight from the formulas."""

    def __init__(self, k: int, params: sq.SequentialParameters) -> None:
        self.p = params
        cells = [RefCell("confusion", i, j) for i in range(k) for j in range(k) if i != j]
        if params.error_rates and k > 2:
            cells += [RefCell("error", i, -1) for i in range(k)]
        if params.false_discovery_rates:
            cells += [RefCell("false_discovery", i, j) for j in range(k) for i in range(k) if i != j]
        for cell in cells:
            cell.s = [0.0] * len(params.alternatives)
        self.cells = cells
        # h = ln(periods in 30 days x cells x segments x alternatives / budget)
        periods = 30 * 24 * 60 / params.period_minutes
        tests = len(cells) * params.segments * len(params.alternatives)
        self.h = math.log(periods * tests / params.false_alarms_per_30_days)

    @staticmethod
    def counts(cell: RefCell, m: list[list[int]]) -> tuple[int, int]:
        if cell.kind == "confusion":
            return m[cell.i][cell.j], sum(m[cell.i])
        if cell.kind == "error":
            return sum(m[cell.i]) - m[cell.i][cell.i], sum(m[cell.i])
        return m[cell.i][cell.j], sum(row[cell.j] for row in m)

    def hour_distance(self, a: int, b: int) -> int:
        d = abs(a % 24 - b % 24)
        return min(d, 24 - d)

    @staticmethod
    def add(bins: list[list[float]], hour: int, x: int, n: int, keep: int) -> None:
        if bins and bins[-1][0] == hour:
            bins[-1][1] += x
            bins[-1][2] += n
        else:
            bins.append([hour, x, n])
            del bins[:-keep]

    def step(self, m: list[list[int]], hour: int) -> list[str]:
        p = self.p
        out = []
        for cell in self.cells:
            x, n = self.counts(cell, m)
            xa = sum(b[1] for b in cell.ring)
            na = sum(b[2] for b in cell.ring)
            overall = (xa + 0.5) / (na + 1)
            if p.seasonal:
                band = [b for b in cell.ring if self.hour_distance(b[0], hour) <= p.seasonal_band]
                xs, ns = sum(b[1] for b in band), sum(b[2] for b in band)
                # the cell's daily cycle: excess variance of its hour-of-day rates
                excess = scale = 0.0
                for h in range(24):
                    xh = sum(b[1] for b in cell.ring if b[0] % 24 == h)
                    nh = sum(b[2] for b in cell.ring if b[0] % 24 == h)
                    e = nh * overall
                    excess += (xh - e) ** 2 - e * (1 - overall)
                    scale += e * e
                tau2 = min(max(excess / scale, 0.0), 1.0) if scale > 0 else 0.0
                w = ns * overall * tau2 / (ns * overall * tau2 + 1 - overall) if ns > 0 else 0.0
                rate = w * (xs / ns if ns > 0 else overall) + (1 - w) * overall
                rate = max(rate, 0.5 / (na + 1))
                trials = 1 / (w**2 / max(ns, 1) + (1 - w) ** 2 / (na + 1))
            else:
                rate, trials = overall, na + 1
            p0 = rate + p.guard_z * math.sqrt(rate * (1 - rate) / trials)
            usable = na >= p.min_reference_trials and p0 < 1
            readies = []
            alarmed = False
            for a, multiple in enumerate(p.alternatives):
                step = max(p.min_relative_change * multiple * rate, p.min_absolute_change * multiple)
                p1 = min(rate + step, 1 - 1e-12)
                ready = usable and p1 > p0
                readies.append(ready)
                if ready:
                    llr = x * math.log(p1 / p0) + (n - x) * (math.log(1 - p1) - math.log(1 - p0))
                    cell.s[a] = max(0.0, cell.s[a] + llr)
                    alarmed = alarmed or cell.s[a] >= self.h
                elif not cell.shifted:
                    cell.s[a] = 0.0
            cell.ready = any(readies)
            cell.shifted = cell.shifted or alarmed
            if cell.shifted:
                cell.shift_periods += 1
            if max(cell.s) > 0 or cell.shifted:
                cell.run_x += x
                cell.run_expected += n * rate if cell.ready else 0.0
            else:
                cell.run_x, cell.run_expected = 0, 0.0
            # frozen unless stable after this period
            if not cell.shifted and max(cell.s) < p.accumulating_share * self.h:
                self.add(cell.ring, hour, x, n, p.reference_hours)
            if (
                p.accept_after_hours is not None
                and cell.shifted
                and cell.shift_periods * p.period_minutes >= p.accept_after_hours * 60
            ):
                self.accept(cell)
            out.append(self.state(cell))
        return out

    def accept(self, cell: RefCell) -> None:
        # the new regime: the old reference scaled by the run's observed / expected
        ratio = cell.run_x / cell.run_expected if cell.run_expected > 0 else 1.0
        for b in cell.ring:
            b[1] = min(b[1] * ratio, b[2])
        cell.s = [0.0] * len(self.p.alternatives)
        cell.shifted, cell.shift_periods, cell.run_x, cell.run_expected = False, 0, 0, 0.0

    def state(self, cell: RefCell) -> str:
        if cell.shifted:
            return "shift"
        if not cell.ready:
            return "insufficient_data"
        return "accumulating" if max(cell.s) >= self.p.accumulating_share * self.h else "stable"


# --------------------------------------------------------------------------------------------
# Streams
# --------------------------------------------------------------------------------------------


def fraud_period(rng: np.random.Generator, n: int, fp: float, fn: float = 0.18) -> np.ndarray:
    fraud = rng.binomial(n, 0.02)
    legit = n - fraud
    false_pos, false_neg = rng.binomial(legit, fp), rng.binomial(fraud, fn)
    return np.array([[legit - false_pos, false_pos], [false_neg, fraud - false_neg]])


def multiclass_period(rng: np.random.Generator, n: int, confusion: np.ndarray) -> np.ndarray:
    k = len(confusion)
    support = rng.multinomial(n, np.full(k, 1 / k))
    return np.vstack([rng.multinomial(s, row) for s, row in zip(support, confusion, strict=True)])


def run_both(
    matrices: list[np.ndarray], hours: list[int], k: int, params: sq.SequentialParameters
) -> tuple[list[tuple[str, ...]], list[list[str]], sq.DetectorState, Reference]:
    state = sq.initial_state(tuple(f"c{i}" for i in range(k)), params)
    ref = Reference(k, params)
    ours, theirs = [], []
    for m, hour in zip(matrices, hours, strict=True):
        state = sq.update(state, m, hour)
        ours.append(sq.cell_states(state))
        theirs.append(ref.step(m.tolist(), hour))
        assert state.evidence.ravel().tolist() == pytest.approx(
            [s for c in ref.cells for s in c.s], rel=1e-9, abs=1e-9
        )
    return ours, theirs, state, ref


SMALL = sq.SequentialParameters(
    reference_hours=48, min_reference_trials=200, accept_after_hours=6.0, period_minutes=15
)


@pytest.mark.parametrize(
    "params",
    [
        SMALL,
        replace(SMALL, seasonal=False),
        replace(SMALL, guard_z=0.0, min_relative_change=0.2),
        replace(SMALL, accept_after_hours=None, seasonal_band=0),
    ],
    ids=["seasonal", "not-seasonal", "no-guard", "no-auto-accept"],
)
def test_fraud_stream_decisions_equal_the_independent_implementation(params: sq.SequentialParameters) -> None:
    """A seeded fraud stream: 3 days at FP 3%, then 2 days at 4.5%; every period's state of
    every cell and its evidence equal the implementation from the formulas."""
    rng = np.random.default_rng(7)
    per_hour = 60 // params.period_minutes
    matrices, hours = [], []
    for period in range(5 * 24 * per_hour):
        fp = 0.03 if period < 3 * 24 * per_hour else 0.045
        matrices.append(fraud_period(rng, 800, fp))
        hours.append(period // per_hour)
    ours, theirs, state, _ = run_both(matrices, hours, 2, params)
    assert [list(s) for s in ours] == theirs
    flat = {s for row in ours for s in row}
    assert "shift" in flat and "stable" in flat  # the stream exercises both


def test_multiclass_stream_with_error_and_false_discovery_rates() -> None:
    """K = 3 with error and false-discovery rates, a wrapping ring, auto-accept."""
    params = replace(SMALL, false_discovery_rates=True, reference_hours=12)
    rng = np.random.default_rng(11)
    before = np.array([[0.9, 0.07, 0.03], [0.05, 0.9, 0.05], [0.02, 0.08, 0.9]])
    after = before.copy()
    after[1] = [0.08, 0.85, 0.07]
    matrices = [multiclass_period(rng, 600, before if t < 150 else after) for t in range(300)]
    hours = [t // 4 for t in range(300)]
    ours, theirs, state, _ = run_both(matrices, hours, 3, params)
    assert [list(s) for s in ours] == theirs
    assert len(state.cells) == 6 + 3 + 6
    assert any("shift" in s for s in ours[150:])


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    k=st.integers(2, 4),
    size=st.sampled_from([5, 60, 2000]),
    rho=st.sampled_from([0.05, 0.1, 0.3]),
    floor=st.sampled_from([0.0, 0.001, 0.02]),
    guard=st.sampled_from([0.0, 1.0, 2.0]),
    seasonal=st.booleans(),
    band=st.integers(0, 2),
    ring=st.integers(1, 30),
    period=st.sampled_from([10, 30, 60]),
    share=st.sampled_from([0.0, 0.5, 1.0]),
    accept_after=st.sampled_from([None, 1.0, 5.0]),
    jump=st.floats(1.0, 3.0),
)
def test_random_streams_equal_the_independent_implementation(
    seed, k, size, rho, floor, guard, seasonal, band, ring, period, share, accept_after, jump
) -> None:
    params = sq.SequentialParameters(
        min_relative_change=rho,
        min_absolute_change=floor if rho > 0 or floor > 0 else 0.001,
        guard_z=guard,
        seasonal=seasonal,
        seasonal_band=band,
        reference_hours=ring,
        period_minutes=period,
        accumulating_share=share,
        accept_after_hours=accept_after,
        min_reference_trials=50,
        error_rates=True,
    )
    rng = np.random.default_rng(seed)
    confusion = rng.dirichlet(np.ones(k), size=k) * 0.3 + np.eye(k) * 0.7
    moved = confusion.copy()
    moved[0, 1:] *= jump
    moved[0, 0] = 0
    moved[0] /= moved[0].sum()
    periods = 120
    matrices = [multiclass_period(rng, size, confusion if t < 60 else moved) for t in range(periods)]
    # irregular hours: gaps and several periods per hour
    hours = list(np.cumsum(rng.integers(0, 3, size=periods)))
    ours, theirs, _, _ = run_both(matrices, [int(h) for h in hours], k, params)
    assert [list(s) for s in ours] == theirs


def test_threshold_is_bonferroni_over_cells_and_segments() -> None:
    params = sq.SequentialParameters(period_minutes=5, segments=3, false_alarms_per_30_days=0.5)
    state = sq.initial_state(("a", "b", "c"), params)
    cells = 6 + 3  # confusion rates and each row's error rate
    assert len(state.cells) == cells
    assert state.threshold == pytest.approx(math.log(8640 * cells * 3 * 3 / 0.5))  # 3 alternatives
    # K = 2: the row error rate is the one confusion rate of the row, not counted twice
    assert len(sq.initial_state(("legit", "fraud")).cells) == 2


# --------------------------------------------------------------------------------------------
# The reference freeze
# --------------------------------------------------------------------------------------------


FREEZE = sq.SequentialParameters(
    reference_hours=96, seasonal=False, accept_after_hours=None, period_minutes=60, guard_z=1.0
)
ONSET = 96


def frozen_stream(rng: np.random.Generator) -> tuple[list[np.ndarray], list[int]]:
    """96 h at FP 3% (the ring fills), then 120 h of the seed incident's 3.45%, 3,000 labels
    an hour: the evidence needs about half a day, and the new regime outlasts the ring, so a
    reference that learned it would end up at 3.45%."""
    rates = [0.03] * ONSET + [0.0345] * 120
    return [fraud_period(rng, 3000, fp) for fp in rates], list(range(len(rates)))


@pytest.mark.parametrize("seed", range(5))
def test_the_reference_is_frozen_while_evidence_accumulates_and_in_alarm(seed: int) -> None:
    """The change pages, and from the first period of evidence past the freeze mark on, the
    reference bins do not move: the reference rate reported at the page and 3 days after it
    is the pre-change rate, not the new one. A reference that absorbed accumulating or
    alarmed periods (the mutation this test exists for) pages later or never, and reports a
    reference drifting to 3.6%."""
    rng = np.random.default_rng(seed)
    matrices, hours = frozen_stream(rng)
    state = sq.initial_state(("legit", "fraud"), FREEZE)
    paged, frozen_ref = None, None
    for t, (m, hour) in enumerate(zip(matrices, hours, strict=True)):
        before = state
        state = sq.update(state, m, hour)
        fp = 0  # the legit -> fraud cell
        if sq.cell_states(state)[fp] in ("accumulating", "shift"):
            # nothing entered the ring in this period
            assert np.array_equal(state.ref_x[fp], before.ref_x[fp])
            assert np.array_equal(state.ref_n[fp], before.ref_n[fp])
        if paged is None and state.shifted[fp]:
            ref = sq.reference_counts(state, hour)
            paged, frozen_ref = t, (ref.x_all, ref.n_all)
    assert paged is not None and paged < ONSET + 48, "the +15% change pages within 2 days"
    assert frozen_ref is not None
    ref = sq.reference_counts(state, hours[-1])
    assert ref.x_all[0] == frozen_ref[0][0] and ref.n_all[0] == frozen_ref[1][0]
    top = sq.top_cell(sq.report(state))
    assert top is not None and top.description == "legit predicted as fraud" and top.state == "shift"
    assert top.reference_rate == pytest.approx(0.03, rel=0.03)
    assert top.current_rate == pytest.approx(0.0345, rel=0.03)
    assert top.relative_change_low > 0.05  # the interval excludes no change
    assert top.relative_change_low < 0.15 < top.relative_change_high


def test_a_reference_that_learns_the_change_misses_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The freeze is what makes the page: with the absorb rule replaced by "always" (the
    trailing-reference behaviour of the window tests), the same streams page in fewer runs or
    later, and the reference drifts towards the new rate."""
    real = sq._absorb

    def always(state, absorb, x, n, hour):  # type: ignore[no-untyped-def]
        return real(state, np.ones_like(absorb), x, n, hour)

    learned_refs, frozen_refs, frozen_delays, learned_delays = [], [], [], []
    for seed in range(5):
        for mutated, refs, delays in (
            (False, frozen_refs, frozen_delays),
            (True, learned_refs, learned_delays),
        ):
            if mutated:
                monkeypatch.setattr(sq, "_absorb", always)
            else:
                monkeypatch.setattr(sq, "_absorb", real)
            matrices, hours = frozen_stream(np.random.default_rng(seed))
            state = sq.initial_state(("legit", "fraud"), FREEZE)
            delay = math.inf
            for t, (m, hour) in enumerate(zip(matrices, hours, strict=True)):
                state = sq.update(state, m, hour)
                if state.shifted[0] and delay == math.inf:
                    delay = t - ONSET
            ref = sq.reference_counts(state, hours[-1])
            refs.append(ref.x_all[0] / ref.n_all[0])
            delays.append(delay)
    monkeypatch.setattr(sq, "_absorb", real)
    assert max(frozen_refs) < 0.031 < 0.034 < min(learned_refs)
    assert np.median(frozen_delays) <= np.median(learned_delays)


# --------------------------------------------------------------------------------------------
# Seasonality, lifecycle, restart, report
# --------------------------------------------------------------------------------------------


def night_stream(rng: np.random.Generator, days: int, per_hour: int) -> tuple[list[np.ndarray], list[int]]:
    """A large stream whose FP rate is 1.2 times as high from 00:00 to 06:00 (every day), in
    5-minute periods."""
    matrices, hours = [], []
    for period in range(days * 24 * 12):
        hour = period // 12
        fp = 0.036 if hour % 24 < 6 else 0.03
        matrices.append(fraud_period(rng, per_hour // 12, fp))
        hours.append(hour)
    return matrices, hours


def test_the_seasonal_reference_does_not_page_every_night() -> None:
    """100,000 labels per hour with the night cycle: a reference averaged over the day pages
    in the first nights after it filled; the same-hours reference (the default) does not."""
    params = sq.SequentialParameters(reference_hours=72, accept_after_hours=None)
    matrices, hours = night_stream(np.random.default_rng(3), days=6, per_hour=100_000)
    pages = {}
    for seasonal in (True, False):
        state = sq.initial_state(("legit", "fraud"), replace(params, seasonal=seasonal))
        count = 0
        for m, hour in zip(matrices, hours, strict=True):
            state = sq.update(state, m, hour)
            if hour >= 72 and state.shifted.any():
                count += 1
                state = sq.accept(state)
        pages[seasonal] = count
    assert pages[True] == 0
    assert pages[False] >= 2


def test_a_page_latches_then_resolves_once_after_acceptance() -> None:
    """After the page, the detector keeps ``shift`` (no flapping) until the new regime is
    accepted; it then resolves and stays quiet on the new regime."""
    params = sq.SequentialParameters(reference_hours=48, seasonal=False, accept_after_hours=None)
    rng = np.random.default_rng(5)
    state = sq.initial_state(("legit", "fraud"), params)
    states = []
    for period in range(48 * 12 + 48 * 12):
        fp = 0.03 if period < 48 * 12 else 0.04
        state = sq.update(state, fraud_period(rng, 2500, fp), period // 12)
        states.append(sq.monitor_state(state))
    fired = states.index("shift")
    assert set(states[fired:]) == {"shift"}  # latched, never resolving on its own
    state = sq.accept(state)
    assert sq.monitor_state(state) != "shift"
    after = []
    for period in range(96 * 12, 96 * 12 + 24 * 12):
        state = sq.update(state, fraud_period(rng, 2500, 0.04), period // 12)
        after.append(sq.monitor_state(state))
    assert "shift" not in after
    top = sq.top_cell(sq.report(state))
    assert top is not None
    assert sq.report(state)[0].reference_rate == pytest.approx(0.04, rel=0.1)


def test_automatic_acceptance_after_the_documented_span() -> None:
    params = sq.SequentialParameters(reference_hours=48, seasonal=False, accept_after_hours=2.0)
    rng = np.random.default_rng(8)
    state = sq.initial_state(("legit", "fraud"), params)
    shift_periods = 0
    for period in range(48 * 12 + 24 * 12):
        fp = 0.03 if period < 48 * 12 else 0.05
        state = sq.update(state, fraud_period(rng, 2500, fp), period // 12)
        shift_periods += bool(state.shifted.any())
    assert 0 < shift_periods <= 2 * 12  # one page of at most 2 hours, then the new regime holds


def test_a_restart_continues_exactly_where_it_stopped() -> None:
    """The state persisted mid-accumulation (JSON), restored, and fed the rest of the stream
    equals the state of a run that never stopped: a restart keeps the evidence."""
    rng = np.random.default_rng(9)
    params = sq.SequentialParameters(reference_hours=48)
    matrices = [fraud_period(rng, 300, 0.03 if t < 600 else 0.036) for t in range(900)]
    hours = [t // 12 for t in range(900)]
    live = sq.initial_state(("legit", "fraud"), params)
    stopped = None
    for t, (m, hour) in enumerate(zip(matrices, hours, strict=True)):
        live = sq.update(live, m, hour)
        if t == 700:
            assert live.evidence[0].max() > 0, "the restart falls while evidence is accumulating"
            stopped = json.loads(json.dumps(sq.to_dict(live)))
    assert stopped is not None
    restored = sq.from_dict(stopped)
    for m, hour in zip(matrices[701:], hours[701:], strict=True):
        restored = sq.update(restored, m, hour)
    assert sq.states_equal(live, restored)
    assert sq.report(live) == sq.report(restored)


def test_replaying_the_same_periods_gives_the_same_state() -> None:
    rng = np.random.default_rng(10)
    matrices = [fraud_period(rng, 200, 0.03) for _ in range(300)]
    runs = []
    for _ in range(2):
        state = sq.initial_state(("legit", "fraud"), sq.SequentialParameters(reference_hours=24))
        for t, m in enumerate(matrices):
            state = sq.update(state, m, t // 12)
        runs.append(state)
    assert sq.states_equal(*runs)


def test_hours_must_not_go_back_and_matrices_must_fit() -> None:
    state = sq.update(sq.initial_state(("a", "b")), np.ones((2, 2), np.int64), 10)
    with pytest.raises(ValueError):
        sq.update(state, np.ones((2, 2), np.int64), 9)
    with pytest.raises(ValueError):
        sq.update(state, np.ones((3, 3), np.int64), 11)


def test_the_sentence_names_the_cell_in_words() -> None:
    cell = sq.CellReport(
        kind="confusion",
        true_class="legit",
        predicted_class="fraud",
        description="legit predicted as fraud",
        reference_rate=0.03,
        current_rate=0.0345,
        relative_change=0.15,
        relative_change_low=0.05,
        relative_change_high=0.25,
        evidence=12.0,
        threshold=9.8,
        state="shift",
        current_trials=100_000,
        reference_trials=1_000_000,
    )
    assert sq.sentence(cell) == "legit predicted as fraud: 3.00% -> 3.45%, +15%"


def test_relative_change_interval_covers_the_change() -> None:
    """The interval of observed/expected - 1 covers the true ratio about 95% of the time when
    both the current and the reference rate are estimated."""
    rng = np.random.default_rng(12)
    covered = 0
    for _ in range(2000):
        x_ref, x = rng.binomial(100_000, 0.03), rng.binomial(20_000, 0.0345)
        p_ref = x_ref / 100_000
        _, low, high = sq.relative_change_interval(x, 20_000, 20_000 * p_ref, x_ref, 100_000, 1.96)
        covered += low <= 0.15 <= high
    assert 0.93 <= covered / 2000 <= 0.97


def test_lorden_bound_of_the_seed_incident() -> None:
    """Issue 15's figures: KL about 3.3e-4 nats per legit prediction; the bound about 15 h at
    3,000 labels per hour (2,940 legit), 1.7 h at 30,000."""
    assert sq.kl_bernoulli(0.0345, 0.03) == pytest.approx(3.3e-4, rel=0.02)
    assert sq.lorden_bound_hours(0.03, 0.0345, 2940, 720) == pytest.approx(15, rel=0.05)
    assert sq.lorden_bound_hours(0.03, 0.0345, 29400, 720) == pytest.approx(1.7, rel=0.05)


def test_the_module_does_not_import_scipy() -> None:
    code = "import sys, confusion_exporter.stats.sequential; print('scipy.stats' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
