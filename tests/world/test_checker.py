from dataclasses import replace

import numpy as np
import pytest

from unoflux.world import (
    SceneSpec,
    SubjectSpec,
    check_scene,
    check_two_panel,
    make_identity,
    render_scene,
    render_two_panel,
    single,
)
from unoflux.world.checker import subject_fidelity
from unoflux.world.sampling import distinct_looks, sample_scene, sample_two_panel
from unoflux.world.vocab import BACKGROUNDS


def _random_specs(count: int, seed: int) -> list[SceneSpec]:
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, distinct_looks(rng, 1 + (i % 5 == 4) + (i % 10 == 9))) for i in range(count)]


def test_accuracy_on_rendered_scenes_at_128():
    specs = _random_specs(40, seed=77)
    verdicts = [check_scene(render_scene(s, 128).image, s, with_fidelity=False) for s in specs]
    assert np.mean([v.all_ok for v in verdicts]) >= 0.95
    assert all(v.background_ok and v.count_ok for v in verdicts)


def test_accuracy_on_rendered_scenes_at_64_is_reasonable():
    specs = _random_specs(20, seed=78)
    verdicts = [check_scene(render_scene(s, 64).image, s, with_fidelity=False) for s in specs]
    assert np.mean([v.background_ok for v in verdicts]) >= 0.95
    assert np.mean([sv.colour_ok and sv.placement_ok and sv.shape_ok for v in verdicts for sv in v.subjects]) >= 0.9


BASE = single(make_identity(5, "star", "red", "striped"), "grass", "left", "large", seed=1)


def _wrong(**changes) -> SceneSpec:
    subject = BASE.subjects[0]
    identity = make_identity(
        5, changes.pop("shape", "star"), changes.pop("colour", "red"), changes.pop("pattern", "striped")
    )
    subject = SubjectSpec(identity, changes.pop("placement", subject.placement), changes.pop("size", subject.size))
    return replace(BASE, subjects=(subject,), **changes)


@pytest.mark.parametrize(
    "wrong, failed",
    [
        (dict(background="night"), "background_ok"),
        (dict(colour="blue"), "colour_ok"),
        (dict(shape="heart"), "shape_ok"),
        (dict(pattern="dotted"), "pattern_ok"),
        (dict(placement="right"), "placement_ok"),
        (dict(size="small"), "size_ok"),
    ],
)
def test_wrong_images_are_caught(wrong, failed):
    assert check_scene(render_scene(BASE, 128).image, BASE).all_ok
    verdict = check_scene(render_scene(_wrong(**wrong), 128).image, BASE)
    assert not verdict.all_ok
    owner = verdict if failed == "background_ok" else verdict.subjects[0]
    assert getattr(owner, failed) is False


def test_missing_and_swapped_subjects_are_caught():
    a, b = make_identity(1, "circle", "blue", "plain"), make_identity(2, "square", "yellow", "dotted")
    spec = SceneSpec("desert", (SubjectSpec(a, "left", "medium"), SubjectSpec(b, "right", "medium")), 4)
    assert check_scene(render_scene(spec, 128).image, spec).all_ok
    swapped = SceneSpec("desert", (SubjectSpec(b, "left", "medium"), SubjectSpec(a, "right", "medium")), 4)
    verdict = check_scene(render_scene(swapped, 128).image, spec)
    assert not verdict.relation_ok and not verdict.all_ok
    alone = SceneSpec("desert", (SubjectSpec(a, "left", "medium"),), 4)
    verdict = check_scene(render_scene(alone, 128).image, spec)
    assert not verdict.count_ok and not verdict.subjects[1].found


def test_every_background_is_recognised():
    ident = make_identity(3, "heart", "pink", "plain")
    for i, kind in enumerate(BACKGROUNDS):
        spec = single(ident, kind, "center", "medium", seed=100 + i)
        assert check_scene(render_scene(spec, 96).image, spec, with_fidelity=False).background == kind


def test_two_panel_same_look_and_mismatch():
    spec = sample_two_panel(np.random.default_rng(5), make_identity(12, "diamond", "teal", "checkered"))
    good = check_two_panel(render_two_panel(spec, 128).image, spec)
    assert good.all_ok and good.same_look
    other = make_identity(12, "diamond", "orange", "checkered")
    right = SceneSpec(spec.right.background, (replace(spec.right.subjects[0], identity=other),), spec.right.seed)
    image = render_two_panel(spec, 128).image
    image.paste(render_scene(right, 128).image, (128, 0))  # right panel shows another look
    bad = check_two_panel(image, spec)
    assert not bad.same_look and not bad.all_ok
    assert bad.panel_similarity < good.panel_similarity


def test_fidelity_prefers_the_true_identity_over_same_look_impostors():
    wins = trials = 0
    for seed in range(12):
        truth = make_identity(500 + seed)
        spec = single(truth, BACKGROUNDS[seed % len(BACKGROUNDS)], "center", "large", seed)
        rendered = render_scene(spec, 128)
        pixels, mask = np.asarray(rendered.image), rendered.subjects[0].mask
        own = subject_fidelity(pixels, mask, truth)
        for k in range(4):
            impostor = make_identity(9000 + 10 * seed + k, *truth.look)
            trials += 1
            wins += own > subject_fidelity(pixels, mask, impostor)
    assert wins / trials >= 0.9


def test_verdicts_read_back_from_their_records_are_the_same():
    """Summaries can be computed again from stored reports (scripts/fast_quality.py resumes that way)."""
    import json

    from unoflux.world.checker import SceneVerdict, TwoPanelVerdict

    rng = np.random.default_rng(3)
    spec = sample_scene(
        rng, [make_identity(3, "diamond", "teal", "checkered"), make_identity(4, "circle", "red", "plain")]
    )
    verdict = check_scene(render_scene(spec, 64).image, spec)
    assert SceneVerdict.from_dict(json.loads(json.dumps(verdict.to_dict()))) == verdict
    two = sample_two_panel(rng, make_identity(12, "diamond", "teal", "checkered"))
    panels = check_two_panel(render_two_panel(two, 64).image, two)
    assert TwoPanelVerdict.from_dict(json.loads(json.dumps(panels.to_dict()))) == panels
