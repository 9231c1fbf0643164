"""UnoPE ids, reference preprocessing, packing and noise, against hand-computed expectations."""

import math

import pytest
import torch
from diffusers import FluxPipeline
from PIL import Image

from unoflux.conditioning import (
    default_reference_long_side,
    grid_position_ids,
    output_size,
    pack_latents,
    preprocess_reference,
    reference_noise,
    reference_position_ids,
    sequence_position_ids,
    unpack_latents,
)


def ids_of(rows, cols, row_offset, col_offset):
    """Hand-written expectation: token (r, c) in row-major order gets (0, r + row_offset, c + col_offset)."""
    return torch.tensor([[0.0, r + row_offset, c + col_offset] for r in range(rows) for c in range(cols)])


def test_target_grid_ids_are_row_major_rows_then_cols():
    assert torch.equal(
        grid_position_ids(2, 3),
        torch.tensor([[0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 1, 0], [0, 1, 1], [0, 1, 2]], dtype=torch.float32),
    )


# Target grid 4x6 tokens; one reference 3x2.
@pytest.mark.parametrize(
    "mode, offsets",
    [("diagonal", (4, 6)), ("height", (4, 0)), ("width", (0, 6)), ("none", (0, 0))],
)
def test_one_reference_offsets_start_at_target_size(mode, offsets):
    (ids,) = reference_position_ids((4, 6), [(3, 2)], mode)
    assert torch.equal(ids, ids_of(3, 2, *offsets))


# Target 4x6; references 3x2, 2x5, 1x1: offsets accumulate over earlier references in every mode,
# and each mode applies only its own axes.
@pytest.mark.parametrize(
    "mode, expected_offsets",
    [
        ("diagonal", [(4, 6), (7, 8), (9, 13)]),
        ("height", [(4, 0), (7, 0), (9, 0)]),
        ("width", [(0, 6), (0, 8), (0, 13)]),
        ("none", [(0, 0), (0, 0), (0, 0)]),
    ],
)
def test_three_references_of_different_sizes(mode, expected_offsets):
    grids = [(3, 2), (2, 5), (1, 1)]
    ids = reference_position_ids((4, 6), grids, mode)
    for got, (rows, cols), (ro, co) in zip(ids, grids, expected_offsets):
        assert torch.equal(got, ids_of(rows, cols, ro, co))
    full = sequence_position_ids((4, 6), grids, mode)
    assert full.shape == (4 * 6 + 6 + 10 + 1, 3)
    assert torch.equal(full[:24], ids_of(4, 6, 0, 0))


def test_unknown_position_mode_is_refused():
    with pytest.raises(ValueError, match="not one of"):
        reference_position_ids((2, 2), [(1, 1)], "d")


@pytest.mark.parametrize(
    "size, long_side, expected",
    [
        ((1024, 768), 512, (512, 384)),  # landscape: 512 x int(384.0)
        ((768, 1024), 512, (384, 512)),  # portrait
        ((1000, 333), 512, (512, 160)),  # short side int(170.496)=170 -> cropped to 160
        ((300, 300), 320, (320, 320)),  # upscaled
        ((333, 1000), 320, (96, 320)),  # int(106.56)=106 -> 96
    ],
)
def test_reference_preprocessing_sizes(size, long_side, expected):
    out = preprocess_reference(Image.new("RGB", size, "red"), long_side)
    assert out.size == expected and out.mode == "RGB"


def test_preprocessing_center_crops():
    image = Image.new("RGB", (512, 170), "black")
    image.paste(Image.new("RGB", (512, 5), "white"), (0, 0))  # top 5 rows white: cropped away (170 -> 160)
    out = preprocess_reference(image, 512)
    assert out.size == (512, 160) and out.getpixel((10, 0)) == (0, 0, 0)


def test_preprocessing_refuses_references_that_shrink_below_a_token():
    with pytest.raises(ValueError, match="16 px"):
        preprocess_reference(Image.new("RGB", (2000, 40), "red"), 320)


def test_default_reference_long_side_follows_uno():
    assert default_reference_long_side(0) == default_reference_long_side(1) == 512
    assert default_reference_long_side(2) == default_reference_long_side(4) == 320


def test_output_size_floors_to_multiples_of_16():
    assert output_size(517, 500) == (512, 496)


def test_pack_matches_diffusers_and_unpack_inverts():
    latents = torch.randn(2, 16, 6, 10)
    packed = pack_latents(latents)
    assert packed.shape == (2, 15, 64)
    assert torch.equal(packed, FluxPipeline._pack_latents(latents, 2, 16, 6, 10))
    assert torch.equal(unpack_latents(packed, 6, 10), latents)


def test_noise_is_the_reference_draw():
    noise = reference_noise(42, 80, 48)
    expected = torch.randn(
        (1, 16, 2 * math.ceil(80 / 16), 2 * math.ceil(48 / 16)),
        dtype=torch.bfloat16,
        generator=torch.Generator("cpu").manual_seed(42),
    )
    assert noise.dtype == torch.bfloat16 and torch.equal(noise, expected)
    assert not torch.equal(reference_noise(43, 80, 48), noise)
