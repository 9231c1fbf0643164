"""The app's endpoint through gradio_client, as the README shows it; bad uploads get clear errors."""

from __future__ import annotations

import re

import pytest
from PIL import Image

from unoflux.images import read_settings

TINY = dict(width=64, height=48, steps=2)


def generate(client, prompt="a red ball", **form):
    return client.predict(prompt=prompt, **{**TINY, **form}, api_name="/generate")


def test_api_generates_pngs_with_settings_and_a_cli_command(client, app_server, examples):
    from gradio_client import handle_file

    gallery, command, status = generate(
        client,
        reference_1=handle_file(examples / "red_striped_diamond.png"),
        reference_2=handle_file(examples / "orange_dotted_diamond.png"),
        seed=11,
        num_images=2,
    )
    assert len(gallery) == 2
    for j, item in enumerate(gallery):
        image = Image.open(item["image"])
        assert (image.format, image.size) == ("PNG", (64, 48))
        settings = read_settings(item["image"])  # the download keeps the metadata
        assert (settings["seed"], len(settings["references"])) == (11 + j, 2)
    assert command.startswith("unoflux generate --prompt 'a red ball' --ref ")
    assert "--seed 11 --num-images 2" in command and f"--out {app_server[1]}" in command
    assert "seed 11" in status


def test_random_seed_is_reported(client):
    gallery, command, status = generate(client, random_seed=True)
    seed = read_settings(gallery[0]["image"])["seed"]
    assert f"--seed {seed} " in command and f"seed {seed}" in status


def test_true_cfg_and_negative_prompt_reach_the_pngs_and_the_command(client):
    gallery, command, _ = generate(client, true_cfg=2.5, negative_prompt="a blue cube")
    settings = read_settings(gallery[0]["image"])
    assert (settings["true_cfg"], settings["negative_prompt"]) == (2.5, "a blue cube")
    assert "--true-cfg 2.5 --negative-prompt 'a blue cube'" in command


def test_a_time_shift_reaches_the_pngs_and_the_command_and_a_bad_one_is_refused(client):
    from gradio_client.exceptions import AppError

    gallery, command, _ = generate(client, time_shift=7.5)
    settings = read_settings(gallery[0]["image"])
    assert (settings["time_shift"], settings["schedule"]) == (7.5, None) and "--time-shift 7.5" in command
    gallery, command, _ = generate(client, schedule="flux")  # no shift given: the schedule's rule
    assert read_settings(gallery[0]["image"])["schedule"] == "flux" and "--time-shift" not in command
    with pytest.raises(AppError, match="time shift -2.0 must be a positive number"):
        generate(client, time_shift=-2)


def test_the_time_shift_box_takes_text(client):
    """The page's time shift is a text box (a number box showed 0 for "the model's"): blank or a number."""
    from gradio_client.exceptions import AppError

    gallery, command, _ = generate(client, time_shift="")
    assert read_settings(gallery[0]["image"])["time_shift"] is None and "--time-shift" not in command
    gallery, command, _ = generate(client, time_shift=" 2.5 ")
    assert read_settings(gallery[0]["image"])["time_shift"] == 2.5 and "--time-shift 2.5" in command
    with pytest.raises(AppError, match="time shift 'fast' must be a number, or blank for the default"):
        generate(client, time_shift="fast")


def test_stochasticity_reaches_the_pngs_and_the_command(client):
    gallery, command, _ = generate(client, stochasticity=0.5)
    assert read_settings(gallery[0]["image"])["stochasticity"] == 0.5 and "--stochasticity 0.5" in command


def bomb(path):
    """A few kilobytes on disk, 81 megapixels once decoded."""
    Image.new("1", (9000, 9000)).save(path)
    return path


