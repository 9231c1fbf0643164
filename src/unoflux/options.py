"""Every sampling option, written once: its type, default, bounds and help.

:class:`SamplingOptions` is the one record of how to sample; :class:`GenerationRequest` adds the prompt and the
references. From the fields' metadata come the CLI flags (:func:`add_option_arguments`), the checks
(:meth:`SamplingOptions.validate`, callable before any model loads), the "copy as CLI" line (:func:`cli_flags`),
the settings stored in each PNG and batch JSON (``asdict`` of the resolved options), the evaluation settings and
the app's form. Adding an option: a field here, and the code that uses it (usually the pipeline).

``None`` means "the model's": a model folder may declare a value in its ``unoflux.json`` under the field's name
(fields marked ``model_default``); the pipeline's :attr:`~unoflux.pipeline.UnoFluxPipeline.model_defaults`
holds what it declared, FLUX.1-dev's otherwise. Nothing here imports torch: the CLI checks options before the
heavy imports.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import Any

MAX_SIDE = 2048  # FLUX.1 is trained up to ~2 MP
MAX_STEPS = 1000  # FLUX samples in 25-50; more is a typo, and would run for hours
MAX_SEED = 2**63 - 1  # what torch.Generator.manual_seed takes, with room for seed + j
POSITION_MODES = ("diagonal", "height", "width", "none")  # UnoPE offsets (conditioning.PositionMode)
SCHEDULES = ("uno", "flux")  # the time shift's resolution rule (flow.image_seq_len)
METHOD_NAMES = ("uno", "uso", "dreamo")  # mirrors unoflux.methods.METHODS (which imports torch); a test pins them equal
EMPTY_PROMPT_METHODS = ("uso",)  # mirrors Method.accepts_empty_prompt (pinned by the same test)


# What --fast sets (options a call leaves at their defaults): chosen by scripts/fast_quality.py's measurements on
# the embedded world (docs/performance.md, "Fast mode").
FAST_PRESET: dict[str, Any] = dict(magcache=0.25)
# and the share of the model's steps it runs when the call gives no steps: 16 of UNO's 25
FAST_STEP_SHARE = 0.64
EXACT_SETTINGS: dict[str, Any] = dict(step_cache=0.0, taylorseer=1, magcache=0.0, reference_refresh=1)  # off
# diffusers runs one cache hook at a time: the preset's step-caching switch gives way to one the call sets
STEP_CACHES = ("step_cache", "taylorseer", "magcache")


def _with_fast(name: str) -> str:
    """Help text: what --fast sets this switch to, when it sets it."""
    return f", or {FAST_PRESET[name]:g} with --fast" if name in FAST_PRESET else ""


@dataclass(frozen=True)
class OptionSpec:
    """How an option is checked and shown: ``label`` names it in sentences, ``help`` explains it."""

    label: str
    help: str
    minimum: float | None = None
    maximum: float | None = None
    above_minimum: bool = False  # the minimum itself is not allowed (a positive number)
    choices: tuple[str, ...] | None = None
    hint: str = ""  # what a value means, added to the error sentence: "(1 = off)"
    metavar: str | None = None
    model_default: bool = False  # None = the model's value (unoflux.json key = the field's name)
    flag: str | None = None  # the CLI flag when it is not --field-name

    def check(self, name: str, value: Any, kind: type) -> None:
        """Raise one sentence naming the value and what is allowed."""
        from .errors import UnofluxError

        if value is None:
            return
        hint = f" {self.hint}" if self.hint else ""
        if self.choices is not None:
            if value not in self.choices:
                raise UnofluxError(f"{self.label} {value!r} is not one of: {', '.join(self.choices)}")
            return
        if kind is bool:
            if not isinstance(value, bool):
                raise UnofluxError(f"{self.label} {value!r} must be true or false")
            return
        if kind is str:  # (the pipeline also takes one text per prompt)
            if not (isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))):
                raise UnofluxError(f"{self.label} {value!r} must be text")
            return
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind is int:
            if not (is_number and float(value).is_integer()) or not self._in_bounds(value):
                if self.maximum is not None:
                    raise UnofluxError(
                        f"{self.label} {value!r} is out of range; use an integer from "
                        f"{_number(self.minimum)} to {_number(self.maximum)}"
                    )
                if self.minimum == 1:
                    raise UnofluxError(f"{self.label} {value!r} must be a positive integer")
                raise UnofluxError(f"{self.label} {value!r} must be an integer")
            return
        if not (is_number and math.isfinite(value)) or not self._in_bounds(value):
            if self.minimum is not None and self.maximum is not None:
                rule = f"a number from {self.minimum:g} to {self.maximum:g}"
            elif self.minimum == 0 and self.above_minimum:
                rule = "a positive number"
            elif self.minimum is not None:
                rule = f"a number of at least {self.minimum:g}"
            else:
                rule = "a finite number"
            raise UnofluxError(f"{self.label} {value!r} must be {rule}{hint}")

    def _in_bounds(self, value: float) -> bool:
        if self.minimum is not None and (value <= self.minimum if self.above_minimum else value < self.minimum):
            return False
        return self.maximum is None or value <= self.maximum


def _number(value: float) -> str:
    """A bound as people write it: 2048, 0.5, 9223372036854775807 (not 9.22337e+18)."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def option(default: Any, label: str, help: str, **spec: Any) -> Any:
    return field(default=default, metadata={"option": OptionSpec(label=label, help=help, **spec)})


