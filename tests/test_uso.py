"""USO: the style projector's maths, SigLIP's layer choice and preprocessing, style tokens entering the text stream
with zero ids, the modes (subject, style, subject + style with an empty prompt, several styles), loading USO's files
in their official layouts with one sentence per misfit, and the CLI / batch surfaces."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from unoflux import UnofluxError, engine, flow, load_pipeline
from unoflux.checkpoints import ModelPaths
from unoflux.checkpoints.files import read_tensors, write_safetensors
from unoflux.checkpoints.uso import load_siglip, load_style_encoder, load_style_projector
from unoflux.cli import main
from unoflux.methods import get_method
from unoflux.methods.uso import LEVEL_LAYERS, StyleProjector
from unoflux.references import Reference
from unoflux.testing import save_siglip, save_uso_layout, tiny_components, tiny_siglip

from .conftest import random_image
from .test_methods import hand_written_forward

SMALL = dict(width=32, height=32, num_inference_steps=2, reference_long_side=32, seed=3, max_sequence_length=16)


@pytest.fixture(scope="module")
def uso_layout(tmp_path_factory):
    root = tmp_path_factory.mktemp("uso")
    return save_uso_layout(tiny_components(seed=0), root)


@pytest.fixture(scope="module")
def uso_pipe(uso_layout):
    pipe = load_pipeline(uso_layout, device="cpu", dtype="fp32", use_environment=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def content():
    return random_image(64, 48, seed=1)


@pytest.fixture
def styles():
    return [random_image(50, 30, seed=7), random_image(30, 60, seed=8)]


# ------------------------------------------------------------------------------------------- projector
def test_the_projector_is_usos_maths_written_out():
    """Per level: a Linear over the token axis, SiLU, then LayerNorm (eps 1e-5) and a Linear to the hidden width;
    levels high, mid, low from hidden states -2, -11, -20, concatenated in that order."""
    torch.manual_seed(0)
    projector = StyleProjector(siglip_tokens=6, style_tokens=3, siglip_width=8, hidden=10)
    for p in projector.parameters():
        torch.nn.init.normal_(p, std=0.5)
    hidden_states = [torch.randn(2, 6, 8) for _ in range(21)]
    expected = []
    for level, layer in (("high", -2), ("mid", -11), ("low", -20)):
        w = {k.removeprefix(f"{level}_"): v for k, v in projector.state_dict().items() if k.startswith(level)}
        h = hidden_states[layer].transpose(1, 2)  # (B, width, tokens)
        h = F.silu(h @ w["embedding_linear.0.weight"].T + w["embedding_linear.0.bias"]).transpose(1, 2)
        h = F.layer_norm(h, (8,), w["layer_norm.weight"], w["layer_norm.bias"], eps=1e-5)
        expected.append(h @ w["projection.weight"].T + w["projection.bias"])
    got = projector(hidden_states)
    assert got.shape == (2, 9, 10)
    torch.testing.assert_close(got, torch.cat(expected, dim=1))
    assert LEVEL_LAYERS == {"high": -2, "mid": -11, "low": -20}


def test_style_tokens_read_siglips_layers_26_17_8_not_the_last_or_the_post_layernorm(uso_pipe, styles):
    """With 20 layers the projector reads the outputs of layers 19, 10 and 1 (hidden_states[-2], [-11], [-20]):
    changing the last layer or the post-layernorm leaves the tokens as they are; changing layer 19 does not."""
    encoder = uso_pipe.style_encoder
    pixels = encoder.processor(images=styles[0], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        states = encoder.vision(pixel_values=pixels, output_hidden_states=True).hidden_states
        assert len(states) == 21
        direct = encoder.projector(states)
    encoder._cache.clear()
    tokens = encoder.encode(styles[0], torch.device("cpu"), torch.float32)
    torch.testing.assert_close(tokens, direct)
    assert tokens.shape == (1, 6, 32)  # 3 levels x 2 style tokens (tiny projector), the transformer's width

    vision = getattr(encoder.vision, "vision_model", encoder.vision)  # (transformers 4 wraps it once more)
    originals = {n: p.detach().clone() for n, p in encoder.vision.named_parameters()}
    try:
        with torch.no_grad():
            for p in [*vision.encoder.layers[-1].parameters(), *vision.post_layernorm.parameters()]:
                p.add_(1.0)
        encoder._cache.clear()
        torch.testing.assert_close(encoder.encode(styles[0], torch.device("cpu"), torch.float32), tokens)
        with torch.no_grad():
            vision.encoder.layers[-2].mlp.fc2.bias.add_(1.0)
        encoder._cache.clear()
        assert not torch.allclose(encoder.encode(styles[0], torch.device("cpu"), torch.float32), tokens)
    finally:
        with torch.no_grad():
            for n, p in encoder.vision.named_parameters():
                p.copy_(originals[n])
        encoder._cache.clear()


def test_style_images_are_squashed_to_the_square_siglip_size_and_scaled_to_minus_one_one(uso_pipe, styles):
    """so400m's processor: resize to size x size ignoring the aspect (bicubic), no crop, (x / 255 - 0.5) / 0.5."""
    size = uso_pipe.style_encoder.vision.config.image_size
    got = uso_pipe.style_encoder.processor(images=styles[1], return_tensors="pt")["pixel_values"]
    resized = np.asarray(styles[1].resize((size, size), Image.BICUBIC), dtype=np.float32)
    expected = torch.from_numpy((resized / 255 - 0.5) / 0.5).permute(2, 0, 1)[None]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------ sampling
