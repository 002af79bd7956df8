"""Backend benchmark (GPU): the same models through each backend, prefill and decode latency side by side,
with the decode roofline, all measured in one run.

    python benchmarks/backends.py [--models llama-3.2-1b,mamba-2.8b,mamba2-2.7b] [--lens 1k,4k,16k]
                                  [--decode-lens 1k,16k] [--backends eager,compile-jit,compile-aot]
                                  [--quick] [--budget-s 480] [--out backends.json] [--jobs 5 --workdir DIR]

Each model is built once (random weights, bf16, on the GPU) and handed to every backend. A backend is one
function `setup_<name>(lm, args) -> (runner, setup_s, notes)` in BACKENDS (add yours there); its setup time
(compile / export / engine build) is reported apart from the timings. Before timing, each runner is checked
against eager on the same weights (edgeports.measure.parity). Timings are edgeports.measure.measure, as in
a sweep: warm-up excluded, median of repeats, device events. TTFT = prefill of L tokens; TPOT = mean decode
step after a prefill of the decode length. Decode roofline = (weight bytes + state bytes) / the device-to-
device copy bandwidth measured in this run (bytes read + written per second, benchmarks/_bench.peaks);
"%roof" = roofline time / TPOT. Ratios are eager's time over the backend's ("2.00x" = twice as fast).
Each non-eager backend is measured in a child process (--isolate, the default): a native crash there costs
only that backend's numbers. Compile and export times dominate the run (minutes per model for the 64-layer
SSMs): `--jobs N` runs them ahead in parallel workers, and `--budget-s` skips the (model, backend) setups
that would start after that many seconds, so one call ends in time.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import peaks  # noqa: E402

from edgeports.lens import format_len, parse_lens  # noqa: E402
from edgeports.measure import Plan, measure, parity, prompt_ids  # noqa: E402
from edgeports.measure.memory import is_oom  # noqa: E402
from edgeports.models import arch_module, get_spec, torch_dtype  # noqa: E402
from edgeports.runners.eager import EagerRunner  # noqa: E402

DEV = "cuda"
DEFAULT_MODELS = "llama-3.2-1b,mamba-2.8b,mamba2-2.7b"


# ---- backends: one setup function each -------------------------------------------------------------------
def setup_eager(lm, args):
    """Our LM as PyTorch runs it (the reference of every ratio)."""
    return EagerRunner(lm, DEV), 0.0, {}


def setup_compile_jit(lm, args):
    """torch.compile in process: dynamic-L prefill, decode replayed from a CUDA graph; setup = compile. After
    a --jobs worker compiled the same model, this compile finds Inductor's on-disk caches warm: setup is then
    the worker's (cold) compile time and `compile_s_warm` this one."""
    from edgeports.runners.compile import JitRunner

    t0 = time.perf_counter()
    runner = JitRunner(copy.deepcopy(lm), DEV, batch=1, chunked=False)  # it fuses projections in place
    setup_s = time.perf_counter() - t0
    prep = _prepared(args, lm.spec.name, "compile-jit")
    if prep:
        return runner, prep["setup_s"], {"compile_s": prep["compile_s"], "compile_s_warm": round(setup_s, 1)}
    return runner, setup_s, {"compile_s": runner.info["compile_s"]}


def export_compile_aot(lm, args) -> Path:
    """AOTInductor packages of the LM (prefill + decode) in the workdir."""
    from edgeports.exporters.base import ExportOptions
    from edgeports.exporters.compile import export

    extra = (("chunked", False), ("weights", args.aot_weights))
    options = ExportOptions(dtype=args.dtype, max_len=args.max_len, device=DEV, extra=extra)
    return export(lm, Path(args.workdir) / f"{lm.spec.name}-{args.dtype}-aot", options).path


def setup_compile_aot(lm, args):
    """AOTInductor packages exported from the same LM, loaded without model code; setup = export."""
    from edgeports.exporters.base import read_artifact
    from edgeports.runners.compile import load

    path, setup_s = _exported(lm, args, "compile-aot", export_compile_aot)
    runner = load(read_artifact(path, backend="compile"), DEV)
    return runner, setup_s, {"export_s": round(setup_s, 1)}


