"""The one place that calls the transformer with a method's :class:`~unoflux.methods.Conditioning`, for sampling
and for training alike.

Reference tokens are concatenated after the noisy target tokens (same timestep), the output is sliced back to the
target tokens; per-token embeddings and text-stream prefixes enter through forward hooks on ``x_embedder`` and
``context_embedder`` that live only inside :func:`conditioning_hooks`: diffusers' classes are never patched, so its
cache hooks, offloading and layerwise casting keep working.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from .methods.base import Conditioning


def _batched(x: torch.Tensor, batch: int) -> torch.Tensor:
    return x if x.shape[0] == batch else x.expand(batch, *x.shape[1:])


def transformer_inputs(
    conditioning: Conditioning,
    x_t: torch.Tensor,
    timestep: torch.Tensor,
    guidance: torch.Tensor | None,
    text: torch.Tensor,
    pooled: torch.Tensor,
    text_ids: torch.Tensor,
) -> dict:
    """Keyword arguments of ``FluxTransformer2DModel.forward`` for noisy target tokens ``x_t`` (B, N, 64) at
    ``timestep`` (B,), T5 embeddings ``text`` (B, L, D_text), CLIP ``pooled`` (B, D_pool) and ``text_ids`` (L, 3)."""
    hidden = x_t
    if conditioning.reference_tokens is not None:
        hidden = torch.cat([x_t, _batched(conditioning.reference_tokens, len(x_t)).to(x_t.dtype)], dim=1)
    if conditioning.text_prefix is not None:  # the prefix tokens themselves arrive through conditioning_hooks
        prefix_ids = conditioning.text_prefix_ids
        if prefix_ids is None:
            prefix_ids = text_ids.new_zeros(conditioning.text_prefix.shape[1], text_ids.shape[1])
        text_ids = torch.cat([prefix_ids.to(text_ids), text_ids])
    return dict(
        hidden_states=hidden,
        timestep=timestep,
        guidance=guidance,
        pooled_projections=pooled,
        encoder_hidden_states=text,
        txt_ids=text_ids,
        img_ids=conditioning.image_ids,
        return_dict=False,
    )


@contextlib.contextmanager
def conditioning_hooks(transformer: torch.nn.Module, conditioning: Conditioning) -> Iterator[None]:
    """While inside, ``transformer`` adds ``conditioning.token_embeddings`` to the image tokens after ``x_embedder``
    and prepends ``conditioning.text_prefix`` to the text tokens after ``context_embedder`` (hidden width already,
    so it bypasses the text projection, as USO's style tokens do)."""
    handles = []
    embeddings, prefix = conditioning.token_embeddings, conditioning.text_prefix
    if embeddings is not None:
        handles.append(
            transformer.x_embedder.register_forward_hook(
                lambda module, args, out: out + _batched(embeddings, len(out)).to(out.dtype)
            )
        )
    if prefix is not None:
        handles.append(
            transformer.context_embedder.register_forward_hook(
                lambda module, args, out: torch.cat([_batched(prefix, len(out)).to(out.dtype), out], dim=1)
            )
        )
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def predict_velocity(
    model,
    transformer: torch.nn.Module,
    conditioning: Conditioning,
    x_t: torch.Tensor,
    timestep: torch.Tensor,
    guidance: torch.Tensor | None,
    text: torch.Tensor,
    pooled: torch.Tensor,
    text_ids: torch.Tensor,
    text_key: str = "encoder_hidden_states",
) -> torch.Tensor:
    """The velocity of the noisy target tokens (B, N, 64). ``model`` is what is called (the transformer, or a
    wrapper around it such as accelerate's or the trainer's with a T5 inside, then ``text_key`` names its text
    input); ``transformer`` is the FLUX transformer inside it, whose embedders carry the hooks."""
    inputs = transformer_inputs(conditioning, x_t, timestep, guidance, text, pooled, text_ids)
    inputs[text_key] = inputs.pop("encoder_hidden_states")
    with conditioning_hooks(transformer, conditioning):
        return model(**inputs)[0][:, : x_t.shape[1]]
