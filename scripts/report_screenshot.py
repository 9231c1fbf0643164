"""Retake docs/images/dreambench_report.png: a DreamBench report (report.html of a run folder) in headless Chromium.

    .venv/bin/python scripts/report_screenshot.py RUN [--out docs/images/dreambench_report.png] [--height 1400]

The run in the docs: `unoflux evaluate dreambench` on the embedded model with tiny random backbones (the command is
in docs/evaluation.md). Needs Debian's chromium (scripts/install_browser.sh) and playwright.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from app_screenshot import CHROMIUM_FLAGS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run folder with report.html (or compare.html with --page)")
    parser.add_argument("--page", default="report.html", help="the page in RUN (default report.html)")
    parser.add_argument("--out", type=Path, default=Path("docs/images/dreambench_report.png"))
    parser.add_argument("--height", type=int, default=1400, help="px of the page's top to keep")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": args.height})
        page.goto((args.run / args.page).resolve().as_uri())
        page.wait_for_load_state("networkidle")
        for img in page.locator("img").all()[:40]:  # lazy images: scroll each of the first ones into view
            img.scroll_into_view_if_needed()
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(args.out), full_page=False)
        browser.close()
    print(args.out)


if __name__ == "__main__":
    main()
