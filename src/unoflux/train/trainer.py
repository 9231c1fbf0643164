"""The training loop of a FLUX transformer (full or LoRA) on ``accelerate``: text-to-image, or with reference images
(UNO Stage I / II). :class:`Trainer` builds the pipeline, data, optimizer and :class:`~.objective.FlowObjective` from
a :class:`TrainConfig`, then steps, logs, validates, checkpoints and saves; the loss itself is in ``objective.py``,
the LoRA in ``lora.py``, checkpoints and the EMA swap in ``checkpointing.py``.

With ``cache_encodings`` the VAE and text-encoder outputs come from :class:`~.cache.EncodingCache`, built once
before step 1; batches then carry sample indices and the step is otherwise the same.

Determinism: every random draw of a step (text dropout, t, noise) comes from a CPU generator seeded by
(seed, step, micro-step, rank), the data order is a function of (seed, epoch) and the data position is
checkpointed, so a run resumed from a checkpoint ends with the same weights as an uninterrupted one.

Outputs in ``output_dir``: ``config.yaml`` and ``command.txt``; ``log.csv`` (and TensorBoard events when
``tensorboard`` is installed); ``checkpoint-{step}/`` (written to a temporary name, then renamed);
``validation/step-{step}.png``; ``final/`` (a diffusers pipeline folder in full mode, or
``pytorch_lora_weights.safetensors`` in LoRA mode, plus UNO's ``dit_lora.safetensors`` when the LoRA fits
the XLabs layout, or for ``method: dreamo`` DreamO's ``dreamo.safetensors``; with the config and command).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import importlib.util
import math
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, broadcast, set_seed
from tqdm import tqdm

from .. import flow
from ..checkpoints.dreamo import MAIN_FILE as DREAMO_FILE
from ..checkpoints.dreamo import TRAINED_METADATA
from ..checkpoints.lora import UNO_LORA_FILE
from ..errors import UnofluxError
from ..files import replacing_folder
from ..methods import get_method
from ..methods.dreamo import DreamOMethod
from .cache import EncodingCache
from .checkpointing import ema_weights, load_checkpoint, resolve_resume, save_checkpoint
from .config import TrainConfig
from .data import (
    BucketDataset,
    PairedDataset,
    SampleIndices,
    TrainData,
    data_has_references,
    read_paired_samples,
    read_samples,
)
from .dreamo import DreamOModel, add_trainable_placeholders, dreamo_file_tensors, load_init_parts, sync_t5_rows
from .lora import LORA_FILE, add_lora, checkpoint_lora_only, export_lora_state_dict, load_init_lora
from .objective import FlowObjective, TransformerWithTextEncoder, text_as_ids, text_length


# ------------------------------------------------------------------------------------------ helpers
def step_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    """The CPU generator of one micro-step: its draws depend on nothing but these four numbers."""
    state = np.random.SeedSequence([seed, step, micro, rank]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def image_grid(images: list, columns: int):
    from PIL import Image

    rows = math.ceil(len(images) / columns)
    w, h = images[0].size
    grid = Image.new("RGB", (columns * w, rows * h), "white")
    for i, image in enumerate(images):
        grid.paste(image, ((i % columns) * w, (i // columns) * h))
    return grid


class CsvLog:
    """``log.csv``: one row per logged step; on resume rows after the resumed step are dropped. ``extra`` fields
    follow the standard ones (DreamO's ``routing_loss``)."""

    FIELDS = ("step", "loss", "grad_norm", "lr", "it_per_s")

    def __init__(self, path: Path, resume_step: int, extra: tuple[str, ...] = ()):
        self.path = path
        self.FIELDS = (*self.FIELDS, *extra)
        rows = []
        if path.is_file() and resume_step > 0:
            with open(path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= resume_step]
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, self.FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    def write(self, **row) -> None:
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, self.FIELDS).writerow(row)


