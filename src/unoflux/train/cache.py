"""Encodings computed once before training (``cache_encodings: true``): every sample's clean latent tokens and
reference tokens, and the text embeddings of every caption a run can draw (its captions, their look-free
variants, and the empty prompt of text dropout); when the T5 encoder trains (``train_text_encoder``), its token
ids instead of its embeddings.

Exact: the VAE gives its latent mode (no sampling) and the frozen text encoders' outputs do not change, so a cached
run feeds the transformer what an uncached one encodes at every step (up to float rounding that depends on batch
make-up).
What it saves is the per-step image decoding, VAE and text-encoder passes: on small images they cost more
than the transformer itself (the embedded model's Stage I on the CPU: 474 of 1240 ms per step).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm import tqdm

from ..conditioning import image_to_tensor
from .data import BucketDataset, PairedDataset, collate

TEXT_BATCH = 256  # captions per text-encoder pass while building


def t5_input_ids(pipe, captions: list[str], max_sequence_length: int) -> torch.Tensor:
    """(B, L) T5 token ids of ``captions``, tokenized exactly as diffusers' FLUX pipeline does before its T5."""
    return pipe.tokenizer_2(
        captions, padding="max_length", max_length=max_sequence_length, truncation=True, return_tensors="pt"
    ).input_ids


@dataclass
class CachedBatch:
    """One batch's encodings, as :meth:`EncodingCache.batch` looks them up."""

    latents: torch.Tensor  # (B, N, 64) clean packed latents
    reference_tokens: torch.Tensor | None  # (B, N_ref, 64), or None: text-to-image
    target_grid: tuple[int, int]
    reference_grids: tuple[tuple[int, int], ...]
    text: torch.Tensor  # T5 embeddings (B, L, D), or T5 token ids (B, L)
    pooled: torch.Tensor  # (B, D_pool)
    text_ids: torch.Tensor  # (L, 3)


class EncodingCache:
    """Tensors on the training device, looked up by sample index and caption."""

    def __init__(
        self,
        latents: list[torch.Tensor],
        references: list[torch.Tensor | None],
        grids: list[tuple[tuple[int, int], tuple[tuple[int, int], ...]]],
        captions: list[str],
        text: torch.Tensor,
        pooled: torch.Tensor,
        text_ids: torch.Tensor,
    ):
        self.latents, self.references, self.grids = latents, references, grids
        self.row = {caption: k for k, caption in enumerate(captions)}
        self.text, self.pooled, self.text_ids = text, pooled, text_ids  # text: T5 embeddings, or T5 token ids

    @classmethod
    @torch.no_grad()
    def build(
        cls,
        pipe,
        dataset: BucketDataset,
        device: torch.device,
        max_sequence_length: int,
        look_free: bool = False,
        batch_size: int = 64,
        num_workers: int = 0,
        progress: bool = True,
        t5_ids: bool = False,
        method=None,
    ) -> EncodingCache:
        """Encode ``dataset`` with ``pipe``'s own VAE and text encoders (``look_free``: also every record's
        caption without looks; ``t5_ids``: keep T5 token ids, not embeddings, for a T5 that trains; ``method``: whose
        :meth:`~unoflux.methods.Method.encode_references` encodes the references, UNO's by default), in batches of one
        group so that images and references stack."""
        from ..methods import DEFAULT_METHOD, get_method

        method = get_method(method or DEFAULT_METHOD)
        order = sorted(range(len(dataset)), key=lambda i: (dataset.group_of[i], i))
        batches, current = [], []
        for i in order:
            if current and (dataset.group_of[current[0]] != dataset.group_of[i] or len(current) == batch_size):
                batches.append(current)
                current = []
            current.append(i)
        batches.append(current)
        paired = isinstance(dataset, PairedDataset)
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=batches, num_workers=num_workers, collate_fn=collate
        )
        latents: list = [None] * len(dataset)
        references: list = [None] * len(dataset)
        bar = tqdm(total=len(dataset), desc="caching encodings", unit="image", disable=not progress)
        for indices, batch in zip(batches, loader):
            pixels = batch.pixels.to(device)
            for i, tokens in zip(indices, pipe.encode_pixels(pixels, torch.float32)):
                latents[i] = tokens
            if paired:  # the j-th references of a batch share one size: encode them together
                refs = batch.references
                per_position = [
                    method.encode_references(
                        pipe, torch.cat([image_to_tensor(r[j]) for r in refs]).to(device), torch.float32
                    )
                    for j in range(len(refs[0]))
                ]
                for k, i in enumerate(indices):
                    references[i] = torch.cat([tokens[k] for tokens in per_position])
            bar.update(len(indices))
        bar.close()

        grids = []
        for i, sample in enumerate(dataset.samples):
            height, width = dataset.buckets[dataset.bucket_of[i]]
            grids.append(((height // 16, width // 16), tuple((h // 16, w // 16) for w, h in sample.reference_sizes)))

        captions = {""} | {s.caption for s in dataset.samples}  # "" = text dropout
        if look_free:
            captions |= {s.caption_without_looks for s in dataset.samples if s.caption_without_looks}
        captions = sorted(captions)
        embeds, pooled, text_ids = [], [], None
        for k in tqdm(range(0, len(captions), TEXT_BATCH), desc="caching captions", disable=not progress):
            chunk = captions[k : k + TEXT_BATCH]
            e, p, text_ids = pipe.encode_prompt(
                prompt=chunk, prompt_2=None, device=device, max_sequence_length=max_sequence_length
            )
            embeds.append(t5_input_ids(pipe, chunk, max_sequence_length).to(device) if t5_ids else e)
            pooled.append(p)
        return cls(latents, references, grids, captions, torch.cat(embeds), torch.cat(pooled), text_ids)

    def batch(self, indices: list[int], captions: list[str]) -> CachedBatch:
        """The encodings of one batch (one group: all stacks), with the text rows of ``captions``."""
        rows = torch.tensor([self.row[c] for c in captions], device=self.text.device)
        references = None
        if self.references[indices[0]] is not None:
            references = torch.stack([self.references[i] for i in indices])
        target_grid, reference_grids = self.grids[indices[0]]
        return CachedBatch(
            torch.stack([self.latents[i] for i in indices]),
            references,
            target_grid,
            reference_grids,
            self.text[rows],
            self.pooled[rows],
            self.text_ids,
        )
