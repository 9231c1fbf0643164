"""Why do shapes fail in multi-subject scenes? The held-out multi-subject prompts three ways, judged as `unoflux
evaluate world-t2i` judges (docs/model.md, "Tried without a GPU (session 8)"):

- as they are (2-3 subjects of different shapes);
- with every subject given the first subject's shape (the same colours, patterns, places and sizes, captioned
  anew): a model that draws shapes in a crowded scene but cannot tell which shape word belongs to which subject
  (attribute binding) does much better here;
- each subject alone at its place and size: the single-subject ceiling of the same subjects.

    .venv/bin/python scripts/probes/binding_probe.py [MODEL_DIR]     (default: the embedded model; 2 threads, ~3 min)
    .venv/bin/python scripts/probes/binding_probe.py --dreamo RUN/final   (the base with a DreamO training run's LoRA)
"""

from __future__ import annotations

import argparse

from unoflux.evaluate.world import generate_and_check, summarize
from unoflux.world.captions import caption
from unoflux.world.heldout import HeldoutPrompt, heldout_prompts
from unoflux.world.specs import SceneSpec, SubjectSpec
from unoflux.world.subjects import make_identity

COLUMNS = ("placement", "size", "colour", "shape", "pattern")


def one_shape(prompt: HeldoutPrompt) -> HeldoutPrompt:
    """The scene with every subject in its first subject's shape (identity details of their own seeds)."""
    shape = prompt.spec.subjects[0].identity.shape
    subjects = tuple(
        SubjectSpec(make_identity(s.identity.seed, shape, s.identity.colour, s.identity.pattern), s.placement, s.size)
        for s in prompt.spec.subjects
    )
    spec = SceneSpec(prompt.spec.background, subjects, prompt.spec.seed)
    return HeldoutPrompt(f"{prompt.id}-one-shape", "multi", spec, caption(spec, 20_000 + prompt.seed), prompt.seed)


def each_alone(prompt: HeldoutPrompt) -> list[HeldoutPrompt]:
    """One single-subject scene per subject, at its place and size, on the same background."""
    scenes = [SceneSpec(prompt.spec.background, (s,), prompt.spec.seed) for s in prompt.spec.subjects]
    return [
        HeldoutPrompt(f"{prompt.id}-alone-{k}", "single", spec, caption(spec, 30_000 + prompt.seed + k), prompt.seed)
        for k, spec in enumerate(scenes)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", metavar="MODEL_DIR", help="a model folder (default: the embedded model)")
    parser.add_argument("--dreamo", metavar="DIR", help="a DreamO training run's final/ (its LoRA on the base)")
    parser.add_argument("--limit", type=int, help="only the first N held-out multi-subject prompts (quick looks)")
    args = parser.parse_args()
    import torch  # after parsing: --help stays fast

    from unoflux.checkpoints import ModelPaths, load_pipeline
    from unoflux.checkpoints.specs import EMBEDDED_MODEL_DIR, model_defaults

    model = args.model or str(EMBEDDED_MODEL_DIR)
    pipe = load_pipeline(
        ModelPaths(model=model, dreamo=args.dreamo),
        device="cpu",
        dtype=torch.float32,
        use_environment=False,
        model_lora=False,
    )
    pipe.set_progress_bar_config(disable=True)
    size = int(model_defaults(model).get("image_size", 64))
    multi = [p for p in heldout_prompts() if p.kind == "multi"][: args.limit]
    variants = {
        "as held out": multi,
        "one shape for all": [one_shape(p) for p in multi],
        "each subject alone": [q for p in multi for q in each_alone(p)],
    }
    print(
        f"{model}{' + ' + args.dreamo if args.dreamo else ''}: {len(multi)} held-out multi-subject prompts at {size} px"
    )
    print(f"{'variant':>20} {'prompts':>8} " + " ".join(f"{c:>10}" for c in COLUMNS), flush=True)
    for name, prompts in variants.items():
        summary = summarize([(p, generate_and_check(pipe, p, size)[1]) for p in prompts])
        print(f"{name:>20} {len(prompts):>8} " + " ".join(f"{summary[c]:>10}" for c in COLUMNS), flush=True)


if __name__ == "__main__":
    main()
