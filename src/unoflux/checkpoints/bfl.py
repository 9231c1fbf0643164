"""Black Forest Labs' single-file layouts (``flux1-dev.safetensors``, ``ae.safetensors``) <-> diffusers.

diffusers converts BFL transformer files only at FLUX.1's widths (it hard-codes 3072 hidden / 4x MLP);
this module converts any width both ways from one table and infers the diffusers config from tensor
shapes, so our own small FLUX-shaped models and the real ones load through the same code. The VAE
direction BFL -> diffusers is diffusers' own ``convert_ldm_vae_checkpoint``; the reverse is here.
"""

from __future__ import annotations

import json
import re
from typing import Any

import torch

from ..errors import UnofluxError

Tensors = dict[str, torch.Tensor]

# ------------------------------------------------------------------------------------- transformer
# (BFL name, diffusers names). A name ending in ".weight"/".scale" is one parameter; otherwise it is a
# Linear whose ".weight" and ".bias" both map. Several diffusers names = a fused BFL tensor split on dim 0.
_TOP = [
    ("img_in", ["x_embedder"]),
    ("txt_in", ["context_embedder"]),
    ("time_in.in_layer", ["time_text_embed.timestep_embedder.linear_1"]),
    ("time_in.out_layer", ["time_text_embed.timestep_embedder.linear_2"]),
    ("vector_in.in_layer", ["time_text_embed.text_embedder.linear_1"]),
    ("vector_in.out_layer", ["time_text_embed.text_embedder.linear_2"]),
    ("guidance_in.in_layer", ["time_text_embed.guidance_embedder.linear_1"]),
    ("guidance_in.out_layer", ["time_text_embed.guidance_embedder.linear_2"]),
    ("final_layer.linear", ["proj_out"]),
    ("final_layer.adaLN_modulation.1", ["norm_out.linear"]),  # (shift, scale) in BFL, (scale, shift) here
]
_DOUBLE = [
    ("img_mod.lin", ["norm1.linear"]),
    ("txt_mod.lin", ["norm1_context.linear"]),
    ("img_attn.qkv", ["attn.to_q", "attn.to_k", "attn.to_v"]),
    ("txt_attn.qkv", ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"]),
    ("img_attn.norm.query_norm.scale", ["attn.norm_q.weight"]),
    ("img_attn.norm.key_norm.scale", ["attn.norm_k.weight"]),
    ("txt_attn.norm.query_norm.scale", ["attn.norm_added_q.weight"]),
    ("txt_attn.norm.key_norm.scale", ["attn.norm_added_k.weight"]),
    ("img_attn.proj", ["attn.to_out.0"]),
    ("txt_attn.proj", ["attn.to_add_out"]),
    ("img_mlp.0", ["ff.net.0.proj"]),
    ("img_mlp.2", ["ff.net.2"]),
    ("txt_mlp.0", ["ff_context.net.0.proj"]),
    ("txt_mlp.2", ["ff_context.net.2"]),
]
_SINGLE = [
    ("modulation.lin", ["norm.linear"]),
    ("linear1", ["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"]),  # [D, D, D, mlp_hidden] rows
    ("norm.query_norm.scale", ["attn.norm_q.weight"]),
    ("norm.key_norm.scale", ["attn.norm_k.weight"]),
    ("linear2", ["proj_out"]),
]
_SWAP_HALVES = {"final_layer.adaLN_modulation.1"}
FLUX_AXES_DIMS_ROPE = [16, 56, 56]  # RoPE split of FLUX.1's 128-dim heads; not visible in tensor shapes


def _param_pairs(num_double: int, num_single: int):
    """Yield (bfl_key, [diffusers_keys], bfl_stem) for every parameter of the model."""
    blocks = [("", "", _TOP)]
    blocks += [(f"double_blocks.{i}.", f"transformer_blocks.{i}.", _DOUBLE) for i in range(num_double)]
    blocks += [(f"single_blocks.{i}.", f"single_transformer_blocks.{i}.", _SINGLE) for i in range(num_single)]
    for bfl_prefix, diff_prefix, table in blocks:
        for bfl, diffs in table:
            if bfl.endswith((".weight", ".scale")):
                yield bfl_prefix + bfl, [diff_prefix + d for d in diffs], bfl
            else:
                for suffix in (".weight", ".bias"):
                    yield bfl_prefix + bfl + suffix, [diff_prefix + d + suffix for d in diffs], bfl


def _count_blocks(keys, prefix: str) -> int:
    found = {int(m.group(1)) for k in keys if (m := re.match(rf"{re.escape(prefix)}(\d+)\.", k))}
    return max(found) + 1 if found else 0


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def strip_prefixes(state_dict: Tensors) -> Tensors:
    """Drop the wrappers some tools add (ComfyUI's ``model.diffusion_model.``, PEFT's ``transformer.``)."""
    for prefix in ("model.diffusion_model.", "diffusion_model."):
        if any(k.startswith(prefix) for k in state_dict):
            return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state_dict.items()}
    return state_dict


