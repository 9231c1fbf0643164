"""Fixtures for the training tests: a tiny FLUX folder (repo conftest's ``diffusers_folder``) and a tiny world."""

from __future__ import annotations

from pathlib import Path

import pytest


def _build(tmp_path_factory, kind: str, count: int) -> Path:
    from unoflux.world.build import BuildConfig, build_dataset

    out = tmp_path_factory.mktemp("world") / kind
    build_dataset(out, BuildConfig(kind=kind, count=count, size=32), progress=False)
    return out


@pytest.fixture(scope="session")
def world_data(tmp_path_factory) -> Path:
    """16 world scenes at 32 px with captions (manifest.jsonl + PNGs)."""
    return _build(tmp_path_factory, "scenes", 16)


@pytest.fixture(scope="session")
def wide_data(tmp_path_factory) -> Path:
    """4 two-panel world images, 64x32 (width x height): they fall in a wide bucket."""
    return _build(tmp_path_factory, "two-panel", 4)


@pytest.fixture(scope="session")
def pairs_data(tmp_path_factory) -> Path:
    """8 world pairs at 32 px: a scene and one reference shot of its subject (Stage I data)."""
    return _build(tmp_path_factory, "pairs", 8)


@pytest.fixture(scope="session")
def multi_pairs_data(tmp_path_factory) -> Path:
    """8 world multi-pairs at 32 px: a scene of 2-3 subjects and a reference shot of each (Stage II data)."""
    return _build(tmp_path_factory, "multi-pairs", 8)


@pytest.fixture
def tiny_config(diffusers_folder, world_data, tmp_path):
    """A factory of tiny, fast configs (32 px, 32 T5 tokens, LoRA rank 4) writing under tmp_path."""
    from unoflux.train import TrainConfig

    def make(**changes) -> TrainConfig:
        values = dict(
            data=[str(world_data)],
            output_dir=str(tmp_path / "run"),
            model=str(diffusers_folder),
            max_steps=4,
            batch_size=2,
            resolution=32,
            max_sequence_length=32,
            learning_rate=1e-3,
            checkpoint_every=0,
            mode="lora",
            lora={"rank": 4},
        )
        values.update(changes)
        return TrainConfig.from_dict(values)

    return make


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on this shared 2-core machine a second OpenMP thread spins against other jobs
    (steps slow down 10-40x), and the resume test compares runs that must use the same thread count."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def dreamo_data(tmp_path_factory) -> Path:
    """A UNO training JSON of 6 records (a 32 px target, two 16 px references) whose prompts name the references
    with DreamO's placeholders."""
    import json

    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("dreamo-data")
    rng = np.random.default_rng(0)
    records = []
    for i in range(6):
        names = [f"{i}-target.png", f"{i}-ref1.png", f"{i}-ref2.png"]
        for name, side in zip(names, (32, 16, 16)):
            Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(root / name)
        records.append(
            {
                "prompt": f"[ref#1] on the left and [ref#2] on the right, scene {i}",
                "image_paths": names[1:],
                "image_tgt_path": names[0],
            }
        )
    path = root / "pairs.json"
    path.write_text(json.dumps(records))
    return path
