"""The training objective: flow-matching MSE of a FLUX transformer, text-to-image or with reference images (UNO
Stage I / II). :class:`FlowObjective` needs no ``accelerate``: the trainer hands it the prepared model, its device
and autocast.

One micro-batch (UNO recipe, DESIGN.md section 4)::

    x_data = pack(scale * (VAE(image).mode - shift))         (B, N, 64)
    t      = flow.sample_training_t(B, N)                    shifted at the true token count N
    x_t    = flow.interpolate(x_data, noise, t)
    cond   = method.conditioning(method.encode_references(refs))   clean reference tokens and ids, as at inference
    v      = engine.predict_velocity(transformer, cond, x_t, t, text, guidance=1)   [x_t | refs] -> [:, :N]
    loss   = mse(v, flow.velocity_target(x_data, noise))    on the target tokens only

Every random draw (text dropout, look-free swaps, t, noise, the dropped reference tokens) comes from the generator it
is given, in that order.
With an encoding cache (:class:`~.cache.EncodingCache`) the VAE and text-encoder outputs are looked up instead,
with the same draws. With ``train_text_encoder`` (full mode) the T5 encoder trains with the transformer: ``text``
is then T5 token ids, encoded inside the trained module's forward (:class:`TransformerWithTextEncoder`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from .. import engine, flow
from ..conditioning import image_to_tensor
from ..errors import UnofluxError
from ..methods import Conditioning, Method
from .cache import EncodingCache, t5_input_ids
from .config import TrainConfig
from .data import Batch, Sample, reference_token_masks, subject_token_weights
from .routing import PlaceholderTargets, RoutingCapture, RoutingTargets, check_routing_blocks, placeholder_targets


def drop_reference_tokens(conditioning: Conditioning, share: float, gen: torch.Generator) -> Conditioning:
    """``conditioning`` without a random ``share`` of its reference tokens (at least one is kept): their latents,
    RoPE ids and added embeddings (DreamO's task and index embeddings) leave together, and the kept tokens stay in
    order at their own positions. One subset for the whole batch (its samples share their reference sizes)."""
    n_ref = conditioning.num_reference_tokens
    n_target = len(conditioning.image_ids) - n_ref
    kept = torch.randperm(n_ref, generator=gen)[: max(1, round(n_ref * (1 - share)))].sort().values
    kept = kept.to(conditioning.image_ids.device)
    rows = torch.cat([torch.arange(n_target, device=kept.device), n_target + kept])  # target tokens, kept references
    embeddings = conditioning.token_embeddings
    return dataclasses.replace(
        conditioning,
        image_ids=conditioning.image_ids[rows],
        reference_tokens=conditioning.reference_tokens[:, kept.to(conditioning.reference_tokens.device)],
        token_embeddings=None if embeddings is None else embeddings[:, rows.to(embeddings.device)],
    )


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


def text_as_ids(config: TrainConfig) -> bool:
    """Whether the trained module takes T5 token ids: it runs T5 itself (``train_text_encoder``; ``method: dreamo``,
    whose placeholder rows train)."""
    return config.train_text_encoder or config.method == "dreamo"


def text_length(config: TrainConfig, pipe) -> int:
    """T5 tokens per caption: the config's, or the model's own (as the pipeline pads)."""
    return config.max_sequence_length or pipe.text_sequence_length


class FlowObjective:
    """The loss of one micro-batch. ``model`` is what is called (the transformer, or a wrapper around it: accelerate's,
    :class:`TransformerWithTextEncoder`); ``transformer`` is the FLUX transformer inside it; ``pipe`` encodes images
    and captions; ``references``: the data is paired (its captions may have look-free variants)."""

    def __init__(
        self,
        pipe,
        model: torch.nn.Module,
        transformer: torch.nn.Module,
        method: Method,
        config: TrainConfig,
        shift: flow.ShiftConfig,
        device: torch.device | str,
        autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
        references: bool = False,
        first_placeholder: int | None = None,
    ):
        self.pipe, self.model, self.transformer, self.method = pipe, model, transformer, method
        self.config, self.shift, self.device, self.autocast = config, shift, torch.device(device), autocast
        self.references = references
        self.first_placeholder = first_placeholder  # T5 id of DreamO's [ref#1] (the placeholder loss finds them)
        self.last_routing: torch.Tensor | None = None  # the last loss's routing constraint (unweighted, detached)
        self.last_holder: torch.Tensor | None = None  # and its placeholder loss
        if (
            config.dreamo.routing_weight or config.dreamo.holder_weight
        ):  # a block the model lacks is an error now, not at the first world record
            check_routing_blocks(transformer, config.dreamo.routing_blocks)

    @property
    def max_sequence_length(self) -> int:
        return text_length(self.config, self.pipe)

    @property
    def text_as_ids(self) -> bool:
        """Whether the trained module encodes the text itself from T5 token ids (a T5 that trains, in full or in
        DreamO's placeholder rows)."""
        return text_as_ids(self.config)

    # -------------------------------------------------------------------------------------------- encode
    def pick_captions(
        self, captions: list[str], captions_without_looks: list[str | None] | None, gen: torch.Generator
    ) -> list[str]:
        """The captions trained on: text dropout applied (the empty prompt) and, with ``look_free_captions``, some
        swapped for their look-free variants. The only random draws before the flow's own (t, noise)."""
        drop = torch.rand(len(captions), generator=gen) < self.config.text_dropout
        # no extra draw without look-free captions: runs without them stay as they were
        if self.config.look_free_captions > 0 and captions_without_looks:
            swap = (torch.rand(len(captions), generator=gen) < self.config.look_free_captions).tolist()
            captions = [alt if s and alt else c for c, alt, s in zip(captions, captions_without_looks, swap)]
        return ["" if d else c for c, d in zip(captions, drop.tolist())]

    @torch.no_grad()
    def encode(
        self,
        pixels: torch.Tensor,
        captions: list[str],
        gen: torch.Generator,
        captions_without_looks: list[str | None] | None = None,
    ):
        """Packed clean latents (B, N, 64) and the text inputs (:meth:`encode_text`) of :meth:`pick_captions`."""
        captions = self.pick_captions(captions, captions_without_looks, gen)
        x_data = self.pipe.encode_pixels(pixels.to(self.device), torch.float32)
        return x_data, *self.encode_text(captions)

    @torch.no_grad()
    def encode_text(self, captions: list[str]):
        """(text, pooled, text ids): ``text`` is the T5 embeddings (B, L, D), or with ``train_text_encoder`` the
        T5 token ids (B, L) that the trained module encodes itself."""
        pipe, device, length = self.pipe, self.device, self.max_sequence_length
        prompt_embeds, pooled, text_ids = pipe.encode_prompt(
            prompt=captions, prompt_2=None, device=device, max_sequence_length=length
        )
        if self.text_as_ids:  # (the frozen T5 pass above is then unused: cheap for the world's T5)
            return t5_input_ids(pipe, captions, length).to(device), pooled, text_ids
        return prompt_embeds, pooled, text_ids

    def reference_conditioning(self, references: list[list] | None, target_grid: tuple[int, int]) -> Conditioning:
        """Per-sample lists of preprocessed reference images (or None: text-to-image) -> the method's conditioning
        of the batch: clean packed reference tokens (B, N_ref, 64), each image encoded as at inference, and the ids
        of all image tokens (target, then references). Outside ``no_grad``: a method's trainable embeddings
        (DreamO's) enter here."""
        device, cfg = self.device, self.config
        if not references:
            return self.method.conditioning(target_grid, None, [], cfg.position_mode).to(device)
        grids = [(image.height // 16, image.width // 16) for image in references[0]]
        if any([(image.height // 16, image.width // 16) for image in refs] != grids for refs in references):
            raise UnofluxError("the samples of a batch have references of different sizes; they cannot be stacked")
        with torch.no_grad():  # the VAE is frozen
            tokens = torch.cat(
                [
                    torch.cat(
                        [
                            self.method.encode_references(self.pipe, image_to_tensor(image).to(device), torch.float32)
                            for image in refs
                        ],
                        dim=1,
                    )
                    for refs in references
                ]
            )
        return self.method.conditioning(target_grid, tokens, grids, cfg.position_mode).to(device)

    # ---------------------------------------------------------------------------------------------- loss
    def predict(self, x_t, t, text, pooled, text_ids, conditioning: Conditioning) -> torch.Tensor:
        """The velocity of the noisy target tokens, through the engine the pipeline samples with (reference tokens
        after the target's, same timestep, output sliced back). ``text``: see :meth:`encode_text`."""
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.ones(len(x_t), device=x_t.device)  # UNO trains with guidance 1
        text_key = "t5_input_ids" if self.text_as_ids else "encoder_hidden_states"
        with self.autocast():
            return engine.predict_velocity(
                self.model, self.transformer, conditioning, x_t, t, guidance, text, pooled, text_ids, text_key=text_key
            )

    def loss(self, batch: Batch, gen: torch.Generator) -> torch.Tensor:
        """Flow-matching MSE on the target tokens of ``batch`` (its references, look-free captions and subject
        boxes, where it has them; the boxes' tokens weighted by ``subject_loss_weight``)."""
        x_data, text, pooled, text_ids = self.encode(batch.pixels, batch.captions, gen, batch.captions_without_looks)
        target_grid = (batch.pixels.shape[-2] // 16, batch.pixels.shape[-1] // 16)
        conditioning = self.reference_conditioning(batch.references, target_grid)
        weights = self.token_weights(batch.subject_boxes, target_grid)
        grids = [(image.height // 16, image.width // 16) for image in batch.references[0]] if batch.references else []
        routing = self.routing_targets(batch.subject_boxes, target_grid, grids, batch.subject_masks)
        holder = self.holder_targets(text, grids)
        return self.flow_loss(x_data, conditioning, text, pooled, text_ids, gen, weights, routing, holder)

    def cached_loss(
        self, cache: EncodingCache, samples: Sequence[Sample], indices: list[int], gen: torch.Generator
    ) -> torch.Tensor:
        """:meth:`loss` of the samples ``indices`` (of the dataset's ``samples``) from ``cache``: the same random
        draws, the same inputs."""
        chosen = [samples[i] for i in indices]
        without_looks = [s.caption_without_looks for s in chosen] if self.references else None
        captions = self.pick_captions([s.caption for s in chosen], without_looks, gen)
        cached = cache.batch(indices, captions)
        conditioning = self.method.conditioning(
            cached.target_grid, cached.reference_tokens, cached.reference_grids, self.config.position_mode
        )
        boxes = [s.subject_boxes for s in chosen]
        weights = self.token_weights(boxes, cached.target_grid)
        masks = [s.subject_masks for s in chosen]
        routing = self.routing_targets(boxes, cached.target_grid, cached.reference_grids, masks)
        holder = self.holder_targets(cached.text, cached.reference_grids)
        return self.flow_loss(
            cached.latents,
            conditioning.to(cached.latents.device),
            cached.text,
            cached.pooled,
            cached.text_ids,
            gen,
            weights,
            routing,
            holder,
        )

    def token_weights(self, subject_boxes: list[tuple] | None, target_grid: tuple[int, int]) -> torch.Tensor | None:
        """The per-token loss weights of ``subject_loss_weight``, or None for the plain MSE."""
        if self.config.subject_loss_weight == 1 or not subject_boxes or not any(subject_boxes):
            return None
        weights = subject_token_weights(subject_boxes, target_grid, self.config.subject_loss_weight)
        return weights.to(self.device)

    def routing_targets(
        self, subject_boxes: list[tuple] | None, target_grid: tuple[int, int], reference_grids, subject_masks=None
    ) -> RoutingTargets | None:
        """The routing constraint's masks for this batch (token shares of each subject's exact mask, or of its box
        where a sample has no masks), or None (off, no references, or no sample with one per reference)."""
        if not self.config.dreamo.routing_weight or not reference_grids or not subject_boxes:
            return None
        masks, valid = reference_token_masks(subject_boxes, target_grid, len(reference_grids), subject_masks)
        if not valid.any():
            return None
        counts = [rows * cols for rows, cols in reference_grids]
        return RoutingTargets(counts, masks.to(self.device), valid.to(self.device))

    def holder_targets(self, text, reference_grids) -> PlaceholderTargets | None:
        """The placeholder loss's positions for this batch (``text``: T5 ids), or None (off, no references, or
        no caption naming every reference)."""
        if not self.config.dreamo.holder_weight or not reference_grids or self.first_placeholder is None:
            return None
        counts = [rows * cols for rows, cols in reference_grids]
        return placeholder_targets(text.to(self.device), self.first_placeholder, counts)

    def flow_loss(
        self,
        x_data,
        conditioning: Conditioning,
        text,
        pooled,
        text_ids,
        gen: torch.Generator,
        token_weights=None,
        routing: RoutingTargets | None = None,
        holder: PlaceholderTargets | None = None,
    ) -> torch.Tensor:
        """The MSE between the predicted and true velocity at a random point of the flow from ``x_data``,
        each token's squared error scaled by ``token_weights`` (B, N) when given; plus ``dreamo.routing_weight``
        times DreamO's routing constraint when ``routing`` is given, ``dreamo.holder_weight`` times its placeholder
        loss when ``holder`` is."""
        b, n, _ = x_data.shape  # (B, N, 64)
        t = flow.sample_training_t(b, n, generator=gen, config=self.shift)  # true token count, as UNO trains
        noise = torch.randn(x_data.shape, generator=gen)
        t, noise = t.to(self.device), noise.to(self.device)
        x_t = flow.interpolate(x_data, noise, t)
        target = flow.velocity_target(x_data, noise)
        if self.config.reference_token_drop and conditioning.num_reference_tokens:  # (a draw only when on)
            conditioning = drop_reference_tokens(conditioning, self.config.reference_token_drop, gen)
        if routing is None and holder is None:
            prediction = self.predict(x_t, t, text, pooled, text_ids, conditioning)
        else:
            with RoutingCapture(self.transformer, self.config.dreamo.routing_blocks) as capture:
                prediction = self.predict(x_t, t, text, pooled, text_ids, conditioning)
        if token_weights is None:
            loss = F.mse_loss(prediction.float(), target.float())
        else:
            loss = ((prediction.float() - target.float()).square().mean(dim=-1) * token_weights).mean()
        self.last_routing = None
        if routing is not None:
            route = capture.loss(n, routing)
            self.last_routing = route.detach()
            loss = loss + self.config.dreamo.routing_weight * route
        self.last_holder = None
        if holder is not None:
            held = capture.placeholder_loss(holder)
            self.last_holder = held.detach()
            loss = loss + self.config.dreamo.holder_weight * held
        return loss
