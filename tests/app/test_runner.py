"""The app's generation logic without a server: files, metadata, the CLI command, form parsing."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from PIL import Image

from unoflux.app.command import generate_command
from unoflux.app.runner import AppRunner
from unoflux.errors import UnofluxError
from unoflux.generation import GenerationRequest
from unoflux.images import read_settings


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    from unoflux.testing import tiny_pipeline

    return AppRunner(tiny_pipeline(), {"model": "tiny"}, tmp_path_factory.mktemp("out"), ["--model", "/m"])


@pytest.fixture
def tiny_request(examples):
    """``tiny_request(**changes)``: a fast request with one bundled reference."""

    def make(**changes) -> GenerationRequest:
        settings = dict(
            prompt="a red ball",
            references=[str(examples / "red_striped_diamond.png")],
            width=48,
            height=32,
            steps=2,
            seed=7,
        )
        return GenerationRequest(**{**settings, **changes})

    return make


def test_run_saves_unique_pngs_with_settings_and_kept_references(runner, tiny_request, examples):
    steps_seen = []
    first = runner.run(tiny_request(num_images=2), on_step=lambda done, total: steps_seen.append((done, total)))
    second = runner.run(tiny_request(num_images=2))  # same prompt and seed: must not overwrite
    assert steps_seen == [(1, 2), (2, 2)]
    assert len(set(first.images + second.images)) == 4
    for j, path in enumerate(first.images):
        assert Image.open(path).size == (48, 32)
        settings = read_settings(path)
        assert (settings["seed"], settings["model"], settings["width"]) == (7 + j, {"model": "tiny"}, 48)
        (reference,) = settings["references"]
        bundled = Image.open(examples / "red_striped_diamond.png")
        assert reference.startswith(str(runner.out_dir / "references")) and Image.open(reference).size == bundled.size


def test_fast_mode_reports_and_records_the_steps_it_runs(runner, tiny_request):
    """Fast mode without steps runs its share of the model's (16 of 25): the progress bar counts those, the PNG
    says them; and the page's Fast mode box moves the steps slider between the two (a number of the user's stays)."""
    from unoflux.app.ui import fast_mode_steps

    steps_seen = []
    result = runner.run(tiny_request(steps=None, fast=True), on_step=lambda done, total: steps_seen.append(total))
    assert set(steps_seen) == {16} and len(steps_seen) == 16
    assert read_settings(result.images[0])["steps"] == 16
    assert [fast_mode_steps(True, 25, 25), fast_mode_steps(False, 16, 25)] == [16, 25]
    assert [fast_mode_steps(True, 30, 25), fast_mode_steps(False, 30, 25), fast_mode_steps(True, 12, 12)] == [30, 30, 8]


def test_run_refuses_a_bad_reference_before_any_work(runner, tiny_request, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(UnofluxError, match="cannot be read as an image"):
        runner.run(tiny_request(references=[str(broken)]))


def test_cli_command_reproduces_the_request(tiny_request, examples):
    request = tiny_request(
        prompt="it's a ball",
        seed=42,
        reference_long_side=320,
        position_mode="width",
        guidance=4.0,
        true_cfg=2.5,
        negative_prompt="a blurry picture",
        time_shift=20.0,
        stochasticity=0.25,
    )
    argv = shlex.split(generate_command(request, ["--model", "/models/my flux"], "/out dir"))
    assert argv[:4] == ["unoflux", "generate", "--prompt", "it's a ball"]
    flags = dict(zip(argv[4::2], argv[5::2]))
    assert flags["--ref"] == str(examples / "red_striped_diamond.png")
    assert (flags["--seed"], flags["--ref-long-side"], flags["--position-mode"]) == ("42", "320", "width")
    assert (flags["--model"], flags["--out"]) == ("/models/my flux", "/out dir")
    from unoflux.cli import build_parser

    parsed = build_parser().parse_args(argv[1:])  # the CLI accepts every flag
    assert (parsed.width, parsed.height, parsed.steps, parsed.guidance) == (48, 32, 2, 4.0)
    assert (parsed.true_cfg, parsed.negative_prompt, parsed.time_shift) == (2.5, "a blurry picture", 20.0)
    assert parsed.stochasticity == 0.25
    unset = build_parser().parse_args(shlex.split(generate_command(tiny_request(), [], "o"))[1:])
    assert (unset.guidance, unset.true_cfg, unset.negative_prompt) == (None, None, "")  # the model's defaults
    assert (unset.schedule, unset.time_shift, unset.stochasticity) == (None, None, None)


def test_model_flags_spell_out_environment_paths(monkeypatch, tmp_path):
    from unoflux.app.command import model_flags
    from unoflux.cli import build_parser

    monkeypatch.setenv("LORA", str(tmp_path / "lora.safetensors"))
    args = build_parser().parse_args(["app", "--model", str(tmp_path), "--offload", "model", "--weights-dtype", "fp8"])
    flags = model_flags(args)
    assert flags[flags.index("--model") + 1] == str(tmp_path.resolve())
    assert flags[flags.index("--lora") + 1] == str(tmp_path / "lora.safetensors")
    assert ["--weights-dtype", "fp8"] == flags[flags.index("--weights-dtype") :][:2]
    assert ["--offload", "model"] == flags[flags.index("--offload") :][:2]


def test_app_without_a_model_says_so_and_exits_2(monkeypatch, capsys, tmp_path, free_port):
    import unoflux.checkpoints.loading as loading
    from unoflux.cli import main

    for name in ("FLUX_DEV", "FLUX_SCHNELL", "FLUX_DEV_FP8", "AE", "T5", "CLIP", "LORA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(loading, "EMBEDDED_MODEL_DIR", tmp_path / "no-embedded-model")
    assert main(["app", "--port", str(free_port())]) == 2
    assert "no model given" in capsys.readouterr().err


@pytest.fixture
def no_model_loading(monkeypatch):
    """Loading a model fails the test: the server checks must come before it."""
    import unoflux.checkpoints

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(unoflux.checkpoints, "load_pipeline", refuse)


def test_a_busy_port_is_refused_before_the_model_loads(no_model_loading, capsys, tmp_path):
    import socket
    import time

    from unoflux.cli import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        started = time.monotonic()
        assert main(["app", "--port", str(port), "--out", str(tmp_path)]) == 2
        assert time.monotonic() - started < 5
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"unoflux: error: cannot serve on 127.0.0.1:{port} (") and "\n" not in err
    assert err.endswith("is another app running there? Choose another --port")


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--port", "70000"], "--port 70000 must be a port number from 1 to 65535"),
        (["--auth", "alice"], "--auth 'alice' must be USER:PASSWORD, both non-empty"),
        (["--auth", ":secret"], "--auth ':secret' must be USER:PASSWORD"),
        (["--host", "no-such-host.invalid"], "--host 'no-such-host.invalid' with --port"),
        (["--max-upload-megapixels", "0"], "--max-upload-megapixels 0 must be a positive number"),
    ],
)
def test_bad_server_flags_are_refused_before_the_model_loads(no_model_loading, capsys, tmp_path, flags, message):
    from unoflux.cli import main

    assert main(["app", "--out", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"unoflux: error: {message}") and "\n" not in err


def test_an_address_other_machines_reach_gets_a_one_line_warning(monkeypatch, capsys, tmp_path, free_port):
    import unoflux.checkpoints
    from unoflux.cli import main

    def stop(*args, **kwargs):  # the warning comes before the model loads; stop there
        raise UnofluxError("stopped before loading")

    monkeypatch.setattr(unoflux.checkpoints, "load_pipeline", stop)
    assert main(["app", "--host", "0.0.0.0", "--port", str(free_port()), "--out", str(tmp_path)]) == 2
    warning, error = capsys.readouterr().err.strip().split("\n")
    assert warning.startswith("unoflux: warning: --host 0.0.0.0 lets other machines reach the app")
    assert "--auth USER:PASSWORD" in warning and error == "unoflux: error: stopped before loading"
    assert main(["app", "--host", "localhost", "--port", str(free_port()), "--out", str(tmp_path)]) == 2
    assert "warning" not in capsys.readouterr().err  # loopback: no warning


def test_auth_asks_for_the_password(tiny_model_dir, app_args, tmp_path):
    from gradio_client import Client
    from gradio_client.exceptions import AuthenticationError

    from unoflux.app.cli import serve

    args = app_args(tiny_model_dir, tmp_path, "--auth", "alice:s3cret:x")
    demo = serve(args, block=False)
    try:
        url = f"http://127.0.0.1:{args.port}/"
        with pytest.raises(AuthenticationError, match="credentials were not provided"):
            Client(url, verbose=False)
        with pytest.raises(ValueError, match="Could not login"):
            Client(url, auth=("alice", "s3cret"), verbose=False)
        Client(url, auth=("alice", "s3cret:x"), verbose=False)  # the password is everything after the first colon
    finally:
        demo.close()


def test_a_floored_size_reaches_the_command_and_is_said(runner, tiny_request):
    from unoflux.cli import build_parser

    result = runner.run(tiny_request(width=100, height=50))
    assert Image.open(result.images[0]).size == (96, 48)
    parsed = build_parser().parse_args(shlex.split(result.command)[1:])
    assert (parsed.width, parsed.height) == (96, 48)  # the size that ran, as the PNG's settings say it
    assert read_settings(result.images[0])["width"] == 96
    assert result.size == (96, 48) and result.floored == ["width 100 became 96", "height 50 became 48"]
    exact = runner.run(tiny_request(width=48, height=32))
    assert (exact.size, exact.floored) == ((48, 32), []) and "--width 48 --height 32" in exact.command


def test_the_status_line_gives_the_native_size_and_what_was_floored(runner, examples):
    from unoflux.app.ui import make_generate

    generate = make_generate(runner)
    _, command, status, seed = generate("a red ball", width=100, height=48, steps=1, seed=5)
    assert "1 image, 96 x 48 px, to" in status and "(seed 5)" in status
    assert status.endswith("Width 100 became 96: sizes are floored to multiples of 16.")
    assert "--width 96 --height 48" in command
    _, _, status, _ = generate("a red ball", width=64, height=48, steps=1, seed=5)
    assert "64 x 48 px" in status and "floored" not in status


def test_settings_from_a_png_give_the_form_values(runner, tiny_request, tmp_path):
    from unoflux.app.ui import LOADED_SETTINGS, settings_from_png

    (path,) = runner.run(tiny_request(seed=99, negative_prompt="fog", time_shift=3.0, stochasticity=0.5)).images
    choices = {"position_mode": ["diagonal", "width", "height"], "schedule": ["uno", "flux"], "method": ["dreamo"]}
    values, status = settings_from_png(str(path), choices)
    assert (values["prompt"], values["width"], values["height"], values["steps"]) == ("a red ball", 48, 32, 2)
    assert (values["seed"], values["negative_prompt"], values["time_shift"], values["stochasticity"]) == (
        99,
        "fog",
        "3.0",
        0.5,
    )
    # method: "uno" is not offered here; schedule: None, the explicit time shift rules, so the radio stays
    assert set(values) == set(LOADED_SETTINGS) - {"method", "schedule"}
    assert status == (
        f"Loaded the settings of '{path.name}' (seed 99); add its references again, they are not loaded. "
        "Not offered here, left as they were: method 'uno'."
    )
    plain = tmp_path / "plain.png"
    Image.new("RGB", (16, 16)).save(plain)
    assert settings_from_png(str(plain), choices)[0] == {}
    (tmp_path / "notes.png").write_text("not a picture")
    assert "'notes.png' carries no unoflux settings" in settings_from_png(str(tmp_path / "notes.png"), choices)[1]


def test_settings_from_a_png_bring_back_the_references_inside_the_apps_folders(runner, tiny_request, tmp_path):
    from unoflux.app.ui import settings_from_png
    from unoflux.images import save_png

    choices = {"position_mode": ["diagonal"], "schedule": ["uno", "flux"], "method": ["uno"]}
    (path,) = runner.run(tiny_request(seed=3)).images  # its reference is kept in the app's folder
    (kept,) = read_settings(path)["references"]
    values, status = settings_from_png(str(path), choices, [runner.out_dir])
    assert (values["reference_1"], values["task_1"], values["reference_2"], values["style_1"]) == (
        kept,
        "subject",
        None,
        None,
    )
    assert status == f"Loaded the settings of '{path.name}' (seed 3) and its 1 reference."

    outside = tmp_path / "elsewhere.png"
    Image.new("RGB", (32, 32)).save(outside)
    records = [
        {"image": kept, "role": "style"},
        str(outside),
        str(tmp_path / "gone.png"),
        kept,
        {"image": kept, "role": "id"},
    ]
    png = save_png(
        Image.new("RGB", (16, 16)), tmp_path / "mixed.png", {"prompt": "x", "seed": 1, "references": records}
    )
    values, status = settings_from_png(str(png), choices, [runner.out_dir], style_slots=True)
    assert (values["style_1"], values["reference_1"], values["reference_2"]) == (kept, kept, None)
    assert status == (
        "Loaded the settings of 'mixed.png' (seed 1) and its 2 references; not loaded, add again: 'elsewhere.png' "
        "(outside this app's folders), 'gone.png' (missing), '" + Path(kept).name + "' (role 'id', not offered here)."
    )
    assert "references again, they are not loaded" in settings_from_png(str(png), choices)[1]  # no folders: as before


def test_an_upload_past_the_pixel_limit_is_cleared_from_its_slot(tmp_path, monkeypatch):
    from unoflux.app.ui import check_upload

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))  # Gradio's upload cache: where an upload lies
    (tmp_path / "0a1b2c").mkdir()
    upload = {"path": str(tmp_path / "0a1b2c" / "wide.png")}
    Image.new("RGB", (64, 64)).save(upload["path"])  # 4096 px
    value, status = check_upload("reference image 2", max_megapixels=0.004)(upload)
    assert value is None and status == (
        "reference image 2 'wide.png' is 64x64 (0.0041 megapixels); this app takes uploads of at most 0.004 "
        "megapixels; the slot was cleared, choose another file."
    )
    assert check_upload("reference image 2", max_megapixels=0.005)(upload)[0] is not None  # gr.skip(): kept
    Image.new("RGB", (16, 16)).save(tmp_path.parent / "elsewhere.png")
    value, status = check_upload("reference image 1")({"path": str(tmp_path.parent / "elsewhere.png")})
    assert value is None and status.startswith("'elsewhere.png' is not a file uploaded to this app")
