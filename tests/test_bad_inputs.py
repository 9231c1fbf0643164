"""A bad-input corpus of our own (issue 18), run the way users meet it: `python -m unoflux generate` in a fresh process
(single and batch mode) and the Python API on one loaded embedded pipeline; the web app's share is in
tests/app/test_bad_inputs_app.py.

Every refused case: exit status 2 (the API: UnofluxError), one line that names the bad value, no traceback, no file
left in the output folder, and for bad input (not a broken model file) the refusal before any model loads: the
process reports that it never imported torch (or, for a device this machine lacks, never imported diffusers) and it
answers faster than a run that loads the model. The cases are data: each table row is one case.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image

from unoflux.errors import UnofluxError
from unoflux.images import load_image, read_settings

from .conftest import random_image

SRC = str(Path(__file__).parents[1] / "src")
PWNED = "pwned"  # the file an unpickled malicious checkpoint would create in the corpus folder

# `python -m unoflux ...` as users run it, reporting on exit which heavy libraries the process imported: the marker
# that no model was loaded (loading needs diffusers; torch comes before it, for the device checks).
RUNNER = """
import atexit, json, os, runpy, sys
atexit.register(lambda: json.dump(
    [m for m in ("torch", "diffusers") if m in sys.modules], open(os.environ["UNOFLUX_TEST_IMPORTS"], "w")))
