"""``unoflux family build|tune-vae|export|ship-lora|set-sampling``: the small model family (resumable build), its
fp16 export, shipping a Stage I/II LoRA inside it, and the sampling defaults it declares."""

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
    b.add_argument("--vae-batch", type=int, help="VAE batch size")
    b.add_argument(
        "--vae-channels",
        type=lambda s: [int(c) for c in s.split(",")],
        help="VAE widths per level, e.g. 32,64,128,128 (4 levels = FLUX's 8x downsampling)",
    )
    b.add_argument("--vae-layers", type=int, help="VAE resnet layers per level")
    b.add_argument("--seed", type=int, default=0)
    b.set_defaults(func=cmd_build)
    t = sub.add_parser(
        "tune-vae", help="fine-tune a family's VAE at a new image size (decoder only: the transformer stays valid)"
    )
    t.add_argument("source", type=Path, help="a family folder (e.g. src/unoflux/embedded/uno-world)")
    t.add_argument("out", type=Path, help="the folder to write: the same family with the tuned VAE")
    t.add_argument("--data", nargs="+", required=True, type=Path, help="world dataset folders at the new size")
    t.add_argument(
        "--size", type=int, required=True, help="image size the VAE is tuned at (the family's new native size)"
    )
    t.add_argument("--steps", type=int, default=3000)
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--lr", type=float, default=3e-4)
    t.add_argument(
        "--whole", action="store_true", help="tune the encoder too (changes the latent space: retrain the transformer)"
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--measure-images", type=int, default=512, help="images of each size the PSNR is measured on")
    t.set_defaults(func=cmd_tune_vae)
    e = sub.add_parser("export", help="copy a trained family folder in fp16 (what ships in the package)")
    e.add_argument("source", type=Path, help="a trained diffusers folder (e.g. a training run's final/)")
    e.add_argument("target", type=Path, help="where to write it (src/unoflux/embedded/uno-world ships)")
    e.add_argument("--notes", type=Path, help="a JSON file stored beside it as training.json (metrics, commands)")
    e.set_defaults(func=cmd_export)
    a = sub.add_parser("ship-lora", help="ship a Stage I/II run's LoRA inside a model folder (loaded by default)")
    a.add_argument(
        "run", type=Path, help="a reference-training run's final/ folder (dit_lora.safetensors, config.yaml)"
    )
    a.add_argument("target", type=Path, help="the model folder (src/unoflux/embedded/uno-world ships)")
    a.add_argument("--notes", type=Path, help="a JSON file stored beside it as lora_training.json (metrics, commands)")
    a.add_argument(
        "--always",
        action="store_true",
        help="apply it to text-only prompts too, as UNO does (default: only when references are given)",
    )
    a.set_defaults(func=cmd_ship_lora)
    s = sub.add_parser("set-sampling", help="set the sampling defaults a model folder declares (unoflux.json)")
    s.add_argument("target", type=Path, help="the model folder (src/unoflux/embedded/uno-world ships)")
    s.add_argument(
        "--guidance", type=_number_or_none, default=_UNSET, help="guidance input ('none': remove, FLUX.1-dev's 4)"
    )
    s.add_argument(
        "--true-cfg", type=_number_or_none, default=_UNSET, help="classifier-free guidance scale ('none': remove, off)"
    )
    s.add_argument(
        "--time-shift",
        type=_number_or_none,
        default=_UNSET,
        help="a fixed time shift ('none': remove, UNO's resolution rule; see scripts/probes/guidance_sweep.py)",
    )
    s.add_argument(
        "--stochasticity",
        type=_number_or_none,
        default=_UNSET,
        help="how much of each step is re-noised, 0 to 1 ('none': remove, the deterministic ODE)",
    )
    s.set_defaults(func=cmd_set_sampling)


_UNSET = object()  # an option not given: leave its key as it is


def _number_or_none(text: str) -> float | None:
    if text.strip().lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or 'none'") from None


def family_config(args: argparse.Namespace):
    """The FamilyConfig that ``family build`` runs with: defaults, changed by the --vae-* options."""
    from .build import FamilyConfig

    config = FamilyConfig(seed=args.seed)
    for option, field in (
        ("vae_steps", "steps"),
        ("vae_batch", "batch_size"),
        ("vae_channels", "block_out_channels"),
        ("vae_layers", "layers_per_block"),
    ):
        if getattr(args, option) is not None:
            setattr(config.vae, field, getattr(args, option))
    config.vae.model_config()  # refuses a VAE that is not 4 levels before any work starts
    return config


def cmd_build(args: argparse.Namespace) -> int:
    from .build import build_family

    report = build_family(args.data, args.out, family_config(args))
    print(json.dumps({"out": str(args.out), "vae": report["vae"], "parameters": report["parameters"]}, indent=2))
    return 0


def cmd_tune_vae(args: argparse.Namespace) -> int:
    from .build import tune_vae
    from .vae import VAETrainConfig

    config = VAETrainConfig(
        steps=args.steps,
        batch_size=args.batch,
        learning_rate=args.lr,
        seed=args.seed,
        crop_size=args.size,
        decoder_only=not args.whole,
    )
    record = tune_vae(args.source, args.data, args.out, config, args.size, measure_images=args.measure_images)
    print(json.dumps({"out": str(args.out), **{k: record[k] for k in ("psnr_db_before", "psnr_db")}}, indent=2))
    return 0


def _read_notes(path: Path | None) -> dict | None:
    notes = json.loads(path.read_text()) if path else None
    if notes and "summary" in notes:  # an evaluation report: keep its settings and scores, not every item
        notes = {k: notes[k] for k in ("settings", "summary") if k in notes}
    return notes


def cmd_export(args: argparse.Namespace) -> int:
    from .build import export_fp16

    size = export_fp16(args.source, args.target, _read_notes(args.notes))
    print(f"{args.target}: {size / 2**20:.1f} MiB")
    return 0


def cmd_ship_lora(args: argparse.Namespace) -> int:
    from .build import SHIPPED_LORA_FILES, ship_lora

    size = ship_lora(args.run, args.target, _read_notes(args.notes), only_with_references=not args.always)
    print(f"{args.target / SHIPPED_LORA_FILES[0]}: {size / 2**20:.2f} MiB")
    return 0


def cmd_set_sampling(args: argparse.Namespace) -> int:
    from .build import SAMPLING_DEFAULTS, set_sampling_defaults

    given = {k: getattr(args, k) for k in SAMPLING_DEFAULTS if getattr(args, k) is not _UNSET}
    print(json.dumps(set_sampling_defaults(args.target, **given)))
    return 0
