#!/usr/bin/env bash
# `make setup`: the project's virtual environment, from nothing.
#   1. python3 >= 3.10 with venv/ensurepip (Debian: python3 python3-venv python3-pip; installed with
#      apt when missing and we are root, else one sentence naming that command);
#   2. $VENV with --system-site-packages, so that a host torch (NGC, CUDA builds) is reused, never
#      reinstalled;
#   3. torch==$TORCH_VERSION only when no torch is importable: a CPU wheel from $PIP_FIND_LINKS when
#      one is there, else PyPI's (CUDA) build with an NVIDIA GPU, else the CPU build from PyTorch's
#      index ($TORCH_INDEX_URL; PyPI's Linux torch is a CUDA build of several GB);
#   4. the project, editable, with its dev extra, and the venv's ipykernel `python3` kernel.
# pip's output goes to $TMPDIR/benchlib-setup-UID.log, with a progress line every 15 s. A failure is one sentence
# (no network to PyPI, a CA bundle missing, disk full, ...) and removes a venv this run created.
# Environment: PYTHON (python3), VENV (.venv), TORCH_VERSION (2.13.0), TORCH_INDEX_URL, PIP_*.
set -euo pipefail
cd "$(dirname "$0")/.."
who=setup
# shellcheck source=lib.sh
. .ci/lib.sh

python=${PYTHON:-python3}
venv=${VENV:-.venv}
torch_version=${TORCH_VERSION:-2.13.0}

python_ok() { "$python" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 10))' >/dev/null 2>&1; }
if ! python_ok; then
    if command -v "$python" >/dev/null 2>&1 && ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
        die "$python is Python $("$python" -c 'import platform; print(platform.python_version())'), and benchlib needs 3.10 or later: run 'make PYTHON=python3.12 ...' with a newer one, or use environment.yml (README, 'Setting up')."
    fi
    [ "$python" = python3 ] || die "$python is not a working Python 3.10+ with venv: install it or run make without PYTHON=."
    apt_install "the project's venv" python3 python3-venv python3-pip
    python_ok || die "python3 still lacks venv or ensurepip after apt-get install: install python3-venv for $(python3 -V 2>&1) and retry."
fi

created=0
if [ ! -x "$venv/bin/python" ]; then
    need_space "$(dirname "$(realpath -m "$venv")")" 2500 "the venv (torch and the dependencies)" "free space there or set VENV to a folder on a larger disk"
    "$python" -m venv --system-site-packages "$venv"
    created=1
fi
log=${TMPDIR:-/tmp}/benchlib-setup-$(id -u).log

fail() {
    local what=$1 line
    tail -n 15 "$log" >&2
    line=$(error_line "$log" 'ERROR: |No space left|CERTIFICATE_VERIFY_FAILED|NewConnectionError|Name or service not known|Temporary failure in name resolution')
    [ "$created" = 1 ] && rm -rf "$venv"
    if grep -qiE 'no space left on device|Errno 28' "$log"; then
        die "$what ran out of disk space ($line): free space on the disk of $(realpath -m "$venv") and TMPDIR, then run make again."
    elif grep -q 'CERTIFICATE_VERIFY_FAILED' "$log"; then
        die "$what could not verify PyPI's TLS certificate ($line): point PIP_CERT at your network's CA bundle (e.g. /etc/ssl/certs/ca-certificates.crt) and run make again."
    elif grep -qiE 'NewConnectionError|Name or service not known|Temporary failure in name resolution|Network is unreachable|ProxyError|Max retries exceeded' "$log"; then
        die "$what could not reach PyPI ($line): check the network or proxy (HTTPS_PROXY), or set PIP_INDEX_URL / PIP_FIND_LINKS to a mirror or a folder of wheels, and run make again."
    fi
    die "$what failed ($line): see $log and the lines above, fix it and run make again."
}

# Where torch comes from when none is importable: a local CPU wheel in a folder of PIP_FIND_LINKS
# (pip finds it; +cpu outranks PyPI's CUDA build of the same version), PyPI with a GPU (its CUDA
# build), else PyTorch's CPU index ($TORCH_INDEX_URL; set it empty to use your own index).
local_torch_wheel() {
    local dir
    for dir in ${PIP_FIND_LINKS:-}; do
        compgen -G "$dir/torch-$torch_version+cpu-*.whl" >/dev/null && return 0
    done
    return 1
}
pip=("$venv/bin/python" -m pip install --progress-bar off)
if ! "$venv/bin/python" -c 'import torch' >/dev/null 2>&1; then
    source_args=()
    if local_torch_wheel; then
        from="a local CPU wheel (PIP_FIND_LINKS)"
    elif nvidia-smi -L >/dev/null 2>&1; then
        from="PyPI (a CUDA build, several GB)"
    elif [ -n "${TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}" ]; then
        source_args=(--index-url "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}")
        from="PyTorch's CPU index ${source_args[1]}"
    else
        from="your pip index"
    fi
    say "installing torch==$torch_version from $from (no torch importable; pip output in $log) ..."
    with_progress "pip install torch" "$log" "${pip[@]}" "${source_args[@]}" "torch==$torch_version" \
        || fail "pip install torch==$torch_version from $from"
fi
say "installing benchlib and its dependencies (editable, dev extra) ..."
with_progress "pip install -e .[dev]" "$log" "${pip[@]}" -e '.[dev]' || fail "pip install -e '.[dev]'"
"$venv/bin/python" -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (benchlib)" >>"$log" 2>&1 \
    || fail "registering the venv's ipykernel"
say "venv ready: $venv ($("$venv/bin/python" -c 'import torch; print("torch", torch.__version__)'))."
