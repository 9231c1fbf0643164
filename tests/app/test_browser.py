"""The app driven by a real headless Chromium (Debian's, through Playwright): upload, type, generate,
and check the image that comes back. Skipped, with the reason shown, only where no browser can be had."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
from PIL import Image

from unoflux.images import SETTINGS_KEY, read_settings

CHROMIUM = Path("/usr/bin/chromium")  # Debian's; `playwright install` would download one from the internet
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 60_000


def expect(locator):
    """Playwright's auto-retrying assertion (imported late: playwright is optional), waiting as long as the
    page's actions do: its own 5 s default is less than one generation on a busy 2-core machine."""
    from playwright.sync_api import expect as playwright_expect

    playwright_expect.set_options(timeout=TIMEOUT_MS)
    return playwright_expect(locator)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A Chromium context with a fresh profile."""
    if not CHROMIUM.is_file():
        pytest.skip(f"no browser: {CHROMIUM} is missing; run scripts/install_browser.sh as root (Debian's chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="no playwright: pip install -e '.[test]'")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 960},
        )
        context.set_default_timeout(TIMEOUT_MS)
        yield context
        context.close()


@pytest.fixture
def page(browser, app_server):
    """The app's page; every request the page makes is recorded in ``page.hosts``."""
    page = browser.new_page()
    page.hosts = set()
    page.on("request", lambda request: page.hosts.add(urlparse(request.url).netloc))
    page.goto(app_server[0])
    page.locator("#generate").wait_for()
    yield page
    page.close()


def set_slider(page, label: str, value: int) -> None:
    box = page.get_by_label(f"number input for {label}")
    box.fill(str(value))
    box.press("Enter")


def upload_reference(page, slot: int, path: Path) -> None:
    page.locator(f"#reference-{slot} input[type=file]").set_input_files(path)


def test_generate_in_the_browser(page, app_server, examples, artifacts_dir):
    upload_reference(page, 1, examples / "red_striped_diamond.png")
    page.locator("#reference-1 img").wait_for()  # the upload has landed
    page.locator("#prompt textarea").fill("a red ball on a wooden table")
    set_slider(page, "Width", 64)
    set_slider(page, "Height", 48)
    set_slider(page, "Steps", 2)
    page.locator("#generate").click()

    result = page.locator("#results img").first
    result.wait_for()
    png = page.request.get(result.get_attribute("src")).body()
    image = Image.open(io.BytesIO(png))
    assert (image.format, image.size) == ("PNG", (64, 48))
    assert '"prompt": "a red ball on a wooden table"' in image.text[SETTINGS_KEY]  # the PNG carries its settings
    expect(page.locator("#command textarea")).to_have_value(re.compile(r"--ref .* --width 64 --height 48 --steps 2 "))
    expect(page.locator("#status")).to_contain_text("64 x 48 px")  # the gallery may show it larger; this says its size
    page.screenshot(path=artifacts_dir / "app-after-generation.png", full_page=True)
    assert page.hosts == {urlparse(app_server[0]).netloc}, "the page reached beyond the local server"


