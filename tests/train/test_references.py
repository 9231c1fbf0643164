"""Training with references (UNO Stage I / II): paired data, the reference loss, UnoPE ids, Stage II init,
and the LoRA export to UNO's XLabs layout."""

from __future__ import annotations

import itertools
import json
import math
import warnings

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from train_helpers import transformer_output as shared_transformer_output

from unoflux import flow
from unoflux.checkpoints.lora import to_xlabs_lora
from unoflux.conditioning import grid_position_ids, preprocess_reference
from unoflux.errors import UnofluxError
from unoflux.train.data import (
    BadRecordWarning,
    Batch,
    PairedDataset,
    data_has_references,
    read_paired_samples,
    subject_token_weights,
)
from unoflux.train.lora import add_lora, export_lora_state_dict, lora_state_dict
from unoflux.train.trainer import Trainer, step_generator

LONG_SIDES = {"reference_long_side_single": 32, "reference_long_side_multi": 16}  # UNO's 512/320, scaled to 32 px


def long_side(n: int) -> int:
    return 32 if n <= 1 else 16


def transformer_output(transformer, seed: int = 0) -> torch.Tensor:
    """Velocity for fixed random inputs: 4 target tokens and 1 reference token with UnoPE ids."""
    return shared_transformer_output(transformer, seed, reference_grids=((1, 1),))


def paired_config(tiny_config, data, **changes):
    return tiny_config(**{"data": [str(data)], "batch_size": 1, **LONG_SIDES, **changes})


# ------------------------------------------------------------------------------------------------ data
def test_uno_json_is_read_and_bad_records_are_skipped_with_one_warning_each(pairs_data, tmp_path):
    records = [json.loads(line) for line in (pairs_data / "manifest.jsonl").read_text().splitlines()]
    root = tmp_path / "uno"
    root.mkdir()
    (root / "broken.png").write_text("not a png")
    good = [
        {
            "prompt": r["caption"],
            "image_tgt_path": str(pairs_data / r["image"]),
            "image_paths": [str(pairs_data / ref["image"]) for ref in r["references"]],
        }
        for r in records[:3]
    ]
    bad = [
        {**good[0], "image_tgt_path": "missing.png"},  # 3: missing file
        {**good[0], "image_paths": ["broken.png"]},  # 4: unreadable image
        {**good[0], "prompt": 7},  # 5: wrong type
        {**good[0], "image_paths": "a.png"},  # 6: not a list
        ["not", "a", "record"],  # 7
    ]
    path = root / "train.json"
    path.write_text(json.dumps(good + bad))
    with pytest.warns(BadRecordWarning) as caught:
        samples = read_paired_samples([str(path)], long_side)
    assert len(samples) == 3 and [s.caption for s in samples] == [r["caption"] for r in records[:3]]
    assert all(len(s.references) == 1 and s.reference_sizes == ((32, 32),) for s in samples)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 5
    for index, reason in zip(
        range(3, 8), ("does not exist", "not a readable image", "prompt 7", "not a non-empty list", "not a JSON object")
    ):
        assert f"record {index} skipped" in messages[index - 3] and reason in messages[index - 3], messages
    assert data_has_references([str(path)]) and data_has_references([str(pairs_data)])


def test_world_multi_pairs_group_by_bucket_and_reference_sizes(multi_pairs_data, world_data):
    assert data_has_references([str(multi_pairs_data)]) and not data_has_references([str(world_data)])
    samples = read_paired_samples([str(multi_pairs_data)], long_side)
    assert len(samples) == 8 and {len(s.references) for s in samples} <= {2, 3}
    dataset = PairedDataset(samples, [(32, 32)], long_side)
    assert set(dataset.group_of) <= {(0, ((16, 16),) * 2), (0, ((16, 16),) * 3)}
    pixels, caption, refs, *_ = dataset[0]
    assert pixels.shape == (3, 32, 32) and all(r.size == (16, 16) for r in refs)
    expected = preprocess_reference(Image.open(samples[0].references[0]).convert("RGB"), 16)
    assert refs[0].tobytes() == expected.tobytes()  # the pipeline's resize, nothing else


