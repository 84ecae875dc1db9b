"""Charts drawn on the server as SVG: no chart library, no script, nothing inline for the
CSP to refuse (geometry is in attributes, colours come from the stylesheet's classes)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from markupsafe import Markup, escape

WIDTH = 720
HEIGHT = 220
LEFT = 44  # room for the y-axis labels
BOTTOM = 24  # room for the x-axis labels
TOP = 10


@dataclass(frozen=True, slots=True)
class Bar:
    day: date
    value: int


def nice_ceiling(value: int) -> int:
    """The smallest 1, 2 or 5 × 10^n at or above `value` (axis top)."""
    if value <= 0:
        return 10
    step = 1
    while True:
        for factor in (1, 2, 5):
            if step * factor >= value:
                return step * factor
        step *= 10


def spend_per_day_svg(bars: list[Bar], *, title: str) -> Markup:
    """A bar per day; y from 0 to a round ceiling with four grid lines; every 5th day
    labelled; each bar carries its day and value as a tooltip (`<title>`)."""
    # Four equal whole steps up to a round top.
    top = 4 * nice_ceiling(-(-max((b.value for b in bars), default=0) // 4))
    plot_w = WIDTH - LEFT
    plot_h = HEIGHT - TOP - BOTTOM
    slot = plot_w / max(len(bars), 1)
    bar_w = max(2.0, slot * 0.62)
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}"><title>{escape(title)}</title>'
    ]
    for i in range(5):
        y = TOP + plot_h - plot_h * i / 4
        label = _short(top * i // 4)
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text x="{LEFT - 8}" y="{y + 4:.1f}" text-anchor="end">{label}</text>'
        )
    for index, bar in enumerate(bars):
        height = plot_h * bar.value / top if top else 0
        x = LEFT + index * slot + (slot - bar_w) / 2
        y = TOP + plot_h - height
        tip = f"{bar.day:%d %b}: {bar.value:,} credits"
        parts.append(
            f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" '
            f'height="{max(height, 0.0):.1f}" rx="2"><title>{tip}</title></rect>'
        )
        last = index == len(bars) - 1
        if index % 5 == 0 or last:
            anchor = "end" if last else "middle"
            label_x = x + bar_w if last else x + bar_w / 2
            parts.append(
                f'<text x="{label_x:.1f}" y="{HEIGHT - 6}" text-anchor="{anchor}">'
                f"{bar.day:%d %b}</text>"
            )
    parts.append("</svg>")
    return Markup("".join(parts))


def _short(value: int) -> str:
    if value >= 10_000:
        return f"{value / 1000:g}k"
    return f"{value:,}"
