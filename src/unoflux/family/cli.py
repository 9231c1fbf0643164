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
    e = sub.add_parser("export", help="copy a trained family folder in fp16 (what ships in the package)")
    e.add_argument("source", type=Path, help="a trained diffusers folder (e.g. a training run's final/)")
    e.add_argument("target", type=Path, help="where to write it (src/unoflux/embedded/uno-world ships)")
    e.add_argument("--notes", type=Path, help="a JSON file stored beside it as training.json (metrics, commands)")
    e.set_defaults(func=cmd_export)


def cmd_build(args: argparse.Namespace) -> int:
    from .build import FamilyConfig, build_family

    config = FamilyConfig(seed=args.seed)
    if args.vae_steps is not None:
        config.vae.steps = args.vae_steps
    report = build_family(args.data, args.out, config)
    print(json.dumps({"out": str(args.out), "vae": report["vae"], "parameters": report["parameters"]}, indent=2))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .build import export_fp16

    notes = json.loads(args.notes.read_text()) if args.notes else None
    if notes and "summary" in notes:  # an evaluation report: keep its settings and scores, not every item
        notes = {k: notes[k] for k in ("settings", "summary") if k in notes}
    size = export_fp16(args.source, args.target, notes)
    print(f"{args.target}: {size / 2**20:.1f} MiB")
    return 0