# ------------------------------------------------------------------------------------------------ loss
def test_reference_loss_is_finite_sliced_to_the_target_and_depends_on_the_reference(tiny_config, pairs_data):
    trainer = Trainer(paired_config(tiny_config, pairs_data, batch_size=2), [])
    assert trainer.references
    batch = next(iter(trainer.data))
    pixels, captions, refs = batch.pixels, batch.captions, batch.references
    assert pixels.shape == (2, 3, 32, 32) and [len(r) for r in refs] == [1, 1]
    objective = trainer.objective

    seen = {}
    hook = trainer.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.update(kwargs), with_kwargs=True
    )
    loss = objective.loss(Batch(pixels, captions, refs), step_generator(1, 0, 0, 0))
    hook.remove()
    assert math.isfinite(loss.item())
    assert seen["hidden_states"].shape == (2, 4 + 4, 64)  # 4 target tokens, then a 32 px reference's 4 tokens
    ids = grid_position_ids(2, 2)
    torch.testing.assert_close(seen["img_ids"], torch.cat([ids, ids + torch.tensor([0.0, 2, 2])]))

    # predict() slices the transformer's output back to the target tokens
    x_t = torch.randn(2, 4, 64)
    conditioning = objective.reference_conditioning(refs, (2, 2))
    _, embeds, pooled, text_ids = objective.encode(pixels, captions, step_generator(1, 0, 0, 0))
    out = objective.predict(x_t, torch.full((2,), 0.5), embeds, pooled, text_ids, conditioning)
    assert conditioning.reference_tokens.shape == (2, 4, 64) and out.shape == x_t.shape

    other = [[Image.new("RGB", (32, 32), "white")] for _ in refs]  # same t, noise, text: only the references differ
    again = objective.loss(Batch(pixels, captions, refs), step_generator(1, 0, 0, 0))
    changed = objective.loss(Batch(pixels, captions, other), step_generator(1, 0, 0, 0))
    assert again.item() == loss.item() and changed.item() != loss.item()


def test_position_mode_sets_the_reference_ids(tiny_config, multi_pairs_data):
    objective = Trainer(paired_config(tiny_config, multi_pairs_data), []).objective
    refs = [[Image.new("RGB", (16, 16), c) for c in ("red", "blue")]]  # two 1x1-token references, 2x2 target
    expected = {  # (index, row, col) of reference 1 and 2: offsets start at the target's size and accumulate
        "diagonal": [[0, 2, 2], [0, 3, 3]],
        "height": [[0, 2, 0], [0, 3, 0]],
        "width": [[0, 0, 2], [0, 0, 3]],
        "none": [[0, 0, 0], [0, 0, 0]],
    }
    losses = {}
    pixels = torch.zeros(1, 3, 32, 32)
    for mode, ref_ids in expected.items():
        objective.config = objective.config.replace(position_mode=mode)
        ids = objective.reference_conditioning(refs, (2, 2)).image_ids
        assert ids[:4].tolist() == grid_position_ids(2, 2).tolist() and ids[4:].tolist() == ref_ids, mode
        losses[mode] = objective.loss(Batch(pixels, ["a cat"], refs), step_generator(0, 0, 0, 0)).item()
    assert len(set(losses.values())) == 4  # the ids reach the model


def test_batches_share_reference_sizes_and_a_run_trains(tiny_config, multi_pairs_data):
    config = paired_config(tiny_config, multi_pairs_data, batch_size=2, max_steps=2, position_mode="width")
    trainer = Trainer(config, [])
    for batch in itertools.islice(iter(trainer.data), 6):
        assert len({tuple(r.size for r in sample) for sample in batch.references}) == 1
    final = trainer.train()
    losses = [float(line.split(",")[1]) for line in (final.parent / "log.csv").read_text().splitlines()[1:]]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)


