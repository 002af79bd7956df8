"""The result row: one flat, frozen record per measured cell (llama-bench style).

Every row carries the full cell config, its metrics (null when not measured, with the reason in
the matching *_reason field), a status and the platform fingerprint, so a row means the same
thing outside the database it came from. The SQLite schema is derived from these fields
(edgeports.results); new fields become new columns in existing databases.

Units: times in milliseconds (`*_ms`) or seconds (`*_s`), sizes in bytes, energy in joules.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

STATUSES = ("ok", "oom", "error", "timeout", "skipped")
# the facts that make two platforms "the same place" for resume (clocks and versions excluded)
PLATFORM_ID_FIELDS = ("platform_machine", "platform_cpu", "platform_gpu", "platform_jetson_model",
                      "platform_power_mode")


@dataclass(frozen=True)
class RunTarget:
    """Which model runs where: the leading columns of every per-run results table (Row via CellConfig,
    edgeports.maxctx.MaxCtxRow)."""

    model: str
    arch: str
    family: str
    backend: str
    device: str
    dtype: str
    batch: int


def target_fields(obj: Any) -> dict[str, Any]:
    """The RunTarget fields of any object that has them (a Cell, a Row), as keyword arguments."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(RunTarget)}


@dataclass(frozen=True)
class CellConfig(RunTarget):
    """What a cell measures: the config columns every Row starts with (RunTarget's, then these)."""

    prompt_len: int
    decode_len: int
    prefill_mode: str  # "full" | "chunk:<n>"
    mem_budget: int | None = None  # bytes; None = the whole device
    weights: str = "random:0"  # "random:<seed>" or a local checkpoint path
    backend_options: str = ""  # the backend's --opt settings, "k=v,k=v" sorted (edgeports.options.canonical)
    repeats: int = 0


# what identifies a measurement (with the platform id) for resume and dedup: the config, not how often
CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(CellConfig) if f.name != "repeats")
# config fields added after databases existed: they join a key only when set, so a row without them keeps
# the key it had before (and an older database still resumes)
OPTIONAL_KEY_FIELDS = ("backend_options",)


