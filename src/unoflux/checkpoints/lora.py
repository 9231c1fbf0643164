"""UNO LoRA files: read (XLabs layout of ``dit_lora.safetensors``, or diffusers/PEFT layout), check that
every tensor fits the transformer, and load through diffusers' LoRA loader at scale 1.

UNO's XLabs layout (rank 512 on every block, no alpha):
``double_blocks.{i}.processor.{qkv_lora1,proj_lora1,qkv_lora2,proj_lora2}.{down,up}.weight`` (1 = image
stream, 2 = text stream) and ``single_blocks.{i}.processor.{qkv_lora,proj_lora}.{down,up}.weight``.
diffusers converts it (the fused qkv LoRA becomes q/k/v LoRAs sharing ``down``; single-block
``proj_lora`` is ``proj_out``, whose input is attention output || MLP activation).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import FluxPipeline

from ..errors import UnofluxError
from .files import read_tensors

Tensors = dict[str, torch.Tensor]


def is_xlabs_lora(state_dict: Tensors) -> bool:
    return any(".processor." in k for k in state_dict)


def to_diffusers_lora(state_dict: Tensors) -> Tensors:
    """Any supported LoRA layout -> diffusers keys (``transformer.<module>.lora_{A,B}.weight``)."""
    converted = FluxPipeline.lora_state_dict(dict(state_dict))
    return converted[0] if isinstance(converted, tuple) else converted


def check_lora_fits(transformer: torch.nn.Module, lora: Tensors, path: str) -> None:
    """Raise one clear sentence if a LoRA tensor names no layer of ``transformer`` or has the wrong shape."""
    for key, tensor in lora.items():
        if not key.startswith("transformer.") or not key.endswith((".lora_A.weight", ".lora_B.weight")):
            raise UnofluxError(f"LoRA {path!r} has tensor {key!r}, which is not a transformer LoRA weight")
        module_name = key[len("transformer.") : -len(".lora_A.weight")]
        try:
            layer = transformer.get_submodule(module_name)
        except AttributeError:
            raise UnofluxError(f"LoRA {path!r} targets {module_name!r}, which this transformer does not have") from None
        layer = getattr(layer, "base_layer", layer)  # already wrapped by an earlier LoRA
        if key.endswith(".lora_A.weight") and tensor.shape[1] != layer.in_features:
            raise UnofluxError(
                f"LoRA {path!r} does not fit this transformer: {key!r} takes {tensor.shape[1]} inputs but "
                f"{module_name!r} has {layer.in_features} (a LoRA for another model size?)"
            )
        if key.endswith(".lora_B.weight") and tensor.shape[0] != layer.out_features:
            raise UnofluxError(
                f"LoRA {path!r} does not fit this transformer: {key!r} gives {tensor.shape[0]} outputs but "
                f"{module_name!r} has {layer.out_features}"
            )
        partner = key.replace(".lora_B.", ".lora_A.") if ".lora_B." in key else key.replace(".lora_A.", ".lora_B.")
        if partner not in lora:
            raise UnofluxError(f"LoRA {path!r} has {key!r} without its partner {partner!r}")
        rank_a = lora[key if ".lora_A." in key else partner].shape[0]
        rank_b = lora[partner if ".lora_A." in key else key].shape[1]
        if rank_a != rank_b:
            raise UnofluxError(f"LoRA {path!r} is inconsistent at {module_name!r}: rank {rank_a} down vs {rank_b} up")


def load_lora_into_pipeline(pipe, path: str | Path, adapter_name: str = "uno") -> int:
    """Load the LoRA at ``path`` onto ``pipe.transformer`` (scale 1) and return how many layers it adapts."""
    path = str(path)
    raw, _ = read_tensors(path, what="LoRA")
    if not raw:
        raise UnofluxError(f"LoRA {path!r} holds no tensors")
    try:
        lora = to_diffusers_lora(raw)
    except (ValueError, KeyError) as err:
        raise UnofluxError(f"LoRA {path!r} is not in a layout unoflux knows (XLabs/UNO or diffusers): {err}") from None
    check_lora_fits(pipe.transformer, lora, path)
    pipe.load_lora_weights(lora, adapter_name=adapter_name)
    adapted = [
        n for n, m in pipe.transformer.named_modules() if hasattr(m, "lora_A") and adapter_name in m.lora_A
    ]
    if 2 * len(adapted) != len(lora):  # every A/B pair must have landed on a layer
        raise UnofluxError(f"only {len(adapted)} of {len(lora) // 2} LoRA layers in {path!r} were loaded")
    return len(adapted)