# ------------------------------------------------------------------------------------------ trainer
class Trainer:
    """Builds everything from a :class:`TrainConfig`; :meth:`train` runs (or resumes) it."""

    def __init__(self, config: TrainConfig, command: list[str] | None = None):
        self.started = time.monotonic()  # max_minutes counts from here
        self.config = config
        self.command = command if command is not None else [sys.executable, *sys.argv]
        self.output_dir = Path(config.output_dir)
        self.accelerator = Accelerator(
            mixed_precision=config.mixed_precision,
            # max_steps counts global updates: step the LR schedule once per update, not once per process
            step_scheduler_with_optimizer=False,
            project_config=ProjectConfiguration(project_dir=str(self.output_dir)),
        )
        set_seed(config.seed)  # model init (LoRA weights) is the same on every process
        self.pipe = self._load_pipeline()
        self.transformer = self.pipe.transformer
        # what the optimizer trains: the transformer (or its LoRA), with the T5 encoder when train_text_encoder,
        # with DreamO's embeddings and placeholder rows for method dreamo
        self.dreamo = None
        if config.method == "dreamo":
            self.dreamo = add_trainable_placeholders(self.pipe, config.dreamo.train_placeholders).to(
                self.accelerator.device
            )
            if config.init_lora:  # Stage II from Stage I: its embeddings and rows too, when it was a DreamO run
                found = load_init_parts(self.dreamo, config.init_lora)
                self.accelerator.print(
                    f"DreamO parts from {found}" if found else "no DreamO parts beside init_lora: fresh ones"
                )
            trained = DreamOModel(self.transformer, self.pipe.text_encoder_2, self.dreamo)
            # the inference method itself, on the trainable embeddings: one conditioning code path
            self.method = DreamOMethod(embeddings=self.dreamo.embeddings)
        else:
            trained = (
                TransformerWithTextEncoder(self.transformer, self.pipe.text_encoder_2)
                if config.train_text_encoder
                else self.transformer
            )
            self.method = get_method(config.method)  # how references become conditioning, as at inference

        acc = self.accelerator
        self.references = config.references if config.references is not None else data_has_references(config.data)
        if self.references:  # samples of a batch share the target bucket and every reference size
            resize = self.method.resize_reference  # the method's, as at inference (DreamO: area, not long side)
            dataset = PairedDataset(
                read_paired_samples(config.data, config.reference_long_side, resize),
                config.bucket_sizes,
                config.reference_long_side,
                resize,
            )
        else:
            dataset = BucketDataset(read_samples(config.data), config.bucket_sizes)
        self.samples = dataset.samples
        self.cache, workers = None, config.num_workers
        if config.cache_encodings:  # every process encodes the whole dataset once; batches then carry indices
            self.cache = EncodingCache.build(
                self.pipe,
                dataset,
                acc.device,
                text_length(config, self.pipe),
                look_free=self.references and config.look_free_captions > 0,
                num_workers=config.num_workers,
                progress=acc.is_main_process,
                t5_ids=text_as_ids(config),
                method=self.method,
            )
            dataset, workers = SampleIndices(dataset), 0
        self.data = TrainData(dataset, config.batch_size, config.seed, acc.process_index, acc.num_processes, workers)

        params = [p for p in trained.parameters() if p.requires_grad]
        self.ema = None
        if config.ema.enabled:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(params, decay=config.ema.decay)
        optimizer = torch.optim.AdamW(
            params,
            lr=config.learning_rate,
            betas=(config.adam_beta1, config.adam_beta2),
            eps=config.adam_epsilon,
            weight_decay=config.weight_decay,
        )
        from diffusers.optimization import get_scheduler

        scheduler = get_scheduler(
            config.lr_schedule,
            optimizer,
            num_warmup_steps=config.warmup_steps,
            num_training_steps=config.lr_schedule_steps or config.max_steps,
        )
        self.model, self.optimizer, self.lr_scheduler = acc.prepare(trained, optimizer, scheduler)
        if self.ema is not None:
            self.ema.to(acc.device)
            acc.register_for_checkpointing(self.ema)
        if config.mode == "lora":
            checkpoint_lora_only(acc)
        shift = flow.ShiftConfig.from_scheduler_config(self.pipe.scheduler.config)
        self.objective = FlowObjective(
            self.pipe,
            self.model,
            self.transformer,
            self.method,
            config,
            shift,
            acc.device,
            acc.autocast,
            references=self.references,
            first_placeholder=self.dreamo.first_placeholder if self.dreamo is not None else None,
        )
        self.step = 0
        self.grad_norm = math.nan  # of the last update, before clipping
        self.routing_loss = math.nan  # DreamO's routing constraint in the last update (unweighted)
        self.holder_loss = math.nan  # and its placeholder loss

    # ----------------------------------------------------------------------------------- building
    def _load_pipeline(self):
        from ..checkpoints import ModelPaths, load_pipeline

        cfg = self.config
        device = str(self.accelerator.device)
        # Frozen weights (text encoders; the base under a LoRA) may live in bf16; trained ones stay fp32 (the
        # optimizer's master copy) and autocast runs the forward in bf16. The VAE is fp32 as in inference.
        frozen_dtype = torch.bfloat16 if cfg.mixed_precision == "bf16" else torch.float32
        # The base alone: a LoRA the model folder ships (the embedded model's) is not what we train from.
        pipe = load_pipeline(
            ModelPaths(model=cfg.model), device=device, dtype=frozen_dtype, use_environment=False, model_lora=False
        )
        pipe.set_progress_bar_config(disable=True)
        for frozen in (pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
            frozen.requires_grad_(False).eval()
        if cfg.train_text_encoder:  # kept in eval mode: T5's dropout would draw from the global RNG
            pipe.text_encoder_2.to(torch.float32).requires_grad_(True)
        transformer = pipe.transformer
        transformer.train()
        if cfg.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        if cfg.mode == "lora":
            add_lora(transformer, cfg)
            for param in transformer.parameters():
                if param.requires_grad:
                    param.data = param.data.float()
            if cfg.init_lora:  # a resumed run then overwrites it with its checkpoint's LoRA
                load_init_lora(transformer, cfg.init_lora)
        else:
            transformer.to(torch.float32).requires_grad_(True)
        return pipe

    def _model_dir(self) -> Path:
        from ..checkpoints.specs import EMBEDDED_MODEL_DIR

        return Path(self.config.model) if self.config.model else EMBEDDED_MODEL_DIR

    # --------------------------------------------------------------------------------------- step
    def train_step(self, batches) -> float:
        """One optimizer update over ``gradient_accumulation`` micro-batches; returns the mean loss."""
        acc, cfg = self.accelerator, self.config
        total = 0.0
        routing = torch.zeros(2, device=acc.device)  # the routing constraint's sum and count over micro-steps
        holder = torch.zeros(2, device=acc.device)  # the placeholder loss's
        for micro in range(cfg.gradient_accumulation):
            batch = next(batches)
            gen = step_generator(cfg.seed, self.step, micro, acc.process_index)
            last = micro == cfg.gradient_accumulation - 1
            with contextlib.nullcontext() if last else acc.no_sync(self.model):
                if self.cache is not None:  # batches are sample indices
                    loss = self.objective.cached_loss(self.cache, self.samples, batch, gen)
                else:
                    loss = self.objective.loss(batch, gen)
                loss = loss / cfg.gradient_accumulation
                acc.backward(loss)
            total += loss.detach()
            for value, sums in ((self.objective.last_routing, routing), (self.objective.last_holder, holder)):
                if value is not None:
                    sums += torch.stack([value, torch.ones_like(value)])
        # (unweighted; NaN for a step none of whose samples had masks / placeholders)
        if cfg.dreamo.routing_weight:
            routing = acc.reduce(routing, "sum")
            self.routing_loss = (routing[0] / routing[1]).item() if routing[1] else math.nan
        if cfg.dreamo.holder_weight:
            holder = acc.reduce(holder, "sum")
            self.holder_loss = (holder[0] / holder[1]).item() if holder[1] else math.nan
        trained = [p for p in self.model.parameters() if p.requires_grad]
        # the norm before clipping (the gradients are already reduced across processes)
        self.grad_norm = torch.nn.utils.get_total_norm([p.grad for p in trained if p.grad is not None]).item()
        if cfg.max_grad_norm is not None:
            acc.clip_grad_norm_(trained, cfg.max_grad_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.step([p for p in self.model.parameters() if p.requires_grad])
        self.step += 1
        return acc.reduce(total.reshape(1), "mean").item()

    # ----------------------------------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self) -> Path | None:
        """A grid of images for the validation prompts, same seeds every time (EMA weights if enabled)."""
        acc, v = self.accelerator, self.config.validation
        if not acc.is_main_process:
            return None
        params = [p for p in self.accelerator.unwrap_model(self.model).parameters() if p.requires_grad]
        cfg = self.config
        with ema_weights(self.ema, params):
            if self.dreamo is not None:  # the pipeline encodes prompts with T5's own table
                sync_t5_rows(self.pipe, self.dreamo)
            self.transformer.eval()
            try:
                images = []
                for i, prompt in enumerate(v.prompts):
                    refs = v.references[i] if v.references else []
                    images.append(
                        self.pipe(
                            prompt,
                            reference_images=refs,
                            width=v.width,
                            height=v.height,
                            num_inference_steps=v.steps,
                            guidance_scale=v.guidance,
                            true_cfg_scale=v.true_cfg,
                            seed=v.seed,
                            position_mode=cfg.position_mode,
                            method=self.method,
                            reference_long_side=cfg.reference_long_side(len(refs)) if refs else None,
                        ).images[0]
                    )
            finally:
                self.transformer.train()
        path = self.output_dir / "validation" / f"step-{self.step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image_grid(images, columns=min(4, len(images))).save(path)
        return path

    # ----------------------------------------------------------------------------------- final save
    def save_final(self) -> Path:
        """``final/``: the pipeline folder (full) or the LoRA file (lora), with config.yaml and command.txt."""
        acc = self.accelerator
        acc.wait_for_everyone()
        final = self.output_dir / "final"
        if acc.is_main_process:
            with replacing_folder(final, self.output_dir / ".tmp-final") as tmp:
                self._save_weights(tmp)
                self._write_provenance(tmp)
        acc.wait_for_everyone()
        return final

    def _save_weights(self, folder: Path) -> None:
        """The trained weights into ``folder``: the EMA's averages when enabled (what ships)."""
        model = self.accelerator.unwrap_model(self.model)
        with ema_weights(self.ema, [p for p in model.parameters() if p.requires_grad]):
            if self.config.mode == "lora":
                lora = export_lora_state_dict(self.transformer)
                self.pipe.save_lora_weights(
                    str(folder), transformer_lora_layers=lora, weight_name=LORA_FILE, safe_serialization=True
                )
                if self.dreamo is not None:
                    self._save_dreamo(lora, folder / DREAMO_FILE)
                else:
                    self._save_uno_lora(lora, self.transformer, folder / UNO_LORA_FILE)
                return
            # full: the base folder with the new transformer (and T5); frozen components are copied as they were
            from ..family.build import unship_lora

            trained = {"transformer": model}
            if self.config.train_text_encoder:
                trained = {"transformer": model.transformer, "text_encoder_2": model.text_encoder}
            base = self._model_dir()
            shutil.copytree(
                base,
                folder,
                dirs_exist_ok=True,
                ignore=lambda copied, names: list(trained) if Path(copied) == base else [],
            )
            unship_lora(folder)  # a LoRA the base folder shipped does not fit the new transformer
            for name, module in trained.items():
                module.save_pretrained(str(folder / name), safe_serialization=True)

    def _save_uno_lora(self, lora: dict[str, torch.Tensor], model: torch.nn.Module, path: Path) -> Path | None:
        """UNO's ``dit_lora.safetensors`` (XLabs layout) beside the diffusers file, when the LoRA fits it."""
        from ..checkpoints.files import write_safetensors
        from ..checkpoints.lora import to_xlabs_lora

        try:
            xlabs = to_xlabs_lora(lora, model)
        except UnofluxError as err:
            self.accelerator.print(f"no {UNO_LORA_FILE}: {err}")
            return None
        rank = next(iter(xlabs.values())).shape[0]
        return write_safetensors(xlabs, path, metadata={"format": "xlabs", "lora_rank": rank})

    def _save_dreamo(self, lora: dict[str, torch.Tensor], path: Path) -> Path:
        """DreamO's ``dreamo.safetensors`` (its LoRA layout and embeddings), loadable with ``--dreamo FOLDER``."""
        from ..checkpoints.files import write_safetensors
        from ..checkpoints.lora import to_xlabs_lora

        sync_t5_rows(self.pipe, self.dreamo)  # (the pipeline object stays consistent with the file)
        tensors = dreamo_file_tensors(self.dreamo, to_xlabs_lora(lora, self.transformer))
        return write_safetensors(tensors, path, metadata=TRAINED_METADATA)

    def _write_provenance(self, folder: Path) -> None:
        self.config.to_yaml(folder / "config.yaml")
        (folder / "command.txt").write_text(shlex.join(self.command) + "\n")

    # ----------------------------------------------------------------------------------- loop
    def out_of_time(self) -> bool:
        """Whether ``max_minutes`` has run out (decided on the main process, so every process stops together)."""
        if self.config.max_minutes is None:
            return False
        late = time.monotonic() - self.started > 60 * self.config.max_minutes
        acc = self.accelerator
        if acc.num_processes > 1:  # one process's clock decides; a tensor only when there is someone to tell
            late = bool(broadcast(torch.tensor(float(late), device=acc.device), from_process=0).item())
        return late

    def end_early(self) -> None:
        """Make the config say what ran: ``max_steps`` = the step reached, on the schedule it followed."""
        cfg = self.config
        self.accelerator.print(
            f"max_minutes ({cfg.max_minutes:g}) ran out: the run ends at step {self.step} of {cfg.max_steps}"
        )
        self.config = dataclasses.replace(
            cfg, max_steps=self.step, max_minutes=None, lr_schedule_steps=cfg.lr_schedule_steps or cfg.max_steps
        )

    def train(self, resume: str | None = None) -> Path:
        """Run to ``max_steps`` (continuing from a checkpoint if ``resume``) and return the final folder."""
        acc, cfg = self.accelerator, self.config
        checkpoint = resolve_resume(self.output_dir, resume if resume is not None else cfg.resume)
        if checkpoint is not None:
            self.step, self.data.position = load_checkpoint(acc, checkpoint)
            acc.print(f"resumed from {checkpoint} at step {self.step}")
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self._write_provenance(self.output_dir)
        extra = ("routing_loss",) * bool(cfg.dreamo.routing_weight) + ("holder_loss",) * bool(cfg.dreamo.holder_weight)
        log = CsvLog(self.output_dir / "log.csv", self.step, extra) if acc.is_main_process else None
        board = None
        if acc.is_main_process and importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter

            board = SummaryWriter(str(self.output_dir / "tensorboard"), purge_step=self.step or None)

        batches = iter(self.data)
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="train", disable=not acc.is_main_process, unit="step")
        last_time = time.perf_counter()
        while self.step < cfg.max_steps:
            loss = self.train_step(batches)
            if not math.isfinite(loss):
                raise UnofluxError(f"the loss became {loss} at step {self.step}; lower learning_rate or use fp32")
            now = time.perf_counter()
            rate, last_time = 1.0 / max(now - last_time, 1e-9), now
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            if self.step % cfg.log_every == 0 and acc.is_main_process:
                lr = self.lr_scheduler.get_last_lr()[0]
                log.write(
                    step=self.step,
                    loss=f"{loss:.6g}",
                    grad_norm=f"{self.grad_norm:.6g}",
                    lr=f"{lr:.6g}",
                    it_per_s=f"{rate:.3f}",
                    **{name: f"{getattr(self, name):.6g}" for name in extra},
                )
                if board is not None:
                    board.add_scalar("train/loss", loss, self.step)
                    board.add_scalar("train/lr", lr, self.step)
                    board.add_scalar("train/grad_norm", self.grad_norm, self.step)
            if cfg.validate_every and self.step % cfg.validate_every == 0:
                self.validate()
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < cfg.max_steps:
                save_checkpoint(acc, self.output_dir, self.step, self.data.position, self.config)
            if self.step < cfg.max_steps and self.out_of_time():
                self.end_early()
                break
        bar.close()
        if board is not None:
            board.close()
        return self.save_final()


def train(config: TrainConfig, resume: str | None = None, command: list[str] | None = None) -> Path:
    """Train as ``config`` says; returns the folder of the final weights."""
    return Trainer(config, command).train(resume)
