"""``unoflux demo`` (what ``make run`` runs): held-out prompts and held-out subjects through the embedded
model, each image saved, and the world's exact checker's verdict printed beside it.

The subject-driven examples use the reference shots bundled in ``unoflux/examples`` (also the web app's
examples), rendered at the model's 128 px; ``write_examples()`` renders them again from the held-out
identities, byte for byte.
"""

from __future__ import annotations

import json
from pathlib import Path

from .evaluate.subject import judge_case, reference_shots
from .evaluate.world import generate_and_check
from .images import load_image, save_png
from .options import SamplingOptions
from .world.checker import TwoPanelVerdict
from .world.heldout import heldout_prompts, heldout_subject_pairs

EXAMPLES_DIR = Path(__file__).with_name("examples")
DEMO_PROMPTS = ("single-000", "single-007", "multi-000", "two-panel-000")
# Held-out identities the model never saw: a good one-reference case and a typical two-reference one, so that
# the demo shows both what the model gets right and what it does not (how they were chosen and how the shipped
# model does on them: docs/model.md, "Reading it, honestly").
DEMO_SUBJECT_CASES = ("pair-029", "multi-pair-027")


def verdict_line(verdict) -> str:
    """One readable line: what the checker found, criterion by criterion."""
    mark = lambda ok: "ok" if ok else "WRONG"  # noqa: E731
    if isinstance(verdict, TwoPanelVerdict):
        return f"same look in both panels: {mark(verdict.same_look)}; left: {verdict_line(verdict.left)}"
    parts = [f"background {mark(verdict.background_ok)}"]
    for k, s in enumerate(verdict.subjects, start=1):
        found = "" if s.found else " (not found)"
        parts.append(
            f"subject {k}{found}: colour {mark(s.colour_ok)}, shape {mark(s.shape_ok)}, "
            f"placement {mark(s.placement_ok)}, size {mark(s.size_ok)}"
        )
    return "; ".join(parts)


def reference_file_name(identity) -> str:
    return f"{identity.colour}_{identity.pattern}_{identity.shape}.png"


def write_examples(folder: Path = EXAMPLES_DIR, size: int = 128) -> list[Path]:
    """Render the demo cases' reference shots and write ``examples.json`` (the app's examples too)."""
    pairs = {p.id: p for p in heldout_subject_pairs()}
    items, written = [], []
    for case_id in DEMO_SUBJECT_CASES:
        pair = pairs[case_id]
        names = [reference_file_name(identity) for identity in pair.references]
        for name, shot, identity in zip(names, reference_shots(pair, size), pair.references):
            written.append(save_png(shot, Path(folder) / name, {"reference shot of": identity.to_dict()}))
        items.append({"case": case_id, "prompt": pair.caption, "references": names})
    text_only = {p.id: p for p in heldout_prompts()}[DEMO_PROMPTS[0]]
    items.append({"case": text_only.id, "prompt": text_only.caption, "references": []})
    (Path(folder) / "examples.json").write_text(json.dumps(items, indent=1) + "\n")
    return written


def run_demo(pipe, out_dir: Path, size: int, steps: int = 25) -> list[Path]:
    out_dir = Path(out_dir)
    written = []
    print("text to image (held-out prompts):")
    prompts = {p.id: p for p in heldout_prompts()}
    for prompt_id in DEMO_PROMPTS:
        prompt = prompts[prompt_id]
        output, verdict = generate_and_check(pipe, prompt, size, SamplingOptions(steps=steps))
        path = save_png(
            output.images[0], out_dir / f"{prompt_id}.png", {**output.settings, "verdict": verdict.to_dict()}
        )
        print(f"{path}\n  prompt: {prompt.caption}\n  checker: {verdict_line(verdict)}")
        written.append(path)

    print("\nsubject-driven (bundled reference shots of held-out subjects):")
    pairs = {p.id: p for p in heldout_subject_pairs()}
    examples = [e for e in json.loads((EXAMPLES_DIR / "examples.json").read_text()) if e["references"]]
    for example in examples:
        pair = pairs[example["case"]]
        references = [EXAMPLES_DIR / name for name in example["references"]]
        output = pipe(
            example["prompt"],
            [load_image(r) for r in references],
            SamplingOptions(steps=steps),
            width=size,
            height=size,
            seed=pair.seed,
        )
        result = judge_case(output.images[0], pair)
        path = save_png(
            output.images[0],
            out_dir / f"{pair.id}.png",
            {**output.settings, "references": [str(r) for r in references], **result.to_dict()},
        )
        identity = ", ".join("ok" if won else "WRONG" for won in result.identity_wins)
        print(
            f"{path}\n  references: {' '.join(str(r) for r in references)}\n  prompt: {example['prompt']}\n"
            f"  checker: {verdict_line(result.verdict)}; identity (not just the look): {identity}"
        )
        written.append(path)
    return written


if __name__ == "__main__":  # python -m unoflux.demo: re-render the bundled examples
    for path in write_examples():
        print(path)