def test_style_tokens_enter_the_text_stream_after_the_text_projection_with_zero_ids(uso_pipe, content, styles):
    """One step with a subject and two styles = Euler with the hand-written forward: the subject's VAE tokens after
    the target (UnoPE ids), both styles' tokens in order before the projected T5 tokens, ids zero."""
    pipe = uso_pipe
    settings = {**SMALL, "num_inference_steps": 1, "time_shift": 1.0, "guidance_scale": 4.0}
    out = pipe("a red cup", [content, Reference(styles[0], "style"), Reference(styles[1], "style")], **settings)
    latents = pipe("a red cup", [content], style_images=styles, output_type="latent", **settings).images

    method = get_method("uso")
    refs = method.preprocess_references([Reference(content), *(Reference(s, "style") for s in styles)], 32)
    conditioning = method.prepare(pipe, refs, (2, 2), "diagonal", torch.device("cpu"), torch.float32)
    encoder = pipe.style_encoder
    prefix = torch.cat([encoder.encode(s, torch.device("cpu"), torch.float32) for s in styles], dim=1)
    assert conditioning.text_prefix.shape == (1, 12, 32) and conditioning.text_prefix_ids is None
    torch.testing.assert_close(conditioning.text_prefix, prefix)

    text, pooled, text_ids = pipe.encode_prompt(prompt=["a red cup"], prompt_2=None, max_sequence_length=16)
    x = pipe.prepare_noise([3], 32, 32, torch.device("cpu"), torch.float32, "cpu")
    hidden = torch.cat([x, conditioning.reference_tokens], dim=1)
    with torch.no_grad():
        v = hand_written_forward(
            pipe.transformer,
            hidden,
            torch.ones(1),
            torch.full((1,), 4.0),
            pooled,
            text,
            text_ids,
            conditioning.image_ids,
            torch.zeros(1, 1, 32),
            prefix,
        )[:, : x.shape[1]]
    torch.testing.assert_close(latents, flow.euler_step(x, v, 1.0, 0.0), rtol=0, atol=1e-5)
    assert out.settings["method"] == "uso" and out.settings["num_style_references"] == 2
    # the order of the style tokens does not matter (zero ids, no mask); which styles are given does
    swapped = pipe("a red cup", [content], style_images=styles[::-1], output_type="latent", **settings).images
    torch.testing.assert_close(swapped, latents, atol=1e-5, rtol=1e-4)
    one = pipe("a red cup", [content], style_images=styles[:1], output_type="latent", **settings).images
    assert not torch.allclose(one, latents, atol=1e-4)
    with torch.no_grad():  # and engine's hooks reproduce the same velocity
        via_engine = engine.predict_velocity(
            pipe.transformer,
            pipe.transformer,
            conditioning,
            x,
            torch.ones(1),
            torch.full((1,), 4.0),
            text,
            pooled,
            text_ids,
        )
    torch.testing.assert_close(via_engine, v, atol=1e-5, rtol=0)


