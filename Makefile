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
# Install profile: GPU=1 installs onnxruntime-gpu (CUDA + TensorRT execution providers) in place of onnxruntime, and
# TensorRT's Python package where it is installable. The two ONNX Runtime builds share one module: never both.
GPU ?= 0
PROFILE := $(if $(filter 1,$(GPU)),gpu,cpu)
ORT_PACKAGE := $(if $(filter 1,$(GPU)),onnxruntime-gpu,onnxruntime)
OTHER_ORT := $(if $(filter 1,$(GPU)),onnxruntime,onnxruntime-gpu)
EXTRAS := $(PROFILE),rtx,test
BENCH_ARGS ?= --runtime ort-cpu --batch-sizes 1,16 --rounds 8

.PHONY: setup data engine test bench plugins trtexec gpu-check clean clean-runs

setup: $(VENV)/.installed-$(PROFILE) data

$(VENV)/.installed-$(PROFILE): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# The other build's files are the shared module's: remove both, so ours installs whole.
	if $(PY) -m pip show --quiet $(OTHER_ORT) >/dev/null 2>&1; then \
		$(PY) -m pip uninstall --quiet --yes onnxruntime onnxruntime-gpu; fi
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	$(if $(filter 1,$(GPU)),$(PY) -m pip install --quiet "tensorrt-cu13>=10" || \
		echo "TensorRT's Python package is not installable here: tokengate build falls back to TensorRT-RTX")
	$(PY) -m pipeline.ort_packages --expect $(ORT_PACKAGE)
	rm -f $(VENV)/.installed-*
	touch $@

# Debian's dataset-fashion-mnist: installed when missing and apt is usable (as root); otherwise say how.
data: $(VENV)/.installed-$(PROFILE)
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
	@if [ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then $(PY) -m calib build-default; \
	else echo "skipped the default calibration set (no Fashion-MNIST): python -m calib build-default later"; fi

engine: setup
	$(PY) -m pipeline.engine --config $(CONFIG) --run $(RUN) --target $(TARGET) --precision $(PRECISION)

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

# DeiT-S geometry (random weights) and the default run ($(RUN)), each as dense / static / tokens / combined,
# interleaved on ONNX Runtime CPU: bench.json, bench.md, bench.png. It never trains (a fresh machine benches in
# minutes): without a trained $(RUN) it benches DeiT-S alone and says so; `make engine` trains the default run.
bench: setup
	@if [ -f $(RUN)/student.safetensors ]; then targets="configs/deit-s-224.yaml $(RUN)"; else \
		echo "bench: $(RUN) has no trained student, so only DeiT-S geometry is benched;" \
		     "run 'make engine' first (trains the default run, about 8 min on 2 cores) to add it"; \
		targets=configs/deit-s-224.yaml; fi; \
	$(PY) -m pipeline.cli bench $$targets $(BENCH_ARGS) --json bench.json

# libtokengate_kernels.so always; libtokengate_plugins.so too when TensorRT is found (TensorRT_ROOT=/opt/TensorRT).
plugins:
	cmake -S plugins -B plugins/build -DCMAKE_BUILD_TYPE=Release $(if $(TensorRT_ROOT),-DTensorRT_ROOT=$(TensorRT_ROOT)) \
		$(if $(TensorRT_INCLUDE_DIR),-DTensorRT_INCLUDE_DIR=$(TensorRT_INCLUDE_DIR))
	cmake --build plugins/build -j2

# Build and time both flavors with trtexec (prints the commands when trtexec is not installed): docs/trtexec.md.
trtexec: setup
	PYTHON=$(PY) bash plugins/trtexec.sh $(RUN)

# Everything that needs an NVIDIA GPU, as one prepared run (pipeline/gpu_check.py, plugins/README.md): the kernels
# built for this GPU and tested (sanitizers too), their timing, ONNX Runtime's CUDA EP on $(RUN)'s exports, DeiT-S
# dense vs combined on torch, TensorRT where importable. Writes $(GPU_CHECK_OUT)gpu-check.json and gpu-check.md;
# without a GPU it says so and exits 0. An onnxruntime-gpu wheel in .whl/ replaces onnxruntime first, offline, when
# the CUDA EP is missing (the two builds share one module, so one goes before the other comes).
GPU_CHECK_OUT ?=
gpu-check: setup
	@if command -v nvidia-smi >/dev/null 2>&1 && ls .whl/onnxruntime_gpu-*.whl >/dev/null 2>&1 && \
		! $(PY) -c 'import onnxruntime as o, sys; sys.exit("CUDAExecutionProvider" not in o.get_available_providers())' \
		2>/dev/null; then \
		echo "gpu-check: installing onnxruntime-gpu from .whl/"; \
		$(PY) -m pip uninstall --quiet --yes onnxruntime onnxruntime-gpu && \
		$(PY) -m pip install --quiet --no-index --find-links .whl onnxruntime-gpu; fi
	$(PY) -m pipeline.gpu_check --run $(RUN) --json $(GPU_CHECK_OUT)gpu-check.json --table $(GPU_CHECK_OUT)gpu-check.md

# Build outputs only: trained runs (minutes to hours of work) stay; `make clean-runs` removes runs/ too.
clean:
	rm -rf plugins/build .pytest_cache

clean-runs: clean
	rm -rf runs
