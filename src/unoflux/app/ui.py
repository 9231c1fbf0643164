"""The Gradio page: a form over :class:`~unoflux.app.runner.AppRunner`, a queue, and a local server."""

from __future__ import annotations

import html
import inspect
import json
import logging
import os
import re
import secrets
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Set before Gradio is imported, which is when it reads them: nothing may leave the machine.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import gradio as gr  # noqa: E402
import torch  # noqa: E402
from gradio.utils import get_upload_folder  # noqa: E402
from PIL import Image  # noqa: E402

from ..conditioning import default_reference_long_side  # noqa: E402
from ..demo import EXAMPLES_DIR  # noqa: E402
from ..errors import UnofluxError  # noqa: E402
from ..images import load_image, read_settings  # noqa: E402
from ..options import (  # noqa: E402
    FAST_STEP_SHARE,
    MAX_SIDE,
    METHOD_NAMES,
    POSITION_MODES,
    SCHEDULES,
    GenerationRequest,
)
from ..pipeline import model_defaults_of  # noqa: E402
from ..references import ROLES, STYLE, SUBJECT, Reference, slot_name  # noqa: E402
from .runner import AppRunner  # noqa: E402

MAX_REFERENCES = 4
MAX_STYLES = 2  # USO's app has two style slots
LONG_SIDE_CHOICES = ["auto", "256", "320", "384", "512", "640", "768", "1024"]
DEFAULTS = GenerationRequest(prompt="")  # as `unoflux generate`
API_NAME = "generate"  # gradio_client: client.predict(..., api_name="/generate")
log = logging.getLogger("unoflux.app")


def upload_path(payload: dict | None) -> str | None:
    """The file behind a raw image payload, which must lie in Gradio's upload cache (where uploads, and the files the
    page was sent, such as examples, land). Raw payloads skip Gradio's own check, and a client may name any path:
    a file elsewhere on this machine is refused, never opened or copied."""
    path = payload.get("path") if isinstance(payload, dict) else None  # (Gradio refuses any other type itself)
    if not path:
        return None
    cache = Path(get_upload_folder()).resolve()
    if not Path(path).resolve().is_relative_to(cache):
        raise UnofluxError(
            f"{Path(str(path)).name!r} is not a file uploaded to this app; send the image itself (gradio_client: "
            "handle_file)"
        )
    return path


def example_rows() -> list[list[Any]]:
    """Bundled examples as form rows: prompt, then one path (or None) per reference slot."""
    items = json.loads((EXAMPLES_DIR / "examples.json").read_text())
    rows = []
    for item in items:
        references = [str(EXAMPLES_DIR / name) for name in item["references"]]
        rows.append([item["prompt"], *references, *[None] * (MAX_REFERENCES - len(references))])
    return rows


def auto_long_sides(pipe) -> tuple[int, int]:
    """The reference long side 'auto' gives for one reference and for several: the model's own
    (``pipe.reference_long_sides``, e.g. the embedded model's (128, 80)) or UNO's (512, 320)."""
    sides = getattr(pipe, "default_reference_long_side", None) or default_reference_long_side  # wrapped pipes: UNO's
    return int(sides(1)), int(sides(2))


def long_side_label(sides: tuple[int, int]) -> str:
    one, several = sides
    auto = f"{one}" if one == several else f"{one} for one reference, {several} for several"
    return f"Reference long side (auto: {auto})"


def parse_long_side(value: Any) -> int | None:
    """'auto' (or empty) -> None, the pipeline's default; otherwise a whole number of pixels."""
    text = str(value if value is not None else "auto").strip().lower()
    if text in ("", "auto"):
        return None
    try:
        return int(text)
    except ValueError:
        raise UnofluxError(f"reference long side {value!r} must be 'auto' or a whole number of pixels") from None


def user_message(err: Exception) -> str:
    """``err`` as the page shows it: uploads named by their file name, not by Gradio's cache path."""
    return re.sub(re.escape(get_upload_folder()) + r"/[0-9a-f]+/", "", str(err))


