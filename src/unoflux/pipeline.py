"""UNO generation on diffusers' FLUX: a prompt plus 0..N reference images -> images.

:class:`UnoFluxPipeline` is a :class:`diffusers.FluxPipeline` (same components, so ``from_pretrained``,
``from_pipe``, ``load_lora_weights``, CPU offload and ``encode_prompt`` are diffusers'); only
``__call__`` is ours: reference tokens after the noisy tokens with UnoPE ids (``conditioning``), the UNO
schedule and Euler sampler (``flow``). With no reference it is plain FLUX text-to-image on UNO's sampler.

The loop follows UNO's reference inference (bytedance/UNO ``UNOPipeline.forward``) step for step so a
seed gives the same image for the same weights. Known, deliberate differences:
- reference latents use the VAE posterior *mean*; the reference samples the posterior with the
  unseeded global RNG, so its own outputs are not exactly repeatable;
- noise is drawn on a CPU generator by default (``noise_device`` reproduces the reference on a GPU);
- reference images are EXIF-rotated and alpha is composited on white (see ``images.load_image``).
"""

from __future__ import annotations

import contextlib
import math
import random
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Sequence

import torch
import transformers

# diffusers' FLUX module imports CLIP/SigLIP image processors, which warn that torchvision (never needed
# here) is missing; silence transformers only for that import.
_verbosity = transformers.logging.get_verbosity()
transformers.logging.set_verbosity_error()
from diffusers import FluxPipeline  # noqa: E402

transformers.logging.set_verbosity(_verbosity)

from . import engine, flow, sampling
from .conditioning import (
    POSITION_MODES,
    PositionMode,
    default_reference_long_side,
    output_size,
    pack_latents,
    reference_noise,
    tensor_to_images,
    unpack_latents,
)
from .errors import UnofluxError
from .images import ImageInput
from .methods import DEFAULT_METHOD, Conditioning, Method, get_method, open_references

