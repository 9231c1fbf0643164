"""The model family's parts: tokenizers fitted to captions, frozen text encoders, the resumable VAE."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from unoflux.errors import UnofluxError
from unoflux.family.text import sample_captions, tiny_text_encoders, train_clip_tokenizer, train_t5_tokenizer
from unoflux.family.vae import VAETrainConfig, calibrate_and_measure, train_vae


def test_tokenizers_split_captions_into_words_and_reload(tmp_path):
    captions = sample_captions(200, seed=0)
    t5, clip = train_t5_tokenizer(captions, max_length=64), train_clip_tokenizer(captions, vocab_size=300)
    text = "a small red star on the left in the snow."
    assert t5.tokenize(text) == [
        "\u2581a",
        "\u2581small",
        "\u2581red",
        "\u2581star",
        "\u2581on",
        "\u2581the",
        "\u2581left",
        "\u2581in",
        "\u2581the",
        "\u2581snow",
        ".",
    ]
    assert "red</w>" in clip.tokenize(text) and "<unk>" not in t5.tokenize("A zebra!")  # unknown words: characters
    t5.save_pretrained(tmp_path / "t5")
    clip.save_pretrained(tmp_path / "clip")
    for saved, original in ((tmp_path / "t5", t5), (tmp_path / "clip", clip)):
        loaded = AutoTokenizer.from_pretrained(saved)
        assert type(loaded) is type(original) and loaded(text).input_ids == original(text).input_ids
    assert AutoTokenizer.from_pretrained(tmp_path / "t5").model_max_length == 64
    t5_model, clip_model = tiny_text_encoders(t5, clip, width=32, seed=0)
    assert not any(p.requires_grad for p in [*t5_model.parameters(), *clip_model.parameters()])
    ids = clip(text, return_tensors="pt").input_ids
    assert clip_model(ids).pooler_output.shape == (1, 32)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_vae_training_resumes_exactly(device, tmp_path, monkeypatch):  # on a GPU: the CPU generator state reloads
    images = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    config = VAETrainConfig(
        steps=4, batch_size=2, checkpoint_every=2, crop_size=16, block_out_channels=[8, 8, 8, 8], norm_num_groups=4
    )
    straight = train_vae(images, config, tmp_path / "straight", torch.device(device))

    import unoflux.family.vae as vae_module

    real_save = vae_module._save_atomic

    def save_then_die(obj, path):  # the process is killed right after its first checkpoint
        real_save(obj, path)
        raise KeyboardInterrupt

    monkeypatch.setattr(vae_module, "_save_atomic", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_vae(images, config, tmp_path / "resumed", torch.device(device))
    monkeypatch.setattr(vae_module, "_save_atomic", real_save)
    resumed = train_vae(images, config, tmp_path / "resumed", torch.device(device))
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    report = calibrate_and_measure(resumed, images, count=8)
    assert report["psnr_db"] > 0 and resumed.config.scaling_factor == report["scaling_factor"]


def test_family_build_options_set_the_vae_and_refuse_a_non_flux_downsampling():
    from unoflux.cli import build_parser
    from unoflux.family.cli import family_config

    def config(*options: str):
        args = build_parser().parse_args(["family", "build", "--data", "d", "--out", "o", *options])
        return family_config(args).vae

    vae = config("--vae-channels", "64,64,128,128", "--vae-layers", "2", "--vae-batch", "64", "--vae-steps", "10")
    assert (vae.block_out_channels, vae.layers_per_block, vae.batch_size, vae.steps) == ([64, 64, 128, 128], 2, 64, 10)
    assert config().block_out_channels == [16, 32, 64, 64]  # v1's VAE stays the default
    with pytest.raises(UnofluxError, match="4 levels of widths .* got 3: \\[32, 64, 64\\]"):
        config("--vae-channels", "32,64,64")
    with pytest.raises(UnofluxError, match="4 levels"):  # the library refuses it too, not only the CLI
        VAETrainConfig(block_out_channels=[16, 32, 64, 64, 64]).model_config()


def test_tune_vae_refuses_a_size_off_the_token_grid_before_any_work(tmp_path, capsys):
    from unoflux.cli import main

    code = main(
        [
            "family",
            "tune-vae",
            str(tmp_path / "missing"),
            str(tmp_path / "out"),
            "--data",
            str(tmp_path),
            "--size",
            "100",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "positive multiple of 16" in err and "got 100" in err  # the usual bad-input exit status
    assert not (tmp_path / "out").exists()


def test_set_sampling_writes_the_defaults_a_model_loads_with_and_keeps_the_rest(diffusers_folder, tmp_path, capsys):
    import json
    import shutil

    from unoflux import ModelPaths, load_pipeline
    from unoflux.cli import main

    folder = tmp_path / "model"
    shutil.copytree(diffusers_folder, folder)
    (folder / "unoflux.json").write_text(json.dumps({"image_size": 32, "guidance": 1.0}))
    assert (
        main(["family", "set-sampling", str(folder), "--time-shift", "20", "--true-cfg", "3", "--stochasticity", "0.5"])
        == 0
    )
    assert json.loads((folder / "unoflux.json").read_text()) == {
        "image_size": 32,
        "guidance": 1.0,
        "true_cfg": 3.0,
        "time_shift": 20.0,
        "stochasticity": 0.5,
    }
    pipe = load_pipeline(ModelPaths(model=str(folder)), device="cpu", use_environment=False)
    defaults = pipe.model_defaults
    assert (defaults["guidance"], defaults["true_cfg"], defaults["time_shift"], defaults["stochasticity"]) == (
        1.0,
        3.0,
        20.0,
        0.5,
    )
    # back to UNO's rule and its ODE
    assert main(["family", "set-sampling", str(folder), "--time-shift", "none", "--stochasticity", "none"]) == 0
    assert json.loads((folder / "unoflux.json").read_text()) == {"image_size": 32, "guidance": 1.0, "true_cfg": 3.0}
    capsys.readouterr()
    assert main(["family", "set-sampling", str(folder), "--time-shift", "-1"]) == 2
    assert main(["family", "set-sampling", str(folder), "--stochasticity", "2"]) == 2
    assert main(["family", "set-sampling", str(tmp_path), "--time-shift", "2"]) == 2
    err = capsys.readouterr().err
    assert "time shift -1.0 must be a positive number" in err and "no model_index.json" in err
    assert "stochasticity 2.0 must be a number from 0 to 1" in err


def test_tune_vae_moves_a_family_to_a_new_size_keeping_its_latent_space(diffusers_folder, tmp_path):
    """``family tune-vae`` (v5: v4 moved to 128 px): the decoder learns, the encoder and the latent normalisation
    stay bit-equal (the transformer's inputs do not change), the folder says its new size and still loads."""
    import json

    import numpy as np
    from PIL import Image

    from unoflux.family.build import tune_vae
    from unoflux.pipeline import UnoFluxPipeline

    shard = tmp_path / "world" / "shard_00000"
    shard.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(8):  # flat colour blocks, like world scenes, 48 px high: the new size; two-panels stay whole
        panels = 2 if i % 2 else 1
        pixels = np.repeat(np.repeat(rng.integers(0, 256, (6, 6 * panels, 3), dtype=np.uint8), 8, 0), 8, 1)
        Image.fromarray(pixels).save(shard / f"{i:03d}.png")
    config = VAETrainConfig(steps=6, batch_size=2, learning_rate=1e-3, crop_size=48, decoder_only=True)
    record = tune_vae(diffusers_folder, [tmp_path / "world"], tmp_path / "tuned", config, image_size=48)

    source, tuned = (
        UnoFluxPipeline.from_pretrained(diffusers_folder),
        UnoFluxPipeline.from_pretrained(tmp_path / "tuned"),
    )
    before, after = source.vae.state_dict(), tuned.vae.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("decoder."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    normalisation = [(vae.config.shift_factor, vae.config.scaling_factor) for vae in (source.vae, tuned.vae)]
    assert normalisation[0] == normalisation[1]
    transformer = source.transformer.state_dict()
    assert all(torch.equal(v, tuned.transformer.state_dict()[k]) for k, v in transformer.items())
    assert json.loads((tmp_path / "tuned" / "unoflux.json").read_text())["image_size"] == 48
    tuning = json.loads((tmp_path / "tuned" / "family.json").read_text())["vae_tuning"][-1]
    assert tuning == record and tuning["image_size"] == 48 and record["psnr_db_before"] > 0 and record["psnr_db"] > 0
    assert list(record["psnr_db_by_size"]) == ["48x48", "48x96"] and record["num_images"] == 8