def _as_int(value: Any, name: str) -> int:
    """Sliders and number boxes send floats (and API callers anything): accept whole numbers only."""
    try:
        number = float(value)
        if number == int(number):
            return int(number)
    except (TypeError, ValueError, OverflowError):
        pass
    raise UnofluxError(f"{name} {value!r} must be a whole number")


def _optional_int(value: Any, name: str) -> int | None:
    """A blank box -> None (the default); otherwise a whole number."""
    return None if value is None or str(value).strip() == "" else _as_int(value, name)


def _optional_number(value: Any, name: str) -> float | None:
    """A blank number box (None or "") -> None, the model's default; otherwise a number."""
    if value is None or str(value).strip() == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UnofluxError(f"{name} {value!r} must be a number, or blank for the default") from None


DEFAULT_MAX_UPLOAD_MEGAPIXELS = 40.0  # a 40 MP camera's photo; the library itself refuses beyond 64 (images.MAX_PIXELS)


def check_upload_pixels(path: str, what: str, max_megapixels: float | None) -> None:
    """Refuse an upload of more than ``max_megapixels`` (``--max-upload-megapixels``) from its header alone, before
    decoding it; a file that does not open is left to :func:`unoflux.images.load_image` to name."""
    if max_megapixels is None:
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's bomb warning: the size is what we check here
            with Image.open(path) as image:
                width, height = image.size
    except (Image.DecompressionBombError, OSError, SyntaxError, ValueError):
        return  # past Pillow's own limit, or not an image: load_image says which
    if width * height > max_megapixels * 1e6:
        name = user_message(Exception(path))
        raise UnofluxError(
            f"{what} {name!r} is {width}x{height} ({width * height / 1e6:.3g} megapixels); this app takes uploads of "
            f"at most {max_megapixels:g} megapixels"
        )


def check_upload(what: str, max_megapixels: float | None = None):
    """The event behind an image slot's change (an upload, a drop, a paste): open the file as a generation would
    (:func:`unoflux.images.load_image`, after the app's pixel limit); one that does not open is cleared from the slot
    and named, once, in the status line, now rather than at Generate. Raw payloads, as for Generate: Gradio's own
    preprocessing would fail on a corrupt file with a bare "Error"."""

    def check(payload: dict | None):
        try:
            path = upload_path(payload)
            if not path:
                return gr.skip(), gr.skip()
            check_upload_pixels(path, what, max_megapixels)
            load_image(path, what=what)
        except UnofluxError as err:
            message = f"{user_message(err)}; the slot was cleared, choose another file."
            log.warning("upload %s refused: %s", secrets.token_hex(3), message)
            return None, message
        return gr.skip(), gr.skip()

    return check


# The form fields "Load settings from a PNG" fills, as the PNG's settings record (and make_generate) names them.
LOADED_SETTINGS = (
    "prompt",
    "width",
    "height",
    "steps",
    "guidance",
    "true_cfg",
    "seed",
    "negative_prompt",
    "position_mode",
    "schedule",
    "time_shift",
    "stochasticity",
    "method",
    "fast",
)