@dataclass(kw_only=True)
class SamplingOptions:
    """How to sample, given the model, the prompt and the references. ``None``: the model's (see module doc)."""

    width: int | None = option(
        None,
        "width",
        "output width in px, floored to a multiple of 16 (default: the model's; 512 for FLUX.1-dev)",
        minimum=16,
        maximum=MAX_SIDE,
        model_default=True,
    )
    height: int | None = option(
        None,
        "height",
        "output height in px, floored to a multiple of 16 (default: the model's; 512 for FLUX.1-dev)",
        minimum=16,
        maximum=MAX_SIDE,
        model_default=True,
    )
    steps: int | None = option(
        None,
        "steps",
        f"denoising steps (default: the model's; UNO's 25, DreamO's turbo 12; with --fast {FAST_STEP_SHARE:g} of the "
        "model's, rounded)",
        minimum=1,
        maximum=MAX_STEPS,
        model_default=True,
    )
    guidance: float | None = option(
        None,
        "guidance",
        "guidance input of a guidance-distilled model (default: the model's; 4 for FLUX.1-dev, as UNO)",
        model_default=True,
    )
    first_step_guidance: float | None = option(
        None,
        "first-step guidance",
        "the guidance input of the first step only (DreamO's first_step_guidance_scale; default: the same as guidance)",
        metavar="G",
    )
    true_cfg: float | None = option(
        None,
        "true CFG scale",
        "classifier-free guidance against the negative prompt, "
        "2 forwards per step; 1 = off (default: the model's; off for FLUX.1-dev)",
        minimum=1,
        hint="(1 = off)",
        metavar="SCALE",
        model_default=True,
    )
    negative_prompt: str = option("", "negative prompt", "the unconditional prompt of true CFG (default empty)")
    negative_guidance: float | None = option(
        None,
        "negative guidance",
        "the guidance input of true CFG's negative branch (DreamO's neg_guidance_scale, 3.5 in its app; default: the "
        "same as guidance)",
        metavar="G",
    )
    true_cfg_start: int | None = option(
        None, "true CFG start", "the first step with true CFG (0-based; DreamO's window; default: 0)", minimum=0
    )
    true_cfg_end: int | None = option(
        None, "true CFG end", "true CFG on steps before this one (default: to the end)", minimum=0
    )
    seed: int | None = option(
        3407, "seed", "image j uses seed + j (UNO's 3407); None: a random one", minimum=0, maximum=MAX_SEED
    )
    num_images: int = option(1, "number of images", "images per prompt", minimum=1)
    method: str | None = option(
        None,
        "method",
        "how references become conditioning: uno (subjects) or uso (a subject and style images); default: the "
        "model's (uno for FLUX.1-dev, uso once USO's style models are loaded)",
        choices=METHOD_NAMES,
        model_default=True,
    )
    position_mode: str = option(
        "diagonal", "position mode", "UnoPE offsets of the references (UNO's diagonal)", choices=POSITION_MODES
    )
    reference_long_side: int | None = option(
        None,
        "reference long side",
        "references are resized to this long side in px (default: the model's; 512 for one reference, 320 for "
        "several; DreamO: to an area of this side squared, 512)",
        minimum=16,
        maximum=MAX_SIDE,
        flag="--ref-long-side",
    )
    schedule: str | None = option(
        None,
        "schedule",
        "time shift by resolution: 'uno' reproduces UNO's inference, "
        "'flux' uses the true token count (default: the model's fixed time shift if it "
        "declares one, else uno)",
        choices=SCHEDULES,
    )
    time_shift: float | None = option(
        None,
        "time shift",
        "a fixed time shift instead (diffusers' shift; 1 = none), "
        "wins over the schedule (default: the model's; none for FLUX.1-dev)",
        minimum=0,
        above_minimum=True,
        hint="(1 = no shift)",
        metavar="S",
        model_default=True,
    )
    keep_size: bool = option(
        False,
        "keep size",
        "the output takes the subject reference's aspect, its long side the model's default width "
        "(USO's keep_size / --instruct_edit: 1024 px; for instructive edits of the subject)",
    )
    stochasticity: float | None = option(
        None,
        "stochasticity",
        "how much of each step is re-noised with fresh "
        "noise, 0 (the deterministic ODE, UNO's) to 1 (diffusers' stochastic "
        "sampling); the seed still fixes the image (default: the model's; 0)",
        minimum=0,
        maximum=1,
        metavar="S",
        model_default=True,
    )

    reference_refresh: int | None = option(
        None,
        "reference refresh",
        "recompute the references' keys and values every N steps and reuse them in between: the steps in between "
        "skip the reference tokens' own work (1 = every step, exact; more is faster and approximate; 0 = on the "
        f"first step only; default: 1{_with_fast('reference_refresh')})",
        minimum=0,
        metavar="N",
    )
    step_cache: float | None = option(
        None,
        "step cache",
        "First Block Cache threshold: a step whose first block changed less than this since the last full step "
        "reuses the other blocks' output from then (0 = off, exact; 0.1-0.35 skips more steps as it grows; "
        f"default: 0{_with_fast('step_cache')})",
        minimum=0,
        maximum=1,
        hint="(0 = off)",
        metavar="T",
    )
    taylorseer: int | None = option(
        None,
        "TaylorSeer interval",
        "TaylorSeer step cache (diffusers' lite variant): after 3 full steps, one full step in every N, the steps "
        "between predicted from the model output's first-order Taylor expansion, the blocks skipped (1 = off, "
        f"exact; more is faster and further from exact; default: 1{_with_fast('taylorseer')})",
        minimum=1,
        maximum=MAX_STEPS,
        metavar="N",
    )
    magcache: float | None = option(
        None,
        "MagCache threshold",
        "MagCache step cache: a step reuses the last full step's residual while the error accumulated from the "
        "model's calibrated residual-magnitude ratios stays under this, at most 3 steps in a row, never in the first "
        f"fifth of the steps (0 = off, exact; 0.06-0.3 skips more as it grows; default: 0{_with_fast('magcache')})",
        minimum=0,
        maximum=10,
        hint="(0 = off)",
        metavar="T",
    )
    fast: bool = option(
        False,
        "fast",
        "fast mode: the speed settings measured in docs/performance.md ("
        + ", ".join(f"{name.replace('_', ' ')} {value:g}" for name, value in FAST_PRESET.items())
        + f", {FAST_STEP_SHARE:g} of the model's steps), each one you set yourself wins; on the embedded model "
        "3.1x faster with references, 2.8x without; approximate",
    )

    def validate(self) -> None:
        """One :class:`~unoflux.errors.UnofluxError` sentence for the first bad value (no model needed)."""
        labels = {}
        for f in option_fields(type(self)):
            f.metadata["option"].check(f.name, getattr(self, f.name), _kind(f))
            labels[f.name] = f.metadata["option"].label
        chosen = [
            f"{labels[name]} {value:g}"
            for name in STEP_CACHES
            if (value := getattr(self, name)) is not None and value != EXACT_SETTINGS[name]
        ]
        if len(chosen) > 1:
            from .errors import UnofluxError

            count = "two" if len(chosen) == 2 else "three"
            raise UnofluxError(
                f"{' and '.join(chosen)} are {count} step caches and only one runs at a time; give one of them"
            )

    def resolved(self, model_defaults: dict[str, Any], default_schedule: str = "uno") -> SamplingOptions:
        """Every ``None`` a model may fill replaced by ``model_defaults`` (the pipeline's), and the time shift's
        precedence applied (:func:`resolve_time_shift`; ``default_schedule``: the method's): what actually runs, as
        settings records say it."""
        values = {f.name: getattr(self, f.name) for f in option_fields(type(self))}
        for f in option_fields(type(self)):
            if f.metadata["option"].model_default and values[f.name] is None and f.name != "time_shift":
                values[f.name] = model_defaults.get(f.name)
        if self.fast and self.steps is None and values["steps"] is not None:  # the model's steps, not the call's
            values["steps"] = max(1, round(values["steps"] * FAST_STEP_SHARE))
        chosen_cache = any(values[name] is not None for name in STEP_CACHES)
        for name, value in (FAST_PRESET if self.fast else EXACT_SETTINGS).items():  # what the call left unset
            if values[name] is None and not (self.fast and chosen_cache and name in STEP_CACHES):
                values[name] = value
        for name, off in EXACT_SETTINGS.items():
            values[name] = off if values[name] is None else values[name]
        values["schedule"], values["time_shift"] = resolve_time_shift(
            self.schedule, self.time_shift, model_defaults.get("time_shift"), default_schedule
        )
        return dataclasses.replace(self, **values)

    def sampling_options(self) -> SamplingOptions:
        """These options alone (without a request's prompt and references)."""
        return SamplingOptions(**{f.name: getattr(self, f.name) for f in option_fields(SamplingOptions)})


