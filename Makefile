# The two commands: `make run` and `make test`. Both set everything up on a fresh machine: what is
# missing is installed (as root, with apt) or named with the command that installs it.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BENCHLIB := $(VENV)/bin/benchlib
TORCH_VERSION ?= 2.13.0
# Arms `make run` tries; an arm that cannot run here (no engine, no image, not root for runc) is
# skipped with the reason and the fix, and the run's last line says so.
ARMS ?= native,container,isolated
SUITE ?= auto
STAMP := $(VENV)/.installed

.PHONY: run test setup lab image images clean-venv

# python3 (apt when missing), the venv (system site packages: a host or image torch, e.g. NGC or a
# CUDA build, is reused, never reinstalled; a pinned CPU wheel only when no torch is importable),
# the project. Progress every 15 s; see .ci/setup-venv.sh.
$(STAMP): pyproject.toml
	@PYTHON=$(PYTHON) VENV=$(VENV) TORCH_VERSION=$(TORCH_VERSION) bash .ci/setup-venv.sh
	@touch $@

setup: $(STAMP)

# Docker and the container image when this machine allows it, then the default suite (smoke without
# a GPU, quick with one) on every arm available, the report, and the answer as the last line.
run: setup
	@VENV=$(VENV) bash .ci/ensure-image.sh
	$(BENCHLIB) run --suite $(SUITE) --arms $(ARMS) --skip-unavailable --report

# The whole test suite. Chromium, Docker, the images and runc are set up first; with CI=true what
# cannot be set up fails here with its reason (tests never skip in CI).
test: setup
	@bash .ci/test-prereqs.sh
	@bash .ci/slurm-setup.sh || { [ "$$CI" = "true" ] && exit 1; echo "note: no one-node Slurm here; the --on slurm tests will skip"; }
	$(PY) -m pytest

image: setup
	$(BENCHLIB) image build

images:
	bash .ci/build-images.sh

lab: setup
	$(PY) -c 'import jupyterlab' 2>/dev/null || $(PY) -m pip install -q -e '.[lab]'
	$(VENV)/bin/jupyter lab notebooks/

clean-venv:
	rm -rf $(VENV)
