"""The app's log: `unoflux app --log-file PATH` appends it to a file; a line per request (its id, settings and time)
at INFO, a line per refusal at WARNING, and a traceback only for a real fault, once."""

from __future__ import annotations

import re

import pytest

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING|ERROR) unoflux\.app: request ([0-9a-f]{6}) ")


def predict(client, **form):
    return client.predict(
        **{"prompt": "a red ball", "width": 64, "height": 48, "steps": 2, **form}, api_name="/generate"
    )


def test_the_log_file_has_a_line_per_request(tiny_model_dir, app_args, tmp_path):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    from unoflux.app.cli import serve
    from unoflux.app.ui import configure_logging

    log_file = tmp_path / "logs" / "app.log"  # its folder is made
    args = app_args(tiny_model_dir, tmp_path / "out", "--log-file", str(log_file))
    demo = serve(args, block=False)
    try:
        client = Client(f"http://127.0.0.1:{args.port}/", verbose=False)
        gallery, _, _ = predict(client, seed=5, num_images=2)
        with pytest.raises(AppError, match="the prompt is empty"):
            predict(client, prompt=" ")
        predict(client, prompt="x" * 100, seed=6)
    finally:
        demo.close()
        configure_logging()  # the file's handler closed
    lines = log_file.read_text().splitlines()
    assert len(lines) == 3 and "Traceback" not in log_file.read_text(), lines
    matches = [LINE.match(line) for line in lines]
    assert all(matches), lines
    assert [m.group(1) for m in matches] == ["INFO", "WARNING", "INFO"]
    assert len({m.group(2) for m in matches}) == 3  # a fresh id per request
    done = lines[0][matches[0].end() :]
    assert re.fullmatch(
        r"done in \d+\.\d s: prompt 'a red ball', 2 x 64x48 px, steps 2, seed 5, 0 references, method uno -> "
        r"\S+_a-red-ball_5\.png, \S+_a-red-ball_6\.png",
        done,
    ), done
    assert len(gallery) == 2 and "refused: the prompt is empty" in lines[1]
    assert f"prompt '{'x' * 57}...'" in lines[2]  # a long prompt is cut in the log


class BrokenPipeline:
    """The tiny pipeline, except that generating fails as a bug would."""

    def __init__(self, pipe):
        self._pipe = pipe

    def __getattr__(self, name):
        return getattr(self._pipe, name)

    def __call__(self, *args, **kwargs):
        raise RuntimeError("the denoiser broke")


def test_a_real_fault_logs_its_traceback_once_and_the_page_gets_a_sentence(serve_pipeline, tmp_path, capfd):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    from unoflux.app.ui import configure_logging
    from unoflux.testing import tiny_pipeline

    log_file = tmp_path / "app.log"
    configure_logging(log_file)
    try:
        client = Client(serve_pipeline(BrokenPipeline(tiny_pipeline())), verbose=False)
        capfd.readouterr()
        with pytest.raises(AppError) as error:
            predict(client)
        err = capfd.readouterr().err
    finally:
        configure_logging()
    (request_id,) = re.findall(r"request ([0-9a-f]{6})\)", str(error.value))
    assert str(error.value).startswith("internal error (RuntimeError: the denoiser broke); the server log has")
    text = log_file.read_text()
    assert text.count("Traceback") == 1 and f"ERROR unoflux.app: request {request_id} failed: RuntimeError" in text
    assert err.count("Traceback") == 1  # on the terminal once too, not again from Gradio


def test_a_log_file_that_cannot_be_written_is_refused_before_the_model_loads(tmp_path, capsys, free_port):
    from unoflux.cli import main

    argv = ["app", "--log-file", str(tmp_path), "--port", str(free_port()), "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    assert (
        capsys.readouterr().err.strip() == f"unoflux: error: --log-file {str(tmp_path)!r} is a folder; give a file path"
    )
