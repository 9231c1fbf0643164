"""Assemble the small FLUX-shaped model family as a diffusers FLUX folder, ready for the base training.

Steps (each skipped when its output exists, so a rerun resumes):
1. tokenizers trained on captions sampled from the world (``text.py``);
2. tiny T5 / CLIP text encoders, seeded and frozen;
3. the VAE trained on the dataset's images (``vae.py``), shift/scale calibrated, PSNR measured;
4. a freshly initialised ``FluxTransformer2DModel`` sized by :class:`FamilyConfig`;
then ``UnoFluxPipeline(...).save_pretrained(out)`` plus ``family.json`` (configs, metrics, command).
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from transformers import AutoTokenizer

from ..checkpoints.files import write_safetensors
from ..checkpoints.loading import default_device
from ..checkpoints.lora import UNO_LORA_FILE
from ..checkpoints.specs import MODEL_DEFAULTS_FILE, model_defaults, scheduler_config_for, write_model_defaults
from ..errors import UnofluxError
from ..files import replacing_folder
from ..options import SamplingOptions, typed
from .text import sample_captions, tiny_text_encoders, train_clip_tokenizer, train_t5_tokenizer
from .vae import VAETrainConfig, calibrate_and_measure, load_images_by_size, load_square_images, train_vae

# What a family folder carries beside its weights: its configs and metrics, sampling defaults, and the run
# (config and command) that trained it.
_PROVENANCE = ("family.json", MODEL_DEFAULTS_FILE, "config.yaml", "command.txt")


@dataclass
class FamilyConfig:
    seed: int = 0
    image_size: int = 64
    # Sampling defaults written to unoflux.json. Our transformers train with guidance input 1 only (not
    # guidance-distilled), so they sample at 1 and steer with classifier-free guidance against the empty prompt,
    # which text dropout trains (scale chosen with scripts/probes/guidance_sweep.py: docs/model.md).
    guidance: float = 1.0
    true_cfg: float = 3.0
    num_captions: int = 6000  # captions sampled to fit the tokenizers
    text_length: int = 64  # T5 tokens per prompt (captions use <= 48)
    clip_vocab_size: int = 600
    text_width: int = 64  # d_model of both text encoders = FLUX joint_attention_dim / pooled_projection_dim
    hidden_heads: int = 6  # transformer width = heads x head_dim
    head_dim: int = 32
    axes_dims_rope: list[int] = field(default_factory=lambda: [8, 12, 12])  # sums to head_dim
    num_double_blocks: int = 3
    num_single_blocks: int = 6
    vae: VAETrainConfig = field(default_factory=VAETrainConfig)

    def transformer_config(self) -> dict:
        return dict(
            patch_size=1,
            in_channels=64,
            num_layers=self.num_double_blocks,
            num_single_layers=self.num_single_blocks,
            attention_head_dim=self.head_dim,
            num_attention_heads=self.hidden_heads,
            joint_attention_dim=self.text_width,
            pooled_projection_dim=self.text_width,
            guidance_embeds=True,
            axes_dims_rope=list(self.axes_dims_rope),
        )


def _text_components(config: FamilyConfig, work: Path):
    t5_dir, clip_dir = work / "tokenizer_2", work / "tokenizer"
    if not (t5_dir.is_dir() and clip_dir.is_dir()):
        captions = sample_captions(config.num_captions, seed=config.seed)
        train_t5_tokenizer(captions, config.text_length).save_pretrained(t5_dir)
        train_clip_tokenizer(captions, config.clip_vocab_size).save_pretrained(clip_dir)
    t5_tokenizer, clip_tokenizer = AutoTokenizer.from_pretrained(t5_dir), AutoTokenizer.from_pretrained(clip_dir)
    t5, clip = tiny_text_encoders(t5_tokenizer, clip_tokenizer, config.text_width, config.seed)
    return t5, t5_tokenizer, clip, clip_tokenizer


def _world_images(data_dirs: list[Path]) -> list[Path]:
    """Every image of the world datasets in ``data_dirs``, in a fixed order; refuses folders without any."""
    paths = sorted(p for d in data_dirs for p in Path(d).glob("shard_*/*.png"))
    if not paths:
        raise FileNotFoundError(f"no shard_*/*.png images under {', '.join(map(str, data_dirs))}")
    return paths


def _invoking_command() -> str | None:
    """The ``unoflux ...`` command line this process runs, for the records (None from Python)."""
    return shlex.join(["unoflux", *sys.argv[1:]]) if sys.argv and "unoflux" in sys.argv[0] else None


@contextmanager
def _replacing_folder(target: Path, source: Path, provenance: tuple[str, ...]) -> Iterator[Path]:
    """Yield a scratch folder beside ``target`` holding ``source``'s ``provenance`` files; once the block has
    written the rest, it takes ``target``'s place (a crash leaves ``target`` as it was)."""
    with replacing_folder(target) as tmp:
        for name in provenance:
            if (source / name).is_file():
                shutil.copy(source / name, tmp / name)
        yield tmp


