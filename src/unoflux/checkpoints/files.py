"""Reading and writing weight files: safetensors by default, pickles only through ``weights_only``."""

from __future__ import annotations

import json
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
            with safe_open(str(path), framework="pt", device="cpu") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
        except (SafetensorError, OSError) as err:
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


def write_safetensors(
    tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, Any] | None = None
) -> Path:
    """Save contiguous copies with string metadata (non-strings are JSON-encoded)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(path), metadata=meta)
    return path
