"""A real classifier's stream through Postgres and the exporter: corrupted input is detected,
a clean stream stays quiet.

A RandomForest is trained on scikit-learn's bundled digits (no download); its predictions on
held-out images are written as an inference table, the exporter computes the windows and
the shift tests from it.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import train_test_split

from confusion_exporter.stats.shift import ERROR_PATTERN, LABEL_PRIOR, SHIFT, STABLE

from .helpers import NOW, Row, create_scored_events, insert_rows, make_config, snapshot_at


@pytest.fixture(scope="module")
def digits_model():  # type: ignore[no-untyped-def]
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data, digits.target, test_size=0.5, random_state=42, stratify=digits.target
    )
    model = RandomForestClassifier(n_estimators=60, random_state=0).fit(x_train, y_train)
    return model, x_test, y_test


def corrupt(images: np.ndarray, rng: np.random.Generator, share: float) -> np.ndarray:
    """A broken preprocessing step: the left third of some 8x8 images arrives blank."""
    out = images.copy()
    hit = rng.random(len(out)) < share
    grid = out[hit].reshape(-1, 8, 8)
    grid[:, :, :3] = 0
    out[hit] = grid.reshape(-1, 64)
    return out


def stream(model, x, y, rng, n, start, span, corrupt_share=0.0, corrupt_after=None):  # type: ignore[no-untyped-def]
    index = rng.integers(0, len(x), size=n)
    times = np.sort(rng.uniform(0, span.total_seconds(), size=n))
    images = x[index]
    if corrupt_share:
        late = times >= corrupt_after.total_seconds()
        images[late] = corrupt(images[late], rng, corrupt_share)
    predicted = model.predict(images)
    scores = model.predict_proba(images).max(axis=1)
    return [
        Row("digits-rf", "v1", start + timedelta(seconds=float(t)), str(p), str(y[i]), score=float(s))
        for t, p, i, s in zip(times, predicted, index, scores, strict=True)
    ]


@pytest.mark.parametrize("corrupted", [False, True], ids=["clean", "corrupted"])
def test_corrupted_input_mid_stream_is_detected_and_clean_stays_quiet(
    digits_model, admin_engine, exporter_url, corrupted
):
    model, x, y = digits_model
    rng = np.random.default_rng(2026)
    reference_start = NOW - timedelta(hours=3, minutes=55)
    current_start = NOW - timedelta(minutes=55)
    rows = stream(model, x, y, rng, 6_000, reference_start, timedelta(hours=2, minutes=50))
    rows += stream(
        model,
        x,
        y,
        rng,
        1_500,
        current_start,
        timedelta(minutes=50),
        corrupt_share=0.3 if corrupted else 0.0,
        corrupt_after=timedelta(minutes=20),
    )
    table = create_scored_events(admin_engine)
    insert_rows(admin_engine, table, rows)
    snapshot = snapshot_at(make_config(table), exporter_url)
    (result,) = snapshot.monitors["shop:*"].slices
    tests = result.shift.tests
    assert tests[LABEL_PRIOR].state == STABLE  # the digits people write did not change
    if corrupted:
        assert tests[ERROR_PATTERN].state == SHIFT, tests[ERROR_PATTERN]
        moved = max(result.shift.rows, key=lambda r: r.effect_size)
        assert moved.effect_size >= 0.05
        assert result.shift.cells[0].residual > 3
    else:
        assert tests[ERROR_PATTERN].state == STABLE, tests[ERROR_PATTERN]
