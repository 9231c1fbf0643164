"""Subject-driven evaluation: the identity judgement is exact on renders, at chance for a look-alike, and
copy-paste is caught; the whole loop writes its report."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from unoflux.evaluate.subject import SubjectEvalSettings, evaluate_subject_driven, judge_case, summarize_subject
from unoflux.world.backgrounds import paint_background
from unoflux.world.captions import caption_scene
from unoflux.world.heldout import heldout_subject_pairs
from unoflux.world.render import render_reference, render_scene
from unoflux.world.specs import SceneSpec, SubjectSpec
from unoflux.world.subjects import heldout_seeds, make_identity, same_look_distractors


def _cases(one: int, two: int):
    pairs = heldout_subject_pairs()
    return [p for p in pairs if len(p.references) == 1][:one] + [p for p in pairs if len(p.references) == 2][:two]


def test_heldout_subject_cases_are_fixed_and_held_out():
    pairs = heldout_subject_pairs()
    assert sum(len(p.references) == 1 for p in pairs) == 200 and sum(len(p.references) == 2 for p in pairs) == 200
    assert all(r.seed in heldout_seeds() for p in pairs for r in p.references)
    assert all(tuple(s.identity for s in p.target.subjects) == p.references for p in pairs)
    assert len({p.id for p in pairs}) == 400 and len({p.seed for p in pairs}) == 400


def test_distractors_share_the_look_but_not_the_identity():
    identity = heldout_subject_pairs()[0].references[0]
    distractors = same_look_distractors(identity, 7)
    assert all(d.look == identity.look and d != identity for d in distractors)
    assert len(set(distractors)) == 7 and all(d.is_heldout for d in distractors)
    assert same_look_distractors(identity, 7) == distractors


def test_identity_match_on_renders_and_on_look_alikes():
    cases = _cases(16, 8)
    true = summarize_subject([judge_case(render_scene(p.target, 64).image, p) for p in cases])
    assert true["identity_match"] >= 95 and true["all_recognisable"] == 100 and true["copy_paste"] == 0

    def look_alike(spec: SceneSpec) -> SceneSpec:  # same look, placement and size; another identity
        subjects = tuple(
            SubjectSpec(make_identity(s.identity.seed + 777_000, *s.identity.look), s.placement, s.size)
            for s in spec.subjects
        )
        return SceneSpec(spec.background, subjects, spec.seed)

    other = summarize_subject([judge_case(render_scene(look_alike(p.target), 64).image, p) for p in cases])
    assert other["all_recognisable"] >= 95  # the look is right...
    assert other["identity_match"] <= 30  # ...the identity is not: about 1 in 8 by chance
    assert other["fidelity_margin"] < true["fidelity_margin"] - 0.05


def test_copy_paste_is_the_reference_shot_in_the_scene():
    pair = _cases(1, 0)[0]
    reference = render_reference(pair.references[0], 64)
    background = paint_background(pair.target.background, 64, 64, np.random.default_rng(pair.target.seed))
    pasted = Image.composite(
        reference.image, background.convert("RGB"), Image.fromarray(reference.subjects[0].mask.astype(np.uint8) * 255)
    )
    assert judge_case(pasted, pair).copy_paste
    assert not judge_case(render_scene(pair.target, 64).image, pair).copy_paste


@pytest.mark.parametrize("with_references, look_free", [(True, False), (False, False), (True, True)])
def test_evaluation_writes_report_images_and_sheet(tmp_path, tiny_pipe, with_references, look_free):
    tiny_pipe.set_progress_bar_config(disable=True)
    settings = SubjectEvalSettings(
        size=32, steps=2, limit=1, with_references=with_references, look_free_captions=look_free
    )
    summary = evaluate_subject_driven(tiny_pipe, tmp_path, settings)
    report = json.loads((tmp_path / "report.json").read_text())
    assert summary["cases"] == 2 and summary["by_kind"]["one"]["cases"] == 1 and summary["by_kind"]["two"]["cases"] == 1
    assert report["settings"]["with_references"] is with_references
    assert [item["id"] for item in report["items"]] == ["pair-000", "multi-pair-000"]
    pairs = {p.id: p for p in heldout_subject_pairs()}
    for item in report["items"]:  # the prompt given, beside the held-out caption
        pair = pairs[item["id"]]
        assert item["prompt"] == (
            caption_scene(pair.target, pair.seed, name_looks=False) if look_free else pair.caption
        )
        assert item["caption"] == pair.caption and (item["prompt"] != item["caption"]) == look_free
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["multi-pair-000.png", "pair-000.png"]
    assert Image.open(tmp_path / "contact_sheet.png").width == 4 * 128 * 3


class _Output:
    def __init__(self, image):
        self.images = [image]


class SubjectOracle:
    """Stands in for a perfect subject-driven model: renders the case's own scene from its references."""

    def __init__(self):
        self.by_caption = {p.caption: p for p in heldout_subject_pairs()}
        self.by_caption |= {caption_scene(p.target, p.seed, name_looks=False): p for p in heldout_subject_pairs()}
        self.prompts = []

    def __call__(self, prompt, references, options, width, height, **_):  # the pipeline's signature
        pair = self.by_caption[prompt]
        self.prompts.append(prompt)
        assert [r.size for r in references] == [(width, width)] * len(pair.references)
        assert options.position_mode == "diagonal"
        return _Output(render_scene(pair.target, width).image)


def test_a_perfect_subject_model_scores_full_marks(tmp_path):
    summary = evaluate_subject_driven(SubjectOracle(), tmp_path, SubjectEvalSettings(size=64, limit=4))
    assert summary["cases"] == 8 and summary["identity_match"] >= 90
    assert summary["background"] == summary["placement"] == summary["all_recognisable"] == 100.0
    assert summary["by_kind"]["one"]["copy_paste"] == 0.0


def test_look_free_captions_leave_the_look_to_the_references(tmp_path):
    oracle = SubjectOracle()
    settings = SubjectEvalSettings(size=64, limit=2, look_free_captions=True)
    summary = evaluate_subject_driven(oracle, tmp_path, settings)
    assert summary["all_recognisable"] == 100.0 and len(oracle.prompts) == 4
    for prompt, pair in zip(oracle.prompts, _cases(2, 2)):
        assert prompt != pair.caption and not any(r.colour in prompt for r in pair.references)


def test_cli_refuses_a_model_without_reference_sizes_unless_given(diffusers_folder, tmp_path, capsys):
    """64 px world shots resized to UNO's 512 made evaluations slow and meaningless (twice): refused up front."""
    from unoflux.cli import main

    common = [
        "evaluate",
        "world-subject",
        "--model",
        str(diffusers_folder),
        "--size",
        "32",
        "--steps",
        "1",
        "--limit",
        "1",
    ]
    assert main([*common, "--out", str(tmp_path / "refused")]) == 2
    assert "declares no reference_long_side" in capsys.readouterr().err and not (tmp_path / "refused").exists()
    assert main([*common, "--out", str(tmp_path / "given"), "--ref-long-side", "32,16"]) == 0
    assert json.loads((tmp_path / "given" / "report.json").read_text())["summary"]["cases"] == 2
    assert main([*common, "--out", str(tmp_path / "floor"), "--caption-only"]) == 0  # no references: no sizes needed
