"""The batch report as one self-contained HTML page: tables and inline SVG, no script at all.

It renders `report.summarize`'s dict and nothing else, so the page and summary.json always show
the same numbers, computed on every logged record. No external asset: a log shipped from
production is often read where the page cannot fetch anything (docs/DESIGN-NOTES.md says why
this is not an Evidently report).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#1a202c;max-width:96rem}
table{border-collapse:collapse;margin:.5rem 0 1.5rem}
th,td{border-bottom:1px solid #e2e8f0;padding:.3rem .7rem;text-align:left;vertical-align:middle}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.stable{background:#c6f6d5}.moderate{background:#feebc8}.significant{background:#fed7d7}
.verdict{padding:.1rem .5rem;border-radius:.3rem}
.note{color:#9c4221}.muted{color:#718096}tr.muted td{opacity:.6}
.ref{fill:#a0aec0}.cur{fill:#2b6cb0}.floor{stroke:#c53030;stroke-width:2;stroke-dasharray:5 3}
.axis{font-size:10px;fill:#718096}.wide{overflow-x:auto}
table.compact th,table.compact td{padding:.2rem .4rem;font-size:.85rem;white-space:nowrap}
"""

_CHART_HEIGHT = 48


def _number(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _verdict(value: str | None) -> str:
    if value is None:
        return '<span class="muted">no data</span>'
    return f'<span class="verdict {value}">{value}</span>'


def _histogram_svg(bins: Sequence[Mapping[str, Any]]) -> str:
    """Reference (grey) and current (blue) fraction per bin; hover a bar for its numbers."""
    total = sum(b["current"] for b in bins) or 1
    current = [b["current"] / total for b in bins]
    top = max([*current, *(b["reference"] for b in bins)]) or 1.0
    bars = []
    for i, (b, cur) in enumerate(zip(bins, current, strict=True)):
        tip = escape(f"{b['label']}: reference {b['reference']:.1%}, current {cur:.1%}")
        for j, (css, share) in enumerate((("ref", b["reference"]), ("cur", cur))):
            height = _CHART_HEIGHT * share / top
            bars.append(
                f'<rect class="{css}" x="{i * 16 + j * 6}" y="{_CHART_HEIGHT - height:.1f}" '
                f'width="6" height="{height:.1f}"><title>{tip}</title></rect>'
            )
    width = len(bins) * 16
    return (
        f'<svg width="{width}" height="{_CHART_HEIGHT}" role="img" '
        f'aria-label="reference and current fractions per bin">{"".join(bars)}</svg>'
    )


def _accuracy_svg(days: Sequence[Mapping[str, Any]], floor: float) -> str:
    """Realized accuracy per day, the paging floor as a dashed line; the axis starts at the
    nearest tenth below both, so a drop of a few points is visible."""
    values = [d["accuracy"] for d in days if d["accuracy"] is not None]
    bottom = max(0.0, math.floor(min([*values, floor]) * 10) / 10 - 0.1)
    height, step = 2 * _CHART_HEIGHT, 18

    def y(value: float) -> float:
        return height * (1 - (value - bottom) / (1 - bottom))

    bars = []
    for i, day in enumerate(days):
        value = day["accuracy"]
        if value is None:
            continue
        tip = escape(f"{day['day']}: accuracy {value:.4f} on {day['labelled']} labels")
        bars.append(
            f'<rect class="cur" x="{30 + i * step}" y="{y(value):.1f}" width="{step - 4}" '
            f'height="{height - y(value):.1f}"><title>{tip}</title></rect>'
        )
    width = 30 + max(len(days), 1) * step
    axis = (
        f'<text x="0" y="10" class="axis">1.0</text>'
        f'<text x="0" y="{height}" class="axis">{bottom:.1f}</text>'
    )
    line = f'<line class="floor" x1="30" x2="{width}" y1="{y(floor):.1f}" y2="{y(floor):.1f}"/>'
    return (
        f'<svg width="{width}" height="{height}" role="img" '
        f'aria-label="realized accuracy per day">{axis}{"".join(bars)}{line}</svg>'
    )


def _drift_rows(entries: Sequence[Mapping[str, Any]]) -> str:
    return "".join(
        f"<tr><td>{escape(e['name'])}</td><td class='n'>{_number(e['psi'])}</td>"
        f"<td>{_verdict(e['verdict'])}</td><td>{_histogram_svg(e['bins'])}</td></tr>"
        for e in entries
    )


def _drift_by_day_table(days: Sequence[Mapping[str, Any]], min_records: int) -> str:
    """Days down, features across, each cell its PSI coloured by verdict."""
    names = [*days[0]["drift"]["features"], "score"]
    head = "".join(f"<th>{escape(n)}</th>" for n in names)
    rows = []
    for day in days:
        entries = [*day["drift"]["features"].values(), day["drift"]["score"]]
        cells = "".join(
            f"<td class='n {e['verdict'] or ''}'>{_number(e['psi'], 3)}</td>" for e in entries
        )
        few = " class='muted'" if day["records"] < min_records else ""
        rows.append(
            f"<tr{few}><td>{day['day']}</td><td class='n'>{day['records']:,}</td>{cells}</tr>"
        )
    return (
        f"<div class='wide'><table class='compact'><tr><th>day</th><th>records</th>{head}</tr>"
        f"{''.join(rows)}</table></div>"
    )


def _model_section(model: Mapping[str, Any], thresholds: Mapping[str, Any]) -> str:
    realized = model["realized"]
    span = model["time_range"]
    notes = "".join(f"<li class='note'>{escape(n)}</li>" for n in model["notes"])
    days = "".join(
        f"<tr><td>{d['day']}</td><td class='n'>{d['records']:,}</td>"
        f"<td class='n'>{d['labelled']:,}</td><td class='n'>{_number(d['accuracy'])}</td>"
        f"<td class='n'>{_number(d['roc_auc'])}</td></tr>"
        for d in model["by_day"]
    )
    return f"""
<h2>{escape(model["model_name"])} version {escape(model["model_version"])}</h2>
<p>{model["records"]:,} records from {span["first"]} to {span["last"]} (UTC);
{model["labelled"]:,} with a label.</p>
<ul>{notes}</ul>
<table>
<tr><th>realized accuracy</th><td class="n">{_number(realized["accuracy"])}</td>
<th>ROC AUC</th><td class="n">{_number(realized["roc_auc"])}</td>
<th>score PSI</th><td class="n">{_number(model["score"]["psi"])}</td>
<td>{_verdict(model["score"]["verdict"])}</td></tr>
</table>
<h3>Realized metrics by day (UTC date of the prediction)</h3>
{_accuracy_svg(model["by_day"], thresholds["accuracy_floor"])}
<span class="muted">dashed: monitor.accuracy_floor {thresholds["accuracy_floor"]}</span>
<table><tr><th>day</th><th>records</th><th>labelled</th><th>accuracy</th><th>ROC AUC</th></tr>
{days}</table>
<h3>Drift against the reference profile, by day</h3>
<p class="muted">Days with fewer than monitor.min_window_records
({thresholds["min_window_records"]}) records are greyed: their PSIs are mostly noise.</p>
{_drift_by_day_table(model["by_day"], thresholds["min_window_records"])}
<h3>Drift against the reference profile, all records</h3>
<table><tr><th>feature</th><th>PSI</th><th>verdict</th>
<th>reference <svg width="10" height="10"><rect class="ref" width="10" height="10"/></svg>
current <svg width="10" height="10"><rect class="cur" width="10" height="10"/></svg></th></tr>
{_drift_rows([*model["features"], model["score"]])}</table>
"""


def render_html(summary: Mapping[str, Any]) -> str:
    """The whole page for one `summarize` result."""
    log, feedback, thresholds = summary["log"], summary["feedback"], summary["thresholds"]
    if summary["no_predictions"]:
        body = "<p><strong>No predictions</strong> in this log: nothing to compare.</p>"
    else:
        body = "".join(_model_section(m, thresholds) for m in summary["models"])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>tabml monitoring report</title>
<style>{_STYLE}</style></head><body>
<h1>Monitoring report</h1>
<p>Log <code>{escape(log["dir"])}</code>: {log["segments"]:,} closed segment(s),
{log["predictions"]:,} predictions; reference profile of {summary["reference_rows"]:,} rows.
Every number is computed on all logged records, with the service's own functions.</p>
<p class="muted">PSI verdicts: below {thresholds["psi_warn"]} stable, below
{thresholds["psi_alert"]} moderate shift, otherwise significant shift (conf/monitor).
A prediction is positive when its score is at least {thresholds["decision_threshold"]}.</p>
<table><tr><th>feedback events</th><th>joined</th><th>duplicate (ignored)</th>
<th>without a logged prediction</th><th>repeated prediction keys</th></tr>
<tr><td class="n">{feedback["events"]:,}</td><td class="n">{feedback["matched"]:,}</td>
<td class="n">{feedback["duplicate"]:,}</td><td class="n">{feedback["unmatched"]:,}</td>
<td class="n">{summary["duplicate_predictions"]:,}</td></tr></table>
{body}
</body></html>
"""
