"""Generation as users run it: one request -> PNG files carrying their settings; UNO's batch JSON with
resume and multi-process sharding. The CLI and the web app both call these (one code path)."""

from __future__ import annotations

import os
import random
import re
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from . import __version__
from .errors import UnofluxError
from .images import load_image, read_json, save_json, save_png
from .options import GenerationRequest, check_prompt, empty_prompt_allowed
from .references import as_reference, reference_record

if TYPE_CHECKING:  # annotations only: importing the pipeline imports torch, which the CLI's early checks avoid
    from .pipeline import UnoFluxPipeline, UnoOutput


def generate(pipe: UnoFluxPipeline, request: GenerationRequest, **call_kwargs) -> UnoOutput:
    return pipe(request.prompt, request.references, request, **call_kwargs)


def settings_record(request: GenerationRequest, output: UnoOutput, index: int, model: dict[str, Any]) -> dict:
    """The settings stored with image ``index`` of ``output``: enough to reproduce it."""
    return {
        **asdict(request),
        **output.settings,  # the resolved values (output size floored to 16, reference long side)
        "seed": output.seeds[index],
        "num_images": 1,
        "model": model,
        "unoflux_version": __version__,
    }


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "image"


def check_output(out: str | Path | None) -> Path:
    """``out`` as :func:`output_paths` reads it, refused in one sentence where it cannot be written: a .png
    path that is an existing folder, or a folder path that is an existing file. Cheap, so the CLI calls it
    before loading the model."""
    out = Path(out or "outputs")
    if out.suffix.lower() == ".png" and out.is_dir():
        raise UnofluxError(f"output {str(out)!r} is an existing folder; give a .png path that is not a folder")
    if out.suffix.lower() != ".png" and out.exists() and not out.is_dir():
        raise UnofluxError(f"output {str(out)!r} exists and is not a folder; give a .png path or a folder")
    _check_creatable(out if out.suffix.lower() != ".png" else out.parent, out)
    return out


def check_output_folder(out: str | Path) -> Path:
    """A batch's output folder, refused in one sentence (before the model loads) where it cannot be one."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UnofluxError(f"output folder {str(out)!r} exists and is not a folder; give a folder path")
    _check_creatable(out, out)
    return out


def _check_creatable(folder: Path, out: Path) -> None:
    """``folder`` exists or can be made: its nearest existing ancestor is a folder we may write in."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UnofluxError(f"output {str(out)!r} cannot be written: {str(existing)!r} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UnofluxError(f"output {str(out)!r} cannot be written: folder {str(existing)!r} is not writable")


def write_png(image, path: Path, settings: dict[str, Any]) -> Path:
    """:func:`unoflux.images.save_png` (atomic: a failed write leaves no file), a failed write said in one sentence
    (a full disk, a folder made read-only since the checks)."""
    return _written(path, lambda: save_png(image, path, settings))


def write_json(data: Any, path: Path) -> Path:
    """:func:`unoflux.images.save_json`, a failed write said in one sentence, as :func:`write_png`."""
    return _written(path, lambda: save_json(data, path))


def _written(path: Path, write) -> Path:
    try:
        return write()
    except OSError as err:
        raise UnofluxError(f"cannot write {str(path)!r} ({err.strerror or err}); nothing was written there") from None


def output_paths(out: str | Path | None, request: GenerationRequest) -> list[Path]:
    """``out`` is a .png file (several images get ``_j`` suffixes) or a folder (default ``outputs/``)."""
    n = request.num_images
    out = check_output(out)
    if out.suffix.lower() == ".png":
        paths = [out] if n == 1 else [out.with_name(f"{out.stem}_{j}.png") for j in range(n)]
        for path in paths[1:]:  # the suffixed names may be folders too
            check_output(path)
        return paths
    return [out / f"{_slug(request.prompt)}_{request.seed + j}.png" for j in range(n)]


def generate_to_files(
    pipe: UnoFluxPipeline,
    request: GenerationRequest,
    out: str | Path | None,
    model: dict[str, Any],
    noise_device: str = "cpu",
    save_preprocessed: str | Path | None = None,
) -> list[Path]:
    if request.seed is None:  # one drawn now, so that the file names carry it
        request = replace(request, seed=random.randrange(2**31))
    paths = output_paths(out, request)
    output = generate(pipe, request, noise_device=noise_device)
    if save_preprocessed is not None:
        save_references(output, save_preprocessed)
    return [
        write_png(img, p, settings_record(request, output, j, model))
        for j, (img, p) in enumerate(zip(output.images, paths))
    ]


def save_references(output: UnoOutput, folder: str | Path, prefix: str = "") -> list[Path]:
    """The references as the model saw them (after the method's preprocessing): ``{prefix}ref{k}_{role}.png``."""
    return [
        write_png(ref.image, Path(folder) / f"{prefix}ref{k}_{ref.role}.png", {"role": ref.role, "slot": k})
        for k, ref in enumerate(output.references, start=1)
    ]


