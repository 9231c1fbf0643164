"""The UNO schedule (with its sequence-length quirk), FLUX's standard shift, and flow-matching identities."""

import math

import pytest
import torch

from unoflux import flow


def test_uno_quirk_sequence_length():
    assert flow.image_seq_len(512, 512, "uno") == 16  # (512/8)^2 / 256, not the 1024 tokens
    assert flow.image_seq_len(512, 512, "flux") == 1024
    assert flow.image_seq_len(1024, 768, "uno") == (768 // 8) * (1024 // 8) // 256
    with pytest.raises(ValueError):
        flow.image_seq_len(512, 512, "sd3")


def test_mu_is_linear_between_flux_anchors():
    assert flow.schedule_mu(256) == pytest.approx(0.5)
    assert flow.schedule_mu(4096) == pytest.approx(1.15)
    assert flow.schedule_mu(16) == pytest.approx(0.5 + (16 - 256) * 0.65 / 3840)  # UNO at 512^2: ~0.4594
    assert flow.schedule_mu(1024) == pytest.approx(0.5 + 768 * 0.65 / 3840)  # FLUX at 512^2: 0.63


def hand_schedule(steps, mu):
    ts = [1 - k / steps for k in range(steps + 1)]
    return [0.0 if t == 0 else math.exp(mu) / (math.exp(mu) + (1 / t - 1)) for t in ts]


@pytest.mark.parametrize("convention", ["uno", "flux"])
def test_sigmas_match_hand_computed_values(convention):
    mu = flow.schedule_mu(flow.image_seq_len(512, 512, convention))
    got = flow.sigmas(4, mu)
    assert got.dtype == torch.float32 and got.shape == (5,)
    assert got.tolist() == pytest.approx(hand_schedule(4, mu), abs=1e-6)
    assert got[0] == 1 and got[-1] == 0


def test_uno_and_flux_schedules_differ():
    uno = flow.sigmas(25, flow.schedule_mu(flow.image_seq_len(512, 512, "uno")))
    standard = flow.sigmas(25, flow.schedule_mu(flow.image_seq_len(512, 512, "flux")))
    assert (standard[1:-1] > uno[1:-1]).all()  # the larger mu pushes every step towards noise


def test_scheduler_config_sets_the_line():
    config = {"base_image_seq_len": 256, "max_image_seq_len": 4096, "base_shift": 0.5, "max_shift": 1.15}
    assert flow.ShiftConfig.from_scheduler_config(config) == flow.ShiftConfig()
    assert flow.ShiftConfig.from_scheduler_config({"base_shift": 0.3}).base_shift == 0.3


def test_euler_on_the_true_velocity_reaches_the_data_exactly():
    x_data, noise = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    x = noise.clone()
    ts = flow.sigmas(7, 0.8).tolist()
    for t, t_next in zip(ts[:-1], ts[1:]):
        x = flow.euler_step(x, flow.velocity_target(x_data, noise), t, t_next)
        assert torch.allclose(x, flow.interpolate(x_data, noise, torch.full((2,), t_next)), atol=1e-5)
    assert torch.allclose(x, x_data, atol=1e-5)


def test_training_times_follow_the_shifted_schedule():
    g = torch.Generator().manual_seed(0)
    t = flow.sample_training_t(20000, 4096, generator=g)
    assert 0 < t.min() and t.max() < 1
    # shift with mu = 1.15 maps the uniform median 0.5 to e^mu / (e^mu + 1)
    assert t.median().item() == pytest.approx(math.exp(1.15) / (math.exp(1.15) + 1), abs=0.01)


def test_stochastic_step_spans_the_ode_and_diffusers_stochastic_sampling():
    """Stochasticity 0 is the Euler step; 1 is diffusers' FlowMatchEulerDiscreteScheduler(stochastic_sampling=True),
    step for step with the same fresh noise; in between, the re-noised part keeps the noise estimate's variance."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    x, velocity, fresh = torch.randn(2, 6, 4), torch.randn(2, 6, 4), torch.randn(2, 6, 4)
    ode = flow.stochastic_step(x, velocity, 0.7, 0.4, fresh, 0.0)
    torch.testing.assert_close(ode, flow.euler_step(x, velocity, 0.7, 0.4))

    scheduler = FlowMatchEulerDiscreteScheduler(stochastic_sampling=True)
    scheduler.set_timesteps(sigmas=[0.7, 0.4], device="cpu")
    generator = torch.Generator().manual_seed(3)
    expected = scheduler.step(velocity, scheduler.timesteps[0], x, generator=generator).prev_sample
    fresh = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(flow.stochastic_step(x, velocity, 0.7, 0.4, fresh, 1.0), expected)

    # the true velocity of x = (1 - t) x_data + t n: any stochasticity lands on (1 - t') x_data + t' n' with the
    # unit-variance mix n' of n and the fresh noise, and on x_data itself at t' = 0
    x_data, noise = torch.randn(4096), torch.randn(4096)
    x_t = flow.interpolate(x_data, noise, torch.tensor([0.6]))
    fresh = torch.randn(4096)
    step = flow.stochastic_step(x_t, flow.velocity_target(x_data, noise), 0.6, 0.3, fresh, 0.5)
    torch.testing.assert_close(step, 0.7 * x_data + 0.3 * (math.sqrt(0.75) * noise + 0.5 * fresh))
    last = flow.stochastic_step(x_t, flow.velocity_target(x_data, noise), 0.6, 0.0, fresh, 0.5)
    torch.testing.assert_close(last, x_data, atol=1e-6, rtol=0)
