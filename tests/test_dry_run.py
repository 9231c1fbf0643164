"""--dry-run: the expected peak from the files' headers and a shapes-only run, with nothing loaded. The weights it
sizes are what loading really holds; activations grow with the image; tiling caps the VAE's."""

from __future__ import annotations

import pytest

from unoflux.checkpoints import ModelPaths, load_pipeline
from unoflux.checkpoints.quantize import weight_bytes
from unoflux.cli import main
from unoflux.memory import estimate

from .conftest import random_image
from .test_cli import model_flags


def _estimate(paths, **kwargs):
    settings = dict(device="cpu", dtype="fp32", width=64, height=64, reference_sides=[(32, 32)]) | kwargs
    return estimate(paths if isinstance(paths, ModelPaths) else ModelPaths(**vars(paths)), **settings)


def test_the_weights_it_sizes_are_what_loading_holds(official_layout):
    paths, _ = official_layout
    pipe = load_pipeline(ModelPaths(**vars(paths)), use_environment=False)
    guess = _estimate(paths).weights
    loaded = {"transformer": weight_bytes(pipe.transformer), "VAE": weight_bytes(pipe.vae)}
    loaded["T5"], loaded["CLIP"] = weight_bytes(pipe.text_encoder_2), weight_bytes(pipe.text_encoder)
    lora = sum(p.numel() * p.element_size() for n, p in pipe.transformer.named_parameters() if "lora_" in n)
    # sized from the file; loaded, UNO's fused-qkv A matrices are copied for q, k and v: a little more
    assert 0.7 * lora < guess["LoRA"] <= lora
    assert guess["transformer"] == pytest.approx(loaded["transformer"] - lora, rel=0.02)
    for name in ("VAE", "T5", "CLIP"):
        assert guess[name] == pytest.approx(loaded[name], rel=0.02), name

    quantized = load_pipeline(ModelPaths(**vars(paths)), use_environment=False, quantize="int8")
    lora_quantized = weight_bytes(quantized.transformer) - guess["LoRA"]
    assert _estimate(paths, quantize="int8").weights["transformer"] == pytest.approx(lora_quantized, rel=0.1)


def test_activations_grow_with_the_image_and_tiling_caps_the_vae(diffusers_folder):
    paths = ModelPaths(model=str(diffusers_folder))  # its VAE's tiles are 32 px (a BFL file's are FLUX's 1024)
    small, large = _estimate(paths), _estimate(paths, width=128, height=128, reference_sides=[(128, 128)])
    assert large.transformer_activations > 1.2 * small.transformer_activations  # (512 text tokens in both)
    assert large.vae_activations > 3 * small.vae_activations
    tiled = _estimate(paths, width=128, height=128, reference_sides=[(128, 128)], vae_tiling=True)
    assert tiled.vae_activations < 0.7 * large.vae_activations
    assert large.peak > small.peak and tiled.peak < large.peak


def test_generate_dry_run_prints_the_estimate_and_writes_nothing(official_layout, tmp_path, capsys):
    paths, _ = official_layout
    ref, out = tmp_path / "ref.png", tmp_path / "out.png"
    random_image(48, 40, seed=4).save(ref)
    flags = ["--width", "64", "--height", "64", "--ref-long-side", "32", *model_flags(paths)]
    code = main(["generate", "--prompt", "a cat", "--ref", str(ref), "--out", str(out), "--dry-run", *flags])
    printed = capsys.readouterr().out
    assert code == 0 and not out.exists()
    assert printed.startswith("expected peak RSS: ") and "nothing was loaded" in printed
    assert "transformer activations" in printed and "LoRA weights" in printed


def test_dry_run_refuses_what_generate_would(tmp_path, capsys):
    batch = tmp_path / "batch.json"
    batch.write_text('[{"prompt": "a cat", "image_paths": []}]')
    assert main(["generate", "--batch", str(batch), "--dry-run", "--device", "cpu"]) == 2
    assert "--dry-run sizes one --prompt call" in capsys.readouterr().err
    assert main(["generate", "--prompt", "a cat", "--dry-run", "--device", "cpu", "--offload", "group"]) == 2
    assert "offload 'group' moves models onto a GPU" in capsys.readouterr().err


def test_offload_keeps_less_on_the_device(official_layout):
    paths, _ = official_layout
    whole, model, layers = (_estimate(paths, offload=o) for o in ("none", "model", "group"))
    assert whole.resident == sum(whole.weights.values())
    assert model.resident == model.weights["transformer"] + model.weights["LoRA"] < whole.resident
    assert 0 < layers.resident < model.weights["transformer"]
