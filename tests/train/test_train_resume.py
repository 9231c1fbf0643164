"""Resume: a run killed with SIGKILL after a checkpoint and resumed ends with the weights of an
uninterrupted run; and a real 2-process (gloo) run under ``accelerate launch``."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unoflux.train.trainer import train

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}  # see one_thread


def unoflux(*args: str) -> list[str]:
    return [sys.executable, "-m", "unoflux", *args]


@pytest.mark.parametrize("kind", ["text-to-image", "references", "references, cached encodings", "dreamo"])
def test_kill_9_then_resume_gives_the_weights_of_an_uninterrupted_run(
    kind, tiny_config, multi_pairs_data, dreamo_data, tmp_path
):
    # LoRA + EMA + accumulation + text dropout: every piece of state and every random draw is exercised; with
    # references (UNO Stage II data: 2-3 references per sample, batches grouped by reference sizes) as well, and
    # with the encoding cache (rebuilt on resume) and look-free captions; DreamO: its embeddings and placeholder
    # rows train too (captions with [ref#1], [ref#2]).
    paired = (
        {"data": [str(multi_pairs_data)], "batch_size": 1, "reference_long_side_multi": 16, "position_mode": "height"}
        if kind.startswith("references")
        else {}
    )
    if kind.endswith("cached encodings"):
        paired.update(cache_encodings=True, look_free_captions=0.5)
    if kind == "dreamo":
        paired = {
            "data": [str(dreamo_data)],
            "batch_size": 1,
            "reference_long_side_multi": 16,
            "method": "dreamo",
            "lora": {"rank": 4, "target_modules": "uno"},
        }
    config = tiny_config(
        output_dir=str(tmp_path / "killed"),
        max_steps=30,
        checkpoint_every=4,
        gradient_accumulation=2,
        text_dropout=0.5,
        ema={"enabled": True, "decay": 0.9},
        lr_schedule="cosine",
        warmup_steps=3,
        keep_checkpoints=2,
        **paired,
    )
    path = config.to_yaml(tmp_path / "run.yaml")
    killed = Path(config.output_dir)

    process = subprocess.Popen(
        unoflux("train", "--config", str(path)), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while not (killed / "checkpoint-4").is_dir():
        assert process.poll() is None, "the training process ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint-4 within 60 s"
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not (killed / "final").exists(), "the run finished before it was killed; the test proves nothing"

    out = subprocess.run(
        unoflux("train", "--config", str(path), "--resume"), env=ENV, check=True, capture_output=True, text=True
    ).stdout
    resumed_step = int(out.split("resumed from ")[1].split(" at step ")[1].split()[0])
    assert resumed_step >= 4 and resumed_step % 4 == 0, out
    reference = train(config.replace(output_dir=str(tmp_path / "uninterrupted")), command=[])

    resumed = load_file(killed / "final" / "pytorch_lora_weights.safetensors")
    expected = load_file(reference / "pytorch_lora_weights.safetensors")
    assert resumed.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(resumed[key], expected[key], rtol=0, atol=1e-6)  # in practice bit-identical
    if kind == "dreamo":  # the embeddings and placeholder rows (and the LoRA again, in DreamO's layout)
        resumed, expected = (
            load_file(killed / "final" / "dreamo.safetensors"),
            load_file(reference / "dreamo.safetensors"),
        )
        assert resumed.keys() == expected.keys() and "dreamo_idx_embedding.weight" in expected
        assert expected["dreamo_idx_embedding.weight"][1:3].abs().sum() > 0  # it trained: the test can tell
        for key in expected:
            torch.testing.assert_close(resumed[key], expected[key], rtol=0, atol=1e-6)
    assert sorted(p.name for p in killed.glob("checkpoint-*")) == ["checkpoint-24", "checkpoint-28"]
    with open(killed / "log.csv", newline="") as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == list(range(1, 31))  # no step lost or repeated


def test_two_processes_under_accelerate_launch(tiny_config, tmp_path):
    config = tiny_config(output_dir=str(tmp_path / "ddp"), max_steps=2, batch_size=1, checkpoint_every=1)
    path = config.to_yaml(tmp_path / "run.yaml")
    # accelerate 1.15's `--cpu` launches one process; torchrun's launcher (--multi_gpu) plus
    # ACCELERATE_USE_CPU gives a real multi-CPU (gloo) process group.
    command = [
        str(Path(sys.executable).parent / "accelerate"),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "unoflux",
        "train",
        "--config",
        str(path),
    ]
    result = subprocess.run(
        command, env={**ENV, "ACCELERATE_USE_CPU": "1"}, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    checkpoint = Path(config.output_dir) / "checkpoint-1"
    assert (checkpoint / "random_states_0.pkl").is_file() and (checkpoint / "random_states_1.pkl").is_file()
    assert (Path(config.output_dir) / "final" / "pytorch_lora_weights.safetensors").is_file()
    assert result.stdout.count("wrote ") == 1  # only the main process reports


def _logged_steps(folder: Path) -> int:
    log = folder / "log.csv"
    return max(0, len(log.read_text().splitlines()) - 1) if log.is_file() else 0


def _newest_checkpoint(folder: Path) -> int:
    return max((int(p.name.split("-")[1]) for p in folder.glob("checkpoint-*")), default=0)


@pytest.mark.slow
def test_killed_at_random_points_many_times_the_run_ends_as_an_uninterrupted_one(tiny_config, tmp_path):
    """Three SIGKILLs, each 1-6 steps (seeded random) past the previous kill, so before, on or between checkpoints,
    each followed by `--resume`: no kill loses more than one checkpoint interval, and the run ends with an
    uninterrupted run's weights and a log with every step once."""
    import random

    rng = random.Random(7)
    config = tiny_config(output_dir=str(tmp_path / "killed"), max_steps=24, checkpoint_every=4, text_dropout=0.5)
    path = config.to_yaml(tmp_path / "run.yaml")
    killed = Path(config.output_dir)
    kill_steps = []
    for _ in range(3):
        # past the previous kill: a resumed run first cuts its log back to its checkpoint, then logs again
        target = (kill_steps[-1] if kill_steps else 0) + rng.randint(1, 6)
        process = subprocess.Popen(
            unoflux("train", "--config", str(path), "--resume"),
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 90
        while process.poll() is None and _logged_steps(killed) < target:
            assert time.monotonic() < deadline, f"step {target} not reached within 90 s"
            time.sleep(0.005)
        if process.poll() is not None:
            break  # it finished first
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait() == -signal.SIGKILL
        kill_steps.append(_logged_steps(killed))
        lost = kill_steps[-1] - _newest_checkpoint(killed)
        assert 0 <= lost <= config.checkpoint_every, f"killed at step {kill_steps[-1]}: {lost} steps lost"
    assert len(kill_steps) == 3 and not (killed / "final").exists(), kill_steps
    subprocess.run(unoflux("train", "--config", str(path), "--resume"), env=ENV, check=True, capture_output=True)
    reference = train(config.replace(output_dir=str(tmp_path / "uninterrupted")), command=[])
    resumed = load_file(killed / "final" / "pytorch_lora_weights.safetensors")
    expected = load_file(reference / "pytorch_lora_weights.safetensors")
    assert resumed.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(resumed[key], expected[key], rtol=0, atol=1e-6)
    with open(killed / "log.csv", newline="") as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == list(range(1, 25))  # no step lost or repeated
