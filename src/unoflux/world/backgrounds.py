"""Procedural backgrounds. Each kind has its own layout and a muted colour set far from the
saturated subject colours, so a checker can tell the kinds apart and cut subjects out."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

from .vocab import BACKGROUNDS, RGB

Painter = Callable[[int, int, np.random.Generator], Image.Image]


def _gradient(width: int, height: int, top: RGB, bottom: RGB, y0: float = 0.0, y1: float = 1.0) -> np.ndarray:
    """A vertical gradient over the whole canvas, reaching `top` at y0 and `bottom` at y1 (fractions)."""
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    t = np.clip((y - y0) / max(y1 - y0, 1e-6), 0, 1)
    colour = (1 - t) * np.array(top, np.float32) + t * np.array(bottom, np.float32)
    return np.broadcast_to(colour[:, None, :], (height, width, 3)).copy()


def _to_image(array: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(array + 0.5, 0, 255).astype(np.uint8), "RGB")


def _below(canvas: np.ndarray, horizon_px: np.ndarray, ground: np.ndarray) -> None:
    """Replace every pixel below the per-column horizon with `ground`."""
    h = canvas.shape[0]
    rows = np.arange(h)[:, None]
    below = rows >= horizon_px[None, :]
    canvas[below] = ground[below]


def _wavy(width: int, height: int, level: float, amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth horizon per column, in pixels."""
    x = np.linspace(0, 1, width)
    phase, freq = rng.uniform(0, 2 * math.pi), rng.uniform(0.8, 2.0)
    return (level + amplitude * np.sin(2 * math.pi * freq * x + phase)) * height


def _dots(
    draw: ImageDraw.ImageDraw,
    width: int,
    height: int,
    count: int,
    y_range: tuple[float, float],
    radius: tuple[float, float],
    colours: list[RGB],
    rng: np.random.Generator,
    ring: bool = False,
) -> None:
    for _ in range(count):
        x, y = rng.uniform(0, width), rng.uniform(*y_range) * height
        r = rng.uniform(*radius) * height
        colour = colours[rng.integers(len(colours))]
        if ring:
            draw.ellipse([x - r, y - r, x + r, y + r], outline=colour, width=max(1, int(r * 0.3)))
        else:
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)