def build_family(data_dirs: list[Path], out: Path, config: FamilyConfig, work: Path | None = None) -> dict:
    """Write the untrained-transformer family to ``out`` (a diffusers folder); return its report."""
    from ..pipeline import UnoFluxPipeline

    work = work or out.with_name(out.name + ".work")
    work.mkdir(parents=True, exist_ok=True)
    t5, t5_tokenizer, clip, clip_tokenizer = _text_components(config, work)

    images = load_square_images(_world_images(data_dirs), config.image_size)
    vae: AutoencoderKL = train_vae(images, config.vae, work)
    vae_report = calibrate_and_measure(
        vae, images[torch.randperm(len(images), generator=torch.Generator().manual_seed(1))]
    )

    torch.manual_seed(config.seed)
    transformer = FluxTransformer2DModel(**config.transformer_config())
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config_for(dict(transformer.config)))
    pipe = UnoFluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=clip,
        tokenizer=clip_tokenizer,
        text_encoder_2=t5,
        tokenizer_2=t5_tokenizer,
        transformer=transformer,
    )
    pipe.save_pretrained(out)
    report = {
        "config": asdict(config),
        "data": [str(d) for d in data_dirs],
        "num_vae_images": len(images),
        "vae": vae_report,
        "parameters": {
            name: sum(p.numel() for p in getattr(pipe, name).parameters())
            for name in ("transformer", "vae", "text_encoder", "text_encoder_2")
        },
        "command": _invoking_command(),
    }
    (out / "family.json").write_text(json.dumps(report, indent=2) + "\n")
    write_model_defaults(
        out, {"image_size": config.image_size, "guidance": config.guidance, "true_cfg": config.true_cfg}
    )
    return report