@dataclass
class GenerationRequest(SamplingOptions):
    """Everything that determines the images, given the model: a prompt, reference image paths, the options."""

    prompt: str
    # image paths (subjects), or unoflux.references.Reference for another role (a style image)
    references: list[Any] = field(default_factory=list)

    def validate(self) -> None:
        """Check the prompt, the options and that every reference opens, before any model work."""
        from .images import load_image
        from .references import as_references, slot_name

        references = as_references(self.references)
        check_prompt(self.prompt, allow_empty=empty_prompt_allowed(self.method, references))
        super().validate()
        for i, reference in enumerate(references):
            load_image(reference.image, what=f"{slot_name(reference)} image {i + 1}")


# FLUX.1-dev's values, what a model folder's unoflux.json overrides (keys: SamplingOptions field names).
FLUX_DEV_DEFAULTS: dict[str, Any] = dict(
    width=512, height=512, steps=25, guidance=4.0, true_cfg=1.0, method="uno", time_shift=None, stochasticity=0.0
)


def empty_prompt_allowed(method: str | None, references: Iterable[Any]) -> bool:
    """Before the model is loaded: the method takes an empty prompt, or it is still the model's (None) and a style
    reference says USO is meant. The pipeline checks again with the method known."""
    from .references import STYLE

    return method in EMPTY_PROMPT_METHODS or (method is None and any(r.role == STYLE for r in references))


