"""unoflux synth on the embedded world: prompts, split, the similarity filters (the exact checker's and DINOv2's)
judged on rendered pairs whose truth we know, the report, crash-safe manifests and the config's checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from unoflux.cli import main
from unoflux.errors import UnofluxError
from unoflux.metrics.tiny import save_tiny_dino
from unoflux.synth import Manifest, SynthConfig, prompt_record, read_manifest, record_config, run_synth
from unoflux.synth.filter import top_k_records
from unoflux.synth.generate import IMAGES
from unoflux.train.data import read_paired_samples
from unoflux.world.render import render_scene, render_two_panel
from unoflux.world.specs import SceneSpec, SubjectSpec, TwoPanelSpec
from unoflux.world.subjects import same_look_distractors


@pytest.fixture(scope="module")
def dinov2(tmp_path_factory):
    """A tiny random DINOv2 in facebook/dinov2-base's layout (Dinov2Model, its image processor)."""
    return save_tiny_dino(tmp_path_factory.mktemp("dino") / "dinov2-base", "dinov2")


# ------------------------------------------------------------------------------------------------- manifests
def test_manifest_drops_a_torn_last_line_and_appends_after_it(tmp_path):
    path = tmp_path / "m.jsonl"
    manifest = Manifest(path)
    manifest.append({"key": "a", "v": 1})
    manifest.append({"key": "b", "v": 2})
    with open(path, "ab") as f:
        f.write(b'{"key": "c", "v"')  # what a kill in the middle of a write leaves
    resumed = Manifest(path)
    assert [r["key"] for r in resumed.records] == ["a", "b"] and "c" not in resumed
    resumed.append({"key": "c", "v": 3})
    assert [r["v"] for r in read_manifest(path)] == [1, 2, 3]
    with pytest.raises(UnofluxError, match="already in"):
        resumed.append({"key": "a", "v": 4})


def test_a_bad_line_inside_a_manifest_is_corruption_not_a_crash(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"key": "a"}\nnot json\n{"key": "b"}\n')
    with pytest.raises(UnofluxError, match="line 2 is not a JSON record"):
        read_manifest(path)


# ------------------------------------------------------------------------------------------------- prompts
def test_world_prompts_are_two_panel_captions_of_their_spec_with_seeds(tmp_path):
    config = SynthConfig(output_dir=str(tmp_path), count=8, seed=3)
    records = [prompt_record(config, i) for i in range(8)]
    assert records == [prompt_record(config, i) for i in range(8)]  # a resumed run redraws the same prompt
    assert records != [prompt_record(config.replace(seed=4), i) for i in range(8)]
    assert len({r["seed"] for r in records}) == 8
    for record in records:
        spec = TwoPanelSpec.from_dict(record["spec"])
        assert not spec.identity.is_heldout  # synthesized data must never hold evaluation identities
        assert spec.identity.colour in record["prompt"] and record["subject"] in record["prompt"]
        assert spec.left.background != spec.right.background


def test_user_vocabularies_expand_through_templates(tmp_path, dinov2):
    config = SynthConfig(
        output_dir=str(tmp_path),
        count=6,
        subjects=["a red mug", "a toy robot"],
        scenes=["on a desk", "in a garden", "on the moon"],
        templates=["the same {subject} twice: {left} | {right}"],
        locator="panel",
        similarity="dinov2",
        dino=str(dinov2),
    )
    for i in range(6):
        record = prompt_record(config, i)
        left, right = record["scenes"]
        assert left != right and record["spec"] is None
        assert record["prompt"] == f"the same {record['subject']} twice: {left} | {right}"


