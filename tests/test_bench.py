"""`unoflux bench`: FLOP per step equal to a hand count of FLUX's matmuls and attention, the timer sees every
transformer forward, and the command reports (against UNO's own code where a checkout is named in $UNO_REPO)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import random_image
from unoflux.bench import StepTimer, count_flops, peak_rss


def hand_flops(config, image_tokens: int, text_tokens: int, batch: int = 1) -> int:
    """2 x multiply-adds of every Linear and attention matmul of a FluxTransformer2DModel forward."""
    d = config.num_attention_heads * config.attention_head_dim
    n, t = image_tokens, text_tokens
    length = n + t
    per_sample = 256 * d + d * d  # timestep embedding MLP
    per_sample += (256 * d + d * d) if config.guidance_embeds else 0
    per_sample += config.pooled_projection_dim * d + d * d  # pooled text MLP
    per_sample += config.num_layers * 2 * (d * 6 * d)  # AdaLayerNormZero of both streams
    per_sample += config.num_single_layers * d * 3 * d + d * 2 * d  # single-block norms, final norm
    tokens = n * config.in_channels * d + t * config.joint_attention_dim * d  # x_embedder, context_embedder
    attention = 2 * length * length * d  # Q K^T and A V over all heads
    double = n * 4 * d * d + t * 4 * d * d + n * 8 * d * d + t * 8 * d * d + attention  # qkv+out, MLPs
    single = length * (3 * d * d + d * 4 * d + 5 * d * d) + attention  # qkv, proj_mlp, proj_out
    tokens += config.num_layers * double + config.num_single_layers * single
    tokens += n * d * config.in_channels  # proj_out
    return 2 * batch * (per_sample + tokens)


def test_flop_count_equals_a_hand_count(tiny_pipe):
    timer = StepTimer(tiny_pipe.transformer, "cpu")
    with torch.no_grad():
        tiny_pipe(
            "a red clock", [random_image(48, 32, seed=1)], width=64, height=48, steps=2, seed=0, reference_long_side=48
        )
    assert len(timer.times) == 2 and all(t > 0 for t in timer.times)  # one timed forward per step
    args, kwargs = timer.last_inputs
    image_tokens, text_tokens = kwargs["hidden_states"].shape[1], kwargs["encoder_hidden_states"].shape[1]
    assert image_tokens == (64 // 16) * (48 // 16) + (48 // 16) * (32 // 16)  # output + reference tokens
    flops = count_flops(tiny_pipe.transformer, timer.last_inputs)
    assert flops == hand_flops(tiny_pipe.transformer.config, image_tokens, text_tokens)


def _bench(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "unoflux", "bench", "--size", "tiny", "--width", "64", "--height", "64",
         "--ref-size", "64", "--steps", "2", "--runs", "1", *argv],
        capture_output=True, text=True, cwd=cwd, timeout=600,
    )  # fmt: skip


def test_bench_command_reports_time_memory_tokens_and_flops(tmp_path):
    done = _bench("--fast", "--against-exact", "--json", "bench.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    ours = report["ours"]
    assert ours["step_s"] > 0 and ours["end_to_end_s"] > ours["step_s"] * 2
    assert ours["peak_memory_kind"] == "peak RSS (whole process)" and ours["peak_memory_bytes"] > 100 * 2**20
    assert ours["tokens"] == {"image+references": 2 * 16, "text": 512}  # 64 px: 4x4 tokens each; T5 at UNO's 512
    assert ours["flops_per_step"] > 0 and ours["mfu"] is None  # no peak known for a CPU
    assert report["model"]["lora_rank"] == 4 and "tokens per step: 32 image + references" in done.stdout
    fast = report["against_exact"]  # fast mode (ours) against exact mode, both measured
    assert report["settings"]["speed"] == {"fast": True} and report["exact"]["step_s"] > 0
    assert fast["speedup_end_to_end"] > 0 and 10 < fast["psnr_db"] < 200
    assert "ours / exact mode:" in done.stdout
    bad = _bench("--steps", "0", cwd=tmp_path)
    assert bad.returncode == 2 and "--steps 0 must be at least 1" in bad.stderr and "Traceback" not in bad.stderr


def test_bad_bench_settings_are_one_sentence(capsys):
    from unoflux.cli import main

    for argv, message in [
        (["--compile", "--warmup", "0"], "--compile needs --warmup 1 or more: the blocks compile during the first"),
        (["--step-cache", "0.2", "--taylorseer", "3"], "are two step caches and only one runs at a time"),
    ]:
        assert main(["bench", "--size", "tiny", *argv]) == 2
        assert message in capsys.readouterr().err


@pytest.mark.skipif(
    not os.environ.get("UNO_REPO"), reason="set UNO_REPO to a bytedance/UNO checkout (and pip install einops)"
)
def test_bench_against_unos_own_pipeline(tmp_path):
    done = _bench("--against-reference", os.environ["UNO_REPO"], "--json", "bench.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["images"]["equal_within_1_255"] and report["reference"]["flops_per_step"] > 0
    # the same model, counted alike; ours computes the LoRA's shared down matrix once per q, k and v (diffusers' split)
    ours, ref = report["ours"]["flops_per_step"], report["reference"]["flops_per_step"]
    assert ref < ours < 1.01 * ref


def test_a_workers_peak_memory_is_its_own_not_its_parents():
    """ru_maxrss survives fork and exec: a worker started by a process that once held more would report that."""
    held = bytearray(600 * 2**20)  # this process's peak RSS now exceeds 600 MB (the pages are written)
    held[::4096] = b"x" * len(held[::4096])
    child = subprocess.run(
        [sys.executable, "-c", "from unoflux.bench import peak_rss; print(peak_rss())"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert child.returncode == 0, child.stderr
    assert int(child.stdout) < 300 * 2**20 and peak_rss() > 600 * 2**20