def export_onnx(lm, args, attention: str = "standard", ssm: str = "standard") -> Path:
    """ONNX graphs of the LM (KV caches sized per prompt) in the workdir; traced on the host CPU (an ONNX graph
    has no device). `attention` / `ssm`: the exporter's onnx_attention / onnx_ssm lowerings."""
    from edgeports.exporters import onnx as onnx_exporter
    from edgeports.exporters.base import ExportOptions

    extra = (("onnx_chunked", False), ("onnx_cache", "dynamic"), ("onnx_attention", attention), ("onnx_ssm", ssm))
    tag = attention if ssm == "standard" else f"{attention}-ssm-{ssm}"
    options = ExportOptions(dtype=args.dtype, max_len=args.max_len, extra=extra)
    return onnx_exporter.export(lm, Path(args.workdir) / f"{lm.spec.name}-{args.dtype}-onnx-{tag}", options).path


def export_onnx_gqa(lm, args) -> Path:
    """The ONNX export with attention as com.microsoft GroupQueryAttention (onnx_attention=gqa); refused for a
    model without attention, whose graphs would be the standard export's."""
    from edgeports.exporters.onnx import gqa_applicable

    if not gqa_applicable(lm):
        raise RuntimeError(f"{lm.spec.name} has no attention: its gqa export is the standard one (see ort-cuda)")
    return export_onnx(lm, args, "gqa")


def export_onnx_custom(lm, args) -> Path:
    """The export with every SSM op as one ai.edgeports node (onnx_ssm=custom; attention as GroupQueryAttention
    where the LM has some), run by edgeports' custom-op library; refused for a model without SSM layers."""
    from edgeports.exporters.onnx import gqa_applicable
    from edgeports.models.layers.mamba import MambaMixer
    from edgeports.models.layers.mamba2 import Mamba2Mixer

    if not any(isinstance(m, (MambaMixer, Mamba2Mixer)) for m in lm.modules()):
        raise RuntimeError(f"{lm.spec.name} has no SSM layers: its custom export is the gqa one (see ort-cuda-gqa)")
    return export_onnx(lm, args, "gqa" if gqa_applicable(lm) else "standard", "custom")


def _ort_cuda(lm, args, backend: str, export_fn):
    """ONNX Runtime's CUDA EP on an ONNX export of the same LM, with IO binding and the state on the device;
    setup = export + sessions. Needs onnxruntime-gpu (../shared/tools/ort-gpu-parts.sh, then
    PYTHONPATH=/tmp/ortsite)."""
    from edgeports.exporters.base import read_artifact
    from edgeports.runners.ort import load

    path, export_s = _exported(lm, args, backend, export_fn)
    t0 = time.perf_counter()
    runner = load(read_artifact(path, backend="onnx"), DEV)
    sessions_s = time.perf_counter() - t0
    return runner, export_s + sessions_s, {"export_s": round(export_s, 1), "sessions_s": round(sessions_s, 1),
                                           "provider": runner.info["provider"]}


def setup_ort_cuda(lm, args):
    """The standard lowering under ONNX Runtime's CUDA EP."""
    return _ort_cuda(lm, args, "ort-cuda", export_onnx)


def setup_ort_cuda_gqa(lm, args):
    """The GroupQueryAttention lowering (onnx_attention=gqa) under the CUDA EP."""
    return _ort_cuda(lm, args, "ort-cuda-gqa", export_onnx_gqa)


def setup_ort_cuda_custom(lm, args):
    """The SSM ops as ai.edgeports nodes under the CUDA EP, on edgeports' CUDA kernels (custom-op library)."""
    return _ort_cuda(lm, args, "ort-cuda-custom", export_onnx_custom)


BACKENDS = {"eager": setup_eager, "compile-jit": setup_compile_jit, "compile-aot": setup_compile_aot,
            "ort-cuda": setup_ort_cuda, "ort-cuda-gqa": setup_ort_cuda_gqa, "ort-cuda-custom": setup_ort_cuda_custom}
