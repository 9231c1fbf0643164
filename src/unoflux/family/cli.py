"""``unoflux family build``: tokenizers, text encoders and VAE of the small model family (resumable)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("family", help="build the small FLUX-shaped model family on world data")
    sub = p.add_subparsers(dest="family_command", required=True)
    b = sub.add_parser("build", help="train tokenizers + VAE, initialise the transformer, save a diffusers folder")
    b.add_argument("--data", nargs="+", required=True, type=Path, help="world dataset folders (unoflux world build)")
    b.add_argument("--out", required=True, type=Path, help="the diffusers folder to write")
    b.add_argument("--vae-steps", type=int, help="VAE training steps (default from FamilyConfig)")
    b.add_argument("--seed", type=int, default=0)
    b.set_defaults(func=cmd_build)


def cmd_build(args: argparse.Namespace) -> int:
    from .build import FamilyConfig, build_family

    config = FamilyConfig(seed=args.seed)
    if args.vae_steps is not None:
        config.vae.steps = args.vae_steps
    report = build_family(args.data, args.out, config)
    print(json.dumps({"out": str(args.out), "vae": report["vae"], "parameters": report["parameters"]}, indent=2))
    return 0
