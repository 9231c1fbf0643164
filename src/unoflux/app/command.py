"""The ``unoflux generate ...`` command line that reproduces a web-app result from a terminal."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Sequence

from ..generation import GenerationRequest

# CLI flag for each ModelPaths field (see cli.add_model_args).
_PATH_FLAGS = {"model": "--model", "flux": "--flux", "ae": "--ae", "t5": "--t5", "clip": "--clip", "lora": "--lora"}


def model_flags(args: argparse.Namespace) -> list[str]:
    """The model flags the app was started with, paths absolute and environment variables spelled out,
    so the command works from any folder and any shell."""
    from ..checkpoints import ModelPaths

    paths = ModelPaths(**{name: getattr(args, name) for name in _PATH_FLAGS}).with_environment()
    flags = []
    for name, flag in _PATH_FLAGS.items():
        if getattr(paths, name):
            flags += [flag, str(Path(getattr(paths, name)).resolve())]
    for flag, value in (("--device", args.device), ("--dtype", args.dtype), ("--weights-dtype", args.weights_dtype)):
        if value:
            flags += [flag, value]
    if args.offload != "none":
        flags += ["--offload", args.offload]
    return flags


def generate_command(request: GenerationRequest, model_flags: Sequence[str], out: str | Path) -> str:
    """A shell-quoted ``unoflux generate`` line giving the same images as ``request`` (seed resolved)."""
    argv = ["unoflux", "generate", "--prompt", request.prompt]
    for reference in request.references:
        argv += ["--ref", str(reference)]
    argv += [
        "--width", str(request.width), "--height", str(request.height), "--steps", str(request.steps),
        "--seed", str(request.seed), "--num-images", str(request.num_images),
        "--position-mode", request.position_mode,
    ]  # fmt: skip
    if request.schedule is not None:
        argv += ["--schedule", request.schedule]
    if request.time_shift is not None:
        argv += ["--time-shift", f"{request.time_shift:g}"]
    if request.stochasticity is not None:
        argv += ["--stochasticity", f"{request.stochasticity:g}"]
    if request.guidance is not None:
        argv += ["--guidance", f"{request.guidance:g}"]
    if request.true_cfg is not None:
        argv += ["--true-cfg", f"{request.true_cfg:g}"]
    if request.negative_prompt:
        argv += ["--negative-prompt", request.negative_prompt]
    if request.reference_long_side is not None:
        argv += ["--ref-long-side", str(request.reference_long_side)]
    argv += [*model_flags, "--out", str(out)]
    return shlex.join(argv)
