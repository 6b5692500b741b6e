"""Training curves as small self-contained SVG line charts.

The web page shows the same numbers the Slicer module plots: the loss and validation-Dice
columns of :class:`DKUXNetSegmentLib.logic.TrainingPlots` (read back with its ``loss_curves``
and ``dice_curves``). The chart is drawn here as an SVG string, so the page needs no plotting
library and the drawing is testable without a browser. Names are XML-escaped: they end up in
the page as markup.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from xml.sax.saxutils import escape

WIDTH, HEIGHT = 320, 180
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 44, 10, 22, 30
#: Curve colours, in the order the Slicer plots use (``logic._PALETTE``) as CSS hex.
COLOURS = ("#d9541a", "#0073bd", "#7d2e8f", "#78ab30")

Points = Sequence[tuple[float, float]]


def line_chart(
    curves: Mapping[str, Points],
    title: str,
    y_title: str = "",
    x_title: str = "iteration",
    y_range: tuple[float, float] | None = None,
) -> str:
    """An SVG line chart of named curves, with axes, their ranges and a legend.

    Args:
        curves: name -> ``(x, y)`` points in x order; empty curves are left out.
        title: the chart's title.
        y_title: the y axis label.
        x_title: the x axis label.
        y_range: fixed y limits (e.g. ``(0, 1)`` for Dice); by default the data's range.

    Returns:
        An ``<svg>`` element as text; with no points it says "no data yet".
    """
    drawn = {name: list(points) for name, points in curves.items() if points}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="100%" role="img" aria-label="{escape(title, {chr(34): "&quot;"})}">',
        f'<text x="{WIDTH / 2}" y="14" text-anchor="middle" font-size="12">{escape(title)}</text>',
    ]
    left, right = MARGIN_LEFT, WIDTH - MARGIN_RIGHT
    top, bottom = MARGIN_TOP, HEIGHT - MARGIN_BOTTOM
    parts.append(
        f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" '
        'fill="none" stroke="#999" stroke-width="0.5"/>'
    )
    if not drawn:
        parts.append(
            f'<text x="{(left + right) / 2}" y="{(top + bottom) / 2}" text-anchor="middle" '
            'font-size="11" fill="#777">no data yet</text></svg>'
        )
        return "".join(parts)

    xs = [x for points in drawn.values() for x, _ in points]
    ys = [y for points in drawn.values() for _, y in points]
    x0, x1 = _padded_range(min(xs), max(xs))
    y0, y1 = y_range if y_range is not None else _padded_range(min(ys), max(ys))

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (right - left)

    def sy(y: float) -> float:
        return bottom - (min(max(y, y0), y1) - y0) / (y1 - y0) * (bottom - top)

    for i, (name, points) in enumerate(drawn.items()):
        colour = COLOURS[i % len(COLOURS)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
        parts.append(
            f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.5"/>'
        )
        if len(points) == 1:  # one point draws no line; mark it
            x, y = points[0]
            parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2" fill="{colour}"/>')
        parts.append(
            f'<text x="{left + 6}" y="{top + 12 + 11 * i}" font-size="10" fill="{colour}">'
            f"{escape(name)} {points[-1][1]:.4g}</text>"
        )
    parts += [
        _label(left - 4, top + 4, _number(y1), "end"),
        _label(left - 4, bottom, _number(y0), "end"),
        _label(left, bottom + 12, _number(x0), "start"),
        _label(right, bottom + 12, _number(x1), "end"),
        _label((left + right) / 2, HEIGHT - 4, escape(x_title), "middle"),
        f'<text x="10" y="{(top + bottom) / 2}" font-size="10" text-anchor="middle" '
        f'transform="rotate(-90 10 {(top + bottom) / 2})">{escape(y_title)}</text>',
        "</svg>",
    ]
    return "".join(parts)


def _padded_range(low: float, high: float) -> tuple[float, float]:
    if not (math.isfinite(low) and math.isfinite(high)):
        return 0.0, 1.0
    if high > low:
        return low, high
    pad = max(abs(low) * 0.05, 1e-6)
    return low - pad, high + pad


def _number(value: float) -> str:
    return f"{value:.3g}"


def _label(x: float, y: float, text: str, anchor: str) -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" font-size="10" text-anchor="{anchor}">{text}</text>'
