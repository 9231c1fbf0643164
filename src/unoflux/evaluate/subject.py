"""Subject-driven evaluation on held-out identities (issue 4): 200 one-reference and 200 two-reference
cases with fixed seeds, judged by the world's checker.

Per case the model gets the reference shots (the identities alone, as in training) and the target
caption, or only the caption (``with_references=False``: the caption-only floor). With
``look_free_captions`` the caption names sizes, places and background but no looks ("a small figure on the
left in the snow"): colour and shape can then only come from the references (chance: 1 in 8). Scores:

- text control, as in text-to-image: background, placement, size, colour, shape, pattern;
- ``identity_match``: the subject is found and resembles its own identity more than each of
  ``distractors`` other identities with the very same look (chance: 1 in distractors + 1 of the found
  subjects). This rewards the reference's details (contour, pattern angle and phase, emblem), not its
  category look, which the caption already names;
- ``fidelity_margin``: mean fidelity to the true identity minus the mean over its distractors;
- ``all_recognisable``: every reference subject is found with its main colour and shape (two-reference
  cases: both subjects present and recognisable);
- with ``placeholders`` the prompt names reference k's subject with DreamO's ``[ref#k]`` (models trained on such
  captions: docs/training.md, "DreamO"); the words are otherwise the same;
- ``copy_paste``: the subject sits where the reference shot has it (centred) and as large (its box's
  largest side at least ``COPY_PASTE_EXTENT`` of the height, larger than any size a caption asks for)
  instead of where and how large the prompt says.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..images import save_json, save_png
from ..options import SamplingOptions, option
from ..world.captions import caption_scene
from ..world.checker import SceneVerdict, check_scene, identity_match
from ..world.heldout import SubjectPair, heldout_subject_pairs, subject_caption
from ..world.render import render_reference
from ..world.subjects import same_look_distractors
from ..world.vocab import REFERENCE_FILL, SIZES
from .world import SUBJECT_CRITERIA, contact_sheet, percent, with_model_defaults

# Halfway between the largest prompted size and a reference shot's fill: only a copied subject is this big.
COPY_PASTE_EXTENT = (max(SIZES.values()) + REFERENCE_FILL) / 2


@dataclass(kw_only=True)
class SubjectEvalSettings(SamplingOptions):
    """The sampling options (None: the model's) plus the evaluation's own; each case brings its seed."""

    seed: int | None = option(None, "seed", "unused: each held-out case has its own seed")
    size: int = 64  # output and reference-shot size in px
    with_references: bool = True  # False: the caption-only floor
    limit: int | None = None  # only the first N cases of each kind (quick looks)
    distractors: int = 7
    look_free_captions: bool = False  # captions without looks: the look must come from the references
    placeholders: bool = False  # name reference k's subject "[ref#k]" in the prompt (DreamO-trained models)


@dataclass(frozen=True)
class CaseResult:
    pair: SubjectPair
    verdict: SceneVerdict
    identity_wins: tuple[bool, ...]  # per reference subject: found and beats every same-look distractor
    margins: tuple[float | None, ...]  # per reference subject: fidelity minus mean distractor fidelity
    copy_paste: bool

    @property
    def kind(self) -> str:
        return "one" if len(self.pair.references) == 1 else "two"

    @property
    def all_recognisable(self) -> bool:
        return all(s.colour_ok and s.shape_ok for s in self.verdict.subjects)

    def to_dict(self) -> dict:
        return {
            "id": self.pair.id,
            "caption": self.pair.caption,
            "seed": self.pair.seed,
            "identity_wins": list(self.identity_wins),
            "margins": list(self.margins),
            "copy_paste": self.copy_paste,
            "all_recognisable": self.all_recognisable,
            "verdict": self.verdict.to_dict(),
        }


def reference_shots(pair: SubjectPair, size: int) -> list[Image.Image]:
    """What the model is given: each identity alone on the plain backdrop, as the training pairs' references."""
    return [render_reference(identity, size).image for identity in pair.references]


def judge_case(image: Image.Image, pair: SubjectPair, distractors: int = 7) -> CaseResult:
    """The checker's verdict on one generated image plus the identity and copy-paste judgements."""
    verdict = check_scene(image, pair.target, with_fidelity=False)
    wins, margins = [], []
    for subject, spec in zip(verdict.subjects, pair.target.subjects):
        if not subject.found:
            wins.append(False)
            margins.append(None)
            continue
        own, others = identity_match(
            image, verdict.background, subject.box, spec.identity, same_look_distractors(spec.identity, distractors)
        )
        wins.append(bool(own > max(others)))
        margins.append(round(own - float(np.mean(others)), 4))
    copy_paste = False
    if len(pair.references) == 1 and verdict.subjects[0].found:
        x0, y0, x1, y1 = verdict.subjects[0].box
        copy_paste = (
            verdict.subjects[0].placement == "center" and max(x1 - x0, y1 - y0) >= COPY_PASTE_EXTENT * image.height
        )
    return CaseResult(pair, verdict, tuple(wins), tuple(margins), copy_paste)


def summarize_subject(results: list[CaseResult]) -> dict:
    """Scores in percent (margins as they are), overall and per kind ('one', 'two' references)."""

    def scores(chosen: list[CaseResult]) -> dict:
        subjects = [s for r in chosen for s in r.verdict.subjects]
        wins = [w for r in chosen for w in r.identity_wins]
        margins = [m for r in chosen for m in r.margins if m is not None]
        one = [r for r in chosen if r.kind == "one"]
        return {
            "cases": len(chosen),
            "background": percent(sum(r.verdict.background_ok for r in chosen), len(chosen)),
            **{c: percent(sum(getattr(s, f"{c}_ok") for s in subjects), len(subjects)) for c in SUBJECT_CRITERIA},
            "subjects_found": percent(sum(s.found for s in subjects), len(subjects)),
            "identity_match": percent(sum(wins), len(wins)),
            "fidelity_margin": round(float(np.mean(margins)), 4) if margins else None,
            "all_recognisable": percent(sum(r.all_recognisable for r in chosen), len(chosen)),
            "copy_paste": percent(sum(r.copy_paste for r in one), len(one)),
        }

    summary = scores(results)
    summary["by_kind"] = {kind: scores([r for r in results if r.kind == kind]) for kind in ("one", "two")}
    return summary


def evaluate_subject_driven(pipe, out_dir: Path, settings: SubjectEvalSettings | None = None) -> dict:
    """Generate and judge the held-out subject-driven cases; write ``report.json``, images and a contact
    sheet (references | output per case)."""
    settings = settings or SubjectEvalSettings()
    out_dir = Path(out_dir)
    settings = with_model_defaults(settings, pipe)
    pairs = list(heldout_subject_pairs())
    if settings.limit is not None:
        pairs = [p for p in pairs if len(p.references) == 1][: settings.limit] + [
            p for p in pairs if len(p.references) > 1
        ][: settings.limit]
    results, items, shown = [], [], []
    for pair in tqdm(pairs, desc="held-out subject cases"):
        references = reference_shots(pair, settings.size) if settings.with_references else None
        if settings.look_free_captions:
            prompt = caption_scene(pair.target, pair.seed, name_looks=False, placeholders=settings.placeholders)
        else:
            prompt = subject_caption(pair, settings.placeholders) if settings.placeholders else pair.caption
        output = pipe(
            prompt, references, settings.sampling_options(), width=settings.size, height=settings.size, seed=pair.seed
        )
        image = output.images[0]
        result = judge_case(image, pair, settings.distractors)
        results.append(result)
        items.append({**result.to_dict(), "prompt": prompt})  # "caption" is the held-out one; "prompt" what was given
        save_png(image, out_dir / "images" / f"{pair.id}.png", {"seed": pair.seed, **items[-1]})
        if len(shown) < 24 and (len(pair.references) > 1 or len(shown) < 12):
            shown.append((prompt, _side_by_side(references or [], image)))
    summary = summarize_subject(results)
    save_json({"settings": asdict(settings), "summary": summary, "items": items}, out_dir / "report.json")
    save_png(
        contact_sheet(shown, columns=4, aspect=3),
        out_dir / "contact_sheet.png",
        {"prompt": "held-out subject cases", **asdict(settings)},
    )
    return summary


def _side_by_side(references: list[Image.Image], output: Image.Image) -> Image.Image:
    """References (scaled to the output's height) then the output, with a white gap."""
    h = output.height
    tiles = [r.resize((h * r.width // r.height, h), Image.LANCZOS) for r in references] + [output]
    gap = max(2, h // 16)
    row = Image.new("RGB", (sum(t.width for t in tiles) + gap * (len(tiles) - 1), h), "white")
    x = 0
    for tile in tiles:
        row.paste(tile, (x, 0))
        x += tile.width + gap
    return row


def print_subject_summary(summary: dict) -> None:
    print(json.dumps(summary, indent=2))
