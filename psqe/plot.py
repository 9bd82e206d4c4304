"""Grouped bar charts as standalone SVG (no plotting dependency).

Used for the seed-distribution figure next to a report: one panel per
grouping (clusters, degree buckets), one bar per series (all entities,
PSQE, Type I, Type II) in each category.

>>> from psqe.plot import grouped_bars_svg
>>> svg = grouped_bars_svg([("degree bucket", ["0", "1"], {"all": [0.5, 0.5], "PSQE": [0.2, 0.8]})], title="demo")
>>> svg.startswith("<svg") and svg.count("<rect") >= 4
True
"""
from __future__ import annotations

from collections.abc import Sequence
from html import escape

PALETTE = ("#9e9e9e", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd")

Panel = tuple[str, Sequence[str], dict[str, Sequence[float]]]


def _panel(x0: float, y0: float, width: float, height: float, panel: Panel, colours: dict[str, str]) -> list[str]:
    label, categories, series = panel
    top = max([max((x for x in v if x is not None), default=0.0) for v in series.values()] + [1e-9])
    out = [f'<text x="{x0 + width / 2:.1f}" y="{y0 - 8:.1f}" text-anchor="middle" font-size="13">{escape(label)}</text>',
           f'<line x1="{x0}" y1="{y0 + height}" x2="{x0 + width}" y2="{y0 + height}" stroke="#333"/>',
           f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y0 + height}" stroke="#333"/>']
    for frac in (0.0, 0.5, 1.0):
        y = y0 + height * (1 - frac)
        out.append(f'<text x="{x0 - 4}" y="{y + 4:.1f}" text-anchor="end" font-size="10">{frac * top:.2f}</text>')
    slot = width / max(len(categories), 1)
    bar = slot * 0.8 / max(len(series), 1)
    for c, cat in enumerate(categories):
        for s, (name, values) in enumerate(series.items()):
            if values[c] is None:  # no such measurement: no bar (a 0 would read as one)
                continue
            h = height * float(values[c]) / top
            x = x0 + c * slot + slot * 0.1 + s * bar
            out.append(f'<rect x="{x:.1f}" y="{y0 + height - h:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                       f'fill="{colours[name]}"><title>{escape(name)} {escape(str(cat))}: {float(values[c]):.4f}</title></rect>')
        out.append(f'<text x="{x0 + (c + 0.5) * slot:.1f}" y="{y0 + height + 14:.1f}" text-anchor="middle" '
                   f'font-size="10">{escape(str(cat))}</text>')
    return out


def grouped_bars_svg(panels: Sequence[Panel], title: str = "", ylabel: str = "fraction of entities") -> str:
    """An SVG document with one grouped-bar panel per ``(label, categories, {series: values})``.

    Every series of a panel must have one value per category (None: no bar there).
    """
    for label, categories, series in panels:
        for name, values in series.items():
            if len(values) != len(categories):
                raise ValueError(f"panel {label!r}: series {name!r} has {len(values)} values for {len(categories)} categories")
    names = list(dict.fromkeys(n for _, _, s in panels for n in s))
    colours = {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}
    pw, ph, margin = 460, 220, 60
    width, height = margin + len(panels) * (pw + margin), ph + 150
    body = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif">',
            f'<rect width="{width}" height="{height}" fill="white"/>',
            f'<text x="{width / 2:.1f}" y="20" text-anchor="middle" font-size="15">{escape(title)}</text>',
            f'<text x="14" y="{60 + ph / 2:.1f}" font-size="11" transform="rotate(-90 14 {60 + ph / 2:.1f})" '
            f'text-anchor="middle">{escape(ylabel)}</text>']
    for i, panel in enumerate(panels):
        body += _panel(margin + i * (pw + margin), 60, pw, ph, panel, colours)
    for i, name in enumerate(names):
        x = margin + i * 130
        body.append(f'<rect x="{x}" y="{ph + 110}" width="12" height="12" fill="{colours[name]}"/>')
        body.append(f'<text x="{x + 16}" y="{ph + 120}" font-size="11">{escape(name)}</text>')
    body.append("</svg>")
    return "\n".join(body) + "\n"
