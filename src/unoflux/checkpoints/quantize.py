"""Quantized transformer weights through torchao (``--quantize``): the big Linear layers only.

``int8`` stores each weight as int8 with a per-row scale and computes in the model's dtype (weight-only; on any
device; a quarter of fp32's bytes, half of bf16's). ``fp8`` quantizes weights and activations to float8 so the
matmuls themselves run in fp8 (Hopper and Ada GPUs only). Both change the image slightly; docs/performance.md
gives the cost. The LoRA, norms, embedders and the final projection stay in the compute dtype, as with
``--weights-dtype fp8``; the LoRA's base layers are quantized under it (peft calls them as before).
"""

from __future__ import annotations

import torch

from ..errors import UnofluxError

QUANTIZATIONS = ("int8", "fp8")

# module names kept in the compute dtype: small, or where rounding shows (as enable_layerwise_casting skips)
_KEEP = ("lora_", "norm", "pos_embed", "x_embedder", "context_embedder", "time_text_embed", "proj_out")


def check_quantization(quantize: str | None, device: str) -> None:
    """``quantize`` is one we offer and this device can run it: before any weights load."""
    if quantize is None:
        return
    if quantize not in QUANTIZATIONS:
        raise UnofluxError(f"quantization {quantize!r} is not one of: {', '.join(QUANTIZATIONS)}")
    _torchao()
    if quantize == "fp8":
        cuda = str(device).startswith("cuda") and torch.cuda.is_available()
        if not cuda or torch.cuda.get_device_capability(torch.device(device)) < (8, 9):
            raise UnofluxError(
                f"--quantize fp8 runs float8 matmuls, which need an Ada or Hopper GPU (compute capability 8.9+), "
                f"not {device!r}; use --quantize int8 or --weights-dtype fp8 (fp8 storage only)"
            )


def quantize_transformer(transformer: torch.nn.Module, quantize: str) -> torch.nn.Module:
    """Replace the weights of the transformer's big Linear layers by torchao's quantized tensors, in place."""
    torchao = _torchao()
    from torchao.quantization import quantize_

    config = {
        "int8": torchao.quantization.Int8WeightOnlyConfig,
        "fp8": torchao.quantization.Float8DynamicActivationFloat8WeightConfig,
    }[quantize]()

    def big_linear(module: torch.nn.Module, name: str) -> bool:
        return isinstance(module, torch.nn.Linear) and not any(part in name for part in _KEEP)

    quantize_(transformer, config, filter_fn=big_linear)
    return transformer


def quantized_layers(transformer: torch.nn.Module) -> int:
    """How many Linear layers hold a quantized (torchao tensor subclass) weight."""
    return sum(
        isinstance(m, torch.nn.Linear) and type(m.weight) not in (torch.Tensor, torch.nn.Parameter)
        for m in transformer.modules()
    )


def _torchao():
    try:
        import torchao
        import torchao.quantization  # noqa: F401 - the configs below
    except ImportError:
        raise UnofluxError("--quantize needs torchao: pip install 'unoflux[quant]' (or pip install torchao)") from None
    return torchao


def weight_bytes(module: torch.nn.Module) -> int:
    """Bytes the module's parameters and buffers hold, counting a quantized tensor's inner data and scales."""

    def nbytes(tensor: torch.Tensor) -> int:
        inner = getattr(tensor, "tensor_data_names", None)  # torchao's tensor subclasses: qdata, scale, ...
        if inner:
            return sum(nbytes(getattr(tensor, name)) for name in inner)
        return tensor.numel() * tensor.element_size()

    return sum(nbytes(t) for t in (*module.parameters(), *module.buffers()))
