"""Reading and writing weight files: safetensors by default, pickles only through ``weights_only``."""

from __future__ import annotations

import json
import struct
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import UnofluxError

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def read_tensors(path: str | Path, what: str = "checkpoint") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors of a weight file and its safetensors metadata (empty for pickles)."""
    path = Path(path)
    if not path.is_file():
        raise UnofluxError(f"{what} file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:  # validates the header and offsets
                metadata = dict(f.metadata() or {})
            return _read_safetensors(path), metadata
        except (SafetensorError, OSError, ValueError) as err:
            raise UnofluxError(f"{what} file {str(path)!r} is not a readable safetensors file ({err})") from None
    if path.suffix in PICKLE_SUFFIXES:
        try:  # weights_only: a pickle can run code, this refuses anything but tensors and containers
            with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": about torch, not the user's file
                warnings.simplefilter("ignore")
                state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - torch raises many types for bad pickles
            raise UnofluxError(
                f"{what} file {str(path)!r} cannot be loaded safely as weights ({_pickle_problem(err)}); only "
                "tensors are read from a pickle, nothing in it is run: convert it to .safetensors"
            ) from None
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        if not isinstance(state, dict):
            raise UnofluxError(f"{what} file {str(path)!r} does not hold a dictionary of tensors")
        return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}, {}
    raise UnofluxError(
        f"{what} file {str(path)!r} has an unknown type; use .safetensors (or {', '.join(PICKLE_SUFFIXES)})"
    )


def _pickle_problem(err: Exception) -> str:
    """torch's refusal in one line: its "WeightsUnpickler error: Unsupported global: GLOBAL posix.system" part (the
    rest is advice to load unsafely), or the first line of any other error."""
    text = str(err)
    if "WeightsUnpickler error:" in text:
        text = "WeightsUnpickler error:" + text.split("WeightsUnpickler error:", 1)[1]
        text = text.split("Check the documentation of torch.load")[0]
    return " ".join(text.split())[:300] or type(err).__name__


SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32,
    "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a (validated) safetensors file read straight into its own torch allocation.

    Not safetensors' ``get_tensor``: that returns views of one memory map of the file, so the pages a model touches
    stay resident beside any copy made later (the 64-byte alignment copy on CPU, a dtype cast), twice the weights at
    the peak. Read into ``torch.empty`` buffers (64-byte aligned), a checkpoint costs its size once."""
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
        start = 8 + length
        tensors = {}
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            if entry["dtype"] not in SAFETENSORS_DTYPES:
                raise ValueError(f"tensor {name!r} has dtype {entry['dtype']}, which torch cannot hold")
            tensor = torch.empty(entry["shape"], dtype=SAFETENSORS_DTYPES[entry["dtype"]])
            begin, end = entry["data_offsets"]
            if end - begin != tensor.numel() * tensor.element_size():
                raise ValueError(f"tensor {name!r} has {end - begin} bytes for shape {entry['shape']}")
            if tensor.numel():
                f.seek(start + begin)
                if f.readinto(memoryview(tensor.view(-1).view(torch.uint8).numpy())) != end - begin:
                    raise ValueError(f"the file ends inside tensor {name!r}")
            tensors[name] = tensor
    return tensors


def write_safetensors(
    tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, Any] | None = None
) -> Path:
    """Save contiguous copies with string metadata (non-strings are JSON-encoded)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(path), metadata=meta)
    return path
