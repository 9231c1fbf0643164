"""Flow-matching training of a FLUX transformer (full or LoRA) on ``accelerate``: text-to-image, or with
reference images (UNO Stage I / II).

One optimizer step, per process (UNO recipe, DESIGN.md section 4)::

    x_data = pack(scale * (VAE(image).mode - shift))         (B, N, 64)
    t      = flow.sample_training_t(B, N)                    shifted at the true token count N
    x_t    = flow.interpolate(x_data, noise, t)
    cond   = method.conditioning(method.encode_references(refs))   clean reference tokens and ids, as at inference
    v      = engine.predict_velocity(transformer, cond, x_t, t, text, guidance=1)   [x_t | refs] -> [:, :N]
    loss   = mse(v, flow.velocity_target(x_data, noise))    on the target tokens only

With ``cache_encodings`` the VAE and text-encoder outputs come from :class:`~.cache.EncodingCache`, built once
before step 1; batches then carry sample indices and the step is otherwise the same. With ``train_text_encoder``
(full mode) the T5 encoder trains with the transformer: ``text`` is then T5 token ids, encoded inside the trained
module's forward (:class:`TransformerWithTextEncoder`).

Determinism: every random draw of a step (text dropout, t, noise) comes from a CPU generator seeded by
(seed, step, micro-step, rank), the data order is a function of (seed, epoch) and the data position is
checkpointed, so a run resumed from a checkpoint ends with the same weights as an uninterrupted one.

Outputs in ``output_dir``: ``config.yaml`` and ``command.txt``; ``log.csv`` (and TensorBoard events when
``tensorboard`` is installed); ``checkpoint-{step}/`` (written to a temporary name, then renamed);
``validation/step-{step}.png``; ``final/`` (a diffusers pipeline folder in full mode, or
``pytorch_lora_weights.safetensors`` in LoRA mode, plus UNO's ``dit_lora.safetensors`` when the LoRA fits
the XLabs layout; with the config and command).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import importlib.util
import json
import math
import shlex
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, broadcast, set_seed
from tqdm import tqdm

from .. import engine, flow
from ..checkpoints.lora import UNO_LORA_FILE
from ..conditioning import image_to_tensor
from ..errors import UnofluxError
from ..methods import Conditioning, get_method
from .config import TrainConfig
from .data import (
    BucketDataset, DataPosition, PairedDataset, SampleIndices, TrainData, data_has_references, read_paired_samples,
    read_samples, subject_token_weights,
)  # fmt: skip
from .cache import EncodingCache, t5_input_ids

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "train_state.json"  # written last inside a checkpoint: its presence marks a complete one
LORA_FILE = "pytorch_lora_weights.safetensors"  # diffusers' name, what load_lora_weights looks for
QKV_GROUPS = (("to_q", "to_k", "to_v"), ("add_q_proj", "add_k_proj", "add_v_proj"))


# ---------------------------------------------------------------------------------------------- LoRA
def add_lora(transformer: torch.nn.Module, config: TrainConfig) -> None:
    """Freeze ``transformer`` and add a PEFT LoRA adapter (the only trainable tensors)."""
    from peft import LoraConfig

    transformer.requires_grad_(False)
    lora = config.lora
    transformer.add_adapter(
        LoraConfig(
            r=lora.rank, lora_alpha=lora.alpha or lora.rank, lora_dropout=lora.dropout,
            target_modules=lora.peft_targets, init_lora_weights="gaussian",
        )
    )  # fmt: skip
    if lora.share_qkv_down:
        share_qkv_down(transformer)
    mark_only_lora_trainable(transformer)


def share_qkv_down(transformer: torch.nn.Module) -> int:
    """Tie the ``lora_A`` of q, k and v of every attention to one parameter: UNO's fused qkv LoRA (one
    down projection, three up blocks), so the XLabs export keeps the rank. Returns how many groups were tied."""
    tied = 0
    for module in transformer.modules():
        for group in QKV_GROUPS:
            layers = [getattr(module, name, None) for name in group]
            if not all(layer is not None and hasattr(layer, "lora_A") for layer in layers):
                continue
            for adapter in layers[0].lora_A:
                shared = layers[0].lora_A[adapter].weight  # one Parameter: the optimizer sees it once
                for layer in layers[1:]:
                    layer.lora_A[adapter].weight = shared
            tied += 1
    return tied


def mark_only_lora_trainable(model: torch.nn.Module) -> int:
    """``requires_grad`` on LoRA tensors only; returns how many parameters are trainable."""
    count = 0
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name)
        count += param.numel() if param.requires_grad else 0
    if not count:
        raise UnofluxError("the LoRA target modules matched no layer of the transformer")
    return count


def lora_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Only the LoRA tensors, keyed ``<module>.lora_{A,B}.weight`` (PEFT = diffusers' FLUX layout), on the CPU."""
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(model)
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def lora_scales(model: torch.nn.Module) -> dict[str, float]:
    """PEFT's runtime factor ``alpha / rank`` of every LoRA layer (``W + scale * B @ A``), by module name."""
    return {
        name: float(m.scaling["default"])
        for name, m in model.named_modules()
        if hasattr(m, "lora_A") and "default" in m.lora_A
    }


