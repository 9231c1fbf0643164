import numpy as np
import pytest

from unoflux.world import (
    SceneSpec,
    SubjectSpec,
    TwoPanelSpec,
    make_identity,
    render_reference,
    render_scene,
    render_two_panel,
    single,
)
from unoflux.world.raster import box_of, rle_decode


@pytest.mark.parametrize("size", [64, 128, 256])
def test_scene_sizes_masks_and_boxes(size):
    spec = SceneSpec(
        "beach",
        (SubjectSpec(make_identity(1), "left", "small"), SubjectSpec(make_identity(2), "right", "large")),
        seed=5,
    )
    rendered = render_scene(spec, size)
    assert rendered.image.size == (size, size)
    left, right = rendered.subjects
    for s in rendered.subjects:
        assert s.mask.shape == (size, size) and s.mask.dtype == bool
        assert box_of(s.mask) == s.box
    assert not (left.mask & right.mask).any()
    assert (left.box[0] + left.box[2]) / 2 < size / 3 < 2 * size / 3 < (right.box[0] + right.box[2]) / 2
    assert right.mask.sum() > 2 * left.mask.sum()


def test_render_is_deterministic():
    spec = single(make_identity(9), "night", "center", "medium", seed=3)
    assert render_scene(spec, 96).image.tobytes() == render_scene(spec, 96).image.tobytes()


def test_reference_shot_is_centred_large_on_plain_background():
    rendered = render_reference(make_identity(4), 128)
    x0, y0, x1, y1 = rendered.subjects[0].box
    assert abs((x0 + x1) / 2 - 64) <= 2 and abs((y0 + y1) / 2 - 64) <= 2
    assert max(x1 - x0, y1 - y0) >= 0.65 * 128
    pixels = np.asarray(rendered.image)
    assert (pixels[~rendered.subjects[0].mask] > 200).all(axis=-1).mean() > 0.97


def test_two_panel_is_twice_as_wide_with_one_subject_per_panel():
    ident = make_identity(11)
    spec = TwoPanelSpec(single(ident, "snow", "left", "large", 1), single(ident, "desert", "right", "small", 2))
    rendered = render_two_panel(spec, 64)
    assert rendered.image.size == (128, 64)
    a, b = rendered.subjects
    assert (a.panel, b.panel) == (0, 1) and a.box[2] <= 64 <= b.box[0]
    assert rendered.backgrounds == ("snow", "desert")


def test_two_panel_requires_the_same_identity():
    with pytest.raises(ValueError, match="same identity"):
        TwoPanelSpec(
            single(make_identity(1), "snow", "left", "large", 1), single(make_identity(2), "snow", "left", "large", 1)
        )


def test_metadata_mask_rle_round_trips():
    rendered = render_scene(single(make_identity(3), "room", "center", "medium", 0), 64)
    meta = rendered.metadata()
    assert (rle_decode(meta["subjects"][0]["mask_rle"]) == rendered.subjects[0].mask).all()