@pytest.mark.parametrize(
    "values, message",
    [
        ({"count": 0}, "count 0 must be an integer of at least 1"),
        ({"size": 72}, "size 72 must be a multiple of 16"),
        ({"subjects": ["a mug"]}, "give both subjects and scenes"),
        ({"subjects": ["a mug"], "scenes": ["a desk"], "locator": "panel"}, "scenes .* at least 2"),
        ({"subjects": ["a"], "scenes": ["b", "c"]}, "locator world needs the world's vocabulary"),
        ({"templates": ["{subject}"]}, "templates apply to your own subjects"),
        ({"locator": "owl"}, "locator 'owl' is not one of: world, panel, detector, masks"),
        ({"similarity": "dinov2"}, "dino None must be a DINOv2 folder"),
        ({"stride": 2}, "unknown setting 'stride'"),
    ],
)
def test_bad_settings_are_one_sentence(tmp_path, values, message):
    with pytest.raises(UnofluxError, match=message):
        SynthConfig.from_dict({"output_dir": str(tmp_path), **values})


def test_the_shipped_synth_config_is_valid():
    config = SynthConfig.from_yaml(Path(__file__).resolve().parents[2] / "configs" / "synth_world.yaml")
    assert config.world and (config.locator, config.similarity, config.size) == ("world", "world", 128)


def test_an_output_folder_refuses_other_settings(tmp_path):
    config = SynthConfig(output_dir=str(tmp_path / "out"), count=3)
    run_synth(config, ["prompts"])
    assert yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())["count"] == 3
    run_synth(config, ["prompts"])  # the same settings resume
    with pytest.raises(UnofluxError, match="written with count = 3, not 4"):
        run_synth(config.replace(count=4), ["prompts"])


# ------------------------------------------------------------------------------- split + filters on known truth
def _rendered_generation(
    config: SynthConfig, wrong: set[int], same_panels: set[int] = frozenset(), both_alike: set[int] = frozenset()
) -> None:
    """Stand in for the generate stage with rendered two-panels (exact), so the filters' truth is known: records in
    ``wrong`` show a same-look look-alike in the right panel, those in ``both_alike`` one look-alike in both panels
    (the look prompted, the details not: all a caption can ask for), those in ``same_panels`` the left scene twice."""
    run_synth(config, ["prompts"])
    out = Path(config.output_dir)
    manifest = Manifest(out / IMAGES)
    for record in read_manifest(out / "prompts.jsonl"):
        spec = TwoPanelSpec.from_dict(record["spec"])
        left, right = spec.left, spec.right
        other = same_look_distractors(spec.identity, 1)[0]
        if record["index"] in wrong | both_alike:
            right = _with_identity(right, other)
        if record["index"] in both_alike:
            left = _with_identity(left, other)
        elif record["index"] in same_panels:  # as if the prompt had asked for the left scene twice
            right = left
            record = {**record, "spec": TwoPanelSpec(left, left).to_dict()}
        image = Image.new("RGB", (2 * config.size, config.size))
        for panel, scene in enumerate((left, right)):
            image.paste(render_scene(scene, config.size).image, (panel * config.size, 0))
        path = f"images/{record['key']}.png"
        (out / "images").mkdir(exist_ok=True)
        image.save(out / path)
        manifest.append({**record, "image": path, "width": image.width, "height": image.height})


def _with_identity(scene: SceneSpec, identity) -> SceneSpec:
    subject = scene.subjects[0]
    return SceneSpec(scene.background, (SubjectSpec(identity, subject.placement, subject.size),), scene.seed)


