# The two commands: `make run` and `make test`. Both set everything up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BENCHLIB := $(VENV)/bin/benchlib
TORCH_VERSION ?= 2.13.0
# Arms `make run` tries; an arm that cannot run here is skipped with the reason and the fix.
ARMS ?= native,container
SUITE ?= auto
STAMP := $(VENV)/.installed

.PHONY: run test setup lab image images clean-venv

# The venv sees system packages so that a host or image torch (NGC, CUDA builds) is reused, never
# reinstalled; a pinned CPU wheel is installed only when no torch is importable.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -c 'import torch' 2>/dev/null || $(PY) -m pip install -q "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (benchlib)" >/dev/null
	touch $@

setup: $(STAMP)

# Run the default suite (smoke without a GPU, quick with one) on every arm available, then the report.
run: setup
	@bash .ci/ensure-image.sh
	$(BENCHLIB) run --suite $(SUITE) --arms $(ARMS) --skip-unavailable --report

# The whole test suite; Docker tests get a real engine and image (CI fails, never skips, without one).
test: setup
	@bash .ci/setup-browser.sh || [ "$$CI" != "true" ]
	@bash .ci/build-images.sh || { [ "$$CI" = "true" ] && exit 1; echo "note: no container engine here; Docker tests will skip"; }
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