def check_prompt(prompt: Any, allow_empty: bool = False) -> None:
    """A prompt is text; empty only where the method gives it a meaning (USO: keep the subject's layout)."""
    from .errors import UnofluxError

    if not isinstance(prompt, str):
        raise UnofluxError(f"the prompt {prompt!r} must be text")
    for i, char in enumerate(prompt):
        # a NUL ends a C string (and a PNG text chunk); a lone surrogate is what undecodable bytes on a command line
        # become, which no tokenizer or file can take
        if char == "\0" or "\ud800" <= char <= "\udfff":
            raise UnofluxError(
                f"the prompt has the character {char!r} at position {i + 1}, which is not text; remove it "
                "(or fix the file's or terminal's encoding)"
            )
    if not allow_empty and not prompt.strip():
        raise UnofluxError("the prompt is empty; describe the image to generate (only --method uso takes an empty one)")


def resolve_time_shift(
    schedule: str | None, time_shift: float | None, default_time_shift: float | None, default_schedule: str = "uno"
) -> tuple[str | None, float | None]:
    """(schedule, time shift) a call samples with: an explicit shift, else an explicit schedule's resolution
    rule, else the model's shift, else the method's rule (UNO's unless it says another). Exactly one is None."""
    if time_shift is None and schedule is None:
        time_shift = default_time_shift
    return (None, time_shift) if time_shift is not None else (schedule or default_schedule, None)