def export_lora_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA at scale 1 (``scale`` folded into ``lora_B``): files carry no alpha, and diffusers' and UNO's
    loaders apply ``W + B @ A``."""
    scales = lora_scales(model)
    state = lora_state_dict(model)
    for key in state:
        if key.endswith(".lora_B.weight"):
            state[key] = state[key] * scales[key.removesuffix(".lora_B.weight")]
    return state


def load_lora_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Inverse of :func:`lora_state_dict` onto a model that already has the adapter."""
    from peft.utils import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, state)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise UnofluxError(f"the checkpoint's LoRA has tensors this model does not: {unexpected[:3]}")


def find_lora_file(path: str | Path) -> Path:
    """``path`` itself, or the LoRA file inside a folder (a run's ``final/`` or a ``checkpoint-N/``)."""
    path = Path(path)
    if path.is_dir():
        for name in (LORA_FILE, UNO_LORA_FILE):
            if (path / name).is_file():
                return path / name
        raise UnofluxError(f"folder {str(path)!r} holds no {LORA_FILE} or {UNO_LORA_FILE}")
    return path


def load_init_lora(model: torch.nn.Module, path: str | Path) -> Path:
    """Start the adapter from a saved LoRA (Stage II from Stage I): a run's ``final/`` file (scale 1), a
    ``checkpoint-N/`` (the adapter's own tensors) or UNO's XLabs file (scale 1). It must adapt exactly this
    run's layers at this run's rank."""
    from ..checkpoints.files import read_tensors
    from ..checkpoints.lora import to_diffusers_lora

    file = find_lora_file(path)
    raw, _ = read_tensors(str(file), what="LoRA")
    try:
        loaded = {k.removeprefix("transformer."): v for k, v in to_diffusers_lora(raw).items()}
    except (ValueError, KeyError) as err:
        raise UnofluxError(f"init_lora {str(file)!r} is not a LoRA layout unoflux knows: {err}") from None
    current = lora_state_dict(model)
    scales = lora_scales(model)
    for key in sorted(set(current) | set(loaded)):
        if key not in loaded or key not in current:
            where = "this run's LoRA" if key not in loaded else "init_lora"
            raise UnofluxError(
                f"init_lora {str(file)!r} does not match this run's LoRA: {key!r} is only in {where} "
                "(use the same lora.target_modules as the run that made it)"
            )
        if loaded[key].shape != current[key].shape:
            raise UnofluxError(
                f"init_lora {str(file)!r} does not match this run's LoRA: {key!r} is {tuple(loaded[key].shape)}, "
                f"this run's is {tuple(current[key].shape)} (use the same lora.rank)"
            )
    scale_one = not (file.parent / STATE_FILE).is_file()  # checkpoints hold the raw adapter tensors
    state = {}
    for key, tensor in loaded.items():
        if scale_one and key.endswith(".lora_B.weight"):  # exported files are at scale 1; the adapter scales
            tensor = tensor / scales[key.removesuffix(".lora_B.weight")]
        state[key] = tensor.to(current[key].dtype)
    for parent_name, parent in model.named_modules():  # tied q/k/v downs (share_qkv_down) must come in tied
        for group in QKV_GROUPS:
            if _tied_group(parent, group):
                downs = [state[f"{parent_name}.{n}.lora_A.weight"] for n in group]
                if not all(torch.equal(d, downs[0]) for d in downs):
                    raise UnofluxError(
                        f"init_lora {str(file)!r} has different q/k/v down projections in {parent_name!r}, but this "
                        "run ties them (lora.share_qkv_down: true); train both stages with the same setting"
                    )
    load_lora_state_dict(model, state)
    return file


