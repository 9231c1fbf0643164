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


def test_placeholders_are_opt_in_per_record_and_name_references_in_order(tmp_path):
    """--placeholders 0.5: about half the records name subject k with [ref#k] (the subject of reference k-1) in
    both captions; the rest, and every image, are byte for byte the build without them, whose info.json has no
    placeholders field (older builds resume unchanged)."""
    plain_dir, holder_dir = tmp_path / "plain", tmp_path / "holders"
    build_dataset(plain_dir, BuildConfig("multi-pairs", count=6, size=32, seed=3, shard_size=6), progress=False)
    build_dataset(
        holder_dir, BuildConfig("multi-pairs", count=6, size=32, seed=3, shard_size=6, placeholders=0.5), False
    )
    assert "placeholders" not in json.loads((plain_dir / "info.json").read_text())
    assert json.loads((holder_dir / "info.json").read_text())["placeholders"] == 0.5
    plain, held = _digest(plain_dir), _digest(holder_dir)
    assert {k: v for k, v in plain.items() if k.endswith(".png")} == {
        k: v for k, v in held.items() if k.endswith(".png")
    }
    chosen = 0
    for before, after in zip(read_manifest(plain_dir), read_manifest(holder_dir)):
        flag = after.pop("placeholders")
        chosen += flag
        if not flag:
            assert after == before
            continue
        for field in ("caption", "caption_without_looks"):
            text = after[field]
            for k, subject in enumerate(after["subjects"]):
                assert text.count(f"[ref#{k + 1}]") == 1
                text = text.replace(f" [ref#{k + 1}]", "")
                if field == "caption":  # subject k = reference k: its colour names both
                    colour = subject["identity"]["colour"]
                    assert colour in after["caption"].split(f"[ref#{k + 1}]")[0].split()[-5:]
                    assert colour in after["references"][k]["caption"]
            assert text == before[field]
        assert {k: v for k, v in after.items() if not k.startswith("caption")} == {
            k: v for k, v in before.items() if not k.startswith("caption")
        }
    assert chosen == 4  # of 6 (seed 3)
    with pytest.raises(ValueError, match="kind 'scenes' has none"):
        BuildConfig("scenes", count=1, placeholders=0.5)
