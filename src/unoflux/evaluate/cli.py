"""``unoflux evaluate``: score a model on held-out prompts or subject cases, writing a JSON report and a contact sheet."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UnofluxError

# The sampling options both evaluations take (unoflux.options); sizes, seeds and prompts are the held-out set's.
SAMPLER_OPTIONS = ("steps", "guidance", "true_cfg", "schedule", "time_shift", "stochasticity", "method")


def register(subparsers) -> None:
    from ..cli import add_model_args
    from ..options import add_option_arguments

    p = subparsers.add_parser("evaluate", help="score a model on the synthetic world's held-out set")
    sub = p.add_subparsers(dest="evaluate_command", required=True)
    t2i = sub.add_parser("world-t2i", help="text-to-image: background, placement, size, colour, shape, two-panel looks")
    t2i.add_argument("--out", type=Path, required=True, help="folder for report.json, images/ and contact_sheet.png")
    t2i.add_argument(
        "--size", type=int, help="image height in px (two-panel images are twice as wide; default: the model's)"
    )
    add_option_arguments(t2i, SAMPLER_OPTIONS)
    t2i.add_argument("--limit", type=int, help="only the first N held-out prompts")
    add_model_args(t2i)
    t2i.set_defaults(func=cmd_world_t2i)

    subj = sub.add_parser("world-subject", help="subject-driven: held-out identities with 1 or 2 references")
    subj.add_argument("--out", type=Path, required=True, help="folder for report.json, images/ and contact_sheet.png")
    subj.add_argument("--size", type=int, help="output and reference-shot size in px (default: the model's)")
    add_option_arguments(subj, (*SAMPLER_OPTIONS, "position_mode"))  # the mode the LoRA was trained with
    subj.add_argument("--caption-only", action="store_true", help="give the model no references: the floor")
    subj.add_argument(
        "--look-free-captions",
        action="store_true",
        help="captions without looks: colour and shape can only come from the references",
    )
    subj.add_argument("--limit", type=int, help="only the first N cases of each kind")
    subj.add_argument(
        "--ref-long-side",
        type=_long_sides,
        metavar="ONE,SEVERAL",
        help="reference long sides in px with one and with several references (default: the model "
        "folder's, from unoflux.json)",
    )
    add_model_args(subj)
    subj.set_defaults(func=cmd_world_subject)


def cmd_world_t2i(args: argparse.Namespace) -> int:
    from ..cli import default_image_size, load_pipeline_from_args
    from ..options import options_from_args
    from .world import T2IEvalSettings, evaluate_text_to_image, print_summary

    pipe, _ = load_pipeline_from_args(args)
    pipe.set_progress_bar_config(disable=True)
    settings = options_from_args(args, T2IEvalSettings, size=args.size or default_image_size(pipe), limit=args.limit)
    print_summary(evaluate_text_to_image(pipe, args.out, settings))
    print(f"report: {args.out / 'report.json'}")
    return 0


def _long_sides(text: str) -> tuple[int, int]:
    try:
        one, several = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not two whole numbers ONE,SEVERAL (e.g. 64,48)") from None
    return one, several


def cmd_world_subject(args: argparse.Namespace) -> int:
    from ..cli import default_image_size, load_pipeline_from_args
    from ..options import options_from_args
    from .subject import SubjectEvalSettings, evaluate_subject_driven, print_subject_summary

    pipe, _ = load_pipeline_from_args(args)
    pipe.set_progress_bar_config(disable=True)
    if args.ref_long_side:
        pipe.reference_long_sides = args.ref_long_side
    elif pipe.reference_long_sides is None and not args.caption_only:  # a trap met twice: 64 px shots encoded at 512
        raise UnofluxError(
            f"{args.model or 'the model'} declares no reference_long_side in unoflux.json, so references "
            "would be resized to UNO's 512 / 320 px; give the sizes the LoRA was trained at, e.g. "
            "--ref-long-side 64,48 for the world LoRAs"
        )
    settings = options_from_args(
        args,
        SubjectEvalSettings,
        size=args.size or default_image_size(pipe),
        with_references=not args.caption_only,
        limit=args.limit,
        look_free_captions=args.look_free_captions,
    )
    print_subject_summary(evaluate_subject_driven(pipe, args.out, settings))
    print(f"report: {args.out / 'report.json'}")
    return 0