def tune_vae(
    source: Path,
    data_dirs: list[Path],
    out: Path,
    config: VAETrainConfig,
    image_size: int,
    work: Path | None = None,
    measure_images: int = 512,
) -> dict:
    """Copy the family folder ``source`` to ``out`` with its VAE fine-tuned on ``data_dirs`` at ``image_size``
    (the decoder only with ``config.decoder_only``: the latent space, its normalisation and the transformer
    stay valid, so the transformer can go on training at the new size). ``unoflux.json`` gets the new
    native size, ``family.json``'s ``vae_tuning`` list one more record; a LoRA shipped in ``source`` is left out (it
    was trained at the old size). PSNR before and after on ``measure_images`` of each size. Resumable like
    ``build_family``; returns the tuning record."""
    from ..pipeline import UnoFluxPipeline

    if image_size <= 0 or image_size % 16:
        raise UnofluxError(
            f"the image size must be a positive multiple of 16 (the pipeline's token grid), got {image_size}"
        )
    source, out = Path(source), Path(out)
    work = work or out.with_name(out.name + ".work")
    groups = load_images_by_size(_world_images(data_dirs))
    if any(g.shape[-2] != image_size for g in groups):
        raise UnofluxError(f"the images under {', '.join(map(str, data_dirs))} are not all {image_size} px high")
    shuffled = [g[torch.randperm(len(g), generator=torch.Generator().manual_seed(1))] for g in groups]
    pipe = UnoFluxPipeline.from_pretrained(source, dtype=torch.float32)
    vae_shape = {
        k: pipe.vae.config[k] for k in ("layers_per_block", "norm_num_groups")
    }  # the record says what was tuned
    config = dataclasses.replace(config, block_out_channels=list(pipe.vae.config.block_out_channels), **vae_shape)
    device = default_device()  # measuring 512 images at 128 px takes minutes on a CPU

    def psnr_by_size(vae: AutoencoderKL, calibrate: bool = False) -> dict:
        # squares first: calibrating (a whole tuning changes the latent space) uses them, as build_family does
        return {
            f"{g.shape[-2]}x{g.shape[-1]}": calibrate_and_measure(vae, g, measure_images, calibrate and k == 0)[
                "psnr_db"
            ]
            for k, g in enumerate(shuffled)
        }

    before = psnr_by_size(pipe.vae.to(device))
    vae = train_vae(groups, config, work, device=device, init=pipe.vae).to(device)
    after = psnr_by_size(vae, calibrate=not config.decoder_only)
    pipe.register_modules(vae=vae.cpu())
    record = {
        "source": str(source),
        "data": [str(d) for d in data_dirs],
        "image_size": image_size,
        "num_images": sum(len(g) for g in groups),
        "config": asdict(config),
        "psnr_db_before": next(iter(before.values())),
        "psnr_db": next(iter(after.values())),
        "psnr_db_by_size_before": before,
        "psnr_db_by_size": after,
        "shift_factor": vae.config.shift_factor,
        "scaling_factor": vae.config.scaling_factor,
        "command": _invoking_command(),
    }
    with _replacing_folder(out, source, (*_PROVENANCE, "training.json")) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        unship_lora(tmp)
        report = json.loads((tmp / "family.json").read_text()) if (tmp / "family.json").is_file() else {}
        earlier = report.get("vae_tuning", [])
        report["vae_tuning"] = [
            *(earlier if isinstance(earlier, list) else [earlier]),
            record,
        ]  # every tuning, in order
        (tmp / "family.json").write_text(json.dumps(report, indent=2) + "\n")
        write_model_defaults(tmp, {**model_defaults(tmp), "image_size": image_size})
    return record


def load_family_report(folder: Path) -> dict:
    return json.loads((Path(folder) / "family.json").read_text())


__all__ = ["FamilyConfig", "build_family", "load_family_report", "tune_vae"]


def export_fp16(source: Path, target: Path, notes: dict | None = None) -> int:
    """Copy a trained family folder to ``target`` with every model in fp16 safetensors (what ships inside
    the package; ``load_pipeline`` upcasts on load). Returns the bytes written."""
    from ..pipeline import UnoFluxPipeline

    pipe = UnoFluxPipeline.from_pretrained(source, dtype=torch.float32)
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        getattr(pipe, name).to(torch.float16)
    with _replacing_folder(target, source, _PROVENANCE) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        if notes:
            (tmp / "training.json").write_text(json.dumps(notes, indent=2) + "\n")
    return sum(f.stat().st_size for f in target.rglob("*") if f.is_file())


# What ship_lora adds to a model folder: these files, and these keys of unoflux.json.
SHIPPED_LORA_FILES = (UNO_LORA_FILE, "lora_config.yaml", "lora_command.txt", "lora_training.json")
_SHIPPED_LORA_KEYS = ("lora", "reference_long_side", "lora_for")


