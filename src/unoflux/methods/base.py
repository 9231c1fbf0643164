"""The seam between the engine and a method: what a method hands the engine (:class:`Conditioning`) and what it
must say (:class:`Method`).

UNO, DreamO and USO differ only in how references become tokens, embeddings and text-stream additions; the
denoising loop, the transformer call, the loader and the CLI/app/batch surface are shared. A method turns
references into a :class:`Conditioning`; :mod:`unoflux.engine` turns that into the transformer's inputs, for
sampling and for training alike::

    image stream:  [ noisy target tokens | reference tokens ]  (+ token_embeddings after x_embedder)
    text stream:   [ text_prefix | T5 tokens after context_embedder ]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from ..errors import UnofluxError
from ..images import ImageInput


@dataclass
class Conditioning:
    """Everything a method adds to one transformer call besides the noisy tokens and the prompt.

    Tensors with a leading batch dimension may have 1 there (shared by every image) or the batch size.
    """

    image_ids: torch.Tensor  # (N_target + N_ref, 3) RoPE ids of every image token: target first, then references
    reference_tokens: torch.Tensor | None = None  # (1 | B, N_ref, 64) clean packed latents after the target tokens
    token_embeddings: torch.Tensor | None = None  # (1 | B, N_target + N_ref, D) added to image tokens after x_embedder
    text_prefix: torch.Tensor | None = None  # (1 | B, P, D) prepended to the text stream after context_embedder
    text_prefix_ids: torch.Tensor | None = None  # (P, 3) their RoPE ids; None: zeros, as T5's
    adapters: tuple[str, ...] | None = None  # LoRA adapters active while sampling; None: as loaded, (): none
    unconditional: Conditioning | None = None  # what CFG's negative branch sees; None: the same as this

    @property
    def num_reference_tokens(self) -> int:
        return 0 if self.reference_tokens is None else self.reference_tokens.shape[1]

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Conditioning:
        """On ``device``; float tensors (not ids) also in ``dtype`` when given."""

        def move(x, ids=False):
            if x is None:
                return None
            return x.to(device) if ids or dtype is None else x.to(device=device, dtype=dtype)

        return dataclasses.replace(
            self,
            image_ids=move(self.image_ids, ids=True),
            reference_tokens=move(self.reference_tokens),
            token_embeddings=move(self.token_embeddings),
            text_prefix=move(self.text_prefix),
            text_prefix_ids=move(self.text_prefix_ids, ids=True),
            unconditional=None if self.unconditional is None else self.unconditional.to(device, dtype),
        )


class Method:
    """How one method turns references into a :class:`Conditioning`. Override what differs; the defaults are
    plain text-to-image FLUX (no reference accepted)."""

    name: str = ""
    max_references: int | None = 0  # None: any number

    def check(self, num_references: int) -> None:
        """Refuse what this method cannot do, in one sentence, before any model loads."""
        if self.max_references is not None and num_references > self.max_references:
            raise UnofluxError(
                f"method {self.name!r} takes at most {self.max_references} reference images, not {num_references}"
            )

    def edit_prompt(self, prompt: str, num_references: int) -> str:
        """The prompt the text encoders see (DreamO's placeholders go here); unchanged by default."""
        return prompt

    def preprocess_references(self, images: Sequence[Image.Image], long_side: int) -> list[Image.Image]:
        """Opened RGB references -> the images the model encodes (cheap; no model runs)."""
        return list(images)

    def encode_references(self, pipe, pixels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Preprocessed references of one size (B, 3, h, w) in [-1, 1] -> tokens (B, h*w/256, 64): what the training
        cache stores. Default: the target's VAE encoding (UNO's)."""
        return pipe.encode_pixels(pixels, dtype)

    def conditioning(
        self,
        target_grid: tuple[int, int],
        reference_tokens: torch.Tensor | None,
        reference_grids: Sequence[tuple[int, int]],
        position_mode: str,
    ) -> Conditioning:
        """Encoded references (1 | B, N_ref, 64) with their token grids (rows, cols) next to a target grid -> the
        conditioning of one call; used by sampling and by training (cached or not) alike."""
        from ..conditioning import grid_position_ids

        return Conditioning(image_ids=grid_position_ids(*target_grid))

    def prepare(
        self,
        pipe,
        references: Sequence[Image.Image],
        target_grid: tuple[int, int],
        position_mode: str,
        device: torch.device,
        dtype: torch.dtype,
    ) -> Conditioning:
        """Preprocessed references -> the conditioning of a generation: :meth:`encode_references` of each, then
        :meth:`conditioning`. ``pipe`` gives the models and what the model folder declares."""
        from ..conditioning import image_to_tensor

        tokens = [self.encode_references(pipe, image_to_tensor(image).to(device), dtype) for image in references]
        grids = [(image.height // 16, image.width // 16) for image in references]
        return self.conditioning(target_grid, torch.cat(tokens, dim=1) if tokens else None, grids, position_mode)


def open_references(references: Sequence[ImageInput]) -> list[Image.Image]:
    """Every reference opened as RGB, each error naming its slot (cheap; no model runs)."""
    from ..images import load_image

    return [load_image(ref, what=f"reference image {i + 1}") for i, ref in enumerate(references)]
