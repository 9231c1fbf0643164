"""``unoflux demo`` (what ``make run`` runs): held-out prompts through the embedded model, each image
saved, and the world's exact checker's verdict printed beside it."""

from __future__ import annotations

from pathlib import Path

from .evaluate.world import generate_and_check
from .images import save_png
from .world.checker import TwoPanelVerdict
from .world.heldout import heldout_prompts

DEMO_PROMPTS = ("single-000", "single-007", "multi-000", "two-panel-000")


def verdict_line(verdict) -> str:
    """One readable line: what the checker found, criterion by criterion."""
    mark = lambda ok: "ok" if ok else "WRONG"  # noqa: E731
    if isinstance(verdict, TwoPanelVerdict):
        return f"same look in both panels: {mark(verdict.same_look)}; left: {verdict_line(verdict.left)}"
    parts = [f"background {mark(verdict.background_ok)}"]
    for k, s in enumerate(verdict.subjects, start=1):
        found = "" if s.found else " (not found)"
        parts.append(f"subject {k}{found}: colour {mark(s.colour_ok)}, shape {mark(s.shape_ok)}, "
                     f"placement {mark(s.placement_ok)}, size {mark(s.size_ok)}")  # fmt: skip
    return "; ".join(parts)


def run_demo(pipe, out_dir: Path, size: int, steps: int = 25) -> list[Path]:
    prompts = {p.id: p for p in heldout_prompts()}
    written = []
    for prompt_id in DEMO_PROMPTS:
        prompt = prompts[prompt_id]
        output, verdict = generate_and_check(pipe, prompt, size, steps)
        path = save_png(output.images[0], out_dir / f"{prompt_id}.png", {**output.settings, "verdict": verdict.to_dict()})
        print(f"{path}\n  prompt: {prompt.caption}\n  checker: {verdict_line(verdict)}")
        written.append(path)
    return written