def ship_lora(run_final: Path, model_dir: Path, notes: dict | None = None, only_with_references: bool = True) -> int:
    """Ship a reference-training run's LoRA inside a model folder, as UNO ships ``dit_lora.safetensors`` beside
    FLUX.1-dev: the XLabs file in fp16, its run's config and command, and ``unoflux.json`` naming it with the
    reference sizes it was trained at (``load_pipeline`` then applies both by default). With
    ``only_with_references`` text-only prompts keep the base (UNO applies its LoRA always; ours, trained
    with look-free captions, expects a reference). Returns the LoRA's bytes."""
    import yaml
    from safetensors.torch import load_file

    run_final, model_dir = Path(run_final), Path(model_dir)
    source = run_final / UNO_LORA_FILE
    if not source.is_file():
        raise UnofluxError(f"{str(run_final)!r} has no {UNO_LORA_FILE}; give a reference-training run's final/ folder")
    lora = {k: v.to(torch.float16) for k, v in load_file(str(source)).items()}
    path = write_safetensors(lora, model_dir / UNO_LORA_FILE)
    config = yaml.safe_load((run_final / "config.yaml").read_text())
    defaults = model_defaults(model_dir)
    defaults.update(
        lora=UNO_LORA_FILE,
        reference_long_side={
            "one": config["reference_long_side_single"],
            "several": config["reference_long_side_multi"],
        },
    )
    defaults.pop("lora_for", None)
    if only_with_references:
        defaults["lora_for"] = "references"
    write_model_defaults(model_dir, defaults)
    _, config_copy, command_copy, notes_file = SHIPPED_LORA_FILES
    shutil.copy(run_final / "config.yaml", model_dir / config_copy)
    if (run_final / "command.txt").is_file():
        shutil.copy(run_final / "command.txt", model_dir / command_copy)
    if notes:
        (model_dir / notes_file).write_text(json.dumps(notes, indent=2) + "\n")
    return path.stat().st_size


# The sampling defaults a model folder may declare in unoflux.json (read by checkpoints.loading.load_pipeline).
SAMPLING_DEFAULTS = ("guidance", "true_cfg", "time_shift", "stochasticity")


def set_sampling_defaults(model_dir: Path, **values: float | None) -> dict:
    """Write sampling defaults (``SAMPLING_DEFAULTS``) into ``model_dir``'s unoflux.json,
    keeping its other keys; a value of None removes its key (back to FLUX.1-dev's behaviour). Returns the file's
    new contents."""
    model_dir = Path(model_dir)
    if not (model_dir / "model_index.json").is_file():
        raise UnofluxError(f"{model_dir} is not a diffusers model folder (no model_index.json)")
    unknown = set(values) - set(SAMPLING_DEFAULTS)
    if unknown:
        raise UnofluxError(f"unknown sampling defaults: {', '.join(sorted(unknown))}")
    for name, value in values.items():
        if value is None:
            continue
        SamplingOptions(**{name: typed(name, value)}).validate()  # the bounds a call would check
        if name == "guidance" and not value > 0:  # a model trained at guidance 0 would not sample
            raise UnofluxError(f"guidance {value!r} must be a positive number")
    defaults = model_defaults(model_dir)
    for name, value in values.items():
        if value is None:
            defaults.pop(name, None)
        else:
            defaults[name] = float(value)
    write_model_defaults(model_dir, defaults)
    return defaults


def unship_lora(model_dir: Path) -> None:
    """Undo ``ship_lora`` in ``model_dir`` (a copy of a base folder whose transformer is being replaced: the
    LoRA it shipped does not fit the new weights)."""
    model_dir = Path(model_dir)
    for name in SHIPPED_LORA_FILES:
        (model_dir / name).unlink(missing_ok=True)
    defaults = model_defaults(model_dir)
    if "lora" in defaults:
        write_model_defaults(model_dir, {k: v for k, v in defaults.items() if k not in _SHIPPED_LORA_KEYS})