# the work a --jobs worker does ahead of the measurements: an export, or (JIT) a compile that fills the caches
PREPARE = {"compile-jit": None, "compile-aot": export_compile_aot, "ort-cuda": export_onnx,
           "ort-cuda-gqa": export_onnx_gqa, "ort-cuda-custom": export_onnx_custom}


# ---- preparing in parallel (--jobs) -------------------------------------------------------------------
def _prep_file(args, name: str, backend: str) -> Path:
    return Path(args.workdir) / f"prep-{name}-{args.dtype}-{backend}.json"


def _measure_file(args, name: str, backend: str) -> Path:
    return Path(args.workdir) / f"measure-{name}-{args.dtype}-{backend}.json"


def _export_cache(args, name: str, backend: str) -> Path:
    """An export worker's own Inductor and Triton caches."""
    return Path(args.workdir) / f"cache-{name}-{backend}"


class ChildFailed(Exception):
    """A measuring child's recorded failure (its text already names the exception type)."""


def _error_text(e: Exception) -> str:
    """A recorded failure: the exception's type and first line."""
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]


def _record(args, name: str, backend: str) -> dict | None:
    """A worker's record for (model, backend) made for this run's max_len (a record without one predates the
    key and is taken as it is), else None: an artifact for shorter prompts cannot be loaded for these."""
    f = _prep_file(args, name, backend)
    if not f.exists():
        return None
    rec = json.loads(f.read_text())
    return rec if rec.get("max_len", args.max_len) == args.max_len else None


def _prepared(args, name: str, backend: str) -> dict | None:
    """What a worker left for (model, backend): {"setup_s", "artifact"?, ...}; its error is raised here."""
    rec = _record(args, name, backend)
    if rec is not None and "error" in rec:
        raise RuntimeError(f"in the preparing worker: {rec['error']}")
    return rec


def _exported(lm, args, backend: str, export_fn) -> tuple[Path, float]:
    """(artifact path, export seconds): a worker's, or exported now."""
    prep = _prepared(args, lm.spec.name, backend)
    if prep:
        return Path(prep["artifact"]), prep["setup_s"]
    t0 = time.perf_counter()
    path = export_fn(lm, args)
    return path, time.perf_counter() - t0


def prepare_one(args, name: str, backend: str) -> int:
    """Worker body (--prepare-one): build the model as the measuring process does (same seed, so the same
    weights), run the backend's export or JIT compile, record the result in the workdir."""
    rec: dict = {}
    try:
        lm = build_on_gpu(name, args.dtype)
        t0 = time.perf_counter()
        if backend == "compile-jit":
            runner, _, notes = setup_compile_jit(lm, args)
            rec.update(compile_s=notes["compile_s"])
            runner.close()
        else:
            rec["artifact"] = str(PREPARE[backend](lm, args))
        rec["setup_s"] = time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001 - recorded; the measuring process reports it for this backend
        rec = {"error": _error_text(e)}
        traceback.print_exc()  # the whole story, in the worker's log (the record keeps one line)
    f = _prep_file(args, name, backend)
    f.with_suffix(".tmp").write_text(json.dumps({**rec, "max_len": args.max_len}))
    f.with_suffix(".tmp").replace(f)  # whole or absent, should the worker be killed
    return 0


def prepare_all(args, argv: list[str]) -> None:
    """Run the (model, backend) preparations in up to args.jobs worker processes at once: compiles and exports
    are CPU-bound and single-model, so they overlap well; measurements stay sequential in this process."""
    # no record for this max_len, or an error (of an earlier run in this workdir): prepared (again)
    todo = [(m, b) for m in args.models for b in args.backends
            if b in PREPARE and "error" in (_record(args, m, b) or {"error": None})]
    running: list[tuple[str, str, subprocess.Popen, float]] = []
    t_start = time.perf_counter()
    try:
        _run_workers(args, argv, todo, running, t_start)
    finally:  # interrupted (SIGTERM, Ctrl-C): no worker outlives this process
        for _, _, proc, _ in running:
            proc.kill()
            proc.wait()


