#!/usr/bin/env bash
# For `make run`: make sure the container arm's image exists when a container engine answers.
# It never fails `make run`: without an engine or an image, the runner's preflight skips the
# container arm and says why and which command enables it.
set -uo pipefail
cd "$(dirname "$0")/.."
image=${BENCHLIB_IMAGE:-benchlib:latest}
if ! docker info >/dev/null 2>&1; then
    echo "note: no Docker engine answers here; the container arm will be skipped (start dockerd, or 'make images' as root)."
    exit 0
fi
docker image inspect "$image" >/dev/null 2>&1 && exit 0
if nvidia-smi -L >/dev/null 2>&1; then
    echo "building $image FROM NVIDIA's NGC PyTorch image (benchlib image build) ..."
    .venv/bin/benchlib image build --tag "$image" && exit 0
else
    echo "building $image FROM a local Debian + CPU torch base (.ci/build-images.sh) ..."
    BENCHLIB_IMAGE="$image" bash .ci/build-images.sh && exit 0
fi
echo "note: could not build $image; the container arm will be skipped."
exit 0
