"""Known models: name -> the diffusers configs that single files do not carry (shipped, so nothing is
fetched from a hub), the environment variables UNO's reference code reads, and sampling defaults."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .bfl import FLUX_AXES_DIMS_ROPE

_FLUX_TRANSFORMER = {
    "patch_size": 1,
    "in_channels": 64,
    "out_channels": None,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "axes_dims_rope": FLUX_AXES_DIMS_ROPE,
}
_FLUX_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 16,
    "norm_num_groups": 32,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
}
# FLUX.1-dev shifts its schedule with the image size; schnell does not.
_DEV_SCHEDULER = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
    "base_shift": 0.5,
    "max_shift": 1.15,
}
_SCHNELL_SCHEDULER = {"num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": False}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    transformer: dict[str, Any]
    vae: dict[str, Any]
    scheduler: dict[str, Any]
    transformer_env: tuple[str, ...] = ()  # environment variables naming the transformer file
    default_steps: int = 25
    default_guidance: float = 4.0
    notes: str = ""


SPECS: dict[str, ModelSpec] = {
    "flux-dev": ModelSpec(
        name="flux-dev",
        transformer={**_FLUX_TRANSFORMER, "guidance_embeds": True},
        vae=_FLUX_VAE,
        scheduler=_DEV_SCHEDULER,
        transformer_env=("FLUX_DEV", "FLUX_DEV_FP8"),
        notes="FLUX.1-dev, guidance-distilled; UNO's base model",
    ),
    "flux-schnell": ModelSpec(
        name="flux-schnell",
        transformer={**_FLUX_TRANSFORMER, "guidance_embeds": False},
        vae=_FLUX_VAE,
        scheduler=_SCHNELL_SCHEDULER,
        transformer_env=("FLUX_SCHNELL",),
        default_steps=4,
        notes="FLUX.1-schnell, timestep-distilled",
    ),
}

# Environment variables of UNO's reference code (explicit arguments win over them).
ENV_AE, ENV_T5, ENV_CLIP, ENV_LORA = "AE", "T5", "CLIP", "LORA"

# The small model trained on the synthetic world (issue 3/4) is shipped here as a diffusers folder.
EMBEDDED_MODEL_DIR = Path(__file__).resolve().parent.parent / "embedded" / "uno-world"
# A model folder may say how it likes to be sampled (our small models are native at 64 px, not 512).
MODEL_DEFAULTS_FILE = "unoflux.json"


def model_defaults(model_dir: str | Path | None) -> dict[str, Any]:
    """Sampling defaults a model folder declares in ``unoflux.json`` (e.g. ``{"image_size": 64}``)."""
    path = Path(model_dir) / MODEL_DEFAULTS_FILE if model_dir else None
    return json.loads(path.read_text()) if path and path.is_file() else {}


def write_model_defaults(model_dir: str | Path, defaults: dict[str, Any]) -> None:
    """Replace ``model_dir``'s ``unoflux.json`` with ``defaults`` (what :func:`model_defaults` reads back)."""
    (Path(model_dir) / MODEL_DEFAULTS_FILE).write_text(json.dumps(defaults) + "\n")


def spec_for_transformer_config(config: dict[str, Any]) -> ModelSpec | None:
    """The known model whose transformer has exactly this config, if any."""
    keys = ("num_layers", "num_single_layers", "attention_head_dim", "num_attention_heads", "guidance_embeds")
    for spec in SPECS.values():
        if all(config.get(k) == spec.transformer.get(k) for k in keys):
            return spec
    return None


def scheduler_config_for(transformer_config: dict[str, Any]) -> dict[str, Any]:
    """A guidance-distilled model (dev-like) shifts with resolution; a timestep-distilled one does not."""
    return _DEV_SCHEDULER if transformer_config.get("guidance_embeds") else _SCHNELL_SCHEDULER
