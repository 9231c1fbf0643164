"""A run's ``checkpoint-{step}/`` folders: saving (written to ``.tmp-checkpoint-{step}``, renamed when complete),
pruning, finding the one to resume from and loading it; and :func:`ema_weights`, which swaps the EMA's averaged
weights in for validation and the final save.

A checkpoint holds what accelerate saves (the model or, in LoRA mode, the LoRA tensors; optimizer, LR scheduler,
EMA, every process's RNG states) and ``train_state.json`` (step, data position, config), written last: its presence
marks a complete checkpoint. With the data position restored, a resumed run sees exactly the batches an
uninterrupted one would have seen, and ends with the same weights.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import UnofluxError
from ..files import replacing_folder
from .config import TrainConfig
from .data import DataPosition

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "train_state.json"  # written last inside a checkpoint: its presence marks a complete one

if TYPE_CHECKING:
    from accelerate import Accelerator
    from diffusers.training_utils import EMAModel


def checkpoint_step(path: Path) -> int:
    return int(path.name.removeprefix(CHECKPOINT_PREFIX))


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a killed save leaves only a ``.tmp-`` folder, never listed)."""
    found = [
        p
        for p in output_dir.glob(f"{CHECKPOINT_PREFIX}*")
        if p.is_dir() and p.name.removeprefix(CHECKPOINT_PREFIX).isdigit() and (p / STATE_FILE).is_file()
    ]
    return sorted(found, key=checkpoint_step)


def save_checkpoint(
    accelerator: Accelerator, output_dir: Path, step: int, position: DataPosition, config: TrainConfig
) -> Path:
    """``checkpoint-{step}`` of every process's state, then the oldest beyond ``config.keep_checkpoints`` pruned.

    Written into ``.tmp-checkpoint-{step}`` and renamed when complete, so a kill never leaves a half-written
    checkpoint where ``resume`` looks.
    """
    acc = accelerator
    final = output_dir / f"{CHECKPOINT_PREFIX}{step}"
    tmp = output_dir / f".tmp-{CHECKPOINT_PREFIX}{step}"
    # every process writes its part into the folder; the main process alone clears it first and renames it
    with replacing_folder(final, tmp) if acc.is_main_process else contextlib.nullcontext(tmp):
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        if acc.is_main_process:
            state = {"step": step, "data_position": asdict(position), "config": config.to_dict()}
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
    if acc.is_main_process and config.keep_checkpoints is not None:
        for old in complete_checkpoints(output_dir)[: -config.keep_checkpoints]:
            shutil.rmtree(old)
    acc.wait_for_everyone()
    return final


def resolve_resume(output_dir: Path, resume: str | None) -> Path | None:
    """The checkpoint ``resume`` names: None, ``latest`` (the newest complete one, None if there is none yet)
    or a checkpoint folder."""
    if resume is None:
        return None
    if resume == "latest":
        found = complete_checkpoints(output_dir)
        return found[-1] if found else None  # nothing yet: start from scratch
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise UnofluxError(f"{resume!r} is not a complete training checkpoint (no {STATE_FILE})")
    return path


def load_checkpoint(accelerator: Accelerator, path: Path) -> tuple[int, DataPosition]:
    """Restore every process's state from ``path``; returns the step and the data position to continue from."""
    accelerator.load_state(str(path))
    state = json.loads((path / STATE_FILE).read_text())
    return int(state["step"]), DataPosition(**state["data_position"])


@contextlib.contextmanager
def ema_weights(ema: EMAModel | None, params: list[torch.nn.Parameter]) -> Iterator[None]:
    """While inside, ``params`` hold ``ema``'s averaged weights (diffusers ``EMAModel``; None: they stay as they
    are); the trained weights come back on exit, also on an error."""
    if ema is None:
        yield
        return
    ema.store(params)
    ema.copy_to(params)
    try:
        yield
    finally:
        ema.restore(params)
