"""``unoflux evaluate``: score a model on the world's held-out prompts or subject cases (a JSON report and a contact
sheet), or on DreamBench (DINO / CLIP-I / CLIP-T, an HTML report), and compare two DreamBench runs."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import UnofluxError

# The sampling options both evaluations take (unoflux.options); sizes, seeds and prompts are the held-out set's.
SAMPLER_OPTIONS = ("steps", "guidance", "true_cfg", "schedule", "time_shift", "stochasticity", "method")


def register(subparsers) -> None:
    from ..cli import add_model_args
    from ..options import add_option_arguments

    p = subparsers.add_parser("evaluate", help="score a model: the synthetic world's held-out set, or DreamBench")
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
    subj.add_argument(
        "--placeholders",
        action="store_true",
        help="name reference k's subject with DreamO's [ref#k] in the prompt (models trained on such captions)",
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
    _register_dreambench(sub)


def _register_dreambench(sub) -> None:
    from ..cli import add_model_args
    from ..options import add_option_arguments, option_fields

    db = sub.add_parser(
        "dreambench",
        help="DreamBench DINO / CLIP-I / CLIP-T: generate through the batch mode, score, write an HTML report",
        description="Build the benchmark from a DreamBooth-layout folder, generate it through the batch mode "
        "(resumable; sharded under accelerate launch), score it and write RUN/scores.csv, summary.json and "
        "report.html. See docs/evaluation.md.",
    )
    db.add_argument("--out", type=Path, required=True, metavar="RUN", help="the run folder (a rerun resumes)")
    g = db.add_argument_group("benchmark")
    g.add_argument(
        "--data",
        type=Path,
        default=os.environ.get("DREAMBENCH"),
        metavar="DIR",
        help="a folder in the DreamBooth dataset's layout: <subject>/NN.jpg and prompts_and_classes.txt "
        "(default: $DREAMBENCH)",
    )
    g.add_argument(
        "--benchmark",
        default="single",
        metavar="single|multi|FILE.json",
        help="single-subject (default), UNO's multi-subject protocol, or a benchmark.json / UNO eval JSON file",
    )
    g.add_argument(
        "--pairs", default="uno", help="multi: uno (UNO's 30 pairs, those present; default), all, or a+b,c+d"
    )
    g.add_argument("--subjects", help="only these subjects, comma-separated (default: every subject folder)")
    g.add_argument("--prompts", metavar="INDICES", help="only these prompt indices, e.g. 0-4 or 0,10,20 (0 to 24)")
    g.add_argument("--images-per-prompt", type=int, default=4, metavar="N", help="images per prompt (default 4)")
    g.add_argument("--unique-token", default="", help="an identifier before the class noun (default none, as UNO)")
    g.add_argument("--spec-only", action="store_true", help="write benchmark.json and batch.json, then stop")
    g.add_argument(
        "--generated",
        type=Path,
        metavar="DIR",
        help="score these {item}_{image}.png files instead of generating (e.g. UNO's inference.py --save_path "
        "run on RUN/batch.json)",
    )
    g.add_argument("--generate-only", action="store_true", help="generate, but do not score")
    g = db.add_argument_group("scoring (local transformers folders)")
    g.add_argument(
        "--metric-dino", metavar="DIR", help="DINO: a ViT-S/16 DINO (facebook/dino-vits16) or a DINOv2 folder"
    )
    g.add_argument(
        "--metric-clip",
        metavar="DIR",
        help="CLIP-I and CLIP-T: a CLIP folder (openai/clip-vit-base-patch32; not the text encoder --clip)",
    )
    g.add_argument("--metric-device", help="where the backbones run (default: cuda if available)")
    g.add_argument("--metric-batch-size", type=int, default=32, metavar="N", help="images per forward pass (32)")
    g.add_argument("--masks", type=Path, metavar="DIR", help="subject masks of the real images: DIR/<subject>/NN.png")
    g.add_argument(
        "--generated-masks", type=Path, metavar="DIR", help="subject masks of the generated images: DIR/{i}_{j}.png"
    )
    g.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap resamples (default 1000)")
    g = db.add_argument_group("generation")
    add_option_arguments(g, [f.name for f in option_fields() if f.name != "num_images"])
    g.add_argument("--noise-device", default="cpu", metavar="DEVICE", help="where the initial noise is drawn (cpu)")
    add_model_args(db)
    db.set_defaults(func=cmd_dreambench)

    cmp = sub.add_parser(
        "compare",
        help="A/B: two scored DreamBench runs, paired, with intervals and p-values, and a side-by-side page",
    )
    cmp.add_argument("run_a", type=Path, metavar="RUN_A")
    cmp.add_argument("run_b", type=Path, metavar="RUN_B")
    cmp.add_argument("--out", type=Path, help="folder for compare.html and compare.json (default: RUN_A/compare-B)")
    cmp.add_argument("--names", help="two labels, comma-separated (default: the folder names)")
    cmp.set_defaults(func=cmd_compare)


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
        placeholders=args.placeholders,
    )
    print_subject_summary(evaluate_subject_driven(pipe, args.out, settings))
    print(f"report: {args.out / 'report.json'}")
    return 0


def _benchmark_from_args(args: argparse.Namespace):
    from .dreambench import load_benchmark, multi_subject_benchmark, parse_pairs, single_subject_benchmark

    subjects = [n.strip() for n in args.subjects.split(",") if n.strip()] if args.subjects else None
    if args.benchmark not in ("single", "multi"):
        if args.subjects or args.prompts or args.unique_token:
            raise UnofluxError(
                "--subjects, --prompts and --unique-token build a benchmark; a benchmark file is used whole"
            )
        return load_benchmark(args.benchmark)
    if args.data is None:
        raise UnofluxError(
            "give --data DIR (a DreamBooth-layout folder, e.g. ../shared/dreambench/dataset) or set DREAMBENCH"
        )
    if args.benchmark == "single":
        return single_subject_benchmark(args.data, subjects, args.prompts, args.unique_token)
    pairs = args.pairs if args.pairs in ("uno", "all") else parse_pairs(args.pairs)
    return multi_subject_benchmark(args.data, pairs, subjects, args.prompts)


def cmd_dreambench(args: argparse.Namespace) -> int:
    from ..cli import batch_share, check_device, load_pipeline_from_args
    from ..options import GenerationRequest, options_from_args
    from .run import prepare_run, print_summary, score_run

    if args.images_per_prompt < 1:
        raise UnofluxError(f"--images-per-prompt {args.images_per_prompt} must be at least 1")
    if args.bootstrap < 100:
        raise UnofluxError(f"--bootstrap {args.bootstrap} must be at least 100 resamples")
    if args.generated is not None and not args.generated.is_dir():
        raise UnofluxError(f"--generated {str(args.generated)!r} is not a folder of {{item}}_{{image}}.png files")
    benchmark = _benchmark_from_args(args)
    request = None
    if args.generated is None and not args.spec_only:  # bad generation settings fail before anything loads
        request = options_from_args(
            args, GenerationRequest, prompt="(from the benchmark)", num_images=args.images_per_prompt
        )
        request.validate()
        check_device(args.device)
        check_device(args.noise_device, "noise device", "--noise-device")
        if request.method is not None:  # e.g. a two-subject item for a one-subject method, before the model loads
            from ..methods import get_method
            from ..references import as_references

            for item in benchmark.items:
                get_method(request.method).check(as_references([str(p) for p in benchmark.reference_paths(item)]))
    score = not (args.spec_only or args.generate_only)
    if score and not (args.metric_dino or args.metric_clip):
        raise UnofluxError("give --metric-dino DIR and/or --metric-clip DIR to score (or --generate-only)")
    device, process_index, num_processes, state = batch_share(args.device)
    main_process = process_index == 0
    scorer = None
    if score and main_process:  # loaded first: a bad backbone folder fails in seconds
        from ..metrics import Scorer

        check_device(args.metric_device, "metric device", "--metric-device")
        scorer = Scorer(
            dino=args.metric_dino, clip=args.metric_clip, device=args.metric_device, batch_size=args.metric_batch_size
        )
    if main_process:
        prepare_run(args.out, benchmark)
        print(f"{len(benchmark.items)} items x {args.images_per_prompt} images: {args.out / 'benchmark.json'}")
    if args.spec_only:
        if main_process:
            print(f"UNO eval JSON: {args.out / 'batch.json'}")
        return 0
    if request is not None:
        from ..generation import read_batch, run_batch

        if state is not None:
            state.wait_for_everyone()  # batch.json is written
        items = read_batch(args.out / "batch.json", method=request.method)
        pipe, model = load_pipeline_from_args(args, device=device)
        pipe.set_progress_bar_config(disable=True)  # the batch's bar counts images
        made, skipped = run_batch(
            pipe, items, request, args.out / "images", model, process_index, num_processes, args.noise_device
        )
        print(f"{made} images generated ({skipped} already there)")
        del pipe
        if state is not None:
            state.wait_for_everyone()  # every share is written before the main process scores
    if scorer is None:
        return 0
    summary = score_run(
        args.out,
        benchmark,
        scorer,
        args.images_per_prompt,
        images_dir=args.generated,
        masks_dir=args.masks,
        generated_masks_dir=args.generated_masks,
        resamples=args.bootstrap,
    )
    print_summary(summary)
    print(f"report: {args.out / 'report.html'}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .run import compare_runs, print_comparison

    names = None
    if args.names:
        names = tuple(n.strip() for n in args.names.split(","))
        if len(names) != 2 or not all(names):
            raise UnofluxError(f"--names {args.names!r} must be two labels joined by a comma, e.g. ours,baseline")
    out = args.out or args.run_a / f"compare-{args.run_b.resolve().name}"
    comparison = compare_runs(args.run_a, args.run_b, out, names)
    print_comparison(comparison)
    print(f"report: {out / 'compare.html'}")
    return 0
