"""Build mamba-ssm and causal-conv1d from their PyPI sources for the GPU architectures in
TORCH_CUDA_ARCH_LIST only, against the torch already installed (used by both container images).

Why a script: both packages' setup.py append a fixed list of `-gencode` flags (sm_53 ... sm_121,
depending on the nvcc version), and torch.utils.cpp_extension ignores TORCH_CUDA_ARCH_LIST as soon
as any `-gencode` flag is present. Building every architecture takes hours on a Jetson and several
times longer than needed on a workstation, so the fixed flags are removed (each `cc_flag.append(...)`
of a `-gencode` pair becomes `pass`) and torch derives the flags from TORCH_CUDA_ARCH_LIST.
MAMBA_FORCE_BUILD / CAUSAL_CONV1D_FORCE_BUILD make setup.py compile instead of fetching a prebuilt
wheel from GitHub (those exist only for stock PyPI torch builds, not NGC or Jetson torch).

Usage: TORCH_CUDA_ARCH_LIST="8.6;8.9" python build_ssm_kernels.py mamba-ssm==X causal-conv1d==Y
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

GENCODE_APPEND = re.compile(r'cc_flag\.append\(\s*"(?:-gencode|arch=compute_\d+a?,code=(?:sm|compute)_\d+a?)"\s*\)')
FORCE_BUILD_VARS = {"MAMBA_FORCE_BUILD": "TRUE", "CAUSAL_CONV1D_FORCE_BUILD": "TRUE"}
# cc_flag / gencode lines in these setup.py files that the patch leaves alone must not name an arch
LEFTOVER_ARCH = re.compile(r"^[^#\n]*arch=compute_", re.M)


def strip_fixed_gencode(setup_py: str) -> str:
    """setup.py text with its hard-coded `-gencode` appends replaced by `pass` (indentation kept)."""
    patched, n = GENCODE_APPEND.subn("pass", setup_py)
    if n == 0 or LEFTOVER_ARCH.search(patched):
        raise SystemExit("build_ssm_kernels: setup.py layout changed (fixed -gencode flags not found "
                         "as cc_flag.append(...) calls); update the patch for this version")
    return patched


def build(requirement: str, workdir: Path) -> None:
    """Download the sdist of `requirement`, patch its setup.py, and pip-install it (no deps, no isolation)."""
    dist = workdir / "dist"
    env = {**os.environ, "MAMBA_SKIP_CUDA_BUILD": "TRUE", "CAUSAL_CONV1D_SKIP_CUDA_BUILD": "TRUE"}
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                    "--no-build-isolation", "-d", str(dist), requirement], check=True, env=env)
    name = re.split(r"[=<>~!]", requirement, maxsplit=1)[0].replace("-", "_").lower()
    (sdist,) = [p for p in dist.glob("*.tar.gz") if p.name.lower().startswith(name)]
    with tarfile.open(sdist) as tar:
        # the "data" filter (no absolute paths, links out of the tree) exists from Python 3.10.12
        tar.extractall(workdir, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    src = workdir / sdist.name.removesuffix(".tar.gz")
    setup_py = src / "setup.py"
    setup_py.write_text(strip_fixed_gencode(setup_py.read_text()))
    env = {**os.environ, **FORCE_BUILD_VARS}
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-v", str(src)],
                   check=True, env=env)


def main(argv: list[str]) -> None:
    """Build each requirement given on the command line, in order."""
    if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        raise SystemExit("build_ssm_kernels: set TORCH_CUDA_ARCH_LIST (e.g. '8.6;8.9' or '8.7')")
    if not argv:
        raise SystemExit(__doc__)
    for requirement in argv:
        with tempfile.TemporaryDirectory() as tmp:
            build(requirement, Path(tmp))


if __name__ == "__main__":
    main(sys.argv[1:])
