"""unoflux.metrics: DINO / DINOv2, CLIP-I and CLIP-T pinned against hand computation on tiny random backbones
written in the real models' layouts (config + weights + image processor [+ tokenizer])."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers
from PIL import Image

from tests.conftest import random_image
from unoflux.errors import UnofluxError
from unoflux.metrics import Case, Scorer, apply_mask, default_device, mean_scores, scale_clip_t, score_cases
from unoflux.metrics.tiny import save_tiny_clip, save_tiny_dino

ATOL = 1e-5


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("metric_backbones")
    return {
        "vit": save_tiny_dino(root / "dino-vits16", "vit"),
        "dinov2": save_tiny_dino(root / "dinov2-base", "dinov2"),
        "clip": save_tiny_clip(root / "clip-vit-base-patch32"),
    }


@pytest.fixture(scope="module")
def scorer(folders):
    return Scorer(dino=folders["vit"], clip=folders["clip"], device="cpu", progress=False)


@pytest.fixture(scope="module")
def images():
    # odd sizes and aspect ratios: 303x200 leaves an odd crop margin (torchvision rounds, transformers floors)
    sizes = [(303, 200), (200, 303), (256, 256), (97, 131), (400, 120)]
    return [random_image(w, h, seed=i) for i, (w, h) in enumerate(sizes)]


IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
OPENAI_CLIP = ([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711])


def torchvision_transform(image: Image.Image, resize: int, crop: int, mean_std) -> torch.Tensor:
    """Resize(resize, bicubic) -> CenterCrop(crop) -> ToTensor -> Normalize, written out by hand as torchvision
    computes them (DINO's eval_knn.py with 256/224/ImageNet; OpenAI's clip.load with 224/224/CLIP's)."""
    w, h = image.size
    size = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
    image = image.resize(size, Image.BICUBIC)
    top, left = int(round((image.height - crop) / 2.0)), int(round((image.width - crop) / 2.0))
    image = image.crop((left, top, left + crop, top + crop))
    x = torch.tensor(np.array(image), dtype=torch.float32).permute(2, 0, 1) / 255
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in mean_std)
    return (x - mean) / std


def torchvision_dino_transform(image: Image.Image) -> torch.Tensor:
    return torchvision_transform(image, 256, 224, IMAGENET)


