"""UNO (arXiv 2504.02160, bytedance/UNO): references are VAE tokens after the noisy target tokens, placed by UnoPE.

Every reference is resized with its aspect kept to a long side (512 for one, 320 for several; see
:func:`unoflux.conditioning.preprocess_reference`), VAE-encoded like the target and packed 2x2; its tokens follow
the target's and share its timestep; their RoPE ids are shifted diagonally away from the target
(:func:`unoflux.conditioning.sequence_position_ids`). No embeddings, no text-stream additions; CFG's negative
branch sees the same references. With no reference it is plain FLUX text-to-image.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from ..conditioning import sequence_position_ids
from ..errors import UnofluxError
from ..references import SUBJECT, Reference
from .base import Conditioning, Method


class UnoMethod(Method):
    name = "uno"
    # UNO's code takes up to 4 subjects; the token budget (pipeline.MAX_IMAGE_TOKENS) is the limit
    limits = {SUBJECT: None}

    def preprocess_references(self, references: Sequence[Reference], long_side: int, pipe=None) -> list[Reference]:
        prepared = []
        for i, reference in enumerate(references):
            try:
                prepared.append(reference.with_image(self.resize_reference(reference.image, long_side)))
            except ValueError as err:
                raise UnofluxError(f"reference image {i + 1}: {err}") from None
        return prepared

    def conditioning(self, target_grid, reference_tokens, reference_grids, position_mode) -> Conditioning:
        ids = sequence_position_ids(target_grid, list(reference_grids), position_mode)
        return Conditioning(image_ids=ids, reference_tokens=reference_tokens)

    def prepare(self, pipe, references, target_grid, position_mode, device, dtype) -> Conditioning:
        conditioning = super().prepare(pipe, references, target_grid, position_mode, device, dtype)
        if not references and getattr(pipe, "lora_only_with_references", False):
            # the model folder's LoRA is for reference-driven calls only ("lora_for": "references"): the base draws
            conditioning = dataclasses.replace(conditioning, adapters=())
        return conditioning
