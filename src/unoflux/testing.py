"""Tiny random FLUX-shaped components, written in every layout users have on disk.

Used by the tests, the parity script and the app tests: nothing can be downloaded here, so the loading
code is exercised on small checkpoints built in the official layouts (BFL single files, transformers
text-encoder folders, diffusers folders, UNO's XLabs LoRA). Same classes as FLUX.1, tiny sizes.
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5Tokenizer

from .checkpoints import bfl
from .checkpoints.files import write_safetensors
from .checkpoints.loading import ModelPaths
from .checkpoints.specs import scheduler_config_for

TINY_TRANSFORMER = dict(
    patch_size=1,
    in_channels=64,
    num_layers=1,
    num_single_layers=1,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=32,
    pooled_projection_dim=32,
    guidance_embeds=True,
    axes_dims_rope=[4, 6, 6],
)
TINY_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[32, 32, 32, 32],  # BFL's AE hard-codes 32 norm groups, so channels are multiples of 32
    layers_per_block=1,
    latent_channels=16,
    norm_num_groups=32,
    use_quant_conv=False,
    use_post_quant_conv=False,
    scaling_factor=0.3611,
    shift_factor=0.1159,
)
_WORDS = "a an the of in on at is photo cat dog clock cup beach snow red blue figurine crystal ball".split()


def tiny_t5_tokenizer() -> T5Tokenizer:
    """A Unigram tokenizer: whole words where known, single characters otherwise."""
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + w, -1.0) for w in _WORDS]
    vocab += [(c, -5.0) for c in string.ascii_letters + string.digits + string.punctuation]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)


def tiny_clip_tokenizer() -> CLIPTokenizer:
    """A byte-level BPE with no merges: every character is a token, as CLIP's tokenizer format requires."""
    chars = string.ascii_lowercase + string.digits + string.punctuation
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def tiny_components(seed: int = 0, guidance_embeds: bool = True, **transformer: Any) -> dict:
    """The seven FluxPipeline components at tiny sizes, with deterministic random weights; ``transformer`` overrides
    :data:`TINY_TRANSFORMER` (e.g. FLUX's head width: ``attention_head_dim=128, axes_dims_rope=[16, 56, 56]``)."""
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(**{**TINY_TRANSFORMER, "guidance_embeds": guidance_embeds, **transformer})
    vae = AutoencoderKL(**TINY_VAE)
    t5_tokenizer, clip_tokenizer = tiny_t5_tokenizer(), tiny_clip_tokenizer()
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(t5_tokenizer),
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=1,
            num_heads=4,
            feed_forward_proj="gated-gelu",
            relative_attention_num_buckets=8,
        )
    )
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(clip_tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=32,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config_for(dict(transformer.config)))
    return dict(
        transformer=transformer.eval(),
        vae=vae.eval(),
        text_encoder=clip.eval(),
        tokenizer=clip_tokenizer,
        text_encoder_2=t5.eval(),
        tokenizer_2=t5_tokenizer,
        scheduler=scheduler,
    )


def tiny_pipeline(seed: int = 0, guidance_embeds: bool = True):
    from .pipeline import UnoFluxPipeline

    pipe = UnoFluxPipeline(**tiny_components(seed, guidance_embeds))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def random_uno_lora(transformer: FluxTransformer2DModel, rank: int = 4, seed: int = 1, std: float = 0.05) -> dict:
    """A LoRA in UNO's XLabs layout (``dit_lora.safetensors``) for ``transformer``, random weights."""
    g = torch.Generator().manual_seed(seed)
    dim = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    mlp_hidden = (
        transformer.single_transformer_blocks[0].proj_mlp.out_features
        if len(transformer.single_transformer_blocks)
        else 4 * dim
    )
    lora = {}

    def add(prefix: str, inputs: int, outputs: int) -> None:
        lora[f"{prefix}.down.weight"] = torch.randn(rank, inputs, generator=g) * std
        lora[f"{prefix}.up.weight"] = torch.randn(outputs, rank, generator=g) * std

    for i in range(len(transformer.transformer_blocks)):
        for stream in ("1", "2"):
            add(f"double_blocks.{i}.processor.qkv_lora{stream}", dim, 3 * dim)
            add(f"double_blocks.{i}.processor.proj_lora{stream}", dim, dim)
    for i in range(len(transformer.single_transformer_blocks)):
        add(f"single_blocks.{i}.processor.qkv_lora", dim, 3 * dim)
        add(f"single_blocks.{i}.processor.proj_lora", dim + mlp_hidden, dim)
    return lora


