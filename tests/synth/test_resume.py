"""kill -9 in the middle of `unoflux synth --stage generate` (and of each filter), then a re-run: the same manifest
and the same image bytes as an uninterrupted run, no record lost or duplicated."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from unoflux.synth import SynthConfig, read_manifest

from .test_vlm import ScriptedServer, _survivors

COUNT = 12


def _config(root: Path, name: str) -> Path:
    path = root / f"{name}.yaml"
    values = {"output_dir": str(root / name), "count": COUNT, "size": 64, "steps": 2, "batch_size": 2}
    path.write_text(yaml.safe_dump(values))
    return path


def _synth(config: Path, *stages: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    argv = [sys.executable, "-m", "unoflux", "synth", str(config), "--quiet"]
    return subprocess.Popen([*argv, *stages], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.is_file() else 0


def _finish(process: subprocess.Popen) -> None:
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err.decode()[-2000:]


def _kill_after(process: subprocess.Popen, manifest: Path, what: str, total: int = COUNT) -> int:
    """SIGKILL ``process`` once ``manifest`` holds three of its ``total`` records; the lines written by then."""
    deadline = time.monotonic() + 90
    while _lines(manifest) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, f"the {what} ended before it could be killed mid-run"
    written = _lines(manifest)
    assert 3 <= written < total, f"the {what} wrote {written} of {total} records before the kill"
    return written


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """One uninterrupted run of prompts -> generate -> split -> filter-similarity (the embedded model, in a
    subprocess), the folder the kill tests below compare with (they write their own folders, never this one)."""
    root = tmp_path_factory.mktemp("uninterrupted")
    _finish(
        _synth(_config(root, "whole"), *(f"--stage={s}" for s in ("prompts", "generate", "split", "filter-similarity")))
    )
    return root / "whole"


@pytest.mark.slow  # three subprocesses of the embedded model (and the shared uninterrupted run): ~35 s on 2 cores
def test_generate_killed_mid_run_resumes_to_the_uninterrupted_manifest(tmp_path, uninterrupted):
    killed_config = _config(tmp_path, "killed")
    _finish(_synth(killed_config, "--stage", "prompts"))

    manifest = tmp_path / "killed" / "generated.jsonl"
    _kill_after(_synth(killed_config, "--stage", "generate"), manifest, "generation")
    with open(manifest, "ab") as f:  # and a torn line, as a kill inside the write would leave
        f.write(b'{"key": "0000')

    _finish(_synth(killed_config, "--stage", "generate"))

    for name in ("prompts.jsonl", "generated.jsonl"):
        assert (tmp_path / "killed" / name).read_bytes() == (uninterrupted / name).read_bytes(), name
    records = read_manifest(manifest)
    assert [r["key"] for r in records] == [f"{i:06d}" for i in range(COUNT)]
    for record in records:
        image = record["image"]
        assert (tmp_path / "killed" / image).read_bytes() == (uninterrupted / image).read_bytes(), image
    assert not list((tmp_path / "killed").rglob("*.part"))  # no temporary file left behind as an output


@pytest.mark.slow  # two torchrun processes of the embedded model (and the shared uninterrupted run): ~30 s
def test_two_processes_share_generate_and_merge_to_the_one_process_manifest(tmp_path, uninterrupted):
    config = _config(tmp_path, "sharded")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    torchrun = Path(sys.executable).with_name("torchrun")
    argv = [str(torchrun), "--nproc_per_node", "2", "-m", "unoflux", "synth", str(config), "--quiet"]
    result = subprocess.run(
        [*argv, "--stage", "prompts", "--stage", "generate"], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    sharded, whole = tmp_path / "sharded", uninterrupted
    assert not list(sharded.glob("generated.shard-*"))  # merged, then removed
    assert (sharded / "generated.jsonl").read_bytes() == (whole / "generated.jsonl").read_bytes()
    for record in read_manifest(whole / "generated.jsonl"):
        image = record["image"]
        assert (sharded / image).read_bytes() == (whole / image).read_bytes(), image


@pytest.mark.slow  # the checker's filter killed and resumed on the shared run's split pairs: ~20 s on 2 cores
def test_filter_killed_mid_run_resumes_to_the_uninterrupted_manifest(tmp_path, uninterrupted):
    config = _config(tmp_path, "killed")
    shutil.copytree(uninterrupted, tmp_path / "killed", ignore=shutil.ignore_patterns("filtered.jsonl"))

    manifest = tmp_path / "killed" / "filtered.jsonl"
    _kill_after(_synth(config, "--stage", "filter-similarity"), manifest, "filter")
    _finish(_synth(config, "--stage", "filter-similarity"))
    assert manifest.read_bytes() == (uninterrupted / "filtered.jsonl").read_bytes()
    assert [r["key"] for r in read_manifest(manifest)] == [f"{i:06d}" for i in range(COUNT)]


def test_vlm_filter_killed_mid_run_resumes_to_the_uninterrupted_manifest(tmp_path):
    """The HTTP backend against a loopback server whose reply depends only on the pair (as a greedy VLM's does),
    slowed down so that the kill lands mid-run: ~4 s."""
    server = ScriptedServer([("digest", 0.25)])
    try:
        values = {"count": COUNT, "batch_size": 2, "vlm": "http", "vlm_url": server.url, "vlm_model": "judge"}
        config = SynthConfig(output_dir=str(tmp_path / "killed"), **values)
        _survivors(config, rejected={4})
        shutil.copytree(tmp_path / "killed", tmp_path / "whole")
        paths = {}
        for name in ("killed", "whole"):
            paths[name] = tmp_path / f"{name}.yaml"
            paths[name].write_text(yaml.safe_dump(config.replace(output_dir=str(tmp_path / name)).to_dict()))
        reference = _synth(paths["whole"], "--stage", "filter-vlm")
        manifest = tmp_path / "killed" / "vlm.jsonl"
        _kill_after(_synth(paths["killed"], "--stage", "filter-vlm"), manifest, "VLM filter", total=COUNT - 1)
        with open(manifest, "ab") as f:  # and a torn line, as a kill inside the write would leave
            f.write(b'{"key": "0000')
        _finish(_synth(paths["killed"], "--stage", "filter-vlm"))
        _finish(reference)
    finally:
        server.close()
    assert manifest.read_bytes() == (tmp_path / "whole" / "vlm.jsonl").read_bytes()
    records = read_manifest(manifest)
    assert [r["index"] for r in records] == [i for i in range(COUNT) if i != 4]
    assert len({r["vlm_score"] for r in records}) >= 3 and all(r["error"] is None for r in records)


@pytest.mark.slow  # the embedded model in three subprocesses (targets, then Stage-I references): ~60 s on 2 cores
def test_multi_subject_killed_mid_run_resumes_to_the_uninterrupted_manifest(tmp_path):
    paths = {}
    for name in ("whole", "killed"):
        paths[name] = tmp_path / f"{name}.yaml"
        values = {"output_dir": str(tmp_path / name), "count": 1, "size": 64, "steps": 2, "batch_size": 2}
        paths[name].write_text(yaml.safe_dump({**values, "multi_count": 6, "multi_sizes": [2]}))
    reference = _synth(paths["whole"], "--stage", "multi-subject")
    manifest = tmp_path / "killed" / "multi.jsonl"
    _kill_after(_synth(paths["killed"], "--stage", "multi-subject"), manifest, "multi-subject stage", total=6)
    with open(manifest, "ab") as f:  # and a torn line, as a kill inside the write would leave
        f.write(b'{"key": "m0000')
    _finish(_synth(paths["killed"], "--stage", "multi-subject"))
    _finish(reference)
    for name in ("multi_targets.jsonl", "multi.jsonl", "multi_pairs.json", "multi_pairs_cropped.json"):
        assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    records = read_manifest(manifest)
    assert [r["key"] for r in records] == [f"m{i:06d}" for i in range(6)]
    for record in records:
        for ref in record["references"]:
            for part in ("crop", "regenerated", "reference"):
                path = ref[part]
                assert (tmp_path / "killed" / path).read_bytes() == (tmp_path / "whole" / path).read_bytes(), path
    assert not list((tmp_path / "killed").rglob("*.part"))
