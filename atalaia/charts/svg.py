"""Inline SVG charts drawn in Python: time-series line charts, an alert timeline and a per-step curve.

Used by the report (``composition/report/``) and by the retraining run's loss curve
(``retrain/train.py``) when matplotlib is missing. The report must open on a machine without
internet, so there is no charting library and no script: every chart is a string of SVG elements
(``<path>`` lines, ``<line>`` markers, ``<text>`` labels) placed straight into the HTML. The
functions here know nothing about the database; they take points in data coordinates and return
markup. All text is escaped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape

#: Colours of model versions, in order of first appearance (colour-blind-friendly Okabe-Ito).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
#: Colours of alert severities.
SEVERITY_COLOURS = {"critical": "#C0392B", "warning": "#E67E22", "info": "#2980B9"}

WIDTH = 960
HEIGHT = 250
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 70, 20, 26, 34
#: Candidate steps of the time axis, in seconds.
TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800)


@dataclass(frozen=True)
class Line:
    """One series: points ``(time, value)`` in time order; ``None`` values break the line."""

    label: str
    colour: str
    points: Sequence[tuple[datetime, float | None]]
    dashed: bool = False
    #: Draw a dot at each point (for sparse series such as drift tests).
    dots: bool = False
    css: str = "series"
    version: str = ""


@dataclass(frozen=True)
class VLine:
    """A vertical line across the plot: a deploy or a rollback of a model version."""

    ts: datetime
    label: str
    kind: str = "deploy"
    version: str = ""


@dataclass(frozen=True)
class Band:
    """A shaded time span, e.g. a retraining run."""

    start: datetime
    end: datetime
    label: str


@dataclass(frozen=True)
class Mark:
    """An alert transition drawn as a triangle on the top edge of the plot."""

    ts: datetime
    rule: str
    state: str
    severity: str
    text: str = ""


@dataclass(frozen=True)
class Span:
    """One alert on the timeline: pending from ``start``, firing from ``fired``, until ``end``."""

    rule: str
    severity: str
    start: datetime
    fired: datetime | None
    end: datetime | None
    text: str = ""
    transitions: Sequence[tuple[datetime, str]] = field(default_factory=tuple)


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round axis ticks covering ``[lo, hi]`` (steps of 1, 2 or 5 times a power of ten).

    >>> nice_ticks(0, 1)
    [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    >>> nice_ticks(812, 2400, 4)
    [500.0, 1000.0, 1500.0, 2000.0, 2500.0]
    >>> nice_ticks(3, 3)
    [2.0, 2.5, 3.0, 3.5, 4.0]
    """
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        pad = abs(lo) * 0.25 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.floor(lo / step)
    ticks = []
    k = first
    while True:  # integer multiples of the step: no drift from repeated addition
        value = k * step
        ticks.append(float(f"{value:.10g}"))
        if value >= hi - step * 1e-9:
            return ticks
        k += 1


def format_value(value: float) -> str:
    """A compact label for an axis tick or a table cell.

    >>> [format_value(v) for v in (0, 0.000123, 0.25, 12.5, 2400, 1.5e6)]
    ['0', '0.000123', '0.25', '12.5', '2,400', '1.5e+06']
    """
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e5 or magnitude < 1e-4:
        return f"{value:.3g}" if magnitude < 1e5 else f"{value:.2g}"
    if magnitude >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def time_ticks(start: datetime, end: datetime, count: int = 8) -> tuple[list[datetime], str]:
    """Ticks of the time axis and their ``strftime`` format (UTC).

    >>> from datetime import timedelta
    >>> s = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
    >>> ticks, fmt = time_ticks(s, s + timedelta(minutes=10))
    >>> [t.strftime(fmt) for t in ticks][:3], fmt
    (['10:00', '10:02', '10:04'], '%H:%M')
    """
    span = max((end - start).total_seconds(), 1.0)
    step = next((s for s in TIME_STEPS if span / s <= count), TIME_STEPS[-1])
    epoch = start.timestamp()
    first = math.ceil(epoch / step) * step
    ticks = []
    value = first
    while value <= end.timestamp() + 1e-6:
        ticks.append(datetime.fromtimestamp(value, UTC))
        value += step
    if span > 2 * 86400:
        fmt = "%m-%d %H:%M"
    elif step < 60:
        fmt = "%H:%M:%S"
    else:
        fmt = "%H:%M"
    return ticks, fmt


