"""Every checkpoint layout loads from files written in that layout, and bad files fail with one sentence."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers.loaders.single_file_utils import (
    convert_flux_transformer_checkpoint_to_diffusers,
    convert_ldm_vae_checkpoint,
)

from unoflux import ModelPaths, UnofluxError, load_pipeline
from unoflux.checkpoints import bfl
from unoflux.checkpoints.files import write_safetensors
from unoflux.checkpoints.loading import load_transformer, load_vae
from unoflux.testing import TINY_TRANSFORMER

ARGS = dict(width=32, height=32, num_inference_steps=2, seed=5, output_type="latent")


def latents_of(pipe, refs=()):
    pipe.set_progress_bar_config(disable=True)
    return pipe("a red cup on the beach", list(refs), reference_long_side=32, **ARGS).images


def test_bfl_transformer_roundtrip_and_config_inference(tiny_pipe):
    sd = tiny_pipe.transformer.state_dict()
    as_bfl = bfl.transformer_to_bfl(sd)
    assert "double_blocks.0.img_attn.qkv.weight" in as_bfl and "single_blocks.0.linear1.weight" in as_bfl
    back = bfl.transformer_to_diffusers(as_bfl)
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)
    config = bfl.infer_transformer_config(as_bfl, {"axes_dims_rope": "[4, 6, 6]"})
    assert {k: config[k] for k in TINY_TRANSFORMER} == TINY_TRANSFORMER


def test_our_conversion_equals_diffusers_at_flux_width():
    """At FLUX.1's width (where diffusers' converter works) both conversions agree key for key."""
    g = torch.Generator().manual_seed(0)
    shapes = {  # one double and one single block of FLUX.1-dev, BFL names
        "img_in.weight": (3072, 64),
        "img_in.bias": (3072,),
        "txt_in.weight": (3072, 8),
        "txt_in.bias": (3072,),
        "time_in.in_layer.weight": (3072, 256),
        "time_in.in_layer.bias": (3072,),
        "time_in.out_layer.weight": (3072, 3072),
        "time_in.out_layer.bias": (3072,),
        "vector_in.in_layer.weight": (3072, 8),
        "vector_in.in_layer.bias": (3072,),
        "vector_in.out_layer.weight": (3072, 3072),
        "vector_in.out_layer.bias": (3072,),
        "guidance_in.in_layer.weight": (3072, 256),
        "guidance_in.in_layer.bias": (3072,),
        "guidance_in.out_layer.weight": (3072, 3072),
        "guidance_in.out_layer.bias": (3072,),
        "final_layer.linear.weight": (64, 3072),
        "final_layer.linear.bias": (64,),
        "final_layer.adaLN_modulation.1.weight": (6144, 8),
        "final_layer.adaLN_modulation.1.bias": (6144,),
    }
    for stream in ("img", "txt"):
        shapes |= {
            f"double_blocks.0.{stream}_mod.lin.weight": (18432, 8),
            f"double_blocks.0.{stream}_mod.lin.bias": (18432,),
            f"double_blocks.0.{stream}_attn.qkv.weight": (9216, 3072),
            f"double_blocks.0.{stream}_attn.qkv.bias": (9216,),
            f"double_blocks.0.{stream}_attn.norm.query_norm.scale": (128,),
            f"double_blocks.0.{stream}_attn.norm.key_norm.scale": (128,),
            f"double_blocks.0.{stream}_attn.proj.weight": (3072, 3072),
            f"double_blocks.0.{stream}_attn.proj.bias": (3072,),
            f"double_blocks.0.{stream}_mlp.0.weight": (12288, 8),
            f"double_blocks.0.{stream}_mlp.0.bias": (12288,),
            f"double_blocks.0.{stream}_mlp.2.weight": (3072, 8),
            f"double_blocks.0.{stream}_mlp.2.bias": (3072,),
        }  # inner dims that the converter never splits are kept small: 8
    shapes |= {
        "single_blocks.0.modulation.lin.weight": (9216, 8),
        "single_blocks.0.modulation.lin.bias": (9216,),
        "single_blocks.0.linear1.weight": (21504, 8),
        "single_blocks.0.linear1.bias": (21504,),
        "single_blocks.0.norm.query_norm.scale": (128,),
        "single_blocks.0.norm.key_norm.scale": (128,),
        "single_blocks.0.linear2.weight": (3072, 8),
        "single_blocks.0.linear2.bias": (3072,),
    }
    state = {k: torch.randn(s, generator=g, dtype=torch.bfloat16) for k, s in shapes.items()}
    ours = bfl.transformer_to_diffusers(dict(state))
    theirs = convert_flux_transformer_checkpoint_to_diffusers(dict(state))
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_vae_to_bfl_inverts_diffusers_converter(tiny_pipe):
    sd = tiny_pipe.vae.state_dict()
    as_bfl = bfl.vae_to_bfl(sd, num_up_blocks=4)
    assert "encoder.down.0.block.0.conv1.weight" in as_bfl and "decoder.up.3.upsample.conv.weight" in as_bfl
    config = bfl.infer_vae_config(as_bfl)
    assert config["block_out_channels"] == [32, 32, 32, 32] and config["layers_per_block"] == 1
    back = convert_ldm_vae_checkpoint(as_bfl, config)
    assert back.keys() == sd.keys() and all(torch.equal(back[k].reshape(sd[k].shape), sd[k]) for k in sd)


def test_official_layout_gives_the_same_images_as_the_components(official_layout, ref_images, tiny_pipe):
    paths, _ = official_layout
    pipe = load_pipeline(ModelPaths(**{**vars(paths), "lora": None}), device="cpu", use_environment=False)
    assert torch.equal(latents_of(pipe, ref_images[:1]), latents_of(tiny_pipe, ref_images[:1]))


def test_a_numbered_cpu_device_loads_in_fp32_like_cpu(diffusers_folder):
    # accelerate names a CPU process's device "cpu:0"; bf16 there gave other images than a plain CPU run
    pipe = load_pipeline(ModelPaths(model=str(diffusers_folder)), device="cpu:0", use_environment=False)
    assert pipe.transformer.dtype == torch.float32 and pipe.text_encoder.dtype == torch.float32


def test_diffusers_folder_and_component_folders(diffusers_folder, tiny_pipe, ref_images):
    """Bitwise equal to the in-memory pipeline: loaded weights are moved to 64-byte aligned memory (from the file's
    offsets, MKL's matmul takes another path and the latents differed by 2e-7)."""
    whole = load_pipeline(ModelPaths(model=str(diffusers_folder)), device="cpu", use_environment=False)
    weights = [
        t
        for m in (whole.transformer, whole.vae, whole.text_encoder, whole.text_encoder_2)
        for t in (*m.parameters(), *m.buffers())
    ]
    assert all(t.data_ptr() % 64 == 0 for t in weights)
    expected = latents_of(tiny_pipe, ref_images[:2])
    assert torch.equal(latents_of(whole, ref_images[:2]), expected)
    parts = load_pipeline(
        ModelPaths(
            flux=str(diffusers_folder / "transformer"),
            ae=str(diffusers_folder / "vae"),
            t5=str(diffusers_folder),
            clip=str(diffusers_folder),
        ),  # pipeline root: text_encoder(_2)/ inside
        device="cpu",
        use_environment=False,
    )
    assert torch.equal(latents_of(parts, ref_images[:2]), expected)


def test_a_model_folder_ships_its_lora_reference_sizes_and_mag_ratios(
    tmp_path, diffusers_folder, official_layout, ref_images
):
    """As the embedded model does: unoflux.json names a LoRA in the folder (loaded unless replaced or left out)
    and the reference long sides it was trained at."""
    import shutil

    from unoflux.testing import random_uno_lora

    paths, components = official_layout
    folder = tmp_path / "with-lora"
    shutil.copytree(diffusers_folder, folder)
    write_safetensors(random_uno_lora(components["transformer"], rank=4, seed=7), folder / "dit_lora.safetensors")
    (folder / "unoflux.json").write_text(
        json.dumps(
            {
                "image_size": 32,
                "lora": "dit_lora.safetensors",
                "reference_long_side": {"one": 32, "several": 16},
                "mag_ratios": [1.0, 0.95, 0.9],
            }
        )
    )

    def load(**kw):
        return load_pipeline(
            ModelPaths(model=str(folder), lora=kw.pop("lora", None)), device="cpu", use_environment=False, **kw
        )

    shipped, base = load(), load(model_lora=False)
    plain = load_pipeline(ModelPaths(model=str(diffusers_folder)), device="cpu", use_environment=False)
    assert shipped.reference_long_sides == (32, 16) and plain.reference_long_sides is None
    assert shipped.mag_ratios == [1.0, 0.95, 0.9] and plain.mag_ratios is None  # None: FLUX.1-dev's (diffusers')
    assert (plain.model_defaults["guidance"], plain.model_defaults["true_cfg"]) == (4.0, 1.0)  # FLUX.1-dev's
    assert shipped.default_reference_long_side(1) == 32 and shipped.default_reference_long_side(2) == 16
    assert plain.default_reference_long_side(1) == 512 and plain.default_reference_long_side(3) == 320
    assert torch.equal(latents_of(base), latents_of(plain))
    assert not torch.allclose(latents_of(shipped), latents_of(base), atol=1e-4)
    replaced = load(lora=paths.lora)  # an explicit LoRA replaces the folder's
    assert not torch.allclose(latents_of(replaced), latents_of(shipped), atol=1e-4)

    # "lora_for": "references": the folder's LoRA only runs when references are given
    defaults = json.loads((folder / "unoflux.json").read_text())
    (folder / "unoflux.json").write_text(json.dumps({**defaults, "lora_for": "references"}))
    for_references = load()
    assert torch.equal(latents_of(for_references), latents_of(base))
    # ... and is on again for the next call with references
    torch.testing.assert_close(latents_of(for_references, ref_images[:1]), latents_of(shipped, ref_images[:1]))
    assert not torch.allclose(latents_of(for_references, ref_images[:1]), latents_of(base, ref_images[:1]), atol=1e-4)
    assert not load(lora=paths.lora).lora_only_with_references  # an explicit LoRA always applies, as in UNO


def test_diffusers_keyed_single_file_and_pickle(tmp_path, tiny_pipe):
    sd = tiny_pipe.transformer.state_dict()
    write_safetensors(sd, tmp_path / "t.safetensors", metadata={"axes_dims_rope": [4, 6, 6]})
    loaded = load_transformer(tmp_path / "t.safetensors", torch.float32)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in sd.items())
    torch.save({"state_dict": {f"module.{k}": v for k, v in bfl.transformer_to_bfl(sd).items()}}, tmp_path / "t.pt")
    with pytest.raises(UnofluxError, match="RoPE"):  # a pickle has no metadata and 16-dim heads are not FLUX.1's
        load_transformer(tmp_path / "t.pt", torch.float32)


