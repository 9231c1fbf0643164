"""Fast mode's step caches, each wrapping one pipeline call (the options are in :mod:`unoflux.options`;
reference-feature reuse has its own module, :mod:`unoflux.reference_reuse`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from diffusers.hooks import FirstBlockCacheConfig, TaylorSeerCacheConfig

TAYLORSEER_WARMUP = 3  # full steps before TaylorSeer predicts (diffusers' default; its expansion needs two points)


def step_cache_config(step_cache: float, taylorseer: int, dtype: torch.dtype):
    """The diffusers cache config the options ask for (None: exact, no cache).

    - ``step_cache`` > 0: First Block Cache: a step whose first block's output changed by less than this (relative
      mean absolute difference) since the step that last ran them all reuses the other blocks' residual from then;
    - ``taylorseer`` > 1: TaylorSeer's lite variant: after :data:`TAYLORSEER_WARMUP` full steps, one full step in
      every ``taylorseer``; in between every block is skipped and the output projection is predicted from a
      first-order Taylor expansion (finite differences of its last full outputs), kept in the model's dtype.
    """
    if step_cache:
        return FirstBlockCacheConfig(threshold=step_cache)
    if taylorseer > 1:
        return TaylorSeerCacheConfig(
            cache_interval=taylorseer,
            disable_cache_before_step=TAYLORSEER_WARMUP,
            max_order=1,  # (second order measured no closer to exact on the embedded model, and slower)
            taylor_factors_dtype=dtype,
            use_lite_mode=True,
        )
    return None


@contextlib.contextmanager
def step_cache(transformer: torch.nn.Module, config) -> Iterator[None]:
    """diffusers' cache ``config`` on ``transformer`` for the duration of one call. Its state lives per
    ``cache_context`` (one per guidance branch, counting that branch's steps) and goes when the hooks do, on exit:
    nothing carries into the next call."""
    transformer.enable_cache(config)
    try:
        yield
    finally:
        transformer.disable_cache()