def settings_from_png(
    path: str | None,
    choices: dict[str, list[str]],
    reference_folders: Sequence[str | Path] = (),
    slot_roles: Sequence[str] = (SUBJECT,),
    style_slots: bool = False,
) -> tuple[dict[str, Any], str]:
    """The form values a PNG saved by unoflux carries (``unoflux.images.read_settings``), and a one-line status;
    ``({}, sentence)`` for a file without them. ``choices``: each radio's allowed values (a value the page does not
    offer, e.g. a method this app has not loaded, is left as it is and named).

    With ``reference_folders`` (the app's output folder and its examples) the references come back too, each into
    its slot (``reference_k`` with its ``task_k``, ``style_k``; the slots the PNG does not fill are emptied), but only
    files that exist inside those folders: a path in a PNG is the sender's word, and the page must not serve other
    files of this machine. ``slot_roles``: the roles a reference slot takes (DreamO's tasks: every role; else
    subjects); ``style_slots``: the page has USO's style slots. A reference of a role the page does not offer, or one
    that is missing or outside the folders, is named instead."""
    if not path:
        return {}, ""
    name = Path(path).name
    try:
        settings = read_settings(path)
    except (OSError, KeyError, AttributeError, ValueError, SyntaxError, TypeError):
        return {}, f"'{name}' carries no unoflux settings; drop a PNG the app or `unoflux generate` saved."
    values, skipped = {}, []
    for key in LOADED_SETTINGS:
        if key not in settings or (settings[key] is None and key not in ("time_shift", "negative_prompt")):
            continue
        value = settings[key]
        if key in choices and value not in choices[key]:
            skipped.append(f"{key} {value!r}")
            continue
        if key == "time_shift":  # a text box: blank is the model's
            value = "" if value is None else str(value)
        values[key] = "" if value is None else value
    status = f"Loaded the settings of '{name}'" + (f" (seed {values['seed']})" if "seed" in values else "")
    references = settings.get("references") or []
    if reference_folders and isinstance(references, list):
        restored, left_out = _references_from_settings(references, reference_folders, slot_roles, style_slots)
        values.update(restored)
        count = sum(1 for key, value in restored.items() if value and key.startswith(("reference_", "style_")))
        status += f" and its {count} reference{'s' if count != 1 else ''}" if count else ""
        status += f"; not loaded, add again: {', '.join(left_out)}." if left_out else "."
    else:
        status += "; add its references again, they are not loaded." if references else "."
    if skipped:
        status += f" Not offered here, left as they were: {', '.join(skipped)}."
    return values, status


def _references_from_settings(
    records: list, folders: Sequence[str | Path], slot_roles: Sequence[str], style_slots: bool
) -> tuple[dict[str, Any], list[str]]:
    """Slot values for a PNG's references (see :func:`settings_from_png`) and what was left out, each named."""
    from ..references import as_reference

    allowed = [Path(folder).resolve() for folder in folders]
    slots = {f"reference_{k}": None for k in range(1, MAX_REFERENCES + 1)}
    slots.update({f"task_{k}": SUBJECT for k in range(1, MAX_REFERENCES + 1)})
    slots.update({f"style_{k}": None for k in range(1, MAX_STYLES + 1)})
    subjects, styles, left_out = 0, 0, []
    for record in records:
        try:
            reference = as_reference(record)
        except UnofluxError:
            left_out.append(f"{record!r} (not a reference)")
            continue
        image = Path(str(reference.image)).resolve()
        shown = f"'{image.name}'"
        to_style = reference.role == STYLE and style_slots
        if not to_style and reference.role not in slot_roles:
            left_out.append(f"{shown} (role {reference.role!r}, not offered here)")
        elif not image.is_file():
            left_out.append(f"{shown} (missing)")
        elif not any(image.is_relative_to(folder) for folder in allowed):
            left_out.append(f"{shown} (outside this app's folders)")
        elif to_style and styles < MAX_STYLES:
            styles += 1
            slots[f"style_{styles}"] = str(image)
        elif not to_style and subjects < MAX_REFERENCES:
            subjects += 1
            slots[f"reference_{subjects}"], slots[f"task_{subjects}"] = str(image), reference.role
        else:
            left_out.append(f"{shown} (no slot left)")
    return slots, left_out


def refused(message: str, request_id: str) -> gr.Error:
    """The page's error for a request we refuse on purpose (bad input, too little memory): one line in the server
    log, not Gradio's traceback, which would only point at this function. Unexpected errors keep theirs."""
    log.warning("request %s refused: %s", request_id, message)
    return gr.Error(message, print_exception=False)


def failed(err: Exception, request_id: str) -> gr.Error:
    """The page's error for a real fault (a bug, a broken model): its traceback once, in the server log with the
    request's id (not again from Gradio), and a sentence that points there."""
    log.exception("request %s failed: %s: %s", request_id, type(err).__name__, err)
    return gr.Error(
        f"internal error ({type(err).__name__}: {err}); the server log has the details (request {request_id})",
        print_exception=False,
    )


