"""The backtest as one self-contained HTML page: its figures, and two charts drawn as inline
SVG (sends by the shopper's local hour of day, skips by rule). No script, no stylesheet or
font from elsewhere: the file opens the same offline."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from cartback.backtest.report import StepFigures

_COLOURS = {"sms": "#2f6db5", "email": "#d9822b"}
_OTHER = "#7a7a7a"
_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#222}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0}
th,td{padding:.25rem .6rem;border-bottom:1px solid #ddd;text-align:right;vertical-align:top}
th:first-child,td:first-child,td.text{text-align:left}
.legend span{display:inline-block;width:.8em;height:.8em;margin:0 .3em 0 1em}
svg text{font:11px system-ui,sans-serif;fill:#333}.muted{color:#666}
"""


def page(
    title: str,
    summary: Mapping[str, Any],
    rows: Sequence[StepFigures],
    by_hour: Mapping[str, Sequence[int]],
    skips: Mapping[str, int],
) -> str:
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        _summary(summary),
        "<h2>Per step</h2>",
        _steps(rows, str(summary.get("currency", ""))),
        "<h2>Sends by hour of day (shopper's local time)</h2>",
        hour_chart(by_hour),
        "<h2>Skips by rule</h2>",
        rule_chart(skips),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _summary(summary: Mapping[str, Any]) -> str:
    cells = "".join(
        f"<tr><th>{escape(str(key))}</th><td class=text>{escape(str(value))}</td></tr>"
        for key, value in summary.items()
    )
    return f"<table>{cells}</table>"


def _steps(rows: Sequence[StepFigures], currency: str) -> str:
    head = (
        "<tr><th>flow</th><th>step</th><th>channel</th><th>considered</th><th>sent</th>"
        f"<th>segments</th><th>cost ({escape(currency)})</th><th>skips by rule</th>"
        "<th>recoveries (95 %)</th><th>revenue (95 %)</th><th>opt-outs (95 %)</th></tr>"
    )
    body = []
    for row in rows:
        skips = "<br>".join(
            [f"{escape(rule)}: {count}" for rule, count in row.skips.items()]
            + [f"<i>deferred by {escape(rule)}: {count}</i>" for rule, count in row.defers.items()]
        )
        body.append(
            f"<tr><td>{escape(row.flow)}</td><td class=text>{escape(row.step)}</td>"
            f"<td class=text>{escape(row.channel)}</td><td>{row.considered}</td>"
            f"<td>{row.sent}</td><td>{row.segments}</td><td>{row.cost:.2f}</td>"
            f"<td class=text>{skips or '–'}</td><td>{escape(str(row.recoveries))}</td>"
            f"<td>{escape(str(row.revenue))}</td><td>{escape(str(row.opt_outs))}</td></tr>"
        )
    return f"<table>{head}{''.join(body)}</table>"


def hour_chart(by_hour: Mapping[str, Sequence[int]]) -> str:
    """Stacked columns, one per local hour 00–23, one colour per channel."""
    width, height, left, bottom, top = 720, 260, 44, 28, 12
    channels = sorted(by_hour)
    totals = [sum(by_hour[c][hour] for c in channels) for hour in range(24)]
    peak = max(totals) if totals and max(totals) > 0 else 1
    plot_h = height - bottom - top
    slot = (width - left - 8) / 24
    shapes = []
    for tick in _ticks(peak):
        y = top + plot_h - plot_h * tick / peak
        shapes.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{width - 8}" y2="{y:.1f}" stroke="#e5e5e5"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{tick:,}</text>'
        )
    for hour in range(24):
        x = left + hour * slot + 2
        base = float(top + plot_h)
        for channel in channels:
            count = by_hour[channel][hour]
            if not count:
                continue
            bar = plot_h * count / peak
            base -= bar
            colour = _COLOURS.get(channel, _OTHER)
            shapes.append(
                f'<rect x="{x:.1f}" y="{base:.1f}" width="{slot - 4:.1f}" height="{bar:.1f}" '
                f'fill="{colour}"><title>{hour:02d}:00 {escape(channel)}: {count:,}</title></rect>'
            )
        shapes.append(
            f'<text x="{x + (slot - 4) / 2:.1f}" y="{height - 10}" '
            f'text-anchor="middle">{hour:02d}</text>'
        )
    legend = "".join(
        f'<span style="background:{_COLOURS.get(c, _OTHER)}"></span>{escape(c)}' for c in channels
    )
    return (
        f'<svg id="sends-by-hour" role="img" aria-label="Sends by local hour of day" '
        f'xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">{"".join(shapes)}</svg>'
        f'<div class="legend">{legend}</div>'
    )


def rule_chart(skips: Mapping[str, int]) -> str:
    """One horizontal bar per rule, most frequent first."""
    ordered = sorted(skips.items(), key=lambda item: (-item[1], item[0]))
    if not ordered:
        return '<p class="muted" id="skips-by-rule">No step was skipped.</p>'
    label_w, bar_w, row_h = 220, 440, 22
    height = row_h * len(ordered) + 8
    peak = ordered[0][1]
    shapes = []
    for index, (rule, count) in enumerate(ordered):
        y = 4 + index * row_h
        length = max(1.0, bar_w * count / peak)
        shapes.append(
            f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end">{escape(rule)}</text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{length:.1f}" height="{row_h - 6}" '
            f'fill="#b5452f"><title>{escape(rule)}: {count:,}</title></rect>'
            f'<text x="{label_w + length + 6:.1f}" y="{y + 15}">{count:,}</text>'
        )
    width = label_w + bar_w + 80
    return (
        f'<svg id="skips-by-rule" role="img" aria-label="Skips by rule" '
        f'xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">{"".join(shapes)}</svg>'
    )


def _ticks(peak: int) -> list[int]:
    """Three or four round gridline values up to `peak`."""
    step = 1
    while peak / step > 4:
        for factor in (2, 5, 10):
            if peak / (step * factor) <= 4:
                step *= factor
                break
        else:
            step *= 10
    return list(range(0, peak + 1, step))