def test_the_modes_and_the_empty_prompt(uso_pipe, content, styles):
    """Subject only is UNO with USO's LoRA; style only has no image tokens; subject + style takes an empty prompt
    (keep the layout) where UNO refuses one; every mode gives a different image."""
    pipe = uso_pipe
    subject = pipe("a cup", [content], output_type="latent", **SMALL).images
    as_uno = pipe("a cup", [content], method="uno", output_type="latent", **SMALL).images
    torch.testing.assert_close(subject, as_uno, rtol=0, atol=0)
    style = pipe("a cup", style_images=styles[:1], output_type="latent", **SMALL).images
    both = pipe("", [content], style_images=styles[:1], output_type="latent", **SMALL)
    assert both.settings["prompt"] == "" and both.images.shape == subject.shape
    for a, b in ((subject, style), (style, both.images), (subject, both.images)):
        assert not torch.allclose(a, b, atol=1e-4)
    with pytest.raises(UnofluxError, match="the prompt is empty"):
        pipe("", [content], method="uno", **SMALL)
    with pytest.raises(UnofluxError, match=r"method 'uno' takes no style references \(use --method uso\)"):
        pipe("a cup", style_images=styles[:1], method="uno", **SMALL)
    with pytest.raises(UnofluxError, match="method 'uso' takes at most 1 subject references, not 2"):
        pipe("a cup", [content, content], **SMALL)


def test_keep_size_gives_the_subjects_aspect_at_usos_long_side(uso_pipe, content, styles):
    """USO's keep_size / --instruct_edit: output = the preprocessed subject's size x 1024 / its long side."""
    settings = {**SMALL, "num_inference_steps": 1}
    out = uso_pipe(
        "make it ghibli", [content], style_images=styles[:1], keep_size=True, output_type="latent", **settings
    )
    assert (out.settings["width"], out.settings["height"]) == (1024, 512)  # 64x48 -> 32x24 -> cropped to 32x16 -> x 32
    assert out.images.shape == (1, 64 * 32, 64)
    with pytest.raises(UnofluxError, match="keep size takes the output's aspect from a subject reference"):
        uso_pipe("a cup", style_images=styles[:1], keep_size=True, **settings)


def test_siglip_runs_once_per_call_and_once_per_style_image_across_calls(uso_pipe, content, styles):
    encoder = uso_pipe.style_encoder
    encoder._cache.clear()
    calls = []
    handle = encoder.vision.register_forward_hook(lambda *a: calls.append(1))
    try:
        uso_pipe("a cup", [content], style_images=styles, **{**SMALL, "num_inference_steps": 4})
        assert len(calls) == 2  # one per style image, not one per step (USO's code: 4 x 2)
        uso_pipe("a dog", style_images=styles[:1], **SMALL)
        assert len(calls) == 2  # the same image again: its tokens are kept
    finally:
        handle.remove()


def test_uso_defaults_and_a_style_without_the_style_models_is_an_error(uso_pipe, official_layout, styles):
    assert uso_pipe.model_defaults["method"] == "uso"
    assert (uso_pipe.model_defaults["width"], uso_pipe.model_defaults["height"]) == (1024, 1024)  # USO's
    paths, _ = official_layout
    plain = load_pipeline(paths, device="cpu", dtype="fp32", use_environment=False)
    assert plain.model_defaults["method"] == "uno" and plain.style_encoder is None
    with pytest.raises(UnofluxError, match="no style encoder is loaded: pass --uso-projector"):
        plain("a cup", style_images=styles[:1], method="uso", **SMALL)


