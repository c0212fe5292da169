#!/usr/bin/env bash
# Headless Chromium for the report's browser test (tests/test_browser.py), Debian's package.
# Present ($CHROMIUM, chromium, chromium-browser, google-chrome[-stable]): nothing to do. Missing: installed
# with apt when we are root; otherwise one sentence naming the install command, and exit 1 (the
# Makefile fails `make test` on it only when CI=true; elsewhere the browser test skips).
set -euo pipefail
who=setup-browser
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

for candidate in "${CHROMIUM:-}" chromium chromium-browser google-chrome google-chrome-stable; do
    [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 && exit 0
done
# Chromium and its libraries take about 300 MB.
APT_NEED_MB=400 apt_install "the report's browser test" chromium
