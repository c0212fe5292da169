#!/usr/bin/env bash
# What `make test` needs besides the venv, each set up when missing (as root, with apt):
#   headless Chromium             .ci/setup-browser.sh    the report's browser test
#   root and runc                                         the isolated and rootfs tests
#   a Docker engine, the images   .ci/build-images.sh     container, isolated and rootfs tests
# What cannot be set up is said in one sentence with its fix. With CI=true any of it fails
# `make test` here, before pytest, repeating those sentences (in CI nothing may skip); elsewhere the
# tests that need it skip, each saying why.
set -uo pipefail
cd "$(dirname "$0")/.."
who="make test"
# shellcheck source=lib.sh
. .ci/lib.sh

problems=()
errors=$(mktemp)
trap 'rm -f "$errors"' EXIT
attempt() {  # attempt COMMAND...: run it; when it fails, keep the last line it wrote on stderr
    local rc=0
    "$@" 2>"$errors" || rc=$?
    cat "$errors" >&2
    [ "$rc" = 0 ] || problems+=("$(awk 'NF {line = $0} END {print line}' "$errors")")
}
runc_for_tests() {
    is_root || die "the isolated and rootfs tests need root (runc, chroot): run 'sudo make test' to include them."
    need_tools "the isolated-arm tests" runc:runc
}

attempt bash .ci/setup-browser.sh
attempt bash -c "$(declare -f runc_for_tests); who='make test'; . .ci/lib.sh; runc_for_tests"
attempt bash .ci/build-images.sh

[ "${#problems[@]}" -eq 0 ] && exit 0
if [ "${CI:-}" = true ]; then
    echo "make test: CI=true, so no test may skip, and ${#problems[@]} of its needs could not be met:" >&2
    printf '  %s\n' "${problems[@]}" >&2
    exit 1
fi
echo "make test: the tests that need the following will skip, each saying why:"
printf '  %s\n' "${problems[@]}"
exit 0
