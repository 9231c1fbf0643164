"""The shipped embedded model: picked up with no model flags, FLUX-shaped, small, and it follows text."""

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
    assert model_defaults(EMBEDDED_MODEL_DIR)["image_size"] == 64
    summary = json.loads((EMBEDDED_MODEL_DIR / "training.json").read_text())["summary"]
    assert summary["prompts"] >= 200


def test_no_flags_means_the_embedded_model(embedded):
    assert embedded.transformer.config.num_layers == 3 and embedded.text_sequence_length == 64
    assert type(embedded.transformer).__name__ == "FluxTransformer2DModel"  # the same class as FLUX.1
    a = embedded("a large red star in the center on a sunny beach", width=64, height=64, num_inference_steps=4,
                 seed=0, output_type="latent").images  # fmt: skip
    b = embedded("a small blue circle on the left in the snow", width=64, height=64, num_inference_steps=4,
                 seed=0, output_type="latent").images  # fmt: skip
    assert a.shape == (1, 16, 64) and not torch.allclose(a, b, atol=1e-3)


def test_generate_cli_defaults_to_the_models_native_size(tmp_path, monkeypatch):
    for name in ("FLUX_DEV", "FLUX_DEV_FP8", "FLUX_SCHNELL", "AE", "T5", "CLIP", "LORA"):
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "star.png"
    assert main(["generate", "--prompt", "a large red star on a sunny beach", "--steps", "3", "--out", str(out)]) == 0
    settings = read_settings(out)
    assert (settings["width"], settings["height"]) == (64, 64) and settings["model"] == {
        "model": "embedded", "dtype": "float32", "weights_dtype": None}  # fmt: skip
