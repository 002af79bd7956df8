"""Locate or build the native libraries of exporters/plugins/.

Two libraries come from those sources (see exporters/plugins/README.md):
- `libedgeports_ssm_kernels.so`: the CUDA kernels behind a plain C interface, no TensorRT. Built here with
  nvcc alone (no CMake needed) and cached by source hash and GPU architecture; loaded by
  `edgeports.kernels.impl_cuda` through ctypes.
- `libedgeports_trt_plugins.so`: the same kernels plus the IPluginV3 plugins; needs TensorRT's headers and
  libraries, so it is built with CMake where TensorRT is installed (the x86 / Jetson containers).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from edgeports.errors import EdgeportsError

PLUGIN_DIR = Path(__file__).resolve().parent / "plugins"
KERNELS_LIB = "libedgeports_ssm_kernels.so"
PLUGINS_LIB = "libedgeports_trt_plugins.so"
ENV_KERNELS = "EDGEPORTS_SSM_KERNELS_LIB"  # path of a prebuilt kernels library
ENV_PLUGINS = "EDGEPORTS_TRT_PLUGIN_LIB"  # path of a prebuilt plugin library (the containers set it)
ENV_TRT_ROOT = "TENSORRT_ROOT"  # where TensorRT's include/ and lib/ are, when not on the system paths


def kernel_sources() -> list[Path]:
    """The .cu files of libedgeports_ssm_kernels.so."""
    return sorted((PLUGIN_DIR / "kernels").glob("*.cu"))


def plugin_sources() -> list[Path]:
    """The C++ files of the TensorRT plugins (compiled together with kernel_sources())."""
    return sorted((PLUGIN_DIR / "trt").glob("*.cpp"))


def nvcc() -> str | None:
    """Path of nvcc: PATH, then $CUDA_HOME/bin, then /usr/local/cuda/bin; None if absent."""
    found = shutil.which("nvcc")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "bin" / "nvcc").is_file():
            return str(Path(root) / "bin" / "nvcc")
    return None


def cuda_include() -> str | None:
    """The CUDA toolkit's include directory (for host compilers that include cuda_runtime_api.h)."""
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    if nvcc():
        roots.insert(0, str(Path(nvcc()).resolve().parent.parent))
    for root in filter(None, roots):
        if (Path(root) / "include" / "cuda_runtime_api.h").is_file():
            return str(Path(root) / "include")
    return None


def cache_dir() -> Path:
    """Where built libraries are cached ($EDGEPORTS_CACHE or ~/.cache/edgeports)."""
    return Path(os.environ.get("EDGEPORTS_CACHE", Path.home() / ".cache" / "edgeports")) / "plugins"


def current_arch() -> str:
    """Compute capability of the current CUDA device as "90", "87", ... (needs torch with CUDA)."""
    import torch

    if not torch.cuda.is_available():
        raise EdgeportsError("no CUDA device here: name the GPU architecture to build for (e.g. arch='87')")
    major, minor = torch.cuda.get_device_capability()
    return f"{major}{minor}"


def _gencode(archs: list[str]) -> list[str]:
    return [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]


def kernels_command(out: Path, archs: list[str], compiler: str | None = None) -> list[str]:
    """The nvcc command line that builds the kernels library for the given architectures."""
    cc = compiler or nvcc()
    if cc is None:
        raise EdgeportsError("building the CUDA kernels needs nvcc (the CUDA toolkit), which is not on this machine")
    return [cc, "-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC", "-lineinfo", *_gencode(archs),
            "-I", str(PLUGIN_DIR / "include"), *map(str, kernel_sources()), "-o", str(out)]


def _source_hash(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths) + sorted((PLUGIN_DIR / "include").glob("*.h")) + sorted((PLUGIN_DIR / "kernels").glob("*.cuh")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def build_kernels(archs: list[str] | None = None, out_dir: Path | None = None, force: bool = False) -> Path:
    """Build libedgeports_ssm_kernels.so with nvcc (cached by sources and archs); returns its path."""
    archs = archs or [current_arch()]
    out_dir = out_dir or cache_dir() / f"kernels-{_source_hash(kernel_sources())}-sm{'_'.join(archs)}"
    out = out_dir / KERNELS_LIB
    if out.is_file() and not force:
        return out
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    proc = subprocess.run(kernels_command(tmp, archs), capture_output=True, text=True)
    if proc.returncode != 0:
        raise EdgeportsError(f"nvcc failed building {KERNELS_LIB}: {proc.stderr.strip().splitlines()[-1:]}")
    tmp.replace(out)  # atomic: a concurrent builder never sees a half-written library
    return out


def _prebuilt(env: str, name: str) -> Path | None:
    """The library named by $env (which must exist), else a CMake build in exporters/plugins/build, else None."""
    path = os.environ.get(env)
    if path:
        if not Path(path).is_file():
            raise EdgeportsError(f"{env}={path} does not exist")
        return Path(path)
    built = PLUGIN_DIR / "build" / name
    return built if built.is_file() else None


def find_kernels(build: bool = True) -> Path:
    """The kernels library to load: $EDGEPORTS_SSM_KERNELS_LIB or a CMake build, else the plugin library
    ($EDGEPORTS_TRT_PLUGIN_LIB, which the containers install, or a CMake build: it exports the same C entry
    points), else the nvcc build for the current GPU (built now if `build`)."""
    found = _prebuilt(ENV_KERNELS, KERNELS_LIB) or _prebuilt(ENV_PLUGINS, PLUGINS_LIB)
    if found is not None:
        return found
    if not build:
        raise EdgeportsError(f"{KERNELS_LIB} is not built (set {ENV_KERNELS} or build with nvcc)")
    return build_kernels()


def find_plugins() -> Path | None:
    """A prebuilt TensorRT plugin library ($EDGEPORTS_TRT_PLUGIN_LIB or exporters/plugins/build), or None."""
    return _prebuilt(ENV_PLUGINS, PLUGINS_LIB)


def build_plugins(archs: list[str] | None = None, build_dir: Path | None = None) -> Path:
    """Configure and build both libraries with CMake (needs TensorRT headers: $TENSORRT_ROOT or system);
    returns the path of libedgeports_trt_plugins.so."""
    if shutil.which("cmake") is None:
        raise EdgeportsError("building the TensorRT plugins needs cmake, which is not on this machine")
    archs = archs or [current_arch()]
    build_dir = build_dir or cache_dir() / f"trt-{_source_hash(kernel_sources() + plugin_sources())}-sm{'_'.join(archs)}"
    out = build_dir / PLUGINS_LIB
    if out.is_file():
        return out
    cfg = ["cmake", "-S", str(PLUGIN_DIR), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
           f"-DCMAKE_CUDA_ARCHITECTURES={';'.join(archs)}", "-DEDGEPORTS_REQUIRE_TENSORRT=ON"]
    if os.environ.get(ENV_TRT_ROOT):
        cfg.append(f"-DTENSORRT_ROOT={os.environ[ENV_TRT_ROOT]}")
    nv = nvcc()
    if nv:
        cfg.append(f"-DCMAKE_CUDA_COMPILER={nv}")
    for cmd in (cfg, ["cmake", "--build", str(build_dir), "-j", str(os.cpu_count() or 2)]):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise EdgeportsError(f"building {PLUGINS_LIB} failed ({' '.join(cmd[:2])}): {' | '.join(tail)}")
    if not out.is_file():
        raise EdgeportsError(f"CMake finished but {out} is missing (TensorRT headers not found?)")
    return out
