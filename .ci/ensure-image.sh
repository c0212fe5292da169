#!/usr/bin/env bash
# For `make run`: make the container arm possible, as far as this machine allows.
#   * no Docker engine answering: .ci/docker-setup.sh (as root it installs docker.io and runc with apt
#     and starts dockerd in the background);
#   * no image $BENCHLIB_IMAGE (benchlib:latest): with an NVIDIA GPU, `benchlib image build` FROM
#     NVIDIA's NGC PyTorch image; without one, .ci/build-images.sh (a local Debian + CPU torch base,
#     debootstrap installed when missing).
# It never fails `make run`: what it cannot do it says in one sentence, and the runner's preflight
# then skips the container arm, saying why again, and the run's answer names it.
set -uo pipefail
cd "$(dirname "$0")/.."
who="make run"
# shellcheck source=lib.sh
. .ci/lib.sh
image=${BENCHLIB_IMAGE:-benchlib:latest}

skip() { echo "note: the container arm will be skipped: $*" >&2; exit 0; }

if ! timeout 10 docker info >/dev/null 2>&1; then
    # docker-setup.sh says why in one sentence on stderr (not root, no permission, no network, ...).
    bash .ci/docker-setup.sh || skip "see the line above."
fi
timeout 30 docker image inspect "$image" >/dev/null 2>&1 && exit 0
if nvidia-smi -L >/dev/null 2>&1; then
    say "building $image FROM NVIDIA's NGC PyTorch image (benchlib image build) ..."
    "${VENV:-.venv}/bin/benchlib" image build --tag "$image" || skip "building $image failed (the lines above say why)."
else
    say "building $image FROM a local Debian + CPU torch base (.ci/build-images.sh; a few minutes the first time) ..."
    BENCHLIB_IMAGE="$image" bash .ci/build-images.sh || skip "building $image failed (the lines above say why)."
fi
