"""Subjects: a category look that text can name, plus identity details that only a seed fixes.

The look is (shape, colour, pattern). The details (a smooth contour warp, the pattern's shade,
angle, period and phase, and a small emblem in a neutral accent colour at a seed-chosen spot) are
what a reference image carries beyond its caption: a subject-driven model must copy them.

Identities are split once and for all by seed: seeds >= HELDOUT_SEED_START are held out from
every training set, and the evaluation set uses a fixed list of them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from .raster import erode
from .vocab import ACCENTS, COLOURS, EMBLEMS, PATTERNS, SHAPES

HELDOUT_SEED_START = 1_000_000_000
HELDOUT_COUNT = 64
_OUTLINE_POINTS = 240  # dense outlines so that the warp bends straight edges too


@dataclass(frozen=True)
class Identity:
    """One subject. `look` is what text says; the other fields are its seed-drawn details."""

    seed: int
    shape: str
    colour: str
    pattern: str
    warp: tuple[tuple[float, float, float, float, float], ...]  # (amp_x, amp_y, freq_x, freq_y, phase)
    pattern_shade: float  # how far the pattern colour is mixed towards black
    pattern_angle: float  # degrees
    pattern_period: float  # in units of the subject's largest side
    pattern_phase: tuple[float, float]
    emblem: str
    emblem_xy: tuple[float, float]  # centre, in units of the largest side, relative to the box centre
    emblem_radius: float
    emblem_angle: float  # degrees
    accent: str

    @property
    def look(self) -> tuple[str, str, str]:
        return (self.shape, self.colour, self.pattern)

    @property
    def is_heldout(self) -> bool:
        return self.seed >= HELDOUT_SEED_START

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Identity:
        return cls(
            seed=int(data["seed"]),
            shape=data["shape"],
            colour=data["colour"],
            pattern=data["pattern"],
            warp=tuple(tuple(float(v) for v in term) for term in data["warp"]),
            pattern_shade=float(data["pattern_shade"]),
            pattern_angle=float(data["pattern_angle"]),
            pattern_period=float(data["pattern_period"]),
            pattern_phase=tuple(float(v) for v in data["pattern_phase"]),
            emblem=data["emblem"],
            emblem_xy=tuple(float(v) for v in data["emblem_xy"]),
            emblem_radius=float(data["emblem_radius"]),
            emblem_angle=float(data["emblem_angle"]),
            accent=data["accent"],
        )


def make_identity(
    seed: int, shape: str | None = None, colour: str | None = None, pattern: str | None = None
) -> Identity:
    """The identity of `seed`. A look field left as None is drawn from the seed too.

    Details depend on the seed only (not on the look), so fixing the look and varying the seed
    gives different identities of the same category look.
    """
    if seed < 0:
        raise ValueError(f"identity seed must be >= 0, got {seed}")
    look_rng = np.random.default_rng([seed, 1])
    drawn = (
        SHAPES[look_rng.integers(len(SHAPES))],
        list(COLOURS)[look_rng.integers(len(COLOURS))],
        PATTERNS[look_rng.integers(len(PATTERNS))],
    )
    shape, colour, pattern = shape or drawn[0], colour or drawn[1], pattern or drawn[2]
    for value, allowed, what in ((shape, SHAPES, "shape"), (colour, COLOURS, "colour"), (pattern, PATTERNS, "pattern")):
        if value not in allowed:
            raise ValueError(f"unknown {what} {value!r}; choose from {sorted(allowed)}")

    rng = np.random.default_rng([seed, 2])
    warp = tuple(
        (
            _r(rng.uniform(-0.022, 0.022)),
            _r(rng.uniform(-0.022, 0.022)),
            _r(rng.uniform(0.5, 1.6)),
            _r(rng.uniform(0.5, 1.6)),
            _r(rng.uniform(0, 2 * math.pi)),
        )
        for _ in range(3)
    )
    emblem = EMBLEMS[rng.integers(len(EMBLEMS))]
    accent = list(ACCENTS)[rng.integers(len(ACCENTS))]
    period = _r(rng.uniform(0.2, 0.27) if pattern != "checkered" else rng.uniform(0.24, 0.32))
    details = dict(
        pattern_shade=_r(rng.uniform(0.3, 0.45)),
        pattern_angle=_r(rng.uniform(-60, 60)),
        pattern_period=period,
        pattern_phase=(_r(rng.uniform(0, 1)), _r(rng.uniform(0, 1))),
        emblem_angle=_r(rng.uniform(-40, 40)),
    )
    radius = rng.uniform(0.075, 0.11)
    xy, radius = _emblem_spot(shape, warp, emblem, radius, rng)
    return Identity(
        seed=seed,
        shape=shape,
        colour=colour,
        pattern=pattern,
        warp=warp,
        emblem=emblem,
        emblem_xy=xy,
        emblem_radius=_r(radius),
        accent=accent,
        **details,
    )


def _r(value: float) -> float:
    # Rounded so that the JSON form is short and round-trips exactly.
    return round(float(value), 4)


# ----------------------------------------------------------------------------------------- outlines
def _resample(points: np.ndarray, count: int) -> np.ndarray:
    """`count` points evenly spaced along the closed polygon `points`."""
    closed = np.vstack([points, points[:1]])
    seg = np.linalg.norm(np.diff(closed, axis=0), axis=1)
    cum = np.concatenate([[0], np.cumsum(seg)])
    targets = np.linspace(0, cum[-1], count, endpoint=False)
    x = np.interp(targets, cum, closed[:, 0])
    y = np.interp(targets, cum, closed[:, 1])
    return np.stack([x, y], axis=1)


def _regular(n: int, radius: float = 1.0, start_deg: float = -90.0) -> np.ndarray:
    angles = np.deg2rad(start_deg + 360.0 * np.arange(n) / n)
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)


def canonical_outline(shape: str) -> np.ndarray:
    """The shape's polygon in image orientation (y down), before normalisation."""
    t = np.linspace(0, 2 * math.pi, _OUTLINE_POINTS, endpoint=False)
    if shape == "circle":
        return np.stack([np.cos(t), np.sin(t)], axis=1)
    if shape == "square":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float)
    if shape == "triangle":
        return np.array([[0, -1], [1.05, 0.82], [-1.05, 0.82]], float)
    if shape == "diamond":
        return np.array([[0, -1], [0.72, 0], [0, 1], [-0.72, 0]], float)
    if shape == "star":
        outer, inner = _regular(5, 1.0), _regular(5, 0.45, -90 + 36)
        return np.stack([outer, inner], axis=1).reshape(-1, 2)
    if shape == "cross":
        a = 0.36
        return np.array(
            [
                [-a, -1],
                [a, -1],
                [a, -a],
                [1, -a],
                [1, a],
                [a, a],
                [a, 1],
                [-a, 1],
                [-a, a],
                [-1, a],
                [-1, -a],
                [-a, -a],
            ],
            float,
        )
    if shape == "heart":
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        return np.stack([x, y], axis=1) / 16
    if shape == "moon":
        # Unit circle minus a circle of radius r centred at (d, 0): a crescent opening to the right.
        d, r = 0.5, 0.85
        x_meet = (1 + d * d - r * r) / (2 * d)
        a_out = math.atan2(math.sqrt(1 - x_meet**2), x_meet)
        a_in = math.atan2(math.sqrt(1 - x_meet**2), x_meet - d)
        outer = np.linspace(a_out, 2 * math.pi - a_out, 160)
        inner = np.linspace(2 * math.pi - a_in, a_in, 100)
        return np.vstack(
            [np.stack([np.cos(outer), np.sin(outer)], 1), np.stack([d + r * np.cos(inner), r * np.sin(inner)], 1)]
        )
    raise ValueError(f"unknown shape {shape!r}")


