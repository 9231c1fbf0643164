"""Held-out evaluation: an oracle that renders each prompt's true scene scores 100%; a wrong one is caught."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, replace

from PIL import Image

from unoflux.evaluate.world import T2IEvalSettings, evaluate_text_to_image, summarize
from unoflux.world.checker import check
from unoflux.world.heldout import heldout_prompts
from unoflux.world.render import render


@dataclass
class _Output:
    images: list


class RenderingOracle:
    """Stands in for a perfect text-to-image model: renders the held-out prompt's own scene."""

    def __init__(self, size: int):
        self.by_caption = {p.caption: p.spec for p in heldout_prompts()}
        self.size = size

    def __call__(self, prompt, references, options, width, height, **_):  # the pipeline's signature
        spec = self.by_caption[prompt]
        image = render(spec, self.size).image
        assert image.size == (width, height)
        return _Output([image])


def pick(kind, n):
    return [p for p in heldout_prompts() if p.kind == kind][:n]


def test_true_renders_score_100_and_wrong_backgrounds_are_counted():
    prompts = pick("single", 4) + pick("multi", 2) + pick("two_panel", 2)
    verdicts = [(p, check(render(p.spec, 64).image, p.spec)) for p in prompts]
    summary = summarize(verdicts)
    for key in ("background", "placement", "size", "colour", "shape", "two_panel_same_look"):
        assert summary[key] == 100.0, key
    single = prompts[0]
    other = "snow" if single.spec.background != "snow" else "beach"
    wrong = render(replace(single.spec, background=other), 64).image
    summary = summarize([(single, check(wrong, single.spec))])
    assert summary["background"] == 0.0


def test_evaluation_writes_report_images_and_contact_sheet(tmp_path):
    summary = evaluate_text_to_image(RenderingOracle(64), tmp_path, T2IEvalSettings(size=64, limit=3))
    assert summary["prompts"] == 3 and summary["shape"] == 100.0
    report = json.loads((tmp_path / "report.json").read_text())
    assert [item["all_ok"] for item in report["items"]] == [True, True, True]
    assert (report["settings"]["schedule"], report["settings"]["time_shift"]) == ("uno", None)  # resolved, said
    assert report["settings"]["stochasticity"] == 0.0
    assert len(list((tmp_path / "images").glob("*.png"))) == 3
    assert Image.open(tmp_path / "contact_sheet.png").width > 0


def test_commands_have_help():
    for argv in (
        ["evaluate", "world-t2i", "-h"],
        ["demo", "-h"],
        ["family", "build", "-h"],
        ["family", "export", "-h"],
    ):
        result = subprocess.run([sys.executable, "-m", "unoflux", *argv], capture_output=True, text=True)
        assert result.returncode == 0 and "usage:" in result.stdout, argv
