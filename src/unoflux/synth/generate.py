"""Stage ``generate``: two-panel images (``2 * size`` x ``size``) from the prompts with a text-to-image FLUX pipeline.

Prompts go through the pipeline ``batch_size`` at a time, each with its own seed. Batches are fixed runs of the
prompt list (prompts ``[k * B, (k + 1) * B)``), and a batch a kill interrupted is generated again whole, so every
image is computed in the same batch as in an uninterrupted run and comes out with the same bytes; only its missing
records are written.
"""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from ..errors import UnofluxError
from ..images import save_png
from .config import SynthConfig
from .manifest import Manifest, read_manifest, remove_partial_files
from .prompts import PROMPTS

IMAGES = "generated.jsonl"


def load_generator(config: SynthConfig):
    """The text-to-image pipeline of ``config.model`` (None: the embedded base; environment variables ignored, so
    the config alone says which model ran)."""
    from ..checkpoints import ModelPaths, load_pipeline

    pipe = load_pipeline(ModelPaths(model=config.model), device=config.device, use_environment=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def stage_inputs(config: SynthConfig, name: str, stage: str) -> list[dict]:
    """The complete manifest ``name`` that ``stage`` reads (an earlier stage's output)."""
    path = Path(config.output_dir) / name
    if not path.is_file():
        raise UnofluxError(f"{str(path)!r} does not exist; run the stage that writes it before {stage}")
    return read_manifest(path)


def run_generate(config: SynthConfig, pipe=None, progress: bool = True) -> Path:
    """Write ``generated.jsonl`` and ``images/KEY.png``, resuming after the records already there."""
    out = Path(config.output_dir)
    prompts = stage_inputs(config, PROMPTS, "generate")
    if len(prompts) < config.count:
        raise UnofluxError(f"{out / PROMPTS} holds {len(prompts)} of {config.count} prompts; run the prompts stage")
    manifest = Manifest(out / IMAGES)
    remove_partial_files(out / "images")
    batches = [prompts[i : i + config.batch_size] for i in range(0, len(prompts), config.batch_size)]
    todo = [batch for batch in batches if any(r["key"] not in manifest for r in batch)]
    if not todo:
        return manifest.path
    pipe = pipe or load_generator(config)
    for batch in tqdm(todo, desc="generate", unit="batch", disable=not progress):
        output = pipe(
            [r["prompt"] for r in batch],
            prompt_seeds=[r["seed"] for r in batch],
            width=2 * config.size,
            height=config.size,
            steps=config.steps,
            guidance=config.guidance,
            true_cfg=config.true_cfg,
        )
        settings = {k: v for k, v in output.settings.items() if k not in ("prompt", "prompt_seeds", "seed")}
        for record, image in zip(batch, output.images, strict=True):
            if record["key"] in manifest:
                continue
            path = f"images/{record['key']}.png"
            save_png(image, out / path, {**settings, "prompt": record["prompt"], "seed": record["seed"]})
            manifest.append({**record, "image": path, "width": image.width, "height": image.height})
    return manifest.path