def request_summary(request: GenerationRequest, result, seconds: float) -> str:
    """One line of what ran: the prompt (cut at 60 characters), the settings that differ between requests, the
    time and where the images went."""
    prompt = request.prompt if len(request.prompt) <= 60 else request.prompt[:57] + "..."
    size = f"{result.size[0]}x{result.size[1]}" if result.size else "?"
    names = ", ".join(p.name for p in result.images)
    return (
        f"done in {seconds:.1f} s: prompt {prompt!r}, {len(result.images)} x {size} px, steps {request.steps or 'auto'}"
        f", seed {request.seed}, {len(request.references)} references, method {request.method or 'auto'}"
        f"{', fast mode' if request.fast else ''} -> {names}"
    )


def make_generate(runner: AppRunner, max_upload_megapixels: float | None = None):
    """The endpoint behind the Generate button and ``/generate``: raw form values in (see ``build_app``),
    (saved PNGs, CLI command, status line, seed used) out. Its parameter names are the API's keyword arguments;
    the seed goes to a ``gr.State``, which API clients do not see, so they still get three values. Uploads of more
    than ``max_upload_megapixels`` are refused (also those that reach Generate without the slot's check)."""

    def generate(
        prompt: str,
        reference_1: dict | None = None,
        reference_2: dict | None = None,
        reference_3: dict | None = None,
        reference_4: dict | None = None,
        width: float = DEFAULTS.width,
        height: float = DEFAULTS.height,
        steps: float | None = DEFAULTS.steps,  # None: the model's (25; DreamO's turbo 12)
        guidance: float | None = DEFAULTS.guidance,
        true_cfg: float | None = DEFAULTS.true_cfg,
        seed: float | None = DEFAULTS.seed,
        random_seed: bool = False,
        num_images: float = DEFAULTS.num_images,
        position_mode: str = DEFAULTS.position_mode,
        reference_long_side: str = "auto",
        schedule: str | None = DEFAULTS.schedule,
        negative_prompt: str = DEFAULTS.negative_prompt,
        time_shift: str | float | None = DEFAULTS.time_shift,  # a text box: blank (or None) is the model's
        stochasticity: float | None = DEFAULTS.stochasticity,
        method: str | None = DEFAULTS.method,
        style_1: dict | None = None,
        style_2: dict | None = None,
        keep_size: bool = DEFAULTS.keep_size,
        task_1: str = SUBJECT,
        task_2: str = SUBJECT,
        task_3: str = SUBJECT,
        task_4: str = SUBJECT,
        first_step_guidance: str | float | None = None,  # text boxes: blank (or None) is the default
        negative_guidance: str | float | None = None,
        true_cfg_start: str | float | None = None,
        true_cfg_end: str | float | None = None,
        fast: bool = False,
        progress=gr.Progress(),
    ) -> tuple[list[str], str, str, int]:
        """Generate images from a prompt, up to four subject reference images and (USO) two style images; returns
        the saved PNGs, the equivalent `unoflux generate` command, and a one-line status."""
        request_id, start = secrets.token_hex(3), time.monotonic()  # the id ties the log lines of one request
        try:
            slots = zip((reference_1, reference_2, reference_3, reference_4), (task_1, task_2, task_3, task_4))
            subjects = [Reference(upload_path(r), task or SUBJECT) for r, task in slots if r]  # DreamO: a task each
            styles = [Reference(upload_path(r), STYLE) for r in (style_1, style_2) if r]
            for k, reference in enumerate(subjects + styles, start=1):  # numbered as GenerationRequest.validate does
                check_upload_pixels(reference.image, f"{slot_name(reference)} image {k}", max_upload_megapixels)
            request = GenerationRequest(
                prompt=prompt or "",
                references=subjects + styles,
                width=None if width is None else _as_int(width, "width"),  # None: the model's size
                height=None if height is None else _as_int(height, "height"),
                steps=None if steps is None else _as_int(steps, "steps"),
                guidance=None if guidance is None else float(guidance),
                true_cfg=None if true_cfg is None else float(true_cfg),
                negative_prompt=negative_prompt or "",
                seed=secrets.randbelow(2**31) if random_seed else _as_int(seed, "seed"),
                num_images=_as_int(num_images, "number of images"),
                position_mode=position_mode,
                reference_long_side=parse_long_side(reference_long_side),
                schedule=schedule or None,
                time_shift=_optional_number(time_shift, "time shift"),
                stochasticity=None if stochasticity is None else float(stochasticity),
                method=method or None,
                keep_size=bool(keep_size),
                first_step_guidance=_optional_number(first_step_guidance, "first-step guidance"),
                negative_guidance=_optional_number(negative_guidance, "negative guidance"),
                true_cfg_start=_optional_int(true_cfg_start, "true CFG start"),
                true_cfg_end=_optional_int(true_cfg_end, "true CFG end"),
                fast=bool(fast),
            )
            progress(0, desc="starting")
            result = runner.run(request, on_step=lambda done, total: progress((done, total), desc="denoising"))
        except UnofluxError as err:
            raise refused(user_message(err), request_id) from None
        except torch.OutOfMemoryError:
            raise refused(
                "out of GPU memory; use a smaller size, fewer references or images, or restart with --offload model",
                request_id,
            ) from None
        except Exception as err:  # noqa: BLE001 - a real fault: logged with its traceback, then the page told
            raise failed(err, request_id) from None
        log.info("request %s %s", request_id, request_summary(request, result, time.monotonic() - start))
        noun = "image" if len(result.images) == 1 else "images"
        # the images' own pixels: the gallery may show a small result larger than it is
        size = f", {result.size[0]} x {result.size[1]} px," if result.size else ""
        status = f"Saved {len(result.images)} {noun}{size} to `{runner.out_dir}` (seed {request.seed})."
        if result.floored:
            status += f" {' and '.join(result.floored).capitalize()}: sizes are floored to multiples of 16."
        return [str(p) for p in result.images], result.command, status, request.seed

    return generate


