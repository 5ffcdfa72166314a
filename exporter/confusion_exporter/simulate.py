"""Realistic classifier traffic for the demo and tests: imbalanced classes, structured
confusions, labels that arrive late (and are sometimes corrected), and an optional
error-pattern shift injected at a chosen time."""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy.engine import Engine

from .source.reference_schema import insert_labels, insert_predictions

log = logging.getLogger("confusion_exporter.simulate")


@dataclass(frozen=True)
class ModelProfile:
    """How one simulated model behaves: P(predicted | true) before and after the shift."""

    name: str
    classes: tuple[str, ...]
    priors: NDArray[np.float64]
    confusion: NDArray[np.float64]
    shifted: NDArray[np.float64]
    versions: tuple[tuple[str, float], ...] = (("v1", 1.0),)


def _rows(k: int, diagonal: float, extra: dict[tuple[int, int], float]) -> NDArray[np.float64]:
    """A row-stochastic matrix: ``diagonal`` on the diagonal, ``extra`` confusions, rest spread."""
    m = np.zeros((k, k))
    for i in range(k):
        m[i, i] = diagonal
        for (a, b), p in extra.items():
            if a == i:
                m[i, b] += p
                m[i, i] -= p
        rest = 1.0 - m[i].sum()
        others = [j for j in range(k) if j != i]
        m[i, others] += rest / len(others)
    return m


def default_profiles() -> dict[str, ModelProfile]:
    """Three models: a rare-positive fraud model, a digits classifier, an intent router."""
    digits = tuple(str(d) for d in range(10))
    digit_confusions = {(8, 1): 0.02, (3, 5): 0.02, (9, 7): 0.015, (4, 9): 0.01}
    intents = ("billing", "tech_support", "sales", "cancel", "other")
    return {
        # The seeds' fraud example: false negatives turn into false positives at about
        # constant accuracy (0.25*0.02 = 0.005 errors before; 0.003 + 0.002 after).
        "fraud-gbm": ModelProfile(
            name="fraud-gbm",
            classes=("legit", "fraud"),
            priors=np.array([0.98, 0.02]),
            confusion=np.array([[0.995, 0.005], [0.25, 0.75]]),
            shifted=np.array([[0.992, 0.008], [0.10, 0.90]]),
            versions=(("v3", 0.9), ("v4-canary", 0.1)),
        ),
        "digits-rf": ModelProfile(
            name="digits-rf",
            classes=digits,
            priors=np.full(10, 0.1),
            confusion=_rows(10, 0.96, digit_confusions),
            # A demo-sized shift: 8s read as 1s go from 2% to 20%, 3s as 8s from ~0.4% to 10%.
            shifted=_rows(10, 0.96, {**digit_confusions, (8, 1): 0.20, (3, 8): 0.10}),
        ),
        "intent-router": ModelProfile(
            name="intent-router",
            classes=intents,
            priors=np.array([0.45, 0.25, 0.15, 0.10, 0.05]),
            confusion=_rows(5, 0.9, {(3, 0): 0.05, (4, 1): 0.08}),
            shifted=_rows(5, 0.9, {(3, 0): 0.05, (4, 1): 0.08, (2, 0): 0.12}),
        ),
    }


@dataclass
class SimulationSettings:
    models: Sequence[str]
    rate_per_second: float = 2.0
    label_coverage: float = 0.9
    mean_label_delay: timedelta = timedelta(minutes=2)
    correction_rate: float = 0.01
    shift_at: datetime | None = None
    shift_models: Sequence[str] = ()
    segments: tuple[tuple[str, float], ...] = (("eu", 0.6), ("us", 0.4))
    seed: int = 0


@dataclass(order=True)
class _PendingLabel:
    labeled_at: datetime
    prediction_id: int = field(compare=False)
    true_class: str = field(compare=False)


