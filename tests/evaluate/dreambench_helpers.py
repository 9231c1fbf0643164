"""Where the tests find the shared DreamBench folder (24 downscaled subjects)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# $DREAMBENCH, else ../shared/dreambench/dataset beside the checkout (where the project keeps it)
DREAMBENCH = Path(os.environ.get("DREAMBENCH") or REPO.parent / "shared" / "dreambench" / "dataset")
needs_dreambench = pytest.mark.skipif(
    not (DREAMBENCH / "prompts_and_classes.txt").is_file(),
    reason=f"no DreamBench folder at {DREAMBENCH} (set DREAMBENCH to a DreamBooth-layout folder)",
)


CHROMIUM = Path("/usr/bin/chromium")  # Debian's (scripts/install_browser.sh)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"]
