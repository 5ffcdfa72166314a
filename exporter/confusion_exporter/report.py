"""Error-analysis report of one monitor: what an analyst would write by hand in a notebook.

Built from a :class:`MonitorResult` (the exporter's own counts, pushed into SQL; no rows in
Python), as one plain dict (the JSON format) that the text and HTML renderers read. Per slice:
overall figures against the reference, per-class metrics sorted by F1 with a diagnosis, the
most-confused pairs, the shift tests in words, confidence and calibration, the error cost and
the matrices at other decision thresholds.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from .config import Config, ConfigError, MonitorConfig, Reference, format_duration
from .domain import ALL
from .matrices import NULL, WindowCounts, align
from .printable import printable
from .references import reference_of
from .snapshot import MonitorResult, SequentialResult, SliceResult, WindowResult
from .stats import sequential
from .stats.calibration import ConfidenceSummary
from .stats.classification import classification_metrics
from .stats.shift import SHIFT, ShiftReport
from .windows import CURRENT, REFERENCE, bucket_end

ONE_TICK = timedelta(microseconds=1)


def plan_report(
    config: Config,
    name: str,
    start: datetime | None,
    end: datetime | None,
    reference: Reference | None,
    now: datetime,
) -> tuple[MonitorConfig, datetime]:
    """The monitor to evaluate for a report over ``[start, end)`` and the instant to evaluate at.

    Without ``start``/``end`` the report covers the monitor's current window as of ``now``;
    with them, the span widened to whole buckets. The evaluation instant is just before the
    span's end, so the current window ends exactly there.
    """
    monitor = config.monitor(name)
    bucket = config.exporter.bucket
    update: dict[str, object] = {}
    if reference is not None:
        update["reference"] = reference
    if start is None and end is None:
        return monitor.model_copy(update=update), now
    end_at = bucket_end((end or now) - ONE_TICK, bucket)
    if start is None:
        start_at = end_at - monitor.window
    else:
        size = int(bucket.total_seconds())
        start_at = datetime.fromtimestamp(int(start.timestamp()) // size * size, tz=start.tzinfo)
    if start_at >= end_at:
        raise ConfigError(["--from: must be before --to"])
    update.update(window=end_at - start_at, label_delay=timedelta(0))
    return monitor.model_copy(update=update), end_at - ONE_TICK


CONFUSED_PAIRS = 10
OVERALL = ("accuracy", "macro_f1", "balanced_accuracy")
COUNTS = ("labeled", "unlabeled", "rejected")


def _num(value: float) -> float | None:
    """JSON has no NaN: an undefined figure is null."""
    value = float(value)
    return value if math.isfinite(value) else None


def _share(count: int, total: int) -> float | None:
    return count / total if total else None


def diagnosis(precision: float, recall: float) -> str:
    """Over-predicted: the model says this class too often (precision below recall); under-
    predicted: it misses it (recall below precision)."""
    if not (math.isfinite(precision) and math.isfinite(recall)):
        return "no evidence"
    if math.isclose(precision, recall, abs_tol=1e-9):
        return "balanced"
    return "over-predicted" if precision < recall else "under-predicted"


def _overall(window: WindowCounts | None) -> dict[str, Any] | None:
    if window is None:
        return None
    metrics = classification_metrics(window.matrix)
    return {
        "labeled": window.labeled_total,
        "unlabeled": window.unlabeled_total,
        # A slice whose rows were all rejected has no classes: this says why it is empty.
        "rejected": sum(window.rejected.values()),
        **{name: _num(getattr(metrics, name)) for name in OVERALL},
    }


def _classes(current: WindowCounts, reference: WindowCounts | None) -> list[dict[str, Any]]:
    metrics = classification_metrics(current.matrix)
    ref = classification_metrics(reference.matrix) if reference is not None else None
    rows = []
    for i, name in enumerate(current.classes):
        precision, recall = float(metrics.precision[i]), float(metrics.recall[i])
        rows.append(
            {
                "class": name,
                "precision": _num(precision),
                "recall": _num(recall),
                "f1": _num(metrics.f1[i]),
                "support": int(metrics.support[i]),
                "predicted": int(metrics.predicted[i]),
                "diagnosis": diagnosis(precision, recall),
                "reference_f1": _num(ref.f1[i]) if ref is not None else None,
                "reference_recall": _num(ref.recall[i]) if ref is not None else None,
            }
        )
    # Worst first; classes without an F1 (never seen in the window) last.
    return sorted(rows, key=lambda r: (r["f1"] is None, r["f1"] if r["f1"] is not None else 0.0, r["class"]))


def _confused_pairs(current: WindowCounts, reference: WindowCounts | None) -> list[dict[str, Any]]:
    m = current.matrix
    rows_total = m.sum(axis=1)
    off = [
        (int(m[i, j]), i, j) for i in range(m.shape[0]) for j in range(m.shape[1]) if i != j and m[i, j] > 0
    ]
    out = []
    for count, i, j in sorted(off, key=lambda t: (-t[0], t[1], t[2]))[:CONFUSED_PAIRS]:
        entry: dict[str, Any] = {
            "true_class": current.classes[i],
            "predicted_class": current.classes[j],
            "count": count,
            "share": _share(count, int(rows_total[i])),
            "reference_count": None,
            "reference_share": None,
        }
        if reference is not None:
            ref_count = int(reference.matrix[i, j])
            entry["reference_count"] = ref_count
            entry["reference_share"] = _share(ref_count, int(reference.matrix[i].sum()))
        out.append(entry)
    return out


def cell_sentence(true_class: str, predicted_class: str, before: float, after: float) -> str:
    """ "true 8 predicted as 1: 2.1% -> 6.4% of 8s" """

    def pct(v: float) -> str:
        return f"{v:.1%}" if math.isfinite(v) else "n/a"

    return f"true {true_class} predicted as {predicted_class}: {pct(before)} → {pct(after)} of {true_class}s"


def _shift(report: ShiftReport | None, alpha: float) -> dict[str, Any] | None:
    if report is None:
        return None
    return {
        "tests": [
            {
                "test": name,
                "state": test.state,
                "statistic": _num(test.statistic),
                "dof": test.dof,
                "p_value": _num(test.p_value),
                "log10_p_value": _num(test.log10_p_value),
                "effect_size": _num(test.effect_size),
                "monte_carlo": test.monte_carlo,
                "reference_samples": test.n_reference,
                "current_samples": test.n_current,
            }
            for name, test in report.tests.items()
        ],
        "rows_moved": [
            {"true_class": row.true_class, "p_value": _num(row.p_value), "effect_size": _num(row.effect_size)}
            for row in sorted(report.rows, key=lambda r: r.p_value)
            if row.dof > 0 and row.p_value < alpha
        ],
        "cells": [
            {
                "true_class": cell.true_class,
                "predicted_class": cell.predicted_class,
                "residual": _num(cell.residual),
                "reference_share": _num(cell.reference_share),
                "current_share": _num(cell.current_share),
                "sentence": cell_sentence(
                    cell.true_class, cell.predicted_class, cell.reference_share, cell.current_share
                ),
            }
            for cell in report.cells
        ],
    }


def _confidence(summary: ConfidenceSummary | None) -> dict[str, Any] | None:
    if summary is None:
        return None
    return {
        "scored": summary.scored,
        "invalid_scores": summary.invalid,
        "mean_confidence_correct": _num(summary.mean_confidence_correct),
        "mean_confidence_incorrect": _num(summary.mean_confidence_incorrect),
        "high_confidence_threshold": summary.high_threshold,
        "high_confidence_errors": summary.high_confidence_errors,
        "high_confidence_error_share": _num(summary.high_confidence_error_share),
        "expected_calibration_error": _num(summary.calibration_error),
        "reliability": [
            {
                "lower": b.lower,
                "upper": b.upper,
                "count": b.n,
                "accuracy": _num(b.accuracy),
                "mean_confidence": _num(b.mean_confidence),
                "gap": _num(b.accuracy - b.mean_confidence) if b.n else None,
            }
            for b in summary.reliability
        ],
    }


def _matrix(counts: WindowCounts | None) -> list[list[int]] | None:
    return None if counts is None else [[int(v) for v in row] for row in counts.matrix]


def _slice(
    monitor: MonitorResult,
    result: SliceResult,
    reference_result: WindowResult | None,
    alpha: float,
) -> dict[str, Any]:
    current_result = result.windows[CURRENT]
    current = current_result.counts
    reference = reference_result.counts if reference_result is not None else None
    if reference is not None:
        reference, current = align(reference, current)
    overall_now, overall_ref = _overall(current), _overall(reference)
    difference = None
    if overall_ref is not None and overall_now is not None:
        difference = {
            k: (overall_now[k] - overall_ref[k])
            if overall_now[k] is not None and overall_ref[k] is not None
            else None
            for k in OVERALL
        }
    return {
        "model": result.key.model,
        "version": result.key.version,
        "segment": result.key.segment,
        "overall": {"current": overall_now, "reference": overall_ref, "difference": difference},
        "classes": _classes(current, reference),
        "matrices": {
            "classes": list(current.classes),
            "current": _matrix(current),
            "reference": _matrix(reference),
        },
        "confused_pairs": _confused_pairs(current, reference),
        "shift": _shift(result.shift, alpha),
        "confidence": {
            "current": _confidence(current_result.confidence),
            "reference": _confidence(reference_result.confidence if reference_result else None),
        },
        "cost": {
            "current": _num(current_result.cost),
            "reference": _num(reference_result.cost) if reference_result else None,
            "difference": _num(result.cost_difference),
            "increase": _num(result.cost_increase),
            # one-sided 1 - alpha; above max_cost_increase only when the rise is beyond noise
            "increase_lower_bound": _num(result.cost_increase_lower_bound),
            "max_increase": float(monitor.thresholds["max_cost_increase"]),
        },
        "thresholds": [
            {
                "threshold": at.threshold,
                "classes": list(at.classes),
                "matrix": [[int(v) for v in r] for r in at.matrix],
            }
            for at in current_result.thresholds
        ],
    }


SEQUENTIAL_CELLS = 10


def sequential_section(result: SequentialResult | None) -> dict[str, Any] | None:
    """The sequential layer per model and segment: its state and the cells nearest their
    threshold (every latched one first), each in words."""
    if result is None:
        return None
    slices = []
    for piece in result.slices:
        ranked = sorted(piece.cells, key=lambda c: (c.state != "shift", -(c.evidence / c.threshold)))
        slices.append(
            {
                "model": piece.model,
                "segment": piece.segment,
                "state": piece.state,
                "threshold": _num(piece.threshold),
                "cells": [
                    {
                        "description": c.description,
                        "kind": c.kind,
                        "true_class": c.true_class,
                        "predicted_class": c.predicted_class,
                        "state": c.state,
                        "reference_rate": _num(c.reference_rate),
                        "current_rate": _num(c.current_rate),
                        "relative_change": _num(c.relative_change),
                        "relative_change_low": _num(c.relative_change_low),
                        "relative_change_high": _num(c.relative_change_high),
                        "evidence": _num(c.evidence),
                        "current_trials": c.current_trials,
                        "reference_trials": c.reference_trials,
                        "sentence": sequential.sentence(c),
                    }
                    for c in ranked[:SEQUENTIAL_CELLS]
                ],
            }
        )
    return {
        "caught_up": result.caught_up,
        "origin": result.origin.isoformat() if result.origin else None,
        "period_end": result.period_end.isoformat() if result.period_end else None,
        "slices": slices,
    }


def sequential_lines(section: dict[str, Any] | None) -> list[str]:
    """The text form of :func:`sequential_section`."""
    if section is None:
        return []
    out = ["", "small persistent changes (sequential layer, versions pooled)"]
    if not section["caught_up"]:
        out.append(f"  still replaying label arrivals (read up to {section['period_end']})")
        return out
    if not section["slices"]:
        out.append("  no labeled predictions yet")
    for piece in section["slices"]:
        where = slice_title({"model": piece["model"], "version": ALL, "segment": piece["segment"]})
        out.append(f"  {where}: {piece['state']} (threshold {_f(piece['threshold'], '.1f')} nats)")
        for c in piece["cells"][:5]:
            low, high = c["relative_change_low"], c["relative_change_high"]
            interval = "" if low is None or high is None else f" [{low:+.0%}, {high:+.0%}]"
            out.append(f"    {c['state']:17} {c['sentence']}{interval}  evidence {_f(c['evidence'], '.1f')}")
    return out


def build_report(monitor: MonitorResult) -> dict[str, Any]:
    """The report of every slice of ``monitor`` (a version reference's own slices are the
    reference, not reported on)."""
    reference_version = monitor.reference_version
    alpha = float(monitor.thresholds["alpha"])
    windows_of = {s.key: s.windows for s in monitor.slices}
    slices = []
    for result in monitor.slices:
        if reference_version is not None and result.key.version == reference_version:
            continue
        reference_result = reference_of(reference_version, result.key, result.windows, windows_of)
        slices.append(_slice(monitor, result, reference_result, alpha))
    windows = {
        w.name: {
            "start": w.start.isoformat(),
            "end": w.end.isoformat(),
            # A seasonal reference: this span and repeats - 1 more, every_seconds apart, before it.
            **({"repeats": w.repeats, "every_seconds": w.every.total_seconds()} if w.repeats > 1 else {}),
        }
        for w in monitor.windows
    }
    return {
        "monitor": monitor.name,
        "model": monitor.model,
        "team": monitor.team,
        "reference_kind": monitor.reference,
        "reference_version": reference_version,
        "evaluated_at": monitor.evaluated_at.isoformat(),
        "windows": windows,
        "alpha": alpha,
        "min_effect": float(monitor.thresholds["min_effect"]),
        "slices": slices,
        "sequential": sequential_section(monitor.sequential),
    }


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, allow_nan=False) + "\n"


def slice_title(entry: dict[str, Any]) -> str:
    parts = [f"model {entry['model']}"]
    if entry["version"] != ALL:
        parts.append(f"version {entry['version']}")
    if entry["segment"] != ALL:
        parts.append(f"segment {'(none)' if entry['segment'] == NULL else entry['segment']}")
    return ", ".join(parts)


def _f(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def headline(entry: dict[str, Any]) -> str:
    """One sentence an on-call person reads first."""
    shift = entry["shift"]
    if shift is None:
        return "No reference to compare with."
    states = {t["test"]: t["state"] for t in shift["tests"]}
    if states.get("error_pattern") == SHIFT:
        cells = "; ".join(c["sentence"] for c in shift["cells"][:3])
        return f"The error pattern shifted: {cells}."
    if states.get("label_prior") == SHIFT:
        return "The class mix of the labels shifted; the error pattern per class did not."
    if states.get("error_pattern") == "insufficient_data":
        return "Not enough labeled predictions yet to decide."
    return "No shift of the error pattern."


def repeated_span(window: dict[str, Any]) -> str:
    """How a seasonal reference repeats its span, for a reader: ", and the same span on each of
    the 6 days before"."""
    repeats = window.get("repeats", 1)
    if repeats <= 1:
        return ""
    every = timedelta(seconds=window["every_seconds"])
    return f", and the same span {repeats - 1} more times, every {format_duration(every)} before it"


