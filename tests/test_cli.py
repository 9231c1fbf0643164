"""`unoflux generate` end to end on files in the official layouts: outputs, metadata, batch mode with
resume and sharding, and every bad-input case exiting 2 with one sentence and no partial file."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unoflux.cli import main
from unoflux.errors import UnofluxError
from unoflux.generation import batch_jobs
from unoflux.images import load_image, read_settings

from .conftest import random_image

SMALL = ["--width", "32", "--height", "32", "--steps", "2", "--ref-long-side", "32"]


def model_flags(paths, lora=True):
    flags = ["--flux", paths.flux, "--ae", paths.ae, "--t5", paths.t5, "--clip", paths.clip, "--device", "cpu"]
    return flags + (["--lora", paths.lora] if lora else [])


@pytest.fixture(autouse=True)
def _no_uno_environment(monkeypatch):
    for name in ("FLUX_DEV", "FLUX_DEV_FP8", "FLUX_SCHNELL", "AE", "T5", "CLIP", "LORA"):
        monkeypatch.delenv(name, raising=False)


def test_help_of_every_command():
    for argv in (["-h"], ["generate", "-h"]):
        result = subprocess.run([sys.executable, "-m", "unoflux", *argv], capture_output=True, text=True)
        assert result.returncode == 0 and "usage: unoflux" in result.stdout
    assert "--position-mode" in result.stdout and "--weights-dtype" in result.stdout


def test_the_clis_choice_lists_mirror_the_library():
    """The CLI keeps its own copies (parsing stays free of torch imports); they must not drift."""
    from unoflux import cli
    from unoflux.conditioning import POSITION_MODES
    from unoflux.pipeline import SCHEDULES

    assert (cli.POSITION_MODES, cli.SCHEDULES) == (tuple(POSITION_MODES), SCHEDULES)


def test_generate_writes_a_png_with_its_settings(official_layout, tmp_path, capsys):
    paths, _ = official_layout
    ref = tmp_path / "ref.png"
    random_image(48, 40, seed=4).save(ref)
    out = tmp_path / "out" / "cat.png"
    code = main(
        [
            "generate",
            "--prompt",
            "a cat on the beach",
            "--ref",
            str(ref),
            "--seed",
            "11",
            "--out",
            str(out),
            *SMALL,
            *model_flags(paths),
        ]
    )
    assert code == 0 and capsys.readouterr().out.strip() == str(out)
    assert Image.open(out).size == (32, 32)
    settings = read_settings(out)
    assert settings["prompt"] == "a cat on the beach" and settings["seed"] == 11
    assert settings["references"] == [str(ref)] and settings["model"]["lora"] == paths.lora
    assert settings["position_mode"] == "diagonal" and settings["steps"] == 2
    assert (settings["guidance"], settings["true_cfg"]) == (4.0, 1.0)  # FLUX.1-dev's defaults, resolved
    assert [p.name for p in out.parent.iterdir()] == ["cat.png"]  # no temporary leftovers
    assert out.stat().st_mode & 0o644 == 0o644  # readable like any file the user writes


def test_several_images_into_a_folder(official_layout, tmp_path, capsys):
    paths, _ = official_layout
    code = main(
        [
            "generate",
            "--prompt",
            "a red cup",
            "--num-images",
            "2",
            "--seed",
            "5",
            "--out",
            str(tmp_path),
            *SMALL,
            *model_flags(paths, lora=False),
        ]
    )
    assert code == 0
    written = sorted(p.name for p in tmp_path.glob("*.png"))
    assert written == ["a-red-cup_5.png", "a-red-cup_6.png"]
    assert [read_settings(tmp_path / n)["seed"] for n in written] == [5, 6]


def write_batch(tmp_path, items):
    (tmp_path / "refs").mkdir(exist_ok=True)
    for k in range(3):
        random_image(40, 40, seed=20 + k).save(tmp_path / "refs" / f"r{k}.png")
    batch = tmp_path / "eval.json"
    batch.write_text(json.dumps(items))
    return batch


def test_batch_mode_writes_pairs_and_resumes(official_layout, tmp_path, capsys):
    paths, _ = official_layout
    batch = write_batch(
        tmp_path,
        [
            {"prompt": "a cat", "image_paths": ["refs/r0.png"]},
            {"prompt": "two things", "image_paths": ["refs/r1.png", "refs/r2.png"]},
        ],
    )
    out = tmp_path / "results"
    argv = ["generate", "--batch", str(batch), "--num-images", "2", "--out", str(out), *SMALL, *model_flags(paths)]
    assert main(argv) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["0_0.json", "0_0.png", "0_1.json", "0_1.png", "1_0.json", "1_0.png", "1_1.json", "1_1.png"]
    meta = json.loads((out / "1_1.json").read_text())
    assert meta["prompt"] == "two things" and meta["seed"] == 3407 + 1 and len(meta["references"]) == 2
    assert "4 images written" in capsys.readouterr().out
    before = (out / "0_0.png").stat().st_mtime_ns
    (out / "1_0.json").unlink()  # as if killed after the PNG but before its JSON
    assert main(argv) == 0
    assert "1 images written" in capsys.readouterr().out and (out / "0_0.png").stat().st_mtime_ns == before


def test_batch_shards_across_two_real_processes(official_layout, tmp_path):
    paths, _ = official_layout
    batch = write_batch(tmp_path, [{"prompt": p, "image_paths": ["refs/r0.png"]} for p in ("a cat", "a dog", "a cup")])
    out = tmp_path / "sharded"
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run(
        [
            str(torchrun),
            "--nproc_per_node",
            "2",
            "-m",
            "unoflux",
            "generate",
            "--batch",
            str(batch),
            "--out",
            str(out),
            *SMALL,
            *model_flags(paths, lora=False),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(line.split()[0] for line in result.stdout.splitlines() if "written" in line) == ["1", "2"]
    assert sorted(p.name for p in out.glob("*.png")) == ["0_0.png", "1_0.png", "2_0.png"]


def test_batch_sharding_follows_uno_round_robin():
    items = [{}] * 3
    shards = [list(batch_jobs(items, 2, rank, 2)) for rank in range(2)]
    assert shards == [[(0, 0), (1, 0), (2, 0)], [(0, 1), (1, 1), (2, 1)]]
    assert sorted(shards[0] + shards[1]) == list(batch_jobs(items, 2))


# ------------------------------------------------------------------------------------- bad input
def bad_images(tmp_path):
    good = random_image(64, 64, seed=9)
    good.save(tmp_path / "good.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    data = (tmp_path / "good.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "notes.txt").write_text("not an image")
    Image.new("RGB", (8, 40)).save(tmp_path / "tiny.png")
    (tmp_path / "flux1-dev.safetensors").write_bytes(b"")  # exists: the missing companions are named first
    return tmp_path


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--ref", "{d}/missing.png"], "does not exist"),
        (["--ref", "{d}/corrupt.png"], "cannot be read as an image"),
        (["--ref", "{d}/truncated.png"], "cannot be read as an image"),
        (["--ref", "{d}/notes.txt"], "cannot be read as an image"),
        (["--ref", "{d}/tiny.png"], "at least 16 px"),
        (["--width", "0"], "width 0 is out of range"),
        (["--height", "100000"], "height 100000 is out of range"),
        (["--steps", "0"], "steps 0"),
        (["--num-images", "0"], "number of images 0"),
        (["--prompt", ""], "prompt is empty"),
        (["--noise-device", "gpu"], "noise device 'gpu' is not one of: cpu, cuda, cuda:N"),
        (["--style", "{d}/missing.png"], "style reference image 1"),
        (["--uso-projector", "{d}/good.png", "--ref", "{d}/good.png"], "--uso-projector needs --siglip DIR too"),
        (["--ref-long-side", "4"], "reference long side 4"),
        (["--batch", "{d}/missing.json"], "either --prompt or --batch"),
        (["--flux", "{d}/nope.safetensors", "--ae", "x", "--t5", "x", "--clip", "x"], "does not exist"),
        (["--flux", "{d}/good.png", "--ae", "{d}/good.png", "--t5", "{d}", "--clip", "{d}"], "unknown type"),
        (["--flux", "{d}/flux1-dev.safetensors"], "no model given for --ae, --t5, --clip"),
    ],
)
def test_bad_input_exits_2_with_one_sentence_and_no_file(tmp_path, capsys, extra, message):
    d = bad_images(tmp_path)
    out = tmp_path / "out.png"
    argv = ["generate", "--prompt", "a cat", "--out", str(out), "--device", "cpu", *[a.format(d=d) for a in extra]]
    if "--prompt" in extra:  # the case overrides the prompt
        argv = ["generate", "--out", str(out), "--device", "cpu", *[a.format(d=d) for a in extra]]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("unoflux: error: ") and message in err and "\n" not in err
    assert not out.exists()


def test_bad_batch_files(tmp_path, capsys):
    (tmp_path / "refs").mkdir()
    cases = {
        "notjson.json": ("{", "not valid JSON"),
        "empty.json": ("[]", "non-empty list"),
        "noprompt.json": (json.dumps([{"image_paths": []}]), "needs a 'prompt' string"),
        "emptyprompt.json": (json.dumps([{"prompt": " ", "image_paths": []}]), "has an empty prompt; only a USO"),
        "badpaths.json": (json.dumps([{"prompt": "x", "image_paths": "a.png"}]), "not a list of paths"),
        "badrole.json": (
            json.dumps([{"prompt": "x", "image_paths": [{"image": "a.png", "role": "colour"}]}]),
            "reference role 'colour' is not one of: subject, style",
        ),
        "missingref.json": (json.dumps([{"prompt": "x", "image_paths": ["refs/none.png"]}]), "does not exist"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_text(content)
        assert main(["generate", "--batch", str(tmp_path / name), "--device", "cpu"]) == 2
        assert message in capsys.readouterr().err


def test_batch_messages_count_items_and_references_from_1(tmp_path, capsys):
    random_image(32, 32).save(tmp_path / "good.png")
    cases = {
        "second_item_first_ref.json": (
            [{"prompt": "x", "image_paths": ["good.png"]}, {"prompt": "y", "image_paths": ["none.png", "good.png"]}],
            "batch item 2 reference 1 ",
        ),
        "first_item.json": ([{"image_paths": []}], "batch item 1 in "),
    }
    for name, (items, message) in cases.items():
        (tmp_path / name).write_text(json.dumps(items))
        assert main(["generate", "--batch", str(tmp_path / name), "--device", "cpu"]) == 2
        assert message in capsys.readouterr().err


def test_a_crashed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    from unoflux.images import save_png

    def explode(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", explode)
    with pytest.raises(OSError):
        save_png(Image.new("RGB", (16, 16)), tmp_path / "x.png", {"prompt": "p"})
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------- image modes users really have
@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "CMYK", "L", "I;16", "1"])
def test_every_common_mode_becomes_rgb(tmp_path, mode):
    image = random_image(32, 24, seed=1)
    image = image.convert("L").convert("I;16") if mode == "I;16" else image.convert(mode)
    path = tmp_path / ("x.tiff" if mode == "CMYK" else "x.png")
    image.save(path)
    loaded = load_image(path)
    assert loaded.mode == "RGB" and loaded.size == (32, 24)


def test_transparency_becomes_white_and_16_bit_keeps_its_range(tmp_path):
    clear = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    assert load_image(clear).getpixel((5, 5)) == (255, 255, 255)
    deep = Image.fromarray(np.full((20, 20), 65535, dtype=np.uint16))
    assert load_image(deep).getpixel((5, 5)) == (255, 255, 255)


def test_exif_rotation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    image.save(tmp_path / "photo.jpg", exif=exif)
    assert load_image(tmp_path / "photo.jpg").size == (20, 40)


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    import unoflux.images as images

    monkeypatch.setattr(images, "MAX_PIXELS", 100 * 100)
    Image.new("RGB", (200, 200)).save(tmp_path / "bomb.png")
    with pytest.raises(images.UnofluxError, match="too large to decode safely"):
        load_image(tmp_path / "bomb.png")


# ------------------------------------------------------------------------------------- devices
@pytest.fixture
def no_model_loading(monkeypatch):
    """Any attempt to load a model fails the test: a bad device must be refused before that."""
    import unoflux.checkpoints

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(unoflux.checkpoints, "load_pipeline", refuse)


@pytest.mark.parametrize(
    "argv",
    [
        ["generate", "--prompt", "a cat", "--device", "cuda"],
        ["demo", "--device", "cuda"],
        ["app", "--device", "cuda", "--port", "0"],  # 0: a free port, replaced below
    ],
    ids=["generate", "demo", "app"],
)
def test_a_missing_gpu_is_refused_before_any_model_loads(monkeypatch, no_model_loading, capsys, tmp_path, argv):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on this CPU machine, also on a GPU one
    if argv[0] == "app":
        pytest.importorskip("gradio")
        with socket.socket() as s:  # a port nothing listens on, so that the app's address check passes
            s.bind(("127.0.0.1", 0))
            argv = [*argv[:-1], str(s.getsockname()[1])]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "unoflux: error: device 'cuda' is not available here (no CUDA GPU); use --device cpu"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--device", "cuda:2"], "device 'cuda:2' is not available here: this machine has cuda:0 to cuda:1"),
        (["--device", "gpu"], "device 'gpu' is not a torch device; use cpu, cuda or cuda:N"),
        (["--device", "cpu", "--noise-device", "cuda:5"], "noise device 'cuda:5' is not available here"),
    ],
)
def test_a_bad_device_index_or_name_is_refused(monkeypatch, no_model_loading, capsys, flags, message):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert main(["generate", "--prompt", "a cat", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"unoflux: error: {message}") and "\n" not in err


# ------------------------------------------------------------------------------------- outputs
def test_an_output_png_that_is_a_folder_is_refused_before_any_model_loads(no_model_loading, tmp_path, capsys):
    (tmp_path / "x.png").mkdir()
    assert main(["generate", "--prompt", "a cat", "--out", str(tmp_path / "x.png"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err
        == f"unoflux: error: output {str(tmp_path / 'x.png')!r} is an existing folder; give a .png path that is not a folder"
    )


def test_output_paths_refuse_folders_in_the_way(tmp_path):
    from unoflux.generation import output_paths
    from unoflux.options import GenerationRequest

    (tmp_path / "x_1.png").mkdir()  # the second of two images would land on a folder
    with pytest.raises(UnofluxError, match="x_1.png' is an existing folder"):
        output_paths(tmp_path / "x.png", GenerationRequest(prompt="a cat", num_images=2))
    (tmp_path / "file").write_text("")
    with pytest.raises(UnofluxError, match="exists and is not a folder"):
        output_paths(tmp_path / "file", GenerationRequest(prompt="a cat", seed=1))
    assert output_paths(tmp_path / "y.png", GenerationRequest(prompt="a cat", num_images=2))[1].name == "y_1.png"


# ------------------------------------------------------------------------------------- fast failures
@pytest.mark.parametrize("reference, message", [("missing.png", "does not exist"), ("empty.png", "cannot be read")])
def test_a_bad_reference_is_reported_before_torch_is_imported(tmp_path, reference, message):
    """Importing torch takes seconds; a typo in a path should not cost them."""
    (tmp_path / "empty.png").write_bytes(b"")
    script = (
        "import sys; from unoflux.cli import main; "
        f"code = main(['generate', '--prompt', 'a cat', '--ref', {str(tmp_path / reference)!r}]); "
        "print(code, 'torch' in sys.modules)"
    )
    src = str(Path(__file__).parents[1] / "src")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env={"PYTHONPATH": src})
    assert result.stdout.split() == ["2", "False"], result.stderr
    assert message in result.stderr and result.stderr.count("\n") == 1
