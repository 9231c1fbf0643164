import hashlib
import json
from pathlib import Path

import pytest

from unoflux.world import heldout_seeds
from unoflux.world.build import BuildConfig, build_dataset, read_manifest
from unoflux.world.raster import rle_decode


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("kind", ["scenes", "multi", "two-panel", "pairs", "multi-pairs"])
def test_every_kind_builds_complete_records(tmp_path, kind):
    manifest = build_dataset(tmp_path, BuildConfig(kind, count=3, size=48, seed=1, shard_size=2), progress=False)
    records = read_manifest(tmp_path)
    assert manifest.exists() and len(records) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["info.json", "manifest.jsonl", "shard_00000", "shard_00001"]
    for record in records:
        assert (tmp_path / record["image"]).is_file() and record["caption"]
        for subject in record["subjects"]:
            assert subject["identity"]["seed"] not in heldout_seeds()
            assert rle_decode(subject["mask_rle"]).shape == (record["height"], record["width"])
        if kind.endswith("pairs"):
            assert len(record["references"]) == len(record["subjects"])
            assert all((tmp_path / r["image"]).is_file() for r in record["references"])
            assert record["caption_without_looks"] and record["caption_without_looks"] != record["caption"]


def test_build_is_byte_deterministic(tmp_path):
    config = BuildConfig("pairs", count=4, size=32, seed=7, shard_size=3)
    build_dataset(tmp_path / "a", config, progress=False)
    build_dataset(tmp_path / "b", config, progress=False)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")


def test_parallel_build_writes_the_same_bytes(tmp_path):
    config = BuildConfig("multi-pairs", count=5, size=32, seed=2, shard_size=2)
    build_dataset(tmp_path / "serial", config, progress=False)
    build_dataset(tmp_path / "parallel", config, progress=False, workers=2)
    assert _digest(tmp_path / "serial") == _digest(tmp_path / "parallel")


def test_resume_skips_done_shards_and_redoes_an_interrupted_one(tmp_path):
    config = BuildConfig("scenes", count=5, size=32, seed=3, shard_size=2)
    build_dataset(tmp_path / "ref", config, progress=False)
    out = tmp_path / "run"

    class Killed(Exception):
        pass

    def kill_after_first(shard: int) -> None:
        raise Killed

    with pytest.raises(Killed):
        build_dataset(out, config, progress=False, on_shard_done=kill_after_first)
    (out / ".tmp_shard_00001").mkdir()  # a half-written shard left behind by the kill
    (out / ".tmp_shard_00001" / "00000002.png").write_bytes(b"partial")
    first_shard = (out / "shard_00000" / "manifest.jsonl").stat().st_mtime_ns

    built = []
    build_dataset(out, config, progress=False, on_shard_done=built.append)
    assert built == [1, 2]
    assert (out / "shard_00000" / "manifest.jsonl").stat().st_mtime_ns == first_shard
    assert _digest(out) == _digest(tmp_path / "ref")


def test_rerun_with_other_parameters_is_refused(tmp_path):
    build_dataset(tmp_path, BuildConfig("scenes", count=1, size=32), progress=False)
    with pytest.raises(ValueError, match="different build"):
        build_dataset(tmp_path, BuildConfig("scenes", count=2, size=32), progress=False)


def test_manifest_records_are_json_with_full_specs(tmp_path):
    build_dataset(tmp_path, BuildConfig("two-panel", count=1, size=32), progress=False)
    line = (tmp_path / "manifest.jsonl").read_text().splitlines()[0]
    record = json.loads(line)
    assert record["spec"]["type"] == "two_panel" and record["width"] == 64