def save_official_layout(components: dict, root: str | Path, lora: dict | None = None) -> ModelPaths:
    """Write ``components`` as a UNO user has them: BFL ``flux1.safetensors`` and ``ae.safetensors``,
    a T5 folder and a CLIP folder (transformers layout, tokenizer beside), optionally ``dit_lora.safetensors``."""
    root = Path(root)
    transformer, vae = components["transformer"], components["vae"]
    flux_path = write_safetensors(
        bfl.transformer_to_bfl(transformer.state_dict()),
        root / "flux1.safetensors",
        metadata={"axes_dims_rope": list(transformer.config.axes_dims_rope)},
    )
    ae_path = write_safetensors(
        bfl.vae_to_bfl(vae.state_dict(), len(vae.config.up_block_types)),
        root / "ae.safetensors",
        metadata={"scaling_factor": vae.config.scaling_factor, "shift_factor": vae.config.shift_factor},
    )
    t5_dir, clip_dir = root / "t5", root / "clip"  # UNO tells CLIP apart by "clip" in the path
    for model, tokenizer, folder in (
        (components["text_encoder_2"], components["tokenizer_2"], t5_dir),
        (components["text_encoder"], components["tokenizer"], clip_dir),
    ):
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    lora_path = write_safetensors(lora, root / "dit_lora.safetensors") if lora is not None else None
    return ModelPaths(
        flux=str(flux_path),
        ae=str(ae_path),
        t5=str(t5_dir),
        clip=str(clip_dir),
        lora=str(lora_path) if lora_path else None,
    )


# ------------------------------------------------------------------------------------------------ USO
TINY_SIGLIP_VISION = dict(  # 20 layers: USO reads hidden states -2, -11 and -20
    hidden_size=16, intermediate_size=32, num_hidden_layers=20, num_attention_heads=2, image_size=28, patch_size=14
)


