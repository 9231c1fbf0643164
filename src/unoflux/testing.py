"""Tiny random FLUX-shaped components, written in every layout users have on disk.

Used by the tests, the parity script and the app tests: nothing can be downloaded here, so the loading
code is exercised on small checkpoints built in the official layouts (BFL single files, transformers
text-encoder folders, diffusers folders, UNO's XLabs LoRA). Same classes as FLUX.1, tiny sizes.
"""

from __future__ import annotations

import string
from pathlib import Path

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


def tiny_components(seed: int = 0, guidance_embeds: bool = True) -> dict:
    """The seven FluxPipeline components at tiny sizes, with deterministic random weights."""
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(**{**TINY_TRANSFORMER, "guidance_embeds": guidance_embeds})
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
