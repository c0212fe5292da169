# The `container` arm's image: NVIDIA's NGC PyTorch image plus benchlib's dependencies.
#
#   docker build -t benchlib:latest .                      # FROM the NGC image below (needs nvcr.io)
#   benchlib image build  /  make image                    # the same, with the identity build args
#   .ci/build-images.sh                                    # CI: FROM a local stand-in for NGC (no registry)
#
# Works with the legacy builder (DOCKER_BUILDKIT=0) and BuildKit alike (no RUN --mount).
#
# What it guarantees:
# * torch is the base image's own build, never reinstalled or upgraded: the installed version is
#   pinned as a pip constraint (together with NGC's /etc/pip/constraint.txt when the base has it)
#   and the build fails if `torch.__version__` changed. A base without torch is refused.
# * The repository is NOT baked in for runs: the runner bind-mounts the checkout read-only and puts it
#   first on PYTHONPATH; the copy installed here makes the image usable on its own.
# * Any UID can run it (`docker run --user UID:GID`): HOME and the Jupyter runtime dir are writable by
#   all; the default user is the non-root UID 1000 (NGC's `ubuntu`, created when the base lacks it).
# * A system-wide ipykernel `python3` kernel spec, so `papermill ... -k python3` finds this Python.
# * Its identity: OCI labels and /etc/benchlib/image.json (base_image, project_version, vcs_ref,
#   build_date), read by the environment fingerprint.
#
# TLS: when the network re-signs HTTPS (a proxy with its own CA), pip inside the build needs that CA.
# Put the bundle at .ci/cache/pip-ca.crt (git-ignored; .ci/build-images.sh and `benchlib image build`
# copy the host's there); when the file is absent pip uses the base image's own CA store.
# The bundle is public certificates, never a secret, but it does stay in one build layer.

# A current NGC PyTorch release (tags are yy.mm-py3); override with --build-arg BASE_IMAGE=...
ARG BASE_IMAGE=nvcr.io/nvidia/pytorch:25.10-py3
FROM ${BASE_IMAGE}

USER root
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PIP_BREAK_SYSTEM_PACKAGES=1

WORKDIR /opt/benchlib/src

# 1. Dependencies only: this layer is rebuilt when pyproject.toml changes, not when benchlib/ does.
COPY pyproject.toml .ci/cache/pip-ca.cr[t] ./
RUN set -eux; \
    if [ -f pip-ca.crt ]; then export PIP_CERT="$PWD/pip-ca.crt"; fi; \
    python3 -c 'import torch' 2>/dev/null || { echo "error: the base image has no torch; use an NGC PyTorch image or .ci/base-image.sh" >&2; exit 1; }; \
    python3 -c 'import importlib.metadata as m; print("torch==" + m.version("torch"))' > /opt/benchlib/torch-pin.txt; \
    python3 -c 'import torch; print(torch.__version__)' > /opt/benchlib/torch-version.txt; \
    constraints=(-c /opt/benchlib/torch-pin.txt); \
    if [ -f /etc/pip/constraint.txt ]; then constraints+=(-c /etc/pip/constraint.txt); fi; \
    python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' > /opt/benchlib/requirements.txt; \
    python3 -m pip install --progress-bar off "${constraints[@]}" -r /opt/benchlib/requirements.txt; \
    after="$(python3 -c 'import torch; print(torch.__version__)')"; \
    if [ "$after" != "$(cat /opt/benchlib/torch-version.txt)" ]; then \
        echo "error: installing the dependencies changed torch from $(cat /opt/benchlib/torch-version.txt) to $after" >&2; exit 1; \
    fi

# 2. A non-root user (UID 1000) and a HOME that any UID can write (the runner passes --user UID:GID).
#    /root may be passed through (0711, not listable): a checkout under the invoker's /root is mounted
#    at its own path, and UID 1000 must reach it (root's usual /root is 0700).
RUN set -eux; \
    getent group 1000 >/dev/null || groupadd --gid 1000 benchlib; \
    getent passwd 1000 >/dev/null || useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash benchlib; \
    mkdir -p /home/benchlib /tmp/jupyter-runtime; \
    chmod 1777 /home/benchlib /tmp/jupyter-runtime; \
    chmod 0711 /root
ENV HOME=/home/benchlib \
    JUPYTER_RUNTIME_DIR=/tmp/jupyter-runtime

# 3. The package itself (no dependency resolution: step 1 did it), and a system-wide kernel spec.
#    --no-deps cannot touch torch; PIP_CONSTRAINT is cleared so NGC's pins do not constrain the
#    isolated build environment (setuptools) of this one package.
COPY pyproject.toml README.m[d] ./
COPY benchlib/ benchlib/
RUN set -eux; \
    if [ -f pip-ca.crt ]; then export PIP_CERT="$PWD/pip-ca.crt"; fi; \
    PIP_CONSTRAINT= python3 -m pip install --progress-bar off --no-deps .; \
    python3 -m ipykernel install --prefix /usr/local --name python3 --display-name "Python 3 (benchlib)"; \
    test "$(python3 -c 'import torch; print(torch.__version__)')" = "$(cat /opt/benchlib/torch-version.txt)"; \
    python3 -c 'import benchlib, papermill, pandas, pyarrow, scipy, plotly, pydantic, pynvml, psutil'; \
    rm -rf /opt/benchlib/src/build /opt/benchlib/src/*.egg-info

# 4. Identity, last so that a new VCS_REF or BUILD_DATE rebuilds only this layer.
ARG BASE_IMAGE
ARG PROJECT_VERSION=""
ARG VCS_REF=unknown
ARG BUILD_DATE=""
LABEL org.opencontainers.image.title="benchlib" \
      org.opencontainers.image.description="The container arm of the benchlib GPU benchmark workbench" \
      org.opencontainers.image.base.name="${BASE_IMAGE}" \
      org.opencontainers.image.version="${PROJECT_VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.created="${BUILD_DATE}"
RUN set -eux; \
    mkdir -p /etc/benchlib; \
    BASE_IMAGE="${BASE_IMAGE}" PROJECT_VERSION="${PROJECT_VERSION}" VCS_REF="${VCS_REF}" BUILD_DATE="${BUILD_DATE}" \
    python3 -c 'import datetime, importlib.metadata as m, json, os; json.dump({"base_image": os.environ["BASE_IMAGE"], "project_version": os.environ["PROJECT_VERSION"] or m.version("benchlib"), "vcs_ref": os.environ["VCS_REF"], "build_date": os.environ["BUILD_DATE"] or datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}, open("/etc/benchlib/image.json", "w"), indent=2)'; \
    chmod 0644 /etc/benchlib/image.json; \
    cat /etc/benchlib/image.json

WORKDIR /workspace
USER 1000:1000