def tiny_siglip(seed: int = 0, **vision: int):
    """A full ``SiglipModel`` (vision and text towers, as ``google/siglip-so400m-patch14-384`` is published) at
    tiny sizes (``vision`` overrides :data:`TINY_SIGLIP_VISION`), random weights."""
    from transformers import SiglipConfig, SiglipModel

    torch.manual_seed(seed)
    text = dict(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        vocab_size=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return SiglipModel(SiglipConfig(vision_config={**TINY_SIGLIP_VISION, **vision}, text_config=text)).eval()


def save_siglip(model, folder: str | Path, vision_only: bool = False) -> Path:
    """Write a SigLIP folder in transformers layout with its image processor: the full model, or (``vision_only``)
    a ``SiglipVisionModel`` folder."""
    from transformers import SiglipVisionModel

    from .checkpoints.uso import siglip_processor_class

    folder = Path(folder)
    if vision_only:
        vision = SiglipVisionModel(model.config.vision_config)
        vision.load_state_dict(model.vision_model.state_dict())
        vision.save_pretrained(folder)
    else:
        model.save_pretrained(folder)
    size = model.config.vision_config.image_size
    siglip_processor_class()(size={"height": size, "width": size}).save_pretrained(folder)
    return folder


def random_uso_projector(siglip, hidden: int, style_tokens: int = 2, seed: int = 2, std: float = 0.2) -> dict:
    """USO's ``projector.safetensors`` (``feature_embedder.*`` keys) for ``siglip`` and a transformer of width
    ``hidden``, random weights (USO's has 64 style tokens per level; tiny tests use fewer)."""
    vision = siglip.config.vision_config
    tokens, width = (vision.image_size // vision.patch_size) ** 2, vision.hidden_size
    g = torch.Generator().manual_seed(seed)
    state = {}
    for level in ("high", "mid", "low"):
        p = f"feature_embedder.{level}_"
        state[p + "embedding_linear.0.weight"] = torch.randn(style_tokens, tokens, generator=g) * std
        state[p + "embedding_linear.0.bias"] = torch.randn(style_tokens, generator=g) * std
        state[p + "layer_norm.weight"] = 1 + torch.randn(width, generator=g) * std
        state[p + "layer_norm.bias"] = torch.randn(width, generator=g) * std
        state[p + "projection.weight"] = torch.randn(hidden, width, generator=g) * std
        state[p + "projection.bias"] = torch.randn(hidden, generator=g) * std
    return state


def save_uso_layout(components: dict, root: str | Path, siglip=None, lora_rank: int = 4) -> ModelPaths:
    """:func:`save_official_layout` plus USO's files: a rank-``lora_rank`` ``dit_lora.safetensors`` (UNO's layout),
    ``projector.safetensors`` and a ``siglip/`` folder (full SiglipModel)."""
    root = Path(root)
    transformer = components["transformer"]
    siglip = siglip if siglip is not None else tiny_siglip()
    paths = save_official_layout(components, root, lora=random_uno_lora(transformer, rank=lora_rank, std=0.2))
    hidden = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    projector = write_safetensors(random_uso_projector(siglip, hidden), root / "projector.safetensors")
    siglip_dir = save_siglip(siglip, root / "siglip")
    return ModelPaths(**{**vars(paths), "projector": str(projector), "siglip": str(siglip_dir)})


# ---------------------------------------------------------------------------------------------- DreamO
def random_dreamo_lora(transformer: FluxTransformer2DModel, rank: int = 4, seed: int = 3, std: float = 0.05) -> dict:
    """A LoRA in DreamO's key layout (``double_blocks_{i}.processor.qkv_lora1.down.weight``, ...), random weights."""
    xlabs = random_uno_lora(transformer, rank=rank, seed=seed, std=std)
    return {re.sub(r"(double|single)_blocks\.(\d+)", r"\1_blocks_\2", k): v for k, v in xlabs.items()}


def random_diffusers_lora(transformer: FluxTransformer2DModel, rank: int = 2, seed: int = 4, std: float = 0.05) -> dict:
    """A diffusers-format FLUX LoRA (``transformer.<module>.lora_{A,B}.weight``) on every attention projection."""
    g = torch.Generator().manual_seed(seed)
    lora = {}
    for name, module in transformer.named_modules():
        if name.endswith(("attn.to_q", "attn.to_k", "attn.to_v", "attn.add_q_proj", "attn.to_add_out")):
            lora[f"transformer.{name}.lora_A.weight"] = torch.randn(rank, module.in_features, generator=g) * std
            lora[f"transformer.{name}.lora_B.weight"] = torch.randn(module.out_features, rank, generator=g) * std
    return lora


def save_dreamo_layout(components: dict, root: str | Path, seed: int = 5) -> tuple[ModelPaths, Path]:
    """:func:`save_official_layout` plus a folder laid out as ByteDance/DreamO publishes it (``dreamo.safetensors``
    with its embeddings, ``dreamo_cfg_distill.safetensors``, the v1 and v1.1 quality LoRAs) and a turbo LoRA file.
    Returns the FLUX paths (``turbo`` set) and the DreamO folder."""
    root = Path(root)
    transformer, t5 = components["transformer"], components["text_encoder_2"]
    paths = save_official_layout(components, root)
    folder = root / "DreamO"
    g = torch.Generator().manual_seed(seed)
    hidden = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    t5_rows = t5.get_input_embeddings().weight.shape[0] + 10
    main = random_dreamo_lora(transformer, seed=seed)
    main["dreamo_t5_embedding.weight"] = torch.randn(t5_rows, t5.config.d_model, generator=g)
    main["dreamo_task_embedding.weight"] = torch.randn(2, hidden, generator=g)
    main["dreamo_idx_embedding.weight"] = torch.randn(10, hidden, generator=g)
    write_safetensors(main, folder / "dreamo.safetensors")
    write_safetensors(random_dreamo_lora(transformer, seed=seed + 1), folder / "dreamo_cfg_distill.safetensors")
    write_safetensors(random_dreamo_lora(transformer, seed=seed + 2), folder / "dreamo_quality_lora_pos.safetensors")
    write_safetensors(random_dreamo_lora(transformer, seed=seed + 3), folder / "dreamo_quality_lora_neg.safetensors")
    write_safetensors(
        random_diffusers_lora(transformer, seed=seed + 4), folder / "v1.1" / "dreamo_sft_lora.safetensors"
    )
    write_safetensors(
        random_diffusers_lora(transformer, seed=seed + 5), folder / "v1.1" / "dreamo_dpo_lora.safetensors"
    )
    turbo = write_safetensors(random_diffusers_lora(transformer, seed=seed + 6), root / "turbo.safetensors")
    return ModelPaths(**{**vars(paths), "turbo": str(turbo)}), folder
