"""The split stage's detector and masks locators: a tiny random OWL-ViT in the official layout run end to end
(plumbing, determinism, resume, the threshold's fallback; a random detector finds nothing real, so its boxes are
checked for where they may lie, not for what they hold), and user masks whose bounding boxes become the boxes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unoflux.errors import UnofluxError
from unoflux.synth import Manifest, SynthConfig, read_manifest, run_synth
from unoflux.synth.detect import Detector, pixel_box
from unoflux.synth.generate import IMAGES
from unoflux.synth.tiny import save_tiny_detector
from unoflux.world.render import render_two_panel
from unoflux.world.specs import TwoPanelSpec

from .test_synth import _rendered_generation

SIZE = 64


@pytest.fixture(scope="module")
def dino(tmp_path_factory):
    """A stand-in DINOv2 folder: user vocabularies need similarity dinov2, which the split stage never loads."""
    folder = tmp_path_factory.mktemp("dino")
    (folder / "config.json").write_text("{}")
    return str(folder)


@pytest.fixture(scope="module")
def owl(tmp_path_factory):
    """A tiny random OWL-ViT in google/owlvit-base-patch32's layout."""
    return save_tiny_detector(tmp_path_factory.mktemp("owl") / "owlvit-base-patch32")


def _detector_config(root: Path, owl: Path, name: str = "out", **values) -> SynthConfig:
    return SynthConfig(
        output_dir=str(root / name), count=5, size=SIZE, batch_size=2, locator="detector", detector=str(owl), **values
    )


# -------------------------------------------------------------------------------------------------- detector
def test_the_tiny_detector_folder_loads_through_the_auto_classes(owl):
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in owl.iterdir()}
    processor = AutoProcessor.from_pretrained(str(owl), local_files_only=True)
    model, info = AutoModelForZeroShotObjectDetection.from_pretrained(
        str(owl), local_files_only=True, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert type(model).__name__ == "OwlViTForObjectDetection" and model.config.text_config.hidden_size == 16
    assert type(processor).__name__ == "OwlViTProcessor"
    assert type(processor.tokenizer).__name__ == "CLIPTokenizer"
    assert json.loads((owl / "tokenizer_config.json").read_text())["tokenizer_class"] == "CLIPTokenizer"
    ids = processor.tokenizer("a red mug")["input_ids"]
    assert ids[0] == processor.tokenizer.bos_token_id and ids[-1] == processor.tokenizer.eos_token_id == max(ids)


def test_detector_boxes_per_image_and_query(owl):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)) for _ in range(2)]
    detector = Detector(owl, "cpu", threshold=0.0)
    # one image with two queries (as a multi-subject caller asks), another with one
    queries = ["a red mug", "a toy robot", "a red mug"]
    found = detector.boxes([images[0], images[0], images[1]], queries)
    assert len(found) == 3 and all(f is not None for f in found)
    for (x0, y0, x1, y1), score in found:
        assert 0 <= x0 < x1 <= 80 and 0 <= y0 < y1 <= 48 and 0 < score <= 1  # in the image's own pixels
    assert detector.boxes([images[0], images[0], images[1]], queries) == found  # deterministic
    assert Detector(owl, "cpu", threshold=1.0 - 1e-9).boxes(images, queries[:2]) == [None, None]  # nothing clears
    assert detector.boxes([], []) == []
    with pytest.raises(UnofluxError, match="2 images need 2 queries, not 1"):
        detector.boxes(images, ["a red mug"])


def test_pixel_boxes_cover_the_float_box_and_stay_in_the_image():
    assert pixel_box([1.2, 2.7, 10.1, 20.0], 64, 32) == (1, 2, 11, 20)
    assert pixel_box([-5.0, -1.0, 70.0, 40.0], 64, 32) == (0, 0, 64, 32)
    assert pixel_box([63.5, 31.9, 63.6, 31.95], 64, 32) == (63, 31, 64, 32)  # at least one pixel