def _run_workers(args, argv: list[str], todo: list[tuple[str, str]], running: list, t_start: float) -> None:
    """prepare_all's loop: start workers up to args.jobs, report each as it ends."""
    while todo or running:
        while todo and len(running) < args.jobs:
            name, backend = todo.pop(0)
            _prep_file(args, name, backend).unlink(missing_ok=True)
            env = dict(os.environ)
            if backend != "compile-jit":  # JIT workers fill the shared caches that the measuring process reads
                # a package is zipped from files in Inductor's cache: a concurrent compile of the same kernels
                # rewrote one mid-write on the H100 ("inline_container.cc: unexpected pos"), so exports compile
                # in caches of their own
                cache = _export_cache(args, name, backend)
                env.update(TORCHINDUCTOR_CACHE_DIR=str(cache / "inductor"), TRITON_CACHE_DIR=str(cache / "triton"))
            with open(_prep_file(args, name, backend).with_suffix(".log"), "w") as log:  # the child keeps its own fd
                proc = subprocess.Popen([sys.executable, __file__, *argv, "--prepare-one", name, backend],
                                        stdout=log, stderr=subprocess.STDOUT, env=env)
            running.append((name, backend, proc, time.perf_counter()))
        for item in list(running):
            name, backend, proc, t0 = item
            if proc.poll() is None:
                continue
            running.remove(item)
            if not _prep_file(args, name, backend).exists():  # the worker died before writing its record
                _prep_file(args, name, backend).write_text(json.dumps({"error": f"worker exit {proc.returncode}"}))
            rec = json.loads(_prep_file(args, name, backend).read_text())
            # an export's own Inductor cache is of no use once its artifact is written, and three models'
            # caches and artifacts filled the GPU machine's 64 GiB disk (ENOSPC, H100, 2026-11-22)
            shutil.rmtree(_export_cache(args, name, backend), ignore_errors=True)
            print(f"prepared {name} {backend} in {time.perf_counter() - t0:.0f} s: "
                  f"{rec.get('error') or 'ok'} (at {time.perf_counter() - t_start:.0f} s)", flush=True)
        time.sleep(1)


# ---- measurement ------------------------------------------------------------------------------------------
def build_on_gpu(name: str, dtype: str, layers: int | None = None):
    """The zoo model with random weights initialised on the GPU (values do not change latency); `layers` keeps
    only the first that many."""
    spec = get_spec(name)
    if layers:
        spec = dataclasses.replace(spec, config={**spec.config, "num_hidden_layers": layers})
    torch.manual_seed(0)
    with torch.device(DEV):
        lm = arch_module(spec.arch).build(spec)
    return lm.to(device=DEV, dtype=torch_dtype(dtype)).eval().requires_grad_(False)


def bench_backend(lm, runner, reference, args, copy_gbs: float) -> dict:
    """Parity against eager, then TTFT at each prefill length and TPOT at each decode length."""
    vocab = lm.spec.config["vocab_size"]
    out: dict = {"prefill_ms": {}, "decode_ms": {}, "roofline_ms": {}, "state_bytes": {}}
    if reference is not runner:
        ids = prompt_ids(vocab, 1, parity.prompt_len(args.max_len), DEV, seed=1)
        check = parity.check(runner, reference, ids, None, args.dtype)
        out["parity"] = check.text
        if not check.ok:
            return out
    # what one decode step reads: the model's weights, whatever the backend keeps resident (compile-aot holds one
    # copy per package, runner.weight_bytes; its decode program reads one of them)
    step_weight_bytes = lm.weight_bytes()
    for length in sorted(set(args.lens) | set(args.decode_lens)):
        steps = args.steps if length in args.decode_lens else 0
        try:  # a length that fails (typically out of memory at the longest) keeps the shorter ones' numbers
            m = measure(runner, Plan(prompt_len=length, decode_len=steps, repeats=args.repeats, warmup=1), vocab)
        except Exception as e:  # noqa: BLE001 - recorded per length; the next length is still tried
            out.setdefault("errors", {})[length] = _error_text(e)
            if is_oom(e):
                out.setdefault("oom_lens", []).append(length)
            print(f"  {format_len(length)}: {out['errors'][length]}", flush=True)
            continue
        if length in args.lens:
            out["prefill_ms"][length] = m["ttft_p50_ms"]
        if steps:
            out["decode_ms"][length] = m["tpot_p50_ms"]
            out["state_bytes"][length] = m["state_bytes"]
            out["roofline_ms"][length] = (step_weight_bytes + m["state_bytes"]) / (copy_gbs * 1e9) * 1e3
    out["weight_bytes"] = runner.weight_bytes
    out["info"] = runner.info
    return out