sys.argv = ["unoflux", *sys.argv[1:]]
runpy.run_module("unoflux", run_name="__main__", alter_sys=True)
"""


def run_cli(argv: list, cwd: Path) -> tuple[int, str, list[str], float]:
    """(exit status, stderr, heavy modules imported, seconds) of one `python -m unoflux` process."""
    report = cwd / "imports.json"
    env = {**os.environ, "PYTHONPATH": SRC, "UNOFLUX_TEST_IMPORTS": str(report), "OMP_NUM_THREADS": "1"}
    for name in ("FLUX_DEV", "FLUX_DEV_FP8", "FLUX_SCHNELL", "AE", "T5", "CLIP", "LORA"):
        env.pop(name, None)
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-c", RUNNER, *argv], cwd=cwd, env=env, capture_output=True, timeout=300)
    elapsed = time.monotonic() - start
    imported = json.loads(report.read_text()) if report.is_file() else ["(no report)"]
    return result.returncode, result.stderr.decode(errors="replace"), imported, elapsed


# ----------------------------------------------------------------------------------------------- the corpus files
def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` and holds no pixels: a bomb by its header alone."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


class MaliciousPickle:
    """Unpickling this runs ``open(path, "w")``: a checkpoint that attacks whoever loads it."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def malicious_checkpoint(path: Path, marker: Path) -> Path:
    with open(path, "wb") as f:
        pickle.dump({"double_blocks.0.img_attn.qkv.weight": MaliciousPickle(marker)}, f, protocol=2)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Every bad file of the tables below, in one folder."""
    import torch
    from safetensors.torch import load_file, save_file

    from unoflux.checkpoints.specs import EMBEDDED_MODEL_DIR

    d = tmp_path_factory.mktemp("corpus")
    random_image(64, 64, seed=9).save(d / "good.png")
    data = (d / "good.png").read_bytes()
    (d / "zero.png").write_bytes(b"")
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    (d / "truncated.png").write_bytes(data[: len(data) // 2])
    random_image(64, 64, seed=9).save(d / "full.jpg", quality=90)
    (d / "truncated.jpg").write_bytes((d / "full.jpg").read_bytes()[:400])
    (d / "notes.png").write_text("not an image, whatever the name says")
    Image.new("RGB", (1, 1)).save(d / "one.png")
    Image.new("RGB", (8, 40)).save(d / "thin.png")
    Image.new("1", (9000, 9000)).save(d / "bomb.png")  # a few kB on disk, 81 megapixels decoded
    (d / "header-bomb.png").write_bytes(png_header_only(100_000, 100_000))
    (d / "folder").mkdir()
    (d / "folder.png").mkdir()  # a folder with an image's name
    (d / "afile").write_text("a file where a folder should be")
    (d / "dangling.png").symlink_to(d / "nowhere.png")
    # batch files
    batches = {
        "notjson.json": "{",
        "emptylist.json": "[]",
        "object.json": json.dumps({"prompt": "a cat"}),
        "notitem.json": "[5]",
        "numberprompt.json": json.dumps([{"prompt": 5}]),
        "nulprompt.json": json.dumps([{"prompt": "a cat\u0000 on the beach"}]),
        "stringpaths.json": json.dumps([{"prompt": "a cat", "image_paths": "good.png"}]),
        "missingref.json": json.dumps([{"prompt": "a", "image_paths": ["good.png"]}, {"prompt": "b", "image_paths": ["missing.png"]}]),
        "corruptref.json": json.dumps([{"prompt": "a cat", "image_paths": ["corrupt.png"]}]),
        "badrole.json": json.dumps([{"prompt": "a cat", "image_paths": [{"image": "good.png", "role": "colour"}]}]),
        "good.json": json.dumps([{"prompt": "a red ball", "image_paths": ["good.png"]}]),
    }  # fmt: skip
    for name, text in batches.items():
        (d / name).write_text(text)
    (d / "binary.json").write_bytes(b"\xff\xfe\x00garbage")
    (d / "zero.json").write_bytes(b"")
    (d / "batch-folder.json").mkdir()
    # checkpoints and LoRAs, made from the embedded model's own LoRA (XLabs layout, rank 128)
    lora = load_file(str(EMBEDDED_MODEL_DIR / "dit_lora.safetensors"))
    up = "double_blocks.0.processor.proj_lora1.up.weight"
    down = "double_blocks.0.processor.proj_lora1.down.weight"
    save_file({**lora, up: torch.zeros(lora[up].shape[0], 2 * lora[up].shape[1])}, d / "lora-rank.safetensors")
    save_file({**lora, down: torch.zeros(lora[down].shape[0], lora[down].shape[1] + 8)}, d / "lora-shape.safetensors")
    save_file({"foo.bar": torch.zeros(2, 2)}, d / "lora-keys.safetensors")
    raw = (EMBEDDED_MODEL_DIR / "dit_lora.safetensors").read_bytes()
    (d / "lora-truncated.safetensors").write_bytes(raw[: len(raw) // 2])
    (d / "lora-zero.safetensors").write_bytes(b"")
    torch.save({"double_blocks.0.img_attn.qkv.weight": torch.zeros(2)}, d / "tensors.pt")
    (d / "truncated.pt").write_bytes((d / "tensors.pt").read_bytes()[:100])
    malicious_checkpoint(d / "malicious.pt", d / PWNED)
    return d


# ------------------------------------------------------------------------------------------------------- the CLI
# (flags after `generate`, the sentence's expected part, when it must come). {d}: the corpus folder, {out}: an empty
# output folder. "input": before torch is imported; "device": torch imported for the device check, no model code;
# "model": a model file is bad, said as it is read (after the files before it have loaded).
INPUT, DEVICE, MODEL = "input", "device", "model"
P = ["--prompt", "a red ball", "--out", "{out}/x.png"]
CLI_CASES = {
    # images
    "zero-byte": ([*P, "--ref", "{d}/zero.png"], "reference image 1 '{d}/zero.png' cannot be read as an image", INPUT),
    "corrupt": ([*P, "--ref", "{d}/corrupt.png"], "'{d}/corrupt.png' cannot be read as an image", INPUT),
    "truncated-png": ([*P, "--ref", "{d}/truncated.png"], "'{d}/truncated.png' cannot be read as an image", INPUT),
    "truncated-jpeg": ([*P, "--ref", "{d}/truncated.jpg"], "'{d}/truncated.jpg' cannot be read as an image", INPUT),
    "text-named-png": ([*P, "--ref", "{d}/notes.png"], "'{d}/notes.png' cannot be read as an image", INPUT),
    "1x1": ([*P, "--ref", "{d}/one.png"], "'{d}/one.png' is 1x1; both sides must be at least 16 px", INPUT),
    "8x40": ([*P, "--ref", "{d}/thin.png"], "'{d}/thin.png' is 8x40", INPUT),
    "decompression-bomb": ([*P, "--ref", "{d}/bomb.png"], "'{d}/bomb.png' is too large to decode safely", INPUT),
    "header-bomb": ([*P, "--ref", "{d}/header-bomb.png"], "'{d}/header-bomb.png' is too large to decode", INPUT),
    "folder-as-image": ([*P, "--ref", "{d}/folder"], "reference image 1 '{d}/folder' is a folder", INPUT),
    "missing-image": ([*P, "--ref", "{d}/missing.png"], "'{d}/missing.png' does not exist", INPUT),
    "dangling-link": ([*P, "--ref", "{d}/dangling.png"], "'{d}/nowhere.png' does not exist", INPUT),
    "second-ref-bad": ([*P, "--ref", "{d}/good.png", "--ref", "{d}/zero.png"], "reference image 2 '{d}/zero.png'", INPUT),
    "bad-style": ([*P, "--style", "{d}/corrupt.png"], "style reference image 1 '{d}/corrupt.png' cannot be read", INPUT),
    # sizes, steps and the other numbers
    "width-0": ([*P, "--width", "0"], "width 0 is out of range; use an integer from 16 to 2048", INPUT),
    "width-negative": ([*P, "--width", "-16"], "width -16 is out of range", INPUT),
    "height-huge": ([*P, "--height", "100000"], "height 100000 is out of range", INPUT),
    "width-text": ([*P, "--width", "abc"], "argument --width: invalid int value: 'abc'", INPUT),
    "steps-0": ([*P, "--steps", "0"], "steps 0 is out of range; use an integer from 1 to 1000", INPUT),
    "steps-absurd": ([*P, "--steps", "1000000"], "steps 1000000 is out of range", INPUT),
    "steps-fraction": ([*P, "--steps", "2.5"], "argument --steps: invalid int value: '2.5'", INPUT),
    "images-0": ([*P, "--num-images", "0"], "number of images 0 must be a positive integer", INPUT),
    "guidance-nan": ([*P, "--guidance", "nan"], "guidance nan must be a finite number", INPUT),
    "true-cfg-below-1": ([*P, "--true-cfg", "0.5"], "true CFG scale 0.5 must be a number of at least 1", INPUT),
    "time-shift-0": ([*P, "--time-shift", "0"], "time shift 0.0 must be a positive number", INPUT),
    "stochasticity-2": ([*P, "--stochasticity", "2"], "stochasticity 2.0 must be a number from 0 to 1", INPUT),
    "seed-overflow": ([*P, "--seed", "9" * 23], f"seed {'9' * 23} is out of range; use an integer from 0 to", INPUT),
    "seed-negative": ([*P, "--seed", "-1"], "seed -1 is out of range", INPUT),
    "ref-long-side-4": ([*P, "--ref-long-side", "4"], "reference long side 4 is out of range", INPUT),
    # prompts
    "prompt-empty": (["--prompt", "", "--out", "{out}/x.png"], "the prompt is empty", INPUT),
    "prompt-blank": (["--prompt", "  \t ", "--out", "{out}/x.png"], "the prompt is empty", INPUT),
    "prompt-undecodable": (
        ["--prompt", b"a caf\xe9 on the beach", "--out", "{out}/x.png"],
        "the prompt has the character '\\udce9' at position 6",
        INPUT,
    ),
    "no-prompt": (["--out", "{out}/x.png"], "give either --prompt or --batch FILE.json", INPUT),
    # choices
    "method": ([*P, "--method", "magic"], "argument --method: invalid choice: 'magic'", INPUT),
    "position-mode": ([*P, "--position-mode", "spiral"], "argument --position-mode: invalid choice: 'spiral'", INPUT),
    "dtype": ([*P, "--dtype", "fp64"], "argument --dtype: invalid choice: 'fp64'", INPUT),
    "noise-device": ([*P, "--noise-device", "gpu"], "noise device 'gpu' is not one of: cpu, cuda, cuda:N", INPUT),
    # outputs
    "out-png-is-folder": (["--prompt", "a cat", "--out", "{d}/folder.png"], "output '{d}/folder.png' is an existing folder", INPUT),
    "out-under-a-file": (["--prompt", "a cat", "--out", "{d}/afile/x.png"], "cannot be written: '{d}/afile' is a file", INPUT),
    "out-folder-is-file": (["--prompt", "a cat", "--out", "{d}/afile"], "output '{d}/afile' exists and is not a folder", INPUT),
    # model paths (existence: without torch)
    "lora-missing": ([*P, "--lora", "{d}/missing.safetensors"], "--lora '{d}/missing.safetensors' does not exist", INPUT),
    "lora-folder": ([*P, "--lora", "{d}/folder"], "--lora '{d}/folder' is a folder", INPUT),
    "t5-file": ([*P, "--t5", "{d}/good.png"], "--t5 '{d}/good.png' is a file; it must be a folder", INPUT),
    "model-missing": ([*P, "--model", "{d}/nomodel"], "--model '{d}/nomodel' does not exist", INPUT),
    # batch files
    "batch-not-json": (["--batch", "{d}/notjson.json", "--out", "{out}"], "batch file '{d}/notjson.json' is not valid JSON", INPUT),
    "batch-empty-list": (["--batch", "{d}/emptylist.json", "--out", "{out}"], "must hold a non-empty list", INPUT),
    "batch-object": (["--batch", "{d}/object.json", "--out", "{out}"], "'{d}/object.json' must hold a non-empty list", INPUT),
    "batch-item-not-object": (["--batch", "{d}/notitem.json", "--out", "{out}"], "batch item 1 in '{d}/notitem.json' needs a 'prompt' string", INPUT),
    "batch-number-prompt": (["--batch", "{d}/numberprompt.json", "--out", "{out}"], "batch item 1 in '{d}/numberprompt.json' needs a 'prompt'", INPUT),
    "batch-nul-prompt": (["--batch", "{d}/nulprompt.json", "--out", "{out}"], "the prompt has the character '\\x00' at position 6", INPUT),
    "batch-paths-string": (["--batch", "{d}/stringpaths.json", "--out", "{out}"], "has 'image_paths' that is not a list", INPUT),
    "batch-missing-image": (["--batch", "{d}/missingref.json", "--out", "{out}"], "batch item 2 reference 1 '{d}/missing.png' does not exist", INPUT),
    "batch-corrupt-image": (["--batch", "{d}/corruptref.json", "--out", "{out}"], "batch item 1 reference 1 '{d}/corrupt.png' cannot be read", INPUT),
    "batch-bad-role": (["--batch", "{d}/badrole.json", "--out", "{out}"], "reference role 'colour' is not one of", INPUT),
    "batch-binary": (["--batch", "{d}/binary.json", "--out", "{out}"], "batch file '{d}/binary.json' is not valid JSON", INPUT),
    "batch-zero-byte": (["--batch", "{d}/zero.json", "--out", "{out}"], "batch file '{d}/zero.json' is not valid JSON", INPUT),
    "batch-folder": (["--batch", "{d}/batch-folder.json", "--out", "{out}"], "batch file '{d}/batch-folder.json' is a folder", INPUT),
    "batch-missing": (["--batch", "{d}/none.json", "--out", "{out}"], "batch file '{d}/none.json' does not exist", INPUT),
    "batch-out-is-file": (["--batch", "{d}/good.json", "--out", "{d}/afile"], "output folder '{d}/afile' exists and is not a folder", INPUT),
    # devices this machine lacks (CI has no GPU; on a GPU machine these cases are skipped)
    "device-cuda": ([*P, "--device", "cuda"], "device 'cuda' is not available here (no CUDA GPU); use --device cpu", DEVICE),
    "device-unknown": ([*P, "--device", "tpu"], "device 'tpu' is not a torch device; use cpu, cuda or cuda:N", DEVICE),
    "noise-device-cuda": ([*P, "--noise-device", "cuda"], "noise device 'cuda' is not available here", DEVICE),
    # model files whose content is wrong: said when they are read
    "lora-pickle-attack": ([*P, "--lora", "{d}/malicious.pt"], "LoRA file '{d}/malicious.pt' cannot be loaded safely", MODEL),
}  # fmt: skip
GPU_CASES = {"device-cuda", "noise-device-cuda"}


@pytest.fixture(scope="module")
def model_run(corpus, tmp_path_factory) -> tuple[float, str]:
    """(seconds, stderr) of a run that loads the embedded model, with a prompt past the text encoders' length; the
    import marker must see the model load."""
    out = tmp_path_factory.mktemp("baseline")
    prompt = "a red ball " * 200
    argv = ["generate", "--prompt", prompt, "--steps", "1", "--device", "cpu", "--out", str(out / "x.png")]
    code, err, imported, elapsed = run_cli(argv, out)
    assert code == 0 and (out / "x.png").is_file(), err[-2000:]
    assert "diffusers" in imported  # the marker works: a run that loads a model imports diffusers
    return elapsed, err


@pytest.fixture(scope="module")
def model_run_seconds(model_run) -> float:
    return model_run[0]


def test_the_cli_warns_in_one_line(model_run):
    """Warnings reach the terminal as one line each, like errors (not Python's file:line and source line)."""
    err = model_run[1]
    warnings = [line for line in err.splitlines() if "warning" in line.lower()]
    assert warnings and all(w.startswith("unoflux: warning: ") for w in warnings), err[-2000:]
    assert "T5 tokens" in warnings[0] and "return func" not in err


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_the_cli_refuses_bad_input_in_one_sentence(case, corpus, model_run_seconds, tmp_path):
    flags, expected, phase = CLI_CASES[case]
    if case in GPU_CASES:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    out = tmp_path / "out"
    out.mkdir()
    argv = ["generate", *[f.format(d=corpus, out=out) if isinstance(f, str) else f for f in flags]]
    code, err, imported, elapsed = run_cli(argv, tmp_path)
    expected = expected.format(d=corpus)
    lines = err.strip().splitlines()
    assert code == 2, err[-3000:]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert lines[0].startswith(("unoflux: error: ", "unoflux generate: error: ")) and expected in lines[0], lines[0]
    assert list(out.iterdir()) == []  # no output, not even a temporary one
    assert not (corpus / PWNED).exists()  # the malicious pickle never ran
    if phase == INPUT:
        assert imported == [], f"refused only after importing {imported}"
        assert elapsed < min(20, model_run_seconds), f"{elapsed:.1f} s (a run with the model: {model_run_seconds:.1f})"
    elif phase == DEVICE:
        assert "diffusers" not in imported, "refused only after the model code was imported"
        assert elapsed < 20


def test_the_corpus_is_large_enough():
    assert len(CLI_CASES) + len(API_CASES) + len(CHECKPOINT_CASES) >= 40


# ------------------------------------------------------------------------------------------------ the Python API
@pytest.fixture(scope="module")
def pipe():
    """The embedded model, loaded once for every API case."""
    import unoflux

    return unoflux.load_pipeline(device="cpu")


# (keyword arguments of GenerationRequest, the sentence's expected part)
API_CASES = {
    "nul-prompt": (dict(prompt="a cat\x00"), "the prompt has the character '\\x00' at position 6"),
    "surrogate-prompt": (dict(prompt="caf\udce9"), "the prompt has the character '\\udce9' at position 4"),
    "number-prompt": (dict(prompt=5), "the prompt 5 must be text"),
    "empty-prompt": (dict(prompt=""), "the prompt is empty"),
    "width-0": (dict(width=0), "width 0 is out of range"),
    "steps-absurd": (dict(steps=10**6), "steps 1000000 is out of range"),
    "steps-float": (dict(steps=2.5), "steps 2.5 is out of range"),
    "seed-overflow": (dict(seed=2**70), f"seed {2**70} is out of range"),
    "guidance-inf": (dict(guidance=float("inf")), "guidance inf must be a finite number"),
    "images-0": (dict(num_images=0), "number of images 0 must be a positive integer"),
    "missing-ref": (dict(references=["{d}/missing.png"]), "reference image 1 '{d}/missing.png' does not exist"),
    "folder-ref": (dict(references=["{d}/folder"]), "reference image 1 '{d}/folder' is a folder"),
    "zero-byte-ref": (dict(references=["{d}/zero.png"]), "'{d}/zero.png' cannot be read as an image"),
    "bomb-ref": (dict(references=["{d}/header-bomb.png"]), "'{d}/header-bomb.png' is too large to decode safely"),
    "tiny-pil-ref": (dict(references=[Image.new("RGB", (1, 1))]), "reference image 1 'image' is 1x1"),
}


@pytest.mark.parametrize("case", list(API_CASES))
def test_the_python_api_refuses_bad_input(case, pipe, corpus, tmp_path):
    from unoflux.generation import generate_to_files
    from unoflux.options import GenerationRequest

    values, expected = API_CASES[case]
    values = {"prompt": "a red ball", "steps": 1, **values}
    values["references"] = [r.format(d=corpus) if isinstance(r, str) else r for r in values.get("references", [])]
    request = GenerationRequest(**values)
    with pytest.raises(UnofluxError) as refused:
        generate_to_files(pipe, request, tmp_path / "out.png", {"model": "embedded"})
    message = str(refused.value)
    assert expected.format(d=corpus) in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UnofluxError, match="must be|is empty|has the character|out of range|image"):
        pipe(values.pop("prompt"), values.pop("references"), **values)  # the pipeline itself checks too


