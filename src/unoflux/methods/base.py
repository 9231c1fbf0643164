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

from ..conditioning import preprocess_reference
from ..errors import UnofluxError
from ..references import ROLES, SUBJECT, Reference, as_references, count_roles, slot_name


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

    def without_references(self) -> Conditioning:
        """The same call on the target tokens alone (their ids and embeddings), for a forward whose attention
        appends kept reference keys and values instead (:mod:`unoflux.reference_reuse`)."""
        n_target = len(self.image_ids) - self.num_reference_tokens
        embeddings = self.token_embeddings
        return dataclasses.replace(
            self,
            image_ids=self.image_ids[:n_target],
            reference_tokens=None,
            token_embeddings=None if embeddings is None else embeddings[:, :n_target],
        )

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
    # The most references of each role (:mod:`unoflux.references`) a call may give (None: any number); a role not
    # named here is refused.
    limits: dict[str, int | None] = {}
    accepts_empty_prompt: bool = False  # USO: an empty prompt with a subject and a style keeps the subject's layout
    default_schedule: str = "uno"  # the time shift's resolution rule unless the call or the model says (flow)
    noise_dtype: torch.dtype | None = torch.bfloat16  # the initial noise is drawn in this dtype (None: the compute
    # dtype), then cast: UNO's and USO's code draw bf16 noise, DreamO's (diffusers') draws in the compute dtype

    def check(self, references: Sequence[Reference]) -> None:
        """Refuse what this method cannot do, in one sentence, before any model loads."""
        for role, count in count_roles(references).items():
            if not count:
                continue
            if role not in self.limits:
                takers = [m.name for m in _methods_taking(role)]
                hint = f" (use --method {takers[0]})" if takers else ""
                raise UnofluxError(f"method {self.name!r} takes no {role} references{hint}")
            limit = self.limits[role]
            if limit is not None and count > limit:
                raise UnofluxError(f"method {self.name!r} takes at most {limit} {role} references, not {count}")

    def reference_side(self, pipe, references: Sequence[Reference]) -> int:
        """The reference size when the call gives none: the model's long side for this many subjects (UNO: 512
        for one, 320 for several)."""
        return pipe.default_reference_long_side(sum(r.role == SUBJECT for r in references))

    # (image, long side) -> a subject reference resized for the model: UNO's long side, sides multiples of 16.
    # Training resizes its references with the same function (train/data.py): a trained model sees what it will get.
    resize_reference = staticmethod(preprocess_reference)

    def edit_prompt(self, prompt: str, num_references: int) -> str:
        """The prompt the text encoders see (DreamO's placeholders go here); unchanged by default."""
        return prompt

    def preprocess_references(self, references: Sequence[Reference], long_side: int, pipe=None) -> list[Reference]:
        """Opened RGB references -> the images the model encodes (cheap by default; ``pipe`` gives the preprocessing
        models loaded with it, such as DreamO's face parser)."""
        return list(references)

    def encode_references(self, pipe, pixels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Preprocessed subject references of one size (B, 3, h, w) in [-1, 1] -> tokens (B, h*w/256, 64): what the
        training cache stores. Default: the target's VAE encoding (UNO's)."""
        return pipe.encode_pixels(pixels, dtype)

    def conditioning(
        self,
        target_grid: tuple[int, int],
        reference_tokens: torch.Tensor | None,
        reference_grids: Sequence[tuple[int, int]],
        position_mode: str,
    ) -> Conditioning:
        """Encoded subject references (1 | B, N_ref, 64) with their token grids (rows, cols) next to a target grid
        -> the conditioning of one call; used by sampling and by training (cached or not) alike."""
        from ..conditioning import grid_position_ids

        return Conditioning(image_ids=grid_position_ids(*target_grid))

    def prepare(
        self,
        pipe,
        references: Sequence[Reference],
        target_grid: tuple[int, int],
        position_mode: str,
        device: torch.device,
        dtype: torch.dtype,
    ) -> Conditioning:
        """Preprocessed references -> the conditioning of a generation: :meth:`encode_references` of each subject,
        then :meth:`conditioning`. ``pipe`` gives the models and what the model folder declares."""
        from ..conditioning import image_to_tensor

        subjects = [r.image for r in references if r.role == SUBJECT]
        tokens = [self.encode_references(pipe, image_to_tensor(image).to(device), dtype) for image in subjects]
        grids = [(image.height // 16, image.width // 16) for image in subjects]
        return self.conditioning(target_grid, torch.cat(tokens, dim=1) if tokens else None, grids, position_mode)


def _methods_taking(role: str) -> list[Method]:
    from . import METHODS

    return [m for m in METHODS.values() if role in m.limits]


def open_references(references: Sequence) -> list[Reference]:
    """Every reference (a path, an image or a :class:`~unoflux.references.Reference`) opened as RGB, each error
    naming its slot (cheap; no model runs)."""
    from ..images import load_image

    return [
        ref.with_image(load_image(ref.image, what=f"{slot_name(ref)} image {i + 1}"))
        for i, ref in enumerate(as_references(references))
    ]


__all__ = ["Conditioning", "Method", "ROLES", "Reference", "open_references"]
