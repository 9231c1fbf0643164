"""Tiny metric backbones for the DreamBench tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_backbones(tmp_path_factory):
    """Tiny random DINO and CLIP folders in the real models' layouts."""
    from unoflux.metrics.tiny import save_tiny_clip, save_tiny_dino

    root = tmp_path_factory.mktemp("metric_backbones")
    return {"dino": save_tiny_dino(root / "dino-vits16"), "clip": save_tiny_clip(root / "clip-vit-base-patch32")}
