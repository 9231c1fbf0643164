"""USO (arXiv 2508.18966, bytedance/USO): UNO's subject reference plus SigLIP style tokens in the text stream.

One subject ("content") reference enters exactly as UNO's (VAE tokens after the target, UnoPE ids; long side 512).
Each style image goes through a SigLIP vision tower (so400m, 384 px) and :class:`StyleProjector`: 192 tokens of the
transformer's width, prepended to the text stream *after* ``context_embedder`` with all-zero RoPE ids, as T5's
tokens have. From there they are ordinary text tokens. Several style images give their tokens in order.

Modes follow from the references: subject only (UNO with USO's LoRA), style only (no image tokens), subject +
style (an empty prompt keeps the subject's layout), several styles. The style tokens never change during
sampling, so they are computed once per call (and kept per image across calls, :func:`style_tokens`), where
USO's code reruns SigLIP and the projector at every step for every style image.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import OrderedDict
from collections.abc import Sequence

import torch
from PIL import Image
from torch import nn

from ..errors import UnofluxError
from ..references import STYLE, SUBJECT, Reference
from .base import Conditioning
from .uno import UnoMethod

# Which SigLIP hidden state feeds which level of the projector: ``hidden_states`` has 1 + num_layers entries
# (0 = patch + position embeddings); USO reads the outputs of layers 26, 17 and 8 of so400m's 27, counted from
# the end, never ``last_hidden_state`` (that is after post_layernorm).
LEVEL_LAYERS = {"high": -2, "mid": -11, "low": -20}
MIN_SIGLIP_LAYERS = max(-i for i in LEVEL_LAYERS.values()) - 1  # hidden_states[-20] needs 19 layers


class StyleProjector(nn.Module):
    """USO's ``SigLIPMultiFeatProjModel``: three SigLIP hidden states -> ``3 * style_tokens`` tokens of width
    ``hidden``. Per level (high, mid, low), with H of shape (B, siglip_tokens, siglip_width)::

        E = SiLU(Linear_tokens(H^T))^T     # a Linear over the TOKEN axis: 729 patch tokens -> 64
        E = Linear_width(LayerNorm(E))     # LayerNorm over 1152 (eps 1e-5, affine), then 1152 -> hidden

    and the three levels are concatenated (high, mid, low). Parameter names are the checkpoint's
    (``projector.safetensors`` without its ``feature_embedder.`` prefix).
    """

    def __init__(self, siglip_tokens: int = 729, style_tokens: int = 64, siglip_width: int = 1152, hidden: int = 3072):
        super().__init__()
        for level in LEVEL_LAYERS:
            setattr(self, f"{level}_embedding_linear", nn.Sequential(nn.Linear(siglip_tokens, style_tokens), nn.SiLU()))
            setattr(self, f"{level}_layer_norm", nn.LayerNorm(siglip_width, eps=1e-5))
            setattr(self, f"{level}_projection", nn.Linear(siglip_width, hidden))

    @property
    def siglip_tokens(self) -> int:
        return self.high_embedding_linear[0].in_features

    @property
    def siglip_width(self) -> int:
        return self.high_projection.in_features

    @property
    def hidden(self) -> int:
        return self.high_projection.out_features

    @classmethod
    def shapes_from(cls, state: dict[str, torch.Tensor]) -> dict[str, int]:
        """The constructor's arguments read from a state dict's shapes."""
        tokens = state["high_embedding_linear.0.weight"].shape
        width = state["high_projection.weight"].shape
        return dict(siglip_tokens=tokens[1], style_tokens=tokens[0], siglip_width=width[1], hidden=width[0])

    def forward(self, hidden_states: Sequence[torch.Tensor]) -> torch.Tensor:
        """SigLIP's ``hidden_states`` (each (B, siglip_tokens, siglip_width)) -> (B, 3 * style_tokens, hidden)."""
        dtype = self.high_projection.weight.dtype
        levels = []
        for level, layer in LEVEL_LAYERS.items():
            h = hidden_states[layer].to(dtype)
            h = getattr(self, f"{level}_embedding_linear")(h.transpose(1, 2)).transpose(1, 2)
            levels.append(getattr(self, f"{level}_projection")(getattr(self, f"{level}_layer_norm")(h)))
        return torch.cat(levels, dim=1)


@dataclasses.dataclass
class StyleEncoder:
    """What turns a style image into tokens: SigLIP's image processor and vision tower, and the projector.
    ``offload``: keep SigLIP on the CPU between calls (it moves to the GPU only while it runs)."""

    processor: object  # transformers.SiglipImageProcessor
    vision: nn.Module  # transformers.SiglipVisionModel
    projector: StyleProjector
    offload: bool = False
    cache_size: int = 16  # style images whose tokens are kept (a batch with one style reuses them)
    _cache: OrderedDict = dataclasses.field(default_factory=OrderedDict, repr=False)

    def encode(self, image: Image.Image, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """One RGB style image -> (1, 3 * style_tokens, hidden) tokens, in ``dtype`` on ``device``."""
        key = (hashlib.sha1(image.tobytes()).hexdigest(), image.size, str(device), dtype)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        # so400m's processor: 384 x 384 ignoring the aspect (bicubic), x / 255, (x - 0.5) / 0.5; no crop
        pixels = self.processor(images=image, return_tensors="pt")["pixel_values"]
        vision_dtype = next(self.vision.parameters()).dtype
        self.vision.to(device)
        self.projector.to(device)
        try:
            hidden = self.vision(pixel_values=pixels.to(device, vision_dtype), output_hidden_states=True).hidden_states
            tokens = self.projector(hidden).to(dtype)
        finally:
            if self.offload:
                self.vision.to("cpu")
        self._cache[key] = tokens
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return tokens


def style_tokens(encoder: StyleEncoder, images: Sequence[Image.Image], device, dtype) -> torch.Tensor:
    """Every style image's tokens, concatenated in order: (1, 192 * len(images), hidden) for USO's projector."""
    return torch.cat([encoder.encode(image, device, dtype) for image in images], dim=1)


class UsoMethod(UnoMethod):
    name = "uso"
    limits = {SUBJECT: 1, STYLE: None}  # USO's code takes one content image and any number of styles
    accepts_empty_prompt = True

    def preprocess_references(self, references: Sequence[Reference], long_side: int, pipe=None) -> list[Reference]:
        # subjects as UNO's (long side 512 by default: USO's content_ref), except that USO passes a 16 x 16 image
        # through untouched; style images stay as they are (SigLIP's processor resizes them)
        prepared = []
        for reference in references:
            image = reference.image
            if reference.role == SUBJECT and image.size != (16, 16):
                reference = super().preprocess_references([reference], long_side)[0]
            prepared.append(reference)
        return prepared

    def prepare(self, pipe, references, target_grid, position_mode, device, dtype) -> Conditioning:
        conditioning = super().prepare(pipe, references, target_grid, position_mode, device, dtype)
        styles = [r.image for r in references if r.role == STYLE]
        if not styles:
            return conditioning
        encoder = getattr(pipe, "style_encoder", None)
        if encoder is None:  # USO's code drops the style silently here; never do that
            raise UnofluxError(
                f"{len(styles)} style reference(s) given but no style encoder is loaded: pass --uso-projector "
                "projector.safetensors and --siglip DIR (USO's PROJECTION_MODEL and SIGLIP_PATH)"
            )
        prefix = style_tokens(encoder, styles, device, dtype)
        return dataclasses.replace(conditioning, text_prefix=prefix)
