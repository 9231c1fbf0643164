"""Small plots drawn with PIL (there is no plotting library among our dependencies): one :class:`Axes` with ticks,
grid, labels and a legend, on which lines, points, bars and vertical markers are drawn in data coordinates.

    axes = Axes((0, 1), (0, 1), title="yield vs precision", x_label="yield", y_label="precision")
    axes.line([0.2, 0.5, 1.0], [0.9, 0.6, 0.3], BLUE, label="similarity")
    axes.legend()
    axes.image.save("plot.png")

:func:`histogram` draws grouped bars of several value groups over shared bins; :func:`side_by_side` puts plots
in one image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BLUE, RED, GREEN, ORANGE, GREY = (40, 90, 200), (200, 40, 40), (30, 140, 60), (230, 130, 20), (130, 130, 130)
INK, GRID = (20, 20, 20), (225, 225, 225)


def font(size: int = 13) -> ImageFont.ImageFont:
    """PIL's bundled font at ``size`` px (Pillow >= 10.1 scales it; older ones have one bitmap size)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values (steps of 1, 2 or 5 times a power of ten) covering [low, high]."""
    if high <= low:
        return [low]
    raw = (high - low) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks, value = [], first
    while value <= high + 1e-9 * step:
        ticks.append(round(value, 10))
        value += step
    return ticks


def _label(value: float) -> str:
    return f"{value:g}"


class Axes:
    """A plot ``size`` px large with data ranges ``x_range`` and ``y_range``; ``x_ticks`` / ``y_ticks`` are values
    or (value, label) pairs (default: :func:`nice_ticks`)."""

    def __init__(
        self,
        x_range: tuple[float, float],
        y_range: tuple[float, float],
        *,
        size: tuple[int, int] = (640, 420),
        title: str = "",
        x_label: str = "",
        y_label: str = "",
        x_ticks: Sequence | None = None,
        y_ticks: Sequence | None = None,
    ) -> None:
        self.x_range, self.y_range = x_range, y_range
        self.image = Image.new("RGB", size, "white")
        self.draw = ImageDraw.Draw(self.image)
        self.font, self.small = font(14), font(12)
        width, height = size
        self.box = (64, 36 if title else 16, width - 16, height - (52 if x_label else 32))  # x0, y0, x1, y1 px
        self.entries: list[tuple[str, tuple[int, int, int]]] = []
        x0, y0, x1, y1 = self.box
        for value, text in self._ticks(x_ticks, x_range):
            px = self.at(value, y_range[0])[0]
            self.draw.line([px, y0, px, y1], fill=GRID)
            self.draw.text((px, y1 + 6), text, fill=INK, font=self.small, anchor="mt")
        for value, text in self._ticks(y_ticks, y_range):
            py = self.at(x_range[0], value)[1]
            self.draw.line([x0, py, x1, py], fill=GRID)
            self.draw.text((x0 - 6, py), text, fill=INK, font=self.small, anchor="rm")
        self.draw.rectangle(self.box, outline=GREY)
        if title:
            self.draw.text(((x0 + x1) / 2, 10), title, fill=INK, font=self.font, anchor="mt")
        if x_label:
            self.draw.text(((x0 + x1) / 2, height - 8), x_label, fill=INK, font=self.font, anchor="mb")
        if y_label:  # written upwards along the left edge
            text = Image.new("RGB", (int(self.draw.textlength(y_label, font=self.font)) + 4, 18), "white")
            ImageDraw.Draw(text).text((2, 1), y_label, fill=INK, font=self.font)
            rotated = text.rotate(90, expand=True)
            self.image.paste(rotated, (4, int((y0 + y1 - rotated.height) / 2)))

    def _ticks(self, ticks: Sequence | None, span: tuple[float, float]) -> list[tuple[float, str]]:
        ticks = nice_ticks(*span) if ticks is None else ticks
        return [t if isinstance(t, tuple) else (t, _label(t)) for t in ticks]

    def at(self, x: float, y: float) -> tuple[float, float]:
        """Pixel position of the data point (x, y)."""
        (a, b), (c, d), (x0, y0, x1, y1) = self.x_range, self.y_range, self.box
        return x0 + (x - a) / (b - a) * (x1 - x0), y1 - (y - c) / (d - c) * (y1 - y0)

    def _key(self, label: str | None, colour) -> None:
        if label is not None:
            self.entries.append((label, colour))

    def line(self, xs, ys, colour, label: str | None = None, width: int = 2, marker: int = 3) -> None:
        """A polyline through (xs, ys), a dot on every point when ``marker`` (its radius) is not 0."""
        points = [self.at(x, y) for x, y in zip(xs, ys, strict=True)]
        if len(points) > 1:
            self.draw.line(points, fill=colour, width=width, joint="curve")
        if marker:
            self.points(xs, ys, colour, radius=marker)
        self._key(label, colour)

    def points(
        self, xs, ys, colour, label: str | None = None, radius: int = 4, texts: Sequence | None = None, below=False
    ) -> None:
        """Dots at (xs, ys), each with its text from ``texts`` beside it (above right, or with ``below`` below
        right, so that two series through the same points keep their texts apart)."""
        for k, (x, y) in enumerate(zip(xs, ys, strict=True)):
            px, py = self.at(x, y)
            self.draw.ellipse([px - radius, py - radius, px + radius, py + radius], fill=colour)
            if texts is not None and texts[k]:
                at, anchor = ((px + radius, py + 3), "lt") if below else ((px + radius + 3, py - 2), "lb")
                self.draw.text(at, str(texts[k]), fill=colour, font=self.small, anchor=anchor)
        self._key(label, colour)

    def bars(self, lefts, rights, heights, colour, label: str | None = None) -> None:
        """Filled bars from y = 0 (data units) over [left, right] each."""
        for left, right, height in zip(lefts, rights, heights, strict=True):
            if height:
                (px0, py), (px1, base) = self.at(left, height), self.at(right, 0)
                self.draw.rectangle([px0, py, px1, base], fill=colour, outline="white")
        self._key(label, colour)

    def vline(self, x: float, colour, label: str | None = None) -> None:
        """A dashed vertical line at ``x`` (none outside the x range)."""
        if not min(self.x_range) <= x <= max(self.x_range):
            return
        px = self.at(x, 0)[0]
        y0, y1 = self.box[1], self.box[3]
        for y in range(int(y0), int(y1), 8):  # dashed, so that bars under it still show
            self.draw.line([px, y, px, min(y + 4, y1)], fill=colour, width=2)
        self._key(label, colour)

    def legend(self, corner: str = "top right") -> None:
        """The labelled series in a ``corner`` of the plot ("top right", "bottom left", ...)."""
        if not self.entries:
            return
        width = max(self.draw.textlength(label, font=self.small) for label, _ in self.entries) + 26
        height = 18 * len(self.entries) + 4
        x1 = self.box[2] - 8 if "right" in corner else self.box[0] + 8 + width
        y0 = self.box[1] + 8 if "top" in corner else self.box[3] - 8 - height
        self.draw.rectangle([x1 - width, y0, x1, y0 + height], fill="white", outline=GREY)
        for k, (label, colour) in enumerate(self.entries):
            y = y0 + 4 + 18 * k
            self.draw.rectangle([x1 - width + 6, y + 3, x1 - width + 16, y + 13], fill=colour)
            self.draw.text((x1 - width + 22, y + 1), label, fill=INK, font=self.small)