def test_world_filter_keeps_consistent_pairs_and_rejects_look_alikes(tmp_path):
    config = SynthConfig(output_dir=str(tmp_path / "out"), count=4, size=128, batch_size=2)
    _rendered_generation(config, wrong={1}, both_alike={3})
    run_synth(config, ["split", "filter-similarity", "filter-vlm", "report"])

    pairs = read_manifest(tmp_path / "out" / "pairs.jsonl")
    for pair in pairs:  # the world locator's crop holds the reference subject (rendered, so its mask is exact)
        spec = TwoPanelSpec.from_dict(pair["spec"])
        mask = render_two_panel(spec, 128).subjects[0].mask[:, :128]
        x0, y0, x1, y1 = pair["reference_box"]
        assert mask[y0:y1, x0:x1].sum() >= 0.98 * mask.sum()
        with Image.open(tmp_path / "out" / pair["reference"]) as crop:
            assert crop.size == (x1 - x0, y1 - y0)
        with Image.open(tmp_path / "out" / pair["target"]) as target:
            assert target.size == (128, 128)

    filtered = {r["index"]: r for r in read_manifest(tmp_path / "out" / "filtered.jsonl")}
    for index in (0, 2):
        assert filtered[index]["truth"]["consistent"] and filtered[index]["truth"]["identity_ok"]
        assert filtered[index]["kept"]
    # the same look-alike twice: one subject in both panels, a usable pair, though not the prompt's own identity
    assert filtered[3]["truth"]["consistent"] and not filtered[3]["truth"]["identity_ok"] and filtered[3]["kept"]
    truth = filtered[1]["truth"]  # same look, another identity on the right: only the identity tells them apart
    assert truth["same_look"] and truth["look_ok"] and not truth["same_identity"] and not truth["consistent"]
    assert filtered[1]["score"] < 0 < min(filtered[i]["score"] for i in (0, 2, 3)) and not filtered[1]["kept"]

    # the world's VLM (the checker's truth on the 0-4 scale) sees only the similarity filter's survivors
    vlm = {r["index"]: r for r in read_manifest(tmp_path / "out" / "vlm.jsonl")}
    assert sorted(vlm) == [0, 2, 3] and all(
        r["vlm_score"] == 4 and r["kept"] and r["error"] is None for r in vlm.values()
    )

    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["counts"] == {
        **{"prompts": 4, "generated": 4, "pairs": 4, "scored": 4, "kept": 3, "vlm_scored": 3, "vlm_kept": 3}
    }
    assert report["unfiltered_precision"] == 0.75
    at_threshold = next(row for row in report["thresholds"] if row["threshold"] == 0.0)  # the world's default
    assert at_threshold["precision"] == 1.0 and at_threshold["recall"] == 1.0
    text = (tmp_path / "out" / "report.md").read_text()
    assert "| 0.0 | 3 | 75.0 % | 100.0 % | 100.0 % |" in text
    assert "| 4 | 3 | 75.0 % | 100.0 % | 100.0 % |" in text  # both filters at VLM score >= 4
    histograms = report["histograms"]
    assert sum(histograms["similarity"]["kept"]) == 3 and sum(histograms["similarity"]["rejected"]) == 1
    assert histograms["similarity"]["inconsistent"] == histograms["similarity"]["rejected"]  # the look-alike pair
    assert histograms["vlm"] == {
        **{"bins": ["0", "1", "2", "3", "4", "error"], "kept": [0, 0, 0, 0, 3, 0], "rejected": [0] * 6},
        **{"consistent": [0, 0, 0, 0, 3, 0], "inconsistent": [0] * 6},
    }
    for plot in ("hist_similarity.png", "hist_vlm.png", "yield_precision.png"):
        assert f"]({plot})" in text
        with Image.open(tmp_path / "out" / plot) as image:
            assert image.width >= 640 and len(image.getcolors(1 << 16)) > 4  # drawn, not blank

    # the kept pairs are training data as it stands: UNO's training JSON, read by the trainer with references
    samples = read_paired_samples([str(tmp_path / "out" / "train_pairs.json")], lambda n: 64)
    assert [s.caption for s in samples] == [filtered[i]["caption"] for i in (0, 2, 3)]
    assert samples[0].references == (tmp_path / "out" / filtered[0]["reference"],)
    assert samples[0].image == tmp_path / "out" / filtered[0]["target"]
    for sheet in ("kept.png", "rejected.png"):
        with Image.open(tmp_path / "out" / sheet) as image:
            assert image.width == 4 * 2 * 128  # four two-panel images a row


