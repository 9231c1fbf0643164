"""`unoflux train`: training from a YAML config, text-to-image or with references (CLI flags override the file).

    unoflux train --config run.yaml [--resume] [--max-steps N] [--max-minutes M] [--output-dir DIR]
                  [--position-mode MODE] [--set KEY=VALUE ...]

Multi-GPU / multi-node: the same command under ``accelerate launch -m unoflux train ...``.
"""

from __future__ import annotations

import argparse
import sys


def load_config(
    path: str,
    max_steps: int | None = None,
    output_dir: str | None = None,
    resume: bool = False,
    position_mode: str | None = None,
    max_minutes: float | None = None,
    overrides: list[str] | tuple[str, ...] = (),
):
    """The config in ``path`` with the command-line overrides applied (``overrides``: ``--set KEY=VALUE``, any
    setting, dotted for nested ones; validated once, as the file)."""
    from .config import TrainConfig

    config = TrainConfig.from_yaml(path, overrides)
    return config.replace(
        max_steps=max_steps,
        output_dir=output_dir,
        resume="latest" if resume else None,
        position_mode=position_mode,
        max_minutes=max_minutes,
    )


def cmd_train(args: argparse.Namespace) -> int:
    """Train a FLUX transformer (full or LoRA) on world datasets or UNO paired data (with references, UNO
    Stage I / II); resumable from checkpoints."""
    config = load_config(
        args.config, args.max_steps, args.output_dir, args.resume, args.position_mode, args.max_minutes, args.set
    )
    from .trainer import train  # heavy imports only once the config is known to be good

    final = train(config, command=[sys.executable, "-m", "unoflux", *sys.argv[1:]])
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(f"wrote {final}")
    return 0


def register(subparsers) -> None:
    from ..cli import POSITION_MODES

    p = subparsers.add_parser(
        "train", help="train a FLUX transformer (full or LoRA) on world datasets", description=cmd_train.__doc__
    )
    p.add_argument("--config", required=True, metavar="CFG.yaml", help="training config (see docs/training.md)")
    p.add_argument(
        "--resume", action="store_true", help="continue from the newest complete checkpoint in the output dir"
    )
    p.add_argument("--max-steps", type=int, metavar="N", help="override max_steps")
    p.add_argument(
        "--max-minutes",
        type=float,
        metavar="M",
        help="override max_minutes: end the run at the first step after M minutes (final/config.yaml "
        "then records the step reached)",
    )
    p.add_argument("--output-dir", metavar="DIR", help="override output_dir")
    p.add_argument(
        "--position-mode", choices=POSITION_MODES, help="override position_mode (UnoPE; the paper's ablation)"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any setting (repeatable; dotted keys for nested ones, values as YAML), e.g. "
        "--set dreamo.routing_weight=0 --set init_lora=runs/a/final",
    )
    p.set_defaults(func=cmd_train)
