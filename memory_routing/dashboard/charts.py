"""The geometry of the dashboard's charts: where each bar, grid line and label goes.

Pure logic: numbers in, shapes out. The page's template draws the shapes as SVG (and escapes
every text); nothing here writes markup. A y axis is as wide as its longest label, so no
label is ever cut off at the chart's left edge.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Colour-blind-safe palette (Okabe-Ito) for up to eight series; the rest share grey.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
OTHER_COLOUR = "#999999"
ERROR_COLOUR = "#C0392B"
MAX_SERIES = len(PALETTE)

WIDTH = 640
AXIS_CHAR_PX = 6.6  # the widest digit of the axis font (11 px) and then some
AXIS_GAP_PX = 6  # between a y label and the plot
Y_TICKS = 4
MODEL_ROWS = 12
ROW_PX = 24
NAME_PX = 200  # room for a model's name left of horizontal bars
NAME_CHARS = 28


@dataclass(frozen=True, slots=True)
class Text:
    x: float
    y: float
    text: str
    anchor: str = "start"  # SVG text-anchor
    kind: str = "axis"  # CSS class: axis | y | empty
    title: str | None = None  # a tooltip (the full name of a shortened one)


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    fill: str
    title: str
    data: tuple[tuple[str, str], ...] = ()  # data-* attributes the tests and the script read
    opacity: float | None = None
    kind: str | None = "bar"  # CSS class


@dataclass(frozen=True, slots=True)
class Chart:
    element_id: str
    label: str  # aria-label
    width: int
    height: int
    grid: tuple[tuple[float, float, float], ...] = ()  # horizontal lines: (x1, x2, y)
    bars: tuple[Bar, ...] = ()
    texts: tuple[Text, ...] = ()
    stretch: bool = False  # preserveAspectRatio none: bars fill the width at any size


@dataclass(frozen=True, slots=True)
class Axis:
    """A y axis from 0 to ``top`` in ``Y_TICKS`` equal steps of a round size."""

    top: float
    labels: tuple[str, ...] = field(default=())

    @classmethod
    def over(cls, peak: float, fmt: Callable[[float], str]) -> Axis:
        step = nice_step(peak / Y_TICKS)
        top = step * Y_TICKS
        # Rounded to the step's precision: 3 × 0.00005 prints as 0.00015, not 0.00015000000000000001.
        digits = max(0, -math.floor(math.log10(step)) + 2)
        return cls(top, tuple(fmt(round(step * i, digits)) for i in range(Y_TICKS + 1)))

    @property
    def width(self) -> float:
        return AXIS_GAP_PX + 4 + AXIS_CHAR_PX * max(len(label) for label in self.labels)


def nice_step(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten at or above ``value`` (axes read easily)."""
    if value <= 0:
        return 0.25
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * power * (1 + 1e-12):
            return step * power
    return 10 * power