def test_a_non_detector_folder_is_one_sentence(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava"}))
    with pytest.raises(UnofluxError, match="holds a 'llava' model; supported: owlvit, owlv2, grounding-dino"):
        Detector(tmp_path, "cpu")


def test_the_detector_locator_end_to_end_is_deterministic_and_resumes(tmp_path, owl):
    config = _detector_config(tmp_path, owl)
    _rendered_generation(config, wrong=set())
    run_synth(config, ["split", "filter-similarity", "report"])
    out = Path(config.output_dir)
    pairs = read_manifest(out / "pairs.jsonl")
    assert len(pairs) == 5
    for pair in pairs:
        for side in ("reference", "target"):
            x0, y0, x1, y1 = pair[f"{side}_box"]
            assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE
            assert pair[f"{side}_located"] is True and 0.1 < pair[f"{side}_score"] <= 1  # the default threshold
        x0, y0, x1, y1 = pair["reference_box"]
        with Image.open(out / pair["reference"]) as crop:
            assert crop.size == (x1 - x0, y1 - y0)
        assert pair["locator"] == "detector"
    whole = (out / "pairs.jsonl").read_bytes()
    crops = {p.name: p.read_bytes() for p in (out / "pairs").iterdir()}

    # the same images in another folder: the same bytes
    again = _detector_config(tmp_path, owl, "again")
    _rendered_generation(again, wrong=set())
    run_synth(again, ["split"])
    assert (Path(again.output_dir) / "pairs.jsonl").read_bytes() == whole

    # a run killed inside its second batch (one record of it written, a torn line after it) resumes to the same bytes
    lines = whole.splitlines(keepends=True)
    (out / "pairs.jsonl").write_bytes(b"".join(lines[:3]) + b'{"key": "00')
    run_synth(config, ["split"])
    assert (out / "pairs.jsonl").read_bytes() == whole
    assert {p.name: p.read_bytes() for p in (out / "pairs").iterdir()} == crops


def test_panels_without_a_box_above_the_threshold_fall_back_to_the_whole_panel(tmp_path, owl):
    scored = _detector_config(tmp_path, owl, "scored", detector_threshold=0.0)
    _rendered_generation(scored, wrong=set())
    run_synth(scored, ["split"])
    before = read_manifest(Path(scored.output_dir) / "pairs.jsonl")
    scores = sorted(p[f"{side}_score"] for p in before for side in ("reference", "target"))
    threshold = (scores[4] + scores[5]) / 2  # between two of the 10 panels' best scores: some located, some not
    assert scores[4] < threshold < scores[5]

    config = _detector_config(tmp_path, owl, detector_threshold=threshold)
    _rendered_generation(config, wrong=set())
    run_synth(config, ["split", "filter-similarity", "report"])
    after = read_manifest(Path(config.output_dir) / "pairs.jsonl")
    fallbacks = 0
    for old, new in zip(before, after, strict=True):
        for side in ("reference", "target"):
            if old[f"{side}_score"] > threshold:  # the same best box: the threshold only decides whether it counts
                assert new[f"{side}_located"] and new[f"{side}_box"] == old[f"{side}_box"]
                assert new[f"{side}_score"] == old[f"{side}_score"]
            else:
                assert new[f"{side}_located"] is False and new[f"{side}_score"] is None
                assert new[f"{side}_box"] == [0, 0, SIZE, SIZE]
                fallbacks += 1
    assert fallbacks == 5
    report = json.loads((Path(config.output_dir) / "report.json").read_text())
    not_located = sum(not p[f"{s}_located"] for p in after for s in ("reference", "target"))
    assert sum(report["not_located"].values()) == not_located == 5
    missed = report["not_located"]
    assert (
        f"did not locate the subject in {missed['reference']} reference and {missed['target']} target panels of 5 pairs"
        in (Path(config.output_dir) / "report.md").read_text()
    )


def test_the_detector_is_asked_for_each_records_subject_phrase(tmp_path, owl, dino, monkeypatch):
    asked = []
    boxes = Detector.boxes

    def spy(self, images, queries):
        asked.extend(queries)
        return boxes(self, images, queries)

    monkeypatch.setattr(Detector, "boxes", spy)
    config = SynthConfig(
        output_dir=str(tmp_path / "user"),
        count=3,
        size=SIZE,
        batch_size=2,
        subjects=["a red mug", "a toy robot"],
        scenes=["on a desk", "in a garden"],
        locator="detector",
        detector=str(owl),
        similarity="dinov2",
        dino=dino,
    )
    run_synth(config, ["prompts"])
    out = Path(config.output_dir)
    manifest = Manifest(out / IMAGES)
    rng = np.random.default_rng(1)
    (out / "images").mkdir()
    prompts = read_manifest(out / "prompts.jsonl")
    for record in prompts:  # any two-panel image will do: the test is about the query
        path = f"images/{record['key']}.png"
        Image.fromarray(rng.integers(0, 256, (SIZE, 2 * SIZE, 3), dtype=np.uint8)).save(out / path)
        manifest.append({**record, "image": path, "width": 2 * SIZE, "height": SIZE})
    run_synth(config, ["split"])
    assert asked == [r["subject"] for r in prompts for _ in "lr"]  # both panels of each record, the user's phrase
    assert set(asked) <= {"a red mug", "a toy robot"}

    world = _detector_config(tmp_path, owl, "world")
    _rendered_generation(world, wrong=set())
    asked.clear()
    run_synth(world, ["split"])
    looks = [r["subject"] for r in read_manifest(Path(world.output_dir) / "prompts.jsonl")]
    assert asked == [look for look in looks for _ in "lr"] and "the same" not in asked[0]  # the look, not a caption


# ----------------------------------------------------------------------------------------------------- masks
def _write_masks(config: SynthConfig, folder: Path, scale: int = 1) -> dict[str, tuple[list[int], list[int]]]:
    """Each record's rendered subject masks as the user's masks (at ``scale`` times the panel's size); the bounding
    boxes they mark, per key."""
    folder.mkdir(exist_ok=True)
    boxes = {}
    for record in read_manifest(Path(config.output_dir) / IMAGES):
        left, right = (s.mask for s in render_two_panel(TwoPanelSpec.from_dict(record["spec"]), config.size).subjects)
        sides = []
        for name, panel in (("left", left[:, : config.size]), ("right", right[:, config.size :])):
            ys, xs = np.nonzero(panel)
            sides.append([int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1])
            image = Image.fromarray((panel * 255).astype(np.uint8))
            image.resize((config.size * scale,) * 2, Image.Resampling.NEAREST).save(
                folder / f"{record['key']}_{name}.png"
            )
        boxes[record["key"]] = (sides[0], sides[1])
    return boxes


@pytest.mark.parametrize("scale", [1, 2])  # a mask at twice the panel's size is scaled to it
def test_the_masks_locator_boxes_are_the_masks_bounding_boxes(tmp_path, scale):
    masks = tmp_path / "masks"
    masks.mkdir()
    config = SynthConfig(
        output_dir=str(tmp_path / "out"), count=3, size=SIZE, locator="masks", masks=str(masks), margin=0.0
    )
    _rendered_generation(config, wrong=set())
    expected = _write_masks(config, masks, scale)
    run_synth(config, ["split"])
    world = config.replace(output_dir=str(tmp_path / "world"), locator="world", masks=None)
    _rendered_generation(world, wrong=set())
    run_synth(world, ["split"])
    world_pairs = read_manifest(Path(world.output_dir) / "pairs.jsonl")
    for pair, by_world in zip(read_manifest(tmp_path / "out" / "pairs.jsonl"), world_pairs, strict=True):
        assert (pair["reference_box"], pair["target_box"]) == expected[pair["key"]]
        assert pair["reference_mask"] == str(masks / f"{pair['key']}_left.png")
        assert pair["target_mask"] == str(masks / f"{pair['key']}_right.png")
        # the layout's box (the world locator's) is the subject's box up to its outline's rounding
        for side in ("reference_box", "target_box"):
            assert np.abs(np.subtract(pair[side], by_world[side])).max() <= 0.1 * SIZE
        with Image.open(tmp_path / "out" / pair["target_crop"]) as crop:
            x0, y0, x1, y1 = pair["target_box"]
            assert crop.size == (x1 - x0, y1 - y0)


def test_a_missing_or_empty_mask_is_one_sentence_naming_the_file(tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    config = SynthConfig(output_dir=str(tmp_path / "out"), count=2, size=SIZE, locator="masks", masks=str(masks))
    _rendered_generation(config, wrong=set())
    _write_masks(config, masks)
    (masks / "000001_right.png").unlink()
    with pytest.raises(UnofluxError, match=r"mask '.*000001_right\.png' does not exist"):
        run_synth(config, ["split"])
    Image.new("L", (SIZE, SIZE), 0).save(masks / "000001_right.png")
    with pytest.raises(UnofluxError, match=r"mask '.*000001_right\.png' is empty"):
        run_synth(config, ["split"])


# ---------------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "values, message",
    [
        ({"locator": "owl"}, "locator 'owl' is not one of: world, panel, detector, masks"),
        ({"locator": "detector"}, "detector None must be a detector folder with config.json"),
        ({"locator": "detector", "detector": "/nonexistent/owlv2"}, "detector '/nonexistent/owlv2' must be"),
        ({"detector_threshold": 1.5}, r"detector_threshold 1.5 must be a score in \[0, 1\)"),
        ({"locator": "masks"}, "masks None must be a folder of KEY_left.png and KEY_right.png"),
        ({"locator": "masks", "masks": "/nonexistent/masks"}, "masks '/nonexistent/masks' must be a folder"),
        ({"subjects": ["a"], "scenes": ["b", "c"]}, "use locator panel, detector or masks"),
    ],
)
def test_bad_locator_settings_are_one_sentence(tmp_path, values, message):
    with pytest.raises(UnofluxError, match=message):
        SynthConfig.from_dict({"output_dir": str(tmp_path), **values})


def test_user_vocabularies_take_the_panel_detector_and_masks_locators(tmp_path, owl, dino):
    vocabulary = {
        "subjects": ["a red mug"],
        "scenes": ["on a desk", "in a garden"],
        "similarity": "dinov2",
        "dino": dino,
    }
    for locator, extra in (("panel", {}), ("detector", {"detector": str(owl)}), ("masks", {"masks": str(tmp_path)})):
        config = SynthConfig(output_dir=str(tmp_path / locator), locator=locator, **vocabulary, **extra)
        assert config.locator == locator
