"""Shared by the training tests (this folder is on sys.path under pytest's default import mode)."""

from __future__ import annotations

import torch

from unoflux.conditioning import sequence_position_ids


def transformer_output(transformer, seed: int = 0, reference_grids=()) -> torch.Tensor:
    """The velocity for fixed random inputs: a 2x2 target grid (4 tokens), 8 text tokens, and one token
    per 1x1 reference grid in ``reference_grids``, with UnoPE ids."""
    g = torch.Generator().manual_seed(seed)
    tokens = 4 + sum(rows * cols for rows, cols in reference_grids)
    with torch.no_grad():
        return transformer(
            hidden_states=torch.randn(1, tokens, 64, generator=g),
            timestep=torch.tensor([0.5]),
            guidance=torch.tensor([1.0]),
            pooled_projections=torch.randn(1, 32, generator=g),
            encoder_hidden_states=torch.randn(1, 8, 32, generator=g),
            txt_ids=torch.zeros(8, 3),
            img_ids=sequence_position_ids((2, 2), list(reference_grids)),
            return_dict=False,
        )[0]