def test_dinov2_filter_scores_crops_with_a_tiny_random_dinov2(tmp_path, dinov2):
    config = SynthConfig(
        output_dir=str(tmp_path / "out"), count=3, size=64, batch_size=2, similarity="dinov2", dino=str(dinov2)
    )
    _rendered_generation(config, wrong=set(), same_panels={0})
    run_synth(config, ["split", "filter-similarity"])
    filtered = read_manifest(tmp_path / "out" / "filtered.jsonl")
    scores = [r["score"] for r in filtered]
    assert scores[0] == pytest.approx(1.0, abs=1e-5)  # the same scene twice: identical crops
    assert all(-1 <= s <= 1 for s in scores) and len(set(scores)) == 3
    assert all(r["kept"] == (r["score"] >= 0.5) for r in filtered)
    assert all(r["truth"] is not None for r in filtered)  # the world's truth comes along for the report

    # a run stopped after the first record (its batch half written, a torn line after it) resumes to the same bytes
    path = tmp_path / "out" / "filtered.jsonl"
    whole = path.read_bytes()
    path.write_bytes(whole[: whole.index(b"\n") + 1] + b'{"key": "00')
    run_synth(config, ["filter-similarity"])
    assert path.read_bytes() == whole


# ------------------------------------------------------------------------------------------------------ top-k
def test_top_k_ranks_located_pairs_by_score_ties_by_key():
    records = [
        {"key": "000000", "score": 0.5},
        {"key": "000001", "score": 0.9, "reference_located": True, "target_located": False},  # a panel missed
        {"key": "000002", "score": 0.7},
        {"key": "000003", "score": 0.5},  # ties 000000: the smaller key ranks first
        {"key": "000004", "score": 0.2, "reference_located": True, "target_located": True},
    ]
    ranked = top_k_records(records, 2)
    assert [r["key"] for r in ranked] == [r["key"] for r in records]  # the pairs' order, not the ranking's
    assert [r["rank"] for r in ranked] == [2, None, 1, 3, 4]
    assert [r["kept"] for r in ranked] == [True, False, True, False, False]
    assert [r["kept"] for r in top_k_records(records, 10)] == [True, False, True, True, True]  # all located ones
    assert top_k_records(list(reversed(records)), 2) == list(reversed(ranked))  # the order never decides
    assert top_k_records(ranked, 2) == ranked  # ranking a ranked list again changes nothing


def test_top_k_keeps_the_k_best_pairs_for_every_later_stage_and_resumes_to_the_same_bytes(tmp_path, dinov2):
    config = SynthConfig(
        output_dir=str(tmp_path / "out"),
        count=5,
        size=64,
        batch_size=2,
        similarity="dinov2",
        dino=str(dinov2),
        top_k=2,
        threshold=2.0,  # no cosine reaches it: top_k alone decides
    )
    _rendered_generation(config, wrong={1}, same_panels={3})
    run_synth(config, ["split", "filter-similarity", "filter-vlm", "report"], progress=False)
    out = tmp_path / "out"
    filtered = read_manifest(out / "filtered.jsonl")
    scores = [r["score"] for r in read_manifest(out / "similarity.jsonl")]
    assert [r["score"] for r in filtered] == scores and len(set(scores)) == 5
    best = sorted(filtered, key=lambda r: -r["score"])
    assert [r["key"] for r in best] == [r["key"] for r in sorted(filtered, key=lambda r: r["rank"])]
    assert {r["key"] for r in filtered if r["kept"]} == {r["key"] for r in best[:2]}
    assert best[0]["index"] == 3  # the same scene twice: identical crops, cosine 1
    kept = [r["key"] for r in filtered if r["kept"]]
    assert [r["key"] for r in read_manifest(out / "vlm.jsonl")] == kept  # the world's VLM sees the top 2 only
    report = json.loads((out / "report.json").read_text())
    assert (report["counts"]["kept"], report["counts"]["vlm_scored"], report["top_k"]) == (2, 2, 2)
    assert "similarity `dinov2` kept: the 2 best-scoring located pairs (top_k)" in (out / "report.md").read_text()
    vlm_kept = [r["key"] for r in read_manifest(out / "vlm.jsonl") if r["kept"]]
    samples = read_paired_samples([str(out / "train_pairs.json")], lambda n: 64)
    assert [s.image for s in samples] == [out / f"pairs/{key}_target.png" for key in vlm_kept]
    assert (out / "kept.png").is_file()

    # killed while scoring (a torn line after the first score, no filtered.jsonl yet), or between the last score and
    # the ranking's write: the re-run writes the same bytes
    whole, scored = (out / "filtered.jsonl").read_bytes(), (out / "similarity.jsonl").read_bytes()
    (out / "filtered.jsonl").unlink()
    (out / "similarity.jsonl").write_bytes(scored[: scored.index(b"\n") + 1] + b'{"key": "00')
    run_synth(config, ["filter-similarity"], progress=False)
    assert (out / "filtered.jsonl").read_bytes() == whole and (out / "similarity.jsonl").read_bytes() == scored
    (out / "filtered.jsonl").unlink()
    (out / ".filtered.jsonl.abc.part").write_text("half")  # what a kill inside the atomic write leaves
    run_synth(config, ["filter-similarity"], progress=False)
    assert (out / "filtered.jsonl").read_bytes() == whole and not list(out.glob(".*.part"))


