"""Stage ``generate``: two-panel images (``2 * size`` x ``size``) from the prompts with a text-to-image FLUX pipeline.

Prompts go through the pipeline ``batch_size`` at a time, each with its own seed. Batches are fixed runs of the
prompt list (prompts ``[k * B, (k + 1) * B)``), and a batch a kill interrupted is generated again whole, so every
image is computed in the same batch as in an uninterrupted run and comes out with the same bytes; only its missing
records are written.

Under ``accelerate launch`` / ``torchrun`` process ``r`` of ``n`` takes batches ``k`` with ``k % n == r`` and appends
to its own ``generated.shard-r-of-n.jsonl``; once all are done the main process merges every shard (and what an
earlier run with another process count left) into ``generated.jsonl`` in prompt order, so the manifest does not
depend on how many processes made it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..errors import UnofluxError
from ..generation import remove_partial_writes
from ..images import atomic_write, save_png
from .config import SynthConfig
from .manifest import Manifest, manifest_line, read_manifest
from .prompts import PROMPTS

IMAGES = "generated.jsonl"


@dataclass(frozen=True)
class Share:
    """This process's share of a multi-process run: ``index`` of ``count``; ``state`` is accelerate's
    ``PartialState`` when ``count > 1`` (for its barrier), ``device`` the process's device (None: the config's)."""

    index: int = 0
    count: int = 1
    device: str | None = None
    state: Any = None

    def wait(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()


def load_generator(config: SynthConfig, device: str | None = None):
    """The text-to-image pipeline of ``config.model`` (None: the embedded base; environment variables ignored, so
    the config alone says which model ran)."""
    from ..checkpoints import ModelPaths, load_pipeline

    pipe = load_pipeline(ModelPaths(model=config.model), device=device or config.device, use_environment=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def stage_inputs(config: SynthConfig, name: str, stage: str) -> list[dict]:
    """The complete manifest ``name`` that ``stage`` reads (an earlier stage's output)."""
    path = Path(config.output_dir) / name
    if not path.is_file():
        raise UnofluxError(f"{str(path)!r} does not exist; run the stage that writes it before {stage}")
    return read_manifest(path)


def _shards(out: Path) -> list[Path]:
    return sorted(out.glob("generated.shard-*.jsonl"))


def _done_keys(out: Path) -> set[str]:
    """Keys finished by any process of this or an earlier run (other processes' files are only read)."""
    files = [p for p in [out / IMAGES, *_shards(out)] if p.is_file()]
    return {r["key"] for path in files for r in read_manifest(path)}


def merge_shards(out: Path) -> None:
    """Fold every shard manifest into ``generated.jsonl`` (one record per key, prompt order), then delete them; a
    kill in between leaves both, and the next merge gives the same file."""
    shards = _shards(out)
    if not shards:
        return
    records = {}
    for path in [p for p in [out / IMAGES, *shards] if p.is_file()]:
        records.update({r["key"]: r for r in read_manifest(path)})
    lines = "".join(manifest_line(r) for r in sorted(records.values(), key=lambda r: r["index"]))
    atomic_write(out / IMAGES, lambda tmp: Path(tmp).write_text(lines, encoding="utf-8"))
    for path in shards:
        path.unlink()


def draw_batch(pipe, config: SynthConfig, batch: list[dict], width: int, done: set[str], folder: str):
    """Draw one fixed batch of prompt records (each its own seed) at ``width`` x ``config.size``; save the images of
    the records not in ``done`` as ``folder/KEY.png`` (with their sampling settings) and yield ``(record, path)``."""
    output = pipe(
        [r["prompt"] for r in batch],
        prompt_seeds=[r["seed"] for r in batch],
        width=width,
        height=config.size,
        steps=config.steps,
        guidance=config.guidance,
        true_cfg=config.true_cfg,
    )
    settings = {k: v for k, v in output.settings.items() if k not in ("prompt", "prompt_seeds", "seed")}
    for record, image in zip(batch, output.images, strict=True):
        if record["key"] not in done:
            path = f"{folder}/{record['key']}.png"
            save_png(
                image, Path(config.output_dir) / path, {**settings, "prompt": record["prompt"], "seed": record["seed"]}
            )
            yield record, path


def run_generate(config: SynthConfig, pipe=None, progress: bool = True, share: Share | None = None) -> Path:
    """Write ``generated.jsonl`` and ``images/KEY.png``, resuming after the records already there."""
    share = share or Share()
    out = Path(config.output_dir)
    prompts = stage_inputs(config, PROMPTS, "generate")
    if len(prompts) < config.count:
        raise UnofluxError(f"{out / PROMPTS} holds {len(prompts)} of {config.count} prompts; run the prompts stage")
    name = IMAGES if share.count == 1 else f"generated.shard-{share.index}-of-{share.count}.jsonl"
    manifest = Manifest(out / name)  # opened first: it cuts this process's own torn line
    done = _done_keys(out)
    batches = [prompts[i : i + config.batch_size] for i in range(0, len(prompts), config.batch_size)]
    mine = [batch for k, batch in enumerate(batches) if k % share.count == share.index]
    todo = [batch for batch in mine if any(r["key"] not in done for r in batch)]
    remove_partial_writes(out / "images", {f"{r['key']}.png" for batch in todo for r in batch})
    if todo:
        pipe = pipe or load_generator(config, share.device)
    desc = "generate" if share.count == 1 else f"generate (process {share.index + 1}/{share.count})"
    for batch in tqdm(todo, desc=desc, unit="batch", disable=not progress):
        for record, path in draw_batch(pipe, config, batch, 2 * config.size, done, "images"):
            manifest.append({**record, "image": path, "width": 2 * config.size, "height": config.size})
            done.add(record["key"])
    share.wait()  # every process outside any `if`: all reach the barrier
    if share.index == 0:
        merge_shards(out)
    share.wait()
    return out / IMAGES
