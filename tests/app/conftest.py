"""Fixtures for the web-app tests: a tiny random FLUX saved as a diffusers folder, and the app served
from it on a free loopback port through the same code path as `unoflux app --model DIR`."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

pytest.importorskip("gradio", reason="the web app needs Gradio: pip install -e '.[app]'")
pytest.importorskip("gradio_client", reason="the API tests need gradio_client: pip install -e '.[app]'")


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests leave files for people to look at (outputs/ is git-ignored)."""
    folder = Path(__file__).parents[2] / "outputs" / "test-artifacts"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def examples() -> Path:
    """The bundled example references (package data, shared with `unoflux demo`)."""
    from unoflux.demo import EXAMPLES_DIR

    return EXAMPLES_DIR


def pytest_configure(config):
    # Gradio's in-process queue statistics use a pandas idiom pandas 3 deprecates; not ours to fix.
    config.addinivalue_line("filterwarnings", "ignore::Warning:gradio.queueing")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def free_port():
    """``free_port()``: a loopback port nothing listens on."""
    return _free_port


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from unoflux.pipeline import UnoFluxPipeline
    from unoflux.testing import tiny_components

    folder = tmp_path_factory.mktemp("tiny-flux")
    UnoFluxPipeline(**tiny_components()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def app_args():
    """``app_args(model_dir, out_dir, *flags)``: parsed `unoflux app` flags on a free port, exactly as
    the command line gives them."""
    from unoflux.cli import build_parser

    def parse(model_dir: Path, out_dir: Path, *flags: str):
        argv = ["app", "--model", str(model_dir), "--out", str(out_dir), "--port", str(_free_port()), *flags]
        return build_parser().parse_args(argv)

    return parse


@pytest.fixture(scope="session")
def app_server(tiny_model_dir, app_args, tmp_path_factory):
    """The app as `unoflux app --model DIR --max-upload 1mb` serves it; yields (url, output folder)."""
    from unoflux.app.cli import serve

    out_dir = tmp_path_factory.mktemp("app-out")
    args = app_args(tiny_model_dir, out_dir, "--max-upload", "1mb")
    demo = serve(args, block=False)
    yield f"http://127.0.0.1:{args.port}/", out_dir
    demo.close()


@pytest.fixture(scope="session")
def client(app_server):
    from gradio_client import Client

    return Client(app_server[0], verbose=False)


@pytest.fixture
def serve_pipeline(tmp_path):
    """``serve_pipeline(pipe, **build_app_options) -> url``: the app on ``pipe`` (e.g. a wrapped tiny
    pipeline) on a free loopback port, closed after the test."""
    from unoflux.app.ui import build_app, launch

    running = []

    def serve(pipe, **options) -> str:
        demo = build_app(pipe, {"model": "tiny"}, tmp_path, **options)
        port = _free_port()
        launch(demo, tmp_path, port=port, block=False)
        running.append(demo)
        return f"http://127.0.0.1:{port}/"

    yield serve
    for demo in running:
        demo.close()
