"""The LoRA of a LoRA run: adding the PEFT adapter (UNO's fused q/k/v down projection optional), its tensors
in and out (checkpoints hold the adapter's own tensors; exported files are at scale 1), starting it from a saved
LoRA (Stage II from Stage I), and the accelerate hooks that make checkpoints hold the LoRA, not the frozen base."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..checkpoints.lora import UNO_LORA_FILE
from ..errors import UnofluxError
from .checkpointing import STATE_FILE
from .config import TrainConfig

LORA_FILE = "pytorch_lora_weights.safetensors"  # diffusers' name, what load_lora_weights looks for
QKV_GROUPS = (("to_q", "to_k", "to_v"), ("add_q_proj", "add_k_proj", "add_v_proj"))

if TYPE_CHECKING:
    from accelerate import Accelerator


def add_lora(transformer: torch.nn.Module, config: TrainConfig) -> None:
    """Freeze ``transformer`` and add a PEFT LoRA adapter (the only trainable tensors)."""
    from peft import LoraConfig

    transformer.requires_grad_(False)
    lora = config.lora
    transformer.add_adapter(
        LoraConfig(
            r=lora.rank,
            lora_alpha=lora.alpha or lora.rank,
            lora_dropout=lora.dropout,
            target_modules=lora.peft_targets,
            init_lora_weights="gaussian",
        )
    )
    if lora.share_qkv_down:
        share_qkv_down(transformer)
    mark_only_lora_trainable(transformer)


def share_qkv_down(transformer: torch.nn.Module) -> int:
    """Tie the ``lora_A`` of q, k and v of every attention to one parameter: UNO's fused qkv LoRA (one
    down projection, three up blocks), so the XLabs export keeps the rank. Returns how many groups were tied."""
    tied = 0
    for module in transformer.modules():
        for group in QKV_GROUPS:
            layers = [getattr(module, name, None) for name in group]
            if not all(layer is not None and hasattr(layer, "lora_A") for layer in layers):
                continue
            for adapter in layers[0].lora_A:
                shared = layers[0].lora_A[adapter].weight  # one Parameter: the optimizer sees it once
                for layer in layers[1:]:
                    layer.lora_A[adapter].weight = shared
            tied += 1
    return tied


def mark_only_lora_trainable(model: torch.nn.Module) -> int:
    """``requires_grad`` on LoRA tensors only; returns how many parameters are trainable."""
    count = 0
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name)
        count += param.numel() if param.requires_grad else 0
    if not count:
        raise UnofluxError("the LoRA target modules matched no layer of the transformer")
    return count


def lora_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Only the LoRA tensors, keyed ``<module>.lora_{A,B}.weight`` (PEFT = diffusers' FLUX layout), on the CPU."""
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(model)
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def lora_scales(model: torch.nn.Module) -> dict[str, float]:
    """PEFT's runtime factor ``alpha / rank`` of every LoRA layer (``W + scale * B @ A``), by module name."""
    return {
        name: float(m.scaling["default"])
        for name, m in model.named_modules()
        if hasattr(m, "lora_A") and "default" in m.lora_A
    }


def export_lora_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA at scale 1 (``scale`` folded into ``lora_B``): files carry no alpha, and diffusers' and UNO's
    loaders apply ``W + B @ A``."""
    scales = lora_scales(model)
    state = lora_state_dict(model)
    for key in state:
        if key.endswith(".lora_B.weight"):
            state[key] = state[key] * scales[key.removesuffix(".lora_B.weight")]
    return state


def load_lora_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Inverse of :func:`lora_state_dict` onto a model that already has the adapter."""
    from peft.utils import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, state)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise UnofluxError(f"the checkpoint's LoRA has tensors this model does not: {unexpected[:3]}")


def find_lora_file(path: str | Path) -> Path:
    """``path`` itself, or the LoRA file inside a folder (a run's ``final/`` or a ``checkpoint-N/``)."""
    path = Path(path)
    if path.is_dir():
        for name in (LORA_FILE, UNO_LORA_FILE):
            if (path / name).is_file():
                return path / name
        raise UnofluxError(f"folder {str(path)!r} holds no {LORA_FILE} or {UNO_LORA_FILE}")
    return path


