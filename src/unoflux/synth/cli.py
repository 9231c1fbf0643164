"""`unoflux synth CONFIG.yaml [--stage NAME ...]`: in-context pair synthesis, every stage or one (docs/synthesis.md)."""

from __future__ import annotations

import argparse

from .config import STAGES


def cmd_synth(args: argparse.Namespace) -> int:
    """Synthesize subject pairs as UNO describes: two-panel prompts, two-panel images from a text-to-image FLUX
    pipeline (the embedded base by default), (reference, target) pairs, a similarity filter, a VLM filter (the
    world's checker, a local transformers VLM or an OpenAI-compatible endpoint) and a report. Every stage resumes
    where a killed run stopped. Under `accelerate launch -m unoflux synth ...` (or torchrun) the
    generate stage is shared between the processes."""
    from ..cli import batch_share
    from .config import SynthConfig
    from .generate import Share
    from .run import run_synth

    config = SynthConfig.from_yaml(args.config)
    device, index, count, state = batch_share(config.device)
    share = Share(index, count, device, state)
    for path in run_synth(config, args.stage, progress=not args.quiet, share=share):
        print(f"wrote {path}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "synth", help="synthesize subject pairs (UNO's in-context data pipeline)", description=cmd_synth.__doc__
    )
    p.add_argument("config", metavar="CONFIG.yaml", help="synthesis config (see docs/synthesis.md)")
    p.add_argument(
        "--stage",
        choices=STAGES,
        action="append",
        help="run only this stage (repeat for several; they run in pipeline order; default: all)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_synth)