def to_text(report: dict[str, Any]) -> str:
    out: list[str] = []
    w = report["windows"]
    out.append(f"Error analysis: monitor {report['monitor']} (team {report['team']})")
    out.append(f"current   {w[CURRENT]['start']} .. {w[CURRENT]['end']}")
    if REFERENCE in w:
        out.append(
            f"reference {w[REFERENCE]['start']} .. {w[REFERENCE]['end']}{repeated_span(w[REFERENCE])} "
            f"({report['reference_kind']})"
        )
    elif report["reference_version"]:
        out.append(f"reference version {report['reference_version']} over the same window")
    for entry in report["slices"]:
        out += ["", f"== {slice_title(entry)} ==", headline(entry), ""]
        o = entry["overall"]
        out.append(f"{'':20}{'current':>10}{'reference':>11}{'change':>9}")
        for key in COUNTS:
            ref = o["reference"][key] if o["reference"] else None
            out.append(f"{key:20}{o['current'][key]:>10}{'n/a' if ref is None else ref:>11}")
        for key in OVERALL:
            ref = o["reference"][key] if o["reference"] else None
            diff = o["difference"][key] if o["difference"] else None
            out.append(f"{key:20}{_f(o['current'][key]):>10}{_f(ref):>11}{_f(diff, '+.3f'):>9}")
        out += ["", f"{'class':14}{'precision':>10}{'recall':>8}{'f1':>7}{'support':>9}  diagnosis"]
        for c in entry["classes"]:
            out.append(
                f"{printable(c['class'])[:14]:14}{_f(c['precision']):>10}{_f(c['recall']):>8}{_f(c['f1']):>7}"
                f"{c['support']:>9}  {c['diagnosis']}"
            )
        if entry["confused_pairs"]:
            out += [
                "",
                "most confused (true -> predicted: count, share of the true class now / in reference)",
            ]
            for p in entry["confused_pairs"]:
                out.append(
                    f"  {p['true_class']} -> {p['predicted_class']}: {p['count']}, {_pct(p['share'])}"
                    f" / {_pct(p['reference_share'])}"
                )
        shift = entry["shift"]
        if shift is not None:
            out += ["", "shift tests"]
            for t in shift["tests"]:
                mc = " (Monte Carlo)" if t["monte_carlo"] else ""
                out.append(
                    f"  {t['test']:17} {t['state']:18} chi2 {_f(t['statistic'], '.1f')} dof {t['dof']}"
                    f"  p {_f(t['p_value'], '.3g')}{mc}  effect {_f(t['effect_size'])}"
                )
            if shift["rows_moved"]:
                moved = ", ".join(r["true_class"] for r in shift["rows_moved"])
                out.append(f"  true classes whose predictions moved (p < {report['alpha']}): {moved}")
            for cell in shift["cells"][:5]:
                out.append(f"  {cell['sentence']} (residual {_f(cell['residual'], '+.1f')})")
        for name in (CURRENT, REFERENCE):
            conf = entry["confidence"][name]
            if conf is None:
                continue
            out += ["", f"confidence ({name} window, {conf['scored']} scored predictions)"]
            out.append(
                f"  mean confidence: correct {_f(conf['mean_confidence_correct'])}, "
                f"incorrect {_f(conf['mean_confidence_incorrect'])}"
            )
            out.append(
                f"  errors made with confidence >= {conf['high_confidence_threshold']}: "
                f"{conf['high_confidence_errors']} ({_pct(conf['high_confidence_error_share'])} of errors)"
            )
            out.append(f"  expected calibration error: {_f(conf['expected_calibration_error'], '.4f')}")
            if name == CURRENT:
                out.append(f"  {'bin':13}{'count':>7}{'accuracy':>10}{'confidence':>12}{'gap':>8}")
                for b in conf["reliability"]:
                    out.append(
                        f"  {b['lower']:.2f}-{b['upper']:.2f}    {b['count']:>7}{_f(b['accuracy']):>10}"
                        f"{_f(b['mean_confidence']):>12}{_f(b['gap'], '+.3f'):>8}"
                    )
        cost = entry["cost"]
        out += [
            "",
            f"mean error cost per labeled prediction: {_f(cost['current'], '.4g')} "
            f"(reference {_f(cost['reference'], '.4g')}, change {_pct(cost['increase'])}, "
            f"at least {_pct(cost['increase_lower_bound'])} beyond noise; "
            f"limit {_pct(cost['max_increase'])})",
        ]
        for at in entry["thresholds"]:
            (tn, fp), (fn, tp) = at["matrix"]
            neg, pos = at["classes"]
            out.append(
                f"at threshold {at['threshold']:g} for {pos}: TP {tp}, FP {fp} ({neg} flagged), "
                f"FN {fn} ({pos} missed), TN {tn}"
            )
    out += sequential_lines(report.get("sequential"))
    # Each entry is one line of ours; a newline or escape inside one came from a name in the
    # data or the config, and is written as an escape so it cannot forge a line or drive the
    # terminal.
    return "\n".join(printable(line) for line in out) + "\n"


def matrix_share(matrix: list[list[int]] | None) -> np.ndarray | None:
    """Row shares of a matrix (for colouring), NaN rows where a class has no examples."""
    if matrix is None:
        return None
    # K x K even at K = 0: numpy reads [] as a 1-D array, which has no rows to total.
    k = len(matrix)
    m = np.asarray(matrix, dtype=np.float64).reshape(k, k)
    totals = m.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, m / totals, np.nan)


def generated_at(report: dict[str, Any]) -> str:
    return datetime.fromisoformat(report["evaluated_at"]).strftime("%Y-%m-%d %H:%M UTC")
