"""Locate or build the native libraries of exporters/plugins/.

Two libraries come from those sources (see exporters/plugins/README.md):
- `libedgeports_ssm_kernels.so`: the CUDA kernels behind a plain C interface, no TensorRT. Built here with
  nvcc alone (no CMake needed) and cached by source hash and GPU architecture; loaded by
  `edgeports.kernels.impl_cuda` through ctypes.
- `libedgeports_trt_plugins.so`: the same kernels plus the IPluginV3 plugins; needs TensorRT's headers and
  libraries, so it is built with CMake where TensorRT is installed (the x86 / Jetson containers).
- `libedgeports_ort_ops.so`: the ONNX Runtime custom-op library of the ai.edgeports domain (ort/): the host
  reference for ORT's CPU provider, plus the CUDA kernels for its CUDA provider when built with nvcc. Needs
  only ONNX Runtime's C/C++ API headers, which no PyPI wheel ships: $ONNXRUNTIME_INCLUDE, else Debian's
  libonnxruntime-dev package (85 KB, fetched once from deb.debian.org and checked by its SHA-256).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from edgeports.errors import EdgeportsError

PLUGIN_DIR = Path(__file__).resolve().parent / "plugins"
KERNELS_LIB = "libedgeports_ssm_kernels.so"
PLUGINS_LIB = "libedgeports_trt_plugins.so"
ENV_KERNELS = "EDGEPORTS_SSM_KERNELS_LIB"  # path of a prebuilt kernels library
ENV_PLUGINS = "EDGEPORTS_TRT_PLUGIN_LIB"  # path of a prebuilt plugin library (the containers set it)
ENV_TRT_ROOT = "TENSORRT_ROOT"  # where TensorRT's include/ and lib/ are, when not on the system paths
ORT_LIB = "libedgeports_ort_ops.so"
ENV_ORT_LIB = "EDGEPORTS_ORT_CUSTOM_OPS"  # path of a prebuilt custom-op library (the ORT runner loads it)
ENV_ORT_INCLUDE = "ONNXRUNTIME_INCLUDE"  # a directory holding onnxruntime_cxx_api.h
# ONNX Runtime 1.21's C/C++ API headers: its C API is versioned, so later runtimes load what they build
ORT_HEADERS_DEB = ("http://deb.debian.org/debian/pool/main/o/onnxruntime/libonnxruntime-dev_1.21.0+dfsg-1_amd64.deb",
                   "14f7d959d5deacbcf1504830d4189f91fc67382b399ed9ae9d3aa9c4050ced08")


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


def _nvcc_command(out: Path, archs: list[str], sources: list[Path], what: str, flags: tuple[str, ...] = (),
                  compiler: str | None = None) -> list[str]:
    """The nvcc command line that builds a shared library of `sources` (with the plugin headers) for `archs`."""
    cc = compiler or nvcc()
    if cc is None:
        raise EdgeportsError(f"building {what} needs nvcc (the CUDA toolkit), which is not on this machine")
    return [cc, "-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC", "-lineinfo", *flags, *_gencode(archs),
            "-I", str(PLUGIN_DIR / "include"), *map(str, sources), "-o", str(out)]


def kernels_command(out: Path, archs: list[str], compiler: str | None = None, flags: tuple[str, ...] = ()) -> list[str]:
    """The nvcc command line that builds the kernels library for the given architectures; `flags` are extra
    nvcc options (e.g. the kernels' -D tuning macros, for the variant benchmarks)."""
    return _nvcc_command(out, archs, kernel_sources(), "the CUDA kernels", tuple(flags), compiler=compiler)


def _source_hash(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths) + sorted((PLUGIN_DIR / "include").glob("*.h*")) + sorted((PLUGIN_DIR / "kernels").glob("*.cuh")):
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
    return _compile(out, lambda tmp: kernels_command(tmp, archs))


def _compile(out: Path, command, note: str | None = None) -> Path:
    """Run `command(tmp)` (a compiler writing tmp) and move tmp to `out`; `note`, if given, is printed first
    (a build a user waits for). A failure is one EdgeportsError line with the compiler's first error."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    cmd = command(tmp)
    if note:
        print(f"edgeports: {note}", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        first = next((line for line in lines if "error" in line), lines[-1] if lines else f"exit {proc.returncode}")
        raise EdgeportsError(f"{Path(cmd[0]).name} failed building {out.name}: {first.strip()}")
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


# ---- the ONNX Runtime custom-op library ------------------------------------------------------------
def ort_sources(cuda: bool) -> list[Path]:
    """The sources of libedgeports_ort_ops.so: the op library and the host reference (+ the CUDA kernels)."""
    own = sorted((PLUGIN_DIR / "ort").glob("*.cpp")) + [PLUGIN_DIR / "kernels" / "host_reference.cpp"]
    return own + (kernel_sources() if cuda else [])


def ort_include(fetch: bool = True) -> Path:
    """The directory with ONNX Runtime's onnxruntime_cxx_api.h: $ONNXRUNTIME_INCLUDE, else the headers of
    Debian's libonnxruntime-dev cached under cache_dir() (downloaded now if `fetch`)."""
    given = os.environ.get(ENV_ORT_INCLUDE)
    if given:
        for d in (Path(given), Path(given) / "onnxruntime"):
            if (d / "onnxruntime_cxx_api.h").is_file():
                return d
        raise EdgeportsError(f"{ENV_ORT_INCLUDE}={given} holds no onnxruntime_cxx_api.h")
    dest = cache_dir() / "ort-headers-1.21.0"
    if (dest / "onnxruntime_cxx_api.h").is_file():
        return dest
    if not fetch:
        raise EdgeportsError(f"ONNX Runtime's C++ API headers are not here: set {ENV_ORT_INCLUDE}")
    _fetch_ort_headers(dest)
    return dest


def _fetch_ort_headers(dest: Path) -> None:
    """Download Debian's libonnxruntime-dev, check its SHA-256 and unpack usr/include/onnxruntime into dest."""
    import io
    import tarfile
    import urllib.request

    url, sha = ORT_HEADERS_DEB
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            deb = r.read()
    except OSError as e:
        raise EdgeportsError(f"ONNX Runtime's C++ API headers: cannot download {url} ({e}); set {ENV_ORT_INCLUDE} "
                             "to a directory holding onnxruntime_cxx_api.h") from None
    if hashlib.sha256(deb).hexdigest() != sha:
        raise EdgeportsError(f"{url}: SHA-256 mismatch (expected {sha}); not using it")
    tmp = dest.with_name(f"{dest.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(_ar_member(deb, "data.tar"))) as tar:
        for m in tar.getmembers():
            name = Path(m.name)
            if m.isfile() and name.parent.name == "onnxruntime" and name.suffix == ".h":
                (tmp / name.name).write_bytes(tar.extractfile(m).read())
    if not (tmp / "onnxruntime_cxx_api.h").is_file():
        raise EdgeportsError(f"{url} holds no onnxruntime_cxx_api.h")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.replace(dest)


def _ar_member(data: bytes, prefix: str) -> bytes:
    """The first member of an ar archive (a .deb) whose name starts with `prefix`."""
    if not data.startswith(b"!<arch>\n"):
        raise EdgeportsError("not a Debian package (no ar header)")
    pos = 8
    while pos + 60 <= len(data):
        name, size = data[pos:pos + 16].decode().strip().rstrip("/"), int(data[pos + 48:pos + 58].decode().strip())
        if name.startswith(prefix):
            return data[pos + 60:pos + 60 + size]
        pos += 60 + size + (size & 1)
    raise EdgeportsError(f"the Debian package has no {prefix}* member")


def ort_ops_command(out: Path, archs: list[str] | None) -> list[str]:
    """The compiler command that builds libedgeports_ort_ops.so: host C++ only (archs None: the CPU
    provider), or nvcc with the CUDA kernels for those GPU architectures (the CPU and CUDA providers)."""
    ort_headers = ("-I", str(ort_include()))
    if archs is not None:
        return _nvcc_command(out, archs, ort_sources(True), f"{ORT_LIB} for CUDA", (*ort_headers, "-DEDGEPORTS_ORT_CUDA"))
    cxx = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if cxx is None:
        raise EdgeportsError(f"building {ORT_LIB} needs a C++ compiler (g++), which is not on this machine")
    return [cxx, "-O3", "-std=c++17", "-shared", "-fPIC", "-Wl,--no-undefined", *ort_headers,
            "-I", str(PLUGIN_DIR / "include"), *map(str, ort_sources(False)), "-o", str(out)]


def build_ort_ops(cuda: bool, archs: list[str] | None = None, out_dir: Path | None = None) -> Path:
    """Build libedgeports_ort_ops.so (cached by sources and variant): CPU provider only, or with `cuda` the
    CUDA provider too, for `archs` (default: the current GPU). Returns its path."""
    archs = (archs or [current_arch()]) if cuda else None
    tag = f"sm{'_'.join(archs)}" if archs else "cpu"
    out_dir = out_dir or cache_dir() / f"ort-{_source_hash(ort_sources(cuda))}-{tag}"
    out = out_dir / ORT_LIB
    if out.is_file():
        return out
    return _compile(out, lambda tmp: ort_ops_command(tmp, archs), f"building {ORT_LIB} ({tag}; once, cached in {out_dir})")


def find_ort_ops(cuda: bool) -> Path:
    """The custom-op library for ONNX Runtime: $EDGEPORTS_ORT_CUSTOM_OPS, else one placed in
    exporters/plugins/build, else built now (build_ort_ops) for the CPU, or with `cuda` for the current GPU."""
    found = _prebuilt(ENV_ORT_LIB, ORT_LIB)
    return found if found is not None else build_ort_ops(cuda)


def ort_ops_providers(path: Path) -> tuple[str, ...]:
    """The execution providers a custom-op library serves: ("cpu",) or ("cpu", "cuda")."""
    import ctypes

    lib = ctypes.CDLL(str(path))
    try:
        n = lib.edgeports_ort_providers()
    except AttributeError:
        raise EdgeportsError(f"{path} is not an edgeports custom-op library (no edgeports_ort_providers)") from None
    return ("cpu", "cuda") if n == 2 else ("cpu",)
