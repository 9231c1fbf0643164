"""TrainConfig: validation, YAML round trip, clear errors, CLI overrides; `unoflux train -h`."""

from __future__ import annotations

import subprocess
import sys

import pytest

from unoflux.errors import UnofluxError
from unoflux.train import TrainConfig
from unoflux.train.cli import load_config


def minimal(**changes):
    return TrainConfig.from_dict({"data": ["d"], "output_dir": "o", **changes})


def test_yaml_round_trip(tmp_path):
    config = minimal(
        mode="full", buckets=[[32, 64], (64, 32)], ema={"enabled": True, "decay": 0.99}, lora={"rank": 8},
        validate_every=5, validation={"prompts": ["a cat"], "width": 32, "height": 48},
    )  # fmt: skip
    assert config.buckets == [(32, 64), (64, 32)]
    assert config.lora.rank == 8 and config.ema.enabled and config.validation.prompts == ["a cat"]
    path = config.to_yaml(tmp_path / "c.yaml")
    assert TrainConfig.from_yaml(path) == config


def test_defaults_follow_uno():
    config = minimal()
    assert config.text_dropout == 0.1 and config.learning_rate == 1e-5 and config.mode == "lora"
    assert "to_q" in config.lora.target_modules and "proj_out" in config.lora.target_modules
    assert config.bucket_sizes == [(512, 512)]


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"max_step": 3}, "unknown setting 'max_step'"),
        ({"lora": {"rnak": 3}}, "unknown setting 'lora.rnak'"),
        ({"mode": "qlora"}, "mode 'qlora'"),
        ({"max_steps": 0}, "max_steps 0"),
        ({"mixed_precision": "fp16"}, "mixed_precision 'fp16'"),
        ({"buckets": [[30, 64]]}, "bucket [30, 64]"),
        ({"text_dropout": 1.5}, "text_dropout 1.5"),
        ({"lora": {"rank": 0}}, "lora.rank 0"),
        ({"validate_every": 10}, "validation.prompts is empty"),
        ({"lr_schedule": "exp"}, "lr_schedule 'exp'"),
        ({"resume": "/no/such/checkpoint"}, "resume '/no/such/checkpoint'"),
    ],
)
def test_bad_values_fail_with_one_sentence(changes, words):
    with pytest.raises(UnofluxError) as err:
        minimal(**changes)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_bad_files(tmp_path):
    with pytest.raises(UnofluxError, match="does not exist"):
        TrainConfig.from_yaml(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("data: [unclosed\n")
    with pytest.raises(UnofluxError, match="not valid YAML"):
        TrainConfig.from_yaml(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(UnofluxError, match="mapping"):
        TrainConfig.from_yaml(tmp_path / "list.yaml")
    (tmp_path / "nodata.yaml").write_text("output_dir: o\n")
    with pytest.raises(UnofluxError, match="data"):
        TrainConfig.from_yaml(tmp_path / "nodata.yaml")


def test_cli_overrides_win(tmp_path):
    path = minimal(max_steps=100).to_yaml(tmp_path / "c.yaml")
    config = load_config(str(path), max_steps=7, output_dir="elsewhere", resume=True)
    assert (config.max_steps, config.output_dir, config.resume) == (7, "elsewhere", "latest")
    assert load_config(str(path)).max_steps == 100
    with pytest.raises(UnofluxError, match="max_steps -1"):
        load_config(str(path), max_steps=-1)


def test_train_help():
    out = subprocess.run([sys.executable, "-m", "unoflux", "train", "-h"], capture_output=True, text=True, check=True)
    for flag in ("--config", "--resume", "--max-steps", "--output-dir"):
        assert flag in out.stdout