class _Frame:
    """Maps data coordinates to pixels for one plot area."""

    def __init__(self, start: datetime, end: datetime, lo: float, hi: float, width: int, height: int) -> None:
        self.t0 = start.timestamp()
        self.t1 = max(end.timestamp(), self.t0 + 1.0)
        self.lo, self.hi = lo, hi if hi > lo else lo + 1.0
        self.left, self.right = MARGIN_LEFT, width - MARGIN_RIGHT
        self.top, self.bottom = MARGIN_TOP, height - MARGIN_BOTTOM

    def x(self, ts: datetime) -> float:
        frac = (ts.timestamp() - self.t0) / (self.t1 - self.t0)
        return self.left + min(max(frac, 0.0), 1.0) * (self.right - self.left)

    def y(self, value: float) -> float:
        frac = (value - self.lo) / (self.hi - self.lo)
        return self.bottom - min(max(frac, -0.02), 1.02) * (self.bottom - self.top)

    def inside(self, ts: datetime) -> bool:
        return self.t0 <= ts.timestamp() <= self.t1


def _path(frame: _Frame, points: Sequence[tuple[datetime, float | None]]) -> str:
    """The ``d`` attribute of a line through ``points``; a ``None`` value starts a new segment."""
    parts: list[str] = []
    pen_down = False
    for ts, value in points:
        if value is None or not math.isfinite(value) or not frame.inside(ts):
            pen_down = False
            continue
        parts.append(f"{'L' if pen_down else 'M'}{frame.x(ts):.1f},{frame.y(value):.1f}")
        pen_down = True
    return " ".join(parts)


def _open(key: str, title: str, width: int, height: int, css: str = "chart") -> list[str]:
    return [
        f'<svg class="{css}" id="chart-{escape(key)}" data-chart="{escape(key)}" viewBox="0 0 {width} {height}" '
        f'width="100%" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<rect class="frame" x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
    ]


def _time_axis(frame: _Frame, start: datetime, end: datetime, out: list[str]) -> None:
    ticks, fmt = time_ticks(start, end)
    for tick in ticks:
        x = frame.x(tick)
        out.append(
            f'<line class="grid" x1="{x:.1f}" y1="{frame.top}" x2="{x:.1f}" y2="{frame.bottom}" '
            'stroke="#eeeeee" stroke-width="1"/>'
        )
        out.append(
            f'<text class="tick" x="{x:.1f}" y="{frame.bottom + 16}" text-anchor="middle">{tick.strftime(fmt)}</text>'
        )
    out.append(
        f'<line class="axis" x1="{frame.left}" y1="{frame.bottom}" x2="{frame.right}" y2="{frame.bottom}" '
        'stroke="#888888" stroke-width="1"/>'
    )


def _no_data(frame: _Frame, out: list[str], text: str = "no data") -> None:
    cx = (frame.left + frame.right) / 2
    cy = (frame.top + frame.bottom) / 2
    out.append(f'<text class="no-data" x="{cx:.1f}" y="{cy:.1f}" text-anchor="middle">{escape(text)}</text>')


def _bands(frame: _Frame, bands: Sequence[Band], out: list[str]) -> None:
    for band in bands:
        if band.end.timestamp() < frame.t0 or band.start.timestamp() > frame.t1:
            continue
        x0, x1 = frame.x(band.start), frame.x(band.end)
        out.append(
            f'<rect class="run-band" x="{x0:.1f}" y="{frame.top}" width="{max(x1 - x0, 2.0):.1f}" '
            f'height="{frame.bottom - frame.top}" fill="#8e44ad" fill-opacity="0.08">'
            f"<title>{escape(band.label)}</title></rect>"
        )