# Accepted: images people really have, in every mode and orientation, each made an upright 8-bit RGB image.
def image_in_mode(mode: str) -> Image.Image:
    base = random_image(48, 32, seed=3)
    if mode in ("I;16", "I", "F"):
        return base.convert("L").convert(mode) if mode != "I;16" else base.convert("L").convert("I;16")
    if mode == "P-transparent":
        image = base.convert("P")
        image.info["transparency"] = 0
        return image
    return base.convert(mode)


MODES = ["1", "L", "LA", "P", "P-transparent", "RGBA", "CMYK", "YCbCr", "I;16", "I", "F", "LAB", "HSV"]


@pytest.mark.parametrize("mode", MODES)
def test_every_pil_mode_becomes_rgb(mode, tmp_path):
    image = image_in_mode(mode)
    suffix = {"CMYK": ".jpg", "YCbCr": ".jpg", "I": ".tiff", "F": ".tiff", "LAB": ".tiff", "HSV": None}.get(
        mode, ".png"
    )
    source = image if suffix is None else tmp_path / f"x{suffix}"  # HSV: no format stores it, a PIL image does
    if suffix is not None:
        image.save(source)
    loaded = load_image(source)
    assert (loaded.mode, loaded.size) == ("RGB", (48, 32))


def test_alpha_becomes_white_and_16_bit_keeps_its_range():
    assert load_image(Image.new("LA", (20, 20), (0, 0))).getpixel((3, 3)) == (255, 255, 255)
    assert load_image(Image.new("I;16", (20, 20), 65535)).getpixel((3, 3)) == (255, 255, 255)


