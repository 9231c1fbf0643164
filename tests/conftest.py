"""Shared fixtures: tiny random FLUX components, written once per session in the official layouts."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for a hub


def pytest_collection_modifyitems(config, items):
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


def random_image(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """Smooth random colours (a few blobs), so VAE latents of different images really differ."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    channels = [np.sin(x * rng.uniform(2, 9) + rng.uniform(0, 6)) * np.cos(y * rng.uniform(2, 9)) for _ in range(3)]
    pixels = ((np.stack(channels, -1) + 1) * 127.5).astype(np.uint8)
    return Image.fromarray(pixels, "RGB").convert(mode)


@pytest.fixture(scope="session")
def tiny_pipe():
    from unoflux.testing import tiny_pipeline

    return tiny_pipeline(seed=0)


@pytest.fixture(scope="session")
def official_layout(tmp_path_factory):
    """Tiny weights as a UNO user has them: BFL flux/ae files, T5 and CLIP folders, XLabs LoRA."""
    from unoflux.testing import random_uno_lora, save_official_layout, tiny_components

    components = tiny_components(seed=0)
    root = tmp_path_factory.mktemp("official")
    paths = save_official_layout(components, root, lora=random_uno_lora(components["transformer"], rank=4))
    return paths, components


@pytest.fixture(scope="session")
def diffusers_folder(tmp_path_factory):
    from unoflux.testing import tiny_pipeline

    root = tmp_path_factory.mktemp("diffusers") / "tiny-flux"
    tiny_pipeline(seed=0).save_pretrained(root)
    return root


@pytest.fixture
def ref_images():
    return [random_image(64, 48, seed=1), random_image(40, 72, seed=2), random_image(56, 56, seed=3)]