def test_a_corrupt_upload_is_named_once_at_upload_time_and_cleared(page, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_text("this is a text file, not a picture")
    upload_reference(page, 1, broken)
    # before any Generate: the status line names the file once, and the slot is empty again
    status = page.locator("#status")
    expect(status).to_contain_text("reference image 1 'broken.png' cannot be read as an image", timeout=TIMEOUT_MS)
    assert status.inner_text().count("broken.png") == 1
    expect(page.locator("#reference-1 img")).to_have_count(0)
    page.locator("#prompt textarea").fill("a red ball")
    set_slider(page, "Width", 32)
    set_slider(page, "Height", 32)
    set_slider(page, "Steps", 1)
    page.locator("#generate").click()  # the cleared slot does not hold the generation up
    expect(status).to_contain_text("Saved 1 image")


def test_an_example_fills_the_form(page, examples):
    two_references = next(e for e in json.loads((examples / "examples.json").read_text()) if len(e["references"]) == 2)
    assert len(two_references["prompt"]) > 100
    row = page.locator("#examples").get_by_text(two_references["prompt"], exact=True)  # the whole prompt, not cut
    expect(row).to_be_visible()
    row.click()
    expect(page.locator("#prompt textarea")).to_have_value(two_references["prompt"])
    page.locator("#reference-2 img").wait_for()
    expect(page.locator("#reference-3 img")).to_have_count(0)


def test_generate_with_advanced_open_leaves_the_time_shift_to_the_model(page):
    page.get_by_role("button", name="Advanced").click()
    time_shift = page.locator("#time-shift input, #time-shift textarea").first
    time_shift.wait_for()
    expect(time_shift).to_have_value("")  # blank: the model's (not a 0 the model would refuse)
    page.locator("#prompt textarea").fill("a red ball")
    set_slider(page, "Width", 32)
    set_slider(page, "Height", 32)
    set_slider(page, "Steps", 1)
    page.locator("#generate").click()
    expect(page.locator("#status")).to_contain_text("Saved 1 image")
    assert page.locator("#results img").count() == 1


def test_a_random_seed_is_written_back_into_the_seed_box(page):
    seed_box = page.locator("#seed input")
    page.get_by_label("Random seed").check()
    page.locator("#prompt textarea").fill("a red ball")
    set_slider(page, "Width", 32)
    set_slider(page, "Height", 32)
    set_slider(page, "Steps", 1)
    page.locator("#generate").click()
    expect(page.locator("#status")).to_contain_text("Saved 1 image")
    seed = re.search(r"\(seed (\d+)\)", page.locator("#status").inner_text()).group(1)
    expect(seed_box).to_have_value(seed)  # the next run (Random seed unticked) can repeat it


def test_a_full_queue_tells_the_page_it_is_busy(browser, serve_pipeline):
    """One generation running and one waiting fill a --max-queue 1 app: the page's Generate is refused with Gradio's
    own words (docs/app.md quotes them; the page cannot say "Queue is full", its text is built into Gradio's page)."""
    import threading

    from gradio_client import Client
    from gradio_client.utils import Status

    from unoflux.testing import tiny_pipeline

    gate = threading.Event()
    pipe = tiny_pipeline()

    def gated(*args, **kwargs):
        gate.wait(timeout=60)
        return pipe(*args, **kwargs)

    class Gated:  # the tiny pipeline, held at its first call until the page has been refused
        def __getattr__(self, name):
            return getattr(pipe, name)

        __call__ = staticmethod(gated)

    url = serve_pipeline(Gated(), concurrency=1, max_queue=1)
    tiny = dict(width=32, height=32, steps=1)
    jobs = [Client(url, verbose=False).submit(prompt=f"ball {i}", **tiny, api_name="/generate") for i in range(2)]
    page = browser.new_page()
    try:
        while any(job.status().code in (Status.STARTING, Status.JOINING_QUEUE) for job in jobs):
            page.wait_for_timeout(50)  # until one runs and one waits
        page.goto(url)
        page.locator("#prompt textarea").fill("a red ball")
        page.locator("#generate").click()
        expect(page.get_by_text("This application is currently busy").first).to_be_visible()
    finally:
        gate.set()
        page.close()
    assert all(job.result(timeout=60)[0] for job in jobs)  # the queued requests still get their images


def test_the_reference_long_side_label_gives_the_models_own_sizes(browser, serve_pipeline):
    from unoflux.testing import tiny_pipeline

    pipe = tiny_pipeline()
    pipe.reference_long_sides = (128, 80)  # as the embedded model's unoflux.json sets them
    page = browser.new_page()
    try:
        page.goto(serve_pipeline(pipe))
        page.get_by_role("button", name="Advanced").click()
        expect(page.get_by_text("Reference long side (auto: 128 for one reference, 80 for several)")).to_be_visible()
        page.locator("#reference-long-side input").click()
        expect(page.get_by_role("option", name="128", exact=True)).to_be_visible()  # and offered in the list
    finally:
        page.close()


def test_dropping_a_saved_png_fills_the_form(page, tmp_path):
    page.locator("#prompt textarea").fill("a green cone in the snow")
    set_slider(page, "Width", 48)
    set_slider(page, "Height", 32)
    set_slider(page, "Steps", 3)
    page.locator("#seed input").fill("4242")
    page.get_by_role("button", name="Advanced").click()
    # The accordion mounts its fields as it opens: wait for them, type, leave each box, and see the typed value
    # stay before Generate reads the form (a fill racing the mount was lost once in a full run).
    time_shift = page.locator("#time-shift input, #time-shift textarea").first
    negative = page.locator("#negative-prompt textarea, #negative-prompt input").first
    for box, text in ((time_shift, "2.5"), (negative, "a blurry picture")):
        box.wait_for(state="visible")
        box.fill(text)
        box.press("Tab")
        expect(box).to_have_value(text)
    page.locator("#generate").click()
    result = page.locator("#results img").first
    result.wait_for()
    saved = tmp_path / "saved.png"
    saved.write_bytes(page.request.get(result.get_attribute("src")).body())
    assert read_settings(saved)["time_shift"] == 2.5  # what the form sent (else the loading below proves nothing)

    page.reload()  # a fresh form, at the defaults
    page.locator("#generate").wait_for()
    page.get_by_label("Random seed").check()
    page.locator("#load-settings input[type=file]").set_input_files(saved)
    expect(page.locator("#status")).to_contain_text("Loaded the settings of 'saved.png' (seed 4242).")
    expect(page.locator("#prompt textarea")).to_have_value("a green cone in the snow")
    expect(page.get_by_label("number input for Width")).to_have_value("48")
    expect(page.get_by_label("number input for Height")).to_have_value("32")
    expect(page.get_by_label("number input for Steps")).to_have_value("3")
    expect(page.locator("#seed input")).to_have_value("4242")
    expect(page.get_by_label("Random seed")).not_to_be_checked()  # the loaded seed is the one used
    page.get_by_role("button", name="Advanced").click()
    expect(page.locator("#time-shift input, #time-shift textarea").first).to_have_value("2.5")
    expect(page.locator("#negative-prompt textarea, #negative-prompt input").first).to_have_value("a blurry picture")


def test_dropping_a_png_without_settings_says_so(page, tmp_path):
    plain = tmp_path / "holiday.png"
    Image.new("RGB", (32, 32), "white").save(plain)
    page.locator("#prompt textarea").fill("kept as typed")
    page.locator("#load-settings input[type=file]").set_input_files(plain)
    expect(page.locator("#status")).to_contain_text("'holiday.png' carries no unoflux settings")
    expect(page.locator("#prompt textarea")).to_have_value("kept as typed")


def test_dropping_a_saved_png_brings_back_its_references(page, examples, tmp_path):
    upload_reference(page, 1, examples / "red_striped_diamond.png")
    page.locator("#prompt textarea").fill("a red diamond on the beach")
    set_slider(page, "Steps", 2)
    page.locator("#generate").click()
    result = page.locator("#results img").first
    result.wait_for()
    saved = tmp_path / "with-reference.png"
    saved.write_bytes(page.request.get(result.get_attribute("src")).body())
    assert len(read_settings(saved)["references"]) == 1  # the app's kept copy, inside its --out folder

    page.reload()
    page.locator("#generate").wait_for()
    expect(page.locator("#reference-1 img")).to_have_count(0)  # a fresh form: no reference
    page.locator("#load-settings input[type=file]").set_input_files(saved)
    expect(page.locator("#status")).to_contain_text(
        "Loaded the settings of 'with-reference.png' (seed 3407) and its 1 reference."
    )
    expect(page.locator("#reference-1 img")).to_be_visible()
    expect(page.locator("#reference-2 img")).to_have_count(0)
    page.locator("#generate").click()  # the restored reference is a file the page was sent: Generate takes it
    expect(page.locator("#status")).to_contain_text("Saved 1 image")


def test_an_example_generates(page, examples):
    """An example's references reach Generate as files the page was sent (Gradio's cache), which it accepts."""
    page.locator("#examples").get_by_text("diamond", exact=False).first.click()
    page.locator("#reference-1 img").wait_for()
    set_slider(page, "Steps", 2)
    page.locator("#generate").click()
    expect(page.locator("#status")).to_contain_text("Saved 1 image")


def test_ticking_fast_mode_moves_the_steps_slider_and_unticking_moves_it_back(page):
    from unoflux.app.ui import fast_mode_steps

    steps_box = page.get_by_label("number input for Steps")
    model_steps = int(steps_box.input_value())
    page.get_by_label("Fast mode").check()
    expect(steps_box).to_have_value(str(fast_mode_steps(True, model_steps, model_steps)))
    page.get_by_label("Fast mode").uncheck()
    expect(steps_box).to_have_value(str(model_steps))