MAX_SIDE = 2048  # FLUX.1 is trained up to ~2 MP
MAX_IMAGE_TOKENS = 2 * (MAX_SIDE // 16) ** 2  # target + references; beyond this attention memory explodes
SCHEDULES = ("uno", "flux")


def check_generation_args(
    prompts: list[str],
    width: int,
    height: int,
    num_inference_steps: int,
    position_mode: str,
    reference_long_side: int | None,
    num_images_per_prompt: int,
    schedule: str | None,
    time_shift: float | None = None,
    stochasticity: float | None = None,
) -> None:
    """Raise one clear :class:`UnofluxError` for a bad setting (callable before any model is loaded)."""
    if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
        raise UnofluxError("the prompt is empty; describe the image to generate")
    for name, value in (("width", width), ("height", height)):
        if not isinstance(value, int) or not 16 <= value <= MAX_SIDE:
            raise UnofluxError(f"{name} {value!r} is out of range; use an integer from 16 to {MAX_SIDE}")
    if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise UnofluxError(f"steps {num_inference_steps!r} must be a positive integer")
    if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
        raise UnofluxError(f"number of images {num_images_per_prompt!r} must be a positive integer")
    if position_mode not in POSITION_MODES:
        raise UnofluxError(f"position mode {position_mode!r} is not one of: {', '.join(POSITION_MODES)}")
    if schedule is not None and schedule not in SCHEDULES:
        raise UnofluxError(f"schedule {schedule!r} is not one of: {', '.join(SCHEDULES)}")
    if time_shift is not None and not (isinstance(time_shift, (int, float)) and 0 < time_shift < math.inf):
        raise UnofluxError(f"time shift {time_shift!r} must be a positive number (1 = no shift)")
    if stochasticity is not None and not (isinstance(stochasticity, (int, float)) and 0 <= stochasticity <= 1):
        raise UnofluxError(f"stochasticity {stochasticity!r} must be a number from 0 (the ODE) to 1")
    if reference_long_side is not None and not (
        isinstance(reference_long_side, int) and 16 <= reference_long_side <= MAX_SIDE
    ):
        raise UnofluxError(
            f"reference long side {reference_long_side!r} is out of range; use an integer from 16 to {MAX_SIDE}"
        )


@dataclass
class UnoOutput:
    """What a call returns: images (PIL list, or a tensor for ``output_type`` 'pt'/'latent'), the seed
    of each image, and the settings that reproduce them."""

    images: Any
    seeds: list[int]
    settings: dict[str, Any] = field(default_factory=dict)


class UnoFluxPipeline(FluxPipeline):
    r"""FLUX.1 + UNO subject-driven generation.

    Build it like any FLUX pipeline (``UnoFluxPipeline.from_pretrained(local_dir)``,
    ``UnoFluxPipeline.from_pipe(flux_pipe)``) or with :func:`unoflux.load_pipeline` from the single files
    users have; load UNO's ``dit_lora.safetensors`` with :meth:`load_uno_lora`.
    """

    def load_uno_lora(self, path: str, adapter_name: str = "uno") -> None:
        """Load a UNO LoRA (XLabs layout, or diffusers/PEFT layout) onto the transformer, scale 1."""
        from .checkpoints.lora import load_lora_into_pipeline

        load_lora_into_pipeline(self, path, adapter_name=adapter_name)

    @property
    def text_sequence_length(self) -> int:
        """T5 tokens per prompt: the tokenizer's own limit, at most FLUX's 512 (small models use fewer;
        training and sampling must pad to the same length)."""
        return min(512, int(self.tokenizer_2.model_max_length))

    def _warn_if_truncated(self, prompts: list[str], max_sequence_length: int) -> None:
        for prompt in prompts:
            n = len(self.tokenizer_2(prompt, truncation=False).input_ids)
            if n > max_sequence_length:
                warnings.warn(
                    f"the prompt has {n} T5 tokens; only the first {max_sequence_length} are used", stacklevel=3
                )

    # ----------------------------------------------------------------------------------- components
    def encode_pixels(self, pixels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> clean packed latent tokens (B, H*W/256, 64): the VAE's latent mode
        (no sampling, so the same image always gives the same tokens), scaled and shifted as FLUX trains."""
        latent = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist.mode()
        latent = (latent - self.vae.config.shift_factor) * self.vae.config.scaling_factor
        return pack_latents(latent.to(dtype))

    def prepare_noise(
        self, seeds: list[int], height: int, width: int, device: torch.device, dtype: torch.dtype, noise_device: str
    ) -> torch.Tensor:
        """Packed initial noise, one seed per image, drawn exactly as UNO draws it."""
        noise = torch.cat([reference_noise(s, height, width, device=noise_device) for s in seeds])
        return pack_latents(noise.to(device=device, dtype=dtype))

    def decode(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Packed latents -> (B, 3, H, W) in [-1, 1], decoded in the VAE's dtype."""
        latents = unpack_latents(latents, height // self.vae_scale_factor, width // self.vae_scale_factor)
        latents = latents.float() / self.vae.config.scaling_factor + self.vae.config.shift_factor
        return self.vae.decode(latents.to(self.vae.dtype), return_dict=False)[0]

    def velocity(self, conditioning: Conditioning, text: torch.Tensor, pooled: torch.Tensor, text_ids: torch.Tensor,
                 guidance_scale: float, cache_name: str = "cond") -> sampling.Velocity:  # fmt: skip
        """The transformer as a velocity ``v(x, t, step)`` for one text and conditioning (:mod:`unoflux.sampling`).
        Each call runs inside diffusers' ``cache_context(cache_name)``, so its cache hooks (FirstBlockCache, ...)
        tell the branches of classifier-free guidance apart."""
        transformer = self.transformer
        guidance_embeds = transformer.config.guidance_embeds

        def velocity(x: torch.Tensor, t: float, step: int) -> torch.Tensor:
            timestep = torch.full((len(x),), t, device=x.device, dtype=x.dtype)
            guidance = torch.full((len(x),), guidance_scale, device=x.device, dtype=x.dtype) if guidance_embeds else None
            with transformer.cache_context(cache_name):
                return engine.predict_velocity(transformer, transformer, conditioning, x, timestep, guidance, text,
                                               pooled, text_ids)  # fmt: skip

        return velocity

    @contextlib.contextmanager
    def active_adapters(self, adapters: tuple[str, ...] | None):
        """While inside, only the LoRA adapters named are active (None: as loaded; (): none)."""
        if adapters is None:
            yield
            return
        previous = self.get_active_adapters()
        if adapters:
            self.set_adapters(list(adapters))
        else:
            self.disable_lora()
        try:
            yield
        finally:
            if adapters:
                self.set_adapters(previous)
            else:
                self.enable_lora()

    # The reference long side when the caller gives none: (one reference, several). None = UNO's 512 / 320;
    # a model folder trained at other sizes declares its own in unoflux.json (set by load_pipeline).
    reference_long_sides: tuple[int, int] | None = None

    # The method a call uses when it names none (unoflux.json "method", set by load_pipeline).
    default_method: str = DEFAULT_METHOD

    # A model folder's own LoRA may be meant for reference-driven generation only (unoflux.json
    # "lora_for": "references", set by load_pipeline): text-only calls then run the base without it.
    lora_only_with_references: bool = False

    # Sampling defaults when the caller gives none. FLUX.1-dev is guidance-distilled: its guidance input is the
    # knob (4 is UNO's default) and one forward per step suffices. A model trained with guidance 1 only (the
    # embedded world model) declares {"guidance": 1, "true_cfg": s} in unoflux.json (set by load_pipeline): its
    # guidance input stays where it was trained, and classifier-free guidance against the empty prompt, which
    # text dropout trained, does the steering.
    default_guidance_scale: float = 4.0
    default_true_cfg_scale: float = 1.0
    # A fixed time shift the model samples with when the caller names neither a schedule nor a shift
    # (unoflux.json "time_shift", set by load_pipeline); None: the "uno" resolution rule, as UNO and FLUX.
    default_time_shift: float | None = None
    # How much of each step is re-noised when the caller gives none (unoflux.json "stochasticity", set by
    # load_pipeline); 0: the deterministic ODE, as UNO and FLUX sample.
    default_stochasticity: float = 0.0

    def default_reference_long_side(self, num_references: int) -> int:
        if self.reference_long_sides is None:
            return default_reference_long_side(num_references)
        return self.reference_long_sides[0 if num_references <= 1 else 1]

    # ------------------------------------------------------------------------------------------- call
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        reference_images: Sequence[ImageInput] | None = None,
        *,
        width: int = 512,
        height: int = 512,
        num_inference_steps: int = 25,
        guidance_scale: float | None = None,
        true_cfg_scale: float | None = None,
        negative_prompt: str | list[str] = "",
        seed: int | None = None,
        position_mode: PositionMode = "diagonal",
        reference_long_side: int | None = None,
        num_images_per_prompt: int = 1,
        schedule: str | None = None,
        time_shift: float | None = None,
        stochasticity: float | None = None,
        method: str | Method | None = None,
        noise_device: str = "cpu",
        max_sequence_length: int | None = None,
        output_type: str = "pil",
        callback_on_step_end: Callable[[Any, int, float, dict], dict] | None = None,
    ) -> UnoOutput:
        r"""Generate images for ``prompt`` keeping the subjects of ``reference_images``.

        Args:
            prompt: one prompt or a list; each gives ``num_images_per_prompt`` images.
            reference_images: PIL images or paths; empty or None = plain text-to-image.
            width, height: output size in pixels, floored to multiples of 16.
            num_inference_steps: Euler steps (UNO default 25).
            guidance_scale: the guidance input of guidance-distilled models (FLUX.1-dev: one forward per step);
                ignored by models without a guidance embedding (schnell). None = :attr:`default_guidance_scale`
                (4, UNO's; a model folder may declare its own).
            true_cfg_scale: classifier-free guidance against ``negative_prompt``, two forwards per step (one
                batch); 1 = off. None = :attr:`default_true_cfg_scale` (off, unless the model folder declares it).
            negative_prompt: the unconditional prompt of ``true_cfg_scale`` (one, or one per prompt).
            seed: image ``j`` of every prompt uses ``seed + j`` (as UNO's batch script does); None picks one.
            position_mode: UnoPE offsets, ``diagonal`` (UNO), ``height``, ``width`` or ``none``.
            reference_long_side: references are resized to this long side; default 512 for one
                reference and 320 for several.
            schedule: the resolution rule for the time shift: ``uno`` reproduces UNO's inference shift (see
                :func:`unoflux.flow.image_seq_len`); ``flux`` uses the true token count, as FLUX and UNO training
                do. None: :attr:`default_time_shift` if the model folder declares one, else ``uno``.
            time_shift: a fixed shift factor instead of the rule (diffusers' ``shift``: ``t -> s t / (1 + (s -
                1) t)``, ``mu = ln s``; 1 = none); larger spends more steps at high noise, where layout forms.
                Wins over ``schedule``.
            stochasticity: how much of each step is re-noised with fresh noise (:func:`unoflux.flow.stochastic_step`):
                0 = the deterministic ODE (UNO), 1 = diffusers' ``stochastic_sampling``. The fresh noise of image
                ``j`` comes from its own seed, so a seed still gives one image. None = :attr:`default_stochasticity`.
            method: how references become conditioning (:mod:`unoflux.methods`: a name, or a :class:`Method`);
                None = :attr:`default_method` (UNO, unless the model folder declares another).
            noise_device: where the noise generator runs; ``cpu`` makes seeds device-independent.
            max_sequence_length: T5 tokens per prompt (default :attr:`text_sequence_length`).
            output_type: ``pil``, ``pt`` ((B, 3, H, W) in [0, 1]) or ``latent`` (packed latents).
            callback_on_step_end: ``fn(pipe, step, t, {"latents": ...}) -> dict`` after each step; a
                returned ``latents`` replaces the current ones.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        references = list(reference_images or [])
        method = get_method(self.default_method if method is None else method)
        method.check(len(references))
        check_generation_args(
            prompts, width, height, num_inference_steps, position_mode,
            reference_long_side, num_images_per_prompt, schedule, time_shift, stochasticity,
        )  # fmt: skip
        schedule, time_shift = resolve_time_shift(schedule, time_shift, self.default_time_shift)
        stochasticity = self.default_stochasticity if stochasticity is None else float(stochasticity)
        if self.vae_scale_factor != 8:
            raise UnofluxError(f"the VAE downsamples by {self.vae_scale_factor}; UNO needs a FLUX-style VAE (8x)")
        if output_type not in ("pil", "pt", "latent"):
            raise UnofluxError(f"output type {output_type!r} is not one of: pil, pt, latent")
        guidance_scale = self.default_guidance_scale if guidance_scale is None else float(guidance_scale)
        true_cfg_scale = self.default_true_cfg_scale if true_cfg_scale is None else float(true_cfg_scale)
        if not (math.isfinite(guidance_scale) and math.isfinite(true_cfg_scale) and true_cfg_scale >= 1):
            raise UnofluxError(f"guidance {guidance_scale} and true CFG scale {true_cfg_scale} must be finite, and the "
                               "true CFG scale at least 1 (1 = off)")  # fmt: skip
        negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
        if len(negatives) != len(prompts):
            raise UnofluxError(f"{len(negatives)} negative prompts for {len(prompts)} prompts; give one, or one per prompt")
        width, height = output_size(width, height)
        long_side = reference_long_side or self.default_reference_long_side(len(references))
        if seed is None:
            seed = random.randrange(2**31)
        device = self._execution_device
        dtype = self.transformer.dtype
        max_sequence_length = max_sequence_length or self.text_sequence_length
        text_prompts = [method.edit_prompt(p, len(references)) for p in prompts]  # what the text encoders see
        negatives = [method.edit_prompt(p, len(references)) for p in negatives]
        self._warn_if_truncated(text_prompts, max_sequence_length)

        # 1. References (opened and checked before any model runs), then the method's own preprocessing.
        ref_images = method.preprocess_references(open_references(references), long_side)
        ref_grids = [(image.height // 16, image.width // 16) for image in ref_images]
        target_grid = (height // 16, width // 16)
        n_image = target_grid[0] * target_grid[1] + sum(r * c for r, c in ref_grids)
        if n_image > MAX_IMAGE_TOKENS:
            raise UnofluxError(
                f"{len(references)} references at long side {long_side} plus a {width}x{height} output make "
                f"{n_image} image tokens, more than the {MAX_IMAGE_TOKENS} allowed; use fewer or smaller references"
            )

        # 2. Text: T5 sequence + CLIP pooled vector, repeated per image (p0, p0, p1, p1, ...).
        prompt_embeds, pooled_embeds, text_ids = self.encode_prompt(
            prompt=text_prompts, prompt_2=None, device=device, num_images_per_prompt=num_images_per_prompt,
            max_sequence_length=max_sequence_length,
        )  # fmt: skip
        negative = None
        if true_cfg_scale > 1:
            negative = self.encode_prompt(
                prompt=negatives, prompt_2=None, device=device, num_images_per_prompt=num_images_per_prompt,
                max_sequence_length=max_sequence_length,
            )[:2]  # fmt: skip
        conditioning = method.prepare(self, ref_images, target_grid, position_mode, device, dtype).to(device)

        # 3. Noise and schedule.
        seeds = [seed + j for _ in prompts for j in range(num_images_per_prompt)]
        latents = self.prepare_noise(seeds, height, width, device, dtype, noise_device)
        noise_generators = [sampling.step_noise_generator(s, noise_device) for s in seeds] if stochasticity > 0 else None
        if time_shift is not None:
            mu = math.log(time_shift)
        else:
            shift = flow.ShiftConfig.from_scheduler_config(self.scheduler.config)
            mu = flow.schedule_mu(flow.image_seq_len(height, width, schedule), shift)
        sigmas = flow.sigmas(num_inference_steps, mu).tolist()

        # 4. The velocity (with classifier-free guidance around it) integrated from noise to data.
        if negative is None:
            velocity = self.velocity(conditioning, prompt_embeds, pooled_embeds, text_ids, guidance_scale)
        elif conditioning.unconditional is None:  # both branches see the same images: one forward, doubled batch
            both = self.velocity(conditioning, torch.cat([prompt_embeds, negative[0]]),
                                 torch.cat([pooled_embeds, negative[1]]), text_ids, guidance_scale, "cond_uncond")  # fmt: skip
            velocity = sampling.classifier_free_batched(both, true_cfg_scale)
        else:
            velocity = sampling.classifier_free(
                self.velocity(conditioning, prompt_embeds, pooled_embeds, text_ids, guidance_scale),
                self.velocity(conditioning.unconditional, *negative, text_ids, guidance_scale, "uncond"),
                true_cfg_scale,
            )
        with self.progress_bar(total=num_inference_steps) as progress, self.active_adapters(conditioning.adapters):

            def after_step(step: int, t: float, x: torch.Tensor) -> torch.Tensor:
                if callback_on_step_end is not None:
                    x = callback_on_step_end(self, step, t, {"latents": x}).get("latents", x)
                progress.update()
                return x

            latents = sampling.sample(velocity, latents, sigmas, stochasticity=stochasticity,
                                      noise_generators=noise_generators, callback=after_step)  # fmt: skip

        if not torch.isfinite(latents).all():
            raise UnofluxError(
                "the model produced NaN or infinite values; try --dtype bf16 or fp32 (fp16 overflows on FLUX)"
            )
        settings = {  # named like GenerationRequest's fields
            "prompt": prompts[0] if len(prompts) == 1 else prompts,
            "width": width,
            "height": height,
            "steps": num_inference_steps,
            "guidance": guidance_scale,
            "true_cfg": true_cfg_scale,
            **({"negative_prompt": negative_prompt} if true_cfg_scale > 1 and negative_prompt else {}),
            "seed": seed,
            "method": method.name,
            "position_mode": position_mode,
            "reference_long_side": long_side,
            "num_references": len(references),
            "schedule": schedule,  # the shift that ran: the schedule's resolution rule, or a fixed factor
            **({"time_shift": time_shift} if time_shift is not None else {}),
            "stochasticity": stochasticity,
            "noise_device": noise_device,
        }
        if output_type == "latent":
            images = latents
        else:
            decoded = self.decode(latents, height, width)
            images = tensor_to_images(decoded) if output_type == "pil" else (decoded.float().clamp(-1, 1) + 1) / 2
        self.maybe_free_model_hooks()
        return UnoOutput(images=images, seeds=seeds, settings=settings)


class SamplingDefaults(NamedTuple):
    guidance: float
    true_cfg: float
    time_shift: float | None
    stochasticity: float


def sampling_defaults(pipe) -> SamplingDefaults:
    """What ``pipe`` samples with when given None. A stand-in without them (tests wrap pipelines) gets the
    class's, FLUX.1-dev's."""
    return SamplingDefaults(*(getattr(pipe, name, getattr(UnoFluxPipeline, name)) for name in (
        "default_guidance_scale", "default_true_cfg_scale", "default_time_shift", "default_stochasticity")))  # fmt: skip


def resolve_time_shift(schedule: str | None, time_shift: float | None,
                       default_time_shift: float | None) -> tuple[str | None, float | None]:  # fmt: skip
    """(schedule, time shift) a call samples with: an explicit shift, else an explicit schedule's resolution
    rule, else the model's shift, else UNO's rule. Exactly one of the two is None."""
    if time_shift is None and schedule is None:
        time_shift = default_time_shift
    return (None, time_shift) if time_shift is not None else (schedule or "uno", None)