@lru_cache(maxsize=4096)
def outline(shape: str, warp: tuple = ()) -> tuple[np.ndarray, float, float]:
    """(points, width, height): the warped outline centred in its box, largest side 1."""
    points = _resample(canonical_outline(shape), _OUTLINE_POINTS)
    points = _normalise(points)
    for ax, ay, fx, fy, phase in warp:
        dx = ax * np.sin(2 * math.pi * fy * points[:, 1] + phase)
        dy = ay * np.sin(2 * math.pi * fx * points[:, 0] + phase * 1.7)
        points = points + np.stack([dx, dy], axis=1)
    points = _normalise(points)
    width, height = np.ptp(points, axis=0)
    points.setflags(write=False)
    return points, float(width), float(height)


def _normalise(points: np.ndarray) -> np.ndarray:
    lo, hi = points.min(axis=0), points.max(axis=0)
    return (points - (lo + hi) / 2) / (hi - lo).max()


def outline_mask(shape: str, warp: tuple, size: int) -> np.ndarray:
    """The outline rasterised (no anti-aliasing) in a size x size unit box; for geometry tests."""
    points, _, _ = outline(shape, warp)
    img = Image.new("L", (size, size), 0)
    ImageDraw.Draw(img).polygon([tuple(p) for p in (points + 0.5) * size], fill=255)
    return np.asarray(img) > 127


