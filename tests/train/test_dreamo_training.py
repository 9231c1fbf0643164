"""DreamO training (method: dreamo): the task/index embeddings and placeholder rows train beside the LoRA, land in
DreamO's dreamo.safetensors, and load back through the inference loader into the same model."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from train_helpers import transformer_output

from unoflux import UnofluxError, load_pipeline
from unoflux.checkpoints import ModelPaths
from unoflux.checkpoints.dreamo import EMBEDDING_KEYS, PLACEHOLDERS
from unoflux.cli import main
from unoflux.train import TrainConfig
from unoflux.train.trainer import Trainer

DREAMO = dict(
    method="dreamo",
    batch_size=2,
    text_dropout=0.0,
    reference_long_side_multi=16,
    learning_rate=1e-2,
    lora={"rank": 4, "target_modules": "uno", "share_qkv_down": True},
)


def test_trained_dreamo_loads_through_the_inference_loader_as_it_was_trained(
    tiny_config, dreamo_data, diffusers_folder
):
    trainer = Trainer(tiny_config(data=[str(dreamo_data)], max_steps=2, **DREAMO), command=[])
    table_before = trainer.pipe.text_encoder_2.get_input_embeddings().weight.detach().clone()
    final = trainer.train()
    parts = trainer.dreamo
    first = parts.first_placeholder

    # the references' index rows (slots 1 and 2) and both task rows trained; unused slots stay at their zero init
    assert parts.task.abs().min(dim=1).values.gt(0).all()
    assert parts.index[1:3].abs().sum() > 0 and parts.index[0].abs().sum() == 0 and parts.index[3:].abs().sum() == 0
    # [ref#1] and [ref#2] moved away from their init; T5's own table is frozen
    table = trainer.pipe.text_encoder_2.get_input_embeddings().weight
    assert (parts.t5_rows[:2] - table_before[first : first + 2]).abs().max() > 1e-3
    torch.testing.assert_close(table[:first], table_before[:first], rtol=0, atol=0)

    with safe_open(str(final / "dreamo.safetensors"), framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    hidden = parts.task.shape[1]
    assert shapes[EMBEDDING_KEYS[0]] == (10, table.shape[1])
    assert (shapes[EMBEDDING_KEYS[1]], shapes[EMBEDDING_KEYS[2]]) == ((2, hidden), (10, hidden))
    assert "double_blocks_0.processor.qkv_lora1.down.weight" in shapes  # DreamO's LoRA names
    assert (final / "pytorch_lora_weights.safetensors").is_file()

    pipe = load_pipeline(
        ModelPaths(model=str(diffusers_folder), dreamo=str(final)), device="cpu", dtype="fp32", use_environment=False
    )
    pipe.set_progress_bar_config(disable=True)
    assert pipe.get_active_adapters() == ["dreamo"] and pipe.model_defaults["method"] == "dreamo"
    torch.testing.assert_close(pipe.dreamo_embeddings.task, parts.task.detach(), rtol=0, atol=0)
    torch.testing.assert_close(pipe.dreamo_embeddings.index, parts.index.detach(), rtol=0, atol=0)
    ids = pipe.tokenizer_2.convert_tokens_to_ids(PLACEHOLDERS)
    assert ids == list(range(first, first + 10))
    loaded_rows = pipe.text_encoder_2.get_input_embeddings().weight[ids]
    torch.testing.assert_close(loaded_rows, parts.t5_rows.detach(), rtol=0, atol=0)
    # the LoRA in DreamO's layout is the trained one: the same velocity for the same inputs
    trainer.transformer.eval()
    expected = transformer_output(trainer.transformer, reference_grids=[(1, 1), (1, 1)])
    got = transformer_output(pipe.transformer, reference_grids=[(1, 1), (1, 1)])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)

    # and `unoflux generate --dreamo final/` runs on it, with placeholders in the prompt
    refs = []
    for i, color in enumerate(("red", "blue")):
        refs += ["--ref", str(final / f"ref{i}.png")]
        Image.new("RGB", (16, 16), color).save(final / f"ref{i}.png")
    out = final / "out.png"
    argv = ["generate", "--model", str(diffusers_folder), "--dreamo", str(final), "--prompt",
            "[ref#1] on the left and [ref#2] on the right", *refs, "--ref-long-side", "16", "--width", "32",
            "--height", "32", "--steps", "2", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert Image.open(out).size == (32, 32)
    assert json.loads(Image.open(out).text["unoflux"])["method"] == "dreamo"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"mode": "full"}, "method dreamo trains a LoRA beside its embeddings; set mode: lora"),
        ({"lora": {"rank": 4}}, "method dreamo needs lora.target_modules: uno"),
        ({"dreamo": {"train_placeholders": "yes"}}, "dreamo.train_placeholders 'yes' must be true or false"),
        ({"dreamo": {"routing": 1}}, "unknown setting 'dreamo.routing'"),
    ],
)
def test_bad_dreamo_settings_are_one_sentence(changes, message):
    values = dict(data=["d"], output_dir="o", **{**DREAMO, **changes})
    with pytest.raises(UnofluxError, match=message.replace("(", r"\(")):
        TrainConfig.from_dict(values)


def test_stage_two_starts_from_stage_ones_embeddings_and_rows(tiny_config, dreamo_data, tmp_path):
    """init_lora naming a DreamO run's final/ (its dreamo.safetensors) or checkpoint (dreamo_parts.safetensors)
    starts the embeddings and placeholder rows there, as it starts the LoRA; a UNO LoRA leaves them fresh."""
    from safetensors.torch import load_file

    from unoflux.train.dreamo import PARTS_FILE

    stage1 = Trainer(
        tiny_config(
            data=[str(dreamo_data)], output_dir=str(tmp_path / "s1"), max_steps=2, checkpoint_every=1, **DREAMO
        ),
        command=[],
    ).train()
    saved = load_file(stage1 / "dreamo.safetensors")
    checkpoint = load_file(tmp_path / "s1" / "checkpoint-1" / PARTS_FILE)
    for init, expected in (
        (stage1, [saved[k] for k in EMBEDDING_KEYS]),
        (tmp_path / "s1" / "checkpoint-1", [checkpoint[k] for k in ("t5_rows", "task", "index")]),
    ):
        stage2 = Trainer(tiny_config(data=[str(dreamo_data)], init_lora=str(init), **DREAMO), command=[])
        for got, want in zip((stage2.dreamo.t5_rows, stage2.dreamo.task, stage2.dreamo.index), expected):
            torch.testing.assert_close(got.detach(), want, rtol=0, atol=0)
        assert stage2.dreamo.index.abs().sum() > 0  # not the fresh zeros


def test_dreamo_training_resizes_references_as_dreamo_inference_does(tiny_config, tmp_path):
    """DreamO's inference scales a reference to an area (``resize_to_area``), UNO's to a long side: the same 96 x 48
    reference becomes 64 x 32 or 48 x 16 at 48. Training with method dreamo must give the model what DreamO's
    inference will (sizes, so token counts, and pixels)."""
    import numpy as np

    from unoflux.conditioning import preprocess_reference
    from unoflux.methods.dreamo import DreamOMethod, resize_to_area
    from unoflux.train.data import PairedDataset

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "target.png")
    reference = Image.fromarray(rng.integers(0, 256, (48, 96, 3), dtype=np.uint8))
    reference.save(tmp_path / "ref.png")
    records = [{"prompt": "[ref#1] in a field", "image_paths": ["ref.png"], "image_tgt_path": "target.png"}] * 2
    (tmp_path / "pairs.json").write_text(json.dumps(records))
    dreamo_size, uno_size = resize_to_area(reference, 48).size, preprocess_reference(reference, 48).size
    assert dreamo_size == (64, 32) and uno_size == (48, 16)  # the two resizes really differ here

    data = dict(data=[str(tmp_path / "pairs.json")], reference_long_side_single=48, max_steps=1)
    dreamo = Trainer(tiny_config(**{**DREAMO, **data}), command=[])
    assert DreamOMethod.resize_reference is resize_to_area
    assert dreamo.samples[0].reference_sizes == (dreamo_size,)
    (got,) = PairedDataset(dreamo.samples, [(32, 32)], lambda n: 48, DreamOMethod.resize_reference)[0][2]
    assert np.array_equal(np.asarray(got), np.asarray(resize_to_area(reference, 48)))
    uno = Trainer(tiny_config(**data, lora={"rank": 4}), command=[])  # method uno: UNO's resize, as before
    assert uno.samples[0].reference_sizes == (uno_size,)


def test_reference_token_drop_shows_the_transformer_a_fresh_five_percent_of_the_reference_tokens(tiny_config, tmp_path):
    """DreamO's stage 3 (``reference_token_drop: 0.95``): the transformer sees the target's tokens and 3 of a 128 px
    reference's 64, with those tokens' own ids and task/index embeddings; another step draws another 3; the same
    step's generator draws the same 3 (exact resume)."""
    import numpy as np

    from unoflux.train.data import Batch
    from unoflux.train.objective import drop_reference_tokens
    from unoflux.train.trainer import step_generator

    rng = np.random.default_rng(0)
    for name, side in (("target.png", 32), ("ref.png", 128)):
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(tmp_path / name)
    records = [{"prompt": "[ref#1] in a field", "image_paths": ["ref.png"], "image_tgt_path": "target.png"}]
    (tmp_path / "pairs.json").write_text(json.dumps(records))
    config = {**DREAMO, "batch_size": 1, "reference_long_side_single": 128, "reference_token_drop": 0.95}
    trainer = Trainer(tiny_config(data=[str(tmp_path / "pairs.json")], **config), command=[])
    batch: Batch = next(iter(trainer.data))
    objective = trainer.objective
    full = objective.reference_conditioning(batch.references, (2, 2))
    assert full.num_reference_tokens == 64 and full.token_embeddings.shape[1] == 4 + 64

    seen = []
    hook = trainer.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((kwargs["hidden_states"].shape[1], kwargs["img_ids"])),
        with_kwargs=True,
    )
    for step in (0, 1, 0):
        objective.loss(batch, step_generator(0, step, 0, 0)).backward()
    hook.remove()
    assert [count for count, _ in seen] == [4 + 3] * 3  # 5 % of 64 is 3.2 tokens
    kept = [ids[4:] for _, ids in seen]
    torch.testing.assert_close(seen[0][1][:4], full.image_ids[:4])  # the target's tokens all stay
    full_rows = [tuple(row) for row in full.image_ids[4:].tolist()]
    for ids in kept:  # each kept token at its own position, in the reference's order
        rows = [full_rows.index(tuple(row)) for row in ids.tolist()]
        assert rows == sorted(rows) and len(set(rows)) == 3
    assert not torch.equal(kept[0], kept[1]) and torch.equal(kept[0], kept[2])
    assert trainer.dreamo.index.grad is not None and trainer.dreamo.index.grad.abs().sum() > 0

    # the embeddings leave with their tokens
    dropped = drop_reference_tokens(full, 0.95, torch.Generator().manual_seed(0))
    rows = [full_rows.index(tuple(row)) for row in dropped.image_ids[4:].tolist()]
    torch.testing.assert_close(dropped.token_embeddings[:, 4:], full.token_embeddings[:, [4 + r for r in rows]])
    torch.testing.assert_close(dropped.reference_tokens, full.reference_tokens[:, rows])


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"reference_token_drop": 1.0}, r"reference_token_drop 1.0 must be a share in \[0, 1\)"),
        ({"reference_token_drop": True}, r"reference_token_drop True must be a share"),
        (
            {"reference_token_drop": 0.95, "dreamo": {"routing_weight": 0.5}},
            "reference_token_drop cannot be used with dreamo.routing_weight > 0; set one to 0",
        ),
    ],
)
def test_bad_reference_token_drop_is_one_sentence(changes, message):
    with pytest.raises(UnofluxError, match=message):
        TrainConfig.from_dict(dict(data=["d"], output_dir="o", **{**DREAMO, **changes}))
