# TokenGate. Two commands matter: `make engine` (set-up + the whole pipeline on the embedded default) and
# `make test`. Every target depends on `setup`, so a fresh clone needs nothing else.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/fmnist-tiny.yaml
RUN ?= runs/$(basename $(notdir $(CONFIG)))
TARGET ?= auto
PRECISION ?= fp16
PYTEST_ARGS ?=
FMNIST_DIR := /usr/share/datasets/fashion-mnist

.PHONY: setup data engine test bench plugins trtexec clean

setup: $(VENV)/.installed data

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[cpu,rtx,test]"
	touch $@

# Debian's dataset-fashion-mnist: installed when missing and apt is usable (as root); otherwise say how.
data:
	@if [ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's dataset-fashion-mnist"; \
		(apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) || \
		echo "could not apt-get install dataset-fashion-mnist; install it, or set data.root to the four *-ubyte.gz files"; \
	else \
		echo "Fashion-MNIST is missing at $(FMNIST_DIR): run 'sudo apt-get install dataset-fashion-mnist'," \
		     "or put the four *-ubyte.gz files in a folder and pass --set data.root=FOLDER"; \
	fi

engine: setup
	$(PY) -m pipeline.engine --config $(CONFIG) --run $(RUN) --target $(TARGET) --precision $(PRECISION)

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

# libtokengate_kernels.so always; libtokengate_plugins.so too when TensorRT is found (TensorRT_ROOT=/opt/TensorRT).
plugins:
	cmake -S plugins -B plugins/build -DCMAKE_BUILD_TYPE=Release $(if $(TensorRT_ROOT),-DTensorRT_ROOT=$(TensorRT_ROOT)) \
		$(if $(TensorRT_INCLUDE_DIR),-DTensorRT_INCLUDE_DIR=$(TensorRT_INCLUDE_DIR))
	cmake --build plugins/build -j2

# Build and time both flavors with trtexec (prints the commands when trtexec is not installed): docs/trtexec.md.
trtexec: setup
	PYTHON=$(PY) bash plugins/trtexec.sh $(RUN)

clean:
	rm -rf runs plugins/build .pytest_cache
