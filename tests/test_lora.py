"""UNO's XLabs-layout LoRA through diffusers' converter: every layer gets exactly base + x A^T B^T."""

from __future__ import annotations

import copy

import pytest
import torch
from PIL import Image

from unoflux import UnofluxError
from unoflux.checkpoints.files import write_safetensors
from unoflux.testing import random_uno_lora, tiny_pipeline

D = 32  # tiny hidden size


@pytest.fixture(scope="module")
def lora_setup(tmp_path_factory):
    base = tiny_pipeline(seed=0)
    lora = random_uno_lora(base.transformer, rank=4, seed=3, std=0.1)
    path = write_safetensors(lora, tmp_path_factory.mktemp("lora") / "dit_lora.safetensors")
    adapted = tiny_pipeline(seed=0)
    adapted.load_uno_lora(str(path))
    return base, adapted, lora, path


# (diffusers layer, XLabs tensor prefix, rows of the fused "up" that belong to this layer)
LAYERS = [
    ("transformer_blocks.0.attn.to_q", "double_blocks.0.processor.qkv_lora1", slice(0, D)),
    ("transformer_blocks.0.attn.to_v", "double_blocks.0.processor.qkv_lora1", slice(2 * D, 3 * D)),
    ("transformer_blocks.0.attn.add_k_proj", "double_blocks.0.processor.qkv_lora2", slice(D, 2 * D)),
    ("transformer_blocks.0.attn.to_out.0", "double_blocks.0.processor.proj_lora1", slice(None)),
    ("transformer_blocks.0.attn.to_add_out", "double_blocks.0.processor.proj_lora2", slice(None)),
    ("single_transformer_blocks.0.attn.to_k", "single_blocks.0.processor.qkv_lora", slice(D, 2 * D)),
    ("single_transformer_blocks.0.proj_out", "single_blocks.0.processor.proj_lora", slice(None)),
]


@pytest.mark.parametrize("layer_name, prefix, rows", LAYERS)
def test_each_layer_is_base_plus_hand_computed_lora(lora_setup, layer_name, prefix, rows):
    base, adapted, lora, _ = lora_setup
    base_layer = base.transformer.get_submodule(layer_name)
    x = torch.randn(3, base_layer.in_features, generator=torch.Generator().manual_seed(0))
    down, up = lora[f"{prefix}.down.weight"], lora[f"{prefix}.up.weight"][rows]
    expected = base_layer(x) + x @ down.T @ up.T  # UNO: no alpha, scale 1
    got = adapted.transformer.get_submodule(layer_name)(x)
    assert torch.allclose(got, expected, atol=1e-5)


def merge_by_hand(transformer, lora):
    """W <- W + up @ down for every XLabs tensor, on the fused qkv rows as UNO's processors apply them."""
    merged = copy.deepcopy(transformer)
    targets = {
        "qkv_lora1": ["attn.to_q", "attn.to_k", "attn.to_v"],
        "qkv_lora2": ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"],
        "proj_lora1": ["attn.to_out.0"],
        "proj_lora2": ["attn.to_add_out"],
        "qkv_lora": ["attn.to_q", "attn.to_k", "attn.to_v"],
        "proj_lora": ["proj_out"],
    }
    with torch.no_grad():
        for key, down in lora.items():
            if not key.endswith(".down.weight"):
                continue
            blocks, index, _, name = key.split(".")[:4]
            block = ("transformer_blocks" if blocks == "double_blocks" else "single_transformer_blocks") + f".{index}"
            delta = lora[key.replace(".down.", ".up.")] @ down
            for part, layer in zip(delta.chunk(len(targets[name])), targets[name]):
                merged.get_submodule(f"{block}.{layer}").weight += part
    return merged