def stacked_bars(
    element_id: str,
    columns: Sequence[tuple[str, Mapping[str, float]]],
    colours: Mapping[str, str],
    fmt: Callable[[float], str],
) -> Chart:
    """One bar per column (a time bucket: its label and each series' value), stacked by series,
    with a labelled y axis and a tooltip per segment."""
    height, bottom, top = 200, 22, 8
    peak = max((sum(values.values()) for _, values in columns), default=0.0)
    axis = Axis.over(peak, fmt)
    left = axis.width
    plot_w, plot_h = WIDTH - left - 8, height - bottom - top
    grid, texts, bars = [], [], []
    for i, label in enumerate(axis.labels):
        y = top + plot_h - plot_h * i / Y_TICKS
        grid.append((left, WIDTH - 8, round(y, 1)))
        texts.append(Text(left - AXIS_GAP_PX, round(y + 4, 1), label, "end", "axis y"))
    slot = plot_w / max(1, len(columns))
    bar_w = max(1.0, slot * 0.72)
    label_every = max(1, len(columns) // 8)
    for index, (column, values) in enumerate(columns):
        x = left + index * slot + (slot - bar_w) / 2
        y = top + plot_h
        for series in sorted(values):
            value = values[series]
            if value <= 0:
                continue
            h = plot_h * value / axis.top
            y -= h
            bars.append(Bar(round(x, 1), round(y, 1), round(bar_w, 1), round(max(h, 0.5), 1),
                            colours.get(series, OTHER_COLOUR), f"{series} · {column}: {fmt(value)}",
                            (("user", series), ("value", f"{value:g}"))))
        if index % label_every == 0:
            texts.append(Text(round(x + bar_w / 2, 1), height - 6, column, "middle"))
    if peak == 0:
        texts.append(Text(round(left + plot_w / 2), round(top + plot_h / 2), "no calls in this range", "middle", "empty"))
    return Chart(element_id, element_id, WIDTH, height, tuple(grid), tuple(bars), tuple(texts), stretch=True)


def _name_label(name: str, y: float) -> Text:
    shown = name if len(name) <= NAME_CHARS else name[:NAME_CHARS - 1] + "…"
    return Text(NAME_PX - 8, y, shown, "end", title=name)


def _per_model(rows: Sequence[Mapping[str, Any]], empty: str) -> tuple[int, list[Text], list[Bar]]:
    """A horizontal-bar chart's height and its texts and bars so far (the note when it has no row)."""
    texts = [] if rows else [Text(WIDTH / 2, 20, empty, "middle", "empty")]
    return max(1, len(rows)) * ROW_PX + 8, texts, []


def model_bars(rows: Sequence[Mapping[str, Any]]) -> Chart:
    """Horizontal bars: calls per model, the erroring part in red."""
    rows = list(rows)[:MODEL_ROWS]
    height, texts, bars = _per_model(rows, "no calls in this range")
    peak = max((int(row["calls"]) for row in rows), default=0)
    bar_space = WIDTH - NAME_PX - 90
    for i, row in enumerate(rows):
        y = 4 + i * ROW_PX
        name, calls, errors = str(row["key"]), int(row["calls"]), int(row["errors"])
        ok_w = bar_space * (calls - errors) / peak if peak else 0
        err_w = bar_space * errors / peak if peak else 0
        texts.append(_name_label(name, y + 16))
        bars.append(Bar(NAME_PX, y + 3, round(ok_w, 1), ROW_PX - 8, PALETTE[0], f"{name}: {calls} calls",
                        (("model", name), ("calls", str(calls)))))
        bars.append(Bar(round(NAME_PX + ok_w, 1), y + 3, round(err_w, 1), ROW_PX - 8, ERROR_COLOUR,
                        f"{name}: {errors} errors", (("errors", str(errors)),)))
        texts.append(Text(round(NAME_PX + ok_w + err_w + 6, 1), y + 16, f"{calls}" + (f" ({errors} err)" if errors else "")))
    return Chart("model-chart", "calls per model", WIDTH, height, (), tuple(bars), tuple(texts))


def latency_bars(rows: Sequence[Mapping[str, Any]], fmt: Callable[[float], str]) -> Chart:
    """Horizontal bars per model: p95 light, p50 solid over it."""
    rows = [row for row in rows if row["latency_ms_p95"] is not None][:MODEL_ROWS]
    height, texts, bars = _per_model(rows, "no latencies in this range")
    peak = max((float(row["latency_ms_p95"]) for row in rows), default=0.0)
    bar_space = WIDTH - NAME_PX - 110
    for i, row in enumerate(rows):
        y = 4 + i * ROW_PX
        name = str(row["key"])
        p50, p95 = float(row["latency_ms_p50"]), float(row["latency_ms_p95"])
        w50, w95 = (bar_space * p50 / peak, bar_space * p95 / peak) if peak else (0.0, 0.0)
        texts.append(_name_label(name, y + 16))
        bars.append(Bar(NAME_PX, y + 3, round(w95, 1), ROW_PX - 8, PALETTE[4], f"{name}: p95 {fmt(p95)} ms",
                        (("model", name), ("p95", f"{p95:g}")), opacity=0.45, kind=None))
        bars.append(Bar(NAME_PX, y + 3, round(w50, 1), ROW_PX - 8, PALETTE[0], f"{name}: p50 {fmt(p50)} ms",
                        (("p50", f"{p50:g}"),), kind=None))
        texts.append(Text(round(NAME_PX + w95 + 6, 1), y + 16, f"{fmt(p50)} / {fmt(p95)}"))
    return Chart("latency-chart", "latency per model", WIDTH, height, (), tuple(bars), tuple(texts))


def series_colours(series: Sequence[str]) -> dict[str, str]:
    return {name: PALETTE[i] if i < MAX_SERIES else OTHER_COLOUR for i, name in enumerate(series)}
