"""The error-analysis report as one self-contained HTML file: no external assets, matrices as
coloured tables, the reliability diagram as inline SVG. Every value comes from the JSON report
(so the two cannot disagree) and every string is escaped."""

from __future__ import annotations

import math
from html import escape
from typing import Any

from .domain import ALL
from .report import (
    COUNTS,
    OVERALL,
    _f,
    _pct,
    generated_at,
    headline,
    matrix_share,
    repeated_span,
    slice_title,
)
from .windows import CURRENT, REFERENCE

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d1d1f;max-width:1200px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 6px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:18px 0 6px}.muted{color:#666}.headline{font-size:16px;font-weight:600;margin:8px 0}
.headline.shift{color:#b00020}table{border-collapse:collapse;margin:6px 0 12px}
td,th{border:1px solid #ddd;padding:3px 7px;text-align:right;font-variant-numeric:tabular-nums}
th{background:#f5f5f7}td.name,th.name{text-align:left}.matrices{display:flex;gap:32px;flex-wrap:wrap}
.state-shift{color:#b00020;font-weight:600}.state-stable{color:#1b7f3b}.state-insufficient_data{color:#8a6d00}.state-accumulating{color:#b26a00}
"""


def _cell_colour(share: float, diagonal: bool) -> str:
    """Green for the diagonal, red off it; stronger the larger the row share."""
    if not math.isfinite(share) or share <= 0:
        return "#ffffff"
    alpha = 0.12 + 0.78 * min(1.0, share if diagonal else share * 3)
    return f"rgba(27,127,59,{alpha:.2f})" if diagonal else f"rgba(176,0,32,{alpha:.2f})"


def _matrix_table(name: str, classes: list[str], matrix: list[list[int]] | None, title: str = "") -> str:
    if matrix is None:
        return ""
    heading = f"<h3>{escape(title or name + ' window')} (rows: true class, columns: predicted)</h3>"
    if not classes:  # every row of the window was rejected, or it had none
        return f'<div>{heading}<p class="muted" data-window="{name}">no labeled predictions</p></div>'
    shares = matrix_share(matrix)
    assert shares is not None
    head = "".join(f"<th>{escape(c)}</th>" for c in classes)
    rows = []
    for i, true_class in enumerate(classes):
        cells = "".join(
            f'<td data-window="{name}" data-true="{escape(true_class)}" data-predicted="{escape(predicted)}" '
            f'style="background:{_cell_colour(float(shares[i, j]), i == j)}" '
            f'title="{_pct(None if math.isnan(shares[i, j]) else float(shares[i, j]))} of {escape(true_class)}">'
            f"{matrix[i][j]}</td>"
            for j, predicted in enumerate(classes)
        )
        rows.append(f'<tr><th class="name">{escape(true_class)}</th>{cells}</tr>')
    return (
        f"<div>{heading}"
        f'<table class="matrix" data-window="{name}"><tr><th class="name">true \\ predicted</th>{head}</tr>'
        + "".join(rows)
        + "</table></div>"
    )


def reliability_svg(reliability: list[dict[str, Any]], size: int = 260) -> str:
    """Accuracy against mean confidence per bin, bars over the diagonal of perfect calibration."""
    pad = 30
    inner = size - 2 * pad
    bars = []
    for b in reliability:
        if not b["count"] or b["accuracy"] is None:
            continue
        x = pad + b["lower"] * inner
        width = (b["upper"] - b["lower"]) * inner
        height = b["accuracy"] * inner
        bars.append(
            f'<rect x="{x:.1f}" y="{pad + inner - height:.1f}" width="{width - 1:.1f}" height="{height:.1f}" '
            f'fill="#3b6fb6" fill-opacity="0.75"><title>{b["lower"]:.2f}-{b["upper"]:.2f}: accuracy '
            f"{_f(b['accuracy'])}, confidence {_f(b['mean_confidence'])}, {b['count']} predictions</title></rect>"
        )
    ticks = "".join(
        f'<text x="{pad + t * inner:.0f}" y="{size - 10}" font-size="10" text-anchor="middle">{t:g}</text>'
        f'<text x="{pad - 6}" y="{pad + (1 - t) * inner + 3:.0f}" font-size="10" text-anchor="end">{t:g}</text>'
        for t in (0, 0.5, 1)
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" class="reliability" '
        f'role="img" aria-label="reliability diagram">'
        f'<rect x="{pad}" y="{pad}" width="{inner}" height="{inner}" fill="none" stroke="#999"/>'
        + "".join(bars)
        + f'<line x1="{pad}" y1="{pad + inner}" x2="{pad + inner}" y2="{pad}" stroke="#b00020" stroke-dasharray="4 3"/>'
        + ticks
        + f'<text x="{size / 2}" y="14" font-size="11" text-anchor="middle">accuracy by confidence bin</text>'
        "</svg>"
    )


def _slice_html(report: dict[str, Any], entry: dict[str, Any]) -> str:
    h = headline(entry)
    shifted = entry["shift"] is not None and any(
        t["test"] == "error_pattern" and t["state"] == "shift" for t in entry["shift"]["tests"]
    )
    parts = [
        f'<section class="slice" data-version="{escape(entry["version"])}" '
        f'data-segment="{escape(entry["segment"])}"><h2>{escape(slice_title(entry))}</h2>',
        f'<p class="headline{" shift" if shifted else ""}">{escape(h)}</p>',
    ]
    o = entry["overall"]
    rows = []
    for key in (*COUNTS, *OVERALL):
        now = o["current"][key]
        ref = o["reference"][key] if o["reference"] else None
        diff = o["difference"].get(key) if o["difference"] else None
        fmt = (lambda v: "n/a" if v is None else str(v)) if key in COUNTS else _f
        rows.append(
            f'<tr data-metric="{key}"><td class="name">{key}</td><td>{fmt(now)}</td><td>{fmt(ref)}</td>'
            f"<td>{_f(diff, '+.3f') if key in OVERALL else ''}</td></tr>"
        )
    parts.append(
        '<h3>Overall</h3><table><tr><th class="name"></th><th>current</th><th>reference</th><th>change</th></tr>'
        + "".join(rows)
        + "</table>"
    )
    class_rows = "".join(
        f'<tr data-class="{escape(c["class"])}"><td class="name">{escape(c["class"])}</td><td>{_f(c["precision"])}</td>'
        f"<td>{_f(c['recall'])}</td><td>{_f(c['f1'])}</td><td>{c['support']}</td>"
        f'<td class="name">{escape(c["diagnosis"])}</td><td>{_f(c["reference_f1"])}</td></tr>'
        for c in entry["classes"]
    )
    parts.append(
        '<h3>Per class, worst F1 first</h3><table><tr><th class="name">class</th><th>precision</th>'
        '<th>recall</th><th>F1</th><th>support</th><th class="name">diagnosis</th><th>reference F1</th></tr>'
        + class_rows
        + "</table>"
    )
    m = entry["matrices"]
    parts.append(
        '<div class="matrices">'
        + _matrix_table(CURRENT, m["classes"], m["current"])
        + _matrix_table(REFERENCE, m["classes"], m["reference"])
        + "</div>"
    )
    if entry["confused_pairs"]:
        pairs = "".join(
            f'<tr><td class="name">{escape(p["true_class"])}</td><td class="name">{escape(p["predicted_class"])}</td>'
            f"<td>{p['count']}</td><td>{_pct(p['share'])}</td><td>{_pct(p['reference_share'])}</td></tr>"
            for p in entry["confused_pairs"]
        )
        parts.append(
            '<h3>Most confused pairs</h3><table><tr><th class="name">true</th><th class="name">predicted as</th>'
            "<th>count</th><th>share of true class</th><th>in reference</th></tr>" + pairs + "</table>"
        )
    shift = entry["shift"]
    if shift is not None:
        tests = "".join(
            f'<tr><td class="name">{t["test"]}</td><td class="name state-{t["state"]}">{t["state"]}</td>'
            f"<td>{_f(t['statistic'], '.1f')}</td><td>{t['dof']}</td><td>{_f(t['p_value'], '.3g')}"
            f"{' (MC)' if t['monte_carlo'] else ''}</td><td>{_f(t['effect_size'])}</td></tr>"
            for t in shift["tests"]
        )
        parts.append(
            '<h3>Shift tests</h3><table><tr><th class="name">test</th><th class="name">decision</th>'
            "<th>χ²</th><th>dof</th><th>p</th><th>effect size</th></tr>" + tests + "</table>"
        )
        if shift["cells"]:
            parts.append(
                "<ul>" + "".join(f"<li>{escape(c['sentence'])}</li>" for c in shift["cells"][:5]) + "</ul>"
            )
    for name in (CURRENT, REFERENCE):
        conf = entry["confidence"][name]
        if conf is None:
            continue
        parts.append(
            f"<h3>Confidence, {name} window</h3><p>{conf['scored']} scored predictions; mean confidence "
            f"{_f(conf['mean_confidence_correct'])} when right, {_f(conf['mean_confidence_incorrect'])} when wrong; "
            f"{conf['high_confidence_errors']} errors ({_pct(conf['high_confidence_error_share'])}) at confidence ≥ "
            f"{conf['high_confidence_threshold']}; expected calibration error "
            f"<b>{_f(conf['expected_calibration_error'], '.4f')}</b>.</p>"
        )
        if name == CURRENT:
            bins = "".join(
                f'<tr><td class="name">{b["lower"]:.2f}–{b["upper"]:.2f}</td><td>{b["count"]}</td>'
                f"<td>{_f(b['accuracy'])}</td><td>{_f(b['mean_confidence'])}</td><td>{_f(b['gap'], '+.3f')}</td></tr>"
                for b in conf["reliability"]
            )
            parts.append(
                '<div class="matrices"><table><tr><th class="name">confidence</th><th>count</th><th>accuracy</th>'
                "<th>mean confidence</th><th>gap</th></tr>"
                + bins
                + "</table>"
                + reliability_svg(conf["reliability"])
                + "</div>"
            )
    cost = entry["cost"]
    bound = ""
    if cost["increase_lower_bound"] is not None:
        bound = (
            f"; at least {_pct(cost['increase_lower_bound'])} with {1 - report['alpha']:.2%} confidence, "
            f"against the limit +{cost['max_increase']:.0%}"
        )
    parts.append(
        f"<h3>Cost of errors</h3><p>{_f(cost['current'], '.4g')} per labeled prediction "
        f"(reference {_f(cost['reference'], '.4g')}, change {_pct(cost['increase'])}{bound}).</p>"
    )
    for at in entry["thresholds"]:
        name = f"threshold {at['threshold']:g}"
        title = f"Had {at['classes'][1]} been predicted at probability ≥ {at['threshold']:g}"
        parts.append(_matrix_table(name, at["classes"], at["matrix"], title))
    parts.append("</section>")
    return "".join(parts)


def _sequential_html(section: dict[str, Any] | None) -> str:
    """The sequential layer: per model and segment, the cells nearest their threshold."""
    if section is None:
        return ""
    parts = ['<section class="sequential"><h2>Small persistent changes (sequential layer)</h2>']
    if not section["caught_up"]:
        parts.append(
            f"<p>Still replaying label arrivals (read up to {escape(str(section['period_end']))}).</p>"
        )
    for piece in section["slices"]:
        where = slice_title({"model": piece["model"], "version": ALL, "segment": piece["segment"]})
        rows = "".join(
            f'<tr><td class="name">{escape(c["description"])}</td><td>{_pct(c["reference_rate"])}</td>'
            f"<td>{_pct(c['current_rate'])}</td><td>{_pct(c['relative_change'])} "
            f"[{_pct(c['relative_change_low'])}, {_pct(c['relative_change_high'])}]</td>"
            f"<td>{_f(c['evidence'], '.1f')} / {_f(piece['threshold'], '.1f')}</td>"
            f'<td class="name state-{escape(c["state"])}">{escape(c["state"])}</td></tr>'
            for c in piece["cells"]
        )
        parts.append(
            f'<h3>{escape(where)}: <span class="state-{escape(piece["state"])}">{escape(piece["state"])}'
            '</span></h3><table><tr><th class="name">error rate</th><th>reference</th><th>current</th>'
            '<th>change [95%]</th><th>evidence / threshold</th><th class="name">state</th></tr>'
            + rows
            + "</table>"
        )
    parts.append("</section>")
    return "".join(parts)


def to_html(report: dict[str, Any]) -> str:
    w = report["windows"]
    spans = f"current {escape(w[CURRENT]['start'])} – {escape(w[CURRENT]['end'])}"
    if REFERENCE in w:
        spans += f"; reference {escape(w[REFERENCE]['start'])} – {escape(w[REFERENCE]['end'])}" + escape(
            repeated_span(w[REFERENCE])
        )
    elif report["reference_version"]:
        spans += f"; reference: version {escape(report['reference_version'])} over the same window"
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Error analysis: {escape(report['monitor'])}</title><style>{STYLE}</style></head><body>"
        f"<h1>Error analysis: {escape(report['monitor'])}</h1>"
        f'<p class="muted">team {escape(report["team"])}; {spans}; generated for {generated_at(report)}</p>'
        + "".join(_slice_html(report, entry) for entry in report["slices"])
        + _sequential_html(report.get("sequential"))
        + "</body></html>\n"
    )
