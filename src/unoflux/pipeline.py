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
import dataclasses
import math
import random
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

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
    default_reference_long_side,
    output_size,
    pack_latents,
    reference_noise,
    tensor_to_images,
    unpack_latents,
)
from .errors import UnofluxError
from .fast import step_cache, step_cache_config
from .images import ImageInput
from .methods import Conditioning, Method, get_method, open_references
from .options import (  # noqa: F401  (MAX_SIDE, SCHEDULES: re-exported for callers)
    FLUX_DEV_DEFAULTS,
    MAX_SIDE,
    SCHEDULES,
    SamplingOptions,
    check_prompt,
    option_fields,
)
from .reference_reuse import ReferenceFeatures, reusing_references
from .references import STYLE, SUBJECT, Reference, as_references

MAX_IMAGE_TOKENS = 2 * (MAX_SIDE // 16) ** 2  # target + references; beyond this attention memory explodes


@dataclass
class UnoOutput:
    """What a call returns: images (PIL list, or a tensor for ``output_type`` 'pt'/'latent'), the seed
    of each image, the settings that reproduce them, and the references as the model saw them (after the method's
    preprocessing; ``--save-preprocessed`` writes them)."""

    images: Any
    seeds: list[int]
    settings: dict[str, Any] = field(default_factory=dict)
    references: list[Reference] = field(default_factory=list)


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

    def load_uso_style(self, projector: str, siglip: str) -> None:
        """Attach USO's style models (``projector.safetensors`` and a SigLIP folder) for style references; the
        calls then default to method ``uso`` at USO's 1024 px. USO's ``dit_lora.safetensors`` loads with
        :meth:`load_uno_lora` (same layout)."""
        from .checkpoints.loading import load_uso_style_models

        load_uso_style_models(self, projector, siglip)

    # USO's style encoder (methods.uso.StyleEncoder: SigLIP + projector), set by load_uso_style / load_pipeline
    style_encoder = None
    # DreamO's embeddings (methods.dreamo.DreamOEmbeddings) and preprocessing steps per role (role -> image -> image),
    # set by load_pipeline (--dreamo, --face-parser)
    dreamo_embeddings = None
    reference_preprocessors: dict = {}

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
        self,
        seeds: list[int],
        height: int,
        width: int,
        device: torch.device,
        dtype: torch.dtype,
        noise_device: str,
        noise_dtype: torch.dtype | None = torch.bfloat16,
    ) -> torch.Tensor:
        """Packed initial noise, one seed per image, drawn as UNO draws it (in bf16; ``noise_dtype=None``: in
        ``dtype``, as DreamO's diffusers pipeline draws it)."""
        draw_dtype = noise_dtype or dtype
        noise = torch.cat([reference_noise(s, height, width, device=noise_device, dtype=draw_dtype) for s in seeds])
        return pack_latents(noise.to(device=device, dtype=dtype))

    def decode(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Packed latents -> (B, 3, H, W) in [-1, 1], decoded in the VAE's dtype."""
        latents = unpack_latents(latents, height // self.vae_scale_factor, width // self.vae_scale_factor)
        latents = latents.float() / self.vae.config.scaling_factor + self.vae.config.shift_factor
        return self.vae.decode(latents.to(self.vae.dtype), return_dict=False)[0]

    def velocity(
        self,
        conditioning: Conditioning,
        text: torch.Tensor,
        pooled: torch.Tensor,
        text_ids: torch.Tensor,
        guidance_scale: float,
        cache_name: str = "cond",
        first_step_guidance: float | None = None,
        reference_features: ReferenceFeatures | None = None,
    ) -> sampling.Velocity:
        """The transformer as a velocity ``v(x, t, step)`` for one text and conditioning (:mod:`unoflux.sampling`).
        Each call runs inside diffusers' ``cache_context(cache_name)``, so its cache hooks (FirstBlockCache, ...)
        tell the branches of classifier-free guidance apart. With ``reference_features`` (inside
        :func:`~unoflux.reference_reuse.reusing_references`) the steps it plans to reuse run on the target tokens
        alone, in a cache context of their own (their token count differs)."""
        transformer = self.transformer
        guidance_embeds = transformer.config.guidance_embeds
        without_references = conditioning.without_references() if reference_features is not None else None

        def velocity(x: torch.Tensor, t: float, step: int) -> torch.Tensor:
            timestep = torch.full((len(x),), t, device=x.device, dtype=x.dtype)
            scale = first_step_guidance if step == 0 and first_step_guidance is not None else guidance_scale
            guidance = torch.full((len(x),), scale, device=x.device, dtype=x.dtype) if guidance_embeds else None
            call, context = conditioning, cache_name
            if reference_features is not None and reference_features.plan(
                cache_name, step, conditioning.num_reference_tokens
            ):
                call, context = without_references, f"{cache_name}/reused"
            with transformer.cache_context(context):
                return engine.predict_velocity(
                    transformer, transformer, call, x, timestep, guidance, text, pooled, text_ids
                )

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

    # MagCache's residual-magnitude ratio per step (fast.MagRatioRecorder), as the model folder's unoflux.json
    # declares them ("mag_ratios", set by load_pipeline); None = FLUX.1-dev's (diffusers').
    mag_ratios: list[float] | None = None

    # A model folder's own LoRA may be meant for reference-driven generation only (unoflux.json
    # "lora_for": "references", set by load_pipeline): text-only calls then run the base without it.
    lora_only_with_references: bool = False

    # What a call samples with where its options say None (options.FLUX_DEV_DEFAULTS; a model folder's
    # unoflux.json overrides them, set by load_pipeline). FLUX.1-dev is guidance-distilled: its guidance input is
    # the knob (4 is UNO's default) and one forward per step suffices. A model trained with guidance 1 only (the
    # embedded world model) declares {"guidance": 1, "true_cfg": s}: its guidance input stays where it was trained,
    # and classifier-free guidance against the empty prompt, which text dropout trained, does the steering.
    model_defaults: dict[str, Any] = FLUX_DEV_DEFAULTS

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
        options: SamplingOptions | None = None,
        *,
        noise_device: str = "cpu",
        max_sequence_length: int | None = None,
        output_type: str = "pil",
        callback_on_step_end: Callable[[Any, int, float, dict], dict] | None = None,
        style_images: Sequence[ImageInput] | None = None,
        prompt_seeds: Sequence[int] | None = None,
        **option_values: Any,
    ) -> UnoOutput:
        r"""Generate images for ``prompt`` keeping the subjects of ``reference_images``.

        Args:
            prompt: one prompt or a list; each gives ``num_images`` images.
            reference_images: PIL images or paths (subjects), or :class:`~unoflux.references.Reference`\ s that say
                their role; empty or None = plain text-to-image.
            options: a :class:`~unoflux.options.SamplingOptions` (every field documented there); keyword arguments
                named like its fields override it: ``width``, ``height``, ``steps``, ``guidance``, ``true_cfg``,
                ``negative_prompt`` (one, or one per prompt), ``seed`` (image ``j`` of every prompt uses ``seed + j``;
                None picks one), ``num_images``, ``method`` (a name, or a :class:`~unoflux.methods.Method`),
                ``position_mode``, ``reference_long_side``, ``schedule``, ``time_shift``, ``stochasticity``.
                diffusers' names work too: ``num_inference_steps``, ``guidance_scale``, ``true_cfg_scale``,
                ``num_images_per_prompt``. ``None`` = the model's (:attr:`model_defaults`).
            noise_device: where the noise generator runs; ``cpu`` makes seeds device-independent.
            max_sequence_length: T5 tokens per prompt (default :attr:`text_sequence_length`).
            output_type: ``pil``, ``pt`` ((B, 3, H, W) in [0, 1]) or ``latent`` (packed latents).
            callback_on_step_end: ``fn(pipe, step, t, {"latents": ...}) -> dict`` after each step; a
                returned ``latents`` replaces the current ones.
            style_images: style references (USO), after ``reference_images``: the same as passing
                ``Reference(image, "style")`` there.
            prompt_seeds: one seed per prompt, in place of ``seed`` (prompt ``i``'s image ``j`` uses
                ``prompt_seeds[i] + j``), so a batch of prompts gives each its own noise (``unoflux synth``).
        """
        if not isinstance(prompt, (str, list, tuple)):
            check_prompt(prompt)  # one sentence ("the prompt 5 must be text"), not list()'s TypeError
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        references = as_references(reference_images) + [Reference(image, STYLE) for image in style_images or []]
        method = option_values.pop("method", None) if isinstance(option_values.get("method"), Method) else None
        options = call_options(options, option_values)
        method = get_method(method or options.method or self.model_defaults["method"])
        options = options.resolved(self.model_defaults, default_schedule=method.default_schedule)
        options.validate()
        for text in prompts:
            check_prompt(text, allow_empty=method.accepts_empty_prompt)
        method.check(references)
        num_subjects = sum(r.role == SUBJECT for r in references)
        if self.vae_scale_factor != 8:
            raise UnofluxError(f"the VAE downsamples by {self.vae_scale_factor}; UNO needs a FLUX-style VAE (8x)")
        if output_type not in ("pil", "pt", "latent"):
            raise UnofluxError(f"output type {output_type!r} is not one of: pil, pt, latent")
        negative_prompt = options.negative_prompt
        negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
        if len(negatives) != len(prompts):
            raise UnofluxError(
                f"{len(negatives)} negative prompts for {len(prompts)} prompts; give one, or one per prompt"
            )
        width, height = output_size(options.width, options.height)
        long_side = options.reference_long_side or method.reference_side(self, references)
        if prompt_seeds is not None:
            prompt_seeds = [int(s) for s in prompt_seeds]
            if len(prompt_seeds) != len(prompts):
                raise UnofluxError(f"{len(prompt_seeds)} prompt seeds for {len(prompts)} prompts; give one per prompt")
            options = dataclasses.replace(options, seed=prompt_seeds[0])
        seed = random.randrange(2**31) if options.seed is None else options.seed
        options = dataclasses.replace(
            options, width=width, height=height, reference_long_side=long_side, seed=seed, method=method.name
        )
        num_inference_steps, num_images_per_prompt = options.steps, options.num_images
        guidance_scale, true_cfg_scale = float(options.guidance), float(options.true_cfg)
        first_step = None if options.first_step_guidance is None else float(options.first_step_guidance)
        schedule, time_shift, stochasticity = options.schedule, options.time_shift, float(options.stochasticity)
        position_mode = options.position_mode
        device = self._execution_device
        dtype = self.transformer.dtype
        max_sequence_length = max_sequence_length or self.text_sequence_length
        text_prompts = [method.edit_prompt(p, len(references)) for p in prompts]  # what the text encoders see
        negatives = [method.edit_prompt(p, len(references)) for p in negatives]
        self._warn_if_truncated(text_prompts, max_sequence_length)

        # 1. References (opened and checked before any model runs), then the method's own preprocessing.
        prepared = method.preprocess_references(open_references(references), long_side, pipe=self)
        ref_grids = [(r.image.height // 16, r.image.width // 16) for r in prepared if r.role == SUBJECT]
        if options.keep_size:  # USO: the subject's preprocessed size x (its default 1024 / the long side)
            if not ref_grids:
                raise UnofluxError("keep size takes the output's aspect from a subject reference; give one (--ref)")
            scale = self.model_defaults["width"] / long_side
            width, height = output_size(int(16 * ref_grids[0][1] * scale), int(16 * ref_grids[0][0] * scale))
            options = dataclasses.replace(options, width=width, height=height)
        target_grid = (height // 16, width // 16)
        n_image = target_grid[0] * target_grid[1] + sum(r * c for r, c in ref_grids)
        if n_image > MAX_IMAGE_TOKENS:
            raise UnofluxError(
                f"{num_subjects} references at long side {long_side} plus a {width}x{height} output make "
                f"{n_image} image tokens, more than the {MAX_IMAGE_TOKENS} allowed; use fewer or smaller references"
            )

        # 2. Text: T5 sequence + CLIP pooled vector, repeated per image (p0, p0, p1, p1, ...).
        prompt_embeds, pooled_embeds, text_ids = self.encode_prompt(
            prompt=text_prompts,
            prompt_2=None,
            device=device,
            num_images_per_prompt=num_images_per_prompt,
            max_sequence_length=max_sequence_length,
        )
        negative = None
        if true_cfg_scale > 1:
            negative = self.encode_prompt(
                prompt=negatives,
                prompt_2=None,
                device=device,
                num_images_per_prompt=num_images_per_prompt,
                max_sequence_length=max_sequence_length,
            )[:2]
        conditioning = method.prepare(self, prepared, target_grid, position_mode, device, dtype).to(device)

        # 3. Noise and schedule.
        bases = prompt_seeds or [seed] * len(prompts)
        seeds = [base + j for base in bases for j in range(num_images_per_prompt)]
        latents = self.prepare_noise(seeds, height, width, device, dtype, noise_device, method.noise_dtype)
        noise_generators = (
            [sampling.step_noise_generator(s, noise_device) for s in seeds] if stochasticity > 0 else None
        )
        if time_shift is not None:
            mu = math.log(time_shift)
        else:
            shift = flow.ShiftConfig.from_scheduler_config(self.scheduler.config)
            mu = flow.schedule_mu(flow.image_seq_len(height, width, schedule), shift)
        sigmas = flow.sigmas(num_inference_steps, mu).tolist()

        # 4. The velocity (with classifier-free guidance around it) integrated from noise to data.
        cfg_start = options.true_cfg_start or 0
        cfg_end = num_inference_steps if options.true_cfg_end is None else options.true_cfg_end
        cfg_steps = None if (cfg_start, cfg_end) == (0, num_inference_steps) else range(cfg_start, cfg_end)
        negative_guidance = guidance_scale if options.negative_guidance is None else float(options.negative_guidance)
        with contextlib.ExitStack() as speedups:  # fast mode's switches, undone when the call ends
            features = None
            if options.reference_refresh != 1 and conditioning.num_reference_tokens:
                features = speedups.enter_context(reusing_references(self.transformer, options.reference_refresh))
            cache = step_cache_config(
                options.step_cache,
                options.taylorseer,
                self.transformer.dtype,
                options.magcache,
                num_inference_steps,
                self.mag_ratios,
            )
            if cache is not None:
                speedups.enter_context(step_cache(self.transformer, cache))
            conditional = self.velocity(
                conditioning,
                prompt_embeds,
                pooled_embeds,
                text_ids,
                guidance_scale,
                first_step_guidance=first_step,
                reference_features=features,
            )
            if negative is None:
                velocity = conditional
            elif conditioning.unconditional is None and negative_guidance == guidance_scale:
                # both branches see the same images and guidance: one forward over the doubled batch
                both = self.velocity(
                    conditioning,
                    torch.cat([prompt_embeds, negative[0]]),
                    torch.cat([pooled_embeds, negative[1]]),
                    text_ids,
                    guidance_scale,
                    "cond_uncond",
                    first_step_guidance=first_step,
                    reference_features=features,
                )
                velocity = sampling.classifier_free_batched(both, true_cfg_scale, cfg_steps, conditional)
            else:
                unconditional = conditioning.unconditional or conditioning
                velocity = sampling.classifier_free(
                    conditional,
                    self.velocity(
                        unconditional, *negative, text_ids, negative_guidance, "uncond", reference_features=features
                    ),
                    true_cfg_scale,
                    cfg_steps,
                )
            with self.progress_bar(total=num_inference_steps) as progress, self.active_adapters(conditioning.adapters):

                def after_step(step: int, t: float, x: torch.Tensor) -> torch.Tensor:
                    if callback_on_step_end is not None:
                        x = callback_on_step_end(self, step, t, {"latents": x}).get("latents", x)
                    progress.update()
                    return x

                latents = sampling.sample(
                    velocity,
                    latents,
                    sigmas,
                    stochasticity=stochasticity,
                    noise_generators=noise_generators,
                    callback=after_step,
                )

        if not torch.isfinite(latents).all():
            raise UnofluxError(
                "the model produced NaN or infinite values; try --dtype bf16 or fp32 (fp16 overflows on FLUX)"
            )
        settings = {  # what ran: GenerationRequest's fields, resolved
            "prompt": prompts[0] if len(prompts) == 1 else prompts,
            **dataclasses.asdict(options),
            "num_references": num_subjects,
            **({"num_style_references": len(references) - num_subjects} if len(references) > num_subjects else {}),
            "noise_device": noise_device,
            **({"prompt_seeds": prompt_seeds} if prompt_seeds is not None else {}),
        }
        if output_type == "latent":
            images = latents
        else:
            decoded = self.decode(latents, height, width)
            images = tensor_to_images(decoded) if output_type == "pil" else (decoded.float().clamp(-1, 1) + 1) / 2
        self.maybe_free_model_hooks()
        return UnoOutput(images=images, seeds=seeds, settings=settings, references=prepared)


# diffusers' names of options (FluxPipeline's arguments) -> SamplingOptions field names
DIFFUSERS_NAMES = {
    "num_inference_steps": "steps",
    "guidance_scale": "guidance",
    "true_cfg_scale": "true_cfg",
    "num_images_per_prompt": "num_images",
}


def call_options(options: SamplingOptions | None, values: dict[str, Any]) -> SamplingOptions:
    """``options`` (or the defaults) with the keyword arguments of a call over it, diffusers' names accepted."""
    renamed = {DIFFUSERS_NAMES.get(name, name): value for name, value in values.items()}
    known = {f.name for f in option_fields()}
    unknown = sorted(set(renamed) - known)
    if unknown:
        raise TypeError(f"unexpected keyword argument {unknown[0]!r}; the options are: {', '.join(sorted(known))}")
    if options is not None and not isinstance(options, SamplingOptions):
        raise TypeError(
            f"options must be a SamplingOptions, not {type(options).__name__} (sizes and steps are keywords)"
        )
    base = SamplingOptions() if options is None else options.sampling_options()
    return dataclasses.replace(base, **renamed)


def model_defaults_of(pipe) -> dict[str, Any]:
    """What ``pipe`` samples with where options say None; a stand-in without them (tests wrap pipelines) gets
    FLUX.1-dev's."""
    return getattr(pipe, "model_defaults", FLUX_DEV_DEFAULTS)