def _tied_group(module: torch.nn.Module, group: tuple[str, ...]) -> bool:
    """Whether ``module``'s q/k/v layers named ``group`` share one LoRA down projection."""
    layers = [getattr(module, name, None) for name in group]
    if not all(layer is not None and "default" in getattr(layer, "lora_A", {}) for layer in layers):
        return False
    return all(layer.lora_A["default"].weight is layers[0].lora_A["default"].weight for layer in layers)


# ------------------------------------------------------------------------------------------ helpers
def step_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    """The CPU generator of one micro-step: its draws depend on nothing but these four numbers."""
    state = np.random.SeedSequence([seed, step, micro, rank]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def checkpoint_step(path: Path) -> int:
    return int(path.name.removeprefix(CHECKPOINT_PREFIX))


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a killed save leaves only a ``.tmp-`` folder, never listed)."""
    found = [
        p for p in output_dir.glob(f"{CHECKPOINT_PREFIX}*")
        if p.is_dir() and p.name.removeprefix(CHECKPOINT_PREFIX).isdigit() and (p / STATE_FILE).is_file()
    ]  # fmt: skip
    return sorted(found, key=checkpoint_step)


def image_grid(images: list, columns: int):
    from PIL import Image

    rows = math.ceil(len(images) / columns)
    w, h = images[0].size
    grid = Image.new("RGB", (columns * w, rows * h), "white")
    for i, image in enumerate(images):
        grid.paste(image, ((i % columns) * w, (i // columns) * h))
    return grid


class CsvLog:
    """``log.csv``: one row per logged step; on resume rows after the resumed step are dropped."""

    FIELDS = ("step", "loss", "grad_norm", "lr", "it_per_s")

    def __init__(self, path: Path, resume_step: int):
        self.path = path
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


class TransformerWithTextEncoder(torch.nn.Module):
    """The transformer and the T5 encoder trained together (``train_text_encoder``), as one module, so that
    accelerate prepares, checkpoints and clips both and the EMA averages both. Its forward takes T5 token ids
    (B, L) where the transformer takes ``encoder_hidden_states`` (B, L, D)."""

    def __init__(self, transformer: torch.nn.Module, text_encoder: torch.nn.Module):
        super().__init__()
        self.transformer, self.text_encoder = transformer, text_encoder

    def forward(self, t5_input_ids: torch.Tensor, **transformer_inputs):
        prompt_embeds = self.text_encoder(t5_input_ids, output_hidden_states=False)[0]  # as diffusers' FLUX encodes
        return self.transformer(encoder_hidden_states=prompt_embeds, **transformer_inputs)


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
        # what the optimizer trains: the transformer (or its LoRA), with the T5 encoder when train_text_encoder
        trained = TransformerWithTextEncoder(self.transformer, self.pipe.text_encoder_2) if config.train_text_encoder \
            else self.transformer  # fmt: skip
        self.shift = flow.ShiftConfig.from_scheduler_config(self.pipe.scheduler.config)
        self.method = get_method(config.method)  # how references become conditioning, as at inference

        acc = self.accelerator
        self.references = config.references if config.references is not None else data_has_references(config.data)
        if self.references:  # samples of a batch share the target bucket and every reference size
            dataset = PairedDataset(
                read_paired_samples(config.data, config.reference_long_side), config.bucket_sizes,
                config.reference_long_side,
            )  # fmt: skip
        else:
            dataset = BucketDataset(read_samples(config.data), config.bucket_sizes)
        self.samples = dataset.samples
        self.cache, workers = None, config.num_workers
        if config.cache_encodings:  # every process encodes the whole dataset once; batches then carry indices
            self.cache = EncodingCache.build(
                self.pipe, dataset, acc.device, self.max_sequence_length,
                look_free=self.references and config.look_free_captions > 0, num_workers=config.num_workers,
                progress=acc.is_main_process, t5_ids=config.train_text_encoder, method=self.method,
            )  # fmt: skip
            dataset, workers = SampleIndices(dataset), 0
        self.data = TrainData(dataset, config.batch_size, config.seed, acc.process_index, acc.num_processes, workers)

        params = [p for p in trained.parameters() if p.requires_grad]
        self.ema = None
        if config.ema.enabled:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(params, decay=config.ema.decay)
        optimizer = torch.optim.AdamW(
            params, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
            eps=config.adam_epsilon, weight_decay=config.weight_decay,
        )  # fmt: skip
        from diffusers.optimization import get_scheduler

        scheduler = get_scheduler(
            config.lr_schedule, optimizer, num_warmup_steps=config.warmup_steps,
            num_training_steps=config.lr_schedule_steps or config.max_steps,
        )
        self.model, self.optimizer, self.lr_scheduler = acc.prepare(trained, optimizer, scheduler)
        if self.ema is not None:
            self.ema.to(acc.device)
            acc.register_for_checkpointing(self.ema)
        if config.mode == "lora":  # checkpoints hold the LoRA tensors, not the frozen base
            acc.register_save_state_pre_hook(self._save_lora_hook)
            acc.register_load_state_pre_hook(self._load_lora_hook)
        self.step = 0
        self.grad_norm = math.nan  # of the last update, before clipping

    # ----------------------------------------------------------------------------------- building
    def _load_pipeline(self):
        from ..checkpoints import ModelPaths, load_pipeline

        cfg = self.config
        device = str(self.accelerator.device)
        # Frozen weights (text encoders; the base under a LoRA) may live in bf16; trained ones stay fp32 (the
        # optimizer's master copy) and autocast runs the forward in bf16. The VAE is fp32 as in inference.
        frozen_dtype = torch.bfloat16 if cfg.mixed_precision == "bf16" else torch.float32
        # The base alone: a LoRA the model folder ships (the embedded model's) is not what we train from.
        pipe = load_pipeline(ModelPaths(model=cfg.model), device=device, dtype=frozen_dtype, use_environment=False,
                             model_lora=False)
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

    @property
    def max_sequence_length(self) -> int:
        return self.config.max_sequence_length or self.pipe.text_sequence_length

    def _model_dir(self) -> Path:
        from ..checkpoints.specs import EMBEDDED_MODEL_DIR

        return Path(self.config.model) if self.config.model else EMBEDDED_MODEL_DIR

    def _save_lora_hook(self, models, weights, output_dir) -> None:
        from safetensors.torch import save_file

        if self.accelerator.is_main_process:
            save_file(lora_state_dict(self.accelerator.unwrap_model(models[0])), str(Path(output_dir) / LORA_FILE))
        weights.clear()  # the frozen base is not written (``models`` is accelerate's own list: leave it)

    def _load_lora_hook(self, models, input_dir) -> None:
        from safetensors.torch import load_file

        model = self.accelerator.unwrap_model(models.pop())
        load_lora_state_dict(model, load_file(str(Path(input_dir) / LORA_FILE)))

    # --------------------------------------------------------------------------------------- step
    def pick_captions(self, captions: list[str], captions_without_looks: list[str | None] | None,
                      gen: torch.Generator) -> list[str]:  # fmt: skip
        """The captions trained on: text dropout applied (the empty prompt) and, with ``look_free_captions``, some
        swapped for their look-free variants. The only random draws before the flow's own (t, noise)."""
        drop = torch.rand(len(captions), generator=gen) < self.config.text_dropout
        if self.config.look_free_captions > 0 and captions_without_looks:  # no extra draw otherwise: runs stay as they were
            swap = (torch.rand(len(captions), generator=gen) < self.config.look_free_captions).tolist()
            captions = [alt if s and alt else c for c, alt, s in zip(captions, captions_without_looks, swap)]
        return ["" if d else c for c, d in zip(captions, drop.tolist())]

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor, captions: list[str], gen: torch.Generator,
               captions_without_looks: list[str | None] | None = None):  # fmt: skip
        """Packed clean latents (B, N, 64) and the text inputs (:meth:`encode_text`) of :meth:`pick_captions`."""
        device = self.accelerator.device
        captions = self.pick_captions(captions, captions_without_looks, gen)
        x_data = self.pipe.encode_pixels(pixels.to(device), torch.float32)
        return x_data, *self.encode_text(captions)

    @torch.no_grad()
    def encode_text(self, captions: list[str]):
        """(text, pooled, text ids): ``text`` is the T5 embeddings (B, L, D), or with ``train_text_encoder`` the
        T5 token ids (B, L) that the trained module encodes itself."""
        pipe, device, length = self.pipe, self.accelerator.device, self.max_sequence_length
        prompt_embeds, pooled, text_ids = pipe.encode_prompt(prompt=captions, prompt_2=None, device=device,
                                                             max_sequence_length=length)  # fmt: skip
        if self.config.train_text_encoder:  # (the frozen T5 pass above is then unused: cheap for the world's T5)
            return t5_input_ids(pipe, captions, length).to(device), pooled, text_ids
        return prompt_embeds, pooled, text_ids

    @torch.no_grad()
    def reference_conditioning(self, references: list[list] | None, target_grid: tuple[int, int]) -> Conditioning:
        """Per-sample lists of preprocessed reference images (or None: text-to-image) -> the method's conditioning
        of the batch: clean packed reference tokens (B, N_ref, 64), each image encoded as at inference, and the ids
        of all image tokens (target, then references)."""
        device, cfg = self.accelerator.device, self.config
        if not references:
            return self.method.conditioning(target_grid, None, [], cfg.position_mode).to(device)
        grids = [(image.height // 16, image.width // 16) for image in references[0]]
        if any([(image.height // 16, image.width // 16) for image in refs] != grids for refs in references):
            raise UnofluxError("the samples of a batch have references of different sizes; they cannot be stacked")
        tokens = torch.cat([
            torch.cat([self.method.encode_references(self.pipe, image_to_tensor(image).to(device), torch.float32)
                       for image in refs], dim=1)
            for refs in references
        ])  # fmt: skip
        return self.method.conditioning(target_grid, tokens, grids, cfg.position_mode).to(device)

    def predict(self, x_t, t, text, pooled, text_ids, conditioning: Conditioning) -> torch.Tensor:
        """The velocity of the noisy target tokens, through the engine the pipeline samples with (reference tokens
        after the target's, same timestep, output sliced back). ``text``: see :meth:`encode_text`."""
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.ones(len(x_t), device=x_t.device)  # UNO trains with guidance 1
        text_key = "t5_input_ids" if self.config.train_text_encoder else "encoder_hidden_states"
        with self.accelerator.autocast():
            return engine.predict_velocity(self.model, self.transformer, conditioning, x_t, t, guidance, text, pooled,
                                           text_ids, text_key=text_key)  # fmt: skip

    def loss(
        self, pixels: torch.Tensor, captions: list[str], gen: torch.Generator, references: list[list] | None = None,
        captions_without_looks: list[str | None] | None = None, subject_boxes: list[tuple] | None = None,
    ) -> torch.Tensor:
        """Flow-matching MSE on the target tokens; ``references``: per sample, its preprocessed references;
        ``subject_boxes``: per sample, its subjects' boxes (weighted by ``subject_loss_weight``)."""
        x_data, text, pooled, text_ids = self.encode(pixels, captions, gen, captions_without_looks)
        target_grid = (pixels.shape[-2] // 16, pixels.shape[-1] // 16)
        conditioning = self.reference_conditioning(references, target_grid)
        weights = self.token_weights(subject_boxes, target_grid)
        return self.flow_loss(x_data, conditioning, text, pooled, text_ids, gen, weights)

    def token_weights(self, subject_boxes: list[tuple] | None, target_grid: tuple[int, int]) -> torch.Tensor | None:
        """The per-token loss weights of ``subject_loss_weight``, or None for the plain MSE."""
        if self.config.subject_loss_weight == 1 or not subject_boxes or not any(subject_boxes):
            return None
        weights = subject_token_weights(subject_boxes, target_grid, self.config.subject_loss_weight)
        return weights.to(self.accelerator.device)

    def cached_loss(self, indices: list[int], gen: torch.Generator) -> torch.Tensor:
        """:meth:`loss` of the samples ``indices``, from the encoding cache (same random draws, same inputs)."""
        samples = [self.samples[i] for i in indices]
        without_looks = [s.caption_without_looks for s in samples] if self.references else None
        captions = self.pick_captions([s.caption for s in samples], without_looks, gen)
        x_data, ref_tokens, target_grid, ref_grids, text, pooled, text_ids = self.cache.batch(indices, captions)
        conditioning = self.method.conditioning(target_grid, ref_tokens, ref_grids, self.config.position_mode)
        weights = self.token_weights([s.subject_boxes for s in samples], target_grid)
        return self.flow_loss(x_data, conditioning.to(x_data.device), text, pooled, text_ids, gen, weights)

    def flow_loss(self, x_data, conditioning: Conditioning, text, pooled, text_ids, gen: torch.Generator,
                  token_weights=None) -> torch.Tensor:  # fmt: skip
        """The MSE between the predicted and true velocity at a random point of the flow from ``x_data``,
        each token's squared error scaled by ``token_weights`` (B, N) when given."""
        b, n, _ = x_data.shape  # (B, N, 64)
        t = flow.sample_training_t(b, n, generator=gen, config=self.shift)  # true token count, as UNO trains
        noise = torch.randn(x_data.shape, generator=gen)
        device = self.accelerator.device
        t, noise = t.to(device), noise.to(device)
        x_t = flow.interpolate(x_data, noise, t)
        target = flow.velocity_target(x_data, noise)
        prediction = self.predict(x_t, t, text, pooled, text_ids, conditioning)
        if token_weights is None:
            return F.mse_loss(prediction.float(), target.float())
        return ((prediction.float() - target.float()).square().mean(dim=-1) * token_weights).mean()

    def train_step(self, batches) -> float:
        """One optimizer update over ``gradient_accumulation`` micro-batches; returns the mean loss."""
        acc, cfg = self.accelerator, self.config
        total = 0.0
        for micro in range(cfg.gradient_accumulation):
            batch = next(batches)
            gen = step_generator(cfg.seed, self.step, micro, acc.process_index)
            last = micro == cfg.gradient_accumulation - 1
            with contextlib.nullcontext() if last else acc.no_sync(self.model):
                if self.cache is not None:  # batches are sample indices
                    loss = self.cached_loss(batch, gen)
                else:  # paired batches also carry references and look-free captions
                    pixels, captions, *rest = batch
                    loss = self.loss(pixels, captions, gen, *rest)
                loss = loss / cfg.gradient_accumulation
                acc.backward(loss)
            total += loss.detach()
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

    # ----------------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> Path:
        """``checkpoint-{step}``: model/LoRA, optimizer, scheduler, EMA, RNG states, data position, step.

        Written into ``.tmp-checkpoint-{step}`` and renamed when complete, so a kill never leaves a
        half-written checkpoint where ``resume`` looks.
        """
        acc = self.accelerator
        final = self.output_dir / f"{CHECKPOINT_PREFIX}{self.step}"
        tmp = self.output_dir / f".tmp-{CHECKPOINT_PREFIX}{self.step}"
        if acc.is_main_process and tmp.exists():
            shutil.rmtree(tmp)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        if acc.is_main_process:
            state = {"step": self.step, "data_position": asdict(self.data.position), "config": self.config.to_dict()}
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
            self._prune_checkpoints()
        acc.wait_for_everyone()
        return final

    def _prune_checkpoints(self) -> None:
        keep = self.config.keep_checkpoints
        if keep is not None:
            for old in complete_checkpoints(self.output_dir)[:-keep]:
                shutil.rmtree(old)

    def resolve_resume(self, resume: str | None) -> Path | None:
        if resume is None:
            return None
        if resume == "latest":
            found = complete_checkpoints(self.output_dir)
            return found[-1] if found else None  # nothing yet: start from scratch
        path = Path(resume)
        if not (path / STATE_FILE).is_file():
            raise UnofluxError(f"{resume!r} is not a complete training checkpoint (no {STATE_FILE})")
        return path

    def load_checkpoint(self, path: Path) -> None:
        self.accelerator.load_state(str(path))
        state = json.loads((path / STATE_FILE).read_text())
        self.step = int(state["step"])
        self.data.position = DataPosition(**state["data_position"])

    # ----------------------------------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self) -> Path | None:
        """A grid of images for the validation prompts, same seeds every time (EMA weights if enabled)."""
        acc, v = self.accelerator, self.config.validation
        if not acc.is_main_process:
            return None
        params = [p for p in self.accelerator.unwrap_model(self.model).parameters() if p.requires_grad]
        if self.ema is not None:
            self.ema.store(params)
            self.ema.copy_to(params)
        self.transformer.eval()
        cfg = self.config
        try:
            images = []
            for i, prompt in enumerate(v.prompts):
                refs = v.references[i] if v.references else []
                images.append(self.pipe(
                    prompt, reference_images=refs, width=v.width, height=v.height, num_inference_steps=v.steps,
                    guidance_scale=v.guidance, true_cfg_scale=v.true_cfg, seed=v.seed, position_mode=cfg.position_mode,
                    method=self.method,
                    reference_long_side=cfg.reference_long_side(len(refs)) if refs else None,
                ).images[0])  # fmt: skip
        finally:
            self.transformer.train()
            if self.ema is not None:
                self.ema.restore(params)
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
            tmp = self.output_dir / ".tmp-final"
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
            model = acc.unwrap_model(self.model)
            params = [p for p in model.parameters() if p.requires_grad]
            if self.ema is not None:  # ship the averaged weights
                self.ema.store(params)
                self.ema.copy_to(params)
            try:
                if self.config.mode == "lora":
                    lora = export_lora_state_dict(model)
                    self.pipe.save_lora_weights(str(tmp), transformer_lora_layers=lora, weight_name=LORA_FILE,
                                                safe_serialization=True)  # fmt: skip
                    self._save_uno_lora(lora, model, tmp / UNO_LORA_FILE)
                else:  # the base folder with the new transformer (and T5); frozen components are copied as they were
                    from ..family.build import unship_lora

                    trained = {"transformer": model}
                    if self.config.train_text_encoder:
                        trained = {"transformer": model.transformer, "text_encoder_2": model.text_encoder}
                    shutil.copytree(self._model_dir(), tmp, dirs_exist_ok=True,
                                    ignore=lambda folder, names: list(trained) if Path(folder) == self._model_dir() else [])
                    unship_lora(tmp)  # a LoRA the base folder shipped does not fit the new transformer
                    for name, module in trained.items():
                        module.save_pretrained(str(tmp / name), safe_serialization=True)
            finally:
                if self.ema is not None:
                    self.ema.restore(params)
            self._write_provenance(tmp)
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
        acc.wait_for_everyone()
        return final

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
        self.accelerator.print(f"max_minutes ({cfg.max_minutes:g}) ran out: the run ends at step {self.step} of {cfg.max_steps}")
        self.config = dataclasses.replace(cfg, max_steps=self.step, max_minutes=None,
                                          lr_schedule_steps=cfg.lr_schedule_steps or cfg.max_steps)  # fmt: skip

    def train(self, resume: str | None = None) -> Path:
        """Run to ``max_steps`` (continuing from a checkpoint if ``resume``) and return the final folder."""
        acc, cfg = self.accelerator, self.config
        checkpoint = self.resolve_resume(resume if resume is not None else cfg.resume)
        if checkpoint is not None:
            self.load_checkpoint(checkpoint)
            acc.print(f"resumed from {checkpoint} at step {self.step}")
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self._write_provenance(self.output_dir)
        log = CsvLog(self.output_dir / "log.csv", self.step) if acc.is_main_process else None
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
                log.write(step=self.step, loss=f"{loss:.6g}", grad_norm=f"{self.grad_norm:.6g}", lr=f"{lr:.6g}",
                          it_per_s=f"{rate:.3f}")  # fmt: skip
                if board is not None:
                    board.add_scalar("train/loss", loss, self.step)
                    board.add_scalar("train/lr", lr, self.step)
                    board.add_scalar("train/grad_norm", self.grad_norm, self.step)
            if cfg.validate_every and self.step % cfg.validate_every == 0:
                self.validate()
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < cfg.max_steps:
                self.save_checkpoint()
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
