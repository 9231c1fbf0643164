"""Fast mode's switches: what each promises (exact where it says exact, the API kept, nothing carried between
calls) and that each really does what it says (reference reuse skips the reference tokens, the step cache skips
blocks)."""

from __future__ import annotations

import pytest
import torch

from unoflux import UnofluxError
from unoflux.methods import get_method, open_references
from unoflux.options import EXACT_SETTINGS, FAST_PRESET, FAST_STEP_SHARE, STEP_CACHES
from unoflux.pipeline import model_defaults_of
from unoflux.reference_reuse import ReferenceReuseProcessor, reusing_references
from unoflux.testing import tiny_pipeline

from .conftest import random_image

ARGS = dict(width=48, height=32, num_inference_steps=3, reference_long_side=32, seed=5, output_type="latent")


def generate(pipe, refs, prompt="a red cup on the beach", **kwargs):
    return pipe(prompt, refs, **{**ARGS, **kwargs}).images


def generate_counting_full_steps(pipe, refs, **kwargs):
    """(images, how many forwards ran the first block): the steps a step cache did not skip."""
    calls = []
    hook = pipe.transformer.transformer_blocks[0].ff.register_forward_hook(lambda *args: calls.append(1))
    try:
        return generate(pipe, refs, **kwargs), len(calls)
    finally:
        hook.remove()


def velocity_inputs(pipe, refs, prompt="a red cup on the beach"):
    """What the pipeline hands its velocity for one prompt and UNO's conditioning of ``refs`` (48x32 output)."""
    method = get_method("uno")
    prepared = method.preprocess_references(open_references(refs), 32, pipe=pipe)
    conditioning = method.prepare(pipe, prepared, (2, 3), "diagonal", "cpu", torch.float32)
    text, pooled, text_ids = pipe.encode_prompt(
        prompt=[prompt], prompt_2=None, device="cpu", num_images_per_prompt=1, max_sequence_length=16
    )
    return conditioning, text, pooled, text_ids


def test_a_reused_step_at_the_recorded_point_is_the_full_forward_on_the_target_tokens_alone(tiny_pipe, ref_images):
    """Recording is the default processor's arithmetic, bit for bit; a reusing forward at the very point that
    recorded (same x, same t: the references' features are then exactly the kept ones) gives the full forward's
    velocity while the transformer sees only the text and target tokens."""
    conditioning, text, pooled, text_ids = velocity_inputs(tiny_pipe, ref_images[:2])
    x = torch.randn(1, 6, 64, generator=torch.Generator().manual_seed(0))
    exact = tiny_pipe.velocity(conditioning, text, pooled, text_ids, 4.0)(x, 0.7, 0)
    seen = []
    hook = tiny_pipe.transformer.x_embedder.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
    try:
        with reusing_references(tiny_pipe.transformer, refresh=10) as features:
            velocity = tiny_pipe.velocity(conditioning, text, pooled, text_ids, 4.0, reference_features=features)
            recorded, reused = velocity(x, 0.7, 0), velocity(x, 0.7, 1)
            elsewhere = velocity(x * 0.5, 0.3, 2)  # another point: the kept features are now an approximation
            full_elsewhere = tiny_pipe.velocity(conditioning, text, pooled, text_ids, 4.0)(x * 0.5, 0.3, 2)
    finally:
        hook.remove()
    assert torch.equal(recorded, exact)
    torch.testing.assert_close(reused, exact, atol=2e-6, rtol=1e-5)
    n_refs = conditioning.num_reference_tokens
    assert n_refs > 0 and seen[:3] == [6 + n_refs, 6, 6]
    assert not torch.allclose(elsewhere, full_elsewhere, atol=1e-4)


def test_reference_refresh_recomputes_every_n_steps_per_branch(tiny_pipe, ref_images):
    conditioning, text, pooled, text_ids = velocity_inputs(tiny_pipe, ref_images[:1])
    x = torch.randn(1, 6, 64, generator=torch.Generator().manual_seed(0))
    with reusing_references(tiny_pipe.transformer, refresh=3) as features:
        velocity = tiny_pipe.velocity(conditioning, text, pooled, text_ids, 4.0, reference_features=features)
        modes = []
        for step in range(7):
            velocity(x, 1 - step / 7, step)
            modes.append(features.mode)
        late = tiny_pipe.velocity(conditioning, text, pooled, text_ids, 4.0, "uncond", reference_features=features)
        late(x, 0.1, 7)  # a branch that starts late records its own features first
        assert features.mode == "record"
    assert modes == ["record", "reuse", "reuse", "record", "reuse", "reuse", "record"]
    processors = tiny_pipe.transformer.attn_processors.values()
    assert not any(isinstance(p, ReferenceReuseProcessor) for p in processors)  # the model's own are back


