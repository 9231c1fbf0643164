"""One web-app submission -> PNGs in the output folder, through the same ``generation.generate`` as the CLI.

Gradio-free, so the app's behaviour (file names, kept references, metadata, the CLI command) is plain
Python; ``ui`` only adapts form fields to a :class:`GenerationRequest` and reports progress.
"""

from __future__ import annotations

import secrets
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..generation import generate, output_paths, settings_record, write_png
from ..options import GenerationRequest
from ..pipeline import model_defaults_of
from ..references import SUBJECT, as_references
from .command import generate_command

StepReporter = Callable[[int, int], None]  # (steps done, total steps)


@dataclass
class AppResult:
    images: list[Path]  # the saved PNGs, each carrying its settings
    command: str  # `unoflux generate ...` reproducing them, with the size actually used
    size: tuple[int, int] | None = None  # (width, height) of each image, in px
    floored: list[str] = field(default_factory=list)  # e.g. "width 100 became 96": the sizes the model floored


def new_run_id() -> str:
    """Sortable by time, and unique even for simultaneous requests with the same prompt and seed."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


class AppRunner:
    """Runs requests on one loaded pipeline and files the results under ``out_dir``:
    ``<run id>_<prompt>_<seed>.png`` and the references they used in ``references/``."""

    def __init__(self, pipe, model: dict[str, Any], out_dir: str | Path, model_flags: Sequence[str] = ()):
        self.pipe = pipe
        self.model = model  # the record stored in each PNG (see cli.load_pipeline_from_args)
        self.out_dir = Path(out_dir).resolve()
        self.model_flags = list(model_flags)

    def run(self, request: GenerationRequest, on_step: StepReporter | None = None) -> AppResult:
        request.validate()  # bad settings and unreadable uploads stop here with one clear sentence
        run_id = new_run_id()
        request = replace(request, references=self._keep_references(request.references, run_id))
        total = request.sampling_options().resolved(model_defaults_of(self.pipe)).steps  # (None: the model's)
        output = generate(self.pipe, request, callback_on_step_end=_step_callback(on_step, total))
        paths = [self.out_dir / f"{run_id}_{p.name}" for p in output_paths(self.out_dir, request)]
        for j, (image, path) in enumerate(zip(output.images, paths)):
            write_png(image, path, settings_record(request, output, j, self.model))
        # A size the model floored to a multiple of 16 goes into the command as it ran (the PNG's settings say it so
        # too) and is named in the status line. A size left to the model stays out of the command, as every option
        # left to it does; one a method chose itself (USO's keep_size) is the method's to repeat.
        floored, used = [], {}
        for name in ("width", "height"):
            asked, ran = getattr(request, name), output.settings.get(name)
            if asked is not None and ran is not None and ran != asked and ran == 16 * (asked // 16):
                floored.append(f"{name} {asked} became {ran}")
                used[name] = ran
        command_request = replace(request, **used)
        first = output.images[0] if output.images else None
        size = tuple(first.size) if hasattr(first, "size") and isinstance(first.size, tuple) else None  # PIL: (w, h)
        return AppResult(paths, generate_command(command_request, self.model_flags, self.out_dir), size, floored)

    def _keep_references(self, references: Sequence, run_id: str) -> list:
        """Copy uploads (which live in Gradio's temporary cache) next to the outputs, so the settings in
        each PNG and the CLI command keep pointing at files that exist."""
        folder = self.out_dir / "references"
        folder.mkdir(parents=True, exist_ok=True)
        kept = []
        for k, reference in enumerate(as_references(references), start=1):
            source = str(reference.image)
            kind = "ref" if reference.role == SUBJECT else reference.role
            target = folder / f"{run_id}_{kind}{k}{Path(source).suffix.lower() or '.png'}"
            shutil.copyfile(source, target)
            kept.append(str(target) if reference.role == SUBJECT else reference.with_image(str(target)))
        return kept


def _step_callback(on_step: StepReporter | None, total: int):
    """Adapt a progress reporter to the pipeline's ``callback_on_step_end`` (latents left unchanged)."""
    if on_step is None:
        return None

    def callback(pipe, step: int, t: float, tensors: dict) -> dict:
        on_step(step + 1, total)
        return {}

    return callback
