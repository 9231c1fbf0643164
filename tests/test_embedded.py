"""The shipped embedded model: picked up with no model flags, FLUX-shaped, small, it follows text, and its UNO
LoRA (shipped inside it, loaded by default) takes subjects from references."""

from __future__ import annotations

import json

import pytest
import torch

from unoflux import ModelPaths, load_pipeline
from unoflux.checkpoints.specs import EMBEDDED_MODEL_DIR, model_defaults
from unoflux.cli import main
from unoflux.images import read_settings


@pytest.fixture(scope="module")
def embedded():
    pipe = load_pipeline(ModelPaths(), device="cpu", use_environment=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_embedded_model_ships_small_in_fp16_with_its_provenance():
    files = [f for f in EMBEDDED_MODEL_DIR.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) < 30 * 2**20
    for name in ("family.json", "config.yaml", "command.txt", "training.json", "unoflux.json"):
        assert (EMBEDDED_MODEL_DIR / name).is_file(), name
    assert model_defaults(EMBEDDED_MODEL_DIR)["image_size"] == 128
    summary = json.loads((EMBEDDED_MODEL_DIR / "training.json").read_text())["summary"]
    assert summary["prompts"] >= 200


def test_no_flags_means_the_embedded_model(embedded):
    assert embedded.transformer.config.num_layers == 3 and embedded.text_sequence_length == 64
    # trained with guidance input 1 only: sampled at 1, steered by classifier-free guidance (docs/engine.md)
    assert (embedded.model_defaults["guidance"], embedded.model_defaults["true_cfg"]) == (1.0, 3.0)
    assert type(embedded.transformer).__name__ == "FluxTransformer2DModel"  # the same class as FLUX.1
    a = embedded(
        "a large red star in the center on a sunny beach",
        width=64,
        height=64,
        num_inference_steps=4,
        seed=0,
        output_type="latent",
    ).images
    b = embedded(
        "a small blue circle on the left in the snow",
        width=64,
        height=64,
        num_inference_steps=4,
        seed=0,
        output_type="latent",
    ).images
    assert a.shape == (1, 16, 64) and not torch.allclose(a, b, atol=1e-3)


def test_generate_cli_defaults_to_the_models_native_size(tmp_path, monkeypatch):
    for name in ("FLUX_DEV", "FLUX_DEV_FP8", "FLUX_SCHNELL", "AE", "T5", "CLIP", "LORA"):
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "star.png"
    assert main(["generate", "--prompt", "a large red star on a sunny beach", "--steps", "3", "--out", str(out)]) == 0
    settings = read_settings(out)
    assert (settings["guidance"], settings["true_cfg"]) == (1.0, 3.0)
    assert (settings["width"], settings["height"]) == (128, 128) and settings["model"] == {
        "model": "embedded",
        "dtype": "float32",
        "weights_dtype": None,
    }


def test_embedded_model_ships_its_uno_lora_with_provenance(embedded):
    defaults = model_defaults(EMBEDDED_MODEL_DIR)
    assert defaults["lora"] == "dit_lora.safetensors" and (EMBEDDED_MODEL_DIR / "dit_lora.safetensors").is_file()
    for name in ("lora_config.yaml", "lora_command.txt", "lora_training.json"):
        assert (EMBEDDED_MODEL_DIR / name).is_file(), name
    assert embedded.reference_long_sides == (128, 80)
    assert json.loads((EMBEDDED_MODEL_DIR / "lora_training.json").read_text())["summary"]["cases"] == 400
    base = load_pipeline(ModelPaths(), device="cpu", use_environment=False, model_lora=False)
    base.set_progress_bar_config(disable=True)
    prompt = dict(
        prompt="a large figure in the center on a sunny beach",
        width=64,
        height=64,
        num_inference_steps=2,
        seed=0,
        output_type="latent",
    )
    reference = [EMBEDDED_MODEL_DIR.parent.parent / "examples" / "red_striped_diamond.png"]
    assert not torch.allclose(
        embedded(reference_images=reference, **prompt).images,
        base(reference_images=reference, **prompt).images,
        atol=1e-3,
    )
    # "lora_for": "references": a text-only prompt runs the base (the LoRA expects a reference), as before
    assert model_defaults(EMBEDDED_MODEL_DIR)["lora_for"] == "references"
    assert torch.equal(embedded(**prompt).images, base(**prompt).images)


def test_bundled_examples_are_the_held_out_reference_shots(tmp_path):
    from unoflux.demo import EXAMPLES_DIR, write_examples

    written = write_examples(tmp_path)
    assert len(written) == 3
    for path in [*written, tmp_path / "examples.json"]:
        assert path.read_bytes() == (EXAMPLES_DIR / path.name).read_bytes(), path.name


def test_references_decide_the_colour_when_the_caption_does_not(embedded):
    """Captions that name no looks: the subject's colour can only come from the reference (6 held-out cases).

    8 steps instead of the model's 25 keep it fast; the outcome is the same at both (measured on the first 12
    cases: the colour right in 12 with the reference, 1 without, at 8 and at 25 steps)."""
    from unoflux.evaluate.subject import judge_case, reference_shots
    from unoflux.world.captions import caption_scene
    from unoflux.world.heldout import heldout_subject_pairs

    hits = {True: 0, False: 0}
    for pair in [p for p in heldout_subject_pairs() if len(p.references) == 1][:6]:
        prompt = caption_scene(pair.target, pair.seed, name_looks=False)
        for with_reference in (True, False):
            refs = reference_shots(pair, 128) if with_reference else None
            image = embedded(prompt, refs, width=128, height=128, seed=pair.seed, num_inference_steps=8).images[0]
            hits[with_reference] += judge_case(image, pair).verdict.subjects[0].colour_ok
    assert hits[True] >= 5 and hits[True] >= hits[False] + 4, hits
