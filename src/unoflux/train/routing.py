"""DreamO's routing constraint (arXiv 2504.16915, Eq. 2-3), for ``method: dreamo`` with ``dreamo.routing_weight > 0``.

In a chosen double block j, reference i's response map over the target's tokens is its attention logits averaged
over its own tokens (and, here, over heads)::

    M_i^j = mean_{q in ref i} mean_h  q_h . k_h / sqrt(d)        (one value per target token; Eq. 2, no softmax)
    L_route = 1 / (n_c n_l) sum_j sum_i || M_i^j - mask_i ||^2     (Eq. 3; mask_i: subject i's share of each token)

q and k are the attention's after its q/k norm and RoPE (captured with forward hooks on ``norm_q`` / ``norm_k`` and
``pos_embed``, RoPE applied with diffusers' own ``apply_rotary_emb``). Eq. 2 is linear in the query, so the mean
over a reference's queries is taken first: ``mean(q) . k`` costs O(tokens) per block, and no attention map
(tokens x tokens) is ever built.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import UnofluxError


@dataclass
class RoutingTargets:
    """What the constraint compares against in one batch: every reference's token count (in sequence order after
    the target's), each sample's masks (B, n_refs, N_target) and which samples have them (B,)."""

    reference_counts: list[int]
    masks: torch.Tensor
    valid: torch.Tensor


def check_routing_blocks(transformer: torch.nn.Module, blocks: Sequence[int]) -> None:
    count = len(transformer.transformer_blocks)
    for block in blocks:
        if not 0 <= block < count:
            raise UnofluxError(
                f"dreamo.routing_blocks names block {block}, but this model's double blocks are 0 .. {count - 1}"
            )


class RoutingCapture:
    """While inside, records the chosen double blocks' image-stream q and k (after their norms) and the RoPE of
    the forward; :meth:`response_maps` and :meth:`loss` then read them (gradients flow back through them)."""

    def __init__(self, transformer: torch.nn.Module, blocks: Sequence[int]):
        check_routing_blocks(transformer, blocks)
        self.transformer, self.blocks = transformer, list(blocks)
        self.queries: dict[int, torch.Tensor] = {}
        self.keys: dict[int, torch.Tensor] = {}
        self.rope: tuple[torch.Tensor, torch.Tensor] | None = None
        self._handles = []

    def __enter__(self) -> RoutingCapture:
        def keep(store, block):
            return lambda module, args, out: store.__setitem__(block, out)

        def keep_rope(module, args, out):
            self.rope = out

        self._handles.append(self.transformer.pos_embed.register_forward_hook(keep_rope))
        for block in self.blocks:
            attn = self.transformer.transformer_blocks[block].attn
            self._handles.append(attn.norm_q.register_forward_hook(keep(self.queries, block)))
            self._handles.append(attn.norm_k.register_forward_hook(keep(self.keys, block)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def response_maps(self, n_target: int, reference_counts: Sequence[int]) -> torch.Tensor:
        """(n_blocks, B, n_refs, n_target): each reference's mean attention logit onto every target token."""
        if self.rope is None or len(self.queries) != len(self.blocks):
            raise UnofluxError("the routing constraint saw no transformer forward; run the model inside the capture")
        maps = []
        for block in self.blocks:
            q, k = self.queries[block], self.keys[block]  # (B, L_img, H, D): the double block's image stream
            keys = _rotated(k, 0, n_target, self.rope).float()
            heads, dim = keys.shape[2], keys.shape[3]
            rows, start = [], n_target
            for count in reference_counts:
                mean_query = _rotated(q, start, start + count, self.rope).float().mean(dim=1)  # (B, H, D)
                rows.append(torch.einsum("bhd,bnhd->bn", mean_query, keys) / (heads * math.sqrt(dim)))
                start += count
            maps.append(torch.stack(rows, dim=1))
        return torch.stack(maps)

    def loss(self, n_target: int, targets: RoutingTargets) -> torch.Tensor:
        """Eq. 3, averaged over the samples that have masks."""
        maps = self.response_maps(n_target, targets.reference_counts)
        return routing_loss(maps, targets.masks.to(maps), targets.valid.to(maps))


def _rotated(x: torch.Tensor, start: int, stop: int, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Image tokens ``start:stop`` of ``x`` (B, L_img, H, D) with their RoPE, as the attention applies it; ``rope``
    covers [text, image] tokens."""
    from diffusers.models.embeddings import apply_rotary_emb

    cos, sin = rope
    text = cos.shape[0] - x.shape[1]
    return apply_rotary_emb(
        x[:, start:stop], (cos[text + start : text + stop], sin[text + start : text + stop]), sequence_dim=1
    )


def routing_loss(maps: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``1 / (n_c n_l) sum_j sum_i ||maps[j, :, i] - masks[:, i]||^2`` per sample (maps (n_l, B, n_c, N), masks
    (B, n_c, N)), averaged over the ``valid`` (B,) samples."""
    per_sample = (maps - masks[None]).square().sum(dim=-1).mean(dim=(0, 2))
    return (per_sample * valid).sum() / valid.sum().clamp(min=1)