# ----------------------------------------------------------------------------------- batch mode
def read_batch(path: str | Path, method: str | None = None) -> list[dict[str, Any]]:
    """UNO's eval JSON: a list of ``{"prompt": str, "image_paths": [str, ...]}``, paths relative to the JSON file.
    A reference of another role than subject is an object: ``{"image": "style.png", "role": "style"}`` (USO's
    positional ``["content", "style", ...]`` is not guessed at). Validated whole before any generation (an empty
    prompt only for ``method`` uso, or, the method left to the model, an item with a style); paths are returned
    resolved."""
    path = Path(path)
    items = read_json(path, "batch file")
    if not isinstance(items, list) or not items:
        raise UnofluxError(f"batch file {str(path)!r} must hold a non-empty list of {{prompt, image_paths}} items")
    resolved = []
    for i, item in enumerate(items, start=1):  # messages count items and references from 1, as people do
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
            raise UnofluxError(f"batch item {i} in {str(path)!r} needs a 'prompt' string")
        try:  # text a prompt cannot hold (a NUL), found now rather than at item i after the model has loaded
            check_prompt(item["prompt"], allow_empty=True)
        except UnofluxError as err:
            raise UnofluxError(f"batch item {i} in {str(path)!r}: {err}") from None
        refs = item.get("image_paths", [])
        if not isinstance(refs, list) or not all(isinstance(r, (str, dict)) for r in refs):
            raise UnofluxError(
                f"batch item {i} in {str(path)!r} has 'image_paths' that is not a list of paths "
                "or {'image': path, 'role': role} objects"
            )
        try:
            references = [as_reference(r) for r in refs]
        except UnofluxError as err:
            raise UnofluxError(f"batch item {i} in {str(path)!r}: {err}") from None
        references = [r.with_image(str(path.parent / r.image)) for r in references]
        if not item["prompt"].strip() and not empty_prompt_allowed(method, references):
            raise UnofluxError(
                f"batch item {i} in {str(path)!r} has an empty prompt; only a USO item (--method uso, or a style "
                "reference) may"
            )
        for k, ref in enumerate(references, start=1):
            load_image(ref.image, what=f"batch item {i} reference {k}")
        resolved.append({"prompt": item["prompt"], "image_paths": [reference_record(r) for r in references]})
    return resolved


def batch_jobs(items: list[dict], num_images: int, process_index: int = 0, num_processes: int = 1):
    """The (item, image) pairs this process renders: UNO's round-robin over ``i * num_images + j``."""
    for i in range(len(items)):
        for j in range(num_images):
            if (i * num_images + j) % num_processes == process_index:
                yield i, j


def remove_partial_writes(folder: Path, names: set[str]) -> int:
    """Delete what a killed run left of its writes to ``names`` in ``folder``: the hidden temporary files of
    :func:`unoflux.images.atomic_write` (``.{name}.{random}.part``; the outputs themselves are never partial). Only
    this process's names: another process of the same batch may be writing its own. Returns how many went."""
    removed = 0
    for tmp in folder.glob(".*.part") if folder.is_dir() else []:
        if tmp.name[1 : -len(".part")].rsplit(".", 1)[0] in names:
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def run_batch(
    pipe: UnoFluxPipeline,
    items: list[dict],
    template: GenerationRequest,
    out_dir: str | Path,
    model: dict[str, Any],
    process_index: int = 0,
    num_processes: int = 1,
    noise_device: str = "cpu",
    save_preprocessed: str | Path | None = None,
) -> tuple[int, int]:
    """Render ``{i}_{j}.png`` + ``{i}_{j}.json`` for this process's share; finished pairs are skipped, so
    a rerun resumes (even after a kill -9: each file is written whole or not at all, and what a killed write left
    is cleared). Image ``j`` of item ``i`` uses seed ``template.seed + j``. Returns (made, skipped)."""
    out_dir = Path(out_dir)
    jobs = list(batch_jobs(items, template.num_images, process_index, num_processes))
    remove_partial_writes(out_dir, {f"{i}_{j}.{kind}" for i, j in jobs for kind in ("png", "json")})
    made = skipped = 0
    for i, j in tqdm(jobs, desc=f"batch (process {process_index + 1}/{num_processes})", disable=not jobs):
        png, meta = out_dir / f"{i}_{j}.png", out_dir / f"{i}_{j}.json"
        if png.is_file() and meta.is_file():
            skipped += 1
            continue
        request = replace(
            template,
            prompt=items[i]["prompt"],
            references=items[i]["image_paths"],
            seed=template.seed + j,
            num_images=1,
        )
        output = generate(pipe, request, noise_device=noise_device)
        if save_preprocessed is not None:
            save_references(output, save_preprocessed, prefix=f"{i}_{j}_")
        settings = {**settings_record(request, output, 0, model), "batch_item": i, "batch_image": j}
        write_png(output.images[0], png, settings)
        write_json(settings, meta)  # written last: its presence marks the pair finished
        made += 1
    return made, skipped