def cpu_peaks() -> dict:
    """The dry run's stand-in for _bench.peaks: a host copy rate."""
    src = torch.randn(1 << 26)
    dst = torch.empty_like(src)
    dst.copy_(src)
    t0 = time.perf_counter()
    for _ in range(5):
        dst.copy_(src)
    copy_gbs = 5 * 2 * src.numel() * 4 / (time.perf_counter() - t0) / 1e9
    return dict(copy_gbs=copy_gbs, mm_tflops=float("nan"), gpu="cpu", torch=torch.__version__)


def run(args, results: dict) -> dict:
    """Every model x backend into `results` (also written to --out after each backend)."""
    t_start = time.perf_counter()
    pk = peaks() if DEV == "cuda" else cpu_peaks()
    print(f"{pk['gpu']}: copy {pk['copy_gbs']:.0f} GB/s, bf16 mm {pk['mm_tflops']:.0f} TFLOP/s, torch {pk['torch']}",
          flush=True)
    results.update(peaks=pk, args={k: v for k, v in vars(args).items() if k not in ("out", "workdir")})
    for name in args.models:
        lm = build_on_gpu(name, args.dtype)
        res = results["models"][name] = {}
        reference = None
        for backend in args.backends:
            if time.perf_counter() - t_start > args.budget_s:
                res[backend] = {"skipped": f"time budget of {args.budget_s:.0f} s spent"}
                print(f"{name} {backend}: skipped (time budget)", flush=True)
                continue
            try:
                if backend != "eager" and args.isolate:
                    res[backend] = measure_in_child(args, name, backend, pk["copy_gbs"])
                    if "error" in res[backend]:
                        raise ChildFailed(res[backend]["error"])
                    setup_s, r = res[backend]["setup_s"], res[backend]
                else:
                    runner, setup_s, notes = BACKENDS[backend](lm, args)
                    if backend == "eager":
                        reference = runner
                    r = bench_backend(lm, runner, reference or runner, args, pk["copy_gbs"])
                    res[backend] = {"setup_s": setup_s, **notes, **r}
                    if runner is not reference:
                        runner.close()
                print(f"{name} {backend}: setup {setup_s:.0f} s, {r.get('parity', 'reference')}", flush=True)
            except Exception as e:  # noqa: BLE001 - one failing backend must not lose the others' numbers
                res[backend] = {"error": str(e)[:300] if isinstance(e, ChildFailed) else _error_text(e)}
                print(f"{name} {backend}: {res[backend]['error']}", flush=True)
            finally:
                runner = None
                gc.collect()
                torch.cuda.empty_cache()
            _write(results, args.out)
        del lm, reference
        gc.collect()
        torch.cuda.empty_cache()
    results["wall_s"] = time.perf_counter() - t_start
    _write(results, args.out)
    return results


def measure_in_child(args, name: str, backend: str, copy_gbs: float) -> dict:
    """Setup, parity and timings of one (model, backend) in a child process (--isolate): a native crash there
    (AOTInductor's loader segfaulted on the H100) becomes this backend's error instead of the end of the run.
    The child builds the model with the same seed (the same weights) and its own eager parity reference."""
    record = _measure_file(args, name, backend)
    record.unlink(missing_ok=True)
    log_path = record.with_suffix(".log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, __file__, *args.raw, "--workdir", args.workdir,
                                 "--measure-one", name, backend, "--copy-gbs", str(copy_gbs)],
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            proc.wait()
        finally:
            if proc.poll() is None:  # interrupted: the child goes with us
                proc.kill()
                proc.wait()
    if record.exists():
        rec = json.loads(record.read_text())
        for key in ("prefill_ms", "decode_ms", "roofline_ms", "state_bytes"):  # JSON made the lengths strings
            if key in rec:
                rec[key] = {int(n): v for n, v in rec[key].items()}
        return rec
    tail = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()][-1:] or [""]
    how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
    return {"error": f"the measuring process died ({how}); last output: {tail[0][:200]}"}


