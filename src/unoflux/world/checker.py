"""Exact checks of an image against the scene spec it was meant to show, without ground-truth masks.

Method (all numpy):
1. Background kind: each kind's colour set is known per horizontal band (learned once from empty
   renders). The kind whose band colour sets explain the most pixels of the matching bands wins;
   subjects are saturated and explained by no kind, so they do not bias the vote.
2. Subjects: pixels farther than `BACKGROUND_DISTANCE` from every colour of the detected kind are
   foreground; morphology removes stars and snowflakes, holes are filled, and the largest
   connected components are the subjects.
3. Per subject: placement from the box centre's third, size from the box's largest side, colour
   by a vote of saturated pixels over colour families (each palette colour and its darker pattern
   shades), shape by IoU of the box-normalised mask with every canonical shape, pattern from the
   share of darker pixels and the orientation coherence of their edges (stripes are coherent).
4. Identity fidelity: the crop is compared to a render of the identity at the same size (mask IoU
   and colour agreement), which rewards its contour, emblem and pattern phase, not only its look.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from .backgrounds import paint_background
from .raster import box_of, close_mask, erode, fill_holes, label_components
from .render import render_sprite, supersampling
from .specs import SceneSpec, SubjectSpec, TwoPanelSpec
from .subjects import Identity, outline
from .vocab import BACKGROUNDS, COLOURS, SHAPES, placement_of_x, size_of_extent

BACKGROUND_DISTANCE = 30.0  # RGB distance within which a pixel is explained by the background
_BANDS = 4
_QUANT = 8  # colour bins of 8 RGB units: palettes stay small and lookups fast
_SHAPE_GRID = 32
_FIDELITY_GRID = 48


# ----------------------------------------------------------------------------------------- verdicts
@dataclass(frozen=True)
class SubjectVerdict:
    expected: tuple[str, str, str, str, str]  # shape, colour, pattern, placement, size
    found: bool
    box: tuple[int, int, int, int] | None = None
    shape: str | None = None
    colour: str | None = None
    pattern: str | None = None
    placement: str | None = None
    size: str | None = None
    shape_iou: float = 0.0
    fidelity: float = 0.0  # similarity to a render of the intended identity, 0..1

    @property
    def shape_ok(self) -> bool:
        return self.found and self.shape == self.expected[0]

    @property
    def colour_ok(self) -> bool:
        return self.found and self.colour == self.expected[1]

    @property
    def pattern_ok(self) -> bool:
        return self.found and self.pattern == self.expected[2]

    @property
    def placement_ok(self) -> bool:
        return self.found and self.placement == self.expected[3]

    @property
    def size_ok(self) -> bool:
        return self.found and self.size == self.expected[4]

    @property
    def look_ok(self) -> bool:
        return self.shape_ok and self.colour_ok and self.pattern_ok

    @property
    def all_ok(self) -> bool:
        return self.look_ok and self.placement_ok and self.size_ok

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(
            {
                k: getattr(self, k)
                for k in ("shape_ok", "colour_ok", "pattern_ok", "placement_ok", "size_ok", "look_ok", "all_ok")
            }
        )
        return data

    @classmethod
    def from_dict(cls, data: dict) -> SubjectVerdict:
        """The verdict :meth:`to_dict` wrote (the derived ``*_ok`` keys are recomputed, not read)."""
        values = {f.name: data[f.name] for f in fields(cls)}
        values["expected"] = tuple(values["expected"])
        values["box"] = None if values["box"] is None else tuple(values["box"])
        return cls(**values)


@dataclass(frozen=True)
class SceneVerdict:
    background: str
    expected_background: str
    background_scores: dict[str, float]
    subjects: tuple[SubjectVerdict, ...]
    components: int  # subject-sized foreground regions found
    relation_ok: bool  # found subjects are in the spec's left-to-right order

    @property
    def background_ok(self) -> bool:
        return self.background == self.expected_background

    @property
    def count_ok(self) -> bool:
        return self.components == len(self.subjects)

    @property
    def all_ok(self) -> bool:
        return self.background_ok and self.count_ok and self.relation_ok and all(s.all_ok for s in self.subjects)

    def to_dict(self) -> dict:
        return {
            "background": self.background,
            "expected_background": self.expected_background,
            "background_ok": self.background_ok,
            "background_scores": self.background_scores,
            "components": self.components,
            "count_ok": self.count_ok,
            "relation_ok": self.relation_ok,
            "all_ok": self.all_ok,
            "subjects": [s.to_dict() for s in self.subjects],
        }

    @classmethod
    def from_dict(cls, data: dict) -> SceneVerdict:
        """The verdict :meth:`to_dict` wrote (a report's), for summaries computed again from stored records."""
        subjects = tuple(SubjectVerdict.from_dict(s) for s in data["subjects"])
        keys = ("background", "expected_background", "background_scores", "components", "relation_ok")
        return cls(subjects=subjects, **{k: data[k] for k in keys})


@dataclass(frozen=True)
class TwoPanelVerdict:
    left: SceneVerdict
    right: SceneVerdict
    same_look: bool  # both panels' subjects classified with the same shape, colour and pattern
    panel_similarity: float  # appearance similarity of the two found subjects, 0..1

    @property
    def all_ok(self) -> bool:
        return self.left.all_ok and self.right.all_ok and self.same_look

    def to_dict(self) -> dict:
        return {
            "left": self.left.to_dict(),
            "right": self.right.to_dict(),
            "same_look": self.same_look,
            "panel_similarity": self.panel_similarity,
            "all_ok": self.all_ok,
        }

    @classmethod
    def from_dict(cls, data: dict) -> TwoPanelVerdict:
        left, right = SceneVerdict.from_dict(data["left"]), SceneVerdict.from_dict(data["right"])
        return cls(left, right, data["same_look"], data["panel_similarity"])


# ----------------------------------------------------------------------------------------- knowledge
@dataclass(frozen=True)
class _Palette:
    everywhere: np.ndarray  # (P, 3) bin centres seen anywhere in this kind
    bands: tuple[np.ndarray, ...] = field(default=())  # per horizontal band


def _bin_codes(pixels: np.ndarray) -> np.ndarray:
    """One integer per pixel naming its colour bin (1-D unique is much faster than unique rows)."""
    q = pixels.reshape(-1, 3).astype(np.int32) // _QUANT
    return (q[:, 0] * 256 + q[:, 1]) * 256 + q[:, 2]


def _bin_centres(codes: np.ndarray) -> np.ndarray:
    q = np.stack([codes // 65536, (codes // 256) % 256, codes % 256], axis=1)
    return q.astype(np.float32) * _QUANT + _QUANT / 2


def _bins(pixels: np.ndarray, min_share: float = 2e-4) -> np.ndarray:
    """Centres of the colour bins holding at least `min_share` of the pixels: rare bins are mostly
    LANCZOS overshoot at sharp edges, and keeping them would let a kind explain foreign colours."""
    codes, counts = np.unique(_bin_codes(pixels), return_counts=True)
    return _bin_centres(codes[counts >= max(2, min_share * counts.sum())])


@lru_cache(maxsize=1)
def background_palettes() -> dict[str, _Palette]:
    """Colour sets of each background kind, overall and per band, from empty renders."""
    palettes = {}
    for kind in BACKGROUNDS:
        images = []
        for seed in range(6):
            canvas = paint_background(kind, 512, 512, np.random.default_rng([1_000 + seed, 4]))
            images += [np.asarray(canvas.resize((s, s), Image.LANCZOS)) for s in (64, 128, 256)]
        bands = tuple(
            _bins(np.concatenate([band for img in images for band in _split_bands(img)[b : b + 1]]))
            for b in range(_BANDS)
        )
        palettes[kind] = _Palette(_bins(np.concatenate([img.reshape(-1, 3) for img in images])), bands)
    return palettes


def _split_bands(image: np.ndarray) -> list[np.ndarray]:
    edges = np.linspace(0, image.shape[0], _BANDS + 1).round().astype(int)
    return [image[edges[b] : edges[b + 1]].reshape(-1, 3) for b in range(_BANDS)]


def _distance_to(pixels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Distance from every pixel (N, 3 uint8) to its nearest palette colour, via unique bins."""
    codes, inverse = np.unique(_bin_codes(pixels), return_inverse=True)
    centres = _bin_centres(codes)
    nearest = np.full(len(centres), np.inf, np.float32)
    for start in range(0, len(palette), 512):
        chunk = palette[start : start + 512]
        d = np.sqrt(((centres[:, None, :] - chunk[None]) ** 2).sum(-1)).min(axis=1)
        nearest = np.minimum(nearest, d)
    return nearest[inverse.ravel()]


@lru_cache(maxsize=1)
def _colour_families() -> tuple[np.ndarray, np.ndarray]:
    """Every palette colour with its pattern shades: (colours (K, 3), family index (K,))."""
    shades = np.linspace(0, 0.5, 11)
    colours = np.array([np.array(rgb, np.float32) * (1 - s) for rgb in COLOURS.values() for s in shades])
    family = np.repeat(np.arange(len(COLOURS)), len(shades))
    return colours, family


@lru_cache(maxsize=1)
def _shape_templates() -> dict[str, np.ndarray]:
    templates = {}
    for shape in SHAPES:
        points, w, h = outline(shape, ())
        img = Image.new("L", (_SHAPE_GRID * 4, _SHAPE_GRID * 4), 0)
        scale = np.array([_SHAPE_GRID * 4 / w, _SHAPE_GRID * 4 / h])  # stretch the box to the grid
        ImageDraw.Draw(img).polygon([tuple(p) for p in (points + np.array([w, h]) / 2) * scale], fill=255)
        templates[shape] = np.asarray(img.resize((_SHAPE_GRID, _SHAPE_GRID), Image.BOX)) > 127
    return templates


# ----------------------------------------------------------------------------------------- analysis
def classify_background(image: np.ndarray) -> tuple[str, dict[str, float]]:
    """(kind, score per kind): the share of each band's pixels that the kind's band colours explain."""
    palettes = background_palettes()
    bands = _split_bands(image)
    scores = {}
    for kind, palette in palettes.items():
        explained = [np.mean(_distance_to(px, pal) < BACKGROUND_DISTANCE) for px, pal in zip(bands, palette.bands)]
        scores[kind] = round(float(np.mean(explained)), 4)
    return max(scores, key=scores.get), scores


def segment_subjects(image: np.ndarray, background: str) -> list[np.ndarray]:
    """Masks of subject-sized foreground regions, largest first."""
    h, w, _ = image.shape
    distance = _distance_to(image.reshape(-1, 3), background_palettes()[background].everywhere).reshape(h, w)
    smallest_box = (0.22 * h) ** 2
    # Drop specks (stars, snowflakes, edge overshoot) before closing can glue them to a subject;
    # an opening would do it too but would also cut star tips.
    foreground = _without_small_components(distance > BACKGROUND_DISTANCE, 0.02 * smallest_box)
    foreground = fill_holes(close_mask(foreground, 1 if h >= 96 else 0))
    labels, count = label_components(foreground)
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    order = [i + 1 for i in np.argsort(-areas, kind="stable") if areas[i] >= 0.1 * smallest_box]
    return [labels == i for i in order]


def _without_small_components(mask: np.ndarray, min_area: float) -> np.ndarray:
    labels, count = label_components(mask)
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    keep = areas >= min_area
    keep[0] = False
    return keep[labels]


def _interior(mask: np.ndarray) -> np.ndarray:
    inner = erode(mask, 1)
    return inner if inner.sum() >= 12 else mask


def classify_colour(image: np.ndarray, mask: np.ndarray) -> str:
    pixels = image[_interior(mask)].astype(np.float32)
    saturated = pixels[(pixels.max(1) - pixels.min(1)) > 40]  # neutral emblems carry no colour vote
    pixels = saturated if len(saturated) else pixels
    colours, family = _colour_families()
    nearest = family[np.argmin(((pixels[:, None, :] - colours[None]) ** 2).sum(-1), axis=1)]
    return list(COLOURS)[int(np.bincount(nearest, minlength=len(COLOURS)).argmax())]


def _box_normalised(mask: np.ndarray, grid: int) -> np.ndarray:
    x0, y0, x1, y1 = box_of(mask)
    crop = Image.fromarray(mask[y0:y1, x0:x1].astype(np.uint8) * 255)
    return np.asarray(crop.resize((grid, grid), Image.BILINEAR)) > 127


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def classify_shape(mask: np.ndarray) -> tuple[str, float]:
    normalised = _box_normalised(mask, _SHAPE_GRID)
    ious = {shape: _iou(normalised, template) for shape, template in _shape_templates().items()}
    best = max(ious, key=ious.get)
    return best, round(ious[best], 4)


def classify_pattern(image: np.ndarray, mask: np.ndarray, colour: str) -> str:
    """Plain, dotted, striped or checkered, from how much of the body is a darker shade and how
    consistently oriented the shade's edges are."""
    inner = _interior(mask)
    pixels = image.astype(np.float32)
    main = np.array(COLOURS[colour], np.float32)
    # Darkness relative to the main colour: 0 for the main colour, s for a pattern shade (1 - s).
    shade = 1 - (pixels @ main) / float(main @ main)
    saturated = (pixels.max(-1) - pixels.min(-1)) > 40
    usable = inner & saturated
    if usable.sum() < 8:
        return "plain"
    coverage = float(np.mean(shade[usable] > 0.16))
    if coverage < 0.1:
        return "plain"
    dark = np.where(inner, (shade > 0.16).astype(np.float32), 0.0)
    gy, gx = np.gradient(dark)
    both = inner & erode(inner, 1)
    jxx, jyy, jxy = (gx[both] ** 2).sum(), (gy[both] ** 2).sum(), (gx[both] * gy[both]).sum()
    coherence = float(np.sqrt((jxx - jyy) ** 2 + 4 * jxy**2) / max(jxx + jyy, 1e-6))
    if coherence > 0.4:
        return "striped"
    return "dotted" if coverage < 0.36 else "checkered"


# ----------------------------------------------------------------------------------------- fidelity
def _identity_crop(identity: Identity, box_w: int, box_h: int) -> tuple[np.ndarray, np.ndarray]:
    """The identity rendered to fill a box_w x box_h box: (rgb float HxWx3, mask HxW)."""
    extent = max(box_w, box_h)
    ss = supersampling(extent)
    rgb, alpha, _ = render_sprite(identity, extent * ss)
    h, w = alpha.shape
    h_out, w_out = max(1, h // ss), max(1, w // ss)
    rgba = np.dstack([rgb, alpha[..., None] * 255]).clip(0, 255).astype(np.uint8)
    small = np.asarray(Image.fromarray(rgba, "RGBA").resize((w_out, h_out), Image.LANCZOS), np.float32)
    mask = small[..., 3] > 127
    x0, y0, x1, y1 = box_of(mask)
    return small[y0:y1, x0:x1, :3], mask[y0:y1, x0:x1]


def _normalised_crop(rgb: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x0, y0, x1, y1 = box_of(mask)
    size = (_FIDELITY_GRID, _FIDELITY_GRID)
    crop = Image.fromarray(rgb[y0:y1, x0:x1].clip(0, 255).astype(np.uint8)).resize(size, Image.BILINEAR)
    return np.asarray(crop, np.float32), _box_normalised(mask, _FIDELITY_GRID)


def appearance_similarity(rgb_a: np.ndarray, mask_a: np.ndarray, rgb_b: np.ndarray, mask_b: np.ndarray) -> float:
    """0..1: half mask IoU after box normalisation, half colour agreement on the shared pixels."""
    a, ma = _normalised_crop(rgb_a, mask_a)
    b, mb = _normalised_crop(rgb_b, mask_b)
    both = ma & mb
    if not both.any():
        return 0.0
    colour_agreement = 1 - float(np.abs(a[both] - b[both]).mean()) / 96
    return round(0.5 * _iou(ma, mb) + 0.5 * max(colour_agreement, 0.0), 4)


def subject_fidelity(image: np.ndarray, mask: np.ndarray, identity: Identity) -> float:
    """How closely the masked subject matches `identity` itself, beyond its category look."""
    x0, y0, x1, y1 = box_of(mask)
    ref_rgb, ref_mask = _identity_crop(identity, x1 - x0, y1 - y0)
    return appearance_similarity(image.astype(np.float32), mask, ref_rgb, ref_mask)


def identity_match(
    image: Image.Image | np.ndarray,
    background: str,
    box: tuple[int, int, int, int],
    identity: Identity,
    distractors: tuple[Identity, ...],
) -> tuple[float, list[float]]:
    """Fidelity of the subject found at `box` to `identity` and to each same-look distractor.

    The subject shows *this* identity (not just its look) when the first beats all the others: a
    caption-only model wins that by chance, 1 in len(distractors) + 1.
    """
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)[..., :3]
    mask = _mask_in_box(pixels, background, box)
    return (subject_fidelity(pixels, mask, identity), [subject_fidelity(pixels, mask, other) for other in distractors])


# ----------------------------------------------------------------------------------------- checks
@dataclass(frozen=True)
class _Found:
    mask: np.ndarray
    box: tuple[int, int, int, int]
    shape: str
    shape_iou: float
    colour: str
    pattern: str
    placement: str
    size: str


def _describe(image: np.ndarray, mask: np.ndarray) -> _Found:
    h, w, _ = image.shape
    box = box_of(mask)
    shape, iou = classify_shape(mask)
    colour = classify_colour(image, mask)
    return _Found(
        mask,
        box,
        shape,
        iou,
        colour,
        classify_pattern(image, mask, colour),
        placement_of_x((box[0] + box[2]) / 2 / w),
        size_of_extent(max(box[2] - box[0], box[3] - box[1]) / h),
    )


def _agreement(found: _Found, spec: SubjectSpec) -> int:
    ident = spec.identity
    return (
        (found.colour == ident.colour) * 4
        + (found.shape == ident.shape) * 2
        + (found.pattern == ident.pattern)
        + (found.placement == spec.placement)
    )


def check_scene(image: Image.Image | np.ndarray, spec: SceneSpec, with_fidelity: bool = True) -> SceneVerdict:
    """Judge a square scene image against `spec`."""
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)[..., :3]
    background, scores = classify_background(pixels)
    regions = segment_subjects(pixels, background)
    found = [_describe(pixels, m) for m in regions[: len(spec.subjects) + 1]]

    # Pair found regions with intended subjects by appearance (best total agreement).
    wanted = list(spec.subjects)
    best: tuple[int, tuple[int | None, ...]] = (-1, tuple([None] * len(wanted)))
    candidates = list(range(len(found))) + [None] * len(wanted)
    # unique picks in permutation order (the first of equal totals wins): a set's order of tuples holding None
    # changes from process to process (None hashes by address before Python 3.12), and with it the verdict on ties
    for pick in dict.fromkeys(itertools.permutations(candidates, len(wanted))):
        total = sum(_agreement(found[i], s) for i, s in zip(pick, wanted) if i is not None)
        if total > best[0]:
            best = (total, pick)

    verdicts = []
    for index, subject in zip(best[1], wanted):
        ident = subject.identity
        expected = (ident.shape, ident.colour, ident.pattern, subject.placement, subject.size)
        if index is None:
            verdicts.append(SubjectVerdict(expected, found=False))
            continue
        f = found[index]
        fidelity = subject_fidelity(pixels, f.mask, ident) if with_fidelity else 0.0
        verdicts.append(
            SubjectVerdict(
                expected, True, f.box, f.shape, f.colour, f.pattern, f.placement, f.size, f.shape_iou, fidelity
            )
        )
    xs = [v.box[0] + v.box[2] for v in verdicts if v.found]
    relation_ok = all(v.found for v in verdicts) and xs == sorted(xs)
    return SceneVerdict(background, spec.background, scores, tuple(verdicts), len(regions), relation_ok)


def check_two_panel(image: Image.Image | np.ndarray, spec: TwoPanelSpec, with_fidelity: bool = True) -> TwoPanelVerdict:
    """Judge a two-panel image (width = 2 x height): each panel, and whether both show the same look."""
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)[..., :3]
    half = pixels.shape[1] // 2
    left_pixels, right_pixels = pixels[:, :half], pixels[:, half : 2 * half]
    left = check_scene(left_pixels, spec.left, with_fidelity)
    right = check_scene(right_pixels, spec.right, with_fidelity)
    a, b = left.subjects[0], right.subjects[0]
    same_look = a.found and b.found and (a.shape, a.colour, a.pattern) == (b.shape, b.colour, b.pattern)
    similarity = 0.0
    if a.found and b.found:
        mask_a = _mask_in_box(left_pixels, left.background, a.box)
        mask_b = _mask_in_box(right_pixels, right.background, b.box)
        similarity = appearance_similarity(
            left_pixels.astype(np.float32), mask_a, right_pixels.astype(np.float32), mask_b
        )
    return TwoPanelVerdict(left, right, bool(same_look), similarity)


def _mask_in_box(pixels: np.ndarray, background: str, box: tuple[int, int, int, int]) -> np.ndarray:
    for mask in segment_subjects(pixels, background):
        if box_of(mask) == box:
            return mask
    raise AssertionError("a found subject's region vanished")  # segmentation is deterministic


def check(
    image: Image.Image, spec: SceneSpec | TwoPanelSpec, with_fidelity: bool = True
) -> SceneVerdict | TwoPanelVerdict:
    if isinstance(spec, TwoPanelSpec):
        return check_two_panel(image, spec, with_fidelity)
    return check_scene(image, spec, with_fidelity)


__all__ = [
    "SubjectVerdict",
    "SceneVerdict",
    "TwoPanelVerdict",
    "check",
    "check_scene",
    "check_two_panel",
    "classify_background",
    "segment_subjects",
    "classify_colour",
    "classify_shape",
    "classify_pattern",
    "subject_fidelity",
    "identity_match",
    "appearance_similarity",
    "BACKGROUND_DISTANCE",
]