@pytest.mark.parametrize(
    "make_upload, message",
    [
        (
            lambda d: (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated") and d / "broken.png",
            "reference image 1 'broken.png' cannot be read as an image",
        ),
        (
            lambda d: (d / "notes.txt").write_text("not an image") and d / "notes.txt",
            "reference image 1 'notes.txt' cannot be read as an image",
        ),
        (
            lambda d: bomb(d / "bomb.png"),
            r"is 9000x9000 \(81 megapixels\); this app takes uploads of at most 40 megapixels",
        ),
        (lambda d: (d / "big.png").write_bytes(b"\0" * 1_100_000) and d / "big.png", "exceeds the maximum file size"),
    ],
    ids=["corrupt", "wrong-type", "decompression-bomb", "over-upload-limit"],
)
def test_bad_upload_gets_a_clear_error_and_the_server_keeps_serving(client, tmp_path, make_upload, message):
    from gradio_client import handle_file

    upload = make_upload(tmp_path)
    with pytest.raises(Exception, match=message) as refused:
        generate(client, reference_1=handle_file(upload))
    assert str(refused.value).count(upload.name) <= 1  # the file is named once (not again in Pillow's detail)
    gallery, _, _ = generate(client)  # the next request is served as usual
    assert Image.open(gallery[0]["image"]).size == (64, 48)


def test_bad_settings_get_a_clear_error(client):
    with pytest.raises(Exception, match="the prompt is empty"):
        generate(client, prompt="  ")
    with pytest.raises(Exception, match="reference long side 'huge' must be 'auto' or a whole number"):
        generate(client, reference_long_side="huge")
    with pytest.raises(Exception, match="seed None must be a whole number"):
        generate(client, seed=None)  # the seed box left empty


def test_the_api_is_one_endpoint_with_three_outputs(client):
    """The seed the page copies into its Seed box travels in a state, invisible here: callers that unpack
    (gallery, command, status) keep working."""
    api = client.view_api(print_info=False, return_format="dict")
    assert list(api["named_endpoints"]) == ["/generate"] and not api["unnamed_endpoints"]
    assert len(api["named_endpoints"]["/generate"]["returns"]) == 3


def test_a_refused_request_logs_one_line_and_no_traceback(client, caplog, capfd):
    from gradio_client.exceptions import AppError

    capfd.readouterr()  # what earlier tests left
    with caplog.at_level("WARNING", logger="unoflux.app"), pytest.raises(AppError, match="the prompt is empty"):
        generate(client, prompt="  ")
    records = [r for r in caplog.records if r.name == "unoflux.app"]
    assert [r.levelname for r in records] == ["WARNING"]
    assert re.match(r"request [0-9a-f]{6} refused: the prompt is empty", records[0].getMessage())
    assert "Traceback" not in capfd.readouterr().err


def test_the_guidance_knobs_reach_the_settings_and_the_cli_line(client):
    """First-step guidance, negative guidance and the true-CFG window (DreamO's knobs, for every method): text boxes,
    blank = the default; a value reaches the PNG's settings and the copied command."""
    gallery, command, _ = generate(
        client, first_step_guidance="2.5", negative_guidance="3.5", true_cfg_start="1", true_cfg_end="2", true_cfg=2.0
    )
    settings = read_settings(gallery[0]["image"])
    assert (settings["first_step_guidance"], settings["negative_guidance"]) == (2.5, 3.5)
    assert (settings["true_cfg_start"], settings["true_cfg_end"]) == (1, 2)
    assert "--first-step-guidance 2.5" in command and "--negative-guidance 3.5" in command
    assert "--true-cfg-start 1 --true-cfg-end 2" in command
    gallery, command, _ = generate(client)  # blank: defaults, and nothing in the command
    settings = read_settings(gallery[0]["image"])
    assert settings["first_step_guidance"] is None and "--true-cfg-start" not in command
    assert settings["schedule"] == "uno"  # the page leaves the schedule to the method: UNO's rule


def test_an_upload_past_the_apps_pixel_limit_is_refused_at_generate(serve_pipeline, tmp_path):
    """--max-upload-megapixels, checked from the header before decoding (the page's slot checks it at upload too)."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    from unoflux.testing import tiny_pipeline

    client = Client(serve_pipeline(tiny_pipeline(), max_upload_megapixels=0.002), verbose=False)
    Image.new("RGB", (48, 48)).save(tmp_path / "fits.png")  # 2304 px
    Image.new("RGB", (40, 40)).save(tmp_path / "small.png")  # 1600 px
    with pytest.raises(AppError, match=r"style reference image 2 'fits.png' is 48x48 \(0.0023 megapixels\); this app"):
        generate(client, reference_1=handle_file(tmp_path / "small.png"), style_1=handle_file(tmp_path / "fits.png"))
    gallery, _, _ = generate(client, reference_1=handle_file(tmp_path / "small.png"))
    assert len(gallery) == 1
