#!/usr/bin/env bash
# Build the CI stand-in for NVIDIA's NGC PyTorch image, cached by tag.
#
#   .ci/base-image.sh [TAG]        (default: $BENCHLIB_BASE_TAG or benchlib-ci-base:bookworm-torch2.13.0)
#
# CI machines cannot pull nvcr.io/nvidia/pytorch (no registry, no GPU), so the project image is built
# FROM a local image that has what the Dockerfile relies on in NGC:
#   * a Python that already has torch (here: the CPU torch 2.13.0 wheel in a venv at /opt/venv, on PATH);
#   * PIP_CONSTRAINT=/etc/pip/constraint.txt pinning that torch (NGC pins ~300 packages there);
#   * PIP_BREAK_SYSTEM_PACKAGES=1 (NGC's system Python is PEP 668 "externally managed");
#   * a non-root user with UID 1000 named `ubuntu` (NGC images are Ubuntu 24.04, which has it).
# Steps: debootstrap a minimal Debian bookworm (python3, venv, pip, ca-certificates) into a temp dir
# outside the repo, `docker import` it as TAG-stage0 (~70 s), then install the torch wheel in a
# throw-away container with the wheel bind-mounted read-only and `docker commit` the result as TAG
# (one layer; neither the 190 MB wheel nor the host CA bundle end up in the image).
# The torch wheel comes from $TORCH_WHEEL, else a torch-2.13.0+cpu-cp311 wheel in a folder of
# $PIP_FIND_LINKS or /opt/wheels, else `pip download` from PyTorch's CPU index ($TORCH_INDEX_URL);
# anything but a +cpu wheel is refused (a CUDA torch would pull GBs of nvidia-* packages).
# Skips everything when `docker image inspect TAG` succeeds; FORCE=1 rebuilds.
# Installs debootstrap with apt when it is missing (root); prints progress every 15 s while
# debootstrap and `docker import` run; refuses with one sentence when the disk is too full.
set -euo pipefail
who=base-image
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

TORCH_VERSION=${TORCH_VERSION:-2.13.0}
tag=${1:-${BENCHLIB_BASE_TAG:-benchlib-ci-base:bookworm-torch${TORCH_VERSION}}}
stage0="${tag}-stage0"
suite=${DEBIAN_SUITE:-bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
ca_bundle=${CA_BUNDLE:-${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}}

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

docker info >/dev/null 2>&1 || die "the Docker engine does not answer: run .ci/docker-setup.sh (as root) first."

if [ "${FORCE:-0}" != 1 ] && have_image "$tag"; then
    say "$tag is present; nothing to do (FORCE=1 rebuilds)."
    exit 0
fi

docker_root=$(docker info --format '{{.DockerRootDir}}' 2>/dev/null || echo /var/lib/docker)
# The base image is ~1.2 GB and the project image adds ~0.5 GB; the rootfs and wheel pass through $TMPDIR.
need_space "$docker_root" 2500 "building the images" "free space there ('docker system prune', 'docker image prune') or move Docker's data-root to a larger disk"
workdir=$(mktemp -d "${TMPDIR:-/var/tmp}/benchlib-base.XXXXXX")
cid=""
cleanup() {
    [ -n "$cid" ] && docker rm -f "$cid" >/dev/null 2>&1 || true
    # debootstrap mounts proc/sys inside the target; never rm -rf through a live mount.
    if [ -d "$workdir" ]; then
        awk -v d="$workdir" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
            umount -l "$m" 2>/dev/null || true
        done
        rm -rf --one-file-system "$workdir"
    fi
}
trap cleanup EXIT

# --- stage 0: a minimal Debian root filesystem, imported as an image -----------------------------
if [ "${FORCE:-0}" != 1 ] && have_image "$stage0"; then
    say "$stage0 is present; reusing it."
else
    is_root || die "building the base image needs root (debootstrap): run 'sudo make images' once (or this script as root), then retry."
    need_tools "the base image" debootstrap:debootstrap
    need_space "$workdir" 1500 "debootstrap of $suite"
    rootfs="$workdir/rootfs"
    t0=$SECONDS
    say "debootstrap $suite into $rootfs (about 1-3 min) ..."
    if ! with_progress debootstrap "$workdir/debootstrap.log" \
            debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
            "$suite" "$rootfs" "$mirror"; then
        tail -n 20 "$workdir/debootstrap.log" >&2
        log=$workdir/debootstrap.log
        grep -qiE 'no space left' "$log" && die "debootstrap ran out of disk space in $workdir: free space there or set TMPDIR to a larger disk, then retry."
        grep -qE "$NETWORK_ERRORS|Couldn't download|Failure trying to run|Release signed by unknown key" "$log" \
            && die "debootstrap could not download $suite from $mirror ($(error_line "$log" "$NETWORK_ERRORS|Couldn't download")): check the network or proxy, or set DEBIAN_MIRROR to a mirror you can reach, and retry."
        die "debootstrap failed ($(error_line "$log")): see the log lines above."
    fi
    # Smaller image: no package lists or downloaded .debs.
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb
    say "importing $rootfs ($(du -sm "$rootfs" | cut -f1) MB) as $stage0 ..."
    with_progress "docker import" "$workdir/import.log" bash -o pipefail -c '
        tar --numeric-owner -C "$1" -c . | docker import --change "ENV LANG=C.UTF-8" --change "CMD [\"/bin/bash\"]" - "$2"' \
        import "$rootfs" "$stage0" \
        || die "docker import of the rootfs failed ($(error_line "$workdir/import.log")); free space in Docker's data-root if it says so, and retry."
    rm -rf --one-file-system "$rootfs"
    say "stage 0 took $((SECONDS - t0))s."
fi

# --- stage 1: torch in a venv, the NGC-like user and pip constraint ------------------------------
ctx="$workdir/ctx"
mkdir -p "$ctx"
wheel=${TORCH_WHEEL:-}
if [ -z "$wheel" ]; then
    # A local wheel for the image's Python (bookworm: 3.11), from PIP_FIND_LINKS's folders or /opt/wheels.
    for dir in ${PIP_FIND_LINKS:-} /opt/wheels; do
        [ -d "$dir" ] || continue
        wheel=$(ls "$dir"/torch-"${TORCH_VERSION}"+cpu-cp311-*.whl 2>/dev/null | head -n 1 || true)
        [ -n "$wheel" ] && break
    done
fi
if [ -n "$wheel" ]; then
    cp "$wheel" "$ctx/"
else
    index=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}
    say "downloading torch==$TORCH_VERSION for Python 3.11 from $index (no local wheel) ..."
    with_progress "pip download torch" "$workdir/pip-download.log" \
        python3 -m pip download "torch==${TORCH_VERSION}" --no-deps --only-binary :all: \
            --python-version 3.11 --platform manylinux_2_28_x86_64 --index-url "$index" -d "$ctx" \
        || die "pip could not download torch==$TORCH_VERSION from $index ($(error_line "$workdir/pip-download.log")): set TORCH_WHEEL to a local torch-${TORCH_VERSION}+cpu-cp311 wheel or TORCH_INDEX_URL to a reachable index."
