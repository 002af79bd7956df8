"""The sweep worker: one process per (model, backend) group, driven over a pipe by edgeports.sweep.

Protocol (JSON lines). The parent writes the job header to stdin, then one cell at a time; the
worker answers on its original stdout (fd 1 is pointed at stderr, so library prints cannot corrupt
the protocol):

    parent -> {"model", "backend", "device", "dtype", "seed", "weights", "batch", "max_len",
               "prefill_modes", "mem_budget", "artifacts", "extra"}   (extra: [[key, value], ...] export options)
    worker -> {"type": "ready", "export_s", "export_reused", "load_s"[, "mem_split"]}  (mem_split: CUDA budgets)
           or {"type": "load_failed", "status": "error"|"oom"|"skipped", "reason"}  (then exits)
    parent -> {"id", "prompt_len", "decode_len", "prefill_mode", "repeats", "warmup", "profile"}   (repeated)
    worker -> {"type": "row", "id", "status", "reason", ...metric fields}
    parent closes stdin -> the worker exits.

The worker never decides what to run next, never touches the results store and never retries:
the parent schedules cells, enforces timeouts and records crashes. `EDGEPORTS_FAULT` is a test
hook: comma-separated `kill:<at>` (SIGKILL the worker), `hang:<at>` (stall) and `raise:<at>` (raise)
directives act when the cell of prompt length <at> starts, or while loading when <at> is `load`.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import time
import traceback
from typing import Any

FAULT_ENV = "EDGEPORTS_FAULT"


def _send(out, msg: dict[str, Any]) -> None:
    out.write(json.dumps(msg, default=str) + "\n")
    out.flush()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()[:500]


def apply_mem_budget(budget: int | None, device: str, weight_bytes: int, runner=None) -> dict[str, int] | None:
    """Cap what the loaded model may use from here on, so that weights + state + activations fit
    `budget` bytes. Called after loading and a tiny warm-up, with no state held.

    CUDA: the budget is split between what the runner allocates outside torch and torch's caching
    allocator. `runner.limit_memory(budget)` bounds the former and returns its share (0 for runners that
    allocate only through torch; ONNX Runtime caps one shared arena at the budget minus torch's part, see
    runners/ort.py; Unsupported for runners that cannot be bounded, e.g. TensorRT: a skipped row). Torch's
    per-process fraction then caps its allocator at the rest (weights are already in it). Returns the split
    {"budget", "torch_bytes", "outside_torch_bytes"}, which the worker records in runner_info.
    CPU: RLIMIT_AS = current address space + budget - weights for the whole process, ONNX Runtime's arena
    included (imports, thread stacks and malloc arenas already mapped are not counted); returns None."""
    if not budget:
        return None
    import torch

    from edgeports.errors import EdgeportsError
    from edgeports.measure.memory import format_bytes, vm_size

    if budget < weight_bytes:
        raise MemoryError(f"the weights ({format_bytes(weight_bytes)}) exceed the memory budget ({format_bytes(budget)})")
    if device.startswith("cuda"):
        outside = runner.limit_memory(budget) if runner is not None else 0
        index = torch.device(device).index
        index = torch.cuda.current_device() if index is None else index  # the fraction call needs an index
        free, total = torch.cuda.mem_get_info(index)
        torch.cuda.set_per_process_memory_fraction(min(1.0, (budget - outside) / total), index)
        return {"budget": budget, "torch_bytes": budget - outside, "outside_torch_bytes": outside}
    now = vm_size()
    if now is None:
        raise EdgeportsError("--mem-budget on the CPU needs /proc/self/status (Linux)")
    _return_freed_memory()
    limit = now + budget - weight_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _return_freed_memory() -> None:
    """Make glibc hand large freed blocks back to the kernel (fixed 1 MiB mmap threshold instead of the
    dynamic one, which grows after the first large free and then serves big tensors from the heap, where
    freed memory stays mapped): otherwise what one cell freed still counts against the next one's RLIMIT_AS."""
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc: the budget still applies, freed memory is just returned less eagerly


