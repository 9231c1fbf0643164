"""DreamBench scoring: per-image aggregation as the protocol says, bootstrap intervals and the paired test by hand,
a bad image listed instead of a dead run, and the whole command on the embedded model with its report in Chromium."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from dreambench_helpers import DREAMBENCH, needs_dreambench
from tests.conftest import random_image

from unoflux.errors import UnofluxError
from unoflux.evaluate.dreambench import multi_subject_benchmark, parse_pairs, single_subject_benchmark
from unoflux.evaluate.run import score_run
from unoflux.evaluate.scores import (
    ImageScore,
    bootstrap_mean,
    compare_scores,
    paired_permutation_p,
    read_scores_csv,
    score_benchmark,
)
from unoflux.images import load_image
from unoflux.metrics import Scorer


def test_bootstrap_interval_and_paired_test_by_hand():
    stat = bootstrap_mean([[1.0, 1.0], [3.0]])
    assert stat["mean"] == pytest.approx(5 / 3) and stat["n"] == 3  # the mean over images, not over items
    assert 1.0 <= stat["ci_low"] < stat["mean"] < stat["ci_high"] <= 3.0
    same = bootstrap_mean([[0.5, 0.5]] * 4)
    assert same["ci_low"] == same["ci_high"] == same["mean"] == 0.5
    assert bootstrap_mean([]) == {"mean": None, "ci_low": None, "ci_high": None, "n": 0}
    # all 8 sign patterns of three equal differences: only the two with one sign reach |mean| = 1
    assert paired_permutation_p(np.array([1.0, 1.0, 1.0])) == 0.25
    assert paired_permutation_p(np.array([1.0, -1.0])) == 1.0
    many = paired_permutation_p(np.full(40, 0.01))  # sampled: 10000 sign draws
    assert many < 0.001


def _dataset(root: Path, subjects: dict[str, int]) -> Path:
    for s, (name, count) in enumerate(subjects.items()):
        (root / name).mkdir(parents=True)
        for k in range(count):
            random_image(96 + 8 * k, 80, seed=10 * s + k).save(root / name / f"{k:02d}.jpg")
    (root / "prompts_and_classes.txt").write_text((DREAMBENCH / "prompts_and_classes.txt").read_text())
    return root


@needs_dreambench
def test_scores_aggregate_as_the_protocol_says(tmp_path, tiny_backbones):
    root = _dataset(tmp_path / "data", {"can": 3, "dog": 2})
    (root / "can" / "02.jpg").write_bytes(b"not a jpeg")  # one bad real photo: left out and listed
    scorer = Scorer(dino=tiny_backbones["dino"], clip=tiny_backbones["clip"], device="cpu", progress=False)
    run = tmp_path / "run"
    for kind, bench in (
        ("single", single_subject_benchmark(root, prompts="0-1")),
        ("multi", multi_subject_benchmark(root, pairs=parse_pairs("dog+can"), prompts="0")),
    ):
        images = run / kind / "images"
        images.mkdir(parents=True)
        for i in range(len(bench.items)):
            for j in range(2):
                random_image(64, 64, seed=100 + 2 * i + j).save(images / f"{i}_{j}.png")
        (images / "0_1.png").unlink()  # a missing image is a recorded failure, not a stopped run
        scores, unreadable = score_benchmark(bench, images, 2, scorer, run / kind)
        assert [u["image"] for u in unreadable] == [str(root / "can" / "02.jpg")]
        assert scores[1].error == f"generated image {str(images / '0_1.png')!r} does not exist"
        real = {"can": [root / "can/00.jpg", root / "can/01.jpg"], "dog": [root / "dog/00.jpg", root / "dog/01.jpg"]}
        for s in scores:
            if s.error:
                continue
            png = images / f"{s.item}_{s.image}.png"
            per_subject = [np.mean(scorer.dino_pairs([png] * 2, real[name])) for name in s.subjects]
            assert s.dino == pytest.approx(np.mean(per_subject), abs=1e-6)  # mean over real images, then subjects
            clip_i = [np.mean(scorer.clip_i_pairs([png] * 2, real[name])) for name in s.subjects]
            assert s.clip_i == pytest.approx(np.mean(clip_i), abs=1e-6)
            assert s.clip_t == pytest.approx(scorer.clip_t_pairs([png], [s.prompt])[0], abs=1e-6)
            if kind == "multi":
                assert s.per_subject["can"]["dino"] == pytest.approx(per_subject[1], abs=1e-6)
        summary = score_run(run / kind, bench, scorer, 2)
        back = read_scores_csv(run / kind / "scores.csv")
        assert [(b.item_id, b.image, b.error) for b in back] == [(s.item_id, s.image, s.error) for s in scores]
        assert [b.dino for b in back] == pytest.approx([s.dino for s in scores], nan_ok=True, abs=1e-12)
        overall = summary["scores"]["overall"]["dino"]
        assert overall["mean"] == pytest.approx(np.mean([s.dino for s in scores if s.dino is not None]))
        assert overall["n"] == len(scores) - 1 and summary["scores"]["failed"][0]["path"] == "images/0_1.png"
        assert summary["unreadable_real_images"] == unreadable and summary["paper"]["dino"] in (0.76, 0.542)
        assert summary["backbones"]["dino"]["folder"] == str(tiny_backbones["dino"])
        assert list(summary["scores"]["per_prompt"]) == (
            ["a <subject> in the jungle", "a <subject> in the snow"]
            if kind == "single"
            else ["a <subject> in the jungle"]
        )
        assert set(summary["scores"]["per_subject"]) == {"can", "dog"}
        assert (run / kind / "report.html").is_file()


def test_comparison_is_paired_by_item_and_image():
    a = [ImageScore(i // 2, f"dog/{i // 2:02d}", i % 2, f"images/{i}.png", ["dog"], i // 2, f"p{i // 2}",
                    dino=0.5 + 0.01 * i, clip_i=0.7) for i in range(8)]  # fmt: skip
    b = [replace(s, dino=s.dino - 0.02) for s in a[:6]]  # B lacks item 3
    result = compare_scores(a, b)
    assert result["pairs"] == 6 and result["only_a"] == 2
    dino = result["metrics"]["dino"]
    assert dino["difference"] == pytest.approx(0.02) and dino["ci_low"] == pytest.approx(0.02)
    assert dino["items"] == 3 and dino["a_better_items"] == 3 and dino["p_value"] == 0.25  # 2 of 8 sign patterns
    assert result["metrics"]["clip_i"]["difference"] == 0 and result["metrics"]["clip_i"]["p_value"] == 1.0
    with pytest.raises(UnofluxError, match="item 'dog/00' has prompt 'p0' in run A but 'other'"):
        compare_scores(a, [replace(a[0], prompt="other")])
    with pytest.raises(UnofluxError, match="share no"):
        compare_scores(a, [replace(a[0], item_id="cat/00")])


@needs_dreambench
def test_every_shared_dreambench_photo_opens_with_the_reference_loader():
    photos = sorted(DREAMBENCH.glob("*/*.jpg"))
    assert len(photos) >= 24 * 4
    for path in photos:
        image = load_image(path)
        assert image.mode == "RGB" and max(image.size) <= 512 and min(image.size) > 100


# ------------------------------------------------------------------------------------------------ end to end
def _unoflux(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "unoflux", *argv], capture_output=True, text=True, cwd=cwd, timeout=600,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "2"},
    )  # fmt: skip


@pytest.fixture(scope="module")
def dreambench_runs(tmp_path_factory, tiny_backbones):
    """`unoflux evaluate dreambench` on the embedded model (2 subjects x 1 prompt x 2 images, 8 steps), then the same
    images re-scored through --generated as run B, then `unoflux evaluate compare`."""
    if not (DREAMBENCH / "prompts_and_classes.txt").is_file():
        pytest.skip(f"no DreamBench folder at {DREAMBENCH}")
    root = tmp_path_factory.mktemp("dreambench_runs")
    scoring = ["--metric-dino", str(tiny_backbones["dino"]), "--metric-clip", str(tiny_backbones["clip"])]
    common = ["--data", str(DREAMBENCH), "--subjects", "dog,can", "--prompts", "3", "--images-per-prompt", "2"]
    a = _unoflux("evaluate", "dreambench", "--out", "a", *common, *scoring, "--steps", "8", cwd=root)
    assert a.returncode == 0, a.stderr[-3000:]
    b = _unoflux("evaluate", "dreambench", "--out", "b", *common, *scoring, "--generated", "a/images", cwd=root)
    assert b.returncode == 0, b.stderr[-3000:]
    c = _unoflux("evaluate", "compare", "a", "b", "--out", "ab", "--names", "ours,rescored", cwd=root)
    assert c.returncode == 0, c.stderr[-3000:]
    return root, a.stdout, c.stdout


def test_dreambench_command_end_to_end(dreambench_runs):
    root, printed, compared = dreambench_runs
    assert "4 images generated (0 already there)" in printed and "paper 0.760" in printed
    summary = json.loads((root / "a" / "summary.json").read_text())
    assert summary["scores"]["scored"] == 4 and summary["settings"]["steps"] == 8
    assert summary["model"]["model"] == "embedded" and summary["code"]["unoflux"]
    assert [
        json.loads((root / "a" / "images" / f"{i}_{j}.json").read_text())["seed"] for i in (0, 1) for j in (0, 1)
    ] == [3407, 3408, 3407, 3408]  # UNO's seeds: 3407 + image index
    batch = json.loads((root / "a" / "batch.json").read_text())
    assert batch[0]["prompt"] == "a dog on a cobblestone street"  # subjects in the order given
    assert not Path(batch[0]["image_paths"][0]).is_absolute()
    assert (root / "a" / batch[0]["image_paths"][0]).resolve() == DREAMBENCH.resolve() / "dog" / "02.jpg"
    again = _unoflux("evaluate", "dreambench", "--out", "a", "--data", str(DREAMBENCH), "--subjects", "dog,can",
                     "--prompts", "3", "--images-per-prompt", "2", "--generate-only", cwd=root)  # fmt: skip
    assert again.returncode == 0 and "0 images generated (4 already there)" in again.stdout  # resumes
    other = _unoflux("evaluate", "dreambench", "--out", "a", "--data", str(DREAMBENCH), "--subjects", "dog",
                     "--generate-only", cwd=root)  # fmt: skip
    assert other.returncode == 2 and "holds a run of another benchmark selection" in other.stderr
    assert "Traceback" not in other.stderr
    # the same images re-scored agree exactly: difference 0, p = 1
    comparison = json.loads((root / "ab" / "compare.json").read_text())
    assert comparison["pairs"] == 4 and comparison["metrics"]["dino"]["difference"] == 0
    assert comparison["metrics"]["dino"]["p_value"] == 1.0 and "A = ours, B = rescored" in compared


@pytest.mark.parametrize("page", ["a/report.html", "ab/compare.html"])
def test_reports_render_in_chromium_with_every_image(dreambench_runs, page):
    from dreambench_helpers import CHROMIUM, CHROMIUM_FLAGS

    if not CHROMIUM.is_file():
        pytest.skip(f"no browser: {CHROMIUM} is missing; run scripts/install_browser.sh as root")
    sync_api = pytest.importorskip("playwright.sync_api", reason="no playwright: pip install -e '.[test]'")
    root = dreambench_runs[0]
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        tab = browser.new_page(viewport={"width": 1280, "height": 900})
        tab.goto((root / page).as_uri())
        tab.evaluate("document.querySelectorAll('img').forEach(img => img.loading = 'eager')")
        tab.wait_for_function("[...document.images].every(img => img.complete)", timeout=30_000)
        broken = tab.evaluate("[...document.images].filter(img => !img.naturalWidth).map(img => img.src)")
        count = tab.evaluate("document.images.length")
        text = tab.inner_text("body")
        browser.close()
    assert not broken and count >= 4
    if page.endswith("report.html"):
        assert count == 2 + 4 + 2 * 2  # two references + every generation + best and worst 2 each
        assert "UNO (paper)" in text and "0.760" in text and "can/01.jpg" in text
    else:
        assert "A - B (95% CI)" in text and "ours" in text


@needs_dreambench
def test_masks_give_masked_dino(tmp_path, tiny_backbones):
    from PIL import Image

    root = _dataset(tmp_path / "data", {"can": 2})
    bench = single_subject_benchmark(root, prompts="0")
    images, masks = tmp_path / "run" / "images", tmp_path / "masks"
    images.mkdir(parents=True)
    random_image(64, 64, seed=5).save(images / "0_0.png")
    (masks / "can").mkdir(parents=True)
    Image.new("L", (32, 32), 255).save(masks / "can" / "00.png")  # all subject: masked DINO = plain DINO
    scorer = Scorer(dino=tiny_backbones["dino"], device="cpu", progress=False)
    (score,), _ = score_benchmark(bench, images, 1, scorer, tmp_path / "run", masks_dir=masks)
    assert score.error is None and score.dino is not None and score.clip_i is None
    assert score.dino_masked == pytest.approx(score.dino, abs=1e-6)
    Image.new("L", (32, 32), 0).save(masks / "can" / "00.png")  # all background: another number
    (masked,), _ = score_benchmark(bench, images, 1, scorer, tmp_path / "run", masks_dir=masks)
    assert masked.error is None, masked.error
    assert masked.dino == pytest.approx(score.dino) and abs(masked.dino_masked - score.dino) > 1e-4


@needs_dreambench
def test_sharded_run_scores_once_every_share_is_written(tmp_path, tiny_backbones):
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "-m", "unoflux", "evaluate", "dreambench", "--out", "run",
         "--data", str(DREAMBENCH), "--subjects", "dog", "--prompts", "0-1", "--images-per-prompt", "2",
         "--steps", "2", "--metric-dino", str(tiny_backbones["dino"]), "--device", "cpu"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(line.split()[0] for line in result.stdout.splitlines() if "generated" in line) == ["2", "2"]
    assert result.stdout.count("images scored") == 1  # the main process scores, after both shares
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["scores"]["scored"] == 4 and not summary["scores"]["failed"]
