"""DreamO's routing constraint (arXiv 2504.16915, Eq. 2-3), for ``method: dreamo`` with ``dreamo.routing_weight > 0``.

In a chosen double block j, reference i's response map over the target's tokens is its attention logits averaged
over its own tokens (and, here, over heads)::

    M_i^j = mean_{q in ref i} mean_h  q_h . k_h / sqrt(d)        (one value per target token; Eq. 2, no softmax)
    L_route = 1 / (n_c n_l) sum_j sum_i || M_i^j - mask_i ||^2     (Eq. 3; mask_i: subject i's share of each token)

The placeholder loss (Eq. 4) ties reference i's image tokens to its caption placeholder ``[ref#i]``: each of its
queries, against the keys of the placeholders ``R = [T_ref#1 .. T_ref#n_c]``, softmaxed over the placeholders
(per head, then averaged over heads), should be the one-hot ``B_i``::

    L_holder = 1 / n_c sum_i mean_{q in ref i} || softmax(q . R^T / sqrt(d)) - B_i ||^2      (per block, averaged)

(the paper's squared norm over ref i's tokens, taken as a mean over them so its scale does not grow with the
reference's size).

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
import torch.nn.functional as F

from ..errors import UnofluxError


@dataclass
class PlaceholderTargets:
    """What the placeholder loss needs in one batch: every reference's token count, each sample's text position of
    ``[ref#1]`` .. ``[ref#n_c]`` (B, n_c) and which samples name every reference (B,)."""

    reference_counts: list[int]
    positions: torch.Tensor
    valid: torch.Tensor


def placeholder_targets(
    text_ids: torch.Tensor, first_placeholder: int, reference_counts: Sequence[int]
) -> PlaceholderTargets | None:
    """Where each caption (T5 ids, (B, L)) names each reference (its first ``[ref#i]``); None when no caption
    names them all (DreamO trains half its captions without placeholders and skips the loss on them), or when there
    is one reference (the softmax over one placeholder is 1 everywhere: the loss is 0 and has no gradient)."""
    if len(reference_counts) < 2:
        return None
    found = [text_ids == first_placeholder + i for i in range(len(reference_counts))]
    valid = torch.stack([f.any(dim=1) for f in found], dim=1).all(dim=1)
    if not valid.any():
        return None
    positions = torch.stack([f.int().argmax(dim=1) for f in found], dim=1)
    return PlaceholderTargets(list(reference_counts), positions, valid.float())


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
        self.text_keys: dict[int, torch.Tensor] = {}
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
            self._handles.append(attn.norm_added_k.register_forward_hook(keep(self.text_keys, block)))
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

    def placeholder_probabilities(self, targets: PlaceholderTargets) -> list[list[torch.Tensor]]:
        """Per block, per reference i: (B, l_i, n_c), each of its queries' softmax over the placeholders' keys,
        averaged over heads."""
        if self.rope is None or len(self.text_keys) != len(self.blocks):
            raise UnofluxError("the placeholder loss saw no transformer forward; run the model inside the capture")
        from diffusers.models.embeddings import apply_rotary_emb

        out = []
        for block in self.blocks:
            q, text_keys = self.queries[block], self.text_keys[block]  # (B, L_img, H, D), (B, L_txt, H, D)
            length = text_keys.shape[1]
            text_keys = apply_rotary_emb(text_keys, (self.rope[0][:length], self.rope[1][:length]), sequence_dim=1)
            index = targets.positions[:, :, None, None].expand(-1, -1, *text_keys.shape[2:])
            holders = torch.gather(text_keys, 1, index).float()  # (B, n_c, H, D)
            scale = 1 / math.sqrt(holders.shape[-1])
            start, rows = q.shape[1] - sum(targets.reference_counts), []
            for count in targets.reference_counts:
                queries = _rotated(q, start, start + count, self.rope).float()  # (B, l_i, H, D)
                logits = torch.einsum("blhd,bphd->blhp", queries, holders) * scale
                rows.append(logits.softmax(dim=-1).mean(dim=2))
                start += count
            out.append(rows)
        return out

    def placeholder_loss(self, targets: PlaceholderTargets) -> torch.Tensor:
        """Eq. 4, averaged over the chosen blocks and the samples that name every reference."""
        return placeholder_loss(self.placeholder_probabilities(targets), targets.valid)


def placeholder_loss(probabilities: list[list[torch.Tensor]], valid: torch.Tensor) -> torch.Tensor:
    """``1 / n_c sum_i mean_q ||p_i[q] - onehot(i)||^2`` per sample and block (``probabilities`` as
    :meth:`RoutingCapture.placeholder_probabilities` gives them), averaged over blocks and ``valid`` samples."""
    per_block = []
    for rows in probabilities:
        n_c = len(rows)
        terms = [
            (p - F.one_hot(torch.tensor(i), n_c).to(p)).square().sum(dim=-1).mean(dim=1) for i, p in enumerate(rows)
        ]
        per_block.append(torch.stack(terms).mean(dim=0))  # (B,)
    per_sample = torch.stack(per_block).mean(dim=0)
    valid = valid.to(per_sample)
    return (per_sample * valid).sum() / valid.sum().clamp(min=1)


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
