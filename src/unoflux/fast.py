"""Fast mode's switches that wrap one pipeline call (the options are in :mod:`unoflux.options`; reference-feature
reuse has its own module, :mod:`unoflux.reference_reuse`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from diffusers.hooks import FirstBlockCacheConfig


@contextlib.contextmanager
def first_block_cache(transformer: torch.nn.Module, threshold: float) -> Iterator[None]:
    """diffusers' First Block Cache on ``transformer`` for the duration of one call: a step whose first block's
    output changed by less than ``threshold`` (relative mean absolute difference) since the step that last ran
    them all reuses the other blocks' residual from then. The cache state lives per ``cache_context`` (one per
    guidance branch) and goes when the hooks do, on exit: nothing carries into the next call."""
    transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold))
    try:
        yield
    finally:
        transformer.disable_cache()