# -------------------------------------------------------------------------------------------- loading
def test_full_and_vision_only_siglip_folders_give_the_same_tokens(tmp_path, uso_layout, styles):
    siglip = tiny_siglip()
    full, vision_only = save_siglip(siglip, tmp_path / "full"), save_siglip(siglip, tmp_path / "v", vision_only=True)
    tokens = []
    for folder in (full, vision_only):
        encoder = load_style_encoder(uso_layout.projector, folder, hidden=32, dtype=torch.float32)
        tokens.append(encoder.encode(styles[0], torch.device("cpu"), torch.float32))
    torch.testing.assert_close(tokens[0], tokens[1], rtol=0, atol=0)
    # and they are the saved weights' (not a fresh initialisation): SigLIP's own vision tower gives the same
    pixels = encoder.processor(images=styles[0], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        states = siglip.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states
        torch.testing.assert_close(tokens[0], encoder.projector(states), rtol=0, atol=1e-6)
    (vision_only / "preprocessor_config.json").unlink()  # SigLIP's own processor at the model's size then
    processor, _ = load_siglip(vision_only)
    assert processor.size == {"height": 28, "width": 28} and processor.resample == Image.BICUBIC


def test_every_misfit_of_usos_files_is_one_sentence(tmp_path, uso_layout):
    state, _ = read_tensors(uso_layout.projector)

    def projector_with(edit) -> str:
        edited = dict(state)
        edit(edited)
        return str(write_safetensors(edited, tmp_path / "p.safetensors"))

    cases = {
        "no 'feature_embedder.high_projection.weight'": lambda s: s.pop("feature_embedder.high_projection.weight"),
        "missing 'feature_embedder.low_layer_norm.bias'": lambda s: s.pop("feature_embedder.low_layer_norm.bias"),
        "of shape (32, 15), expected (32, 16)": lambda s: s.update(
            {"feature_embedder.mid_projection.weight": torch.zeros(32, 15)}
        ),
    }
    for message, edit in cases.items():
        with pytest.raises(UnofluxError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_style_projector(projector_with(edit), hidden=32, dtype=torch.float32)
    with pytest.raises(UnofluxError, match="tokens of width 32, but the transformer's is 3072"):
        load_style_projector(uso_layout.projector, hidden=3072, dtype=torch.float32)
    with pytest.raises(UnofluxError, match="has 12 layers; USO reads hidden states -2, -11, -20"):
        load_style_encoder(uso_layout.projector, save_siglip(tiny_siglip(num_hidden_layers=12), tmp_path / "s12"), 32,
                           torch.float32)  # fmt: skip
    with pytest.raises(UnofluxError, match="gives 9 tokens of width 16, but USO projector"):
        load_style_encoder(uso_layout.projector, save_siglip(tiny_siglip(image_size=42), tmp_path / "s42"), 32,
                           torch.float32)  # fmt: skip
    with pytest.raises(UnofluxError, match="must be a folder in transformers layout with config.json"):
        load_siglip(tmp_path)
    with pytest.raises(UnofluxError, match="--uso-projector needs --siglip DIR too"):
        load_pipeline(ModelPaths(**{**vars(uso_layout), "siglip": None}), device="cpu", use_environment=False)


# ---------------------------------------------------------------------------------------- CLI, batch
def uso_flags(paths) -> list[str]:
    return [
        *["--flux", paths.flux, "--ae", paths.ae, "--t5", paths.t5, "--clip", paths.clip, "--lora", paths.lora],
        *["--uso-projector", paths.projector, "--siglip", paths.siglip, "--device", "cpu"],
    ]


def test_cli_style_flags_keep_their_order_and_land_in_the_settings(tmp_path, uso_layout, content, styles, capsys):
    for name, image in (("c.png", content), ("s1.png", styles[0]), ("s2.png", styles[1])):
        image.save(tmp_path / name)
    out = tmp_path / "out.png"
    argv = ["generate", "--prompt", "", "--ref", str(tmp_path / "c.png"), "--style", str(tmp_path / "s1.png")]
    argv += ["--style", str(tmp_path / "s2.png"), "--width", "32", "--height", "32", "--steps", "2"]
    assert main([*argv, "--ref-long-side", "32", "--out", str(out), *uso_flags(uso_layout)]) == 0
    settings = json.loads(Image.open(out).text["unoflux"])
    assert settings["method"] == "uso" and settings["prompt"] == ""
    assert settings["references"] == [
        str(tmp_path / "c.png"),
        {"image": str(tmp_path / "s1.png"), "role": "style"},
        {"image": str(tmp_path / "s2.png"), "role": "style"},
    ]
    assert settings["model"]["projector"] == uso_layout.projector and settings["reference_long_side"] == 32
    capsys.readouterr()
    # UNO's model refuses a style before loading anything heavy
    assert main(["generate", "--prompt", "x", "--method", "uno", "--style", str(tmp_path / "s1.png")]) == 2
    assert "method 'uno' takes no style references" in capsys.readouterr().err


def test_batch_items_say_each_references_role(tmp_path, uso_layout, content, styles):
    content.save(tmp_path / "c.png")
    styles[0].save(tmp_path / "s.png")
    items = [
        {"prompt": "", "image_paths": ["c.png", {"image": "s.png", "role": "style"}]},
        {"prompt": "a cup", "image_paths": [{"image": "s.png", "role": "style"}]},
    ]
    (tmp_path / "batch.json").write_text(json.dumps(items))
    argv = ["generate", "--batch", str(tmp_path / "batch.json"), "--out", str(tmp_path / "out")]
    assert main([*argv, "--width", "32", "--height", "32", "--steps", "1", *uso_flags(uso_layout)]) == 0
    first = json.loads((tmp_path / "out" / "0_0.json").read_text())
    assert first["references"] == [str(tmp_path / "c.png"), {"image": str(tmp_path / "s.png"), "role": "style"}]
    second = json.loads((tmp_path / "out" / "1_0.json").read_text())
    assert second["num_references"] == 0 and second["num_style_references"] == 1


def test_the_apps_style_slots_reach_the_pipeline_and_the_cli_line(uso_pipe, tmp_path, content, styles, monkeypatch):
    """The endpoint's style_1/style_2 become style references: kept beside the outputs, recorded with their role,
    and written as --style in the copy-as-CLI line; the keep-size box is passed through."""
    pytest.importorskip("gradio")
    from unoflux.app.runner import AppRunner
    from unoflux.app.ui import make_generate

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))  # the files below are uploads: in Gradio's upload cache

    content.save(tmp_path / "c.png")
    styles[0].save(tmp_path / "s.png")
    runner = AppRunner(uso_pipe, {"model": "tiny-uso"}, tmp_path / "out", ["--model", "/m"])
    generate = make_generate(runner)
    common = dict(width=32, height=32, steps=1, seed=3, reference_long_side="32", progress=lambda *a, **k: None)
    images, command, *_ = generate(
        "", {"path": str(tmp_path / "c.png")}, style_1={"path": str(tmp_path / "s.png")}, **common
    )
    settings = json.loads(Image.open(images[0]).text["unoflux"])
    subject, style = settings["references"]
    assert settings["method"] == "uso" and style["role"] == "style" and "_style2" in style["image"]
    assert Image.open(style["image"]).size == styles[0].size and subject.startswith(str(tmp_path / "out"))
    assert f"--style {style['image']}" in command and f"--ref {subject}" in command and "--prompt ''" in command
    images, command, *_ = generate("edit it", {"path": str(tmp_path / "c.png")}, keep_size=True, **common)
    assert Image.open(images[0]).size == (1024, 512) and "--keep-size" in command


def test_a_batch_takes_an_empty_prompt_only_for_uso(tmp_path, content):
    from unoflux.generation import read_batch

    content.save(tmp_path / "c.png")
    (tmp_path / "b.json").write_text(json.dumps([{"prompt": "", "image_paths": ["c.png"]}]))
    assert read_batch(tmp_path / "b.json", method="uso")[0]["image_paths"] == [str(tmp_path / "c.png")]
    for method in (None, "uno"):  # left to the model with no style reference: not known to be USO
        with pytest.raises(UnofluxError, match="has an empty prompt; only a USO item"):
            read_batch(tmp_path / "b.json", method=method)
