"""Faults (issue 18): a batch killed with SIGKILL at random points resumes to the same files, byte for byte, as an
uninterrupted run, and never leaves a partial output; a full disk leaves no partial file and says so in one sentence.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from unoflux.errors import UnofluxError
from unoflux.generation import generate_to_files, run_batch
from unoflux.options import GenerationRequest

from .conftest import random_image

SRC = str(Path(__file__).parents[1] / "src")
ITEMS = 6


def start_batch(batch: Path, out: Path) -> subprocess.Popen:
    argv = ["generate", "--batch", str(batch), "--steps", "4", "--device", "cpu", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "unoflux", *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def finished(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())} if out.is_dir() else {}


def assert_no_partial_output(out: Path) -> None:
    """Every output there is whole (a killed write may leave only a hidden .part file, never a broken output)."""
    for path in out.iterdir():
        if path.name.startswith("."):
            assert path.name.endswith(".part"), path
        elif path.suffix == ".png":
            with Image.open(path) as image:
                image.load()
        else:
            json.loads(path.read_text())


@pytest.mark.slow
def test_a_batch_killed_at_random_points_resumes_to_the_same_files(tmp_path):
    """Three SIGKILLs at random moments of the generation (each after a new image has appeared), then a run to the
    end: the files equal an uninterrupted run's, made at the same time. About 40 s on 2 busy cores: five processes that
    each load the model."""
    refs = tmp_path / "refs"
    refs.mkdir()
    for k in range(2):
        random_image(48, 48, seed=30 + k).save(refs / f"r{k}.png")
    items = [{"prompt": f"a red ball number {i}", "image_paths": [f"refs/r{i % 2}.png"]} for i in range(ITEMS)]
    batch = tmp_path / "batch.json"
    batch.write_text(json.dumps(items))

    # the uninterrupted run goes on beside the killed ones (each process has one thread; the machine has two)
    reference = tmp_path / "uninterrupted"
    uninterrupted = start_batch(batch, reference)

    out, rng, kills = tmp_path / "killed", random.Random(18), 0
    for _ in range(3):
        before = len(list(out.glob("*.png"))) if out.is_dir() else 0
        if before == ITEMS:
            break
        process = start_batch(batch, out)
        while process.poll() is None and len(list(out.glob("*.png")) if out.is_dir() else []) <= before:
            time.sleep(0.05)
        time.sleep(rng.uniform(0, 0.8))  # somewhere in the next image or two: denoising, or writing a file
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait(timeout=60)
        assert_no_partial_output(out)
    assert kills >= 1  # (here all three land: a run takes seconds past its first new image; the last may finish)

    process = start_batch(batch, out)
    assert process.wait(timeout=600) == 0, process.stderr.read().decode()[-2000:]
    assert uninterrupted.wait(timeout=600) == 0, uninterrupted.stderr.read().decode()[-2000:]
    expected = finished(reference)
    assert sorted(expected) == sorted(f"{i}_0.{kind}" for i in range(ITEMS) for kind in ("png", "json"))
    assert finished(out) == expected  # same names (no leftovers, no .part files) and the same bytes


# ---------------------------------------------------------------------------------------------------- a full disk
@pytest.fixture
def full_disk(monkeypatch):
    """Writing a PNG gets half way, then the disk is full (what a tmpfs of the wrong size would do)."""
    real_save = Image.Image.save
    calls = []

    def save(self, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) > full_disk_after[0]:
            Path(fp).write_bytes(b"\x89PNG half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(self, fp, *args, **kwargs)

    full_disk_after = [0]
    monkeypatch.setattr(Image.Image, "save", save)
    return full_disk_after


def test_a_full_disk_leaves_no_file_and_says_so(tiny_pipe, tmp_path, full_disk):
    out = tmp_path / "out" / "x.png"
    with pytest.raises(UnofluxError) as refused:
        generate_to_files(tiny_pipe, GenerationRequest(prompt="a cat", steps=1, width=32, height=32), out, {})
    assert str(refused.value) == f"cannot write {str(out)!r} (No space left on device); nothing was written there"
    assert list(out.parent.iterdir()) == []


def test_a_full_disk_mid_batch_keeps_the_finished_pairs_and_resumes(tiny_pipe, tmp_path, full_disk, monkeypatch):
    items = [{"prompt": p, "image_paths": []} for p in ("a cat", "a dog", "a cup")]
    template = GenerationRequest(prompt="", steps=1, width=32, height=32)
    full_disk[0] = 1  # the first PNG is written, the second finds the disk full
    with pytest.raises(UnofluxError, match=r"cannot write '.*1_0\.png' \(No space left on device\)"):
        run_batch(tiny_pipe, items, template, tmp_path, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0_0.json", "0_0.png"]  # whole pairs only
    full_disk[0] = 10**6  # space again
    assert run_batch(tiny_pipe, items, template, tmp_path, {}) == (2, 1)


def test_the_cli_says_a_full_disk_in_one_line(tmp_path, capsys, full_disk, monkeypatch):
    from unoflux.cli import main

    out = tmp_path / "x.png"
    assert main(["generate", "--prompt", "a cat", "--steps", "1", "--device", "cpu", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # (after the progress bar)
    assert err == f"unoflux: error: cannot write {str(out)!r} (No space left on device); nothing was written there"
    assert list(tmp_path.iterdir()) == []


def test_a_killed_writes_leftovers_are_cleared_on_resume_and_only_this_processs(tmp_path):
    from unoflux.generation import remove_partial_writes

    for name in (".0_0.png.abc123.part", ".0_0.json.x9.part", ".1_0.png.zz.part", "notes.part"):
        (tmp_path / name).write_bytes(b"half")
    assert remove_partial_writes(tmp_path, {"0_0.png", "0_0.json"}) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [".1_0.png.zz.part", "notes.part"]  # another process's