def _vlines(frame: _Frame, vlines: Sequence[VLine], out: list[str], labels: bool = True) -> None:
    for i, line in enumerate(vlines):
        if not frame.inside(line.ts):
            continue
        x = frame.x(line.ts)
        colour = "#C0392B" if line.kind == "rollback" else "#2C3E50"
        # The label goes on the side with more room, so it is not cut at the chart's edge.
        right_half = x > (frame.left + frame.right) / 2
        anchor, dx = ("end", -4) if right_half else ("start", 4)
        text = (
            f'<text class="vlabel" x="{x + dx:.1f}" y="{frame.top + 10 + 12 * (i % 3)}" fill="{colour}" '
            f'text-anchor="{anchor}">{escape(line.label)}</text>'
            if labels
            else ""
        )
        out.append(
            f'<g class="{escape(line.kind)}-group" data-version="{escape(line.version)}">'
            f'<line class="{escape(line.kind)}" x1="{x:.1f}" y1="{frame.top - 6}" x2="{x:.1f}" y2="{frame.bottom}" '
            f'stroke="{colour}" stroke-width="1.5" stroke-dasharray="6 3"><title>{escape(line.label)}</title></line>'
            f"{text}</g>"
        )


def _marks(frame: _Frame, marks: Sequence[Mark], out: list[str]) -> None:
    for mark in marks:
        if not frame.inside(mark.ts):
            continue
        x = frame.x(mark.ts)
        y = frame.top - 2
        colour = SEVERITY_COLOURS.get(mark.severity, "#7F8C8D")
        if mark.state == "resolved":
            shape = f"M{x:.1f},{y - 8:.1f} L{x - 5:.1f},{y:.1f} L{x + 5:.1f},{y:.1f} Z"  # apex up: cleared
            fill = "#27AE60"
        else:
            shape = f"M{x - 5:.1f},{y - 8:.1f} L{x + 5:.1f},{y - 8:.1f} L{x:.1f},{y:.1f} Z"  # apex down: fired
            fill = colour if mark.state == "firing" else "#F5CBA7"
        tip = f"{mark.rule} {mark.state} at {mark.ts:%H:%M:%S}" + (f": {mark.text}" if mark.text else "")
        out.append(
            f'<path class="alert-marker state-{escape(mark.state)}" data-rule="{escape(mark.rule)}" '
            f'data-state="{escape(mark.state)}" d="{shape}" fill="{fill}" stroke="{colour}" stroke-width="1">'
            f"<title>{escape(tip)}</title></path>"
        )


