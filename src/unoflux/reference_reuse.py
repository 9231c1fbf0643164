"""Reference-feature reuse: the references' keys and values, computed on some steps and reused on the others.

The references are the same clean image at every step; only their timestep modulation and what they attend to
change. So a *recording* step runs the full forward (``[text | target | references]``, exactly the default
processor's arithmetic) and keeps, at every attention layer, the keys and values of the reference tokens (after
the q/k norms and RoPE); a *reusing* step runs the transformer on ``[text | target]`` only, and each attention
layer appends the kept reference keys and values, so text and target still see the references while their own
rows, MLPs and modulations are skipped. With one reference as large as the output that removes about 40% of the
work per step, more with several (OminiControl2's conditional feature reuse). It is an approximation: the kept
features are those of the recording step's timestep; ``refresh`` sets how often they are recomputed.

The transformer gets a processor of ours through diffusers' public ``set_attn_processor`` for the duration of a
call (:func:`reusing_references`), and its own processors back afterwards; its classes are never patched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor, _get_qkv_projections


class ReferenceFeatures:
    """The kept keys and values, per branch of guidance (``cond``, ``uncond``, ``cond_uncond``: each saw its own
    text) and attention layer, and what the next forward does with them."""

    def __init__(self, refresh: int):
        self.refresh = refresh  # recompute every `refresh` steps (per branch); 0: never after the first
        self.kept: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self.recorded_at: dict[str, int] = {}  # branch -> the step it last recorded
        self.mode: str | None = None  # "record", "reuse" or None (the default processor's behaviour)
        self.branch = ""
        self.num_reference_tokens = 0

    def plan(self, branch: str, step: int, num_reference_tokens: int) -> bool:
        """Set up the next forward of ``branch`` at ``step``; True if it reuses (runs without the reference
        tokens), False if it records (runs with them). A branch records when it has nothing kept yet (so a branch
        that starts late, like the conditional one after true CFG's window, records its own) or its features are
        ``refresh`` steps old (never, with ``refresh`` 0)."""
        self.branch, self.num_reference_tokens = branch, num_reference_tokens
        last = self.recorded_at.get(branch)
        if num_reference_tokens == 0:
            self.mode = None
        elif last is None or (self.refresh and step - last >= self.refresh):
            self.mode, self.recorded_at[branch] = "record", step
        else:
            self.mode = "reuse"
        return self.mode == "reuse"


class ReferenceReuseProcessor(FluxAttnProcessor):
    """FLUX's joint attention (diffusers' ``FluxAttnProcessor``, same arithmetic) that records or appends the
    reference tokens' keys and values. The references are the last tokens of the joint sequence in both kinds of
    block (double: ``[text | image]`` concatenated here; single: concatenated by the block)."""

    def __init__(self, features: ReferenceFeatures, layer: str):
        super().__init__()
        self.features, self.layer = features, layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        query, key, value, encoder_query, encoder_key, encoder_value = _get_qkv_projections(
            attn, hidden_states, encoder_hidden_states
        )
        query = attn.norm_q(query.unflatten(-1, (-1, attn.head_dim)))
        key = attn.norm_k(key.unflatten(-1, (-1, attn.head_dim)))
        value = value.unflatten(-1, (-1, attn.head_dim))
        if attn.added_kv_proj_dim is not None:
            encoder_query = attn.norm_added_q(encoder_query.unflatten(-1, (-1, attn.head_dim)))
            encoder_key = attn.norm_added_k(encoder_key.unflatten(-1, (-1, attn.head_dim)))
            encoder_value = encoder_value.unflatten(-1, (-1, attn.head_dim))
            query = torch.cat([encoder_query, query], dim=1)
            key = torch.cat([encoder_key, key], dim=1)
            value = torch.cat([encoder_value, value], dim=1)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        features, slot = self.features, (self.features.branch, self.layer)
        if features.mode == "record":
            n = features.num_reference_tokens
            features.kept[slot] = (key[:, -n:].clone(), value[:, -n:].clone())
        elif features.mode == "reuse":
            kept_key, kept_value = features.kept[slot]
            key, value = torch.cat([key, kept_key], dim=1), torch.cat([value, kept_value], dim=1)

        hidden_states = dispatch_attention_fn(
            query,
            key,
            value,
            attn_mask=attention_mask,
            backend=self._attention_backend,
            parallel_config=self._parallel_config,
        )
        hidden_states = hidden_states.flatten(2, 3).to(query.dtype)
        if encoder_hidden_states is None:
            return hidden_states
        encoder_hidden_states, hidden_states = hidden_states.split_with_sizes(
            [encoder_hidden_states.shape[1], hidden_states.shape[1] - encoder_hidden_states.shape[1]], dim=1
        )
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states.contiguous()))
        return hidden_states, attn.to_add_out(encoder_hidden_states.contiguous())


@contextlib.contextmanager
def reusing_references(transformer: torch.nn.Module, refresh: int) -> Iterator[ReferenceFeatures]:
    """While inside, ``transformer``'s attention layers record or reuse reference features as the yielded
    :class:`ReferenceFeatures` plans; its own processors are back on exit (the kept features are dropped with it,
    so nothing leaks into the next call)."""
    previous = transformer.attn_processors
    features = ReferenceFeatures(refresh)
    transformer.set_attn_processor({name: ReferenceReuseProcessor(features, name) for name in previous})
    try:
        yield features
    finally:
        transformer.set_attn_processor(previous)
        features.kept.clear()