def paint_beach(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    horizon = rng.uniform(0.36, 0.44)
    shore = horizon + rng.uniform(0.13, 0.17)
    canvas = _gradient(width, height, (125, 190, 235), (190, 225, 245), 0, horizon)
    sea = _gradient(width, height, (45, 120, 170), (75, 155, 190), horizon, shore)
    canvas[int(horizon * height) :] = sea[int(horizon * height) :]
    sand = _gradient(width, height, (236, 214, 165), (222, 196, 145), shore, 1)
    _below(canvas, _wavy(width, height, shore, 0.012, rng), sand)
    image = _to_image(canvas)
    draw = ImageDraw.Draw(image)
    for _ in range(5):  # wave crests on the sea
        y = rng.uniform(horizon + 0.02, shore - 0.02) * height
        x0 = rng.uniform(-0.2, 0.8) * width
        draw.line([(x0, y), (x0 + rng.uniform(0.2, 0.5) * width, y)], fill=(150, 200, 220), width=max(1, height // 160))
    _dots(draw, width, height, 40, (shore + 0.03, 1), (0.002, 0.005), [(205, 180, 130)], rng)
    return image


def paint_snow(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    horizon = rng.uniform(0.33, 0.42)
    canvas = _gradient(width, height, (196, 212, 232), (226, 233, 243), 0, horizon)
    ground = _gradient(width, height, (236, 240, 248), (250, 251, 253), horizon, 1)
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    drift = 0.5 + 0.5 * np.sin(2 * math.pi * (x * rng.uniform(1, 2) + y * rng.uniform(3, 5)) + rng.uniform(0, 6))
    ground -= (drift * 14)[..., None] * np.array([1.0, 0.7, 0.2], np.float32)  # blue-grey drift shadows
    _below(canvas, _wavy(width, height, horizon, 0.03, rng), ground)
    image = _to_image(canvas)
    _dots(ImageDraw.Draw(image), width, height, 70, (0, 1), (0.003, 0.008), [(255, 255, 255)], rng)
    return image


def paint_grass(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    horizon = rng.uniform(0.34, 0.42)
    canvas = _gradient(width, height, (145, 198, 240), (200, 228, 245), 0, horizon)
    meadow = _gradient(width, height, (132, 178, 88), (108, 152, 66), horizon, 1)
    _below(canvas, _wavy(width, height, horizon, 0.02, rng), meadow)
    image = _to_image(canvas)
    draw = ImageDraw.Draw(image)
    for _ in range(140):  # grass blades
        x, y = rng.uniform(0, width), rng.uniform(horizon + 0.04, 1.02) * height
        length = rng.uniform(0.015, 0.035) * height
        colour = (88, 128, 52) if rng.random() < 0.6 else (155, 192, 100)
        draw.line([(x, y), (x + rng.uniform(-0.3, 0.3) * length, y - length)], fill=colour, width=max(1, height // 200))
    return image


def paint_night(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    horizon = rng.uniform(0.7, 0.78)
    canvas = _gradient(width, height, (8, 10, 26), (26, 30, 58), 0, horizon)
    ground = _gradient(width, height, (20, 26, 28), (12, 16, 18), horizon, 1)
    _below(canvas, _wavy(width, height, horizon, 0.025, rng), ground)
    image = _to_image(canvas)
    _dots(
        ImageDraw.Draw(image),
        width,
        height,
        60,
        (0, horizon - 0.03),
        (0.002, 0.005),
        [(245, 245, 235), (235, 235, 210), (200, 210, 245)],
        rng,
    )
    return image


def paint_desert(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    horizon = rng.uniform(0.38, 0.46)
    canvas = _gradient(width, height, (246, 228, 190), (240, 208, 165), 0, horizon)
    dune_colours = [(228, 176, 112), (212, 152, 92), (232, 188, 128)]
    for i, level in enumerate(np.linspace(horizon, 0.85, 3)):  # dune ridges, far to near
        dune = np.broadcast_to(np.array(dune_colours[i], np.float32), canvas.shape).copy()
        _below(canvas, _wavy(width, height, level, 0.04, rng), dune)
    return _to_image(canvas)


def paint_room(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    floor_at = rng.uniform(0.62, 0.7)
    canvas = np.empty((height, width, 3), np.float32)
    canvas[:] = (206, 196, 180)
    stripe_every = rng.uniform(0.06, 0.09) * height
    stripe = (np.arange(width) % stripe_every) < stripe_every * 0.35
    canvas[:, stripe] = (194, 182, 166)  # wallpaper
    canvas[int(floor_at * height) :] = (152, 110, 74)
    image = _to_image(canvas)
    draw = ImageDraw.Draw(image)
    y_floor = floor_at * height
    plank = rng.uniform(0.05, 0.08) * height
    y = y_floor + plank
    while y < height:  # floor boards
        draw.line([(0, y), (width, y)], fill=(126, 88, 58), width=max(1, height // 170))
        y += plank
    draw.rectangle([0, y_floor - 0.02 * height, width, y_floor], fill=(238, 236, 228))  # skirting
    wx = rng.uniform(0.08, 0.62) * width
    wy = rng.uniform(0.08, 0.16) * height
    ww, wh = 0.28 * height, 0.26 * height
    draw.rectangle([wx, wy, wx + ww, wy + wh], fill=(238, 236, 228))  # window frame and panes
    draw.rectangle(
        [wx + 0.02 * height, wy + 0.02 * height, wx + ww - 0.02 * height, wy + wh - 0.02 * height], fill=(182, 212, 232)
    )
    draw.line([(wx + ww / 2, wy), (wx + ww / 2, wy + wh)], fill=(238, 236, 228), width=max(1, height // 120))
    return image


def paint_underwater(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    floor_at = rng.uniform(0.82, 0.88)
    canvas = _gradient(width, height, (125, 205, 218), (70, 152, 178), 0, floor_at)
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    rays = np.clip(np.sin(2 * math.pi * (x * 3 + y * 0.8) + rng.uniform(0, 6)), 0, 1) ** 4
    canvas += (rays * (1 - y) * 25)[..., None] * np.array([0.8, 0.7, 0.5], np.float32)
    floor = np.broadcast_to(np.array((168, 158, 118), np.float32), canvas.shape).copy()
    _below(canvas, _wavy(width, height, floor_at, 0.02, rng), floor)
    image = _to_image(canvas)
    _dots(
        ImageDraw.Draw(image),
        width,
        height,
        22,
        (0.05, floor_at - 0.05),
        (0.006, 0.014),
        [(200, 238, 245)],
        rng,
        ring=True,
    )
    return image


def paint_city(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    street_at = rng.uniform(0.74, 0.8)
    canvas = _gradient(width, height, (184, 194, 210), (216, 220, 228), 0, street_at)
    canvas[int(street_at * height) :] = (78, 78, 84)
    image = _to_image(canvas)
    draw = ImageDraw.Draw(image)
    x = -rng.uniform(0, 0.1) * width
    greys = [(122, 124, 132), (98, 101, 110), (140, 142, 150)]
    while x < width:  # building silhouettes with windows
        w = rng.uniform(0.12, 0.22) * height
        top = rng.uniform(0.12, 0.45) * height
        draw.rectangle([x, top, x + w, street_at * height], fill=greys[rng.integers(len(greys))])
        step = 0.05 * height
        for wy in np.arange(top + step * 0.6, street_at * height - step, step):
            for wx in np.arange(x + step * 0.5, x + w - step * 0.5, step):
                draw.rectangle([wx, wy, wx + step * 0.4, wy + step * 0.5], fill=(200, 205, 216))
        x += w + rng.uniform(0.0, 0.04) * height
    y = (street_at + (1 - street_at) / 2) * height
    for dash_x in np.arange(0, width, 0.12 * height):  # lane marking
        draw.line([(dash_x, y), (dash_x + 0.06 * height, y)], fill=(222, 222, 214), width=max(1, height // 100))
    return image


PAINTERS: dict[str, Painter] = {
    "beach": paint_beach,
    "snow": paint_snow,
    "grass": paint_grass,
    "night": paint_night,
    "desert": paint_desert,
    "room": paint_room,
    "underwater": paint_underwater,
    "city": paint_city,
}
assert tuple(PAINTERS) == BACKGROUNDS


def paint_background(kind: str, width: int, height: int, rng: np.random.Generator) -> Image.Image:
    if kind not in PAINTERS:
        raise ValueError(f"unknown background {kind!r}; choose from {list(PAINTERS)}")
    return PAINTERS[kind](width, height, rng)