def hand_cls(model, pixels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(pixel_values=pixels).last_hidden_state[:, 0]


@pytest.mark.parametrize("kind", ["vit", "dinov2"])
def test_dino_is_the_cls_cosine_after_dino_eval_transforms(folders, images, kind):
    model_class = transformers.ViTModel if kind == "vit" else transformers.Dinov2Model
    model = model_class.from_pretrained(str(folders[kind]), local_files_only=True).eval()
    pixels = torch.stack([torchvision_dino_transform(im) for im in images])
    cls = hand_cls(model, pixels)
    expected = [F.cosine_similarity(cls[0], cls[i], dim=0).item() for i in range(1, len(images))]

    scorer = Scorer(dino=folders[kind], device="cpu", progress=False)
    assert scorer.dino.kind == kind
    got = scorer.dino_pairs([images[0]] * (len(images) - 1), images[1:])
    np.testing.assert_allclose(got, expected, atol=ATOL)
    assert len(set(np.round(got, 6))) == len(got)  # different images really score differently


def test_protocol_preprocessing_matches_torchvision_rounding(scorer, images):
    got = scorer.dino.processor(images=images, return_tensors="pt")["pixel_values"]
    want = torch.stack([torchvision_dino_transform(im) for im in images])
    assert got.shape == (len(images), 3, 224, 224)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_folder_preprocessing_is_the_folders_processor(folders, images):
    scorer = Scorer(dino=folders["vit"], device="cpu", progress=False, dino_preprocess="folder")
    processor = transformers.AutoImageProcessor.from_pretrained(str(folders["vit"]), use_fast=False)
    model = transformers.ViTModel.from_pretrained(str(folders["vit"]), local_files_only=True).eval()
    cls = hand_cls(model, processor(images=images[:2], return_tensors="pt")["pixel_values"])
    expected = F.cosine_similarity(cls[0], cls[1], dim=0).item()
    assert scorer.dino_pairs([images[0]], [images[1]]) == pytest.approx([expected], abs=ATOL)
    assert scorer.describe()["dino"]["preprocess"] == "folder"
    with pytest.raises(UnofluxError, match="not one of protocol, folder"):
        Scorer(dino=folders["vit"], dino_preprocess="squash", progress=False)


def clip_hand_scores(folder, images, prompts, processor=None):
    model = transformers.CLIPModel.from_pretrained(str(folder), local_files_only=True).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    if processor is None:  # OpenAI's clip.load preprocessing
        pixels = torch.stack([torchvision_transform(im, 224, 224, OPENAI_CLIP) for im in images])
    else:
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        img = model.get_image_features(pixel_values=pixels)
        img = img if isinstance(img, torch.Tensor) else img.pooler_output
        txt = []
        for p in prompts:  # one prompt at a time: no padding at all
            out = model.get_text_features(**tokenizer([p], return_tensors="pt"))
            txt.append(out if isinstance(out, torch.Tensor) else out.pooler_output)
        txt = torch.cat(txt)
    clip_i = [F.cosine_similarity(img[0], img[i], dim=0).item() for i in range(1, len(images))]
    clip_t = [F.cosine_similarity(img[i], txt[i], dim=0).item() for i in range(len(images))]
    return clip_i, clip_t


PROMPTS = ["a dog on the beach", "a red backpack in the snow", "a cat", "a vase", "a toy car on a table"]


def test_clip_i_and_clip_t_by_hand(folders, scorer, images):
    clip_i, clip_t = clip_hand_scores(folders["clip"], images, PROMPTS)
    np.testing.assert_allclose(scorer.clip_i_pairs([images[0]] * 4, images[1:]), clip_i, atol=ATOL)
    np.testing.assert_allclose(scorer.clip_t_pairs(images, PROMPTS), clip_t, atol=ATOL)
    got = scorer.clip.processor(images=images, return_tensors="pt")["pixel_values"]
    want = torch.stack([torchvision_transform(im, 224, 224, OPENAI_CLIP) for im in images])
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_clip_folder_preprocessing(folders, images):
    processor = transformers.AutoImageProcessor.from_pretrained(str(folders["clip"]), use_fast=False)
    clip_i, clip_t = clip_hand_scores(folders["clip"], images, PROMPTS, processor)
    scorer = Scorer(clip=folders["clip"], device="cpu", progress=False, clip_preprocess="folder")
    np.testing.assert_allclose(scorer.clip_i_pairs([images[0]] * 4, images[1:]), clip_i, atol=ATOL)
    np.testing.assert_allclose(scorer.clip_t_pairs(images, PROMPTS), clip_t, atol=ATOL)
    assert scorer.describe()["clip"]["preprocess"] == "folder"
    # the folder's processor is OpenAI's transform except the crop offset: floored, not rounded (odd margins)
    hand = [torchvision_transform(im, 224, 224, OPENAI_CLIP) for im in images]
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(pixels[2], hand[2], atol=1e-6, rtol=0)  # 256x256: margin 0
    assert (pixels[0] - hand[0]).abs().max() > 1e-3  # 303x200 -> 339x224: margin 115, one pixel apart


def test_clip_t_reads_the_prompt(scorer, images):
    a, b = scorer.clip_t_pairs([images[0], images[0]], ["a dog on the beach", "a red backpack in the snow"])
    assert abs(a - b) > 1e-4
    again = scorer.clip_t_pairs([images[0]], ["a dog on the beach"])
    assert again == pytest.approx([a], abs=ATOL)
    # a prompt longer than CLIP's 77 tokens is truncated, not refused
    assert len(scorer.clip_t_pairs([images[0]], ["a dog " * 60])) == 1


def test_identical_images_score_one_and_scores_are_symmetric(scorer, images):
    copy = images[1].copy()
    assert scorer.dino_pairs([images[1]], [copy]) == pytest.approx([1.0], abs=ATOL)
    assert scorer.clip_i_pairs([images[1]], [copy]) == pytest.approx([1.0], abs=ATOL)
    for pairs in (scorer.dino_pairs, scorer.clip_i_pairs):
        forward = pairs(images[:3], images[2:5])
        backward = pairs(images[2:5], images[:3])
        np.testing.assert_allclose(forward, backward, atol=1e-7)


def test_batching_gives_the_same_numbers_as_one_by_one(folders, images):
    prompts = ["a dog", "a red backpack in the snow", "a cat on a sofa", "a vase", "a car"]
    cases = [Case(images[i], [images[(i + 1) % 5], images[(i + 2) % 5]], prompts[i]) for i in range(5)]
    results = []
    for batch_size in (1, 2, 32):
        s = Scorer(dino=folders["vit"], clip=folders["clip"], device="cpu", batch_size=batch_size, progress=False)
        results.append([score.as_dict() for score in s.score(cases)])
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            for name in ("dino", "clip_i", "clip_t"):
                assert a[name] == pytest.approx(b[name], abs=ATOL)


def test_averaging_is_mean_over_references_then_over_images(scorer, images, tmp_path):
    paths = []
    for i, im in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        im.save(paths[-1])
    cases = [
        Case(paths[0], [paths[2], paths[3], paths[4]], "a dog"),
        Case(paths[1], [paths[2], paths[3], paths[4]], "a dog on the beach"),
        Case(paths[2], [paths[4]]),  # no prompt: no CLIP-T
    ]
    scores = scorer.score(cases)
    assert scores[0].dino == pytest.approx(np.mean(scorer.dino_pairs([paths[0]] * 3, paths[2:])), abs=ATOL)
    assert scores[1].clip_i_per_reference == pytest.approx(scorer.clip_i_pairs([paths[1]] * 3, paths[2:]), abs=ATOL)
    assert scores[2].clip_t is None and scores[2].dino_masked is None
    means = mean_scores(scores)
    assert means["dino"] == pytest.approx(np.mean([s.dino for s in scores]))
    assert means["clip_t"] == pytest.approx(np.mean([scores[0].clip_t, scores[1].clip_t]))
    assert means["dino_masked"] is None
    # paths and PIL images of the same pixels score the same
    assert scorer.dino_pairs([images[0]], [images[4]]) == pytest.approx(scorer.dino_pairs([paths[0]], [paths[4]]))
    # the one-call form
    again, overall = score_cases(cases, dino=scorer.dino.folder, device="cpu", progress=False)
    assert overall["dino"] == pytest.approx(means["dino"], abs=ATOL) and overall["clip_i"] is None


def test_masked_dino(scorer, images):
    white = Image.new("L", (10, 10), 255)
    black = Image.new("L", (10, 10), 0)
    half = Image.fromarray(np.repeat((np.arange(10) < 5)[None, :] * 255, 10, 0).astype(np.uint8), "L")
    filled = np.asarray(apply_mask(images[0], black, scorer.dino.processor.image_mean))
    assert (filled == np.round(np.array([0.485, 0.456, 0.406]) * 255).astype(np.uint8)).all()
    cases = [
        Case(images[0], [images[1]], generated_mask=white, reference_masks=[white]),  # nothing masked
        Case(images[0], [images[1]], generated_mask=black, reference_masks=[black]),  # everything masked
        Case(images[0], [images[1]], reference_masks=[half]),
        Case(images[0], [images[1]]),
    ]
    scores = scorer.score(cases)
    assert scores[0].dino_masked == pytest.approx(scores[0].dino, abs=ATOL)
    assert scores[1].dino_masked == pytest.approx(1.0, abs=ATOL)  # both are the same flat mean colour
    hand = scorer.dino_pairs([images[0]], [apply_mask(images[1], half, scorer.dino.processor.image_mean)])
    assert scores[2].dino_masked == pytest.approx(hand[0], abs=ATOL)
    assert scores[3].dino_masked is None


def test_a_bad_image_is_recorded_not_fatal(scorer, images, tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not a png")
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (4, 4)).save(tiny)
    cases = [
        Case(images[0], [images[1]], "a dog"),
        Case(corrupt, [images[1]], "a dog"),  # bad generated image
        Case(images[2], [images[1], tiny], "a dog"),  # one bad reference
        Case(images[3], [images[1]], generated_mask=tmp_path / "missing_mask.png"),  # bad mask
    ]
    with pytest.raises(UnofluxError, match="cannot be read as an image"):
        scorer.score(cases)
    scores = scorer.score(cases, errors="record")
    assert scores[0].error is None and scores[0].dino is not None and scores[0].clip_t is not None
    assert "cannot be read" in scores[1].error and scores[1].dino is None and scores[1].clip_t is None
    assert "at least 16 px" in scores[2].error and scores[2].clip_i is None
    assert "does not exist" in scores[3].error and scores[3].dino_masked is None and scores[3].dino is None
    means = mean_scores(scores)
    assert means["failed"] == 3 and means["dino"] == pytest.approx(scores[0].dino)
    alone = scorer.score(cases[:1])[0]  # the bad ones do not disturb the good one
    for name in ("dino", "clip_i", "clip_t"):
        assert getattr(alone, name) == pytest.approx(getattr(scores[0], name), abs=ATOL)
    with pytest.raises(UnofluxError, match="not one of raise, record"):
        scorer.score(cases, errors="skip")


def test_bad_folders_are_one_sentence(folders, tmp_path):
    (tmp_path / "empty").mkdir()
    cases = [
        (dict(dino=tmp_path / "missing"), "does not exist"),
        (dict(dino=tmp_path / "empty"), "has no config.json"),
        (dict(dino=folders["clip"]), "holds a 'clip' model"),
        (dict(clip=folders["vit"]), "holds a 'vit' model"),
        (dict(clip=tmp_path / "missing"), "does not exist"),
        ({}, "needs a DINO folder"),
        (dict(dino=folders["vit"], batch_size=0), "batch_size"),
        (dict(dino=folders["vit"], device="gpu0"), "not a torch device"),
    ]
    if not torch.cuda.is_available():
        cases.append((dict(dino=folders["vit"], device="cuda"), "sees no CUDA GPU"))
    for kwargs, message in cases:
        with pytest.raises(UnofluxError, match=message) as err:
            Scorer(progress=False, **{"device": "cpu", **kwargs})
        assert "\n" not in str(err.value)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "vit"}')
    with pytest.raises(UnofluxError, match="cannot be loaded") as err:
        Scorer(dino=broken, progress=False)
    assert "\n" not in str(err.value)


