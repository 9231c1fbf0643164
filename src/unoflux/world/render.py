"""Rendering at any resolution: everything is drawn on a ~512 px supersampled canvas in
resolution-free units and downscaled once with LANCZOS, so 64, 128 and 256 px all look clean.
Every render returns exact per-subject masks and boxes alongside the image."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .backgrounds import paint_background
from .raster import box_of, rle_encode
from .specs import SceneSpec, SubjectSpec, TwoPanelSpec
from .subjects import Identity, outline
from .vocab import ACCENTS, COLOURS, PLACEMENTS, REFERENCE_BACKGROUND, REFERENCE_FILL, SIZES

_CANVAS_TARGET = 512
_MARGIN = 0.02  # keep subjects this far (fraction of height) from the image border


@dataclass(frozen=True)
class RenderedSubject:
    identity: Identity
    placement: str | None  # None on reference shots
    size: str | None
    mask: np.ndarray  # bool, image-sized: the subject's visible pixels
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive) in image pixels
    panel: int | None = None  # 0 = left, 1 = right on two-panel images

    def to_dict(self) -> dict:
        return {
            "identity": self.identity.to_dict(),
            "placement": self.placement,
            "size": self.size,
            "box": list(self.box),
            "panel": self.panel,
            "mask_rle": rle_encode(self.mask),
        }


@dataclass(frozen=True)
class Rendered:
    image: Image.Image
    kind: str  # "reference", "scene" or "two_panel"
    backgrounds: tuple[str, ...]  # one per panel; ("plain",) on reference shots
    subjects: tuple[RenderedSubject, ...]

    def metadata(self) -> dict:
        """JSON-ready description with masks as run-length encodings."""
        return {
            "kind": self.kind,
            "width": self.image.width,
            "height": self.image.height,
            "backgrounds": list(self.backgrounds),
            "subjects": [s.to_dict() for s in self.subjects],
        }


def supersampling(size: int) -> int:
    return max(2, round(_CANVAS_TARGET / size))


# ----------------------------------------------------------------------------------------- sprites
def _pattern_mask(identity: Identity, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Where the pattern colour goes, from unit coordinates (u, v) inside the subject's box."""
    if identity.pattern == "plain":
        return np.zeros(u.shape, bool)
    theta = math.radians(identity.pattern_angle)
    a = (u * math.cos(theta) + v * math.sin(theta)) / identity.pattern_period + identity.pattern_phase[0]
    b = (-u * math.sin(theta) + v * math.cos(theta)) / identity.pattern_period + identity.pattern_phase[1]
    if identity.pattern == "striped":
        return (a - np.floor(a)) < 0.42
    if identity.pattern == "checkered":
        return (np.floor(a) + np.floor(b)) % 2 == 1
    if identity.pattern == "dotted":
        return (a - np.round(a)) ** 2 + (b - np.round(b)) ** 2 < 0.28**2
    raise ValueError(f"unknown pattern {identity.pattern!r}")


def _draw_emblem(draw: ImageDraw.ImageDraw, identity: Identity, centre: tuple[float, float], extent: float) -> None:
    cx, cy = centre[0] + identity.emblem_xy[0] * extent, centre[1] + identity.emblem_xy[1] * extent
    r = identity.emblem_radius * extent
    colour = ACCENTS[identity.accent]
    angle = math.radians(identity.emblem_angle)
    along, across = (math.cos(angle), math.sin(angle)), (-math.sin(angle), math.cos(angle))

    def bar(length: float, thickness: float, direction: tuple[float, float], normal: tuple[float, float]) -> None:
        corners = [
            (
                cx + sa * length * direction[0] + sb * thickness * normal[0],
                cy + sa * length * direction[1] + sb * thickness * normal[1],
            )
            for sa, sb in ((-1, -1), (1, -1), (1, 1), (-1, 1))
        ]
        draw.polygon(corners, fill=colour)

    def disc(x: float, y: float, radius: float) -> None:
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour)

    if identity.emblem == "dot":
        disc(cx, cy, r)
    elif identity.emblem == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=max(1, round(0.4 * r)))
    elif identity.emblem == "bar":
        bar(r, 0.36 * r, along, across)
    elif identity.emblem == "plus":
        bar(r, 0.3 * r, along, across)
        bar(r, 0.3 * r, across, along)
    elif identity.emblem == "triangle":
        draw.polygon(
            [
                (cx + r * math.cos(angle + k * 2 * math.pi / 3), cy + r * math.sin(angle + k * 2 * math.pi / 3))
                for k in range(3)
            ],
            fill=colour,
        )
    elif identity.emblem == "eyes":
        for side in (-1, 1):
            disc(cx + side * 0.75 * r * along[0], cy + side * 0.75 * r * along[1], 0.45 * r)
    else:
        raise ValueError(f"unknown emblem {identity.emblem!r}")