def test_environment_variables_fill_paths_and_flags_win(official_layout, monkeypatch):
    paths, _ = official_layout
    for name, value in (
        ("FLUX_DEV", paths.flux),
        ("AE", paths.ae),
        ("T5", paths.t5),
        ("CLIP", paths.clip),
        ("LORA", paths.lora),
    ):
        monkeypatch.setenv(name, value)
    filled = ModelPaths().with_environment()
    assert (filled.flux, filled.ae, filled.t5, filled.clip, filled.lora) == (
        paths.flux,
        paths.ae,
        paths.t5,
        paths.clip,
        paths.lora,
    )
    assert ModelPaths(ae="mine.safetensors").with_environment().ae == "mine.safetensors"


# ------------------------------------------------------------------------------------- bad files
def test_missing_components_are_named():
    with pytest.raises(UnofluxError, match="--ae, --t5, --clip"):
        load_pipeline(ModelPaths(flux="x.safetensors"), device="cpu", use_environment=False)


def test_missing_file(tmp_path):
    with pytest.raises(UnofluxError, match="does not exist"):
        load_transformer(tmp_path / "flux1-dev.safetensors", torch.float32)


def test_corrupt_and_foreign_files(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(UnofluxError, match="not a readable safetensors"):
        load_transformer(tmp_path / "bad.safetensors", torch.float32)
    write_safetensors({"conv.weight": torch.zeros(2, 2)}, tmp_path / "other.safetensors")
    with pytest.raises(UnofluxError, match="not a FLUX transformer"):
        load_transformer(tmp_path / "other.safetensors", torch.float32)
    with pytest.raises(UnofluxError, match="not a FLUX VAE"):
        load_vae(tmp_path / "other.safetensors", torch.float32)
    (tmp_path / "weights.onnx").touch()
    with pytest.raises(UnofluxError, match="unknown type"):
        load_transformer(tmp_path / "weights.onnx", torch.float32)
    (tmp_path / "empty_folder").mkdir()
    with pytest.raises(UnofluxError, match="no config.json"):
        load_vae(tmp_path / "empty_folder", torch.float32)


def test_wrong_shape_names_the_key(official_layout, tmp_path):
    paths, _ = official_layout
    from unoflux.checkpoints.files import read_tensors

    state, meta = read_tensors(paths.flux)
    state["double_blocks.0.txt_attn.proj.weight"] = torch.zeros(32, 16)
    write_safetensors(state, tmp_path / "broken.safetensors", metadata=meta)
    with pytest.raises(
        UnofluxError, match=r"double_blocks.0.txt_attn.proj.weight|transformer_blocks.0.attn.to_add_out"
    ):
        load_transformer(tmp_path / "broken.safetensors", torch.float32)
    del state["double_blocks.0.txt_attn.proj.weight"]
    write_safetensors(state, tmp_path / "truncated.safetensors", metadata=meta)
    with pytest.raises(UnofluxError, match="missing"):
        load_transformer(tmp_path / "truncated.safetensors", torch.float32)


def test_text_encoder_folder_without_tokenizer(official_layout, tmp_path):
    paths, components = official_layout
    components["text_encoder_2"].save_pretrained(tmp_path / "t5-no-tokenizer")
    with pytest.raises(UnofluxError, match="tokenizer"):
        load_pipeline(
            ModelPaths(**{**vars(paths), "t5": str(tmp_path / "t5-no-tokenizer"), "lora": None}),
            device="cpu",
            use_environment=False,
        )


def test_offload_needs_a_gpu(official_layout):
    paths, _ = official_layout
    with pytest.raises(UnofluxError, match="needs --device cuda"):
        load_pipeline(paths, device="cpu", offload="model", use_environment=False)


def test_fp8_weight_storage_runs_close_to_full_precision(official_layout, ref_images):
    paths, _ = official_layout
    full = load_pipeline(paths, device="cpu", use_environment=False)
    fp8 = load_pipeline(paths, device="cpu", weights_dtype="fp8", use_environment=False)
    linear = fp8.transformer.transformer_blocks[0].attn.to_q.base_layer
    assert linear.weight.dtype == torch.float8_e4m3fn
    a, b = latents_of(full, ref_images[:1]), latents_of(fp8, ref_images[:1])
    assert not torch.equal(a, b) and ((a - b).norm() / a.norm()) < 0.1


def test_model_index_is_required_for_model_folders(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({}))
    with pytest.raises(UnofluxError, match="model_index.json"):
        load_pipeline(ModelPaths(model=str(tmp_path)), device="cpu", use_environment=False)


def test_a_model_folder_declares_its_guidance(tmp_path, diffusers_folder):
    """A model trained with guidance 1 only (the embedded one) declares it, and classifier-free guidance."""
    import shutil

    folder = tmp_path / "cfg"
    shutil.copytree(diffusers_folder, folder)
    (folder / "unoflux.json").write_text(
        json.dumps({"guidance": 1, "true_cfg": 2.5, "time_shift": 20, "stochasticity": 0.5})
    )
    pipe = load_pipeline(ModelPaths(model=str(folder)), device="cpu", use_environment=False)
    assert (pipe.model_defaults["guidance"], pipe.model_defaults["true_cfg"], pipe.model_defaults["time_shift"]) == (
        1.0,
        2.5,
        20.0,
    )
    out = pipe("a cat", width=32, height=32, num_inference_steps=2, seed=0, output_type="latent")
    assert (out.settings["guidance"], out.settings["true_cfg"], out.settings["time_shift"]) == (1.0, 2.5, 20.0)
    assert pipe.model_defaults["stochasticity"] == out.settings["stochasticity"] == 0.5
