#!/bin/sh
# Install Debian's Chromium for the app's browser test (tests/app/test_browser.py). Idempotent and never
# fatal: without root or apt-get the browser test is skipped, and pytest prints why.
# `playwright install` is deliberately not used: it downloads browsers from the internet.
BROWSER=/usr/bin/chromium

if [ -x "$BROWSER" ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install_browser: $BROWSER is missing and needs root and apt-get to install; the browser test will be skipped"
    exit 0
fi
echo "install_browser: installing Debian's chromium with apt-get"
log=$(mktemp)
if DEBIAN_FRONTEND=noninteractive apt-get update -qq >"$log" 2>&1 &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >>"$log" 2>&1; then
    echo "install_browser: $("$BROWSER" --version 2>/dev/null)"
else
    tail -n 5 "$log"
    echo "install_browser: apt-get could not install chromium; the browser test will be skipped"
fi
rm -f "$log"
exit 0