def render_sprite(identity: Identity, extent: float) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """(rgb float32 HxWx3, alpha float32 HxW, box centre in sprite pixels) for a subject whose
    largest side is `extent` pixels. Drawn without anti-aliasing: callers supersample."""
    points, width, height = outline(identity.shape, identity.warp)
    pad = 2
    w_px, h_px = math.ceil(width * extent) + 2 * pad, math.ceil(height * extent) + 2 * pad
    centre = (w_px / 2, h_px / 2)
    alpha_img = Image.new("L", (w_px, h_px), 0)
    ImageDraw.Draw(alpha_img).polygon([(centre[0] + x * extent, centre[1] + y * extent) for x, y in points], fill=255)

    ys, xs = np.mgrid[0:h_px, 0:w_px].astype(np.float32)
    u, v = (xs + 0.5 - centre[0]) / extent, (ys + 0.5 - centre[1]) / extent
    main = np.array(COLOURS[identity.colour], np.float32)
    rgb = np.broadcast_to(main, (h_px, w_px, 3)).copy()
    rgb[_pattern_mask(identity, u, v)] = main * (1 - identity.pattern_shade)

    colour_img = Image.fromarray(rgb.astype(np.uint8), "RGB")
    _draw_emblem(ImageDraw.Draw(colour_img), identity, centre, extent)
    return (np.asarray(colour_img, np.float32), np.asarray(alpha_img, np.float32) / 255.0, centre)


# ----------------------------------------------------------------------------------------- layout
def layout_boxes(spec: SceneSpec, aspect: float = 1.0) -> list[tuple[float, float, float, float]]:
    """Each subject's box (cx, cy, w, h) in fractions of the image height; deterministic from the
    spec. A subject stays inside the image and inside its placement's third."""
    width = aspect
    boxes = []
    for index, subject in enumerate(spec.subjects):
        rng = np.random.default_rng([spec.seed, 3, index])
        _, w_ratio, h_ratio = outline(subject.identity.shape, subject.identity.warp)
        w, h = w_ratio * SIZES[subject.size], h_ratio * SIZES[subject.size]
        third = list(PLACEMENTS).index(subject.placement)
        lo = max(w / 2 + _MARGIN, third * width / 3 + 0.01)
        hi = min(width - w / 2 - _MARGIN, (third + 1) * width / 3 - 0.01)
        cx = float(np.clip(PLACEMENTS[subject.placement] * width + rng.uniform(-0.03, 0.03), lo, hi))
        cy = float(np.clip(0.6 + rng.uniform(-0.05, 0.05), h / 2 + _MARGIN, 1 - h / 2 - _MARGIN))
        boxes.append((cx, cy, w, h))
    return boxes


def boxes_overlap(boxes: list[tuple[float, float, float, float]], gap: float = 0.05) -> bool:
    for i, (ax, ay, aw, ah) in enumerate(boxes):
        for bx, by, bw, bh in boxes[i + 1 :]:
            if abs(ax - bx) < (aw + bw) / 2 + gap and abs(ay - by) < (ah + bh) / 2 + gap:
                return True
    return False


# ----------------------------------------------------------------------------------------- images
def _composite(canvas: np.ndarray, identity: Identity, centre: tuple[float, float], extent: float) -> np.ndarray:
    """Paint the subject on `canvas` in place; returns its alpha over the whole canvas."""
    rgb, alpha, sprite_centre = render_sprite(identity, extent)
    x0, y0 = round(centre[0] - sprite_centre[0]), round(centre[1] - sprite_centre[1])
    h, w = alpha.shape
    full_alpha = np.zeros(canvas.shape[:2], np.float32)
    cy0, cx0 = max(y0, 0), max(x0, 0)
    cy1, cx1 = min(y0 + h, canvas.shape[0]), min(x0 + w, canvas.shape[1])
    sy, sx = slice(cy0 - y0, cy1 - y0), slice(cx0 - x0, cx1 - x0)
    a = alpha[sy, sx][..., None]
    canvas[cy0:cy1, cx0:cx1] = canvas[cy0:cy1, cx0:cx1] * (1 - a) + rgb[sy, sx] * a
    full_alpha[cy0:cy1, cx0:cx1] = alpha[sy, sx]
    return full_alpha


