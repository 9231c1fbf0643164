"""TrainConfig: validation, YAML round trip, clear errors, CLI overrides; `unoflux train -h`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from unoflux.errors import UnofluxError
from unoflux.train import TrainConfig
from unoflux.train.cli import load_config

REPO = Path(__file__).resolve().parents[2]


def minimal(**changes):
    return TrainConfig.from_dict({"data": ["d"], "output_dir": "o", **changes})


def test_yaml_round_trip(tmp_path):
    config = minimal(
        mode="full",
        buckets=[[32, 64], (64, 32)],
        ema={"enabled": True, "decay": 0.99},
        lora={"rank": 8},
        validate_every=5,
        validation={"prompts": ["a cat"], "width": 32, "height": 48},
    )
    assert config.buckets == [(32, 64), (64, 32)]
    assert config.lora.rank == 8 and config.ema.enabled and config.validation.prompts == ["a cat"]
    path = config.to_yaml(tmp_path / "c.yaml")
    assert TrainConfig.from_yaml(path) == config


def test_defaults_follow_uno():
    config = minimal()
    assert config.text_dropout == 0.1 and config.learning_rate == 1e-5 and config.mode == "lora"
    assert "to_q" in config.lora.target_modules and "proj_out" in config.lora.target_modules
    assert config.bucket_sizes == [(512, 512)]
    assert config.references is None and config.position_mode == "diagonal"
    assert (config.reference_long_side(1), config.reference_long_side(2)) == (512, 320)


def test_uno_lora_targets_are_exactly_the_xlabs_layers():
    import re

    pattern = minimal(lora={"target_modules": "uno"}).lora.peft_targets
    adapted = [
        "transformer_blocks.3.attn.to_q",
        "transformer_blocks.0.attn.add_v_proj",
        "transformer_blocks.1.attn.to_out.0",
        "transformer_blocks.0.attn.to_add_out",
        "single_transformer_blocks.9.attn.to_k",
        "single_transformer_blocks.0.proj_out",
    ]
    left = [
        "proj_out",
        "single_transformer_blocks.0.proj_mlp",
        "transformer_blocks.0.ff.net.2",
        "x_embedder",
        "transformer_blocks.0.norm1.linear",
    ]
    assert all(re.fullmatch(pattern, name) for name in adapted)
    assert not any(re.fullmatch(pattern, name) for name in left)


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"max_step": 3}, "unknown setting 'max_step'"),
        ({"lora": {"rnak": 3}}, "unknown setting 'lora.rnak'"),
        ({"mode": "qlora"}, "mode 'qlora'"),
        ({"max_steps": 0}, "max_steps 0"),
        ({"max_minutes": 0}, "max_minutes 0"),
        ({"mixed_precision": "fp16"}, "mixed_precision 'fp16'"),
        ({"buckets": [[30, 64]]}, "bucket [30, 64]"),
        ({"text_dropout": 1.5}, "text_dropout 1.5"),
        ({"lora": {"rank": 0}}, "lora.rank 0"),
        ({"validate_every": 10}, "validation.prompts is empty"),
        ({"lr_schedule": "exp"}, "lr_schedule 'exp'"),
        ({"resume": "/no/such/checkpoint"}, "resume '/no/such/checkpoint'"),
        ({"position_mode": "diag"}, "position_mode 'diag'"),
        ({"reference_long_side_multi": 8}, "reference_long_side_multi 8"),
        ({"references": "yes"}, "references 'yes'"),
        ({"cache_encodings": "yes"}, "cache_encodings 'yes' must be true or false"),
        ({"init_lora": "/no/such/lora.safetensors"}, "init_lora '/no/such/lora.safetensors' does not exist"),
        ({"mode": "full", "init_lora": "."}, "init_lora needs mode: lora"),
        ({"lora": {"target_modules": "all"}}, "lora.target_modules 'all'"),
        ({"validation": {"prompts": ["a", "b"], "references": [["r.png"]]}}, "one list of image paths per"),
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
    config = load_config(str(path), max_steps=7, output_dir="elsewhere", resume=True, position_mode="none")
    assert (config.max_steps, config.output_dir, config.resume, config.position_mode) == (
        7,
        "elsewhere",
        "latest",
        "none",
    )
    assert load_config(str(path)).max_steps == 100
    with pytest.raises(UnofluxError, match="max_steps -1"):
        load_config(str(path), max_steps=-1)


def test_set_overrides_any_setting_and_is_validated_as_the_file(tmp_path):
    """--set KEY=VALUE (the DreamO experiment's arm without its losses: same file, two settings changed)."""
    values = dict(method="dreamo", lora={"rank": 4, "target_modules": "uno"}, dreamo={"routing_weight": 1e-3})
    path = minimal(**values).to_yaml(tmp_path / "c.yaml")
    sets = ["dreamo.routing_weight=0", "dreamo.holder_weight=0", "init_lora=null", "buckets=[[32, 32]]"]
    config = load_config(str(path), max_steps=3, overrides=sets)
    assert (config.dreamo.routing_weight, config.dreamo.holder_weight, config.init_lora) == (0, 0, None)
    assert config.buckets == [(32, 32)] and config.max_steps == 3 and config.lora.rank == 4  # the rest stays
    assert load_config(str(path)).dreamo.routing_weight == 1e-3  # the file is not changed
    for bad, message in [
        ("dreamo.routing_wieght=0", "unknown setting 'dreamo.routing_wieght'"),
        ("dreamo.routing_weight=-1", "dreamo.routing_weight -1 must be a number >= 0"),
        ("routing_weight", "--set 'routing_weight' must be KEY=VALUE"),
        ("seed.x=1", "'seed' is not a nested mapping"),
    ]:
        with pytest.raises(UnofluxError, match=message):
            load_config(str(path), overrides=[bad])


def test_train_help():
    out = subprocess.run([sys.executable, "-m", "unoflux", "train", "-h"], capture_output=True, text=True, check=True)
    for flag in ("--config", "--resume", "--max-steps", "--max-minutes", "--output-dir", "--position-mode", "--set"):
        assert flag in out.stdout


def test_shipped_configs_are_valid():
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[2] / "configs"
    files = sorted(p for p in root.rglob("*.yaml") if not p.name.startswith("synth"))  # synth configs: tests/synth
    stages = [f for f in files if f.name.startswith("stage")]
    assert {f.name for f in stages} >= {"stage1_world.yaml", "stage2_world.yaml", "stage1_flux_dev.yaml"}
    assert {f.name for f in files} >= {
        "base_t2i.yaml",
        "base_t2i_v3.yaml",
        "base_t2i_v4.yaml",
        "base_t2i_v5a.yaml",
        "base_t2i_v5.yaml",
        "stage1_world128.yaml",
        "stage2_world128.yaml",
    }
    for path in files:
        values = yaml.safe_load(path.read_text())
        values.pop("init_lora", None)  # names the Stage I output, which exists only once Stage I has run
        config = TrainConfig.from_dict(values)
        if path in stages:
            assert config.mode == "lora" and config.lora.target_modules == "uno" and config.lora.share_qkv_down, path


TRAINING_CONFIGS = sorted(
    str(path.relative_to(REPO)) for path in REPO.glob("configs/**/*.yaml") if path.name != "synth_world.yaml"
)


@pytest.mark.parametrize("path", TRAINING_CONFIGS)
def test_every_shipped_training_config_is_valid(path):
    """A shipped config that no longer loads is found here, not on a GPU after the job queued (init_lora is left
    out: it names the previous stage's run, which does not exist in a checkout)."""
    config = TrainConfig.from_yaml(REPO / path, ["init_lora=null"])
    assert config.max_steps > 0


def test_dreamos_gpu_stage_three_drops_95_percent_of_the_reference_tokens():
    config = TrainConfig.from_yaml(REPO / "configs/gpu/dreamo_flux_dev_stage3.yaml", ["init_lora=null"])
    assert config.reference_token_drop == 0.95 and not config.dreamo.routing_weight
