"""Retake docs/images/app.png: the web app on the embedded model after one generation, in headless Chromium.

    .venv/bin/python scripts/app_screenshot.py [--prompt "..."] [--out docs/images/app.png]

Starts `unoflux app` on a free loopback port, types the prompt, generates two images and saves a
full-page screenshot. Needs Debian's chromium (scripts/install_browser.sh) and playwright.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"the app did not answer at {url} within {timeout:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", default="a large red star in the center on a sunny beach")
    parser.add_argument("--out", type=Path, default=Path("docs/images/app.png"))
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "unoflux", "app", "--port", str(port), "--out", "outputs/app-shot"]
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until_up(url)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 960})
            page.goto(url)
            page.locator("#prompt textarea").fill(args.prompt)
            images = page.get_by_label("number input for Number of images")
            images.fill("2")
            images.press("Enter")
            page.locator("#generate").click()
            page.locator("#results img").nth(1).wait_for(timeout=120_000)
            time.sleep(1)  # let the gallery finish laying out
            page.screenshot(path=str(args.out), full_page=True)
            browser.close()
        print(args.out)
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