def test_reference_refresh_through_the_pipeline(tiny_pipe, ref_images):
    refs = ref_images[:2]
    exact = generate(tiny_pipe, refs)
    # one step only records, so it is the exact image; so is refresh 1 (the default processors)
    assert torch.equal(
        generate(tiny_pipe, refs, num_inference_steps=1, reference_refresh=5),
        generate(tiny_pipe, refs, num_inference_steps=1),
    )
    assert torch.equal(generate(tiny_pipe, refs, reference_refresh=1), exact)
    reused = generate(tiny_pipe, refs, reference_refresh=5)
    assert not torch.equal(reused, exact)
    # no state carries between calls: after a call with other references and prompt, the same as a fresh pipeline
    generate(tiny_pipe, ref_images[1:], "a blue dog", reference_refresh=5, true_cfg=2.0)
    assert torch.equal(generate(tiny_pipe, refs, reference_refresh=5), reused)
    assert torch.equal(generate(tiny_pipeline(seed=0), refs, reference_refresh=5), reused)
    # with true CFG (both branches in one batch, and apart once its window ends) and without references
    cfg = dict(true_cfg=2.0, true_cfg_end=2)
    assert generate(tiny_pipe, refs, reference_refresh=2, **cfg).shape == exact.shape
    assert torch.equal(generate(tiny_pipe, [], reference_refresh=5), generate(tiny_pipe, []))
    out = tiny_pipe("a cat", refs, **{**ARGS, "output_type": "pil"}, reference_refresh=4)
    assert out.settings["reference_refresh"] == 4


def test_the_step_cache_skips_blocks_and_forgets_between_calls(tiny_pipe, ref_images):
    refs = ref_images[:1]
    exact = generate(tiny_pipe, refs, num_inference_steps=4)
    calls = []
    last_block = tiny_pipe.transformer.single_transformer_blocks[-1]  # (the cache wraps the block's own forward)
    hook = last_block.proj_out.register_forward_hook(lambda *args: calls.append(1))
    try:
        cached = generate(tiny_pipe, refs, num_inference_steps=4, step_cache=1.0)  # every step after the first reuses
    finally:
        hook.remove()
    assert len(calls) == 1 and not torch.equal(cached, exact)
    assert tiny_pipe.transformer._cache_config is None  # the hooks are gone after the call
    assert torch.equal(generate(tiny_pipe, refs, num_inference_steps=4), exact)
    small = generate(tiny_pipe, refs, num_inference_steps=4, step_cache=0.05)
    generate(tiny_pipe, ref_images[1:2], "a blue dog", num_inference_steps=4, step_cache=0.05, true_cfg=2.0)
    assert torch.equal(generate(tiny_pipe, refs, num_inference_steps=4, step_cache=0.05), small)
    fresh = tiny_pipeline(seed=0)
    assert torch.equal(generate(fresh, refs, num_inference_steps=4, step_cache=0.05), small)


def test_taylorseer_predicts_the_steps_between_its_full_ones_and_forgets_between_calls(tiny_pipe, ref_images):
    refs = ref_images[:1]
    exact = generate(tiny_pipe, refs, num_inference_steps=7)
    assert torch.equal(generate(tiny_pipe, refs, num_inference_steps=7, taylorseer=1), exact)  # 1 = off
    predicted, full_steps = generate_counting_full_steps(tiny_pipe, refs, num_inference_steps=7, taylorseer=2)
    # 3 warm-up steps, then one full step in every 2 (steps 4 and 6): 5 of 7 run the blocks, 3 and 5 are predicted
    assert full_steps == 5 and not torch.equal(predicted, exact)
    assert tiny_pipe.transformer._cache_config is None  # the hooks are gone after the call
    assert (predicted - exact).abs().max() < 0.5 * exact.abs().max()  # a prediction, not noise
    generate(tiny_pipe, ref_images[1:2], "a blue dog", num_inference_steps=5, taylorseer=3, true_cfg=2.0)
    assert torch.equal(generate(tiny_pipe, refs, num_inference_steps=7, taylorseer=2), predicted)
    fresh = tiny_pipeline(seed=0)
    assert torch.equal(generate(fresh, refs, num_inference_steps=7, taylorseer=2), predicted)


def test_magcache_skips_the_steps_its_ratios_allow_and_forgets_between_calls(tiny_pipe, ref_images, monkeypatch):
    """Ratios of 1 (reusing the residual costs nothing): after the first 20% of steps (2 of 10), three steps in a
    row reuse the last residual, then one runs (diffusers' K = 3): the blocks run at steps 0, 1, 5 and 9. Ratios of
    0.5 never allow a skip: the exact image."""
    refs = ref_images[:1]
    exact = generate(tiny_pipe, refs, num_inference_steps=10)
    monkeypatch.setattr(tiny_pipe, "mag_ratios", [1.0] * 10)
    skipped, full_steps = generate_counting_full_steps(tiny_pipe, refs, num_inference_steps=10, magcache=0.1)
    assert full_steps == 4 and not torch.equal(skipped, exact)
    assert tiny_pipe.transformer._cache_config is None  # the hooks are gone after the call
    generate(tiny_pipe, ref_images[1:2], "a blue dog", num_inference_steps=6, magcache=0.1, true_cfg=2.0)
    assert torch.equal(generate(tiny_pipe, refs, num_inference_steps=10, magcache=0.1), skipped)
    fresh = tiny_pipeline(seed=0)
    fresh.mag_ratios = [1.0] * 10
    assert torch.equal(generate(fresh, refs, num_inference_steps=10, magcache=0.1), skipped)
    monkeypatch.setattr(tiny_pipe, "mag_ratios", [0.5] * 10)
    assert torch.equal(generate(tiny_pipe, refs, num_inference_steps=10, magcache=0.1), exact)


