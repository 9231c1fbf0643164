"""Dataset builder: PNG images plus a JSONL manifest, sharded, resumable and byte-deterministic.

Layout of OUT:
    info.json                 the build's parameters (a rerun with other parameters is refused)
    shard_00000/              complete shards only: images and manifest.jsonl
    .tmp_shard_00001/         the shard being written; renamed when complete, so a kill loses at most it
    manifest.jsonl            all shards' records, written once every shard is complete

Every record is drawn from its own generator seeded by (seed, kind, index), so a shard's bytes do
not depend on which shards were built before it. Only training identities are ever used.

``placeholders`` (pairs and multi-pairs; DreamO, issue 22): the share of records whose ``caption`` and
``caption_without_looks`` name subject k with ``[ref#k]`` (reference k-1 of the record: both are left to right),
each record deciding from its own generator (seeded by (seed, kind, index, 22), so the rest of the record is the
bytes it is without). 0, the default, builds exactly what was built before (info.json without the field).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..files import replacing_folder
from .captions import caption, caption_scene
from .render import Rendered, render_reference, render_scene, render_two_panel
from .sampling import distinct_looks, sample_scene, sample_two_panel
from .subjects import Identity, heldout_seeds, training_identity

KINDS: tuple[str, ...] = ("scenes", "multi", "two-panel", "pairs", "multi-pairs")


@dataclass(frozen=True)
class BuildConfig:
    kind: str
    count: int
    size: int = 128
    seed: int = 0
    shard_size: int = 500
    placeholders: float = 0.0  # pairs / multi-pairs: share of records captioned with [ref#k] (DreamO)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown kind {self.kind!r}; choose from {list(KINDS)}")
        if self.count < 0 or self.shard_size < 1 or self.size < 16:
            raise ValueError(f"need count >= 0, shard_size >= 1 and size >= 16, got {self}")
        if not 0 <= self.placeholders <= 1:
            raise ValueError(f"placeholders {self.placeholders!r} must be a share in [0, 1]")
        if self.placeholders and self.kind not in ("pairs", "multi-pairs"):
            raise ValueError(f"placeholders name references; kind {self.kind!r} has none (use pairs or multi-pairs)")

    def info(self) -> dict:
        """info.json's fields; ``placeholders`` only when used, so older builds resume unchanged."""
        fields = asdict(self)
        if not self.placeholders:
            del fields["placeholders"]
        return {"format": "unoflux-world-v1", **fields}


PLACEHOLDER_STREAM = 22  # the generator of a record's placeholder draw: (seed, kind, index, 22)


def uses_placeholders(config: BuildConfig, index: int) -> bool:
    """Whether record ``index`` names its subjects with ``[ref#k]`` (probability ``config.placeholders``)."""
    if not config.placeholders:
        return False
    rng = np.random.default_rng([config.seed, KINDS.index(config.kind), index, PLACEHOLDER_STREAM])
    return bool(rng.random() < config.placeholders)


def _save(rendered: Rendered, path: Path) -> None:
    rendered.image.save(path, format="PNG", optimize=False)


def _scene_record(rendered: Rendered, spec, text: str, image_name: str) -> dict:
    return {"image": image_name, "caption": text, "spec": spec.to_dict(), **rendered.metadata()}


def _assert_training(identities: list[Identity]) -> None:
    held = heldout_seeds()
    for identity in identities:
        assert identity.seed not in held and not identity.is_heldout, (
            f"held-out identity {identity.seed} in training data"
        )