# --------------------------------------------------------------------------------- stages and export
def test_stage1_exports_uno_lora_and_stage2_starts_from_it(tiny_config, pairs_data, multi_pairs_data, tmp_path):
    from unoflux.testing import tiny_pipeline

    lora = {"rank": 4, "target_modules": "uno", "share_qkv_down": True}
    stage1 = Trainer(
        paired_config(
            tiny_config,
            pairs_data,
            output_dir=str(tmp_path / "s1"),
            max_steps=2,
            lora=lora,
            learning_rate=1e-2,
            validate_every=2,
            validation={
                "prompts": ["a cat"],
                "references": [[str(next(pairs_data.glob("shard_*/*_ref0.png")))]],
                "width": 32,
                "height": 32,
                "steps": 2,
            },
        ),
        [],
    )
    final = stage1.train()
    assert (final.parent / "validation" / "step-000002.png").is_file()
    xlabs_path = final / "dit_lora.safetensors"
    with safe_open(str(xlabs_path), "pt") as f:
        keys, rank = set(f.keys()), json.loads(f.metadata()["lora_rank"])
        assert rank == 4 and all(f.get_tensor(k).shape[0] == 4 for k in keys if k.endswith(".down.weight"))
    assert "double_blocks.0.processor.qkv_lora1.down.weight" in keys
    assert "single_blocks.0.processor.proj_lora.up.weight" in keys and len(keys) == 12  # 1 double + 1 single block
    trained = transformer_output(stage1.transformer.eval())
    for name in ("dit_lora.safetensors", "pytorch_lora_weights.safetensors"):
        pipe = tiny_pipeline(seed=0)
        base = transformer_output(pipe.transformer)
        pipe.load_uno_lora(str(final / name))
        loaded = transformer_output(pipe.transformer)
        assert not torch.allclose(loaded, base)
        torch.testing.assert_close(loaded, trained, rtol=0, atol=1e-5)

    # Shipped inside a model folder (as the embedded model ships its LoRA): loaded by default, in fp16.
    from unoflux import ModelPaths, load_pipeline
    from unoflux.family.build import SHIPPED_LORA_FILES, ship_lora, unship_lora

    folder = tmp_path / "model"
    tiny_pipeline(seed=0).save_pretrained(folder)
    ship_lora(final, folder, {"summary": {"identity_match": 1.0}})
    shipped = load_pipeline(ModelPaths(model=str(folder)), device="cpu", use_environment=False)
    torch.testing.assert_close(transformer_output(shipped.transformer), trained, rtol=0, atol=2e-3)
    config = stage1.config
    assert shipped.reference_long_sides == (config.reference_long_side_single, config.reference_long_side_multi)
    assert (folder / "lora_config.yaml").is_file() and (folder / "lora_training.json").is_file()
    unship_lora(folder)  # what a full fine-tune does to its copy of such a folder
    assert not any((folder / name).exists() for name in SHIPPED_LORA_FILES)
    assert (
        load_pipeline(ModelPaths(model=str(folder)), device="cpu", use_environment=False).reference_long_sides is None
    )

    stage2 = Trainer(
        paired_config(
            tiny_config, multi_pairs_data, output_dir=str(tmp_path / "s2"), max_steps=1, lora=lora, init_lora=str(final)
        ),
        [],
    )
    torch.testing.assert_close(transformer_output(stage2.transformer.eval()), trained, rtol=0, atol=1e-6)
    stage2.transformer.train()
    stage2.train()
    with pytest.raises(UnofluxError, match="use the same lora.rank"):
        Trainer(paired_config(tiny_config, pairs_data, lora={**lora, "rank": 2}, init_lora=str(xlabs_path)), [])


# ---------------------------------------------------------------------------------- subject-weighted loss
def test_world_pairs_carry_their_subject_boxes_and_uno_json_none(pairs_data, multi_pairs_data, tmp_path):
    records = [json.loads(line) for line in (multi_pairs_data / "manifest.jsonl").read_text().splitlines()]
    samples = read_paired_samples([str(multi_pairs_data)], long_side)
    for record, sample in zip(records, samples):
        w, h = record["width"], record["height"]
        expected = [(x0 / w, y0 / h, x1 / w, y1 / h) for x0, y0, x1, y1 in (s["box"] for s in record["subjects"])]
        assert list(sample.subject_boxes) == expected and len(expected) == len(sample.references)
    uno = tmp_path / "uno.json"
    first = json.loads((pairs_data / "manifest.jsonl").read_text().splitlines()[0])
    uno.write_text(
        json.dumps(
            [
                {
                    "prompt": "a cat",
                    "image_paths": [str(pairs_data / first["references"][0]["image"])],
                    "image_tgt_path": str(pairs_data / first["image"]),
                }
            ]
        )
    )
    assert read_paired_samples([str(uno)], long_side)[0].subject_boxes == ()


def test_subject_token_weights_follow_the_covered_share_and_average_one():
    # a 2 x 4 token grid; the box covers columns 0-1 fully and half of column 2; a second sample has no box
    weights = subject_token_weights([((0.0, 0.0, 0.625, 1.0),), ()], (2, 4), weight=3.0)
    row = torch.tensor([3.0, 3.0, 2.0, 1.0])
    torch.testing.assert_close(weights[0], torch.cat([row, row]) / row.mean())
    torch.testing.assert_close(weights[1], torch.ones(8))
    assert weights.shape == (2, 8) and torch.allclose(weights.mean(dim=1), torch.ones(2))


