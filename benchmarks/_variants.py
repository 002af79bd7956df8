"""Shared by the kernel-variant benchmarks (plugin_variants.py, ssd_variants.py: -D tuning sweeps of the CUDA
kernels library): their common options and variant selection, building the library once per variant with nvcc
in parallel, loading each through impl_cuda's binding, keeping the variants that pass a correctness check, and
timing one call per variant next to triton's in a markdown row. Options and rows need no GPU; the rest does."""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Selection:
    """What a run covers: variant names (in the order given), torch dtype names, sequence lengths."""

    variants: tuple[str, ...]
    dtypes: tuple[str, ...]
    lens: tuple[int, ...]


def parser(doc: str, variants: Sequence[str], dtypes: Sequence[str], lens: str,
           dtypes_help: str | None = None) -> argparse.ArgumentParser:
    """The options every variant benchmark takes (--lens, --dtypes, --variants, --jobs, --arch); the script adds
    its own. `dtypes`: the short names --dtypes accepts; `lens`: --lens' default."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--lens", default=lens, help="sequence lengths to time (comma-separated)")
    ap.add_argument("--dtypes", default="bf16,fp16", help=dtypes_help or f"of {', '.join(dtypes)}")
    ap.add_argument("--variants", default=",".join(variants), help=f"of {', '.join(variants)}")
    ap.add_argument("--jobs", type=int, default=min(len(variants), os.cpu_count() or 1), help="parallel nvcc builds")
    ap.add_argument("--arch", default=None, help="GPU architecture to build for (default: the current GPU's)")
    return ap


def _items(text: str) -> list[str]:
    return [x for x in text.split(",") if x]


def select(prog: str, args: argparse.Namespace, variants: Sequence[str], dtypes: dict[str, str]) -> Selection:
    """The parsed --variants / --dtypes / --lens; an unknown name or a length that is not a positive integer
    exits with one line naming the known ones."""
    names = tuple(_items(args.variants))
    unknown = [v for v in names if v not in variants]
    if unknown:
        raise SystemExit(f"{prog}: unknown variants {unknown} (known: {', '.join(variants)})")
    short = _items(args.dtypes)
    unknown = [d for d in short if d not in dtypes]
    if unknown:
        raise SystemExit(f"{prog}: unknown dtypes {unknown} (known: {', '.join(dtypes)})")
    try:
        lens = tuple(int(x) for x in _items(args.lens))
    except ValueError:
        lens = ()
    if not lens or min(lens) <= 0:
        raise SystemExit(f"{prog}: --lens takes positive integers, comma-separated (got {args.lens!r})")
    return Selection(names, tuple(dtypes[d] for d in short), lens)


def start(prog: str, args: argparse.Namespace, sel: Selection, flags: dict[str, tuple[str, ...]],
          check: Callable[[object], str]) -> tuple[dict, bool]:
    """Print the run's header line, then build, load and check the selected variants (checked_variants): name ->
    loaded library of those that passed, and whether the triton implementation is there to time against.
    Exits with one line where there is no CUDA GPU."""
    import torch

    if not torch.cuda.is_available():
        raise SystemExit(f"{prog}: needs a CUDA GPU")
    from edgeports import kernels
    from edgeports.exporters import plugin_build

    arch = args.arch or plugin_build.current_arch()
    print(f"# {torch.cuda.get_device_name()}  sm_{arch}  variants: {', '.join(sel.variants)}", flush=True)
    libs = checked_variants({n: flags[n] for n in sel.variants}, arch, args.jobs, check)
    return libs, kernels.available_impls().get("triton", (False,))[0]


def row(lead: Sequence[str], cells: Sequence[str]) -> str:
    """One markdown table row: the leading columns, then one cell per variant."""
    return f"| {' | '.join(lead)} | {' | '.join(cells)} |"


def head(lead: Sequence[str], libs: Sequence[str]) -> str:
    """The table's heading and rule (after a blank line): the leading columns, then '<variant> ms (/triton)'."""
    return "\n" + row(lead, [f"{n} ms (/triton)" for n in libs]) + "\n|" + "---|" * (len(lead) + len(libs))


def ratio_cell(ms: float, triton_ms: float | None) -> str:
    """'1.449 (1.13x)': a variant's time and its ratio to triton's (< 1: faster than triton); the time alone
    without triton."""
    return f"{ms:.3f} ({ms / triton_ms:.2f}x)" if triton_ms else f"{ms:.3f}"


def timed(libs: dict, call: Callable[[str], object], has_triton: bool) -> tuple[str, list[str]]:
    """Time call(impl) with impl="triton" (where there) and impl="cuda" under each variant's library: the triton
    cell ('-' without it) and one ratio_cell per variant (GPU only)."""
    from _bench import median_ms

    from edgeports.kernels import impl_cuda

    tri = median_ms(lambda: call("triton"))[0] if has_triton else None
    cells = []
    for lib in libs.values():
        with impl_cuda.using_library(lib):
            cells.append(ratio_cell(median_ms(lambda: call("cuda"))[0], tri))
    return "-" if tri is None else f"{tri:.3f}", cells


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
