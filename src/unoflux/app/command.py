"""The ``unoflux generate ...`` command line that reproduces a web-app result from a terminal."""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Sequence
from pathlib import Path

from ..options import GenerationRequest, cli_flags
from ..references import SUBJECT, as_references

# CLI flag for each ModelPaths field (see cli.add_model_args).
_PATH_FLAGS = {
    "model": "--model",
    "flux": "--flux",
    "ae": "--ae",
    "t5": "--t5",
    "clip": "--clip",
    "lora": "--lora",
    "projector": "--uso-projector",
    "siglip": "--siglip",
    "dreamo": "--dreamo",
    "turbo": "--turbo",
    "face_detector": "--face-detector",
    "face_parser": "--face-parser",
    "background_remover": "--background-remover",
}
_ARG_NAMES = {"projector": "uso_projector"}  # argparse dest where it differs from the ModelPaths field


def model_flags(args: argparse.Namespace) -> list[str]:
    """The model flags the app was started with, paths absolute and environment variables spelled out,
    so the command works from any folder and any shell."""
    from ..checkpoints import ModelPaths

    paths = ModelPaths(**{name: getattr(args, _ARG_NAMES.get(name, name), None) for name in _PATH_FLAGS})
    paths = paths.with_environment()
    flags = []
    for name, flag in _PATH_FLAGS.items():
        if getattr(paths, name):
            flags += [flag, str(Path(getattr(paths, name)).resolve())]
    for flag, value in (
        ("--device", args.device),
        ("--dtype", args.dtype),
        ("--weights-dtype", args.weights_dtype),
        ("--quantize", getattr(args, "quantize", None)),
    ):
        if value:
            flags += [flag, value]
    if args.offload != "none":
        flags += ["--offload", args.offload]
    if getattr(args, "compile", False):
        flags += ["--compile"]
    if getattr(args, "vae_tiling", False):
        flags += ["--vae-tiling"]
    if getattr(args, "dreamo", None):
        flags += ["--dreamo-version", args.dreamo_version] + (["--fuse-lora"] if args.fuse_lora else [])
    return flags


def generate_command(request: GenerationRequest, model_flags: Sequence[str], out: str | Path) -> str:
    """A shell-quoted ``unoflux generate`` line giving the same images as ``request`` (seed resolved): every option
    the request sets, from :func:`unoflux.options.cli_flags` (those left to the model stay out)."""
    argv = ["unoflux", "generate", "--prompt", request.prompt]
    for reference in as_references(request.references):
        argv += ["--ref" if reference.role == SUBJECT else f"--{reference.role}", str(reference.image)]
    argv += [*cli_flags(request), *model_flags, "--out", str(out)]
    return shlex.join(argv)