def make_record(config: BuildConfig, index: int, shard_dir: Path) -> dict:
    """Render record `index` into `shard_dir` and return its manifest record (paths relative to OUT)."""
    rng = np.random.default_rng([config.seed, KINDS.index(config.kind), index])
    stem = f"{index:08d}"
    rel = f"{shard_dir.name.removeprefix('.tmp_')}/"
    caption_seed = int(rng.integers(0, 2**31 - 1))
    record: dict = {"id": stem, "kind": config.kind}

    if config.kind == "two-panel":
        identity = training_identity(rng)
        _assert_training([identity])
        spec = sample_two_panel(rng, identity)
        rendered = render_two_panel(spec, config.size)
        _save(rendered, shard_dir / f"{stem}.png")
        return record | _scene_record(rendered, spec, caption(spec, caption_seed), rel + f"{stem}.png")

    count = {"scenes": 1, "pairs": 1}.get(config.kind) or int(rng.integers(2, 4))
    identities = distinct_looks(rng, count) if count > 1 else [training_identity(rng)]
    _assert_training(identities)
    spec = sample_scene(rng, identities)
    rendered = render_scene(spec, config.size)
    _save(rendered, shard_dir / f"{stem}.png")
    holders = uses_placeholders(config, index)
    text = caption_scene(spec, caption_seed, placeholders=True) if holders else caption(spec, caption_seed)
    record |= _scene_record(rendered, spec, text, rel + f"{stem}.png")
    if config.kind in ("pairs", "multi-pairs"):
        references = []
        for k, subject in enumerate(spec.subjects):  # in the target's left-to-right order
            ref = render_reference(subject.identity, config.size)
            name = f"{stem}_ref{k}.png"
            _save(ref, shard_dir / name)
            references.append(
                {
                    "image": rel + name,
                    "caption": caption(subject.identity, caption_seed + k + 1),
                    "box": list(ref.subjects[0].box),
                }
            )
        record["references"] = references  # reference k = spec.subjects[k] = the caption's [ref#k+1]
        record["caption_without_looks"] = caption_scene(spec, caption_seed, name_looks=False, placeholders=holders)
        if config.placeholders:
            record["placeholders"] = holders
    return record


def build_dataset(
    out: Path,
    config: BuildConfig,
    progress: bool = True,
    on_shard_done: Callable[[int], None] | None = None,
    workers: int = 1,
) -> Path:
    """Build (or resume building) the dataset in `out`; returns the path of the full manifest. With
    ``workers`` > 1, shards are rendered by that many processes (the bytes are the same: every record has
    its own generator)."""
    out.mkdir(parents=True, exist_ok=True)
    info_path = out / "info.json"
    info = config.info()
    if info_path.exists():
        existing = json.loads(info_path.read_text())
        if existing != info:
            raise ValueError(f"{out} holds a different build ({existing}); use another --out or delete it")
    else:
        info_path.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    for stale in out.glob(".tmp_shard_*"):  # a shard interrupted by a kill: redo it
        shutil.rmtree(stale)

    shard_count = -(-config.count // config.shard_size)
    todo = [s for s in range(shard_count) if not (out / f"shard_{s:05d}").is_dir()]
    bar = tqdm(
        total=config.count,
        initial=config.count - sum(_shard_len(config, s) for s in todo),
        unit="img",
        desc=f"world {config.kind}",
        disable=not progress,
    )
    if workers > 1 and len(todo) > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(min(workers, len(todo))) as pool:
            for shard in pool.imap_unordered(_build_shard, [(out, config, s) for s in todo]):
                bar.update(_shard_len(config, shard))
                if on_shard_done:
                    on_shard_done(shard)
    else:
        for shard in todo:
            _build_shard((out, config, shard), bar.update)
            if on_shard_done:
                on_shard_done(shard)
    bar.close()

    manifest = out / "manifest.jsonl"
    with open(manifest, "w") as fh:
        for shard in range(shard_count):
            fh.write((out / f"shard_{shard:05d}" / "manifest.jsonl").read_text())
    return manifest


def _build_shard(job: tuple[Path, BuildConfig, int], on_record: Callable[[int], object] | None = None) -> int:
    """Render one shard into a temporary folder, then rename it into place (a kill loses at most it)."""
    out, config, shard = job
    # the records' image paths name the shard after the temporary folder (make_record strips ".tmp_")
    with replacing_folder(out / f"shard_{shard:05d}", out / f".tmp_shard_{shard:05d}") as tmp:
        lines = []
        start = shard * config.shard_size
        for index in range(start, start + _shard_len(config, shard)):
            lines.append(json.dumps(make_record(config, index, tmp), sort_keys=True))
            if on_record:
                on_record(1)
        (tmp / "manifest.jsonl").write_text("".join(line + "\n" for line in lines))
    return shard


def _shard_len(config: BuildConfig, shard: int) -> int:
    return max(0, min(config.shard_size, config.count - shard * config.shard_size))


def read_manifest(out: Path) -> list[dict]:
    with open(out / "manifest.jsonl") as fh:
        return [json.loads(line) for line in fh if line.strip()]