def fast_mode_steps(on: bool, current: int, model_steps: int) -> int:
    """The steps slider after Fast mode is ticked (``on``) or unticked: the model's steps and fast mode's share
    of them trade places; a number the user set stays."""
    fast_steps = max(1, round(model_steps * FAST_STEP_SHARE))
    if on and current == model_steps:
        return fast_steps
    if not on and current == fast_steps:
        return model_steps
    return current


def _form_inputs(defaults: dict[str, Any], styles: bool = False, tasks: bool = False) -> list[gr.Component]:
    """The form, laid out in the current column, starting at the model's ``defaults``; returned in
    ``make_generate``'s parameter order. ``styles``: show the style slots (USO's style models are loaded);
    ``tasks``: a task per reference slot (DreamO's checkpoint is loaded)."""
    default_size, default_guidance, default_true_cfg = defaults["width"], defaults["guidance"], defaults["true_cfg"]
    default_time_shift, default_stochasticity = defaults["time_shift"], defaults["stochasticity"]
    prompt = gr.Textbox(
        label="Prompt", lines=2, placeholder="a little orange block at the left in a room", elem_id="prompt"
    )

    def image_slot(label: str, elem_id: str) -> gr.Image:  # "upload" includes drag and drop
        return gr.Image(label=label, type="filepath", height=160, sources=["upload", "clipboard"], elem_id=elem_id)

    with gr.Row():
        references = [image_slot(f"Reference {k}", f"reference-{k}") for k in range(1, MAX_REFERENCES + 1)]
    with gr.Row(visible=tasks):
        slot_tasks = [
            gr.Dropdown(list(ROLES), value=SUBJECT, label=f"Task {k} (DreamO: subject, id = face, style)",
                        elem_id=f"task-{k}")
            for k in range(1, MAX_REFERENCES + 1)
        ]  # fmt: skip
    with gr.Row(visible=styles):
        style_images = [image_slot(f"Style {k} (USO)", f"style-{k}") for k in range(1, MAX_STYLES + 1)]
    with gr.Row():
        width = gr.Slider(16, MAX_SIDE, value=default_size, step=16, label="Width")
        height = gr.Slider(16, MAX_SIDE, value=default_size, step=16, label="Height")
    with gr.Row():
        steps = gr.Slider(1, 100, value=defaults["steps"], step=1, label="Steps")
        guidance = gr.Slider(0, 10, value=default_guidance, step=0.1, label="Guidance")
        true_cfg = gr.Slider(1, 10, value=default_true_cfg, step=0.1, label="True CFG (1 = off)")
    with gr.Row():
        seed = gr.Number(value=DEFAULTS.seed, precision=0, label="Seed", elem_id="seed")
        random_seed = gr.Checkbox(value=False, label="Random seed")
        num_images = gr.Slider(1, 4, value=DEFAULTS.num_images, step=1, label="Number of images")
        fast = gr.Checkbox(value=False, label="Fast mode (about 3x faster, approximate)", elem_id="fast")
    # --fast runs a share of the model's steps; here the slider always sends a number, so ticking the box moves
    # it there (and back), where the user had not chosen steps of their own. On the user's click only (.input):
    # a PNG's settings filling the form set both boxes as they were.
    fast.input(
        lambda on, current: fast_mode_steps(on, current, defaults["steps"]),
        inputs=[fast, steps],
        outputs=steps,
        queue=False,
        api_visibility="private",
    )
    with gr.Accordion("Advanced", open=False):
        position_mode = gr.Radio(list(POSITION_MODES), value=DEFAULTS.position_mode, label="Position mode (UnoPE)")
        auto_sides = defaults.get("reference_long_sides", (512, 320))
        model_sides = {str(side) for side in auto_sides} - set(LONG_SIDE_CHOICES)  # the model's own sizes, offered
        long_side = gr.Dropdown(
            ["auto", *sorted(model_sides, key=int), *LONG_SIDE_CHOICES[1:]],
            value="auto",
            allow_custom_value=True,
            label=long_side_label(auto_sides),
            elem_id="reference-long-side",
        )
        schedule = gr.Radio(
            list(SCHEDULES),
            value=None,
            label="Schedule (time shift by resolution; none chosen: the method's, uno for UNO and USO, flux for DreamO)",
        )
        # A text box, not gr.Number: a Number box shows None as 0, which the model refuses ("must be a positive
        # number"), so every generation with Advanced opened failed. Blank here means the model's.
        time_shift = gr.Textbox(
            value="" if default_time_shift is None else str(default_time_shift),
            placeholder="the model's",
            label="Time shift (blank: the model's, by the schedule unless it declares one)",
            elem_id="time-shift",
        )
        stochasticity = gr.Slider(
            0,
            1,
            value=default_stochasticity,
            step=0.05,
            elem_id="stochasticity",
            label="Stochasticity (0: the deterministic ODE; fresh noise each step up to 1)",
        )
        negative_prompt = gr.Textbox(
            value="", label="Negative prompt (used when True CFG > 1)", elem_id="negative-prompt"
        )
        method = gr.Radio(list(METHOD_NAMES), value=defaults["method"], label="Method", elem_id="method")
        keep_size = gr.Checkbox(
            value=False, label="Keep the subject's size (USO: its aspect at the default long side)", elem_id="keep-size"
        )
        with gr.Row():  # DreamO's guidance knobs, for every method; blank: the default
            first_step_guidance = gr.Textbox(
                placeholder="as guidance", label="First-step guidance", elem_id="first-step-guidance"
            )
            negative_guidance = gr.Textbox(
                placeholder="as guidance", label="Negative guidance (true CFG's negative branch)",
                elem_id="negative-guidance",
            )  # fmt: skip
            true_cfg_start = gr.Textbox(placeholder="0", label="True CFG from step", elem_id="true-cfg-start")
            true_cfg_end = gr.Textbox(placeholder="the last", label="True CFG before step", elem_id="true-cfg-end")
    return [
        prompt,
        *references,
        width,
        height,
        steps,
        guidance,
        true_cfg,
        seed,
        random_seed,
        num_images,
        position_mode,
        long_side,
        schedule,
        negative_prompt,
        time_shift,
        stochasticity,
        method,
        *style_images,
        keep_size,
        *slot_tasks,
        first_step_guidance,
        negative_guidance,
        true_cfg_start,
        true_cfg_end,
        fast,
    ]


