"""Held-out text-to-image scores of a model at several guidance settings, side by side: how the embedded
model's sampling defaults (unoflux.json "guidance", "true_cfg") were chosen. Every 4th held-out prompt (64 of
256, all kinds) at the model's native size (unoflux.json "image_size"), judged as `unoflux evaluate world-t2i`
judges; one thread.

    .venv/bin/python scripts/guidance_sweep.py [--model DIR] [--every 4] [--steps 25] SETTING...

A SETTING is GUIDANCE:TRUE_CFG, e.g. 4:1 (FLUX.1-dev's default: guidance input 4, no CFG) or 1:2 (guidance
input 1, as the world model was trained, and classifier-free guidance at scale 2). Default: 4:1 1:1 1:2 1:3.
"""

from __future__ import annotations

import argparse

import torch
from tqdm import tqdm

from unoflux.checkpoints import ModelPaths, load_pipeline
from unoflux.checkpoints.specs import EMBEDDED_MODEL_DIR, model_defaults
from unoflux.evaluate.world import generate_and_check, summarize
from unoflux.world.heldout import heldout_prompts

COLUMNS = ("background", "placement", "size", "colour", "shape", "pattern", "two_panel_same_look")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("settings", nargs="*", default=["4:1", "1:1", "1:2", "1:3"], metavar="GUIDANCE:TRUE_CFG")
    parser.add_argument("--model", default=str(EMBEDDED_MODEL_DIR))
    parser.add_argument("--every", type=int, default=4, help="judge every N-th held-out prompt")
    parser.add_argument("--steps", type=int, default=25, help="denoising steps")
    args = parser.parse_args()
    torch.set_num_threads(1)
    pipe = load_pipeline(ModelPaths(model=args.model), device="cpu", dtype=torch.float32, use_environment=False,
                         model_lora=False)  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    prompts = list(heldout_prompts())[:: args.every]
    size = int(model_defaults(args.model).get("image_size", 64))
    print(f"{args.model}: {len(prompts)} held-out prompts, {args.steps} steps, {size} px")
    print(f"{'guidance:true_cfg':>18} " + " ".join(f"{c[:10]:>10}" for c in COLUMNS), flush=True)
    for setting in args.settings:
        guidance, true_cfg = (float(v) for v in setting.split(":"))
        verdicts = [(p, generate_and_check(pipe, p, size, args.steps, guidance, true_cfg)[1])
                    for p in tqdm(prompts, desc=setting, leave=False)]  # fmt: skip
        summary = summarize(verdicts)
        print(f"{setting:>18} " + " ".join(f"{str(summary[c]):>10}" for c in COLUMNS), flush=True)


if __name__ == "__main__":
    main()