def measure_one(args, name: str, backend: str) -> int:
    """Child body (--measure-one): what run() does for one non-eager backend, into a record file."""
    try:
        lm = build_on_gpu(name, args.dtype)
        reference, _, _ = setup_eager(lm, args)
        runner, setup_s, notes = BACKENDS[backend](lm, args)
        rec = {"setup_s": setup_s, **notes, **bench_backend(lm, runner, reference, args, args.copy_gbs)}
        runner.close()
    except Exception as e:  # noqa: BLE001 - recorded for the parent
        rec = {"error": _error_text(e)}
    _measure_file(args, name, backend).write_text(json.dumps(rec, default=str))
    return 0


def _write(results: dict, out: str | None) -> None:
    if out:
        Path(out).write_text(json.dumps(results, indent=1, default=str))


# ---- report -----------------------------------------------------------------------------------------------
def _int_lengths(results: dict) -> dict:
    """results with the per-length dicts keyed by int again (JSON made them strings)."""
    keyed = ("prefill_ms", "decode_ms", "roofline_ms")
    return {**results, "models": {name: {b: {k: ({int(n): v for n, v in x.items()} if k in keyed else x)
                                             for k, x in r.items()} for b, r in res.items()}
                                  for name, res in results["models"].items()}}


def table(results: dict) -> str:
    """One Markdown table: eager ms, each backend's ratio to eager, and decode roofline fractions (from a run's
    results or from their JSON file)."""
    results = _int_lengths(results)
    backends = [b for b in results["args"]["backends"] if b != "eager"]
    head = ["model", "phase", "len", "eager ms", *[f"{b} ms (vs eager)" for b in backends], "roofline ms",
            *[f"%roof {b}" for b in ["eager", *backends]]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, res in results["models"].items():
        eager = res.get("eager", {})
        for phase, key in (("prefill", "prefill_ms"), ("decode", "decode_ms")):
            lens = sorted({int(n) for r in res.values() for n in r.get(key, {})})
            for n in lens:
                base = eager.get(key, {}).get(n)
                cells = [name, phase, format_len(n), f"{base:.2f}" if base else "-"]
                for b in backends:
                    ms = res.get(b, {}).get(key, {}).get(n)
                    cells.append(f"{ms:.2f} ({base / ms:.2f}x)" if ms and base else f"{ms:.2f}" if ms else
                                 _why(res.get(b, {}), n))
                roof = next((r["roofline_ms"][n] for r in res.values() if n in r.get("roofline_ms", {})), None)
                cells.append(f"{roof:.3f}" if phase == "decode" and roof else "")
                for b in ["eager", *backends]:
                    ms = res.get(b, {}).get(key, {}).get(n)
                    cells.append(f"{100 * roof / ms:.0f}%" if phase == "decode" and roof and ms else "")
                lines.append("| " + " | ".join(cells) + " |")
    setup = ["", "| model | backend | setup s | notes |", "|---|---|---|---|"]
    for name, res in results["models"].items():
        for b, r in res.items():
            note = r.get("error") or r.get("skipped") or r.get("parity", "")
            note += "".join(f"; {format_len(int(n))}: {e}" for n, e in r.get("errors", {}).items())
            graph = (r.get("info") or {}).get("cuda_graph")
            setup.append(f"| {name} | {b} | {r.get('setup_s', 0):.0f} | {note}{'; cuda graph ' + graph if graph else ''} |")
    return "\n".join(lines + setup)


def _why(r: dict, length: int) -> str:
    """The table cell of a (backend, length) without a time."""
    if length in r.get("oom_lens", ()):
        return "oom"
    if length in r.get("errors", {}) or str(length) in r.get("errors", {}):
        return "error"
    return "error" if "error" in r else "skipped" if "skipped" in r else "-"


def main(argv=None) -> int:
    """Parse options, run, print the table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=DEFAULT_MODELS)
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument("--lens", default="1k,4k,16k", help="prefill lengths (edgeports --lens grammar, e.g. 1k-64k)")
    p.add_argument("--decode-lens", default="1k,16k", help="contexts at which decode is timed")
    p.add_argument("--steps", type=int, default=32, help="decode steps per timed repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--budget-s", type=float, default=480.0, help="start no new backend setup after this")
    p.add_argument("--quick", action="store_true", help="lens 1k,4k, decode at 1k, 2 repeats of 16 steps")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--jobs", type=int, default=0,
                   help="export / compile the models for every backend in this many worker processes at once "
                        "before measuring (0: each setup in turn, in this process)")
    p.add_argument("--workdir", default=None,
                   help="keep exported artifacts and worker records here (default: a temporary directory); a "
                        "later run with the same --workdir, models, dtype and lengths reuses them")
    p.add_argument("--aot-weights", default="auto", choices=["auto", "shared", "embedded"],
                   help="where compile-aot packages keep their weights (exporter option weights)")
    p.add_argument("--prepare-only", action="store_true", help="with --jobs: prepare, then stop")
    p.add_argument("--prepare-one", nargs=2, metavar=("MODEL", "BACKEND"), help=argparse.SUPPRESS)
    p.add_argument("--measure-one", nargs=2, metavar=("MODEL", "BACKEND"), help=argparse.SUPPRESS)
    p.add_argument("--copy-gbs", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=True,
                   help="measure each non-eager backend in a child process, so a native crash costs only that "
                        "backend's numbers (the child rebuilds the model and its eager reference)")
    p.add_argument("--device", default="cuda", help="cuda; cpu only to dry-run this script on tiny models")
    args = p.parse_args(argv)
    global DEV
    DEV = args.device
    if DEV == "cuda" and not torch.cuda.is_available():
        print("benchmarks/backends.py needs a CUDA GPU (--device cpu: a dry run on tiny models)", file=sys.stderr)
        return 2
    if args.quick:
        args.lens, args.decode_lens, args.repeats, args.steps = "1k,4k", "1k", 2, 16
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in args.backends if b not in BACKENDS]
    if unknown:
        print(f"unknown backends {unknown} (known: {', '.join(BACKENDS)})", file=sys.stderr)
        return 2
    if "eager" not in args.backends:
        args.backends.insert(0, "eager")  # every ratio and parity check needs it
    args.backends.sort(key=lambda b: b != "eager")
    # what a --jobs worker needs to prepare what this process will load, and an --isolate child to measure
    raw = ["--dtype", args.dtype, "--lens", args.lens, "--decode-lens", args.decode_lens, "--steps", str(args.steps),
           "--repeats", str(args.repeats), "--device", DEV]
    args.lens, args.decode_lens = parse_lens(args.lens), parse_lens(args.decode_lens)
    args.max_len = max(args.lens + args.decode_lens) + args.steps
    args.raw = raw
    if args.prepare_one:
        return prepare_one(args, *args.prepare_one)
    if args.measure_one:
        return measure_one(args, *args.measure_one)
    # a run killed by a time limit (SIGTERM) still prints what it measured (the JSON is written as it goes)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    results = {"args": vars(args), "models": {}}
    try:
        with tempfile.TemporaryDirectory(prefix="edgeports-bench-") as tmp:  # exported artifacts
            args.workdir = args.workdir or tmp
            Path(args.workdir).mkdir(parents=True, exist_ok=True)
            if args.jobs > 0:
                prepare_all(args, [*raw, "--workdir", args.workdir])
            if args.prepare_only:
                return 0
            results = run(args, results)
    except KeyboardInterrupt:
        print("interrupted: the table holds what was measured so far", flush=True)
        results.setdefault("wall_s", float("nan"))
    print(table(results))
    print(f"\nwall {results['wall_s']:.0f} s" + (f"; JSON in {args.out}" if args.out else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
