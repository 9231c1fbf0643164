"""The encoding cache (``cache_encodings``): a cached run trains on what an uncached run encodes every step."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from unoflux.train.trainer import Trainer, step_generator, train

LONG_SIDES = {"reference_long_side_single": 32, "reference_long_side_multi": 16}


@pytest.fixture(params=["text-to-image", "references", "references, subject-weighted loss", "dreamo, routing"])
def cache_case(request, tiny_config, world_data, wide_data, multi_pairs_data):
    """A config factory: two aspect buckets of world scenes, or Stage II multi-pairs with look-free captions
    (and subject tokens weighted up in the loss, or DreamO: T5 token ids cached, the routing constraint on)."""
    if request.param == "text-to-image":
        changes = {"data": [str(world_data), str(wide_data)], "buckets": [[32, 32], [32, 64]]}
    else:
        changes = {"data": [str(multi_pairs_data)], "batch_size": 1, "look_free_captions": 0.5, **LONG_SIDES}
        if request.param.endswith("weighted loss"):
            changes["subject_loss_weight"] = 4.0
        if request.param.startswith("dreamo"):
            changes.update(
                method="dreamo",
                lora={"rank": 4, "target_modules": "uno"},
                dreamo={"routing_weight": 1.0, "routing_blocks": [0]},
            )
    return lambda **more: tiny_config(text_dropout=0.5, **changes, **more)


def test_cached_batches_give_the_loss_of_encoded_batches(cache_case):
    plain, cached = Trainer(cache_case(), []), Trainer(cache_case(cache_encodings=True), [])
    assert plain.cache is None and cached.cache is not None
    for batch, indices, step in zip(plain.data, cached.data, range(6)):  # same order: indices, not pixels
        assert batch.captions == [plain.samples[i].caption for i in indices]
        expected = plain.objective.loss(batch, step_generator(3, step, 0, 0))
        got = cached.objective.cached_loss(cached.cache, cached.samples, indices, step_generator(3, step, 0, 0))
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_a_cached_run_ends_with_the_weights_of_an_uncached_run(cache_case, tmp_path):
    plain = train(cache_case(output_dir=str(tmp_path / "plain"), max_steps=3), command=[])
    cached = train(cache_case(output_dir=str(tmp_path / "cached"), max_steps=3, cache_encodings=True), command=[])
    expected = load_file(plain / "pytorch_lora_weights.safetensors")
    got = load_file(cached / "pytorch_lora_weights.safetensors")
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-5)