def _result_outputs() -> list[gr.Component]:
    """Where results appear, in the order ``make_generate`` returns them (the seed used, last, in a state
    that ``build_app`` copies into the Seed box)."""
    gallery = gr.Gallery(
        label="Results",
        format="png",
        columns=2,
        buttons=["download", "fullscreen"],
        interactive=False,
        elem_id="results",
    )
    command = gr.Textbox(label="Copy as CLI command", lines=3, buttons=["copy"], interactive=False, elem_id="command")
    status = gr.Markdown(label="Status", elem_id="status")
    return [gallery, command, status, gr.State()]


def _examples(fields: list[gr.Component]) -> gr.Dataset:
    """The bundled examples as a table that fills ``fields`` (the prompt, then the reference slots) in one click.
    Not gr.Examples: its prompt column (a Textbox's, or a Markdown's) cuts every prompt at 60 characters; an HTML
    column shows the whole prompt."""
    rows = example_rows()
    table = gr.Dataset(
        components=[gr.HTML(visible=False), *[gr.Image(type="filepath", visible=False) for _ in fields[1:]]],
        samples=[[html.escape(row[0]), *row[1:]] for row in rows],
        headers=["Prompt", *[f"Reference {k}" for k in range(1, len(fields))]],
        type="index",
        label="Examples (click one to fill the form)",
        elem_id="examples",
    )
    table.click(lambda index: tuple(rows[index]), inputs=table, outputs=fields, queue=False, api_visibility="private")
    return table


