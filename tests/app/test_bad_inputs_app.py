"""The bad-input corpus (tests/test_bad_inputs.py) through the web app's API: each refusal is one sentence naming the
value, in the page and in one server log line, no traceback, no file written, and the server keeps serving."""

from __future__ import annotations

import re

import pytest
from PIL import Image
from tests.test_bad_inputs import png_header_only

TINY = dict(width=64, height=48, steps=2)


def generate(client, prompt="a red ball", **form):
    return client.predict(prompt=prompt, **{**TINY, **form}, api_name="/generate")


# (form fields, the sentence's expected part)
FORM_CASES = {
    "nul-prompt": (dict(prompt="a red\x00 ball"), "the prompt has the character '\\x00' at position 6"),
    "blank-prompt": (dict(prompt=" \n "), "the prompt is empty"),
    "width-0": (dict(width=0), "width 0 is out of range; use an integer from 16 to 2048"),
    "height-huge": (dict(height=100_000), "height 100000 is out of range"),
    "steps-absurd": (dict(steps=1_000_000), "steps 1000000 is out of range; use an integer from 1 to 1000"),
    "steps-fraction": (dict(steps=2.5), "steps 2.5 must be a whole number"),
    "seed-negative": (dict(seed=-1), "seed -1 is out of range"),
    "seed-overflow": (dict(seed=2**70), f"seed {2**70} is out of range"),
    "images-0": (dict(num_images=0), "number of images 0 must be a positive integer"),
    "method": (dict(method="magic"), "method 'magic' is not one of: uno, uso, dreamo"),
    "position-mode": (dict(position_mode="spiral"), "position mode 'spiral' is not one of"),
    "long-side": (dict(reference_long_side="4"), "reference long side 4 is out of range"),
}
# (upload file name, how to make it, the sentence's expected part)
UPLOAD_CASES = {
    "zero-byte": ("zero.png", lambda p: p.write_bytes(b""), "reference image 1 'zero.png' cannot be read as an image"),
    "1x1": ("one.png", lambda p: Image.new("RGB", (1, 1)).save(p), "'one.png' is 1x1; both sides must be at least 16"),
    "header-bomb": (
        "bomb.png",
        lambda p: p.write_bytes(png_header_only(100_000, 100_000)),
        "'bomb.png' is too large to decode safely",
    ),
}


def outputs(folder):
    return sorted(p for p in folder.rglob("*") if p.is_file())


def refused(client, app_server, caplog, form, expected):
    from gradio_client.exceptions import AppError

    before = outputs(app_server[1])
    with caplog.at_level("WARNING", logger="unoflux.app"), pytest.raises(AppError) as error:
        generate(client, **form)
    message = str(error.value)
    assert expected in message and "\n" not in message and "Traceback" not in message
    logged = [r.getMessage() for r in caplog.records if r.name == "unoflux.app"]
    assert len(logged) == 1 and re.match(r"request [0-9a-f]{6} refused: ", logged[0]) and expected in logged[0]
    assert outputs(app_server[1]) == before  # nothing written, not even the upload's kept copy


@pytest.mark.parametrize("case", list(FORM_CASES))
def test_the_app_refuses_bad_settings_in_one_sentence(case, client, app_server, caplog):
    form, expected = FORM_CASES[case]
    refused(client, app_server, caplog, form, expected)


@pytest.mark.parametrize("case", list(UPLOAD_CASES))
def test_the_app_refuses_bad_uploads_in_one_sentence(case, client, app_server, caplog, tmp_path):
    from gradio_client import handle_file

    name, make, expected = UPLOAD_CASES[case]
    make(tmp_path / name)
    refused(client, app_server, caplog, dict(reference_1=handle_file(tmp_path / name)), expected)


def test_the_app_still_serves_after_the_corpus(client):
    gallery, _, _ = generate(client, prompt="ein Würfel 🎲 au café")
    assert Image.open(gallery[0]["image"]).size == (64, 48)


@pytest.mark.parametrize("where", ["outside", "traversal"])
def test_a_path_the_client_names_is_never_opened(client, app_server, caplog, tmp_path, where):
    """A request names its upload by a path, and a raw payload skips Gradio's own check: one that is not in Gradio's
    upload cache (a file elsewhere on the server, or a path climbing out of the cache) is refused, and nothing of it
    is read, copied into the output folder or served."""
    from gradio.utils import get_upload_folder

    secret = tmp_path / "private.png"
    Image.new("RGB", (32, 32), "red").save(secret)
    path = str(secret) if where == "outside" else f"{get_upload_folder()}/../../{secret}"
    form = dict(reference_1={"path": path})  # no FileData meta: gradio_client sends it as it is, not uploaded
    refused(client, app_server, caplog, form, "'private.png' is not a file uploaded to this app; send the image itself")