@dataclass(frozen=True)
class Row(CellConfig):
    """One measured (or failed) cell: its config (CellConfig), then everything measured about it."""

    # ---- outcome
    status: str = "ok"  # one of STATUSES
    reason: str | None = None
    # ---- latency
    ttft_p10_ms: float | None = None
    ttft_p50_ms: float | None = None
    ttft_p90_ms: float | None = None
    ttft_samples_ms: str | None = None  # JSON list
    tpot_p10_ms: float | None = None
    tpot_p50_ms: float | None = None
    tpot_p90_ms: float | None = None
    tpot_samples_ms: str | None = None  # JSON list: decode time / decode_len, one per repeat
    prefill_tok_s: float | None = None  # batch * prompt_len / ttft_p50
    decode_tok_s: float | None = None  # batch / tpot_p50
    export_s: float | None = None  # export / engine build, never inside a timed region
    export_reused: int | None = None  # 1 when a cached artifact was loaded instead
    load_s: float | None = None
    warmup_s: float | None = None  # first (untimed) calls: lazy compilation, autotuning
    # ---- memory
    peak_allocated_bytes: int | None = None  # torch allocator (CUDA)
    peak_reserved_bytes: int | None = None
    device_used_peak_bytes: int | None = None  # device-wide (NVML / Jetson meminfo)
    device_used_reason: str | None = None
    rss_peak_bytes: int | None = None
    weight_bytes: int | None = None
    state_bytes: int | None = None  # KV caches + conv + SSM states after prefill + decode
    activation_bytes: int | None = None  # peak allocated - weights - state
    memory_reason: str | None = None  # why allocator/activation fields are null
    # ---- energy
    energy_prefill_j: float | None = None
    energy_per_token_j: float | None = None
    energy_method: str | None = None
    energy_reason: str | None = None
    # ---- roofline (edgeports.measure.roofline): analytic work / measured p50 time, and this run's peaks
    prefill_flop_s: float | None = None
    prefill_bytes_s: float | None = None  # compulsory traffic (weights, state): a lower bound
    decode_flop_s: float | None = None
    decode_bytes_s: float | None = None
    peak_flop_s: float | None = None  # measured once per run (matmul in the cell's dtype)
    peak_bytes_s: float | None = None  # measured once per run (device copy, read + write)
    peak_source: str | None = None
    roofline_reason: str | None = None
    # ---- correctness
    parity: str | None = None  # "ok ...", "skipped: ...", "not comparable: ..."
    parity_max_err: float | None = None
    runner_info: str | None = None  # JSON: backend details (kernels used, params, ...)
    # ---- provenance
    sweep_id: str | None = None
    cell_key: str = ""
    timestamp: str = ""
    # ---- platform fingerprint (edgeports.platform.FINGERPRINT_KEYS)
    platform_os: str | None = None
    platform_machine: str | None = None
    platform_python: str | None = None
    platform_cpu: str | None = None
    platform_cpu_count: str | None = None
    platform_torch: str | None = None
    platform_torch_cuda: str | None = None
    platform_gpu: str | None = None
    platform_gpu_cc: str | None = None
    platform_gpu_memory_bytes: str | None = None
    platform_gpu_driver: str | None = None
    platform_gpu_reason: str | None = None
    platform_onnxruntime: str | None = None
    platform_ort_providers: str | None = None
    platform_tensorrt: str | None = None
    platform_jetson_model: str | None = None
    platform_l4t: str | None = None
    platform_jetpack: str | None = None
    platform_jetpack_cuda: str | None = None
    platform_jetpack_tensorrt: str | None = None
    platform_power_mode: str | None = None
    platform_gpu_clock_mhz: str | None = None
    platform_emc_clock_mhz: str | None = None
    platform_edgeports: str | None = None
    platform_git_commit: str | None = None

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"row status {self.status!r} not in {STATUSES}")

    def to_dict(self) -> dict[str, Any]:
        """Field name -> value."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Row:
        """Build from a mapping, ignoring keys that are not fields (older or newer databases)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def field_types(cls: type = Row) -> dict[str, type]:
    """Field name -> base python type (int, float or str; Optional stripped) of Row, or of another
    flat dataclass stored in the results database (edgeports.results.ResultStore.add_records)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        args = [a for a in typing.get_args(hints[f.name]) if a is not type(None)]
        out[f.name] = args[0] if args else hints[f.name]
    return out


def platform_id(fingerprint: dict[str, Any]) -> str:
    """A short hash of the stable facts of a platform (what resume compares)."""
    key = json.dumps([fingerprint.get(k) for k in PLATFORM_ID_FIELDS])
    return hashlib.sha1(key.encode()).hexdigest()[:12]


def key_hash(ident: list[Any], config: Any) -> str:
    """A 16-hex-digit key of the identity list `ident`, extended by the OPTIONAL_KEY_FIELDS that `config` (a
    mapping or an object with those attributes) sets; an unset one (absent, None, "") leaves the key as it
    was before the field existed."""
    get = config.get if isinstance(config, dict) else lambda k: getattr(config, k, None)
    ident = list(ident) + [[k, get(k)] for k in OPTIONAL_KEY_FIELDS if get(k)]
    return hashlib.sha1(json.dumps(ident).encode()).hexdigest()[:16]


def cell_key(config: dict[str, Any], fingerprint: dict[str, Any]) -> str:
    """The identity of a cell on a platform: same key = same measurement (resume skips it)."""
    fields = [k for k in CONFIG_FIELDS if k not in OPTIONAL_KEY_FIELDS]
    return key_hash([config.get(k) for k in fields] + [platform_id(fingerprint)], config)


def backend_label(row: Any) -> str:
    """How reports name a row's backend: 'compile', or 'compile[mode=jit]' when it ran with --opt settings
    (a Row, a MaxCtxRow or anything with backend and, optionally, backend_options)."""
    options = getattr(row, "backend_options", None)
    return f"{row.backend}[{options}]" if options else row.backend


def now() -> str:
    """UTC timestamp, ISO 8601 to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def samples_json(samples: typing.Iterable[float]) -> str:
    """Raw samples as a compact JSON list (microsecond precision)."""
    return json.dumps([round(s, 4) for s in samples])
