"""Fast mode's step caches, each wrapping one pipeline call (the options are in :mod:`unoflux.options`;
reference-feature reuse has its own module, :mod:`unoflux.reference_reuse`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from diffusers.hooks import FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig
from diffusers.hooks.mag_cache import FLUX_MAG_RATIOS

TAYLORSEER_WARMUP = 3  # full steps before TaylorSeer predicts (diffusers' default; its expansion needs two points)
MAGCACHE_MAX_SKIPS = 3  # MagCache: most steps in a row that reuse the residual (diffusers' default, the paper's K)
MAGCACHE_RETENTION = 0.2  # MagCache: the fraction of first steps that always run (diffusers' default)


def step_cache_config(
    step_cache: float,
    taylorseer: int,
    dtype: torch.dtype,
    magcache: float = 0.0,
    steps: int = 28,
    mag_ratios: list[float] | None = None,
):
    """The diffusers cache config the options ask for (None: exact, no cache).

    - ``step_cache`` > 0: First Block Cache: a step whose first block's output changed by less than this (relative
      mean absolute difference) since the step that last ran them all reuses the other blocks' residual from then;
    - ``taylorseer`` > 1: TaylorSeer's lite variant: after :data:`TAYLORSEER_WARMUP` full steps, one full step in
      every ``taylorseer``; in between every block is skipped and the output projection is predicted from a
      first-order Taylor expansion (finite differences of its last full outputs), kept in the model's dtype;
    - ``magcache`` > 0: MagCache for a call of ``steps`` steps: from the step's ratio of residual magnitudes
      (``mag_ratios``: the model's, calibrated with :class:`MagRatioRecorder`; FLUX.1-dev's from diffusers when
      None) it accumulates the error of reusing the last full step's residual (output minus input of the block
      stack) and skips every block while that stays under ``magcache``, at most :data:`MAGCACHE_MAX_SKIPS` steps in
      a row, never in the first :data:`MAGCACHE_RETENTION` of the steps.
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
    if magcache:
        ratios = FLUX_MAG_RATIOS if mag_ratios is None else torch.tensor(mag_ratios, dtype=torch.float32)
        return MagCacheConfig(
            threshold=magcache,
            max_skip_steps=MAGCACHE_MAX_SKIPS,
            retention_ratio=MAGCACHE_RETENTION,
            num_inference_steps=steps,
            mag_ratios=ratios,
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


class MagRatioRecorder:
    """MagCache's calibration (its paper's ratio, as diffusers' ``calibrate`` mode computes it, kept instead of
    printed): while inside, every forward of ``transformer`` records the residual its block stack adds to the image
    tokens (last single block's output minus first double block's input); ``ratios()`` is, per step, the mean over
    tokens of that residual's norm over the previous step's, averaged over the calls recorded (1 for step 0)."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        self.transformer = transformer
        self.calls: list[list[float]] = []  # one list of ratios per recorded call

    def __enter__(self) -> MagRatioRecorder:
        first, last = self.transformer.transformer_blocks[0], self.transformer.single_transformer_blocks[-1]
        self._handles = [
            first.register_forward_pre_hook(self._keep_input, with_kwargs=True),
            last.register_forward_hook(self._record_residual, with_kwargs=True),
        ]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()

    def start_call(self) -> None:
        """The next forwards are a new call's steps."""
        self.calls.append([])
        self._previous = None

    def _keep_input(self, module, args, kwargs):
        self._input = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]

    def _record_residual(self, module, args, kwargs, output):
        image = output[1] if isinstance(output, tuple) else output  # (text, image) from diffusers' single blocks
        residual = (image[:, -self._input.shape[1] :] - self._input).float()
        norm = torch.linalg.vector_norm(residual, dim=-1)
        ratio = 1.0 if self._previous is None else (norm / (self._previous + 1e-8)).mean().item()
        self.calls[-1].append(ratio)
        self._previous = norm

    def ratios(self) -> list[float]:
        steps = min(len(c) for c in self.calls)
        return [round(sum(c[i] for c in self.calls) / len(self.calls), 5) for i in range(steps)]
