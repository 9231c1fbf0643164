"""Stage ``split``: cut each two-panel image into a (reference, target) pair and locate the subject in each panel.

The left panel gives the reference (its subject's crop, as UNO's references are subject crops), the right panel
the target image; the right subject's crop is kept too, for the similarity filter. Where the subject is comes from
a locator, a function ``(record, panel_side) -> (left_box, right_box)`` with boxes ``(x0, y0, x1, y1)`` in panel
pixels, registered by name in :data:`LOCATORS`:

- ``world``: the world's exact knowledge of the prompt's spec (its deterministic layout), no image analysis;
- ``panel``: the whole panel (for vocabularies without a locator yet).

Open-vocabulary detectors (OWLv2, Grounding DINO) and user-supplied masks are not built yet.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from ..images import save_png
from ..world.render import layout_boxes
from ..world.specs import TwoPanelSpec
from .config import SynthConfig
from .generate import IMAGES, stage_inputs
from .manifest import Manifest, remove_partial_files

PAIRS = "pairs.jsonl"
Box = tuple[int, int, int, int]
Locator = Callable[[dict, int], tuple[Box, Box]]


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


LOCATORS: dict[str, Locator] = {"world": world_locator, "panel": panel_locator}


def _pixels(x0: float, y0: float, x1: float, y1: float, side: int) -> Box:
    return (round(x0 * side), round(y0 * side), round(x1 * side), round(y1 * side))


def grown(box: Box, margin: float, side: int) -> Box:
    """``box`` grown by ``margin`` of its width / height on each side, clipped to the panel."""
    x0, y0, x1, y1 = box
    dx, dy = round((x1 - x0) * margin), round((y1 - y0) * margin)
    return (max(0, x0 - dx), max(0, y0 - dy), min(side, x1 + dx), min(side, y1 + dy))


def split_record(config: SynthConfig, record: dict, locate: Locator) -> dict:
    """Write one record's reference crop, target panel and target crop; return its pair record."""
    out = Path(config.output_dir)
    with Image.open(out / record["image"]) as opened:
        image = opened.convert("RGB")
    side = image.height
    left, right = image.crop((0, 0, side, side)), image.crop((side, 0, 2 * side, side))
    left_box, right_box = (grown(b, config.margin, side) for b in locate(record, side))
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
        "locator": config.locator,
    }


def run_split(config: SynthConfig, progress: bool = True) -> Path:
    """Write ``pairs.jsonl`` and ``pairs/KEY_{reference,target,target_crop}.png`` for every generated image."""
    records = stage_inputs(config, IMAGES, "split")
    manifest = Manifest(Path(config.output_dir) / PAIRS)
    remove_partial_files(Path(config.output_dir) / "pairs")
    locate = LOCATORS[config.locator]
    for record in tqdm(records, desc="split", unit="image", disable=not progress):
        if record["key"] not in manifest:
            manifest.append(split_record(config, record, locate))
    return manifest.path