@pytest.mark.parametrize("top_k", [0, -3, 2.5, True, "3"])
def test_a_bad_top_k_is_one_sentence(tmp_path, top_k):
    with pytest.raises(UnofluxError, match=f"top_k {top_k!r} must be a positive integer"):
        SynthConfig(output_dir=str(tmp_path), top_k=top_k)


def test_top_k_may_not_change_in_an_output_folder(tmp_path):
    config = SynthConfig(output_dir=str(tmp_path), count=3)
    record_config(config)
    with pytest.raises(UnofluxError, match="written with top_k = None, not 5; use a new output_dir"):
        record_config(config.replace(top_k=5))
    values = yaml.safe_load((tmp_path / "config.yaml").read_text())
    del values["top_k"]  # a folder made before top_k existed ran with its default
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(values))
    record_config(config)
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["top_k"] is None


# ------------------------------------------------------------------------------------------------- end to end
def test_cli_runs_every_stage_on_the_embedded_base(tmp_path, capsys):
    cfg = tmp_path / "synth.yaml"
    cfg.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "out"), "count": 2, "size": 64, "steps": 2}))
    assert main(["synth", str(cfg), "--quiet"]) == 0
    out = tmp_path / "out"
    assert capsys.readouterr().out.count("wrote") == 6  # filter-vlm included: the world's checker
    generated = read_manifest(out / "generated.jsonl")
    assert [r["key"] for r in generated] == ["000000", "000001"]
    with Image.open(out / generated[0]["image"]) as image:
        assert image.size == (128, 64)
        pixels = np.asarray(image)
    with Image.open(out / generated[1]["image"]) as image:
        assert not np.array_equal(pixels, np.asarray(image))  # each prompt its own noise and text
    assert "## Against the exact checker (world)" in (out / "report.md").read_text()
    assert yaml.safe_load((out / "config.yaml").read_text())["steps"] == 2


def test_synth_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["synth", "-h"])
    assert exit_info.value.code == 0 and "--stage" in capsys.readouterr().out


def test_user_vocabulary_end_to_end_with_the_panel_locator_and_dinov2(tmp_path, dinov2):
    config = SynthConfig(
        output_dir=str(tmp_path / "out"),
        count=2,
        size=64,
        steps=2,
        subjects=["a red mug", "a toy robot"],
        scenes=["on a desk", "in a garden"],
        locator="panel",
        similarity="dinov2",
        dino=str(dinov2),
    )
    run_synth(config, progress=False)
    out = tmp_path / "out"
    for pair in read_manifest(out / "pairs.jsonl"):
        assert pair["reference_box"] == pair["target_box"] == [0, 0, 64, 64]  # the whole panel
        with Image.open(out / pair["reference"]) as reference:
            assert reference.size == (64, 64)
    filtered = read_manifest(out / "filtered.jsonl")
    assert all(r["truth"] is None and -1 <= r["score"] <= 1 for r in filtered)  # no world: no checker's truth
    report = (out / "report.md").read_text()
    assert "| kept |" in report and "exact checker" not in report
