#!/usr/bin/env bash
# Headless Chromium for the report's browser test (Debian's package). Installs it when missing and we
# are root with apt; otherwise says what to do. Exits non-zero only when it tried and failed.
set -uo pipefail
for candidate in "${CHROMIUM:-}" chromium chromium-browser google-chrome; do
    [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 && exit 0
done
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's chromium for the browser test ..."
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/tmp/benchlib-chromium-install.log 2>&1 \
        || { tail -n 5 /tmp/benchlib-chromium-install.log >&2; echo "error: apt-get install chromium failed (log above)." >&2; exit 1; }
    exit 0
fi
echo "note: no Chromium here and not root: install it (Debian: apt-get install chromium) to run the browser test."
exit 0
