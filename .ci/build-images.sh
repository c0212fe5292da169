#!/usr/bin/env bash
# Build the images the Docker tests and the `container` arm use, from scratch on a fresh CI machine:
#   1. .ci/docker-setup.sh   a running Docker engine (installs/starts it when needed)
#   2. .ci/base-image.sh     the local stand-in for NGC PyTorch (cached by tag)
#   3. docker build          the project image $BENCHLIB_IMAGE (default benchlib:latest) FROM that base,
#                            with the legacy builder; the layer cache makes a second run quick.
# Prints how long each step took. Environment: BENCHLIB_IMAGE, BENCHLIB_BASE_TAG, CA_BUNDLE.
set -euo pipefail
cd "$(dirname "$0")/.."

image=${BENCHLIB_IMAGE:-benchlib:latest}
base=${BENCHLIB_BASE_TAG:-benchlib-ci-base:bookworm-torch2.13.0}
ca_bundle=${CA_BUNDLE:-${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}}
times=()

step() {  # step NAME COMMAND...: run it, record its wall time
    local name=$1; shift
    local t0=$SECONDS
    echo "== $name"
    "$@"
    times+=("$(printf '%-14s %4ds' "$name" $((SECONDS - t0)))")
}

build_project() {
    . .ci/lib.sh
    who=build-images need_space "$(docker info --format '{{.DockerRootDir}}' 2>/dev/null || echo /var/lib/docker)" 1000 \
        "building $image" "free space there ('docker system prune') or move Docker's data-root to a larger disk"
    # The host's CA bundle lets pip inside the build through a TLS-intercepting proxy (see Dockerfile).
    mkdir -p .ci/cache
    if [ -r "$ca_bundle" ]; then
        cmp -s "$ca_bundle" .ci/cache/pip-ca.crt || cp "$ca_bundle" .ci/cache/pip-ca.crt
    else
        rm -f .ci/cache/pip-ca.crt
    fi
    local version vcs_ref
    version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml | head -n 1)
    vcs_ref=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
    if [ "$vcs_ref" != unknown ] && [ -n "$(git status --porcelain -- benchlib pyproject.toml Dockerfile 2>/dev/null)" ]; then
        vcs_ref="$vcs_ref-dirty"
    fi
    # BUILD_DATE changes every build; it is consumed only by the Dockerfile's last layer.
    DOCKER_BUILDKIT=0 docker build -t "$image" \
        --build-arg BASE_IMAGE="$base" \
        --build-arg PROJECT_VERSION="$version" \
        --build-arg VCS_REF="$vcs_ref" \
        --build-arg BUILD_DATE="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
        .
    docker run --rm --user 1000:1000 "$image" \
        python -c 'import torch, benchlib, papermill; print("image ok: torch", torch.__version__)'
}

step docker-setup bash .ci/docker-setup.sh
step base-image bash .ci/base-image.sh "$base"
step project-image build_project

echo "== times"
printf '  %s\n' "${times[@]}"
echo "built $image FROM $base"
