"""Stage ``split``: cut each two-panel image into a (reference, target) pair and locate the subject in each panel.

The left panel gives the reference (its subject's crop, as UNO's references are subject crops), the right panel
the target image; the right subject's crop is kept too, for the similarity filter. Where the subject is comes from
a locator, registered by name in :data:`LOCATORS` as a factory ``config -> locate``; ``locate(records, panels)``
takes a batch of records with their ``(left, right)`` panel images and returns, per record, a :class:`Location` for
each panel (a box ``(x0, y0, x1, y1)`` in panel pixels and what the pair record should say about it):

- ``world``: the world's exact knowledge of the prompt's spec (its deterministic layout), no image analysis;
- ``panel``: the whole panel (for vocabularies without a locator);
- ``detector``: an open-vocabulary detector (:class:`unoflux.synth.detect.Detector`: OWL-ViT, OWLv2, Grounding
  DINO) queried with the record's subject phrase, every panel of a batch in one forward pass; a panel where no box
  scores above ``detector_threshold`` falls back to the whole panel and is recorded as not located
  (``reference_located`` / ``target_located`` false, with ``reference_score`` / ``target_score``, None then);
- ``masks``: your masks, ``masks/KEY_left.png`` and ``KEY_right.png`` (white = the subject), scaled to the panel;
  the box is the mask's bounding box (a missing or empty mask stops the run, naming the file).

Records are located ``batch_size`` at a time in fixed batches of the record list (a batch a kill interrupted is
located again whole), so a resumed run gives the boxes of an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..errors import UnofluxError
from ..images import save_png
from ..world.render import layout_boxes
from ..world.specs import TwoPanelSpec
from .config import SynthConfig
from .detect import Box, Detector
from .generate import IMAGES, stage_inputs
from .manifest import Manifest, remove_partial_files

PAIRS = "pairs.jsonl"
SIDES = ("reference", "target")  # the left panel's subject, the right panel's: the pair record's field prefixes
MASK_SIDES = ("left", "right")  # mask file names: KEY_left.png, KEY_right.png


@dataclass(frozen=True)
class Location:
    """One panel's subject: its box in panel pixels (before the margin) and fields for the pair record, written with
    the panel's prefix (``located`` -> ``reference_located`` / ``target_located``)."""

    box: Box
    fields: dict = field(default_factory=dict)


Panels = tuple[Image.Image, Image.Image]  # (left, right), each side x side
Locate = Callable[[list[dict], list[Panels]], list[tuple[Location, Location]]]


def world_locator(record: dict, side: int) -> tuple[Box, Box]:
    """Each panel's subject box from the spec's layout (the renderer's own placement of it)."""
    spec = TwoPanelSpec.from_dict(record["spec"])
    boxes = []
    for scene in (spec.left, spec.right):
        ((cx, cy, w, h),) = layout_boxes(scene)  # fractions of the panel's height (= its side)
        boxes.append(_pixels(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, side))
    return boxes[0], boxes[1]


def panel_locator(record: dict, side: int) -> tuple[Box, Box]:
    return (0, 0, side, side), (0, 0, side, side)


def _per_record(boxes: Callable[[dict, int], tuple[Box, Box]]) -> Callable[[SynthConfig], Locate]:
    """A locator factory from a function of one record and the panel side (no image analysis)."""

    def locate(records: list[dict], panels: list[Panels]) -> list[tuple[Location, Location]]:
        return [
            tuple(Location(box) for box in boxes(record, left.height))
            for record, (left, _) in zip(records, panels, strict=True)
        ]

    return lambda config: locate


class DetectorLocator:
    """The detector's best box for the record's subject phrase (world records: the look their caption names), or the
    whole panel, marked not located, when no box scores above ``detector_threshold``."""

    def __init__(self, config: SynthConfig) -> None:
        self.detector = Detector(config.detector, config.device, config.detector_threshold)

    def __call__(self, records: list[dict], panels: list[Panels]) -> list[tuple[Location, Location]]:
        images = [panel for pair in panels for panel in pair]  # (left, right) of each record, in record order
        queries = [record["subject"] for record in records for _ in MASK_SIDES]
        found = self.detector.boxes(images, queries)
        locations = []
        for image, best in zip(images, found, strict=True):
            if best is None:
                locations.append(Location((0, 0, image.width, image.height), {"located": False, "score": None}))
            else:
                locations.append(Location(best[0], {"located": True, "score": best[1]}))
        return list(zip(locations[0::2], locations[1::2], strict=True))