def _finish(
    canvas: np.ndarray, alphas: list[np.ndarray], size: tuple[int, int], ss: int
) -> tuple[Image.Image, list[np.ndarray]]:
    """Downscale the canvas (LANCZOS) and turn supersampled alphas into visible-pixel masks."""
    image = Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8), "RGB").resize(size, Image.LANCZOS)
    visible = []
    for i, alpha in enumerate(alphas):
        for later in alphas[i + 1 :]:  # later subjects occlude earlier ones
            alpha = alpha * (1 - later)
        coverage = alpha.reshape(size[1], ss, size[0], ss).mean(axis=(1, 3))
        visible.append(coverage > 0.5)
    return image, visible


def _subject(
    identity: Identity, placement: str | None, size: str | None, mask: np.ndarray, panel: int | None = None
) -> RenderedSubject:
    box = box_of(mask) or (0, 0, 0, 0)
    return RenderedSubject(identity, placement, size, mask, box, panel)


def render_reference(identity: Identity, size: int = 128) -> Rendered:
    """A product shot: the subject alone, centred and large, on a plain light background."""
    ss = supersampling(size)
    canvas = np.empty((size * ss, size * ss, 3), np.float32)
    canvas[:] = REFERENCE_BACKGROUND
    c = size * ss / 2
    alpha = _composite(canvas, identity, (c, c), REFERENCE_FILL * size * ss)
    image, (mask,) = _finish(canvas, [alpha], (size, size), ss)
    return Rendered(image, "reference", ("plain",), (_subject(identity, None, None, mask),))


def render_scene(spec: SceneSpec, size: int = 128) -> Rendered:
    """A square scene: the background kind with its subjects at their placements and sizes."""
    ss = supersampling(size)
    side = size * ss
    background = paint_background(spec.background, side, side, np.random.default_rng([spec.seed, 4]))
    canvas = np.asarray(background, np.float32).copy()
    alphas = []
    for subject, (cx, cy, _, _) in zip(spec.subjects, layout_boxes(spec)):
        alphas.append(_composite(canvas, subject.identity, (cx * side, cy * side), SIZES[subject.size] * side))
    image, masks = _finish(canvas, alphas, (size, size), ss)
    subjects = tuple(_subject(s.identity, s.placement, s.size, m) for s, m in zip(spec.subjects, masks))
    return Rendered(image, "scene", (spec.background,), subjects)


def render_two_panel(spec: TwoPanelSpec, size: int = 128) -> Rendered:
    """Two square scenes side by side: an image `size` high and 2 * `size` wide."""
    image = Image.new("RGB", (2 * size, size))
    subjects: list[RenderedSubject] = []
    for panel, scene in enumerate((spec.left, spec.right)):
        rendered = render_scene(scene, size)
        image.paste(rendered.image, (panel * size, 0))
        for s in rendered.subjects:
            mask = np.zeros((size, 2 * size), bool)
            mask[:, panel * size : (panel + 1) * size] = s.mask
            subjects.append(_subject(s.identity, s.placement, s.size, mask, panel))
    return Rendered(image, "two_panel", (spec.left.background, spec.right.background), tuple(subjects))


def render(spec: SceneSpec | TwoPanelSpec | Identity, size: int = 128) -> Rendered:
    """Render any spec: an Identity gives its reference shot."""
    if isinstance(spec, Identity):
        return render_reference(spec, size)
    if isinstance(spec, TwoPanelSpec):
        return render_two_panel(spec, size)
    return render_scene(spec, size)


def single(identity: Identity, background: str, placement: str, size: str, seed: int) -> SceneSpec:
    """Shorthand for a one-subject scene spec."""
    return SceneSpec(background, (SubjectSpec(identity, placement, size),), seed)
