"""``train_text_encoder``: the T5 encoder trains beside the transformer (full mode); CLIP and the VAE stay frozen,
the cache keeps token ids, the final folder carries the trained T5, and a resumed run ends where an uninterrupted
one does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unoflux import ModelPaths, UnofluxError, load_pipeline
from unoflux.train.objective import TransformerWithTextEncoder
from unoflux.train.trainer import Trainer, step_generator, train


def weights(folder, component: str) -> dict[str, torch.Tensor]:
    (path,) = (folder / component).glob("*.safetensors")
    return load_file(path)


def test_the_trained_module_encodes_t5_tokens_as_the_pipeline_does(tiny_config):
    trainer = Trainer(tiny_config(mode="full", train_text_encoder=True), [])
    captions = ["a red cat on the beach", ""]
    text, pooled, text_ids = trainer.objective.encode_text(captions)
    assert text.dtype == torch.long and text.shape == (2, 32)
    expected, expected_pooled, _ = trainer.pipe.encode_prompt(
        prompt=captions, prompt_2=None, device="cpu", max_sequence_length=32
    )
    model = trainer.accelerator.unwrap_model(trainer.model)
    assert isinstance(model, TransformerWithTextEncoder)
    torch.testing.assert_close(model.text_encoder(text)[0], expected)
    torch.testing.assert_close(pooled, expected_pooled)


def test_training_the_text_encoder_changes_t5_and_the_transformer_only(tiny_config):
    config = tiny_config(mode="full", train_text_encoder=True, max_steps=3, ema={"enabled": True, "decay": 0.5})
    final, base = train(config, command=[]), Path(config.model)
    for component, changed in (
        ("text_encoder_2", True),
        ("transformer", True),
        ("text_encoder", False),
        ("vae", False),
    ):
        got, before = weights(final, component), weights(base, component)
        assert got.keys() == before.keys(), component
        assert any(not torch.equal(got[k], before[k]) for k in got) == changed, component
    pipe = load_pipeline(ModelPaths(model=str(final)), device="cpu", use_environment=False)  # loads as any FLUX
    assert pipe("a red cat", width=32, height=32, num_inference_steps=2, seed=0).images[0].size == (32, 32)


def test_cached_token_ids_give_the_loss_of_encoded_batches(tiny_config):
    make = lambda **more: tiny_config(mode="full", train_text_encoder=True, text_dropout=0.5, **more)  # noqa: E731
    plain, cached = Trainer(make(), []), Trainer(make(cache_encodings=True), [])
    assert cached.cache.text.dtype == torch.long  # token ids, encoded by the trained T5 at every step
    for batch, indices, step in zip(plain.data, cached.data, range(4)):
        expected = plain.objective.loss(batch, step_generator(3, step, 0, 0))
        got = cached.objective.cached_loss(cached.cache, cached.samples, indices, step_generator(3, step, 0, 0))
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_a_resumed_run_ends_with_the_t5_of_an_uninterrupted_run(tiny_config, tmp_path):
    settings = dict(
        mode="full",
        train_text_encoder=True,
        max_steps=4,
        checkpoint_every=2,
        cache_encodings=True,
        ema={"enabled": True, "decay": 0.9},
        text_dropout=0.5,
    )
    straight = train(tiny_config(output_dir=str(tmp_path / "straight"), **settings), command=[])
    first = tiny_config(output_dir=str(tmp_path / "resumed"), **{**settings, "max_steps": 3, "lr_schedule_steps": 4})
    train(first, command=[])  # leaves checkpoint-2, on the 4-step schedule
    state = load_file(tmp_path / "resumed" / "checkpoint-2" / "model.safetensors")
    assert any(k.startswith("text_encoder.") for k in state) and any(k.startswith("transformer.") for k in state)
    resumed = train(tiny_config(output_dir=str(tmp_path / "resumed"), **settings), resume="latest", command=[])
    for component in ("text_encoder_2", "transformer"):
        got, expected = weights(resumed, component), weights(straight, component)
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-6)


def test_a_lora_run_refuses_to_train_the_text_encoder(tiny_config):
    with pytest.raises(UnofluxError, match="train_text_encoder needs mode: full"):
        tiny_config(mode="lora", train_text_encoder=True)