def _fault(where: int | str) -> None:
    """The EDGEPORTS_FAULT test hook: comma-separated `<action>:<prompt_len or "load">` directives."""
    for directive in os.environ.get(FAULT_ENV, "").split(","):
        action, _, at = directive.partition(":")
        if at != str(where):
            continue
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "hang":
            print(f"EDGEPORTS_FAULT: hanging at {where}", file=sys.stderr, flush=True)
            time.sleep(3600)
        elif action == "raise":
            raise RuntimeError(f"injected fault at {where}")


class Worker:
    """Loads one (model, backend) and measures the cells it is sent."""

    def __init__(self, job: dict[str, Any]):
        self.job = job
        self.parity: dict[str, Any] = {}
        self.runner = None

    def load(self) -> dict[str, Any]:
        """Export (or reuse) the artifact and load the runner; the 'ready' message."""
        from edgeports.backends import get_backend
        from edgeports.exporters.base import ExportOptions
        from edgeports.measure.cell import prompt_ids
        from edgeports.models import get_spec
        from edgeports.runners.base import parse_prefill_mode

        job = self.job
        _fault("load")
        self.spec = get_spec(job["model"])
        self.backend = get_backend(job["backend"])
        self.options = ExportOptions(dtype=job["dtype"], seed=job["seed"], weights=job["weights"],
                                     batch=job["batch"], max_len=job["max_len"], device=job["device"],
                                     extra=tuple(tuple(p) for p in job.get("extra", ())))
        artifact, reused = self.backend.prepare(self.spec, self.options, job["artifacts"])
        t0 = time.perf_counter()
        self.runner = self.backend.load(artifact, job["device"])
        self.runner.sync()
        load_s = time.perf_counter() - t0
        # parity builds an fp32 reference: do it before the budget applies, then let the runner start
        # its thread pools (a tiny prefill) so that they are not charged to the budget either
        for mode in job["prefill_modes"]:
            self.check_parity(parse_prefill_mode(mode))
        first_mode = parse_prefill_mode(job["prefill_modes"][0])
        self.runner.prefill(prompt_ids(self.spec.config["vocab_size"], job["batch"], 8, self.runner.device), first_mode)
        self.runner.decode(1)
        self.runner.reset()
        _release(job["device"])
        split = apply_mem_budget(job.get("mem_budget"), job["device"], self.runner.weight_bytes, self.runner)
        ready = {"type": "ready", "export_s": artifact.export_s, "export_reused": int(reused), "load_s": load_s}
        if split:
            self.runner.info["mem_split"] = split  # every row's runner_info says how the budget was divided
            ready["mem_split"] = split
        return ready

    def check_parity(self, chunk: int | None) -> Any:
        """Parity against eager fp32 with identical weights, once per prefill chunking."""
        from edgeports.measure import parity

        if chunk in self.parity:
            return self.parity[chunk]
        if self.backend.name == "eager":
            result = parity.Parity(True, None, "skipped: eager is the reference")
        else:
            result = self._parity_against_reference(chunk)
        self.parity[chunk] = result
        return result

    def _parity_against_reference(self, chunk: int | None):
        """The runner vs an eager fp32 LM with its weights (the backend's parity_reference, else rebuilt)."""
        from edgeports.exporters.base import build_lm
        from edgeports.measure import parity
        from edgeports.measure.cell import prompt_ids
        from edgeports.runners.eager import EagerRunner

        make_reference = getattr(self.backend.runner, "parity_reference", None)
        try:
            if make_reference is not None:
                lm = make_reference(self.runner)
            else:
                # the runner's weights (rounded to its dtype) computed in fp32: the check sees compute error only
                lm = build_lm(self.spec, self.options, device=self.job["device"]).float()
            reference = EagerRunner(lm, self.job["device"])
            length = parity.prompt_len(self.job.get("max_len"))
            ids = prompt_ids(self.spec.config["vocab_size"], 1, length, self.runner.device, seed=1)
            result = parity.check(self.runner, reference, ids, chunk and max(1, min(chunk, length // 3)),
                                  self.options.dtype)
        except Exception as e:  # a reference that cannot be built here is a note, not a failed cell
            return parity.Parity(True, None, f"not checked: {_one_line(e)}")
        return result

    def cell(self, cell: dict[str, Any]) -> dict[str, Any]:
        """Measure one cell; the 'row' message (status ok, oom or error)."""
        from edgeports.measure import Plan, measure
        from edgeports.platform import device_memory_reader, energy_reader
        from edgeports.runners.base import parse_prefill_mode

        msg: dict[str, Any] = {"type": "row", "id": cell["id"], "status": "ok", "reason": None}
        meter = None
        try:
            _fault(cell["prompt_len"])
            chunk = parse_prefill_mode(cell["prefill_mode"])
            self.backend.caps.check(self.backend.name, self.job["device"], self.options.dtype, cell["prefill_mode"])
            par = self.check_parity(chunk)
            msg.update(parity=par.text, parity_max_err=par.max_err)
            if not par.ok:
                return {**msg, "status": "error", "reason": par.text}
            device = self.job["device"]
            mem_reader, mem_reason = device_memory_reader(device)
            meter, energy_reason, energy_method = energy_reader(device)
            plan = Plan(prompt_len=cell["prompt_len"], decode_len=cell["decode_len"], batch=self.job["batch"],
                        chunk=chunk, repeats=cell["repeats"], warmup=cell["warmup"], profile=cell.get("profile"))
            msg.update(measure(self.runner, plan, self.spec.config["vocab_size"], mem_reader, mem_reason, meter,
                               energy_method, energy_reason))
        except Exception as e:
            self.runner.reset()
            status = _status(e)
            if status == "error" and not _is_user_error(e):
                traceback.print_exc()  # into the worker log: this is a bug somewhere
            msg.update(status=status, reason=_reason(e))
        finally:
            if meter is not None and hasattr(meter, "close"):
                meter.close()
        if msg["status"] != "ok":
            _release(self.job["device"])  # after the except block: the traceback no longer pins tensors
        return msg


def _status(e: BaseException) -> str:
    """oom for out-of-memory, skipped for what the backend cannot run at all, else error."""
    from edgeports.measure import is_oom
    from edgeports.runners.base import Unsupported

    return "oom" if is_oom(e) else "skipped" if isinstance(e, Unsupported) else "error"


def _reason(e: BaseException) -> str:
    """One line; user errors and OOMs need no exception type in front of their message."""
    from edgeports.measure import is_oom

    text = str(e).strip().splitlines()[0][:500] if str(e).strip() else ""
    if is_oom(e):
        return f"out of memory: {text}" if text else "out of memory"
    return text if _is_user_error(e) and text else _one_line(e)


def _is_user_error(e: BaseException) -> bool:
    from edgeports.errors import EdgeportsError

    return isinstance(e, EdgeportsError)


def _release(device: str) -> None:
    import gc

    import torch

    from edgeports.measure.memory import release_cached

    gc.collect()
    release_cached(torch.device(device))


def die_with_parent() -> None:
    """SIGKILL this process when the sweep that started it dies (Linux): a worker runs in its own
    session, so nothing else would stop one stuck in a long cell after its parent was killed.
    Linux signals the death of the parent *thread*: start workers from a thread that outlives them."""
    import ctypes

    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return  # not Linux: the parent's timeouts and stdin EOF still end us
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def main() -> int:
    """Worker entry point: `python -m edgeports.worker` (the parent speaks the protocol above)."""
    die_with_parent()
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # stray prints from libraries go to the log, not into the protocol
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    job = json.loads(sys.stdin.readline())
    worker = Worker(job)
    try:
        _send(out, worker.load())
    except Exception as e:
        if _status(e) == "error" and not _is_user_error(e):
            traceback.print_exc()
        _send(out, {"type": "load_failed", "status": _status(e), "reason": _reason(e)})
        return 1
    for line in sys.stdin:
        if line.strip():
            _send(out, worker.cell(json.loads(line)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