def histogram(groups: dict[str, tuple[Sequence[int], tuple]], edges: Sequence[float], **axes) -> Axes:
    """Bars of per-bin counts (bins ``[edges[i], edges[i + 1])``, e.g. from :func:`bin_counts`), the groups' bars
    side by side within each bin; ``groups`` maps a label to (counts, colour); ``axes`` go to :class:`Axes`."""
    top = max([1, *(c for counts, _ in groups.values() for c in counts)])
    y_ticks = [t for t in nice_ticks(0, top, 4) if float(t).is_integer()]
    plot = Axes((edges[0], edges[-1]), (0, top * 1.15), y_ticks=y_ticks, **axes)
    share = 0.8 / max(len(groups), 1)  # of each bin's width, per group
    for k, (name, (counts, colour)) in enumerate(groups.items()):
        lefts = [a + (b - a) * (0.1 + k * share) for a, b in zip(edges, edges[1:])]
        rights = [a + (b - a) * (0.1 + (k + 1) * share) for a, b in zip(edges, edges[1:])]
        plot.bars(lefts, rights, counts, colour, label=f"{name} ({sum(counts)})")
    return plot


def bin_counts(values: Sequence[float], edges: Sequence[float]) -> list[int]:
    """How many ``values`` fall in each bin ``[edges[i], edges[i + 1])``, the last one closed (NumPy's rule)."""
    return np.histogram(np.asarray(values, np.float64), bins=np.asarray(edges, np.float64))[0].tolist()


def side_by_side(images: Sequence[Image.Image]) -> Image.Image:
    """The images in one row, top-aligned on white."""
    sheet = Image.new("RGB", (sum(i.width for i in images), max(i.height for i in images)), "white")
    x = 0
    for image in images:
        sheet.paste(image, (x, 0))
        x += image.width
    return sheet
