"""Low-memory switches that change where weights live or how the VAE runs: group offload gives the same image;
VAE tiling splits only images larger than the VAE's tile and leaves smaller ones exactly as they were."""

from __future__ import annotations

import pytest
import torch

from unoflux import UnofluxError
from unoflux.checkpoints import ModelPaths, load_pipeline
from unoflux.checkpoints.loading import move_to_device
from unoflux.testing import tiny_pipeline

from .conftest import random_image

ARGS = dict(steps=2, seed=3, reference_long_side=32)


def test_group_offload_gives_the_same_image():
    """On a GPU the layers move there as they run; here onto the CPU they are on, so what is checked is that
    diffusers' group-offload hooks on every model leave the maths as it was."""
    plain, offloaded = tiny_pipeline(seed=0), tiny_pipeline(seed=0)
    move_to_device(offloaded, "group", "cpu")
    assert any(hasattr(m, "_diffusers_hook") for m in offloaded.transformer.modules())  # the hooks are on
    refs = [random_image(32, 32, seed=1)]
    want = plain("a red cup", refs, width=32, height=32, output_type="latent", **ARGS).images
    got = offloaded("a red cup", refs, width=32, height=32, output_type="latent", **ARGS).images
    assert torch.equal(got, want)


def test_offload_needs_a_gpu(official_layout):
    paths, _ = official_layout
    with pytest.raises(UnofluxError, match="offload 'group' moves models onto a GPU; it needs --device cuda"):
        load_pipeline(ModelPaths(**vars(paths)), device="cpu", offload="group", use_environment=False)


def _decoder_calls(pipe, prompt, refs, size):
    calls = []
    handle = pipe.vae.decoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        image = pipe(prompt, refs, width=size, height=size, **ARGS).images[0]
    finally:
        handle.remove()
    return image, len(calls)


def test_a_bfl_vae_tiles_at_fluxs_1024_px(official_layout):
    paths, _ = official_layout  # (a BFL ae.safetensors has no config; diffusers' default tile would be 32 px)
    pipe = load_pipeline(ModelPaths(**vars(paths)), use_environment=False, vae_tiling=True)
    assert pipe.vae.use_tiling and pipe.vae.tile_sample_min_size == 1024


def test_vae_tiling_splits_only_images_larger_than_a_tile(diffusers_folder):
    plain = load_pipeline(ModelPaths(model=str(diffusers_folder)), use_environment=False)
    tiled = load_pipeline(ModelPaths(model=str(diffusers_folder)), use_environment=False, vae_tiling=True)
    for pipe in (plain, tiled):
        pipe.set_progress_bar_config(disable=True)
    tile = tiled.vae.tile_sample_min_size  # the folder's config: 32 px here (1024 px for FLUX's)
    refs = [random_image(32, 32, seed=1)]
    small_plain, calls = _decoder_calls(plain, "a red cup", refs, tile)
    small_tiled, tiled_calls = _decoder_calls(tiled, "a red cup", refs, tile)
    assert calls == tiled_calls == 1 and small_tiled.tobytes() == small_plain.tobytes()
    large_plain, calls = _decoder_calls(plain, "a red cup", refs, 2 * tile)
    large_tiled, tiled_calls = _decoder_calls(tiled, "a red cup", refs, 2 * tile)
    assert calls == 1 and tiled_calls > 1  # decoded tile by tile, the overlaps blended
    assert large_tiled.size == large_plain.size == (2 * tile, 2 * tile)