def masks_locator(config: SynthConfig) -> Locate:
    def locate(records: list[dict], panels: list[Panels]) -> list[tuple[Location, Location]]:
        return [
            tuple(
                mask_location(Path(config.masks) / f"{record['key']}_{name}.png", panel.height)
                for name, panel in zip(MASK_SIDES, pair)
            )
            for record, pair in zip(records, panels, strict=True)
        ]

    return locate


def mask_location(path: Path, side: int) -> Location:
    """The bounding box of ``path``'s white pixels (grey level >= 128) once the mask is scaled (nearest) to the
    ``side`` x ``side`` panel."""
    if not path.is_file():
        raise UnofluxError(f"mask {str(path)!r} does not exist; locator masks needs KEY_left.png and KEY_right.png")
    with Image.open(path) as opened:
        mask = opened.convert("L")
    if mask.size != (side, side):
        mask = mask.resize((side, side), Image.Resampling.NEAREST)
    ys, xs = np.nonzero(np.asarray(mask) >= 128)
    if not len(xs):
        raise UnofluxError(f"mask {str(path)!r} is empty; white (>= 128) must mark the panel's subject")
    return Location((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1), {"mask": str(path)})


LOCATORS: dict[str, Callable[[SynthConfig], Locate]] = {
    "world": _per_record(world_locator),
    "panel": _per_record(panel_locator),
    "detector": DetectorLocator,
    "masks": masks_locator,
}


def _pixels(x0: float, y0: float, x1: float, y1: float, side: int) -> Box:
    return (round(x0 * side), round(y0 * side), round(x1 * side), round(y1 * side))


def grown(box: Box, margin: float, side: int) -> Box:
    """``box`` grown by ``margin`` of its width / height on each side, clipped to the panel."""
    x0, y0, x1, y1 = box
    dx, dy = round((x1 - x0) * margin), round((y1 - y0) * margin)
    return (max(0, x0 - dx), max(0, y0 - dy), min(side, x1 + dx), min(side, y1 + dy))


def load_panels(config: SynthConfig, record: dict) -> Panels:
    """The record's two-panel image cut into its (left, right) panels."""
    with Image.open(Path(config.output_dir) / record["image"]) as opened:
        image = opened.convert("RGB")
    side = image.height
    return image.crop((0, 0, side, side)), image.crop((side, 0, 2 * side, side))


def split_record(config: SynthConfig, record: dict, panels: Panels, located: tuple[Location, Location]) -> dict:
    """Write one record's reference crop, target panel and target crop; return its pair record."""
    out = Path(config.output_dir)
    left, right = panels
    side = left.height
    left_box, right_box = (grown(location.box, config.margin, side) for location in located)
    key = record["key"]
    files = {
        "reference": (left.crop(left_box), f"pairs/{key}_reference.png"),
        "target": (right, f"pairs/{key}_target.png"),
        "target_crop": (right.crop(right_box), f"pairs/{key}_target_crop.png"),
    }
    for name, (crop, path) in files.items():
        save_png(crop, out / path, {"source": record["image"], "part": name, "prompt": record["prompt"]})
    return {
        **{k: v for k, v in record.items() if k not in ("image", "width", "height")},
        **{name: path for name, (_, path) in files.items()},
        "source": record["image"],
        "reference_box": list(left_box),
        "target_box": list(right_box),
        **{f"{prefix}_{k}": v for prefix, location in zip(SIDES, located) for k, v in location.fields.items()},
        "locator": config.locator,
    }


def run_split(config: SynthConfig, progress: bool = True) -> Path:
    """Write ``pairs.jsonl`` and ``pairs/KEY_{reference,target,target_crop}.png`` for every generated image."""
    records = stage_inputs(config, IMAGES, "split")
    manifest = Manifest(Path(config.output_dir) / PAIRS)
    remove_partial_files(Path(config.output_dir) / "pairs")
    batches = [records[i : i + config.batch_size] for i in range(0, len(records), config.batch_size)]
    todo = [batch for batch in batches if any(r["key"] not in manifest for r in batch)]
    locate = LOCATORS[config.locator](config) if todo else None  # a detector loads only when there is work
    for batch in tqdm(todo, desc="split", unit="batch", disable=not progress):
        panels = [load_panels(config, record) for record in batch]
        for record, pair, located in zip(batch, panels, locate(batch, panels), strict=True):
            if record["key"] not in manifest:
                manifest.append(split_record(config, record, pair, located))
    return manifest.path
