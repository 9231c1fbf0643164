"""The denoising loop as plain functions over a velocity callable (k-diffusion / flux ``sampling.py`` style).

A *velocity* is ``v(x, t, step) -> (B, N, C)``: the model's prediction at noise level ``t`` for latents ``x``
(``t = 1`` noise, ``t = 0`` data; :mod:`unoflux.flow`). :func:`sample` runs Euler steps on it (or stochastic
steps, :func:`unoflux.flow.stochastic_step`); classifier-free guidance is a wrapper that makes one velocity of two
(:func:`classifier_free`, :func:`classifier_free_batched`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from . import flow

Velocity = Callable[[torch.Tensor, float, int], torch.Tensor]


def step_noise_generator(seed: int, device: str = "cpu") -> torch.Generator:
    """The generator of one image's per-step fresh noise (stochastic sampling): a stream of its own, derived
    from the image's seed as the world derives its streams, so it never repeats the initial noise."""
    derived = int(np.random.SeedSequence([seed, 1]).generate_state(1, np.uint64)[0]) & (2**63 - 1)
    return torch.Generator(device).manual_seed(derived)


def sample(
    velocity: Velocity,
    x: torch.Tensor,
    sigmas: Sequence[float],
    *,
    stochasticity: float = 0.0,
    noise_generators: Sequence[torch.Generator] | None = None,
    callback: Callable[[int, float, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Integrate from ``sigmas[0]`` to ``sigmas[-1]``: Euler steps of the flow ODE, or with ``stochasticity`` > 0,
    steps that re-noise that part of the way with fresh noise from one generator per image (every step but the
    last, which lands on t = 0). ``callback(step, t, x)`` after each step returns the latents to go on with."""
    for step, (t, t_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        v = velocity(x, t, step)
        if stochasticity > 0 and t_next > 0:
            fresh = torch.cat(
                [torch.randn(x.shape[1:], generator=g, device=g.device)[None] for g in noise_generators]
            ).to(x.device)
            x = flow.stochastic_step(x, v, t, t_next, fresh, stochasticity)
        else:
            x = flow.euler_step(x, v, t, t_next)
        if callback is not None:
            x = callback(step, t, x)
    return x


def classifier_free(
    conditional: Velocity, unconditional: Velocity, scale: float, steps: range | None = None
) -> Velocity:
    """``v_uncond + scale * (v_cond - v_uncond)`` from two calls (the branches see different inputs); only on the
    ``steps`` given (None: all; DreamO's window), the conditional velocity alone elsewhere."""

    def guided(x, t, step):
        if steps is not None and step not in steps:
            return conditional(x, t, step)
        uncond = unconditional(x, t, step)
        return uncond + scale * (conditional(x, t, step) - uncond)

    return guided


def classifier_free_batched(
    both: Velocity, scale: float, steps: range | None = None, conditional: Velocity | None = None
) -> Velocity:
    """The same from one call over the doubled batch ``[x | x]`` whose first half is conditional (the branches share
    every input but the text); outside ``steps`` the ``conditional`` velocity alone (one forward; needed with
    ``steps``)."""

    def guided(x, t, step):
        if steps is not None and step not in steps:
            return conditional(x, t, step)
        cond, uncond = both(torch.cat([x, x]), t, step).chunk(2)
        return uncond + scale * (cond - uncond)

    return guided
