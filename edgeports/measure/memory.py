"""Memory: byte-size parsing, process RSS, allocator peaks, and a peak sampler thread.

Named separately, as DESIGN.md asks: torch allocator peak (allocated, reserved; CUDA only),
device-wide used (NVML, or /proc/meminfo on Jetson; via edgeports.platform), process RSS (peak
via VmHWM after resetting it through /proc/self/clear_refs, plus sampling), exact weight and
state bytes (from the runner), and activations = peak allocated - weights - state.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from pathlib import Path

import torch

from edgeports.errors import EdgeportsError

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
          "t": 1000**4, "tb": 1000**4, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)
PAGE = 4096


def parse_bytes(text: str) -> int:
    """'8GiB' -> 8589934592, '512MB' -> 512000000, '1048576' -> 1048576. Positive sizes only."""
    m = _SIZE.match(str(text))
    unit = m.group(2).lower() if m else None
    if not m or unit not in _UNITS:
        raise EdgeportsError(f"bad memory size {text!r} (use e.g. 8GiB, 512MiB, 6GB)")
    value = int(float(m.group(1)) * _UNITS[unit])
    if value <= 0:
        raise EdgeportsError(f"bad memory size {text!r}: it must be positive")
    return value


def format_bytes(n: int | float | None) -> str:
    """1536 -> '1.5 KiB'; None -> '-'."""
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def rss_bytes() -> int:
    """Current resident set size of this process."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE


def _status_kib(field: str) -> int | None:
    m = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(m.group(1)) * 1024 if m else None


def vm_size() -> int | None:
    """Virtual address space of this process (what RLIMIT_AS limits)."""
    return _status_kib("VmSize")


def reset_rss_peak() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM); False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PeakSampler:
    """A daemon thread sampling process RSS and, when given, a device-wide used-bytes reader.

    Use as a context manager around the region; `.rss_peak` and `.device_peak` hold the maxima.
    The RSS peak also takes the kernel's VmHWM (reset on entry), which catches spikes between samples.
    """

    def __init__(self, device_reader: Callable[[], int] | None = None, interval_s: float = 0.005):
        self.device_reader = device_reader
        self.interval_s = interval_s
        self.rss_peak = 0
        self.device_peak: int | None = None
        self._hwm_reset = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="edgeports-mem", daemon=True)

    def _sample(self) -> None:
        self.rss_peak = max(self.rss_peak, rss_bytes())
        if self.device_reader is not None:
            used = int(self.device_reader())
            self.device_peak = used if self.device_peak is None else max(self.device_peak, used)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> PeakSampler:
        self._hwm_reset = reset_rss_peak()
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        if self._hwm_reset and (hwm := _status_kib("VmHWM")):
            self.rss_peak = max(self.rss_peak, hwm)


def reset_allocator_peaks(device: torch.device) -> None:
    """Start a fresh allocator peak (CUDA); nothing to do elsewhere."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def release_cached(device: torch.device) -> None:
    """Return the allocator's cached blocks to the device (CUDA); nothing to do elsewhere."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def allocator_peaks(device: torch.device) -> tuple[int | None, int | None]:
    """(peak allocated, peak reserved) bytes since the last reset; (None, None) off CUDA."""
    if device.type != "cuda":
        return None, None
    return torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)


def is_oom(exc: BaseException) -> bool:
    """True for an out-of-memory failure from the CUDA allocator, the CPU allocator or Python."""
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(exc)
    if isinstance(exc, RuntimeError) and "could not create a primitive" in text and _address_space_limited():
        return True  # oneDNN's message when its scratch allocation fails under RLIMIT_AS (--mem-budget on the CPU)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower()
                                              or "std::bad_alloc" in text)


def _address_space_limited() -> bool:
    import resource

    return resource.getrlimit(resource.RLIMIT_AS)[0] != resource.RLIM_INFINITY
