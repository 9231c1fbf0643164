"""FLUX transformers in GGUF files (``flux1-dev-Q4_K_S.gguf`` and the like, as ComfyUI users have them): the
quantized weights stay quantized in memory and each linear layer dequantizes its weight as it runs (diffusers'
GGUF quantizer and ``GGUFLinear``; tensors read with the ``gguf`` package).

The files hold BFL-layout keys, so the conversion to diffusers' is :mod:`.bfl`'s (quantized rows are whole output
features, so the splits and reorders along the output dimension that it does are exact on them). diffusers' own
``from_single_file`` would need the hub's config and assumes FLUX.1's width; this reads the config from the
tensors' shapes, so any FLUX-shaped file loads.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import FluxTransformer2DModel

from ..errors import UnofluxError
from . import bfl

AXES_KEY = "axes_dims_rope"  # a string field with the RoPE split, for files not of FLUX.1's 128-wide heads


def _gguf():
    try:
        import gguf
    except ImportError:
        raise UnofluxError("reading a .gguf transformer needs the gguf package: pip install 'unoflux[gguf]'") from None
    return gguf


def read_axes_dims(path: Path) -> dict[str, str]:
    """The file's ``axes_dims_rope`` field, as safetensors metadata would carry it (empty when absent)."""
    reader = _gguf().GGUFReader(str(path))
    field = reader.fields.get(AXES_KEY)
    return {} if field is None else {AXES_KEY: bytes(field.parts[field.data[0]]).decode()}


def read_gguf_transformer(path: str | Path) -> tuple[dict, dict]:
    """A GGUF FLUX transformer's BFL-named tensors (still quantized, memory-mapped) and the config they describe."""
    from diffusers.models.model_loading_utils import load_gguf_checkpoint

    path = Path(path)
    if not path.is_file():
        raise UnofluxError(f"FLUX transformer file {str(path)!r} does not exist")
    _gguf()
    try:
        state = bfl.strip_prefixes(load_gguf_checkpoint(str(path), return_tensors=True))
        metadata = read_axes_dims(path)
    except Exception as err:  # noqa: BLE001 - gguf's reader raises many kinds for a broken file
        # (diffusers' refusal of a quantization type it cannot dequantize names the type in its first line)
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UnofluxError(f"{str(path)!r} is not a readable GGUF file ({first_line})") from None
    if not bfl.is_bfl_transformer(state):
        raise UnofluxError(
            f"{str(path)!r} is not a FLUX transformer in GGUF: expected BFL keys like 'double_blocks.0.img_attn.qkv.weight'"
        )
    # a quantized tensor's shape counts bytes per row; its logical shape is quant_shape
    shapes = {k: torch.empty(getattr(v, "quant_shape", v.shape), device="meta") for k, v in state.items()}
    return state, bfl.infer_transformer_config(shapes, metadata)


def load_gguf_transformer(path: str | Path, dtype: torch.dtype) -> FluxTransformer2DModel:
    """A FLUX transformer whose linear weights stay in the file's quantization, computing in ``dtype``."""
    from diffusers import GGUFQuantizationConfig
    from diffusers.models.model_loading_utils import load_model_dict_into_meta
    from diffusers.quantizers.gguf import GGUFQuantizer

    state, config = read_gguf_transformer(path)
    converted = bfl.transformer_to_diffusers(state)
    with init_empty_weights():
        model = FluxTransformer2DModel(**config)
    quantizer = GGUFQuantizer(GGUFQuantizationConfig(compute_dtype=dtype))
    quantizer.preprocess_model(model, device_map=None, state_dict=converted)
    missing = sorted(set(model.state_dict()) - set(converted))
    if missing:
        raise UnofluxError(f"{str(path)!r} lacks {len(missing)} FLUX tensors, e.g. {missing[0]!r}")
    load_model_dict_into_meta(
        model, converted, dtype=dtype, device_map={"": torch.device("cpu")}, hf_quantizer=quantizer
    )
    quantizer.postprocess_model(model)
    model.hf_quantizer = quantizer  # what diffusers' own loader leaves: LoRA loading and casts consult it
    return model.eval()


def write_gguf_transformer(transformer: FluxTransformer2DModel, path: str | Path, quantization: str = "Q8_0") -> Path:
    """``transformer`` as a GGUF file in the BFL layout (what users download), linear weights quantized where their
    rows fit the quantization's blocks, everything else float32; tests and benchmarks write tiny ones."""
    import numpy as np

    gguf = _gguf()
    kind = gguf.GGMLQuantizationType[quantization]
    block = gguf.GGML_QUANT_SIZES[kind][0]
    writer = gguf.GGUFWriter(str(path), "flux")
    writer.add_string(AXES_KEY, json.dumps(list(transformer.config.axes_dims_rope)))
    for key, tensor in bfl.transformer_to_bfl(transformer.state_dict()).items():
        array = tensor.detach().float().cpu().numpy()
        if array.ndim == 2 and array.shape[1] % block == 0 and key.endswith(".weight"):
            data = gguf.quants.quantize(array, kind)
            writer.add_tensor(key, data, raw_shape=data.shape, raw_dtype=kind)
        else:
            writer.add_tensor(key, array.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)


def dequantized_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The file's tensors dequantized to float32, in diffusers' layout: what a GGUF model computes with."""
    from diffusers.models.model_loading_utils import load_gguf_checkpoint
    from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

    state = bfl.strip_prefixes(load_gguf_checkpoint(str(path), return_tensors=True))
    return bfl.transformer_to_diffusers({k: dequantize_gguf_tensor(v).float() for k, v in state.items()})