def is_bfl_transformer(state_dict: Tensors) -> bool:
    return any(k.startswith("double_blocks.") for k in state_dict) and "img_in.weight" in state_dict


def transformer_to_diffusers(sd: Tensors) -> Tensors:
    """BFL FLUX transformer state dict -> diffusers ``FluxTransformer2DModel`` state dict (any width)."""
    sd = dict(strip_prefixes(sd))
    hidden = sd["img_in.weight"].shape[0]
    out: Tensors = {}
    for bfl_key, diff_keys, stem in _param_pairs(
        _count_blocks(sd, "double_blocks."), _count_blocks(sd, "single_blocks.")
    ):
        if bfl_key not in sd:
            continue  # e.g. no guidance_in in schnell; the model's strict load reports real gaps
        tensor = sd.pop(bfl_key)
        if stem in _SWAP_HALVES:
            tensor = _swap_halves(tensor)
        if len(diff_keys) == 1:
            out[diff_keys[0]] = tensor
        else:
            sizes = [hidden] * 3 + ([tensor.shape[0] - 3 * hidden] if len(diff_keys) == 4 else [])
            out.update(zip(diff_keys, torch.split(tensor, sizes, dim=0)))
    if sd:
        raise UnofluxError(
            f"the FLUX transformer file has {len(sd)} tensors that are not part of FLUX's BFL layout, "
            f"e.g. {sorted(sd)[0]!r}"
        )
    return out


def transformer_to_bfl(sd: Tensors) -> Tensors:
    """diffusers ``FluxTransformer2DModel`` state dict -> BFL layout (what ``flux1-dev.safetensors`` holds)."""
    sd = dict(sd)
    out: Tensors = {}
    num_double = _count_blocks(sd, "transformer_blocks.")
    num_single = _count_blocks(sd, "single_transformer_blocks.")
    for bfl_key, diff_keys, stem in _param_pairs(num_double, num_single):
        if not all(k in sd for k in diff_keys):
            continue
        tensor = torch.cat([sd.pop(k) for k in diff_keys], dim=0)
        out[bfl_key] = _swap_halves(tensor) if stem in _SWAP_HALVES else tensor
    if sd:
        raise UnofluxError(f"{len(sd)} transformer tensors have no BFL name, e.g. {sorted(sd)[0]!r}")
    return out