def test_missing_backbone_and_bad_inputs(folders, images):
    dino_only = Scorer(dino=folders["vit"], device="cpu", progress=False)
    with pytest.raises(UnofluxError, match="make the Scorer with clip=DIR"):
        dino_only.clip_t_pairs([images[0]], ["a dog"])
    scores = dino_only.score([Case(images[0], [images[1]], "a dog")])
    assert scores[0].clip_i is None and scores[0].clip_t is None and scores[0].dino is not None
    with pytest.raises(UnofluxError, match="pair them 1:1"):
        dino_only.dino_pairs(images[:2], images[:1])
    with pytest.raises(UnofluxError, match="no reference images"):
        dino_only.score([Case(images[0], [])])
    with pytest.raises(UnofluxError, match="does not exist"):
        dino_only.dino_pairs(["/nonexistent.png"], [images[0]])


def test_progress_bar_and_device(folders, images, capsys):
    scorer = Scorer(dino=folders["vit"], device=None, batch_size=2, progress=True)
    assert str(scorer.device) == default_device() == ("cuda" if torch.cuda.is_available() else "cpu")
    scorer.dino_pairs(images[:3], images[2:5])
    assert "DINO" in capsys.readouterr().err


def test_clip_t_scales():
    assert scale_clip_t(0.304) == 0.304
    assert scale_clip_t(0.304, "x100") == pytest.approx(30.4)
    assert scale_clip_t(0.304, "clipscore") == pytest.approx(0.76)
    assert scale_clip_t(-0.1, "clipscore") == 0.0
    with pytest.raises(UnofluxError, match="not one of"):
        scale_clip_t(0.3, "x2")