fi
wheel_name=$(cd "$ctx" && ls torch-*.whl | head -n 1)
case "$wheel_name" in
    *+cpu-*) ;;
    *) die "$wheel_name is not a CPU build of torch: set TORCH_WHEEL to a torch-${TORCH_VERSION}+cpu wheel (a CUDA torch pulls GBs of packages).";;
esac
[ -r "$ca_bundle" ] && cp "$ca_bundle" "$ctx/ca.crt"

t1=$SECONDS
say "installing $wheel_name into /opt/venv in $stage0 ..."
cid=$(docker create -v "$ctx:/ctx:ro" -e TORCH_VERSION="$TORCH_VERSION" "$stage0" bash -euo pipefail -c '
    [ -f /ctx/ca.crt ] && export PIP_CERT=/ctx/ca.crt
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_DEFAULT_TIMEOUT=120
    mkdir -p /etc/pip
    echo "torch==${TORCH_VERSION}" > /etc/pip/constraint.txt
    python3 -m venv /opt/venv
    # numpy: NGC ships it and torch warns without it.
    /opt/venv/bin/pip install --progress-bar off -c /etc/pip/constraint.txt /ctx/torch-*.whl numpy
    /opt/venv/bin/python -c "import torch; assert torch.__version__.split(\"+\")[0] == \"${TORCH_VERSION}\", torch.__version__"
    getent passwd 1000 >/dev/null || useradd --create-home --uid 1000 --user-group --shell /bin/bash ubuntu
    rm -rf /root/.cache /tmp/*
')
with_progress "installing torch in $stage0" "$workdir/stage1.log" docker start -a "$cid" || {
    tail -n 20 "$workdir/stage1.log" >&2
    die "installing torch into $stage0 failed ($(error_line "$workdir/stage1.log")): see the lines above."
}
docker commit \
    --change 'ENV VIRTUAL_ENV=/opt/venv' \
    --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV PIP_CONSTRAINT=/etc/pip/constraint.txt' \
    --change 'ENV PIP_BREAK_SYSTEM_PACKAGES=1' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'WORKDIR /workspace' \
    --change 'CMD ["/bin/bash"]' \
    --change "LABEL org.opencontainers.image.description=\"CI stand-in for nvcr.io/nvidia/pytorch: Debian $suite, CPU torch $TORCH_VERSION\"" \
    "$cid" "$tag" >/dev/null
say "stage 1 took $((SECONDS - t1))s."
say "built $tag ($(docker image inspect --format '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'))."