def build_app(
    pipe,
    model: dict[str, Any],
    out_dir: str | Path,
    concurrency: int = 1,
    max_queue: int = 16,
    model_flags: list[str] | tuple[str, ...] = (),
    default_size: int = DEFAULTS.width,
    max_upload_megapixels: float | None = DEFAULT_MAX_UPLOAD_MEGAPIXELS,
) -> gr.Blocks:
    """The web app for a loaded pipeline. ``model`` is the record stored in each PNG, ``model_flags`` the
    flags that reload the same model in ``unoflux generate``; at most ``concurrency`` generations run at
    once and ``max_queue`` more wait; beyond that a request is refused (the page shows Gradio's "This application
    is currently busy", gradio_client raises "Queue is full"). The size
    sliders start at ``default_size`` (the model's native size), the guidance sliders, the time shift and the
    stochasticity at the pipeline's defaults (the model's own, from its unoflux.json). An upload of more than
    ``max_upload_megapixels`` is refused at upload and at Generate (None: only the library's own limit)."""
    if concurrency < 1 or max_queue < 1:
        raise UnofluxError(f"concurrency ({concurrency}) and queue size ({max_queue}) must be at least 1")
    with gr.Blocks(title="unoflux", analytics_enabled=False) as demo:
        gr.Markdown(
            "## unoflux: subject-driven generation on FLUX (UNO, USO, DreamO)\nDescribe the image; add up to four "
            "reference images of the subjects to keep (upload, drag and drop, or paste)."
        )
        with gr.Row():
            with gr.Column(scale=3):
                styles = getattr(pipe, "style_encoder", None) is not None
                tasks = getattr(pipe, "dreamo_embeddings", None) is not None
                defaults = {
                    **model_defaults_of(pipe),
                    "width": default_size,
                    "reference_long_sides": auto_long_sides(pipe),
                }
                inputs = _form_inputs(defaults, styles=styles, tasks=tasks)
                run = gr.Button("Generate", variant="primary", elem_id="generate")
                settings_png = gr.File(
                    label="Load settings from a PNG (drop one this app saved: the form takes its settings)",
                    file_types=[".png"],
                    type="filepath",
                    height=90,
                    elem_id="load-settings",
                )
            with gr.Column(scale=2):
                outputs = _result_outputs()
        _examples(inputs[: 1 + MAX_REFERENCES])
        generate = make_generate(AppRunner(pipe, model, out_dir, model_flags), max_upload_megapixels)
        # Raw inputs (preprocess=False): Gradio's image preprocessing opens uploads with PIL and fails with a
        # bare "Error" on a corrupt one; unopened, they reach images.load_image, which names the problem.
        event = run.click(generate, inputs=inputs, outputs=outputs, api_name=API_NAME, preprocess=False)
        # The seed used (a random one included) goes back into the Seed box, so the next run can repeat it. Through a
        # state and a second, private step, because a fourth output of /generate would break API callers that
        # unpack three values; queue=False so that it does not wait behind other people's generations.
        seed_box, seed_used = next(c for c in inputs if c.elem_id == "seed"), outputs[-1]
        event.success(lambda seed: seed, inputs=seed_used, outputs=seed_box, queue=False, api_visibility="private")
        fields = dict(zip(inspect.signature(generate).parameters, inputs))  # make_generate's order
        slot_keys = [key for key in fields if key.startswith(("reference_", "task_", "style_"))]
        loaded = [fields[key] for key in (*LOADED_SETTINGS, *slot_keys)]
        choices = {key: [value for value, _ in fields[key].choices] for key in ("position_mode", "schedule", "method")}
        slot_roles = list(ROLES) if tasks else [SUBJECT]  # DreamO: a task per slot
        folders = [Path(out_dir).resolve(), EXAMPLES_DIR]  # the files this page may show (see launch)

        def load_settings(path):
            values, status = settings_from_png(path, choices, folders, slot_roles, style_slots=styles)
            untick = [False] if values else [gr.skip()]  # a loaded seed is meant to be used
            keys = (*LOADED_SETTINGS, *slot_keys)
            return [values.get(key, gr.skip()) for key in keys] + untick + [status or gr.skip()]

        settings_png.upload(
            load_settings,
            inputs=settings_png,
            outputs=[*loaded, fields["random_seed"], outputs[2]],
            queue=False,
            api_visibility="private",
        )
        # Each image slot opens its upload at once, so a corrupt file is named now, not at Generate. Outside the queue
        # (queue=False): checking an upload must neither wait behind other people's generations nor be refused as
        # "busy" when the queue is full.
        for slot in inputs:
            kind, _, k = (slot.elem_id or "").rpartition("-")
            if isinstance(slot, gr.Image) and kind in ("reference", "style"):
                slot.change(  # not .upload alone: a paste from the clipboard lands here too
                    check_upload(f"{kind} image {k}", max_upload_megapixels),
                    inputs=slot,
                    outputs=[slot, outputs[2]],
                    preprocess=False,
                    queue=False,
                    api_visibility="private",
                )
    demo.queue(default_concurrency_limit=concurrency, max_size=max_queue)
    return demo


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(log_file: str | Path | None = None) -> None:
    """The app's log (logger ``unoflux.app``) on stderr and, with ``log_file``, appended to that file too: a line per
    request at INFO (its id, settings and time), a line per refusal at WARNING, a traceback only for real faults.
    Calling it again (another app in this process) replaces the handlers it added."""
    for handler in [h for h in log.handlers if getattr(h, "unoflux_app", False)]:
        log.removeHandler(handler)
        handler.close()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        handlers.append(logging.FileHandler(log_file, mode="a", encoding="utf-8"))
    for handler in handlers:
        handler.unoflux_app = True
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        log.addHandler(handler)
    log.setLevel(logging.INFO)


def launch(
    demo: gr.Blocks,
    out_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 7860,
    max_upload: str = "50mb",
    block: bool = True,
    auth: tuple[str, str] | None = None,
):
    """Serve ``demo`` on ``host:port``; never a public share link. ``out_dir`` is where the results the page
    shows live (Gradio serves only folders it is told about); ``auth``: the (user, password) the page asks for.
    ``block=False`` returns at once (tests); close with ``demo.close()``."""
    return demo.launch(
        server_name=host,
        server_port=port,
        share=False,
        auth=auth,
        inbrowser=False,
        show_error=True,  # unexpected errors reach the page with their message, not a bare "Error"
        allowed_paths=[str(Path(out_dir).resolve()), str(EXAMPLES_DIR)],  # results; the examples' references
        max_file_size=max_upload,
        ssr_mode=False,
        mcp_server=False,
        prevent_thread_lock=not block,
        quiet=not block,
    )
