"""Text-to-image scores of a model at several sampling settings, side by side: how the embedded model's
sampling defaults (unoflux.json "guidance", "true_cfg", "time_shift", "stochasticity") were chosen. Judged as
`unoflux evaluate world-t2i` judges, at the model's native size (unoflux.json "image_size"); one thread.

    .venv/bin/python scripts/probes/guidance_sweep.py [--model DIR] [--tuning | --every 4] [--steps 25] SETTING...

A SETTING is GUIDANCE:TRUE_CFG[:TIME_SHIFT[:STOCHASTICITY]], e.g. 4:1 (FLUX.1-dev's default: guidance input 4,
no CFG), 1:3 (guidance input 1, as the world model was trained, and classifier-free guidance at scale 3), 1:3:20
(the same with a fixed time shift of 20; without one, or with '-', UNO's resolution rule) or 1:3:-:0.5 (UNO's
rule, each step half re-noised; without it, the deterministic ODE). Default: 4:1 1:1 1:2 1:3.

Prompts: every N-th held-out prompt (--every, default 4: 64 of 256, all kinds), or with --tuning the tuning set
(`unoflux.world.heldout.tuning_prompts`: training identities, weighted to multi-subject and two-panel scenes),
which leaves the held-out set an unbiased test of the choice. Every setting after the first is also compared
with the first prompt by prompt: how many subjects' shapes and two-panel looks it turns right and wrong
(paired counts, which see smaller differences than the percentages' standard errors).
"""

from __future__ import annotations

import argparse

from tqdm import tqdm

from unoflux.evaluate.world import generate_and_check, summarize
from unoflux.options import SamplingOptions
from unoflux.world.checker import TwoPanelVerdict
from unoflux.world.heldout import heldout_prompts, tuning_prompts

COLUMNS = ("background", "placement", "size", "colour", "shape", "pattern", "two_panel_same_look")


def outcomes(verdict) -> dict[str, list[bool]]:
    """Per-prompt right/wrong for the paired comparison: each intended subject's shape, and the two-panel look."""
    scenes = [verdict.left, verdict.right] if isinstance(verdict, TwoPanelVerdict) else [verdict]
    return {
        "shape": [s.shape_ok for scene in scenes for s in scene.subjects],
        "two_panel": [verdict.same_look] if isinstance(verdict, TwoPanelVerdict) else [],
    }


def paired(first: list[dict], other: list[dict], key: str) -> str:
    pairs = [(a, b) for x, y in zip(first, other) for a, b in zip(x[key], y[key])]
    return f"+{sum(b and not a for a, b in pairs)}/-{sum(a and not b for a, b in pairs)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("settings", nargs="*", default=["4:1", "1:1", "1:2", "1:3"], metavar="SETTING")
    parser.add_argument("--model", help="a model folder (default: the embedded model)")
    parser.add_argument("--every", type=int, default=4, help="judge every N-th held-out prompt")
    parser.add_argument("--tuning", action="store_true", help="judge the tuning prompts instead of held-out ones")
    parser.add_argument("--steps", type=int, default=25, help="denoising steps")
    args = parser.parse_args()
    import torch  # after parsing: --help stays fast

    from unoflux.checkpoints import ModelPaths, load_pipeline
    from unoflux.checkpoints.specs import EMBEDDED_MODEL_DIR, model_defaults

    args.model = args.model or str(EMBEDDED_MODEL_DIR)
    torch.set_num_threads(1)
    pipe = load_pipeline(
        ModelPaths(model=args.model), device="cpu", dtype=torch.float32, use_environment=False, model_lora=False
    )
    pipe.set_progress_bar_config(disable=True)
    prompts = list(tuning_prompts()) if args.tuning else list(heldout_prompts())[:: args.every]
    size = int(model_defaults(args.model).get("image_size", 64))
    print(
        f"{args.model}: {len(prompts)} {'tuning' if args.tuning else 'held-out'} prompts, {args.steps} steps, {size} px"
    )
    print(f"{'setting':>12} " + " ".join(f"{c[:10]:>10}" for c in COLUMNS) + "  vs first: shape, two-panel", flush=True)
    first = None
    for setting in args.settings:
        parts = setting.split(":")
        guidance, true_cfg, shift, stochasticity = parts + ["-", "0"][len(parts) - 2 :]
        # no shift given: the resolution rule UNO uses, whatever the model folder declares (and likewise the ODE)
        schedule, time_shift = ("uno", None) if shift == "-" else (None, float(shift))
        verdicts = [
            (
                p,
                generate_and_check(
                    pipe,
                    p,
                    size,
                    SamplingOptions(
                        steps=args.steps,
                        guidance=float(guidance),
                        true_cfg=float(true_cfg),
                        schedule=schedule,
                        time_shift=time_shift,
                        stochasticity=float(stochasticity),
                    ),
                )[1],
            )
            for p in tqdm(prompts, desc=setting, leave=False)
        ]
        summary, results = summarize(verdicts), [outcomes(v) for _, v in verdicts]
        comparison = (
            "" if first is None else (f"  {paired(first, results, 'shape')}, {paired(first, results, 'two_panel')}")
        )
        first = first or results
        print(f"{setting:>12} " + " ".join(f"{str(summary[c]):>10}" for c in COLUMNS) + comparison, flush=True)


if __name__ == "__main__":
    main()
