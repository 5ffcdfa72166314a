"""The simulator writes realistic traffic; the exporter's snapshot of it equals a direct SQL count."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import sqlalchemy as sa

from confusion_exporter.config import config_from_mapping
from confusion_exporter.references import monitor_windows
from confusion_exporter.simulate import SimulationSettings, Simulator, default_profiles

from .helpers import NOW, REFERENCE_SOURCE, snapshot_at


def test_profiles_are_row_stochastic_and_the_fraud_shift_keeps_accuracy():
    for profile in default_profiles().values():
        for table in (profile.confusion, profile.shifted):
            np.testing.assert_allclose(table.sum(axis=1), 1.0)
            assert (table >= 0).all()
        assert not np.allclose(profile.confusion, profile.shifted)
    fraud = default_profiles()["fraud-gbm"]
    accuracy = [float(fraud.priors @ np.diag(t)) for t in (fraud.confusion, fraud.shifted)]
    assert abs(accuracy[0] - accuracy[1]) < 0.001  # the error swap hides from accuracy


def test_simulated_traffic_snapshot_equals_sql_count_and_shows_the_shift(
    clean_reference_schema, exporter_url
):
    engine = clean_reference_schema
    simulator = Simulator(
        engine,
        SimulationSettings(
            models=["digits-rf", "fraud-gbm"],
            rate_per_second=1.0,
            mean_label_delay=timedelta(minutes=2),
            shift_at=NOW - timedelta(minutes=50),
            shift_models=["digits-rf"],
            seed=5,
        ),
    )
    simulator.backfill(NOW - timedelta(hours=4), NOW)
    assert simulator.written_predictions > 20_000
    assert 0.8 < simulator.written_labels / simulator.written_predictions < 1.0  # late, partial labels
    config = config_from_mapping(
        {
            "sources": [REFERENCE_SOURCE],
            "monitors": [
                {
                    "source": "ref",
                    "model": "digits-rf",
                    "window": "1h",
                    "reference": {"kind": "trailing", "length": "3h"},
                }
            ],
        },
        env={},
    )
    snapshot = snapshot_at(config, exporter_url)
    current, reference = monitor_windows(NOW, config.monitors[0], config.exporter.bucket)
    with engine.connect() as conn:
        direct = conn.execute(
            sa.text(
                "SELECT segment, true_class, predicted_class, count(*) FROM inference.labeled_predictions "
                "WHERE model_name = 'digits-rf' AND predicted_at >= :s AND predicted_at < :e "
                "AND true_class IS NOT NULL GROUP BY 1, 2, 3"
            ),
            {"s": current.start, "e": current.end},
        ).fetchall()
    slices = {s.key.segment: s for s in snapshot.monitors["ref:digits-rf"].slices}
    assert set(slices) == {"eu", "us"}
    for segment, true_class, predicted_class, n in direct:
        counts = slices[segment].windows["current"].counts
        assert counts.matrix[counts.classes.index(true_class), counts.classes.index(predicted_class)] == n
    assert sum(s.windows["current"].counts.labeled_total for s in slices.values()) == sum(
        r[3] for r in direct
    )

    # The injected shift: true 8 predicted as 1 grows from 2% towards 20% of the 8s.
    def share_8_as_1(window: str) -> float:
        m = sum(s.windows[window].counts.matrix for s in slices.values())
        classes = slices["eu"].windows[window].counts.classes
        row = m[classes.index("8")]
        return row[classes.index("1")] / row.sum()

    assert share_8_as_1("reference") < 0.05 < 0.07 < share_8_as_1("current")
