#!/usr/bin/env bash
# The real-browser UI test (tests/test_ui_browser.py) drives Debian's chromium with Playwright (from
# requirements-dev.txt). Never `playwright install` (no browser downloads): the test launches /usr/bin/chromium.
# Needs root (or sudo) for apt.
set -euo pipefail
if [ ! -x /usr/bin/chromium ]; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
fi
