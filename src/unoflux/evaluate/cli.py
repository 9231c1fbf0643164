"""``unoflux evaluate``: score a model on held-out prompts, writing a JSON report and a contact sheet."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    from ..cli import add_model_args

    p = subparsers.add_parser("evaluate", help="score a model on the synthetic world's held-out set")
    sub = p.add_subparsers(dest="evaluate_command", required=True)
    t2i = sub.add_parser("world-t2i", help="text-to-image: background, placement, size, colour, shape, two-panel looks")
    t2i.add_argument("--out", type=Path, required=True, help="folder for report.json, images/ and contact_sheet.png")
    t2i.add_argument("--size", type=int, default=64, help="image height in px (two-panel images are twice as wide)")
    t2i.add_argument("--steps", type=int, default=25)
    t2i.add_argument("--guidance", type=float, default=4.0)
    t2i.add_argument("--limit", type=int, help="only the first N held-out prompts")
    add_model_args(t2i)
    t2i.set_defaults(func=cmd_world_t2i)


def cmd_world_t2i(args: argparse.Namespace) -> int:
    from ..cli import load_pipeline_from_args
    from .world import T2IEvalSettings, evaluate_text_to_image, print_summary

    pipe, _ = load_pipeline_from_args(args)
    pipe.set_progress_bar_config(disable=True)
    settings = T2IEvalSettings(size=args.size, steps=args.steps, guidance=args.guidance, limit=args.limit)
    print_summary(evaluate_text_to_image(pipe, args.out, settings))
    print(f"report: {args.out / 'report.json'}")
    return 0