def load_init_lora(model: torch.nn.Module, path: str | Path) -> Path:
    """Start the adapter from a saved LoRA (Stage II from Stage I): a run's ``final/`` file (scale 1), a
    ``checkpoint-N/`` (the adapter's own tensors) or UNO's XLabs file (scale 1). It must adapt exactly this
    run's layers at this run's rank."""
    from ..checkpoints.files import read_tensors
    from ..checkpoints.lora import to_diffusers_lora

    file = find_lora_file(path)
    raw, _ = read_tensors(str(file), what="LoRA")
    try:
        loaded = {k.removeprefix("transformer."): v for k, v in to_diffusers_lora(raw).items()}
    except (ValueError, KeyError) as err:
        raise UnofluxError(f"init_lora {str(file)!r} is not a LoRA layout unoflux knows: {err}") from None
    current = lora_state_dict(model)
    scales = lora_scales(model)
    for key in sorted(set(current) | set(loaded)):
        if key not in loaded or key not in current:
            where = "this run's LoRA" if key not in loaded else "init_lora"
            raise UnofluxError(
                f"init_lora {str(file)!r} does not match this run's LoRA: {key!r} is only in {where} "
                "(use the same lora.target_modules as the run that made it)"
            )
        if loaded[key].shape != current[key].shape:
            raise UnofluxError(
                f"init_lora {str(file)!r} does not match this run's LoRA: {key!r} is {tuple(loaded[key].shape)}, "
                f"this run's is {tuple(current[key].shape)} (use the same lora.rank)"
            )
    scale_one = not (file.parent / STATE_FILE).is_file()  # checkpoints hold the raw adapter tensors
    state = {}
    for key, tensor in loaded.items():
        if scale_one and key.endswith(".lora_B.weight"):  # exported files are at scale 1; the adapter scales
            tensor = tensor / scales[key.removesuffix(".lora_B.weight")]
        state[key] = tensor.to(current[key].dtype)
    for parent_name, parent in model.named_modules():  # tied q/k/v downs (share_qkv_down) must come in tied
        for group in QKV_GROUPS:
            if _tied_group(parent, group):
                downs = [state[f"{parent_name}.{n}.lora_A.weight"] for n in group]
                if not all(torch.equal(d, downs[0]) for d in downs):
                    raise UnofluxError(
                        f"init_lora {str(file)!r} has different q/k/v down projections in {parent_name!r}, but this "
                        "run ties them (lora.share_qkv_down: true); train both stages with the same setting"
                    )
    load_lora_state_dict(model, state)
    return file


def _tied_group(module: torch.nn.Module, group: tuple[str, ...]) -> bool:
    """Whether ``module``'s q/k/v layers named ``group`` share one LoRA down projection."""
    layers = [getattr(module, name, None) for name in group]
    if not all(layer is not None and "default" in getattr(layer, "lora_A", {}) for layer in layers):
        return False
    return all(layer.lora_A["default"].weight is layers[0].lora_A["default"].weight for layer in layers)


def checkpoint_lora_only(accelerator: Accelerator) -> None:
    """Make ``accelerator``'s checkpoints hold the LoRA tensors (``LORA_FILE``), not the frozen base; for method
    dreamo (a :class:`~.dreamo.DreamOModel`, which has ``parts``) its trainable parts too (``PARTS_FILE``)."""
    from safetensors.torch import load_file, save_file

    from .dreamo import PARTS_FILE

    def save(models, weights, output_dir) -> None:
        if accelerator.is_main_process:
            model = accelerator.unwrap_model(models[0])
            save_file(lora_state_dict(getattr(model, "transformer", model)), str(Path(output_dir) / LORA_FILE))
            if hasattr(model, "parts"):
                parts = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.parts.state_dict().items()}
                save_file(parts, str(Path(output_dir) / PARTS_FILE))
        weights.clear()  # the frozen base is not written (``models`` is accelerate's own list: leave it)

    def load(models, input_dir) -> None:
        model = accelerator.unwrap_model(models.pop())
        load_lora_state_dict(getattr(model, "transformer", model), load_file(str(Path(input_dir) / LORA_FILE)))
        if hasattr(model, "parts"):
            model.parts.load_state_dict(load_file(str(Path(input_dir) / PARTS_FILE)))

    accelerator.register_save_state_pre_hook(save)
    accelerator.register_load_state_pre_hook(load)
