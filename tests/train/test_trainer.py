"""The training loop on tiny configs: finite losses, outputs, overfitting, LoRA freezing and export."""

from __future__ import annotations

import csv
import itertools
import math

import torch
from PIL import Image
from train_helpers import transformer_output

from unoflux.train.lora import lora_state_dict
from unoflux.train.trainer import Trainer, step_generator, train


def read_log(run) -> list[dict]:
    with open(run / "log.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_full_training_writes_every_output(tiny_config):
    from unoflux import ModelPaths, load_pipeline

    config = tiny_config(
        mode="full",
        max_steps=4,
        checkpoint_every=2,
        validate_every=2,
        ema={"enabled": True, "decay": 0.9},
        validation={"prompts": ["a red cat", "a dog on snow"], "width": 32, "height": 32, "steps": 2},
    )
    final = train(config, command=["unoflux", "train", "--config", "x.yaml"])
    run = final.parent
    rows = read_log(run)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert all(math.isfinite(float(r["loss"])) and float(r["it_per_s"]) > 0 for r in rows)
    assert (run / "checkpoint-2" / "model.safetensors").is_file() and (
        run / "checkpoint-2" / "train_state.json"
    ).is_file()
    assert not list(run.glob(".tmp-*"))
    grid = Image.open(run / "validation" / "step-000004.png")
    assert grid.size == (64, 32)  # two 32 px images side by side
    assert (final / "command.txt").read_text() == "unoflux train --config x.yaml\n"
    assert (final / "config.yaml").is_file() and (run / "config.yaml").is_file()

    pipe = load_pipeline(ModelPaths(model=str(final)), device="cpu", use_environment=False)
    base = load_pipeline(ModelPaths(model=config.model), device="cpu", use_environment=False)
    assert not torch.equal(transformer_output(pipe.transformer), transformer_output(base.transformer))
    image = pipe("a red cat", width=32, height=32, num_inference_steps=2, seed=0).images[0]
    assert image.size == (32, 32)


def test_aspect_buckets_train_one_shape_per_batch(tiny_config, world_data, wide_data):
    config = tiny_config(data=[str(world_data), str(wide_data)], buckets=[[32, 32], [32, 64], [64, 32]], max_steps=6)
    trainer = Trainer(config, [])
    assert sorted(set(trainer.data.dataset.bucket_of)) == [0, 1]  # squares and wide panels; nothing tall
    shapes = {tuple(batch.pixels.shape[2:]) for batch in itertools.islice(iter(trainer.data), 10)}
    assert shapes == {(32, 32), (32, 64)}
    trainer.train()
    losses = [float(r["loss"]) for r in read_log(trainer.output_dir)]
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)


def test_overfitting_one_batch_lowers_the_loss(tiny_config, tmp_path, world_data):
    import json

    one = tmp_path / "one"  # a dataset of exactly one batch
    one.mkdir()
    lines = (world_data / "manifest.jsonl").read_text().splitlines()[:2]
    records = [json.loads(line) for line in lines]
    for r in records:
        r["image"] = str(world_data / r["image"])
    (one / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    trainer = Trainer(tiny_config(data=[str(one)], mode="full", max_steps=30, text_dropout=0.0, learning_rate=2e-3), [])
    batch = next(iter(trainer.data))

    def probe() -> float:  # the loss at fixed t and noise, averaged over a few draws
        with torch.no_grad():
            return sum(trainer.objective.loss(batch, step_generator(99, k, 0, 0)).item() for k in range(4)) / 4

    before = probe()
    trainer.train()
    after = probe()
    assert after < 0.75 * before, (before, after)


def test_lora_keeps_base_weights_and_exports_a_loadable_lora(tiny_config):
    from unoflux.testing import tiny_pipeline

    config = tiny_config(mode="lora", max_steps=3, lora={"rank": 4})
    trainer = Trainer(config, [])
    base = {k: v.clone() for k, v in tiny_pipeline(seed=0).transformer.state_dict().items()}
    trainable = [n for n, p in trainer.transformer.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    final = trainer.train()

    state = trainer.transformer.state_dict()
    for key, value in base.items():  # PEFT renames wrapped layers' weights to <layer>.base_layer.weight
        peft_key = (
            key if key in state else key.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        )
        assert torch.equal(state[peft_key], value), key
    assert any(v.abs().sum() > 0 for k, v in lora_state_dict(trainer.transformer).items() if "lora_B" in k)

    trained = transformer_output(trainer.transformer.eval())
    pipe = tiny_pipeline(seed=0)
    before = transformer_output(pipe.transformer)
    pipe.load_uno_lora(str(final / "pytorch_lora_weights.safetensors"))
    after = transformer_output(pipe.transformer)
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, trained, rtol=1e-5, atol=1e-6)  # the file is exactly what was trained
    assert (final / "config.yaml").is_file() and (final / "command.txt").is_file()


def test_a_run_stopped_along_a_longer_schedule_is_the_prefix_of_that_schedule(tiny_config, tmp_path):
    # lr_schedule_steps: the embedded base v2 stopped at 4000 of a 12000-step cosine; one config reproduces it.
    common = dict(lr_schedule="cosine", warmup_steps=1, log_every=1)
    short = train(
        tiny_config(output_dir=str(tmp_path / "short"), max_steps=3, lr_schedule_steps=6, **common), command=[]
    )
    full = train(tiny_config(output_dir=str(tmp_path / "full"), max_steps=6, **common), command=[])

    def rows(final) -> list[tuple[str, str]]:
        return [(row["lr"], row["loss"]) for row in read_log(final.parent)]

    assert rows(short) == rows(full)[:3]
    assert float(rows(short)[-1][0]) > 0  # not decayed to zero at its own last step


def test_a_time_budget_ends_the_run_and_its_final_config_reproduces_it(tiny_config, tmp_path):
    from safetensors.torch import load_file

    from unoflux.train import TrainConfig

    common = dict(lr_schedule="cosine", warmup_steps=1, log_every=1)
    timed = train(tiny_config(output_dir=str(tmp_path / "timed"), max_steps=50, max_minutes=1e-9, **common), command=[])
    saved = TrainConfig.from_yaml(timed / "config.yaml")
    assert (saved.max_steps, saved.lr_schedule_steps, saved.max_minutes) == (1, 50, None)  # one step, then out of time
    assert len(read_log(timed.parent)) == 1
    again = train(saved.replace(output_dir=str(tmp_path / "again")), command=[])
    weights = "pytorch_lora_weights.safetensors"
    first, second = load_file(timed / weights), load_file(again / weights)
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=0, atol=0)
