"""The sweep: models x backends x prefill modes x lengths, one worker process per (model, backend).

`SweepConfig` holds every default in one place (the CLI is built from it). `plan()` expands it into
cells; `run()` measures the cells not measured yet (resume), each (model, backend) group in a fresh
`python -m edgeports.worker` process that it drives cell by cell (see edgeports.worker), and
commits each Row as it arrives. Faults stay inside their cell:

    out of memory        -> `oom`; the longer lengths of that group (same prefill mode) -> `skipped`
    exception            -> `error` with a one-line reason
    no answer in time    -> worker killed, `timeout`; longer lengths -> `skipped` (retried on resume)
    worker died          -> `error` ("worker died: SIGKILL ..."); the next cells run in a fresh worker
    Ctrl-C               -> the worker is killed, every finished row is kept; rerun to resume
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeports.errors import EdgeportsError
from edgeports.exporters.base import canonical_dtype
from edgeports.lens import format_len, parse_lens
from edgeports.measure import roofline
from edgeports.measure.memory import parse_bytes
from edgeports.measure.profile import profiled_keys, store_ops
from edgeports.measure.row import CellConfig, Row, backend_label, cell_key, now
from edgeports.options import Extra, canonical, options_for, parse_opts
from edgeports.results import DEFAULT_DB, ResultStore
from edgeports.runners.base import parse_prefill_mode

# the smallest real config of each family; the default sweep runs those present in the zoo
DEFAULT_MODELS = ("qwen2.5-0.5b", "mamba-130m", "mamba2-130m", "falcon-h1-0.5b")
# per device kind: (lens, decode_len, repeats, warmup). On a CPU a cell is one timed run (p10 = p50 =
# p90) and no warm-up beyond the short prefill + decode every worker runs after loading, over 256-1k:
# on two cores our eager prefills take seconds, but transformers' own CPU path for Mamba2 layers (hf
# mamba2-130m, falcon-h1-0.5b) materialises [chunk, chunk, heads, state] products and grows faster
# than L (mamba2-130m: ~13 s at 256, ~83 s at 1k; minutes from 2k): the default sweep takes ~6
# minutes on two cores. On a GPU: the study's range, a full-length warm-up (lazy compilation, autotuning) and
# enough repeats for stable percentiles.
DEVICE_DEFAULTS = {"cpu": ("256-1k", 8, 1, 0), "cuda": ("1k-64k", 64, 5, 1)}


@dataclass(frozen=True)
class SweepConfig:
    """Everything a sweep needs; None means the per-device default (DEVICE_DEFAULTS)."""

    models: tuple[str, ...] = ()  # () = DEFAULT_MODELS that are in the zoo
    backends: str = "eager,hf"  # "all" or a comma list
    lens: str | None = None
    device: str = "auto"  # auto = cuda when available, else cpu
    dtype: str | None = None  # None = each model's default dtype
    batch: int = 1
    decode_len: int | None = None
    prefill_modes: tuple[str, ...] = ("full",)
    repeats: int | None = None
    warmup: int | None = None
    mem_budget: str | None = None  # e.g. "8GiB": RLIMIT_AS on cpu, allocator fraction on cuda
    timeout_s: float = 900.0  # per cell
    load_timeout_s: float = 1800.0  # exporting + loading one (model, backend): engine builds take long
    seed: int = 0
    weights: str | None = None
    db: str = DEFAULT_DB
    artifacts: str | None = None  # None = <db dir>/artifacts
    force: bool = False
    progress: bool = True
    profile: str | None = None  # "ops": a profiled pass per cell into the ops table (edgeports.measure.profile)
    options: tuple[str, ...] = ()  # --opt texts: [BACKEND.]KEY=VALUE, export options (edgeports.options)


@dataclass(frozen=True)
class Cell(CellConfig):
    """One measurement to make: a Row's config plus how many untimed runs precede it."""

    warmup: int = 1
    source: str = ""  # what --models named: a zoo name or a local HF directory (model is the spec's name)
    extra: Extra = ()  # the backend's checked --opt pairs (ExportOptions.extra); backend_options is their text

    def config(self) -> dict[str, Any]:
        """The Row config fields of this cell."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(CellConfig)}

    @property
    def group(self) -> tuple[str, str]:
        """Cells of one group share a worker process."""
        return self.model, self.backend

    @property
    def series(self) -> tuple[str, str, str]:
        """Cells whose lengths an OOM or timeout cuts short together."""
        return self.model, self.backend, self.prefill_mode


@dataclass(frozen=True)
class Plan:
    """The expanded sweep."""

    config: SweepConfig
    device: str
    cells: tuple[Cell, ...]
    skipped_backends: tuple[tuple[str, str], ...]  # (name, reason) left out of --backend all
    unsupported: tuple[tuple[Cell, str], ...]  # cells the backend cannot run: recorded as skipped


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; validates explicit devices."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind = device.split(":")[0]
    if kind not in ("cpu", "cuda"):
        raise EdgeportsError(f"unknown device {device!r} (use cpu, cuda, cuda:<n> or auto)")
    if kind == "cuda" and not torch.cuda.is_available():
        raise EdgeportsError(f"device {device!r} asked for, but no CUDA GPU is visible to torch {torch.__version__}")
    return device


def default_models() -> tuple[str, ...]:
    """DEFAULT_MODELS that the zoo holds."""
    from edgeports.models import zoo_names

    names = set(zoo_names())
    return tuple(m for m in DEFAULT_MODELS if m in names)


def plan(config: SweepConfig) -> Plan:
    """Validate the config and expand it into cells (EdgeportsError on any bad input)."""
    from edgeports.backends import select
    from edgeports.models import get_spec

    device = resolve_device(config.device)
    d_lens, d_decode, d_repeats, d_warmup = DEVICE_DEFAULTS[device.split(":")[0]]
    lens = parse_lens(config.lens if config.lens is not None else d_lens)
    decode_len = d_decode if config.decode_len is None else config.decode_len
    repeats = d_repeats if config.repeats is None else config.repeats
    warmup = d_warmup if config.warmup is None else config.warmup
    if decode_len < 0 or repeats < 1 or warmup < 0 or config.batch < 1:
        raise EdgeportsError("decode length and warm-up must be >= 0, repeats and batch >= 1")
    if config.timeout_s <= 0 or config.load_timeout_s <= 0:
        raise EdgeportsError("timeouts must be positive")
    budget = parse_bytes(config.mem_budget) if config.mem_budget else None
    if config.profile not in (None, "ops"):
        raise EdgeportsError(f"unknown --profile {config.profile!r} (use ops)")
    modes = tuple(dict.fromkeys(config.prefill_modes)) or ("full",)
    for m in modes:
        parse_prefill_mode(m)
    models = config.models or default_models()
    if not models:
        raise EdgeportsError("no models to run (none of the default models is in the zoo; pass --models)")
    specs = {m: get_spec(m) for m in dict.fromkeys(models)}
    if config.weights and len(specs) > 1:
        raise EdgeportsError("--weights applies to one model; run one --models at a time with it")
    backends, skipped = select(config.backends)
    opts = parse_opts(config.options)
    extras = {b.name: options_for(b, opts) for b in backends}
    weights = config.weights or f"random:{config.seed}"
    cells, unsupported = [], []
    for source, spec in specs.items():
        dtype = canonical_dtype(config.dtype or spec.dtype)
        for backend in backends:
            for mode in modes:
                for n in lens:
                    cell = Cell(model=spec.name, arch=spec.arch, family=spec.family, backend=backend.name,
                                device=device, dtype=dtype, batch=config.batch, prompt_len=n, decode_len=decode_len,
                                prefill_mode=mode, mem_budget=budget, weights=weights, repeats=repeats,
                                warmup=warmup, source=source, backend_options=canonical(extras[backend.name]),
                                extra=extras[backend.name])
                    try:
                        backend.caps.check(backend.name, device, dtype, mode)
                    except EdgeportsError as e:
                        unsupported.append((cell, str(e)))
                        continue
                    cells.append(cell)
    return Plan(config, device, tuple(cells), tuple(skipped), tuple(unsupported))


# ---------------------------------------------------------------------------------------------- workers

class WorkerProcess:
    """A running `python -m edgeports.worker` and a thread that turns its stdout into messages."""

    def __init__(self, job: dict[str, Any], log: Path):
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log = log
        self._log_file = open(log, "a")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        # a new session: Ctrl-C reaches only the parent, which then stops the worker itself
        self.proc = subprocess.Popen([sys.executable, "-m", "edgeports.worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._log_file, text=True, env=env,
                                     start_new_session=True)
        self.messages: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.send(job)

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self.messages.put(json.loads(line))
            except json.JSONDecodeError:
                continue  # not a protocol line
        self.messages.put(None)  # EOF: the worker exited

    def send(self, msg: dict[str, Any]) -> bool:
        """Write one message; False if the worker is gone."""
        try:
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, OSError):
            return False

    def receive(self, timeout_s: float) -> dict[str, Any] | None | str:
        """The next message; None when the worker exited; 'timeout' when none came in time."""
        try:
            return self.messages.get(timeout=timeout_s)
        except queue.Empty:
            return "timeout"

    def death(self) -> str:
        """Why the worker exited (after receive() returned None)."""
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.proc.returncode
        how = f"killed by {signal.Signals(-code).name}" if code and code < 0 else f"exited with status {code}"
        return f"worker died ({how}); log: {self.log}" + (f"; last line: {self.last_log_line()}"
                                                           if self.last_log_line() else "")

    def last_log_line(self) -> str:
        """The last non-empty line the worker wrote to its log."""
        try:
            lines = [ln.strip() for ln in self.log.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        return lines[-1][:300] if lines else ""

    def kill(self) -> None:
        """SIGKILL the worker's whole session (it may have children) and reap it."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()

    def close(self) -> None:
        """Ask the worker to finish (EOF on stdin), killing it if it does not."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
        self._log_file.close()


# ---------------------------------------------------------------------------------------------- engine

Emit = Callable[[Cell, dict[str, Any]], None]


def _job(cells: list[Cell], config: SweepConfig, artifacts: Path) -> dict[str, Any]:
    c = cells[0]
    return {"model": c.source or c.model, "backend": c.backend, "device": c.device, "dtype": c.dtype, "seed": config.seed,
            "weights": config.weights, "batch": c.batch, "mem_budget": c.mem_budget, "artifacts": str(artifacts),
            "max_len": max(x.prompt_len + x.decode_len for x in cells), "extra": [list(p) for p in c.extra],
            "prefill_modes": sorted({x.prefill_mode for x in cells})}


def run_group(cells: list[Cell], config: SweepConfig, artifacts: Path, logs: Path, emit: Emit,
              cut: dict[tuple, tuple[int, str]] | None = None) -> None:
    """Measure one (model, backend) group, calling emit(cell, fields) for every cell exactly once.

    `cut` maps a series to (prompt_len, why) from earlier results: longer cells are skipped."""
    cut = dict(cut or {})
    pending = sorted(cells, key=lambda c: (c.prefill_mode, c.prompt_len))

    def cut_short() -> None:
        for c in list(pending):
            if c.series in cut and c.prompt_len > cut[c.series][0]:
                pending.remove(c)
                emit(c, {"status": "skipped", "reason": cut[c.series][1]})

    while pending:
        cut_short()
        if not pending:
            return
        model, backend = pending[0].group
        worker = WorkerProcess(_job(pending, config, artifacts), logs / f"{model}__{backend}.log")
        try:
            msg = worker.receive(config.load_timeout_s)
            if not isinstance(msg, dict) or msg.get("type") != "ready":
                if msg == "timeout":
                    worker.kill()
                    status, reason = "timeout", f"export + load took longer than {config.load_timeout_s:g} s"
                elif msg is None:
                    status, reason = "error", worker.death()
                else:
                    status, reason = msg["status"], f"load: {msg['reason']}"
                # the model cannot be loaded: the same holds for every other cell of the group
                emit(pending[0], {"status": status, "reason": reason})
                for c in pending[1:]:
                    emit(c, {"status": "skipped", "reason": f"out of memory while loading ({reason})"}
                         if status == "oom" else {"status": status, "reason": reason})
                return
            loaded = {k: msg.get(k) for k in ("export_s", "export_reused", "load_s")}
            sent = 0
            while pending:
                cut_short()
                if not pending:
                    break
                cell = pending[0]
                sent += 1
                worker.send({"id": sent, "prompt_len": cell.prompt_len, "decode_len": cell.decode_len,
                             "prefill_mode": cell.prefill_mode, "repeats": cell.repeats, "warmup": cell.warmup,
                             "profile": config.profile})
                msg = worker.receive(config.timeout_s)
                pending.pop(0)
                if isinstance(msg, dict):
                    fields = {k: v for k, v in msg.items() if k not in ("type", "id")}
                    emit(cell, {**loaded, **fields})
                    if fields["status"] == "oom":
                        cut[cell.series] = (cell.prompt_len, f"out of memory at {format_len(cell.prompt_len)}")
                    continue
                if msg == "timeout":
                    worker.kill()
                    emit(cell, {**loaded, "status": "timeout",
                                "reason": f"no result within {config.timeout_s:g} s (worker killed)"})
                    cut[cell.series] = (cell.prompt_len, f"after timeout at {format_len(cell.prompt_len)}")
                else:
                    emit(cell, {**loaded, "status": "error", "reason": worker.death()})
                break  # the worker is gone: the remaining cells go to a fresh one
        except BaseException:  # Ctrl-C or a bug: stop the worker now, not after its current cell
            worker.kill()
            raise
        finally:
            worker.close()


def run(config: SweepConfig, console=None) -> dict[str, int]:
    """Run a sweep; returns the count of rows written per status. Ctrl-C keeps finished rows."""
    from edgeports.platform import fingerprint

    p = plan(config)
    store = ResultStore(config.db)  # fails here, before any work, when the db is unusable
    db_dir = Path(config.db).parent
    artifacts = Path(config.artifacts) if config.artifacts else db_dir / "artifacts"
    logs = db_dir / "logs"
    fp = fingerprint()
    sweep_id = uuid.uuid4().hex[:12]
    counts: dict[str, int] = {}

    def key(cell: Cell) -> str:
        return cell_key(cell.config(), fp)

    def emit(cell: Cell, fields: dict[str, Any]) -> None:
        ops = fields.pop("ops", None)
        fields.update(roofline.row_fields(cell.config(), fields, *peaks.get(cell.dtype, (None, None)), cell.source))
        row = Row.from_dict({**fp, **cell.config(), **fields, "sweep_id": sweep_id, "cell_key": key(cell),
                             "timestamp": now()})
        store.add(row)
        if ops and "error" in ops:
            progress.note(f"{cell.model} {cell.backend} {format_len(cell.prompt_len)}: no profile ({ops['error']})")
        store_ops(store, row.cell_key, ops, row.timestamp)
        counts[row.status] = counts.get(row.status, 0) + 1
        progress.advance(cell, row)

    done = set() if config.force else store.done_keys()
    if config.profile:
        done &= profiled_keys(store)  # a measured cell without its profile is measured again, profiled
    todo = [c for c in p.cells if key(c) not in done]
    # measured once per run, before any worker holds the device
    peaks = {dtype: roofline.peaks_for_run(p.device, dtype) for dtype in sorted({c.dtype for c in todo})}
    progress = Progress(len(p.cells) + len(p.unsupported), len(p.cells) - len(todo), console, config.progress)
    try:
        with progress:
            for name, reason in p.skipped_backends:
                progress.note(f"backend {name} not available: {reason}")
            for cell, reason in p.unsupported:
                if config.force or key(cell) not in done:
                    emit(cell, {"status": "skipped", "reason": reason})
                else:
                    progress.advance(cell, None)
            for cells in _groups(todo):
                run_group(cells, config, artifacts, logs, emit, cut=_earlier_cuts(store, cells, fp))
    except KeyboardInterrupt:
        progress.note(f"interrupted: {sum(counts.values())} rows written to {config.db}; run again to resume")
        raise
    finally:
        store.close()
    return counts


def _groups(cells: list[Cell]) -> Iterator[list[Cell]]:
    groups: dict[tuple[str, str], list[Cell]] = {}
    for c in cells:
        groups.setdefault(c.group, []).append(c)
    yield from groups.values()


def _earlier_cuts(store: ResultStore, cells: list[Cell], fp: dict[str, Any]) -> dict[tuple, tuple[int, str]]:
    """OOMs already recorded for these series on this platform (a resumed or extended sweep
    does not retry longer lengths)."""
    cut: dict[tuple, tuple[int, str]] = {}
    c = cells[0]
    rows = store.rows("model = ? AND backend = ? AND device = ? AND dtype = ? AND batch = ? AND status = 'oom' "
                      "AND decode_len = ? AND weights = ? AND mem_budget IS ? AND COALESCE(backend_options, '') = ?",
                      (c.model, c.backend, c.device, c.dtype, c.batch, c.decode_len, c.weights, c.mem_budget,
                       c.backend_options))
    for r in rows:
        if cell_key({**r.to_dict()}, fp) != r.cell_key:
            continue  # measured on another platform
        series = (r.model, r.backend, r.prefill_mode)
        if series not in cut or r.prompt_len < cut[series][0]:
            cut[series] = (r.prompt_len, f"out of memory at {format_len(r.prompt_len)}")
    return cut


class Progress:
    """A rich progress bar over the cells (or nothing, when disabled), with one line per failed cell."""

    def __init__(self, total: int, done: int, console=None, enabled: bool = True):
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self.total, self.done = total, done
        self._bar = None

    def __enter__(self) -> Progress:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=self.console)
            self._bar.__enter__()
            self._task = self._bar.add_task("sweep", total=self.total, completed=self.done)
        if self.done:
            self.note(f"resuming: {self.done} of {self.total} cells already measured")
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def note(self, text: str) -> None:
        """A line above the bar."""
        self.console.print(text, markup=False, highlight=False)

    def advance(self, cell: Cell, row: Row | None) -> None:
        """One more cell finished (row None: already measured)."""
        label = f"{cell.model} {backend_label(cell)} {cell.prefill_mode} {format_len(cell.prompt_len)}"
        if row is not None and row.status != "ok":
            self.note(f"{label}: {row.status}" + (f" ({row.reason})" if row.reason else ""))
        if self._bar is not None:
            self._bar.update(self._task, advance=1, description=label)