# EXIF orientation -> the transpose that shows the photo upright (EXIF 2.3, tag 0x0112)
ORIENTATIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
INVERSE = {Image.Transpose.ROTATE_270: Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_90: Image.Transpose.ROTATE_270}


@pytest.mark.parametrize("orientation", [1, *ORIENTATIONS])
def test_every_exif_orientation_is_shown_upright(orientation, tmp_path):
    upright = Image.new("RGB", (40, 24), "white")
    upright.paste((255, 0, 0), (0, 0, 20, 12))  # a red top-left corner tells every orientation apart
    view = ORIENTATIONS.get(orientation)
    stored = upright if view is None else upright.transpose(INVERSE.get(view, view))  # as the camera wrote it
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(tmp_path / "photo.png", exif=exif)
    loaded = load_image(tmp_path / "photo.png")
    assert (
        loaded.size == (40, 24) and loaded.getpixel((2, 2)) == (255, 0, 0) and loaded.getpixel((38, 22)) != (255, 0, 0)
    )


@pytest.mark.parametrize("suffix", [".gif", ".png", ".webp"])
def test_an_animated_image_gives_its_first_frame(suffix, tmp_path):
    frames = [Image.new("RGB", (32, 32), colour) for colour in ("red", "green", "blue")]
    frames[0].save(tmp_path / f"anim{suffix}", save_all=True, append_images=frames[1:], duration=100, loop=0)
    loaded = load_image(tmp_path / f"anim{suffix}")
    assert loaded.mode == "RGB" and loaded.size == (32, 32)
    assert loaded.getpixel((5, 5))[0] > 200 and loaded.getpixel((5, 5))[1] < 60  # red: the first frame


