#!/usr/bin/env bash
# The build steps both images share, run by their Dockerfiles from /opt/edgeports/src:
#   install.sh ssm-kernels   mamba-ssm + causal-conv1d compiled from source for CUDA_ARCHS only
#   install.sh plugins       exporters/plugins with CMake: the TensorRT plugin library (IPluginV3) and the
#                            plain CUDA kernels library, installed in /opt/edgeports/lib
#   install.sh edgeports     edgeports from the copied sources (non-editable) with pytest
#   install.sh ort-ops       (after edgeports) the ONNX Runtime custom-op library for CUDA_ARCHS, built by
#                            edgeports.exporters.plugin_build (fetches ONNX Runtime's C++ headers once), installed
#                            in /opt/edgeports/lib
# Inputs are the images' build args, which RUN sees as environment variables: CUDA_ARCHS ("8.6;8.9"),
# MAX_JOBS, MAMBA_SSM_VERSION, CAUSAL_CONV1D_VERSION.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
lib_dir="${EDGEPORTS_LIB_DIR:-/opt/edgeports/lib}"  # overridable for the tests

case "${1:-}" in
ssm-kernels)
    # Build tools get ranges, not pins: NGC images pin their own packages in /etc/pip/constraint.txt
    # and an exact pin could conflict with it. No build isolation: the kernels must link the torch here.
    python3 -m pip install "einops>=0.7" "wheel>=0.42" "packaging>=23" "ninja>=1.11"
    TORCH_CUDA_ARCH_LIST="${CUDA_ARCHS:?}" MAX_JOBS="${MAX_JOBS:?}" \
        MAMBA_FORCE_BUILD=TRUE CAUSAL_CONV1D_FORCE_BUILD=TRUE \
        python3 "$here/build_ssm_kernels.py" "causal-conv1d==${CAUSAL_CONV1D_VERSION:?}" "mamba-ssm==${MAMBA_SSM_VERSION:?}"
    python3 -c "import causal_conv1d_cuda, selective_scan_cuda"
    ;;
plugins)
    # CMake wants "86;89" where torch wants "8.6;8.9"
    cmake -S exporters/plugins -B build/plugins -DCMAKE_BUILD_TYPE=Release -DEDGEPORTS_REQUIRE_TENSORRT=ON \
        -DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc -DCMAKE_CUDA_ARCHITECTURES="$(echo "${CUDA_ARCHS:?}" | tr -d .)"
    cmake --build build/plugins -j "${MAX_JOBS:?}"
    for lib in libedgeports_trt_plugins.so libedgeports_ssm_kernels.so; do
        path="$(find build/plugins -name "$lib" -print -quit)"
        install -D -m 0755 "${path:?$lib was not built}" "$lib_dir/$lib"
    done
    rm -rf build
    ;;
edgeports)
    python3 -m pip install ".[ort-gpu,hf]" "pytest>=8"
    edgeports --help >/dev/null
    ;;
ort-ops)
    # plugin_build wants ["86", "89"] where torch wants "8.6;8.9"
    python3 - "$(echo "${CUDA_ARCHS:?}" | tr -d . | tr ';' ' ')" "$lib_dir" <<'PY'
import shutil
import sys
import tempfile
from pathlib import Path

from edgeports.exporters import plugin_build

with tempfile.TemporaryDirectory() as tmp:
    lib = plugin_build.build_ort_ops(cuda=True, archs=sys.argv[1].split(), out_dir=Path(tmp))
    Path(sys.argv[2]).mkdir(parents=True, exist_ok=True)
    shutil.copy(lib, Path(sys.argv[2]) / plugin_build.ORT_LIB)
PY
    ;;
*)
    echo "usage: install.sh ssm-kernels|plugins|edgeports|ort-ops" >&2
    exit 2
    ;;
esac
