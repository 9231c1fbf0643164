"""Generation with 0, 1 and 3 references: shapes, sensitivity to every input, seeds, callbacks, bad values."""

from __future__ import annotations

import pytest
import torch

from unoflux import UnofluxError
from unoflux.conditioning import pack_latents, reference_noise
from unoflux.options import FLUX_DEV_DEFAULTS

from .conftest import random_image

ARGS = dict(width=48, height=32, num_inference_steps=2, reference_long_side=32)


def latents(pipe, prompt="a red cup on the beach", refs=(), **kwargs):
    return pipe(prompt, list(refs), output_type="latent", **{"seed": 7, **ARGS, **kwargs}).images


@pytest.mark.parametrize("num_refs", [0, 1, 3])
def test_images_have_the_requested_size(tiny_pipe, ref_images, num_refs):
    out = tiny_pipe("a cat", ref_images[:num_refs], seed=1, **ARGS)
    assert [im.size for im in out.images] == [(48, 32)]
    assert out.settings["num_references"] == num_refs and out.seeds == [1]
    assert latents(tiny_pipe, refs=ref_images[:num_refs]).shape == (1, (32 // 16) * (48 // 16), 64)


def test_output_size_is_floored_to_16(tiny_pipe):
    out = tiny_pipe("a cat", seed=1, width=50, height=40, num_inference_steps=1)
    assert out.images[0].size == (48, 32) and out.settings["width"] == 48


def test_every_reference_and_the_prompt_change_the_output(tiny_pipe, ref_images):
    base = latents(tiny_pipe, refs=ref_images)
    for i in range(3):  # replacing any one reference changes the result
        refs = list(ref_images)
        refs[i] = random_image(*ref_images[i].size, seed=50 + i)
        assert not torch.allclose(latents(tiny_pipe, refs=refs), base, atol=1e-6)
    assert not torch.allclose(latents(tiny_pipe, "a blue dog in the snow", refs=ref_images), base, atol=1e-6)
    assert not torch.allclose(latents(tiny_pipe, refs=ref_images[:2]), base, atol=1e-6)


def test_position_mode_matters_only_with_references(tiny_pipe, ref_images):
    by_mode = {
        m: latents(tiny_pipe, refs=ref_images[:2], position_mode=m) for m in ("diagonal", "height", "width", "none")
    }
    modes = list(by_mode)
    for i, a in enumerate(modes):
        for b in modes[i + 1 :]:
            assert not torch.allclose(by_mode[a], by_mode[b], atol=1e-6), (a, b)
    assert torch.equal(latents(tiny_pipe, position_mode="none"), latents(tiny_pipe, position_mode="diagonal"))


def test_seed_determinism_and_seed_plus_j(tiny_pipe, ref_images):
    a = latents(tiny_pipe, refs=ref_images[:1])
    assert torch.equal(a, latents(tiny_pipe, refs=ref_images[:1]))
    assert not torch.equal(a, latents(tiny_pipe, refs=ref_images[:1], seed=8))
    pair = tiny_pipe(
        "a red cup on the beach", ref_images[:1], seed=7, num_images_per_prompt=2, output_type="latent", **ARGS
    )
    assert pair.seeds == [7, 8]
    assert torch.allclose(pair.images[0], a[0], atol=1e-5)  # image j of a batch == a single call with seed + j
    assert torch.allclose(pair.images[1], latents(tiny_pipe, refs=ref_images[:1], seed=8)[0], atol=1e-5)


def test_several_prompts_each_restart_at_the_seed(tiny_pipe):
    out = tiny_pipe(["a cat", "a dog"], seed=3, num_images_per_prompt=2, output_type="latent", **ARGS)
    assert out.seeds == [3, 4, 3, 4] and out.images.shape[0] == 4


def test_prompt_seeds_give_each_prompt_of_a_batch_its_own_seed(tiny_pipe):
    out = tiny_pipe(["a cat", "a cat"], prompt_seeds=[5, 9], output_type="latent", **ARGS)
    assert out.seeds == [5, 9] and not torch.allclose(out.images[0], out.images[1], atol=1e-3)
    single = tiny_pipe("a cat", seed=9, output_type="latent", **ARGS).images
    assert torch.allclose(out.images[1], single[0], atol=1e-5)  # as if generated alone with its seed
    with pytest.raises(UnofluxError, match="1 prompt seeds for 2 prompts"):
        tiny_pipe(["a cat", "a dog"], prompt_seeds=[5], output_type="latent", **ARGS)


def test_noise_fed_to_the_sampler_is_uno_s(tiny_pipe):
    seen = {}

    def capture(pipe, step, t, tensors):
        seen.setdefault("t0", t)
        return {}

    tiny_pipe.prepare_noise = (lambda original: lambda *a, **k: seen.setdefault("noise", original(*a, **k)))(
        tiny_pipe.prepare_noise
    )
    try:
        latents(tiny_pipe, num_inference_steps=1, callback_on_step_end=capture)
    finally:
        del tiny_pipe.prepare_noise
    assert torch.equal(seen["noise"], pack_latents(reference_noise(7, 32, 48).float()))
    assert seen["t0"] == 1.0


def test_callback_can_replace_latents_and_sees_every_step(tiny_pipe):
    steps = []

    def zero_out(pipe, step, t, tensors):
        steps.append(step)
        return {"latents": torch.zeros_like(tensors["latents"])}

    out = latents(tiny_pipe, num_inference_steps=3, callback_on_step_end=zero_out)
    assert steps == [0, 1, 2] and torch.count_nonzero(out) == 0


def test_schedule_option_changes_the_result(tiny_pipe):
    assert not torch.allclose(latents(tiny_pipe, schedule="uno"), latents(tiny_pipe, schedule="flux"), atol=1e-6)


def test_a_fixed_time_shift_spaces_the_steps_as_diffusers_shift_does(tiny_pipe):
    """time_shift=s samples at s t / (1 + (s - 1) t) on the uniform grid (diffusers' static ``shift``), whatever
    the resolution; it wins over a schedule, and the settings say which shift ran."""
    seen = []
    out = tiny_pipe(
        "a cat",
        output_type="latent",
        seed=1,
        time_shift=20.0,
        schedule="flux",
        callback_on_step_end=lambda pipe, i, t, tensors: seen.append(t) or {},
        **ARGS,
    )
    grid = torch.linspace(1, 0, ARGS["num_inference_steps"] + 1)[:-1]
    torch.testing.assert_close(torch.tensor(seen), 20 * grid / (1 + 19 * grid))
    assert (out.settings["time_shift"], out.settings["schedule"]) == (20.0, None)
    assert not torch.allclose(out.images, latents(tiny_pipe, "a cat", seed=1), atol=1e-6)
    rule = tiny_pipe("a cat", output_type="latent", seed=1, **ARGS)
    assert rule.settings["schedule"] == "uno" and rule.settings["time_shift"] is None


def test_a_models_stochasticity_is_the_default(tiny_pipe):
    explicit = latents(tiny_pipe, "a cat", stochasticity=0.5)
    tiny_pipe.model_defaults = {**FLUX_DEV_DEFAULTS, "stochasticity": 0.5}  # as a model folder declares
    try:
        declared = tiny_pipe("a cat", output_type="latent", seed=7, **ARGS)
        ode = latents(tiny_pipe, "a cat", stochasticity=0.0)
    finally:
        del tiny_pipe.model_defaults
    assert torch.equal(declared.images, explicit) and declared.settings["stochasticity"] == 0.5
    assert torch.equal(ode, latents(tiny_pipe, "a cat"))


def test_a_models_time_shift_is_the_default_and_a_named_schedule_overrides_it(tiny_pipe):
    fixed = latents(tiny_pipe, "a cat", time_shift=5.0)
    tiny_pipe.model_defaults = {**FLUX_DEV_DEFAULTS, "time_shift": 5.0}  # as a model folder declares
    try:
        declared = tiny_pipe("a cat", output_type="latent", seed=7, **ARGS)
        by_rule = latents(tiny_pipe, "a cat", schedule="uno")
    finally:
        del tiny_pipe.model_defaults
    assert torch.equal(declared.images, fixed) and declared.settings["time_shift"] == 5.0
    assert torch.equal(by_rule, latents(tiny_pipe, "a cat"))


@pytest.mark.parametrize("num_refs", [0, 1])
def test_stochastic_sampling_is_fixed_by_each_images_seed_and_zero_is_the_ode(tiny_pipe, ref_images, num_refs):
    refs = ref_images[:num_refs]
    ode = tiny_pipe("a cat", refs, output_type="latent", seed=1, **ARGS)
    assert ode.settings["stochasticity"] == 0.0
    assert torch.equal(latents(tiny_pipe, "a cat", refs, seed=1, stochasticity=0.0), ode.images)  # UNO's sampler
    both = tiny_pipe(
        "a cat",
        refs,
        output_type="latent",
        seed=1,
        stochasticity=0.5,
        num_images_per_prompt=2,
        num_inference_steps=3,
        **{k: v for k, v in ARGS.items() if k != "num_inference_steps"},
    )
    assert both.settings["stochasticity"] == 0.5
    for j in range(2):  # image j uses seed + j, for its initial noise and for every step's fresh noise
        alone = latents(tiny_pipe, "a cat", refs, seed=1 + j, stochasticity=0.5, num_inference_steps=3)
        torch.testing.assert_close(both.images[j : j + 1], alone, rtol=1e-5, atol=1e-5)
    ode3 = latents(tiny_pipe, "a cat", refs, seed=1, num_inference_steps=3)
    assert not torch.allclose(both.images[:1], ode3, atol=1e-4)
    assert not torch.allclose(
        both.images[:1], latents(tiny_pipe, "a cat", refs, seed=1, stochasticity=1.0, num_inference_steps=3), atol=1e-4
    )


def test_stochastic_sampling_draws_fresh_noise_from_the_seeds_own_stream(tiny_pipe):
    """The first step re-noises with the first draw of ``step_noise_generator(seed)`` (a stream apart from the
    initial noise's): checked against the step computed by hand from the same transformer call."""
    from unoflux import flow
    from unoflux.sampling import step_noise_generator

    start = pack_latents(reference_noise(4, 32, 48).float())
    seen = {}
    forward = tiny_pipe.transformer.forward

    def recording(**kwargs):
        out = forward(**kwargs)
        seen.setdefault("velocity", out[0][:, : start.shape[1]])
        return out

    def after_step(pipe, i, t, tensors):
        seen.setdefault("t", t)
        seen.setdefault("latents", tensors["latents"].clone())
        return {}

    tiny_pipe.transformer.forward = recording
    try:
        latents(tiny_pipe, "a cat", seed=4, stochasticity=0.7, callback_on_step_end=after_step)
    finally:
        del tiny_pipe.transformer.forward
    t_next = flow.sigmas(ARGS["num_inference_steps"], flow.schedule_mu(flow.image_seq_len(32, 48))).tolist()[1]
    fresh = torch.randn(start.shape[1:], generator=step_noise_generator(4))[None]
    expected = flow.stochastic_step(start, seen["velocity"], seen["t"], t_next, fresh, 0.7)
    torch.testing.assert_close(seen["latents"], expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(fresh, torch.randn(start.shape[1:], generator=torch.Generator().manual_seed(4)))


@pytest.mark.parametrize("num_refs", [0, 1])
def test_true_cfg_is_classifier_free_guidance_against_the_negative_prompt(tiny_pipe, ref_images, num_refs):
    """Parity with the textbook formulation: two separate forwards per step, v = v_neg + s (v - v_neg), run
    through the plain (no-CFG) sampler by wrapping the transformer."""
    prompt, negative, scale, refs = "a red cup on the beach", "a blue cat", 3.0, ref_images[:num_refs]
    got = latents(tiny_pipe, prompt, refs, true_cfg_scale=scale, negative_prompt=negative, num_inference_steps=3)
    neg_embeds, neg_pooled, _ = tiny_pipe.encode_prompt(
        prompt=[negative], prompt_2=None, device="cpu", max_sequence_length=tiny_pipe.text_sequence_length
    )
    forward = tiny_pipe.transformer.forward

    def textbook_cfg(*, encoder_hidden_states, pooled_projections, **kwargs):
        v = forward(encoder_hidden_states=encoder_hidden_states, pooled_projections=pooled_projections, **kwargs)[0]
        v_neg = forward(encoder_hidden_states=neg_embeds, pooled_projections=neg_pooled, **kwargs)[0]
        return (v_neg + scale * (v - v_neg),)

    tiny_pipe.transformer.forward = textbook_cfg
    try:
        expected = latents(tiny_pipe, prompt, refs, true_cfg_scale=1.0, num_inference_steps=3)
    finally:
        del tiny_pipe.transformer.forward
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, latents(tiny_pipe, prompt, refs, num_inference_steps=3), atol=1e-4)
    assert not torch.allclose(
        got, latents(tiny_pipe, prompt, refs, true_cfg_scale=scale, num_inference_steps=3), atol=1e-4
    )  # the negative prompt matters (default: empty)


def test_guidance_defaults_come_from_the_pipeline_and_are_reported(tiny_pipe):
    plain = tiny_pipe("a cat", output_type="latent", seed=1, **ARGS)
    assert (plain.settings["guidance"], plain.settings["true_cfg"]) == (4.0, 1.0)  # FLUX.1-dev's: UNO's images
    assert torch.equal(plain.images, latents(tiny_pipe, "a cat", seed=1, guidance_scale=4.0, true_cfg_scale=1.0))
    tiny_pipe.model_defaults = {**FLUX_DEV_DEFAULTS, "guidance": 1.0, "true_cfg": 2.0}  # as a model folder declares
    try:
        declared = tiny_pipe("a cat", output_type="latent", seed=1, **ARGS)
    finally:
        del tiny_pipe.model_defaults
    assert (declared.settings["guidance"], declared.settings["true_cfg"]) == (1.0, 2.0)
    assert torch.equal(declared.images, latents(tiny_pipe, "a cat", seed=1, guidance_scale=1.0, true_cfg_scale=2.0))


def test_schnell_like_model_without_guidance_embedding():
    from unoflux.testing import tiny_pipeline

    pipe = tiny_pipeline(seed=0, guidance_embeds=False)
    a = latents(pipe, guidance_scale=1.0)
    assert torch.equal(a, latents(pipe, guidance_scale=9.0))  # guidance is ignored, not an error


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompt="  "), "prompt is empty"),
        (dict(width=0), "width 0 is out of range"),
        (dict(height=9000), "height 9000 is out of range"),
        (dict(num_inference_steps=0), "steps 0"),
        (dict(position_mode="d"), "position mode 'd'"),
        (dict(schedule="karras"), "schedule 'karras'"),
        (dict(time_shift=0.0), "time shift 0.0 must be a positive number"),
        (dict(stochasticity=1.5), "stochasticity 1.5 must be a number from 0"),
        (dict(stochasticity=-0.1), "stochasticity -0.1 must be a number from 0"),
        (dict(time_shift=float("inf")), "time shift inf"),
        (dict(reference_long_side=8), "reference long side 8"),
        (dict(output_type="np"), "output type"),
        (dict(true_cfg_scale=0.5), "true CFG scale 0.5 must be"),
        (dict(guidance_scale=float("nan")), "guidance nan"),
        (dict(true_cfg_scale=2.0, negative_prompt=["a", "b"]), "2 negative prompts for 1 prompts"),
    ],
)
def test_bad_settings_fail_with_one_sentence(tiny_pipe, kwargs, message):
    call = {"prompt": "a cat", **ARGS, **kwargs}
    with pytest.raises(UnofluxError, match=message):
        tiny_pipe(call.pop("prompt"), **call)


def test_too_many_reference_tokens(tiny_pipe, ref_images):
    with pytest.raises(UnofluxError, match="image tokens"):
        tiny_pipe("a cat", ref_images * 2, width=2048, height=2048, reference_long_side=2048, num_inference_steps=1)


def test_nan_outputs_are_reported(ref_images):
    from unoflux.testing import tiny_pipeline

    pipe = tiny_pipeline(seed=0)
    with torch.no_grad():
        pipe.transformer.proj_out.bias.fill_(float("nan"))
    with pytest.raises(UnofluxError, match="NaN"):
        pipe("a cat", seed=0, **ARGS)


def test_over_long_prompt_warns(tiny_pipe):
    with pytest.warns(UserWarning, match="T5 tokens"):
        latents(tiny_pipe, "a cat " * 300, max_sequence_length=64)
