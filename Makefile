# edgeports: one place for every build, test and run command.
# Versions and image tags live here; the containers read them as build args.
PYTHON        ?= python3
PIP           ?= $(PYTHON) -m pip
TORCH_VERSION ?= 2.13.0

# Sweep parameters shared by `make run`, `run-x86` and `run-jetson`.
MODELS  ?=
BACKEND ?= eager,hf
LENS    ?=
RESULTS ?= results
REPORT  ?= $(RESULTS)/report

.PHONY: install test lint run bench image-x86 image-jetson run-x86 run-jetson

# A pinned CPU torch first: an unpinned `torch` requirement with no torch installed pulls a
# multi-GB CUDA build. A machine that already has torch (the GPU image) keeps its own.
install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install -q "torch==$(TORCH_VERSION)"
	$(PIP) install -q -e ".[dev]"

test: install
	$(PYTHON) -m pytest -q -m "not gpu and not trt and not slow"

lint: install
	$(PYTHON) -m ruff check edgeports exporters runners tests benchmarks

# The main job: a default sweep (the smallest real config of each family) on whatever device is
# here, then the report. Defaults for models and lengths come from edgeports.sweep.
run: install
	edgeports run --backend $(BACKEND) $(if $(MODELS),--models $(MODELS)) $(if $(LENS),--lens $(LENS)) --db $(RESULTS)/edgeports.db
	edgeports report --db $(RESULTS)/edgeports.db --out $(REPORT)

bench:
	$(PYTHON) benchmarks/kernels.py
