"""Known models: name -> the environment variables UNO's reference code reads for their transformer file; the
schedulers single files do not carry (shipped, so nothing is fetched from a hub); a model folder's sampling
defaults (``unoflux.json``). Transformer and VAE configs are read from the files' shapes (``bfl.py``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    transformer_env: tuple[str, ...] = ()  # environment variables naming the transformer file


SPECS: dict[str, ModelSpec] = {
    # FLUX.1-dev, guidance-distilled; UNO's base model
    "flux-dev": ModelSpec(name="flux-dev", transformer_env=("FLUX_DEV", "FLUX_DEV_FP8")),
    # FLUX.1-schnell, timestep-distilled
    "flux-schnell": ModelSpec(name="flux-schnell", transformer_env=("FLUX_SCHNELL",)),
}

# Environment variables of UNO's reference code (explicit arguments win over them).
ENV_AE, ENV_T5, ENV_CLIP, ENV_LORA = "AE", "T5", "CLIP", "LORA"

# The small model trained on the synthetic world (docs/model.md) is shipped here as a diffusers folder.
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


def scheduler_config_for(transformer_config: dict[str, Any]) -> dict[str, Any]:
    """A guidance-distilled model (dev-like) shifts with resolution; a timestep-distilled one does not."""
    return _DEV_SCHEDULER if transformer_config.get("guidance_embeds") else _SCHNELL_SCHEDULER