def test_the_mag_ratio_recorder_computes_what_diffusers_calibration_prints(tiny_pipe, ref_images, capsys):
    """Our calibration (kept, not printed) against diffusers' MagCache calibrate mode, in the same call."""
    import ast

    from diffusers.hooks import MagCacheConfig

    from unoflux.fast import MagRatioRecorder

    recorder = MagRatioRecorder(tiny_pipe.transformer)
    tiny_pipe.transformer.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=6))
    capsys.readouterr()
    try:
        with recorder:
            recorder.start_call()
            generate(tiny_pipe, ref_images[:2], num_inference_steps=6)
    finally:
        tiny_pipe.transformer.disable_cache()
    printed = capsys.readouterr().out.split("mag_ratios=...):")[1].strip().splitlines()[0]
    theirs = ast.literal_eval(printed)
    assert len(theirs) == 6 and len(set(theirs)) > 2  # (a residual that changes from step to step)
    assert recorder.ratios() == pytest.approx(theirs, abs=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(reference_refresh=-1), "reference refresh -1 must be an integer"),
        (dict(step_cache=1.5), "step cache 1.5 must be a number from 0 to 1 (0 = off)"),
        (dict(taylorseer=0), "TaylorSeer interval 0 is out of range; use an integer from 1 to 1000"),
        (
            dict(step_cache=0.2, taylorseer=3),
            "step cache 0.2 and TaylorSeer interval 3 are two step caches and only one runs at a time; give one of them",
        ),
        (dict(magcache=-0.1), "MagCache threshold -0.1 must be a number from 0 to 10 (0 = off)"),
        (
            dict(taylorseer=2, magcache=0.1),
            "TaylorSeer interval 2 and MagCache threshold 0.1 are two step caches and only one runs at a time",
        ),
    ],
)
def test_bad_fast_settings_fail_with_one_sentence(tiny_pipe, kwargs, message):
    with pytest.raises(UnofluxError, match=message.replace("(", r"\(").replace(")", r"\)")):
        tiny_pipe("a cat", [random_image(32, 32)], **{**ARGS, **kwargs})


def test_the_fast_preset_is_its_switches_and_what_a_call_sets_wins(tiny_pipe, ref_images):
    refs = ref_images[:1]
    preset = tiny_pipe("a cat", refs, **{**ARGS, "output_type": "pil"}, fast=True)
    assert preset.settings["fast"] is True
    switches = {k: preset.settings[k] for k in FAST_PRESET}
    assert switches == FAST_PRESET
    assert torch.equal(generate(tiny_pipe, refs, "a cat", fast=True), generate(tiny_pipe, refs, "a cat", **switches))
    # without steps of the call's own: its share of the model's, which the settings record
    fast_steps = round(model_defaults_of(tiny_pipe)["steps"] * FAST_STEP_SHARE)
    auto = tiny_pipe("a cat", refs, **{**ARGS, "num_inference_steps": None}, fast=True)
    assert auto.settings["steps"] == fast_steps < model_defaults_of(tiny_pipe)["steps"]
    assert torch.equal(auto.images, generate(tiny_pipe, refs, "a cat", num_inference_steps=fast_steps, **switches))
    # a switch the preset sets, set back by the call (a step cache only when the preset has nothing else)
    key = next((k for k in FAST_PRESET if k not in STEP_CACHES), next(iter(FAST_PRESET)))
    own = tiny_pipe("a cat", refs, **{**ARGS, "output_type": "pil"}, fast=True, **{key: EXACT_SETTINGS[key]})
    assert own.settings[key] == EXACT_SETTINGS[key]
    assert all(own.settings[k] == v for k, v in FAST_PRESET.items() if k != key)
    # a step cache the call chooses replaces the preset's (diffusers runs one at a time)
    for chosen in (dict(taylorseer=3), dict(step_cache=0.2), dict(magcache=0.1)):
        other = tiny_pipe("a cat", refs, **{**ARGS, "output_type": "pil"}, fast=True, **chosen)
        caches = {k: other.settings[k] for k in STEP_CACHES}
        assert caches == {**{k: EXACT_SETTINGS[k] for k in STEP_CACHES}, **chosen}


@pytest.mark.slow
def test_compiled_blocks_give_the_same_image(official_layout):
    """--compile (torch.compile of the repeated blocks): the image of eager mode to float rounding, also when the
    token count changes between calls (one reference, then two: dynamic shapes, not a wrong cached graph)."""
    from unoflux.checkpoints import load_pipeline

    paths, _ = official_layout
    eager, compiled = (load_pipeline(paths, use_environment=False, compile_blocks=c) for c in (False, True))
    refs = [random_image(32, 32, seed=1), random_image(48, 32, seed=2)]
    for count in (1, 2):
        a, b = (generate(pipe, refs[:count], num_inference_steps=2) for pipe in (eager, compiled))
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