def option_fields(cls: type = SamplingOptions) -> list[dataclasses.Field]:
    return [f for f in fields(cls) if "option" in f.metadata]


def model_default_names() -> list[str]:
    """The options a model folder may declare in unoflux.json."""
    return [f.name for f in option_fields() if f.metadata["option"].model_default]


def typed(name: str, value: Any) -> Any:
    """``value`` (read from JSON) as option ``name``'s type: 1 -> 1.0 for a float option."""
    kind = _kind(next(f for f in option_fields() if f.name == name))
    return kind(value) if value is not None and kind in (int, float) else value


def _kind(f: dataclasses.Field) -> type:
    """bool, int, float or str, from the field's annotation (a string under ``from __future__ import annotations``)."""
    annotation = str(f.type)
    for kind in (bool, int, float):
        if annotation.startswith(kind.__name__):
            return kind
    return str


def flag(name: str) -> str:
    """The CLI flag of option ``name``."""
    spec = next(f.metadata["option"] for f in option_fields() if f.name == name)
    return spec.flag or "--" + name.replace("_", "-")


def add_option_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    names: Iterable[str] | None = None,
    defaults: dict[str, Any] | None = None,
) -> None:
    """A ``--flag`` per option (``names``: only these), typed and documented from the fields; ``defaults``
    overrides a field's default for this command."""
    chosen = None if names is None else set(names)
    for f in option_fields():
        spec: OptionSpec = f.metadata["option"]
        if chosen is not None and f.name not in chosen:
            continue
        default = (defaults or {}).get(f.name, f.default)
        kind = _kind(f)
        kwargs: dict[str, Any] = dict(dest=f.name, default=default, help=spec.help, metavar=spec.metavar)
        if spec.choices is not None:
            kwargs.update(choices=spec.choices, metavar=None)
        elif kind is bool:  # a switch: given = true
            kwargs = dict(dest=f.name, default=default, help=spec.help, action="store_true")
        elif kind is not str:
            kwargs.update(type=kind)
        parser.add_argument(flag(f.name), **kwargs)


def options_from_args(args: argparse.Namespace, cls: type = SamplingOptions, **values: Any) -> Any:
    """``cls`` (SamplingOptions or GenerationRequest) from the parsed flags of :func:`add_option_arguments`."""
    given = {f.name: getattr(args, f.name) for f in option_fields(cls) if hasattr(args, f.name)}
    return cls(**{**given, **values})


def cli_flags(options: SamplingOptions) -> list[str]:
    """The flags that give ``options`` again (options left to the model's are left out)."""
    argv = []
    for f in option_fields():
        value = getattr(options, f.name)
        if value is None or value == "" or value is False:
            continue
        if value is True:
            argv.append(flag(f.name))
            continue
        argv += [flag(f.name), f"{value:g}" if isinstance(value, float) else str(value)]
    return argv