def test_subject_weighted_loss_scales_each_token_error(tiny_config, pairs_data):
    trainer = Trainer(paired_config(tiny_config, pairs_data, batch_size=2, subject_loss_weight=3.0), [])
    objective = trainer.objective
    x_data, prediction = torch.randn(2, 8, 64), torch.randn(2, 8, 64)
    objective.predict = lambda *args, **kwargs: prediction
    weights = subject_token_weights([((0.0, 0.0, 0.5, 1.0),), ((0.5, 0.5, 1.0, 1.0),)], (2, 4), weight=3.0)
    got = objective.flow_loss(x_data, None, None, None, None, torch.Generator().manual_seed(5), weights)
    gen = torch.Generator().manual_seed(5)  # the same draws as flow_loss: t, then the noise
    flow.sample_training_t(2, 8, generator=gen, config=objective.shift)
    noise = torch.randn(x_data.shape, generator=gen)
    expected = ((prediction - (noise - x_data)).square().mean(dim=-1) * weights).mean()
    torch.testing.assert_close(got, expected)
    plain = objective.flow_loss(x_data, None, None, None, None, torch.Generator().manual_seed(5))
    assert plain.item() != got.item()
    boxes = next(iter(trainer.data)).subject_boxes
    assert all(boxes) and objective.token_weights(boxes, (2, 2)).shape == (2, 4)
    with pytest.raises(UnofluxError, match="subject_loss_weight 0.5 must be a number >= 1"):
        paired_config(tiny_config, pairs_data, subject_loss_weight=0.5)


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_look_free_captions_replace_captions_at_their_rate(tiny_config, pairs_data, rate):
    trainer = Trainer(
        paired_config(tiny_config, pairs_data, batch_size=2, text_dropout=0.0, look_free_captions=rate), []
    )
    batch = next(iter(trainer.data))
    captions, without_looks = batch.captions, batch.captions_without_looks
    assert all(w and w != c for c, w in zip(captions, without_looks))
    prompts = []
    encode_prompt = trainer.pipe.encode_prompt
    trainer.pipe.encode_prompt = lambda **kw: prompts.append(kw["prompt"]) or encode_prompt(**kw)
    trainer.objective.loss(batch, step_generator(1, 0, 0, 0))
    assert prompts == [without_looks if rate == 1.0 else captions]


def randomized_lora_transformer(tiny_config, **lora):
    """The tiny transformer with a LoRA (config settings) whose every tensor is random."""
    from unoflux.testing import tiny_pipeline

    transformer = tiny_pipeline(seed=0).transformer
    add_lora(transformer, tiny_config(lora=lora))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in transformer.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=g) * 0.1)
    return transformer.eval()


def test_xlabs_export_is_exact_for_independent_qkv_downs(tiny_config, tmp_path):
    from unoflux.checkpoints.files import write_safetensors
    from unoflux.testing import tiny_pipeline

    # q, k, v with their own down matrices and alpha != rank (scale 2): the block-diagonal export at rank 3 x 3
    transformer = randomized_lora_transformer(tiny_config, rank=3, alpha=6, target_modules="uno")
    xlabs = to_xlabs_lora(export_lora_state_dict(transformer), transformer)
    assert {v.shape[0] for k, v in xlabs.items() if k.endswith(".down.weight")} == {9}  # one rank: qkv 9, proj padded
    assert xlabs["double_blocks.0.processor.qkv_lora1.up.weight"].shape == (3 * 32, 9)
    path = write_safetensors(xlabs, tmp_path / "dit_lora.safetensors")
    pipe = tiny_pipeline(seed=0)
    pipe.load_uno_lora(str(path))
    torch.testing.assert_close(transformer_output(pipe.transformer), transformer_output(transformer), rtol=0, atol=1e-5)


def test_xlabs_export_refuses_layers_it_cannot_hold(tiny_config):
    transformer = randomized_lora_transformer(tiny_config, rank=2)  # default targets: proj_mlp, final proj_out
    with pytest.raises(UnofluxError, match="lora.target_modules: uno"):
        to_xlabs_lora(lora_state_dict(transformer), transformer)
    # only q/k/v trained: the other parts are written as exact zeros so UNO's loader finds every tensor
    partial = randomized_lora_transformer(tiny_config, rank=2, target_modules=["to_q", "to_k", "to_v"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        xlabs = to_xlabs_lora(lora_state_dict(partial), partial)
    assert len(xlabs) == 12 and not xlabs["double_blocks.0.processor.proj_lora2.up.weight"].any()