def infer_transformer_config(bfl: Tensors, metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """The ``FluxTransformer2DModel`` config that BFL-layout tensors describe.

    Everything but the RoPE axis split is read from shapes; that split comes from the file's metadata
    (``axes_dims_rope``, which our own writer stores) or is FLUX.1's [16, 56, 56] for 128-dim heads.
    """
    hidden, in_channels = bfl["img_in.weight"].shape
    head_dim = bfl["double_blocks.0.img_attn.norm.query_norm.scale"].shape[0]
    mlp_ratio = bfl["double_blocks.0.img_mlp.0.weight"].shape[0] / hidden
    if mlp_ratio != 4:
        raise UnofluxError(f"the transformer's MLP is {mlp_ratio:g}x its width; FLUX (and diffusers) need 4x")
    metadata = metadata or {}
    if "axes_dims_rope" in metadata:
        axes = [int(a) for a in json.loads(metadata["axes_dims_rope"])]
    elif head_dim == 128:
        axes = FLUX_AXES_DIMS_ROPE
    else:
        raise UnofluxError(
            f"the transformer has {head_dim}-dim attention heads and its file does not say how RoPE splits them "
            "(safetensors metadata 'axes_dims_rope'); save it with unoflux or pass a diffusers folder"
        )
    return {
        "patch_size": 1,
        "in_channels": int(in_channels),
        "out_channels": int(bfl["final_layer.linear.weight"].shape[0]),
        "num_layers": _count_blocks(bfl, "double_blocks."),
        "num_single_layers": _count_blocks(bfl, "single_blocks."),
        "attention_head_dim": int(head_dim),
        "num_attention_heads": int(hidden // head_dim),
        "joint_attention_dim": int(bfl["txt_in.weight"].shape[1]),
        "pooled_projection_dim": int(bfl["vector_in.in_layer.weight"].shape[1]),
        "guidance_embeds": "guidance_in.in_layer.weight" in bfl,
        "axes_dims_rope": axes,
    }


# --------------------------------------------------------------------------------------------- VAE
# diffusers -> LDM/BFL renames, applied in order as regex substitutions on the key.
_VAE_TO_BFL = [
    (r"\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r".down.\1.block.\2."),
    (r"\.down_blocks\.(\d+)\.downsamplers\.0\.", r".down.\1.downsample."),
    (r"\.mid_block\.resnets\.(\d+)\.", lambda m: f".mid.block_{int(m.group(1)) + 1}."),
    (r"\.mid_block\.attentions\.0\.group_norm\.", ".mid.attn_1.norm."),
    (r"\.mid_block\.attentions\.0\.to_(q|k|v)\.", r".mid.attn_1.\1."),
    (r"\.mid_block\.attentions\.0\.to_out\.0\.", ".mid.attn_1.proj_out."),
    (r"\.conv_shortcut\.", ".nin_shortcut."),
    (r"\.conv_norm_out\.", ".norm_out."),
]


def vae_to_bfl(sd: Tensors, num_up_blocks: int) -> Tensors:
    """diffusers ``AutoencoderKL`` state dict -> the LDM/BFL layout of ``ae.safetensors``."""
    out: Tensors = {}
    for key, tensor in sd.items():
        new = key
        if m := re.match(r"decoder\.up_blocks\.(\d+)\.", key):  # decoder up blocks run in reverse order
            level = num_up_blocks - 1 - int(m.group(1))
            new = re.sub(r"^decoder\.up_blocks\.\d+\.", f"decoder.up.{level}.", new)
            new = new.replace(".resnets.", ".block.").replace(".upsamplers.0.", ".upsample.")
        for pattern, replacement in _VAE_TO_BFL:
            new = re.sub(pattern, replacement, new)
        if ".mid.attn_1." in new and new.endswith(".weight") and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]  # LDM attention projections are 1x1 convolutions
        out[new] = tensor
    return out


def is_bfl_vae(state_dict: Tensors) -> bool:
    return any(k.startswith("encoder.down.") for k in state_dict)


def infer_vae_config(bfl: Tensors, metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """The ``AutoencoderKL`` config of an LDM/BFL-layout VAE (FLUX's scale/shift unless metadata says)."""
    levels = _count_blocks(bfl, "encoder.down.")
    metadata = metadata or {}
    return {
        "in_channels": int(bfl["encoder.conv_in.weight"].shape[1]),
        "out_channels": int(bfl["decoder.conv_out.weight"].shape[0]),
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": [int(bfl[f"encoder.down.{i}.block.0.conv2.weight"].shape[0]) for i in range(levels)],
        "layers_per_block": _count_blocks(bfl, "encoder.down.0.block."),
        "latent_channels": int(bfl["encoder.conv_out.weight"].shape[0] // 2),
        "norm_num_groups": int(metadata.get("norm_num_groups", 32)),  # BFL's AE hard-codes 32 groups
        # only VAE tiling reads it (its tile size): FLUX's 1024 px, not diffusers' default 32
        "sample_size": int(metadata.get("sample_size", 1024)),
        "use_quant_conv": "quant_conv.weight" in bfl,
        "use_post_quant_conv": "post_quant_conv.weight" in bfl,
        "scaling_factor": float(metadata.get("scaling_factor", 0.3611)),
        "shift_factor": float(metadata.get("shift_factor", 0.1159)),
    }