def test_whole_transformer_equals_hand_merged_weights(lora_setup):
    base, adapted, lora, _ = lora_setup
    merged = merge_by_hand(base.transformer, lora)
    g = torch.Generator().manual_seed(1)
    inputs = dict(
        hidden_states=torch.randn(1, 20, 64, generator=g),
        encoder_hidden_states=torch.randn(1, 7, 32, generator=g),
        pooled_projections=torch.randn(1, 32, generator=g),
        timestep=torch.tensor([0.7]),
        guidance=torch.tensor([4.0]),
        txt_ids=torch.zeros(7, 3),
        img_ids=torch.randint(0, 8, (20, 3)).float(),
        return_dict=False,
    )
    with torch.no_grad():
        out_lora = adapted.transformer(**inputs)[0]
        out_merged = merged(**inputs)[0]
        out_base = base.transformer(**inputs)[0]
    assert torch.allclose(out_lora, out_merged, atol=1e-5)
    assert not torch.allclose(out_lora, out_base, atol=1e-3)  # the LoRA really changes the model


def test_every_lora_layer_is_loaded(lora_setup):
    _, adapted, lora, _ = lora_setup
    adapted_layers = [n for n, m in adapted.transformer.named_modules() if hasattr(m, "lora_A") and "uno" in m.lora_A]
    # double block: 3 + 3 qkv + 2 proj; single block: 3 qkv + proj_out
    assert len(adapted_layers) == 8 + 4


def test_rank_and_dimension_mismatches_are_explained(tmp_path):
    pipe = tiny_pipeline(seed=0)
    wrong_dim = random_uno_lora(pipe.transformer, rank=4)
    wrong_dim["double_blocks.0.processor.proj_lora1.down.weight"] = torch.zeros(4, 48)
    write_safetensors(wrong_dim, tmp_path / "dim.safetensors")
    with pytest.raises(UnofluxError, match="takes 48 inputs"):
        pipe.load_uno_lora(str(tmp_path / "dim.safetensors"))
    wrong_rank = random_uno_lora(pipe.transformer, rank=4)
    wrong_rank["double_blocks.0.processor.proj_lora1.up.weight"] = torch.zeros(D, 8)
    write_safetensors(wrong_rank, tmp_path / "rank.safetensors")
    with pytest.raises(UnofluxError, match="rank 4 down vs 8 up"):
        pipe.load_uno_lora(str(tmp_path / "rank.safetensors"))
    too_deep = random_uno_lora(pipe.transformer, rank=4)
    too_deep["double_blocks.7.processor.proj_lora1.down.weight"] = torch.zeros(4, D)
    too_deep["double_blocks.7.processor.proj_lora1.up.weight"] = torch.zeros(D, 4)
    write_safetensors(too_deep, tmp_path / "deep.safetensors")
    with pytest.raises(UnofluxError, match="transformer_blocks.7"):
        pipe.load_uno_lora(str(tmp_path / "deep.safetensors"))


def test_a_fused_uno_lora_gives_the_same_image_without_adapters(official_layout):
    from unoflux import ModelPaths, load_pipeline

    paths, _ = official_layout
    kwargs = dict(device="cpu", dtype="fp32", use_environment=False)
    adapters, fused = load_pipeline(paths, **kwargs), load_pipeline(paths, fuse_lora=True, **kwargs)
    base = load_pipeline(ModelPaths(flux=paths.flux, ae=paths.ae, t5=paths.t5, clip=paths.clip), **kwargs)
    assert any("lora" in name for name, _ in adapters.transformer.named_parameters())
    assert not any("lora" in name for name, _ in fused.transformer.named_parameters())  # no extra matmuls
    call = dict(width=64, height=48, steps=2, seed=0, reference_long_side=48, output_type="latent")
    ref = [Image.new("RGB", (48, 32), (200, 40, 40))]
    a, b, c = (p("a red clock", ref, **call).images.float() for p in (adapters, fused, base))
    assert (a - b).norm() / a.norm() < 1e-5 and (a - c).norm() / a.norm() > 1e-3  # the LoRA is in, to rounding


def test_fusing_a_lora_meant_for_reference_calls_only_is_refused():
    from unoflux import load_pipeline

    with pytest.raises(UnofluxError, match="--fuse-lora cannot fuse .* applies only to calls with references"):
        load_pipeline(device="cpu", fuse_lora=True, use_environment=False)  # the embedded model