class Simulator:
    """Generates traffic for spans of time and writes it; labels wait until they are due."""

    def __init__(self, engine: Engine, settings: SimulationSettings, heartbeat: Path | None = None):
        profiles = default_profiles()
        unknown = [m for m in settings.models if m not in profiles]
        if unknown:
            raise ValueError(f"unknown model profile(s) {unknown}; known: {sorted(profiles)}")
        self.engine = engine
        self.settings = settings
        self.profiles = [profiles[m] for m in settings.models]
        self.rng = np.random.default_rng(settings.seed)
        self.pending: list[_PendingLabel] = []
        self.written_predictions = 0
        self.written_labels = 0
        # Touched after every committed write: the container's health check reads its age.
        self.heartbeat = heartbeat

    def _choice(self, options: tuple[tuple[str, float], ...], n: int) -> NDArray[Any]:
        names = np.array([o[0] for o in options])
        weights = np.array([o[1] for o in options])
        return names[self.rng.choice(len(options), size=n, p=weights / weights.sum())]

    def _generate(self, profile: ModelProfile, start: datetime, end: datetime) -> list[dict[str, Any]]:
        seconds = (end - start).total_seconds()
        n = int(self.rng.poisson(self.settings.rate_per_second * seconds))
        if n == 0:
            return []
        offsets = np.sort(self.rng.uniform(0, seconds, size=n))
        k = len(profile.classes)
        truth = self.rng.choice(k, size=n, p=profile.priors)
        predicted = np.empty(n, dtype=np.int64)
        shift_at = self.settings.shift_at
        shifting = profile.name in self.settings.shift_models and shift_at is not None
        for i in range(n):
            at = start + timedelta(seconds=float(offsets[i]))
            table = (
                profile.shifted if shifting and shift_at is not None and at >= shift_at else profile.confusion
            )
            predicted[i] = self.rng.choice(k, p=table[truth[i]])
        correct = predicted == truth
        score = np.where(correct, self.rng.beta(9, 1.5, size=n), self.rng.beta(3, 2.5, size=n))
        score = np.clip(score, 1.0 / k, 1.0)
        versions = self._choice(profile.versions, n)
        segments = self._choice(self.settings.segments, n)
        return [
            {
                "model_name": profile.name,
                "model_version": str(versions[i]),
                "predicted_at": start + timedelta(seconds=float(offsets[i])),
                "predicted_class": profile.classes[predicted[i]],
                "score": float(score[i]),
                "segment": str(segments[i]),
                "request_id": f"{profile.name}-{self.rng.integers(1 << 62):x}",
                "_truth": profile.classes[truth[i]],
            }
            for i in range(n)
        ]

    def _schedule_labels(self, rows: list[dict[str, Any]], ids: list[int], classes: tuple[str, ...]) -> None:
        s = self.settings
        mean_delay = max(s.mean_label_delay.total_seconds(), 1e-3)
        for row, prediction_id in zip(rows, ids, strict=True):
            if self.rng.random() >= s.label_coverage:
                continue  # some predictions never get a label
            at = row["predicted_at"] + timedelta(seconds=float(self.rng.exponential(mean_delay)))
            truth = row["_truth"]
            if self.rng.random() < s.correction_rate and len(classes) > 1:
                wrong = str(self.rng.choice([c for c in classes if c != truth]))
                heapq.heappush(self.pending, _PendingLabel(at, prediction_id, wrong))
                at += timedelta(seconds=float(self.rng.exponential(mean_delay)))
            heapq.heappush(self.pending, _PendingLabel(at, prediction_id, truth))

    def advance(self, start: datetime, end: datetime) -> None:
        """Write the predictions of ``[start, end)`` and every label due by ``end``."""
        with self.engine.begin() as connection:
            for profile in self.profiles:
                rows = self._generate(profile, start, end)
                ids = insert_predictions(
                    connection, [{k: v for k, v in r.items() if k != "_truth"} for r in rows]
                )
                self.written_predictions += len(ids)
                self._schedule_labels(rows, ids, profile.classes)
            due = []
            while self.pending and self.pending[0].labeled_at <= end:
                label = heapq.heappop(self.pending)
                due.append(
                    {
                        "prediction_id": label.prediction_id,
                        "true_class": label.true_class,
                        "labeled_at": label.labeled_at,
                    }
                )
            insert_labels(connection, due)
            self.written_labels += len(due)
        if self.heartbeat is not None:
            self.heartbeat.touch()

    def backfill(self, start: datetime, end: datetime, step: timedelta = timedelta(minutes=10)) -> None:
        """Write history from ``start`` to ``end`` in steps, as if it had been live."""
        cursor = start
        while cursor < end:
            nxt = min(end, cursor + step)
            self.advance(cursor, nxt)
            cursor = nxt

    def run(
        self,
        clock: Callable[[], datetime],
        tick: timedelta,
        until: datetime | None,
        stop: Callable[[], bool] = lambda: False,
    ) -> None:
        """Write live traffic every ``tick`` until ``until`` (or forever) or ``stop()``."""
        last = clock()
        while not stop() and (until is None or last < until):
            time.sleep(tick.total_seconds())
            now = clock()
            self.advance(last, now)
            last = now
            log.debug(
                "simulated traffic",
                extra={"fields": {"predictions": self.written_predictions, "labels": self.written_labels}},
            )