def line_chart(
    key: str,
    title: str,
    unit: str,
    start: datetime,
    end: datetime,
    lines: Sequence[Line],
    *,
    vlines: Sequence[VLine] = (),
    bands: Sequence[Band] = (),
    marks: Sequence[Mark] = (),
    y_from_zero: bool = True,
    width: int = WIDTH,
    height: int = HEIGHT,
) -> str:
    """A time-series chart as an ``<svg>`` element.

    Each :class:`Line` is a ``<path class="series">`` (``data-version`` names its model
    version); deploys and rollbacks are dashed vertical lines, retraining runs shaded bands,
    alert transitions triangles on the top edge. Without a finite value the plot says "no data".

    Examples
    --------
    >>> from datetime import timedelta
    >>> s = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
    >>> pts = [(s + timedelta(minutes=i), float(i)) for i in range(5)]
    >>> svg = line_chart("demo", "Demo", "ms", s, s + timedelta(minutes=4), [Line("v1", PALETTE[0], pts)])
    >>> svg.startswith("<svg") and svg.count('class="series"') == 1 and "no data" not in svg
    True
    >>> "no data" in line_chart("e", "Empty", "ms", s, s + timedelta(minutes=4), [])
    True
    """
    values = [v for line in lines for _, v in line.points if v is not None and math.isfinite(v)]
    lo = min(values, default=0.0)
    hi = max(values, default=1.0)
    if y_from_zero and lo >= 0:
        lo = 0.0
    ticks = nice_ticks(lo, hi)
    frame = _Frame(start, end, ticks[0], ticks[-1], width, height)
    out = _open(key, title, width, height)
    out.append(f'<text class="chart-title" x="{MARGIN_LEFT}" y="16">{escape(title)}</text>')
    out.append(f'<text class="unit" x="{MARGIN_LEFT - 8}" y="16" text-anchor="end">{escape(unit)}</text>')
    for tick in ticks:
        y = frame.y(tick)
        out.append(
            f'<line class="grid" x1="{frame.left}" y1="{y:.1f}" x2="{frame.right}" y2="{y:.1f}" '
            'stroke="#eeeeee" stroke-width="1"/>'
        )
        out.append(
            f'<text class="tick" x="{frame.left - 6}" y="{y + 4:.1f}" text-anchor="end">{format_value(tick)}</text>'
        )
    _time_axis(frame, start, end, out)
    _bands(frame, bands, out)
    if not values:
        _no_data(frame, out)
    for line in lines:
        d = _path(frame, line.points)
        if not d:
            continue
        dash = ' stroke-dasharray="5 4"' if line.dashed else ""
        out.append(
            f'<path class="{escape(line.css)}" data-version="{escape(line.version)}" data-label="{escape(line.label)}" '
            f'd="{d}" fill="none" stroke="{line.colour}" stroke-width="2"{dash} stroke-linejoin="round">'
            f"<title>{escape(line.label)}</title></path>"
        )
        if line.dots:
            for ts, value in line.points:
                if value is not None and math.isfinite(value) and frame.inside(ts):
                    out.append(
                        f'<circle class="point" cx="{frame.x(ts):.1f}" cy="{frame.y(value):.1f}" r="2.5" '
                        f'fill="{line.colour}"><title>{escape(line.label)} {format_value(value)} at '
                        f"{ts:%H:%M:%S}</title></circle>"
                    )
    _vlines(frame, vlines, out)
    _marks(frame, marks, out)
    out.append("</svg>")
    return "\n".join(out)