def test_odd_but_valid_references_and_prompts_generate(pipe, tmp_path):
    """What the corpus accepts really runs: a palette, a grey+alpha and a 16-bit reference, a rotated photo, an
    animated GIF and a 16 x 16 one, with a unicode prompt whose settings survive the PNG."""
    from unoflux.generation import generate_to_files
    from unoflux.options import GenerationRequest

    for name, image in {"p.png": "P", "la.png": "LA", "deep.png": "I;16"}.items():
        image_in_mode(image).save(tmp_path / name)
    frames = [Image.new("RGB", (32, 32), c) for c in ("red", "blue")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    Image.new("RGB", (16, 16), "green").save(tmp_path / "small.png")
    prompt = "ein Würfel 🎲 au café, 猫の横に"
    refs = [str(tmp_path / n) for n in ("p.png", "la.png", "deep.png", "anim.gif", "small.png")]
    request = GenerationRequest(prompt=prompt, references=refs, steps=1, seed=5)
    (path,) = generate_to_files(pipe, request, tmp_path / "out", {"model": "embedded"})
    assert path.name == "ein-w-rfel-au-caf_5.png" and read_settings(path)["prompt"] == prompt
    assert Image.open(path).text["Description"] == prompt


@pytest.mark.parametrize("prompt", ["../../../etc/cron.d/x", "/tmp/evil", "..", "C:\\Windows\\x", "猫"])
def test_a_prompt_cannot_steer_the_output_outside_its_folder(prompt, pipe, tmp_path):
    """File names come from the prompt only through a slug of [a-z0-9-]: no separator, no '..'."""
    from unoflux.generation import generate_to_files
    from unoflux.options import GenerationRequest

    out = tmp_path / "out"
    (path,) = generate_to_files(pipe, GenerationRequest(prompt=prompt, steps=1, seed=2), out, {"model": "embedded"})
    assert path.parent == out and list(tmp_path.rglob("*.png")) == [path]
    assert path.name.removesuffix("_2.png").replace("-", "").isalnum()


def test_a_prompt_past_the_text_encoders_length_warns_and_runs(pipe):
    with pytest.warns(UserWarning, match=r"the prompt has \d+ T5 tokens; only the first \d+ are used"):
        output = pipe("a red ball " * 2000, steps=1)
    assert output.images[0].size == (128, 128)


# --------------------------------------------------------------------------------------------- checkpoints, LoRAs
# (file in the corpus, the sentence's expected part): LoRAs loaded onto the loaded pipeline, which must not change
LORA_CASES = {
    "wrong-rank": ("lora-rank.safetensors", "is inconsistent at 'transformer_blocks.0.attn.to_out.0': rank 128 down vs 256 up"),
    "wrong-shape": ("lora-shape.safetensors", "takes 200 inputs but 'transformer_blocks.0.attn.to_out.0' has 192"),
    "wrong-keys": ("lora-keys.safetensors", "has tensor 'foo.bar', which is not a transformer LoRA weight"),
    "truncated": ("lora-truncated.safetensors", "is not a readable safetensors file"),
    "zero-byte": ("lora-zero.safetensors", "is not a readable safetensors file"),
    "pickle-attack": ("malicious.pt", "cannot be loaded safely as weights (WeightsUnpickler error: Unsupported global"),
    "truncated-pickle": ("truncated.pt", "cannot be loaded safely as weights"),
    "missing": ("missing.safetensors", "does not exist"),
    "unknown-type": ("good.png", "has an unknown type; use .safetensors"),
}  # fmt: skip


def reference_image_bytes(pipe, corpus) -> bytes:
    return pipe("a red ball", [str(corpus / "good.png")], steps=1, seed=1).images[0].tobytes()


@pytest.fixture(scope="module")
def image_before(pipe, corpus) -> bytes:
    return reference_image_bytes(pipe, corpus)


@pytest.mark.parametrize("case", list(LORA_CASES))
def test_a_bad_lora_is_refused_and_the_pipeline_is_unchanged(case, pipe, corpus, image_before):
    name, expected = LORA_CASES[case]
    with pytest.raises(UnofluxError) as refused:
        pipe.load_uno_lora(str(corpus / name))
    assert expected in str(refused.value) and str(corpus / name) in str(refused.value)
    assert "\n" not in str(refused.value) and not (corpus / PWNED).exists()
    assert reference_image_bytes(pipe, corpus) == image_before  # nothing of the bad LoRA landed


@pytest.fixture(scope="module")
def broken_checkpoints(official_layout, corpus) -> dict[str, Path]:
    """The tiny official-layout files with one thing wrong each."""
    import torch
    from safetensors.torch import save_file

    from unoflux.checkpoints.files import read_tensors

    paths, _ = official_layout
    flux, metadata = read_tensors(paths.flux)  # the metadata says how RoPE splits the heads: kept
    key = "double_blocks.0.img_attn.proj.weight"
    wrong = {**flux, key: torch.zeros(flux[key].shape[0], flux[key].shape[1] + 1)}
    save_file(wrong, corpus / "flux-shape.safetensors", metadata=metadata)
    save_file({k: v for k, v in flux.items() if k != key}, corpus / "flux-missing.safetensors", metadata=metadata)
    raw = Path(paths.flux).read_bytes()
    (corpus / "flux-truncated.safetensors").write_bytes(raw[: len(raw) // 3])
    return {
        "flux-shape": corpus / "flux-shape.safetensors",
        "flux-missing": corpus / "flux-missing.safetensors",
        "flux-truncated": corpus / "flux-truncated.safetensors",
    }


# (the component replaced, its file, the sentence's expected part)
CHECKPOINT_CASES = {
    "flux-pickle-attack": ("flux", "{d}/malicious.pt", "FLUX transformer file '{d}/malicious.pt' cannot be loaded safely"),
    "flux-is-a-lora": ("flux", "{lora}", "is not a FLUX transformer: expected BFL keys"),
    "flux-wrong-shape": ("flux", "{d}/flux-shape.safetensors", "has 'transformer_blocks.0.attn.to_out.0.weight' of shape"),
    "flux-missing-tensor": ("flux", "{d}/flux-missing.safetensors", "does not match the FLUX transformer it describes"),
    "flux-truncated": ("flux", "{d}/flux-truncated.safetensors", "is not a readable safetensors file"),
    "ae-is-a-transformer": ("ae", "{flux}", "is not a FLUX VAE: expected BFL/LDM keys"),
    "t5-is-a-file": ("t5", "{flux}", "must be a folder in transformers layout"),
    "clip-empty-folder": ("clip", "{d}/folder", "has no config.json"),
    "model-without-index": ("model", "{d}/folder", "is not a diffusers pipeline folder (no model_index.json)"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CHECKPOINT_CASES))
def test_a_broken_checkpoint_is_refused_in_one_sentence(case, official_layout, broken_checkpoints, corpus):
    from dataclasses import replace

    from unoflux import load_pipeline

    paths, _ = official_layout
    field, value, expected = CHECKPOINT_CASES[case]
    names = dict(d=corpus, lora=paths.lora, flux=paths.flux)
    value = value.format(**names)
    given = replace(paths, lora=None, **{field: value})
    if field == "model":
        given = replace(given, flux=None, ae=None, t5=None, clip=None)
    with pytest.raises(UnofluxError) as refused:
        load_pipeline(given, device="cpu", use_environment=False)
    message = str(refused.value)
    assert expected.format(**names) in message and value in message and "\n" not in message
    assert not (corpus / PWNED).exists()


@pytest.mark.parametrize(
    "options, expected",
    [
        (dict(device="cuda"), "device 'cuda' is not available here (no CUDA GPU)"),
        (dict(device="quantum:0"), "device 'quantum:0' is not a torch device"),
        (dict(dtype="fp64"), "dtype 'fp64' is not one of: fp32, bf16, fp16"),
        (dict(offload="model", device="cpu"), "offload 'model' moves models onto a GPU"),
        (dict(weights_dtype="int4"), "weights dtype 'int4' is not supported"),
    ],
)
def test_load_pipeline_refuses_a_device_or_dtype_before_loading(options, expected, monkeypatch):
    import torch

    import unoflux.checkpoints.loading as loading
    from unoflux import load_pipeline

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on CI, also on a GPU machine
    monkeypatch.setattr(loading, "load_transformer", lambda *a, **k: pytest.fail("a model was loaded"))
    monkeypatch.setattr(loading.UnoFluxPipeline, "from_pretrained", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(UnofluxError, match="^" + re.escape(expected)):
        load_pipeline(**options)