def _emblem_spot(
    shape: str, warp: tuple, emblem: str, radius: float, rng: np.random.Generator
) -> tuple[tuple[float, float], float]:
    """A centre deep enough inside the body for the emblem; shrinks the emblem for thin shapes."""
    grid = 64
    mask = outline_mask(shape, warp, grid)
    reach = 1.25 if emblem == "eyes" else 1.05  # eyes are wider than one radius
    while True:
        inner = erode(mask, max(1, math.ceil(radius * reach * grid)))
        ys, xs = np.nonzero(inner)
        if len(xs) or radius < 0.03:
            break
        radius *= 0.85
    if len(xs) == 0:  # cannot happen for the shapes above; keep a safe fallback anyway
        return (0.0, 0.0), radius
    pick = rng.integers(len(xs))
    return (_r((xs[pick] + 0.5) / grid - 0.5), _r((ys[pick] + 0.5) / grid - 0.5)), radius


# ----------------------------------------------------------------------------------------- identities
def heldout_identities() -> tuple[Identity, ...]:
    """The fixed evaluation identities: every (shape, colour) pair once, patterns in rotation."""
    colours = list(COLOURS)
    result = []
    for i in range(HELDOUT_COUNT):
        shape = SHAPES[i % len(SHAPES)]
        colour = colours[(i // len(SHAPES) + i) % len(colours)]
        pattern = PATTERNS[(i // len(SHAPES) + i // 2) % len(PATTERNS)]
        result.append(make_identity(HELDOUT_SEED_START + i, shape, colour, pattern))
    return tuple(result)


# Same-look stand-ins for subject-fidelity scoring live far above the evaluation identities (still held out).
_DISTRACTOR_SEED_START = HELDOUT_SEED_START + 100_000_000


def same_look_distractors(identity: Identity, count: int) -> tuple[Identity, ...]:
    """`count` other identities with exactly `identity`'s look (shape, colour, pattern): what a model that
    follows only the caption would draw. Fixed per identity, never trained on."""
    base = _DISTRACTOR_SEED_START + (identity.seed % 1_000_000) * 64
    return tuple(make_identity(base + k, *identity.look) for k in range(count))


def heldout_seeds() -> frozenset[int]:
    return frozenset(range(HELDOUT_SEED_START, HELDOUT_SEED_START + HELDOUT_COUNT))


def training_identity(rng: np.random.Generator) -> Identity:
    """A random identity for training; its seed is below the held-out range by construction."""
    identity = make_identity(int(rng.integers(0, HELDOUT_SEED_START)))
    assert not identity.is_heldout
    return identity


def sample_training_identities(count: int, seed: int) -> list[Identity]:
    rng = np.random.default_rng([seed, 7])
    return [training_identity(rng) for _ in range(count)]
