"""Shared by the kernel-variant benchmarks (ssd_variants.py, and any other -D tuning sweep of the CUDA kernels
library): build the library once per variant with nvcc in parallel, load each through impl_cuda's binding and
keep the variants that pass a correctness check (GPU only)."""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def build_variants(flags: dict[str, tuple[str, ...]], arch: str, out_dir: Path, jobs: int) -> dict[str, Path | str]:
    """Build the kernels library once per variant (out_dir/<name>/, nvcc runs in parallel); name -> the
    library's path, or the compiler's first error line."""
    from edgeports.exporters import plugin_build

    def one(name: str) -> Path | str:
        out = out_dir / name / plugin_build.KERNELS_LIB
        out.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(plugin_build.kernels_command(out, [arch], flags=flags[name]), capture_output=True,
                              text=True)
        if proc.returncode != 0:
            lines = proc.stderr.strip().splitlines()
            return next((ln for ln in lines if "error" in ln), lines[-1] if lines else f"exit {proc.returncode}")
        return out

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return dict(zip(flags, pool.map(one, flags), strict=True))


def checked_variants(flags: dict[str, tuple[str, ...]], arch: str, jobs: int, check: Callable[[object], str]) -> dict:
    """Build, load and check every variant, printing one line each ('# name flags: verdict'); name -> the loaded
    library (impl_cuda.load_library) of those whose check(lib) verdict starts with "ok"."""
    from edgeports.kernels import impl_cuda

    libs = {}
    with tempfile.TemporaryDirectory(prefix="kernel-variants-") as tmp:
        t0 = time.perf_counter()
        built = build_variants(flags, arch, Path(tmp), jobs)
        print(f"# built in {time.perf_counter() - t0:.0f} s", flush=True)
        for name, path in built.items():
            label = f"# {name} {' '.join(flags[name]) or '(defaults)'}"
            if isinstance(path, str):
                print(f"{label}: BUILD FAILED: {path}", flush=True)
                continue
            lib = impl_cuda.load_library(path)  # mapped, so it outlives the directory
            verdict = check(lib)
            print(f"{label}: {verdict}", flush=True)
            if verdict.startswith("ok"):
                libs[name] = lib
    return libs
