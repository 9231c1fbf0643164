"""USO's style models from local files: ``projector.safetensors`` and a SigLIP folder (bytedance-research/USO,
``uso_flux_v1.0/``; SigLIP ``google/siglip-so400m-patch14-384``). USO's ``dit_lora.safetensors`` is UNO's XLabs
layout at rank 128 and loads as any UNO LoRA (``--lora``).

``projector.safetensors``: 18 tensors ``feature_embedder.{high,mid,low}_{embedding_linear.0,layer_norm,projection}
.{weight,bias}`` (:class:`~unoflux.methods.uso.StyleProjector`). The SigLIP folder is transformers' layout: a full
``SiglipModel`` repository (vision and text towers) or a vision-only ``SiglipVisionModel`` folder; only the vision
tower is loaded, in float32 as USO's code runs it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UnofluxError
from ..methods.uso import LEVEL_LAYERS, MIN_SIGLIP_LAYERS, StyleEncoder, StyleProjector
from .files import read_tensors

PROJECTOR_PREFIX = "feature_embedder."  # USO's attribute name on its Flux model
ENV_PROJECTOR, ENV_SIGLIP = "PROJECTION_MODEL", "SIGLIP_PATH"  # USO's environment variables (its example.env)


def load_style_projector(path: str | Path, hidden: int, dtype: torch.dtype) -> StyleProjector:
    """USO's projector file -> :class:`StyleProjector` in ``dtype``; every key and shape checked, ``hidden`` (the
    transformer's width) included."""
    path = str(path)
    raw, _ = read_tensors(path, what="USO projector")
    state = {k.removeprefix(PROJECTOR_PREFIX): v for k, v in raw.items()}
    for key in ("high_embedding_linear.0.weight", "high_projection.weight"):
        if key not in state:
            raise UnofluxError(
                f"USO projector {path!r} has no {PROJECTOR_PREFIX + key!r}; expected USO's projector.safetensors "
                f"(keys like 'feature_embedder.high_projection.weight')"
            )
    projector = StyleProjector(**StyleProjector.shapes_from(state))
    expected = projector.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        detail = f"missing {PROJECTOR_PREFIX + missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise UnofluxError(f"USO projector {path!r} is not USO's projector layout ({detail})")
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            raise UnofluxError(
                f"USO projector {path!r} has {PROJECTOR_PREFIX + key!r} of shape {tuple(tensor.shape)}, expected "
                f"{tuple(expected[key].shape)} (its levels must agree)"
            )
    if projector.hidden != hidden:
        raise UnofluxError(
            f"USO projector {path!r} makes tokens of width {projector.hidden}, but the transformer's is {hidden} "
            "(a projector for another model?)"
        )
    projector.load_state_dict(state)
    return projector.to(dtype).eval().requires_grad_(False)


def siglip_processor_class():
    """SigLIP's PIL image processor: transformers 5 names it ``SiglipImageProcessorPil`` (``SiglipImageProcessor``
    wants torchvision, and falls back to the PIL one with a warning); the same resize and scaling either way."""
    import transformers

    return getattr(transformers, "SiglipImageProcessorPil", transformers.SiglipImageProcessor)


def load_siglip(path: str | Path):
    """A SigLIP folder -> (image processor, vision tower in float32). A folder without ``preprocessor_config.json``
    gets SigLIP's own processor at the model's image size."""
    import transformers
    from transformers import SiglipVisionModel

    processor_class = siglip_processor_class()

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise UnofluxError(
            f"SigLIP {str(folder)!r} must be a folder in transformers layout with config.json "
            "(google/siglip-so400m-patch14-384)"
        )
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # a full SiglipModel folder: its text tower is left out on purpose
    try:
        vision = SiglipVisionModel.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise UnofluxError(f"SigLIP folder {str(folder)!r} cannot be loaded as a SigLIP vision model ({err})") from None
    finally:
        transformers.logging.set_verbosity(verbosity)
    size = vision.config.image_size
    if (folder / "preprocessor_config.json").is_file():
        processor = processor_class.from_pretrained(str(folder), local_files_only=True)
    else:  # the so400m processor's settings (bicubic resize to the square size, [-1, 1])
        processor = processor_class(size={"height": size, "width": size})
    return processor, vision.eval().requires_grad_(False)


def load_style_encoder(
    projector_path: str | Path, siglip_path: str | Path, hidden: int, dtype: torch.dtype, offload: bool = False
) -> StyleEncoder:
    """USO's projector and SigLIP, checked against each other: the projector reads SigLIP's patch tokens of
    SigLIP's width from three of its layers."""
    projector = load_style_projector(projector_path, hidden, dtype)
    processor, vision = load_siglip(siglip_path)
    config = vision.config
    tokens = (config.image_size // config.patch_size) ** 2
    if config.num_hidden_layers < MIN_SIGLIP_LAYERS:
        layers = ", ".join(str(i) for i in LEVEL_LAYERS.values())
        raise UnofluxError(
            f"SigLIP {str(siglip_path)!r} has {config.num_hidden_layers} layers; USO reads hidden states {layers} "
            f"and needs at least {MIN_SIGLIP_LAYERS} (so400m has 27)"
        )
    if (tokens, config.hidden_size) != (projector.siglip_tokens, projector.siglip_width):
        raise UnofluxError(
            f"SigLIP {str(siglip_path)!r} gives {tokens} tokens of width {config.hidden_size}, but USO projector "
            f"{str(projector_path)!r} takes {projector.siglip_tokens} of width {projector.siglip_width} "
            "(USO uses google/siglip-so400m-patch14-384)"
        )
    return StyleEncoder(processor=processor, vision=vision, projector=projector, offload=offload)
