"""SamplingOptions: one definition from which the CLI flags, the checks, the copied CLI line and the settings come."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from unoflux import UnofluxError
from unoflux.options import (
    EMPTY_PROMPT_METHODS,
    FLUX_DEV_DEFAULTS,
    METHOD_NAMES,
    POSITION_MODES,
    SCHEDULES,
    GenerationRequest,
    SamplingOptions,
    add_option_arguments,
    cli_flags,
    model_default_names,
    option_fields,
    options_from_args,
)


def test_torch_free_mirrors_match_the_library():
    from unoflux import conditioning, methods

    assert METHOD_NAMES == tuple(methods.METHODS) and POSITION_MODES == conditioning.POSITION_MODES
    assert EMPTY_PROMPT_METHODS == tuple(name for name, m in methods.METHODS.items() if m.accepts_empty_prompt)
    assert SCHEDULES == ("uno", "flux")
    assert set(model_default_names()) <= set(FLUX_DEV_DEFAULTS)  # every declarable option has FLUX.1-dev's value


def parse(argv: list[str], cls=SamplingOptions, **values):
    parser = argparse.ArgumentParser()
    add_option_arguments(parser)
    return options_from_args(parser.parse_args(argv), cls, **values)


def test_every_option_is_a_flag_and_the_copied_cli_line_gives_the_same_options():
    options = SamplingOptions(
        width=96,
        height=64,
        steps=7,
        guidance=2.5,
        true_cfg=3.0,
        negative_prompt="a dog",
        seed=5,
        num_images=2,
        method="uno",
        position_mode="width",
        reference_long_side=48,
        schedule="flux",
        time_shift=None,
        stochasticity=0.25,
    )
    assert parse(cli_flags(options)) == options
    assert "--ref-long-side" in cli_flags(options) and "--time-shift" not in cli_flags(options)  # None: the model's
    assert parse([]) == SamplingOptions()  # the flags' defaults are the fields'
    request = parse(["--steps", "3"], GenerationRequest, prompt="a cat", references=["x.png"])
    assert (request.prompt, request.references, request.steps) == ("a cat", ["x.png"], 3)
    parser = argparse.ArgumentParser()
    add_option_arguments(parser)
    documented = {action.dest: action.help for action in parser._actions}
    assert all(documented[f.name] == f.metadata["option"].help for f in option_fields())


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(width=0), "width 0 is out of range; use an integer from 16 to 2048"),
        (dict(height=2.5), "height 2.5 is out of range"),
        (dict(steps=0), "steps 0 is out of range; use an integer from 1 to 1000"),
        (dict(num_images=-1), "number of images -1 must be a positive integer"),
        (dict(true_cfg=0.5), r"true CFG scale 0.5 must be a number of at least 1 \(1 = off\)"),
        (dict(guidance=float("nan")), "guidance nan must be a finite number"),
        (dict(time_shift=0.0), r"time shift 0.0 must be a positive number \(1 = no shift\)"),
        (dict(stochasticity=1.5), "stochasticity 1.5 must be a number from 0 to 1"),
        (dict(position_mode="d"), "position mode 'd' is not one of: diagonal, height, width, none"),
        (dict(schedule="karras"), "schedule 'karras' is not one of: uno, flux"),
        (dict(method="instantid"), "method 'instantid' is not one of: uno, uso, dreamo"),
        (dict(reference_long_side=8), "reference long side 8 is out of range"),
        (dict(negative_prompt=3), "negative prompt 3 must be text"),
    ],
)
def test_a_bad_value_fails_with_one_sentence_naming_it(changes, message):
    with pytest.raises(UnofluxError, match=message):
        SamplingOptions(**changes).validate()


def test_resolved_fills_what_the_model_declares_and_the_time_shift_precedence():
    declared = {**FLUX_DEV_DEFAULTS, "width": 128, "height": 128, "guidance": 1.0, "true_cfg": 3.0, "time_shift": 20.0}
    resolved = SamplingOptions().resolved(declared)
    assert (resolved.width, resolved.guidance, resolved.true_cfg, resolved.method) == (128, 1.0, 3.0, "uno")
    assert (resolved.schedule, resolved.time_shift, resolved.stochasticity) == (None, 20.0, 0.0)
    assert SamplingOptions(schedule="flux").resolved(declared).time_shift is None  # a named schedule wins over it
    assert SamplingOptions(time_shift=2.0, schedule="flux").resolved(declared).schedule is None  # a shift wins
    assert SamplingOptions().resolved(FLUX_DEV_DEFAULTS).schedule == "uno"  # UNO's rule when nobody says
    assert dataclasses.replace(SamplingOptions(guidance=7.0)).resolved(declared).guidance == 7.0


def test_fast_mode_runs_its_share_of_the_models_steps_and_steps_a_call_gives_win():
    uno, turbo = FLUX_DEV_DEFAULTS, {**FLUX_DEV_DEFAULTS, "steps": 12}  # UNO's 25; DreamO's turbo 12
    assert SamplingOptions(fast=True).resolved(uno).steps == 16
    assert SamplingOptions(fast=True).resolved(turbo).steps == 8
    assert SamplingOptions(fast=True, steps=25).resolved(uno).steps == 25  # the call's own steps, as given
    assert SamplingOptions().resolved(uno).steps == 25
    once = SamplingOptions(fast=True).resolved(uno)
    assert once.resolved(uno).steps == 16  # resolving what ran again changes nothing


def test_the_pipeline_takes_options_and_diffusers_names(tiny_pipe):
    import torch

    options = SamplingOptions(width=32, height=32, steps=2, seed=3)
    a = tiny_pipe("a cat", None, options, output_type="latent")
    b = tiny_pipe("a cat", width=32, height=32, num_inference_steps=2, seed=3, output_type="latent")
    assert torch.equal(a.images, b.images) and a.settings["steps"] == 2 and a.settings["method"] == "uno"
    c = tiny_pipe("a cat", None, options, steps=1, output_type="latent")  # a keyword overrides the options
    assert c.settings["steps"] == 1
    with pytest.raises(TypeError, match="unexpected keyword argument 'stepz'"):
        tiny_pipe("a cat", stepz=3)


def test_options_must_be_options_not_a_size(tiny_pipe):
    with pytest.raises(TypeError, match="options must be a SamplingOptions, not int"):
        tiny_pipe("a cat", None, 32)


def test_the_demo_runs_every_held_out_prompt_and_example_through_the_options(tiny_pipe, tmp_path, capsys):
    """``make run``'s code path (``unoflux demo``), on the tiny model: every image written, each with a verdict."""
    from unoflux.demo import run_demo

    paths = run_demo(tiny_pipe, tmp_path, size=32, steps=1)
    assert paths and all(p.is_file() for p in paths)
    assert len(capsys.readouterr().out.strip().splitlines()) >= len(paths)
