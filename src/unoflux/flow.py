"""Rectified flow: the one definition shared by sampling and training.

Convention (FLUX / UNO): ``t = 1`` is pure noise, ``t = 0`` is data, and

    x_t = (1 - t) * x_data + t * noise            (interpolate)
    v   = noise - x_data = d x_t / d t            (velocity_target)

so an Euler step from ``t`` to ``t_next < t`` is ``x + (t_next - t) * v`` (euler_step).

Time shift (FLUX, "resolution-dependent shifting"): ``shift(t) = e^mu / (e^mu + (1/t - 1))`` with
``mu`` linear in the image sequence length, 0.5 at 256 tokens and 1.15 at 4096 tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "ShiftConfig",
    "time_shift",
    "schedule_mu",
    "sigmas",
    "image_seq_len",
    "interpolate",
    "velocity_target",
    "euler_step",
    "stochastic_step",
    "sample_training_t",
]


@dataclass(frozen=True)
class ShiftConfig:
    """The line that maps image sequence length to the shift ``mu`` (FLUX.1 defaults)."""

    base_seq_len: int = 256
    max_seq_len: int = 4096
    base_shift: float = 0.5
    max_shift: float = 1.15

    @classmethod
    def from_scheduler_config(cls, config) -> ShiftConfig:
        """Read the line from a diffusers ``FlowMatchEulerDiscreteScheduler`` config, if it has one."""
        get = config.get if isinstance(config, dict) else lambda k, d: getattr(config, k, d)
        return cls(
            base_seq_len=int(get("base_image_seq_len", cls.base_seq_len)),
            max_seq_len=int(get("max_image_seq_len", cls.max_seq_len)),
            base_shift=float(get("base_shift", cls.base_shift)),
            max_shift=float(get("max_shift", cls.max_shift)),
        )


def schedule_mu(seq_len: float, config: ShiftConfig = ShiftConfig()) -> float:
    """``mu`` on the line through (base_seq_len, base_shift) and (max_seq_len, max_shift)."""
    slope = (config.max_shift - config.base_shift) / (config.max_seq_len - config.base_seq_len)
    return config.base_shift + slope * (seq_len - config.base_seq_len)


def time_shift(mu: float, t: torch.Tensor) -> torch.Tensor:
    """FLUX's exponential time shift; maps 0 -> 0 and 1 -> 1, pushes mass towards t = 1 for mu > 0."""
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1))


def image_seq_len(height: int, width: int, convention: str = "uno") -> int:
    """The sequence length that sets ``mu`` for an output of ``height x width`` pixels.

    ``"flux"``: the true number of packed image tokens, ``(H/16) * (W/16)`` (1024 at 512x512). This is
    what FLUX and UNO's *training* use.
    ``"uno"``: what UNO's *inference* passes, ``(W/8) * (H/8) // 256`` (16 at 512x512). It is a quirk
    of the reference code (it divides the latent area by 16*16 instead of 2*2), kept so that official
    UNO outputs reproduce exactly; it gives a milder shift (mu ~ 0.46 instead of ~ 0.63 at 512x512).
    """
    if convention == "flux":
        return math.ceil(height / 16) * math.ceil(width / 16)
    if convention == "uno":
        return (width // 8) * (height // 8) // (16 * 16)
    raise ValueError(f"unknown schedule convention {convention!r}; use 'uno' or 'flux'")


def sigmas(num_steps: int, mu: float | None) -> torch.Tensor:
    """The ``num_steps + 1`` noise levels from 1 to 0 (float32), shifted by ``mu`` unless it is None."""
    t = torch.linspace(1, 0, num_steps + 1)
    return t if mu is None else time_shift(mu, t)


def interpolate(x_data: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x_t`` for per-sample times ``t`` of shape (B,) broadcast over the remaining dims."""
    t = t.reshape(-1, *([1] * (x_data.ndim - 1))).to(x_data.dtype)
    return (1 - t) * x_data + t * noise


def velocity_target(x_data: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The velocity the transformer is trained to predict at every ``t``."""
    return noise - x_data


def euler_step(x: torch.Tensor, velocity: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    """One Euler step of the flow ODE (in ``x``'s dtype, as the reference does)."""
    return x + (t_next - t) * velocity


def stochastic_step(
    x: torch.Tensor, velocity: torch.Tensor, t: float, t_next: float, fresh_noise: torch.Tensor, stochasticity: float
) -> torch.Tensor:
    """One step that re-noises part of the way (DDIM's eta, Song et al. 2021, written for rectified flow).

    The velocity splits ``x`` into its clean estimate ``x0 = x - t v`` and its noise estimate ``n = x + (1 - t) v``;
    the step lands on ``(1 - t_next) x0 + t_next (sqrt(1 - s^2) n + s fresh_noise)`` with ``s = stochasticity``.
    ``s = 0`` is :func:`euler_step` (the ODE); ``s = 1`` re-noises the clean estimate with fresh noise alone, which
    is diffusers' ``FlowMatchEulerDiscreteScheduler(stochastic_sampling=True)``. Fresh noise lets a later step
    correct what an earlier one got wrong, at the price of following the ODE less exactly.
    """
    clean = x - t * velocity
    noise = x + (1 - t) * velocity
    mixed = math.sqrt(1 - stochasticity**2) * noise + stochasticity * fresh_noise.to(x.dtype)
    return (1 - t_next) * clean + t_next * mixed


def sample_training_t(
    batch_size: int, seq_len: int, generator: torch.Generator | None = None, config: ShiftConfig = ShiftConfig()
) -> torch.Tensor:
    """Training times: uniform ``u`` pushed through the same shift the sampler uses at ``seq_len`` tokens."""
    u = torch.rand(batch_size, generator=generator).clamp(1e-5, 1 - 1e-5)
    return time_shift(schedule_mu(seq_len, config), u)
