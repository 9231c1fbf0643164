"""Whether this machine has a device, said in one sentence before anything loads (torch is imported on a call)."""

from __future__ import annotations

from .errors import UnofluxError


def check_device(device: str | None, what: str = "device", flag: str = "--device") -> None:
    """Refuse a device this machine lacks now, in one sentence, rather than after minutes of model loading
    (or with torch's traceback). ``None`` is the default device, always available."""
    if device is None:
        return
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise UnofluxError(f"{what} {device!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if parsed.type != "cuda":
        return
    if not torch.cuda.is_available():
        raise UnofluxError(f"{what} {device!r} is not available here (no CUDA GPU); use {flag} cpu")
    count = torch.cuda.device_count()
    if parsed.index is not None and parsed.index >= count:
        raise UnofluxError(f"{what} {device!r} is not available here: this machine has cuda:0 to cuda:{count - 1}")
