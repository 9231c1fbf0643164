"""How reference images enter FLUX's token sequence (UNO, arXiv 2504.02160 section 3.3). Pure functions.

Sequence seen by the transformer, per sample::

    [ text tokens (T5) | noisy target tokens | ref 1 tokens | ref 2 tokens | ... ]

Every image (target and references) is a VAE latent packed 2x2 into tokens of 64 channels and goes
through the same ``x_embedder``. Positions are 3-axis RoPE ids ``(index, row, col)``: text is all zeros,
the target is its ``H x W`` token grid, and reference ``k`` (grid ``h_k x w_k``) is shifted by UnoPE
offsets that start at the target's size and accumulate over earlier references::

    row offset = H + sum_{j<k} h_j        col offset = W + sum_{j<k} w_j       ("diagonal")

so each reference sits on the diagonal away from the target and from each other, which keeps the
model from copying a reference's layout. The paper's ablation variants apply only the row offsets
("height"), only the column offsets ("width"), or none ("none"); the running sums advance in every mode.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np
import torch
from PIL import Image

PositionMode = Literal["diagonal", "height", "width", "none"]
POSITION_MODES: tuple[str, ...] = get_args(PositionMode)

# UNO's rule: references are resized to this long side unless the user says otherwise.
SINGLE_REFERENCE_LONG_SIDE = 512
MULTI_REFERENCE_LONG_SIDE = 320

LATENT_CHANNELS = 16  # FLUX's VAE latent channels; the noise shape below depends on it


def default_reference_long_side(num_references: int) -> int:
    return SINGLE_REFERENCE_LONG_SIDE if num_references <= 1 else MULTI_REFERENCE_LONG_SIDE


def output_size(width: int, height: int) -> tuple[int, int]:
    """Output width/height floored to multiples of 16 (one packed token covers 16x16 pixels)."""
    return 16 * (width // 16), 16 * (height // 16)


def preprocess_reference(image: Image.Image, long_side: int) -> Image.Image:
    """Resize so the long side is ``long_side`` (aspect kept, Lanczos), center-crop to multiples of 16.

    Sizes are computed exactly as UNO's ``preprocess_ref`` does (``int`` truncation of the short side),
    so the same input gives the same reference tokens. ``image`` must already be RGB (see ``images.py``).
    """
    w, h = image.size
    if w >= h:
        new_w, new_h = long_side, int((long_side / w) * h)
    else:
        new_w, new_h = int((long_side / h) * w), long_side
    if new_w < 16 or new_h < 16:
        raise ValueError(
            f"a {w}x{h} reference resized to long side {long_side} is {new_w}x{new_h}, "
            "smaller than the 16 px minimum; use a less elongated image or a larger long side"
        )
    image = image.resize((new_w, new_h), resample=Image.LANCZOS)
    crop_w, crop_h = new_w // 16 * 16, new_h // 16 * 16
    left, top = (new_w - crop_w) // 2, (new_h - crop_h) // 2
    return image.crop((left, top, left + crop_w, top + crop_h)).convert("RGB")


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (1, 3, H, W) float32 in [-1, 1] (the VAE's input range)."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0) * 2.0 - 1.0


def tensor_to_images(decoded: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> PIL images, quantized like the reference (``uint8(127.5 * (x + 1))``,
    truncating, not rounding) so that outputs match UNO's byte for byte."""
    pixels = (127.5 * (decoded.float().clamp(-1, 1) + 1.0)).to(torch.uint8)
    return [Image.fromarray(p.permute(1, 2, 0).cpu().numpy()) for p in pixels]


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2 * W/2, C*4): each 2x2 latent patch becomes one token (c, ph, pw order)."""
    b, c, h, w = latents.shape
    x = latents.reshape(b, c, h // 2, 2, w // 2, 2)  # (B, C, h, ph, w, pw)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, latent_height: int, latent_width: int) -> torch.Tensor:
    """Inverse of :func:`pack_latents` for a latent of ``latent_height x latent_width``."""
    b, _, d = tokens.shape
    c, h, w = d // 4, latent_height // 2, latent_width // 2
    x = tokens.reshape(b, h, w, c, 2, 2)  # (B, h, w, C, ph, pw)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(b, c, h * 2, w * 2)


def grid_position_ids(rows: int, cols: int, row_offset: int = 0, col_offset: int = 0) -> torch.Tensor:
    """(rows*cols, 3) ids ``(0, row + row_offset, col + col_offset)`` in row-major token order."""
    ids = torch.zeros(rows, cols, 3)
    ids[..., 1] = torch.arange(rows)[:, None] + row_offset
    ids[..., 2] = torch.arange(cols)[None, :] + col_offset
    return ids.reshape(rows * cols, 3)


def reference_position_ids(
    target_grid: tuple[int, int], reference_grids: Sequence[tuple[int, int]], mode: PositionMode = "diagonal"
) -> list[torch.Tensor]:
    """UnoPE ids for each reference token grid ``(rows, cols)`` next to a target grid ``(rows, cols)``."""
    if mode not in POSITION_MODES:
        raise ValueError(f"position mode {mode!r} is not one of {', '.join(POSITION_MODES)}")
    next_row, next_col = target_grid
    ids = []
    for rows, cols in reference_grids:
        row_offset = next_row if mode in ("diagonal", "height") else 0
        col_offset = next_col if mode in ("diagonal", "width") else 0
        ids.append(grid_position_ids(rows, cols, row_offset, col_offset))
        next_row, next_col = next_row + rows, next_col + cols
    return ids


def sequence_position_ids(
    target_grid: tuple[int, int], reference_grids: Sequence[tuple[int, int]], mode: PositionMode = "diagonal"
) -> torch.Tensor:
    """Ids of all image tokens in sequence order: target, then each reference. Shape (N_img, 3)."""
    target = grid_position_ids(*target_grid)
    return torch.cat([target, *reference_position_ids(target_grid, reference_grids, mode)], dim=0)


def reference_noise(
    seed: int,
    height: int,
    width: int,
    device: str | torch.device = "cpu",
    channels: int = LATENT_CHANNELS,
    dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """The initial latent noise UNO draws for ``seed``: (1, C, 2*ceil(H/16), 2*ceil(W/16)), bfloat16 (DreamO, through
    diffusers, draws the same shape in the compute dtype: pass ``dtype``).

    The default CPU generator makes a seed give the same image on every device. The reference draws
    with a generator on the compute device; pass ``device="cuda"`` to reproduce its GPU outputs.
    """
    return torch.randn(
        (1, channels, 2 * math.ceil(height / 16), 2 * math.ceil(width / 16)),
        dtype=dtype,
        device=device,
        generator=torch.Generator(device).manual_seed(seed),
    )
