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
	edgeports run --backend $(BACKEND) $(if $(MODELS),--models $(MODELS)) $(if $(LENS),--lens $(LENS)) $(ARGS) --db $(RESULTS)/edgeports.db
	edgeports report --db $(RESULTS)/edgeports.db --out $(REPORT)

bench:
	$(PYTHON) benchmarks/kernels.py

# ---- Containers (containers/): every version the images use, passed as build args -----------------
DOCKER                 ?= docker
IMAGE_REPO             ?= edgeports
EDGEPORTS_VERSION      := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
GIT_COMMIT             := $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
MAMBA_SSM_VERSION      ?= 2.3.2.post1
CAUSAL_CONV1D_VERSION  ?= 1.5.2
# x86 + RTX: NGC PyTorch 25.06 = CUDA 12.9.1, PyTorch 2.8.0a0, TensorRT 10.11.0.33, Python 3.12.
X86_BASE_IMAGE         ?= nvcr.io/nvidia/pytorch:25.06-py3
X86_ORT_GPU_VERSION    ?= 1.26.0
X86_CUDA_ARCHS         ?= 8.6;8.9
X86_MAX_JOBS           ?= 8
IMAGE_X86              ?= $(IMAGE_REPO):$(EDGEPORTS_VERSION)-x86-rtx
# Jetson: l4t-jetpack r36.4.0 = JetPack 6.1, CUDA 12.6, TensorRT 10.3, Python 3.10.
JETSON_BASE_IMAGE      ?= nvcr.io/nvidia/l4t-jetpack:r36.4.0
JETSON_WHEEL_INDEX     ?= https://pypi.jetson-ai-lab.io/jp6/cu126
JETSON_TORCH_VERSION   ?= 2.8.0
JETSON_TRITON_VERSION  ?= 3.4.0
JETSON_ORT_GPU_VERSION ?= 1.23.0
JETSON_CUSPARSELT_VERSION ?= 0.7.1
JETSON_NUMPY_VERSION   ?= 1.26.4
JETSON_CUDA_ARCHS      ?= 8.7
JETSON_MAX_JOBS        ?= 2
IMAGE_JETSON           ?= $(IMAGE_REPO):$(EDGEPORTS_VERSION)-jetson-r36.4
# Native build on a Jetson (aarch64 + L4T); anywhere else the Jetson image is cross-built with buildx.
ON_JETSON              ?= $(shell [ "$$(uname -m)" = aarch64 ] && [ -f /etc/nv_tegra_release ] && echo 1)
# Extra `edgeports run` flags (e.g. ARGS="--mem-budget 8GiB"); WEIGHTS: a local checkpoint dir, mounted read-only.
ARGS    ?=
WEIGHTS ?=

COMMON_BUILD_ARGS = --build-arg EDGEPORTS_GIT_COMMIT=$(GIT_COMMIT) \
	--build-arg MAMBA_SSM_VERSION=$(MAMBA_SSM_VERSION) --build-arg CAUSAL_CONV1D_VERSION=$(CAUSAL_CONV1D_VERSION)
# The same sweep flags as `make run`; a WEIGHTS dir is mounted at /weights and passed as --weights.
SWEEP_ARGS = --backend $(BACKEND) $(if $(MODELS),--models $(MODELS)) $(if $(LENS),--lens $(LENS)) $(ARGS) \
	$(if $(WEIGHTS),--weights /weights)
# No network at run time (DESIGN: no hub downloads, ever); results and weights on mounted volumes.
RUN_MOUNTS = --rm --network none --ipc=host -v $(abspath $(RESULTS)):/results $(if $(WEIGHTS),-v $(abspath $(WEIGHTS)):/weights:ro)

image-x86:
	$(DOCKER) build -f containers/x86-rtx/Dockerfile -t $(IMAGE_X86) $(COMMON_BUILD_ARGS) \
		--build-arg BASE_IMAGE=$(X86_BASE_IMAGE) --build-arg ORT_GPU_VERSION=$(X86_ORT_GPU_VERSION) \
		--build-arg "CUDA_ARCHS=$(X86_CUDA_ARCHS)" --build-arg MAX_JOBS=$(X86_MAX_JOBS) .

JETSON_BUILD_ARGS = $(COMMON_BUILD_ARGS) --build-arg BASE_IMAGE=$(JETSON_BASE_IMAGE) \
	--build-arg JETSON_WHEEL_INDEX=$(JETSON_WHEEL_INDEX) --build-arg TORCH_VERSION=$(JETSON_TORCH_VERSION) \
	--build-arg TRITON_VERSION=$(JETSON_TRITON_VERSION) --build-arg ORT_GPU_VERSION=$(JETSON_ORT_GPU_VERSION) \
	--build-arg CUSPARSELT_VERSION=$(JETSON_CUSPARSELT_VERSION) --build-arg NUMPY_VERSION=$(JETSON_NUMPY_VERSION) \
	--build-arg "CUDA_ARCHS=$(JETSON_CUDA_ARCHS)" --build-arg MAX_JOBS=$(JETSON_MAX_JOBS)

image-jetson:
ifeq ($(ON_JETSON),1)
	$(DOCKER) build -f containers/jetson-l4t/Dockerfile -t $(IMAGE_JETSON) $(JETSON_BUILD_ARGS) .
else
	$(DOCKER) buildx build --platform linux/arm64 --load -f containers/jetson-l4t/Dockerfile -t $(IMAGE_JETSON) $(JETSON_BUILD_ARGS) .
endif

run-x86:
	mkdir -p $(RESULTS)
	$(DOCKER) run $(RUN_MOUNTS) --gpus all $(IMAGE_X86) $(SWEEP_ARGS)

# Jetson telemetry the container cannot see by itself, mounted where present on the host: the host's L4T
# release (the image has its own), the nvpmodel state, and the device tree (Docker masks /sys/firmware).
# INA3221 rails, devfreq clocks and /proc/meminfo in the container are the host's already.
JETSON_HOST_FILES ?= /etc/nv_tegra_release /var/lib/nvpmodel/status /etc/nvpmodel.conf
JETSON_DEVICE_TREE ?= /sys/firmware/devicetree/base
JETSON_MOUNTS = $(foreach f,$(wildcard $(JETSON_HOST_FILES)),-v $(f):$(f):ro) \
	$(if $(wildcard $(JETSON_DEVICE_TREE)/model),-v $(JETSON_DEVICE_TREE):/run/edgeports/device-tree:ro)

run-jetson:
	mkdir -p $(RESULTS)
	$(DOCKER) run $(RUN_MOUNTS) --runtime nvidia $(JETSON_MOUNTS) $(IMAGE_JETSON) $(SWEEP_ARGS)
