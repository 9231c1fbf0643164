"""Small binary-mask operations in numpy (no scipy here): morphology, components, holes, RLE."""

from __future__ import annotations

import numpy as np

_NEIGHBOURS_4 = ((0, 1), (0, -1), (1, 0), (-1, 0))


def _shifted(mask: np.ndarray, dy: int, dx: int, fill: bool) -> np.ndarray:
    """`mask` moved by (dy, dx), with `fill` entering from the border."""
    out = np.full_like(mask, fill)
    h, w = mask.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = mask[ys, xs]
    return out


def _disk_offsets(radius: int) -> list[tuple[int, int]]:
    r = radius
    return [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if dy * dy + dx * dx <= r * r + r]


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    if radius <= 0:
        return mask.copy()
    out = np.zeros_like(mask)
    for dy, dx in _disk_offsets(radius):
        out |= _shifted(mask, dy, dx, False)
    return out


def erode(mask: np.ndarray, radius: int) -> np.ndarray:
    if radius <= 0:
        return mask.copy()
    out = np.ones_like(mask)
    for dy, dx in _disk_offsets(radius):
        out &= _shifted(mask, dy, dx, False)
    return out


def close_mask(mask: np.ndarray, radius: int) -> np.ndarray:
    # Pad so that closing does not glue a subject to the image border.
    pad = radius + 1
    padded = np.pad(mask, pad)
    return erode(dilate(padded, radius), radius)[pad:-pad, pad:-pad]


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components: (labels with 0 = background and 1..n, n).

    Label propagation with pointer jumping: every pixel points at the smallest flat index in its
    component; a few dozen vectorised passes replace a per-pixel flood fill.
    """
    h, w = mask.shape
    flat_mask = mask.ravel()
    big = h * w
    parent = np.where(flat_mask, np.arange(big), big)
    grid = parent.reshape(h, w)
    while True:
        best = grid.copy()
        for dy, dx in _NEIGHBOURS_4:
            best = np.minimum(best, _shifted(grid, dy, dx, big))
        best = np.where(mask, best, big)
        flat = best.ravel()
        inside = flat < big
        flat[inside] = flat[flat[inside]]  # pointer jumping
        if np.array_equal(flat, grid.ravel()):
            break
        grid = flat.reshape(h, w)
    roots, labels = np.unique(grid.ravel(), return_inverse=True)
    labels = labels.reshape(h, w)
    if roots[-1] == big:  # background sorts last
        labels = np.where(mask, labels + 1, 0)
        return labels, len(roots) - 1
    return labels + 1, len(roots)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """The mask plus every background region that does not touch the image border."""
    labels, _ = label_components(~mask)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    outside = np.isin(labels, border[border > 0])
    return ~outside


def box_of(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) with exclusive x1/y1, or None for an empty mask."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def rle_encode(mask: np.ndarray) -> dict:
    """Row-major run lengths, starting with a (possibly empty) run of False."""
    flat = np.asarray(mask, dtype=bool).ravel()
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def rle_decode(rle: dict) -> np.ndarray:
    h, w = rle["size"]
    values = np.arange(len(rle["counts"])) % 2 == 1
    return np.repeat(values, rle["counts"]).reshape(h, w)
