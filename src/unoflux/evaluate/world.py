"""Exact evaluation on the synthetic world's held-out prompts: generate each with its fixed seed, judge it
with the world's checker (no learned metric), and aggregate.

Text-to-image scores (issue 3): background per image (per panel for two-panel images); placement, size,
main colour, shape and pattern per intended subject; for two-panel prompts, whether both panels show the
same look (and whether that look is the prompt's).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from ..images import save_json, save_png
from ..options import SamplingOptions, option
from ..world.checker import SceneVerdict, TwoPanelVerdict, check
from ..world.heldout import HeldoutPrompt, heldout_prompts
from ..world.specs import TwoPanelSpec

SUBJECT_CRITERIA = ("placement", "size", "colour", "shape", "pattern")


@dataclass(kw_only=True)
class T2IEvalSettings(SamplingOptions):
    """The sampling options (None: the model's) plus the evaluation's own; each prompt brings its seed and size."""

    seed: int | None = option(None, "seed", "unused: each held-out prompt has its own seed")
    size: int = 64  # square scenes are size x size; two-panel images 2*size x size
    limit: int | None = None  # evaluate only the first N held-out prompts (quick looks)


def with_model_defaults(settings, pipe):
    """``settings`` with every None a model fills resolved to what ``pipe`` uses, so reports say them."""
    from ..pipeline import model_defaults_of

    return settings.resolved(model_defaults_of(pipe))


def percent(hits: int, n: int) -> float | None:
    """hits / n in percent, one decimal; None when there is nothing to count."""
    return round(100.0 * hits / n, 1) if n else None


def _scenes_of(verdict: SceneVerdict | TwoPanelVerdict) -> list[SceneVerdict]:
    return [verdict.left, verdict.right] if isinstance(verdict, TwoPanelVerdict) else [verdict]


def summarize(verdicts: list[tuple[HeldoutPrompt, SceneVerdict | TwoPanelVerdict]]) -> dict:
    """Accuracy per criterion, in percent, over all held-out prompts."""
    scenes = [s for _, v in verdicts for s in _scenes_of(v)]
    subjects = [subject for s in scenes for subject in s.subjects]
    two_panel = [v for _, v in verdicts if isinstance(v, TwoPanelVerdict)]
    summary = {
        "prompts": len(verdicts),
        "background": percent(sum(s.background_ok for s in scenes), len(scenes)),
        **{c: percent(sum(getattr(s, f"{c}_ok") for s in subjects), len(subjects)) for c in SUBJECT_CRITERIA},
        "subjects_found": percent(sum(s.found for s in subjects), len(subjects)),
        "scene_all_correct": percent(sum(v.all_ok for _, v in verdicts), len(verdicts)),
        "two_panel_same_look": percent(sum(v.same_look for v in two_panel), len(two_panel)),
        "two_panel_same_look_as_prompted": percent(
            sum(v.same_look and v.left.subjects[0].look_ok for v in two_panel), len(two_panel)
        ),
    }
    by_kind = {}
    for kind in sorted({p.kind for p, _ in verdicts}):
        chosen = [(p, v) for p, v in verdicts if p.kind == kind]
        kind_subjects = [s for _, v in chosen for sc in _scenes_of(v) for s in sc.subjects]
        by_kind[kind] = {
            "prompts": len(chosen),
            **{
                c: percent(sum(getattr(s, f"{c}_ok") for s in kind_subjects), len(kind_subjects))
                for c in SUBJECT_CRITERIA
            },
        }
    summary["by_kind"] = by_kind
    return summary


def contact_sheet(
    items: list[tuple[str, Image.Image]], columns: int = 6, cell: int = 128, aspect: int = 2
) -> Image.Image:
    """Images (up to `aspect` times wider than high) with their prompts underneath, for people to look at."""
    rows = (len(items) + columns - 1) // columns
    text_h = 44
    sheet = Image.new("RGB", (columns * cell * aspect, rows * (cell + text_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (text, image) in enumerate(items):
        x, y = (k % columns) * cell * aspect, (k // columns) * (cell + text_h)
        scale = cell / image.height
        shown = image.resize((int(image.width * scale), cell), Image.NEAREST)
        sheet.paste(shown, (x + (aspect * cell - shown.width) // 2, y))
        words, line, lines = text.split(), "", []
        for word in words:
            if len(line) + len(word) > 22 * aspect:
                lines.append(line)
                line = ""
            line += word + " "
        lines.append(line)
        for i, line in enumerate(lines[:3]):
            draw.text((x + 4, y + cell + 2 + 13 * i), line.strip(), fill=(20, 20, 20))
    return sheet


def generate_heldout(pipe, prompt: HeldoutPrompt, size: int, options: SamplingOptions | None = None):
    """One held-out prompt with its fixed seed (two-panel images twice as wide) -> the pipeline output."""
    wide = isinstance(prompt.spec, TwoPanelSpec)
    return pipe(prompt.caption, None, options, width=2 * size if wide else size, height=size, seed=prompt.seed)


def generate_and_check(pipe, prompt: HeldoutPrompt, size: int, options: SamplingOptions | None = None):
    """:func:`generate_heldout` -> (pipeline output, the checker's verdict on its image)."""
    output = generate_heldout(pipe, prompt, size, options)
    return output, check(output.images[0], prompt.spec)


def evaluate_text_to_image(pipe, out_dir: Path, settings: T2IEvalSettings | None = None) -> dict:
    """Generate and judge every held-out prompt; write ``report.json``, images and a contact sheet."""
    settings = settings or T2IEvalSettings()
    out_dir = Path(out_dir)
    settings = with_model_defaults(settings, pipe)
    prompts = list(heldout_prompts())[: settings.limit]
    verdicts, shown = [], []
    for prompt in tqdm(prompts, desc="held-out prompts"):
        output, verdict = generate_and_check(pipe, prompt, settings.size, settings.sampling_options())
        image = output.images[0]
        verdicts.append((prompt, verdict))
        save_png(
            image,
            out_dir / "images" / f"{prompt.id}.png",
            {"prompt": prompt.caption, "seed": prompt.seed, "verdict": verdict.to_dict()},
        )
        if len(shown) < 36 and (prompt.kind != "single" or len(shown) < 18):
            shown.append((prompt.caption, image))
    summary = summarize(verdicts)
    report = {
        "settings": asdict(settings),
        "summary": summary,
        "items": [
            {
                "id": p.id,
                "kind": p.kind,
                "caption": p.caption,
                "seed": p.seed,
                "all_ok": v.all_ok,
                "verdict": v.to_dict(),
            }
            for p, v in verdicts
        ],
    }
    save_json(report, out_dir / "report.json")
    save_png(contact_sheet(shown), out_dir / "contact_sheet.png", {"prompt": "held-out prompts", **asdict(settings)})
    return summary


def print_summary(summary: dict) -> None:
    print(json.dumps({k: v for k, v in summary.items() if k != "by_kind"}, indent=2))
