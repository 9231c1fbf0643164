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
    adapted = [n for n, m in pipe.transformer.named_modules() if hasattr(m, "lora_A") and adapter_name in m.lora_A]
    if 2 * len(adapted) != len(lora):  # every A/B pair must have landed on a layer
        raise UnofluxError(f"only {len(adapted)} of {len(lora) // 2} LoRA layers in {path!r} were loaded")
    return len(adapted)


# ------------------------------------------------------------------------------ export: PEFT -> XLabs
# Per block kind: (XLabs processor part, the diffusers modules whose outputs it fuses, in row order). The same
# mapping as diffusers' XLabs converter (1 = image stream, 2 = text stream; single proj = proj_out); DreamO's layout
# uses the same parts (checkpoints/dreamo.py).
UNO_LORA_FILE = "dit_lora.safetensors"  # UNO's name for its XLabs-layout LoRA

XLABS_PARTS = {
    "double_blocks": [
        ("qkv_lora1", ["attn.to_q", "attn.to_k", "attn.to_v"]),
        ("proj_lora1", ["attn.to_out.0"]),
        ("qkv_lora2", ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"]),
        ("proj_lora2", ["attn.to_add_out"]),
    ],
    "single_blocks": [("qkv_lora", ["attn.to_q", "attn.to_k", "attn.to_v"]), ("proj_lora", ["proj_out"])],
}


def _peft_pairs(lora: Tensors) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{module: (A (r, in), B (out, r))}`` from PEFT/diffusers keys (with or without ``transformer.``)."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in lora.items():
        name = key.removeprefix("transformer.")
        for part in ("lora_A", "lora_B"):
            suffix = f".{part}.weight"
            if name.endswith(suffix):
                pairs.setdefault(name[: -len(suffix)], {})[part] = tensor
                break
        else:
            raise UnofluxError(f"LoRA tensor {key!r} is not a lora_A/lora_B weight")
    for module, ab in pairs.items():
        if set(ab) != {"lora_A", "lora_B"}:
            raise UnofluxError(f"LoRA module {module!r} lacks its {'lora_B' if 'lora_A' in ab else 'lora_A'} weight")
    return {m: (ab["lora_A"], ab["lora_B"]) for m, ab in pairs.items()}


def _fuse(parts: list[tuple[torch.Tensor, torch.Tensor] | None], out_features: list[int], in_features: int):
    """One (down, up) for a fused layer whose output rows are the parts' outputs stacked in order.

    If every part is present with the same down matrix (a LoRA trained with ``share_qkv_down``, or one
    converted from XLabs), the fused LoRA keeps that rank: down = A, up = [B_q; B_k; B_v]. Otherwise it is
    exact at the sum of the ranks: down = [A_q; A_k; A_v], up = blockdiag(B_q, B_k, B_v) (absent parts
    contribute nothing).
    """
    present = [p for p in parts if p is not None]
    if len(present) == len(parts) and all(torch.equal(p[0], present[0][0]) for p in present):
        return present[0][0], torch.cat([p[1] for p in present], dim=0)
    rank = sum(p[0].shape[0] for p in present)
    dtype = present[0][0].dtype
    down = torch.zeros(rank, in_features, dtype=dtype)
    up = torch.zeros(sum(out_features), rank, dtype=dtype)
    row = col = 0
    for part, out in zip(parts, out_features):
        if part is not None:
            a, b = part
            down[col : col + a.shape[0]] = a
            up[row : row + out, col : col + a.shape[0]] = b
            col += a.shape[0]
        row += out
    return down, up


def to_xlabs_lora(peft_state_dict: Tensors, transformer: torch.nn.Module, scale: float = 1.0) -> Tensors:
    """A diffusers/PEFT FLUX LoRA -> UNO's XLabs layout (``dit_lora.safetensors``), exactly.

    ``peft_state_dict``: ``<module>.lora_{A,B}.weight`` (optionally prefixed ``transformer.``), applied as
    ``W + scale * B @ A``; ``scale`` is folded into ``up`` because XLabs has no alpha. ``transformer`` gives
    the block counts and layer widths.

    The result is complete and of one rank, because UNO's loader builds every processor of every block at
    one ``lora_rank`` and loads non-strictly onto empty tensors: parts the LoRA does not adapt are written
    as zeros (an exact no-op) and lower-rank parts are padded with zero rows/columns to the largest rank
    (pass that rank, stored in the file's metadata as ``lora_rank``, to UNO's ``--lora_rank``). A fused
    qkv LoRA has one down matrix: see :func:`_fuse` for when the rank is kept or tripled.
    Raises :class:`UnofluxError` for a LoRA on a layer the layout cannot hold (e.g. ``proj_mlp``, the
    final ``proj_out``): train with ``lora.target_modules: uno``.
    """
    pairs = _peft_pairs(peft_state_dict)
    blocks = {
        "double_blocks": ("transformer_blocks", len(transformer.transformer_blocks)),
        "single_blocks": ("single_transformer_blocks", len(transformer.single_transformer_blocks)),
    }
    fused: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    unadapted: dict[str, tuple[int, int]] = {}  # XLabs part -> (outputs, inputs), written as zeros
    used = set()
    for xlabs_kind, (diff_kind, count) in blocks.items():
        for i in range(count):
            for part, modules in XLABS_PARTS[xlabs_kind]:
                names = [f"{diff_kind}.{i}.{m}" for m in modules]
                layers = [transformer.get_submodule(n) for n in names]
                layers = [getattr(layer, "base_layer", layer) for layer in layers]  # a PEFT-wrapped layer
                outputs, inputs = [layer.out_features for layer in layers], layers[0].in_features
                key = f"{xlabs_kind}.{i}.processor.{part}"
                found = [pairs.get(n) for n in names]
                used.update(n for n in names if n in pairs)
                if all(f is None for f in found):
                    unadapted[key] = (sum(outputs), inputs)
                    continue
                found = [None if f is None else (f[0].float(), f[1].float() * scale) for f in found]
                fused[key] = _fuse(found, outputs, inputs)
    extra = sorted(set(pairs) - used)
    if extra:
        raise UnofluxError(
            f"the LoRA adapts {extra[0]!r} ({len(extra)} such layers), which UNO's XLabs layout cannot hold; "
            "train with lora.target_modules: uno to export dit_lora.safetensors"
        )
    if not fused:
        raise UnofluxError("the LoRA adapts no layer of the transformer")
    rank = max(down.shape[0] for down, _ in fused.values())
    for key, (outputs, inputs) in unadapted.items():
        fused[key] = (torch.zeros(rank, inputs), torch.zeros(outputs, rank))
    out: Tensors = {}
    for key in sorted(fused):
        down, up = fused[key]
        pad = rank - down.shape[0]  # zero rows of down meet zero columns of up: the product is unchanged
        out[f"{key}.down.weight"] = torch.cat([down, down.new_zeros(pad, down.shape[1])]).contiguous()
        out[f"{key}.up.weight"] = torch.cat([up, up.new_zeros(up.shape[0], pad)], dim=1).contiguous()
    return out
