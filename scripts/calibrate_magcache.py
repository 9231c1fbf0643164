"""Calibrate MagCache for a model folder: its residual-magnitude ratio per step, written to its ``unoflux.json``.

MagCache (``--magcache T``) decides which steps to skip from these ratios, and they depend on the checkpoint:
diffusers ships FLUX.1-dev's, which is what a model without its own gets. This runs the model in exact mode on
calibration prompts (a model folder of the embedded world: its tuning prompts, never the held-out ones, half of
the calls with rendered references of the prompt's subjects; any other model: ``--prompts FILE``, one per line),
records the ratio at every step (``unoflux.fast.MagRatioRecorder``), prints the mean over the calls and, with
``--write``, stores it as ``mag_ratios`` in the folder's ``unoflux.json``.

    .venv/bin/python scripts/calibrate_magcache.py --calls 12 --write   # the embedded model, ~2 min on one core
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="diffusers model folder (default: the embedded model)")
    parser.add_argument("--prompts", type=Path, help="calibration prompts, one per line (default: the world's)")
    parser.add_argument("--calls", type=int, default=12, help="pipeline calls to average over (12)")
    parser.add_argument("--steps", type=int, help="steps per call (default: the model's)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--write", action="store_true", help="store the ratios in the folder's unoflux.json")
    args = parser.parse_args()

    import torch
    from tqdm import tqdm

    from unoflux.checkpoints import ModelPaths, load_pipeline
    from unoflux.checkpoints.specs import EMBEDDED_MODEL_DIR, model_defaults, write_model_defaults
    from unoflux.fast import MagRatioRecorder

    if args.threads:
        torch.set_num_threads(args.threads)
    folder = args.model or EMBEDDED_MODEL_DIR
    pipe = load_pipeline(ModelPaths(model=str(folder)), dtype="fp32" if not torch.cuda.is_available() else None)
    pipe.set_progress_bar_config(disable=True)
    size = pipe.model_defaults["width"]
    steps = args.steps or pipe.model_defaults["steps"]
    calls = _calls(args.prompts, args.calls, size)
    recorder = MagRatioRecorder(pipe.transformer)
    with recorder:
        for caption, references, seed in tqdm(calls, desc="calibration calls"):
            recorder.start_call()
            pipe(caption, references, width=size, height=size, seed=seed, num_inference_steps=steps)
            if len(recorder.calls[-1]) != steps:  # e.g. CFG branches run as separate forwards
                raise SystemExit(f"recorded {len(recorder.calls[-1])} forwards for {steps} steps: one per step needed")
    ratios = recorder.ratios()
    print("mag_ratios:", ratios)
    if args.write:
        write_model_defaults(folder, {**model_defaults(folder), "mag_ratios": ratios})
        print(f"written to {Path(folder) / 'unoflux.json'}")


def _calls(prompts_file: Path | None, count: int, size: int) -> list[tuple[str, list | None, int]]:
    """(caption, references or None, seed) per call."""
    if prompts_file is not None:
        lines = [line.strip() for line in prompts_file.read_text().splitlines() if line.strip()]
        return [(line, None, i) for i, line in enumerate(lines[:count])]
    from unoflux.world.heldout import tuning_prompts
    from unoflux.world.render import render_reference

    by_kind = {kind: [p for p in tuning_prompts() if p.kind == kind] for kind in ("single", "multi")}
    prompts = [p for pair in zip(by_kind["single"], by_kind["multi"]) for p in pair]  # one and several subjects
    calls = []
    for i, p in enumerate(prompts[:count]):  # half of each kind with references
        references = [render_reference(s.identity, size).image for s in p.spec.subjects] if i % 4 >= 2 else None
        calls.append((p.caption, references, p.seed))
    return calls


if __name__ == "__main__":
    main()