def alert_timeline(
    start: datetime,
    end: datetime,
    spans: Sequence[Span],
    *,
    vlines: Sequence[VLine] = (),
    bands: Sequence[Band] = (),
    width: int = WIDTH,
) -> str:
    """One lane per alert rule: a pale bar while pending, a solid bar while firing, until resolved.

    An alert still open at the end of the range runs to the right edge. Each bar is a ``<path
    class="alert-span">``, and each transition a small tick, with the times in a tooltip.

    Examples
    --------
    >>> from datetime import timedelta
    >>> s = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
    >>> span = Span("drift", "warning", s, s + timedelta(minutes=1), s + timedelta(minutes=3))
    >>> svg = alert_timeline(s, s + timedelta(minutes=5), [span])
    >>> svg.count('class="alert-span') >= 1 and 'data-rule="drift"' in svg
    True
    """
    rules = list(dict.fromkeys(span.rule for span in spans))
    lane = 24
    height = MARGIN_TOP + MARGIN_BOTTOM + max(len(rules), 1) * lane + 8
    left = max(MARGIN_LEFT, min(260, 12 + 7 * max((len(r) for r in rules), default=0)))
    frame = _Frame(start, end, 0.0, 1.0, width, height)
    frame.left = left
    out = _open("alerts", "Alerts", width, height)
    out.append(f'<text class="chart-title" x="{left}" y="16">Alerts (pending, firing, resolved)</text>')
    _time_axis(frame, start, end, out)
    _bands(frame, bands, out)
    if not spans:
        _no_data(frame, out, "no alerts in this period")
    for i, rule in enumerate(rules):
        y = frame.top + 6 + i * lane
        out.append(f'<text class="lane" x="{left - 8}" y="{y + 12}" text-anchor="end">{escape(rule)}</text>')
        for span in (s for s in spans if s.rule == rule):
            colour = SEVERITY_COLOURS.get(span.severity, "#7F8C8D")
            end_ts = span.end or end
            segments = [(span.start, span.fired or end_ts, "pending", 0.35)]
            if span.fired is not None:
                segments = [(span.start, span.fired, "pending", 0.35), (span.fired, end_ts, "firing", 1.0)]
            tip = span.text or rule
            for seg_start, seg_end, state, opacity in segments:
                x0, x1 = frame.x(seg_start), frame.x(seg_end)
                if x1 - x0 < 3:
                    x1 = x0 + 3
                out.append(
                    f'<path class="alert-span state-{state}" data-rule="{escape(rule)}" data-state="{state}" '
                    f'd="M{x0:.1f},{y:.1f} H{x1:.1f} V{y + 16:.1f} H{x0:.1f} Z" fill="{colour}" '
                    f'fill-opacity="{opacity}"><title>{escape(tip)}</title></path>'
                )
            for ts, state in span.transitions:
                if frame.inside(ts):
                    x = frame.x(ts)
                    out.append(
                        f'<line class="transition" data-state="{escape(state)}" x1="{x:.1f}" y1="{y - 2:.1f}" '
                        f'x2="{x:.1f}" y2="{y + 18:.1f}" stroke="#2C3E50" stroke-width="1">'
                        f"<title>{escape(rule)} {escape(state)} at {ts:%H:%M:%S}</title></line>"
                    )
            if span.end is not None and frame.inside(span.end):
                out.append(
                    f'<text class="resolved-label" x="{frame.x(span.end) + 3:.1f}" y="{y + 12}" fill="#27AE60">'
                    "resolved</text>"
                )
    _vlines(frame, vlines, out, labels=False)  # the lanes leave no room for labels
    out.append("</svg>")
    return "\n".join(out)


def step_chart(title: str, values: Sequence[float], x_label: str = "step", width: int = 600, height: int = 320) -> str:
    """A standalone SVG document: ``values`` per step (1, 2, ...) as one ``<polyline>``, with axes.

    Non-finite values are skipped (the line joins their neighbours). Used for the training loss.

    >>> svg = step_chart("Loss", [2.0, 1.5, float("nan"), 1.0])
    >>> svg.startswith("<svg") and svg.count("<polyline") == 1 and ">4<" in svg
    True
    """
    finite = [v for v in values if math.isfinite(v)] or [0.0]
    ticks = nice_ticks(min(finite), max(finite), 4)
    lo, hi = ticks[0], ticks[-1]
    left, right, top, bottom = MARGIN_LEFT, width - MARGIN_RIGHT, MARGIN_TOP + 4, height - MARGIN_BOTTOM - 6
    n = max(len(values) - 1, 1)

    def y(value: float) -> float:
        return bottom - (value - lo) / ((hi - lo) or 1.0) * (bottom - top)

    points = " ".join(
        f"{left + (right - left) * i / n:.1f},{y(v):.1f}" for i, v in enumerate(values) if math.isfinite(v)
    )
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        f"<title>{escape(title)}</title>",
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{width / 2}" y="18" text-anchor="middle">{escape(title)}</text>',
    ]
    for tick in ticks:
        out.append(f'<line x1="{left}" y1="{y(tick):.1f}" x2="{right}" y2="{y(tick):.1f}" stroke="#eeeeee"/>')
        out.append(f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">{format_value(tick)}</text>')
    out += [
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="#888888"/>',
        f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#888888"/>',
        f'<text x="{left}" y="{height - 12}">1</text>',
        f'<text x="{right}" y="{height - 12}" text-anchor="end">{len(values)}</text>',
        f'<text x="{(left + right) / 2}" y="{height - 12}" text-anchor="middle">{escape(x_label)}</text>',
        f'<polyline fill="none" stroke="{PALETTE[0]}" stroke-width="1.5" points="{points}"/>',
        "</svg>",
    ]
    return "\n".join(out) + "\n"
