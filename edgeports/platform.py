"""Where a measurement ran, and the device-wide memory and energy counters of that place.

`fingerprint()` is a flat dict of strings (keys prefixed `platform_`) stored in every result row:
OS, CPU, torch/CUDA, GPU and driver, ONNX Runtime, TensorRT, Jetson model, L4T, JetPack, power mode,
clocks, edgeports version and git commit. `device_memory_reader` and `energy_reader` return zero-arg
callables the measurement code polls: NVML on discrete GPUs; on Jetson (Tegra, unified memory,
no NVML) /proc/meminfo and the INA3221 power rails in sysfs.

Every file the module reads is a module-level constant *relative to* `SYSROOT`, so tests point the
whole module at a fixture tree (`monkeypatch.setattr(platform, "SYSROOT", fixture_dir)`). Parsers
take text and are pure. pynvml, onnxruntime and tensorrt are imported lazily; a missing one gives
None plus a reason, never an exception.
"""

from __future__ import annotations

import functools
import os
import platform as _pyplatform
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SYSROOT = Path("/")
NV_TEGRA_RELEASE = "etc/nv_tegra_release"
# Docker masks /sys/firmware (hence /proc/device-tree) in containers: `make run-jetson` bind-mounts the
# host's device tree at the second location.
DEVICE_TREE_DIRS = ("proc/device-tree", "run/edgeports/device-tree")
PROC_MEMINFO = "proc/meminfo"
PROC_CPUINFO = "proc/cpuinfo"
# JetPack 5/6 (upstream hwmon driver): <dev>/hwmon/hwmonN/in{1,2,3}_label, in*_input (mV), curr*_input (mA).
INA3221_DRIVER_DIR = "sys/bus/i2c/drivers/ina3221"
DEVFREQ_DIR = "sys/class/devfreq"
# EMC (memory controller) rate lives in BPMP debugfs: readable as root on the host, usually not in a container.
EMC_RATE = "sys/kernel/debug/bpmp/debug/clk/emc/rate"
# `nvpmodel -q` is absent from most containers; its state file and the config naming the modes are not.
NVPMODEL_STATUS = "var/lib/nvpmodel/status"
NVPMODEL_CONF = "etc/nvpmodel.conf"
NVPMODEL_QUERY = ("nvpmodel", "-q")

# L4T release -> JetPack, from NVIDIA's JetPack archive. Unlisted releases give None, not a guess.
L4T_TO_JETPACK = {
    "35.3.1": "5.1.1", "35.4.1": "5.1.2", "35.5.0": "5.1.3", "35.6.0": "5.1.4",
    "36.2.0": "6.0 DP", "36.3.0": "6.0", "36.4.0": "6.1", "36.4.3": "6.2", "36.4.4": "6.2.1",
    "36.4.7": "6.2.1",
}
# L4T major.minor -> (CUDA, TensorRT) that JetPack ships. IPluginV3 needs TensorRT 10: r36.4+ only.
L4T_STACK = {
    "35.3": ("11.4", "8.5.2"), "35.4": ("11.4", "8.5.2"), "35.5": ("11.4", "8.5.2"), "35.6": ("11.4", "8.5.2"),
    "36.2": ("12.2", "8.6.2"), "36.3": ("12.2", "8.6.2"), "36.4": ("12.6", "10.3.0"),
}
# Tegra SoC (from the device-tree `compatible` list) -> CUDA compute capability of its integrated GPU.
TEGRA_COMPUTE_CAPABILITY = {"tegra234": "8.7", "tegra194": "7.2", "tegra186": "6.2", "tegra210": "5.3"}
# Rails that measure the whole module input; the others are sub-rails of it, so summing would double count.
TOTAL_RAILS = ("VDD_IN", "POM_5V_IN")
# ARM "CPU part" ids of cores found on Jetson / Grace hosts (aarch64 /proc/cpuinfo has no model name).
ARM_CPU_PARTS = {"0xd42": "Cortex-A78AE", "0xd41": "Cortex-A78", "0xd08": "Cortex-A72", "0xd0c": "Neoverse-N1",
                 "0xd40": "Neoverse-V1", "0xd4f": "Neoverse-V2", "0x004": "Carmel"}

FINGERPRINT_KEYS = (
    "platform_os", "platform_machine", "platform_python", "platform_cpu", "platform_cpu_count",
    "platform_torch", "platform_torch_cuda",
    "platform_gpu", "platform_gpu_cc", "platform_gpu_memory_bytes", "platform_gpu_driver", "platform_gpu_reason",
    "platform_onnxruntime", "platform_ort_providers", "platform_tensorrt",
    "platform_jetson_model", "platform_l4t", "platform_jetpack", "platform_jetpack_cuda",
    "platform_jetpack_tensorrt", "platform_power_mode", "platform_gpu_clock_mhz", "platform_emc_clock_mhz",
    "platform_edgeports", "platform_git_commit",
)


def _path(rel: str) -> Path:
    return Path(SYSROOT) / rel


def _read(rel_or_path: str | Path) -> str | None:
    path = rel_or_path if isinstance(rel_or_path, Path) else _path(rel_or_path)
    try:
        # device-tree strings are NUL-terminated
        return path.read_text(errors="replace").replace("\x00", "").strip()
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------- parsers

def parse_nv_tegra_release(text: str) -> str | None:
    """'# R36 (release), REVISION: 4.3, GCID: ...' -> '36.4.3' (None when the line is not there)."""
    m = re.search(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)(?:\.(\d+))?", text)
    if not m:
        return None
    return f"{m.group(1)}.{m.group(2)}.{m.group(3) or 0}"


def jetpack_for_l4t(l4t: str | None) -> tuple[str | None, str | None, str | None]:
    """(JetPack, CUDA, TensorRT) shipped with an L4T release; None for each fact the tables lack."""
    if not l4t:
        return None, None, None
    cuda, trt = L4T_STACK.get(".".join(l4t.split(".")[:2]), (None, None))
    return L4T_TO_JETPACK.get(l4t), cuda, trt


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo -> {field: bytes} ('MemTotal:  7994564 kB' -> 8186433536)."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"(\w+(?:\(\w+\))?):\s+(\d+)(?:\s+(kB))?", line)
        if m:
            out[m.group(1)] = int(m.group(2)) * (1024 if m.group(3) else 1)
    return out


def parse_nvpmodel_query(text: str) -> str | None:
    """`nvpmodel -q` output ('NV Power Mode: MAXN_SUPER' then the id '2') -> 'MAXN_SUPER (2)'."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for i, line in enumerate(lines):
        m = re.match(r"NV Power Mode:\s*(.+)", line)
        if m:
            nxt = lines[i + 1] if i + 1 < len(lines) else ""
            return f"{m.group(1).strip()} ({nxt})" if nxt.isdigit() else m.group(1).strip()
    return None


def parse_nvpmodel_status(status: str, conf: str | None) -> str | None:
    """/var/lib/nvpmodel/status ('pmode:0002 ...') + /etc/nvpmodel.conf -> 'MAXN_SUPER (2)'."""
    m = re.search(r"pmode:\s*(\d+)", status)
    if not m:
        return None
    mode = int(m.group(1))
    names = dict(re.findall(r"<\s*POWER_MODEL\s+ID=(\d+)\s+NAME=(\S+)\s*>", conf or ""))
    name = names.get(str(mode))
    return f"{name} ({mode})" if name else f"mode {mode}"


def parse_cpuinfo(text: str) -> str | None:
    """CPU model from /proc/cpuinfo: 'model name' on x86, the ARM 'CPU part' id on aarch64."""
    m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    if m:
        return m.group(1).strip()
    parts = sorted(set(re.findall(r"^CPU part\s*:\s*(0x[0-9a-fA-F]+)", text, re.M)))
    return "+".join(ARM_CPU_PARTS.get(p.lower(), f"ARM part {p}") for p in parts) or None


# ---------------------------------------------------------------------------------------------- Jetson

def device_tree(name: str) -> str | None:
    """A device-tree property ('model', 'compatible') as text, NULs removed; None where not exposed."""
    for d in DEVICE_TREE_DIRS:
        if (text := _read(f"{d}/{name}")) is not None:
            return text
    return None


def is_jetson() -> bool:
    """True on a Tegra (Jetson) system: L4T release file or an nvidia,tegra device-tree entry."""
    return _path(NV_TEGRA_RELEASE).exists() or "nvidia,tegra" in (device_tree("compatible") or "")


def _tegra_soc() -> str | None:
    # the compatible list is NUL-separated: "nvidia,p3768-0000+p3767-0005\0nvidia,p3767-0005\0nvidia,tegra234"
    m = re.search(r"nvidia,(tegra\d+)", device_tree("compatible") or "")
    return m.group(1) if m else None


def power_mode() -> str | None:
    """The current nvpmodel mode, e.g. '15W (0)': `nvpmodel -q`, else its status file; None off Jetson."""
    exe = shutil.which(NVPMODEL_QUERY[0])
    if exe and Path(SYSROOT) == Path("/"):
        try:
            out = subprocess.run([exe, *NVPMODEL_QUERY[1:]], capture_output=True, text=True, timeout=10).stdout
            if (mode := parse_nvpmodel_query(out)) is not None:
                return mode
        except (OSError, subprocess.SubprocessError):
            pass
    status = _read(NVPMODEL_STATUS)
    return parse_nvpmodel_status(status, _read(NVPMODEL_CONF)) if status else None


def jetson_clocks() -> dict[str, str | None]:
    """Current GPU and EMC clocks in MHz (strings; None where sysfs does not expose them here)."""
    gpu = None
    devfreq = _path(DEVFREQ_DIR)
    for dev in sorted(devfreq.glob("*")) if devfreq.is_dir() else []:
        # 17000000.gpu (JetPack 6) / 17000000.ga10b (JetPack 5)
        if dev.name.endswith((".gpu", ".ga10b", ".gv11b", ".gp10b")) and (hz := _read(dev / "cur_freq")):
            gpu = f"{int(hz) / 1e6:.0f}"
            break
    emc = _read(EMC_RATE)
    return {"gpu_mhz": gpu, "emc_mhz": f"{int(emc) / 1e6:.0f}" if emc and emc.isdigit() else None}


def jetson_facts() -> dict[str, str | None]:
    """Model, L4T, JetPack and its CUDA/TensorRT, power mode and clocks; all None off Jetson."""
    keys = ("jetson_model", "l4t", "jetpack", "jetpack_cuda", "jetpack_tensorrt", "power_mode",
            "gpu_clock_mhz", "emc_clock_mhz")
    if not is_jetson():
        return dict.fromkeys(keys)
    l4t = parse_nv_tegra_release(_read(NV_TEGRA_RELEASE) or "")
    jetpack, cuda, trt = jetpack_for_l4t(l4t)
    clocks = jetson_clocks()
    return dict(zip(keys, (device_tree("model"), l4t, jetpack, cuda, trt, power_mode(),
                           clocks["gpu_mhz"], clocks["emc_mhz"]), strict=True))


@dataclass(frozen=True)
class Rail:
    """One INA3221 channel: label and the sysfs files of its bus voltage (mV) and current (mA)."""

    label: str
    volt: Path
    curr: Path

    def watts(self) -> float:
        """Instantaneous power of this rail."""
        return int(self.volt.read_text()) * int(self.curr.read_text()) / 1e6


def ina3221_rails() -> list[Rail]:
    """Every connected INA3221 channel (skips 'NC' channels and the in7 'sum of shunt voltages')."""
    rails = []
    for label_file in sorted(_path(INA3221_DRIVER_DIR).glob("*/hwmon/hwmon*/in[123]_label")):
        label = (_read(label_file) or "").strip()
        n = label_file.name[2]
        volt, curr = label_file.with_name(f"in{n}_input"), label_file.with_name(f"curr{n}_input")
        if label and label != "NC" and volt.exists() and curr.exists():
            rails.append(Rail(label, volt, curr))
    return rails


def total_power_rails(rails: list[Rail]) -> list[Rail]:
    """The rails whose sum is the module's power: the input rail when there is one, else all of them."""
    for name in TOTAL_RAILS:
        inputs = [r for r in rails if r.label == name]
        if inputs:
            return inputs[:1]
    return rails


class RailEnergyMeter:
    """Cumulative joules from INA3221 rails: a daemon thread samples power every `interval_s` and
    integrates it (trapezoid); each call also takes a fresh sample so short regions are not
    rounded down to the last tick. `close()` stops the thread."""

    def __init__(self, rails: list[Rail], interval_s: float = 0.02):
        self.rails = rails
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._joules = 0.0
        self._last = (time.perf_counter(), self._watts())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="edgeports-ina3221", daemon=True)
        self._thread.start()

    def _watts(self) -> float:
        return sum(r.watts() for r in self.rails)

    def _sample(self) -> float:
        with self._lock:
            now, watts = time.perf_counter(), self._watts()
            t0, w0 = self._last
            self._joules += 0.5 * (w0 + watts) * (now - t0)
            self._last = (now, watts)
            return self._joules

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._sample()
            except (OSError, ValueError):
                return  # a rail vanished (driver unbound); calls will raise from here on

    def __call__(self) -> float:
        return self._sample()

    def close(self) -> None:
        """Stop the sampling thread."""
        self._stop.set()
        self._thread.join(timeout=1.0)


# ---------------------------------------------------------------------------------------------- NVML

@functools.cache
def _nvml():
    """The initialised pynvml module, or an error message string."""
    try:
        import pynvml
    except ImportError:
        return "pynvml not importable (pip install nvidia-ml-py)"
    try:
        pynvml.nvmlInit()
    except Exception as e:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...
        return f"NVML init failed: {e}"
    return pynvml


def _cuda_index(device) -> int:
    text = str(device)
    return int(text.split(":")[1]) if ":" in text else 0


def nvml_handle(device="cuda") -> tuple[object | None, str | None]:
    """The NVML handle of a torch CUDA device (CUDA_VISIBLE_DEVICES respected), or (None, reason)."""
    nv = _nvml()
    if isinstance(nv, str):
        return None, nv
    index = _cuda_index(device)
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    try:
        if visible and index < len(visible):
            sel = visible[index]
            if sel.isdigit():
                return nv.nvmlDeviceGetHandleByIndex(int(sel)), None
            return nv.nvmlDeviceGetHandleByUUID(sel), None
        return nv.nvmlDeviceGetHandleByIndex(index), None
    except Exception as e:
        return None, f"no NVML device for {device}: {e}"


def _device_type(device) -> str:
    return str(device).split(":")[0]


def device_memory_reader(device) -> tuple[Callable[[], int] | None, str | None]:
    """A zero-arg function giving device-wide used bytes, and None, or (None, reason).

    dGPU: NVML nvmlDeviceGetMemoryInfo.used. Jetson: MemTotal - MemAvailable from /proc/meminfo
    (CPU and GPU share that memory; NVML does not exist on Tegra). CPU devices: none.
    """
    if _device_type(device) != "cuda":
        return None, f"no device-wide memory counter for device {device!s} (process RSS is measured instead)"
    if is_jetson():
        path = _path(PROC_MEMINFO)

        def used() -> int:
            info = parse_meminfo(path.read_text())
            return info["MemTotal"] - info["MemAvailable"]

        try:
            used()
        except (OSError, KeyError) as e:
            return None, f"cannot read unified memory from {path}: {e}"
        return used, None
    handle, reason = nvml_handle(device)
    if handle is None:
        return None, reason
    nv = _nvml()
    return (lambda: int(nv.nvmlDeviceGetMemoryInfo(handle).used)), None


def energy_reader(device) -> tuple[Callable[[], float] | None, str | None, str | None]:
    """(zero-arg function giving cumulative joules, None, method) or (None, reason, None).

    Methods: 'nvml-energy-counter' (dGPU, Volta+, millijoules since driver load) and 'ina3221-rails'
    (Jetson: a RailEnergyMeter thread integrating rail power; call `.close()` on it when done).
    Only differences between two calls are meaningful.
    """
    if _device_type(device) != "cuda":
        return None, f"no energy counter for device {device!s}", None
    if is_jetson():
        rails = total_power_rails(ina3221_rails())
        if not rails:
            return None, f"no INA3221 rails under {_path(INA3221_DRIVER_DIR)}", None
        try:
            return RailEnergyMeter(rails), None, "ina3221-rails"
        except (OSError, ValueError) as e:
            return None, f"INA3221 rails unreadable: {e}", None
    handle, reason = nvml_handle(device)
    if handle is None:
        return None, reason, None
    nv = _nvml()
    try:
        nv.nvmlDeviceGetTotalEnergyConsumption(handle)
    except Exception as e:  # NVMLError_NotSupported before Volta
        return None, f"NVML energy counter not supported: {e}", None
    return (lambda: nv.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000.0), None, "nvml-energy-counter"


# ---------------------------------------------------------------------------------------------- fingerprint

def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:  # ImportError, or a broken install that fails while importing
        return None


def _gpu_facts() -> dict[str, str | None]:
    keys = ("gpu", "gpu_cc", "gpu_memory_bytes", "gpu_driver", "gpu_reason")
    if is_jetson():
        soc = _tegra_soc()
        model = device_tree("model")
        total = parse_meminfo(_read(PROC_MEMINFO) or "").get("MemTotal")
        return dict(zip(keys, (f"{soc or 'tegra'} integrated GPU" + (f" ({model})" if model else ""),
                               TEGRA_COMPUTE_CAPABILITY.get(soc or ""), str(total) if total else None,
                               None, None), strict=True))
    handle, reason = nvml_handle("cuda")
    if handle is None:
        return dict(zip(keys, (None, None, None, None, reason), strict=True))
    nv = _nvml()
    try:
        name = nv.nvmlDeviceGetName(handle)
        major, minor = nv.nvmlDeviceGetCudaComputeCapability(handle)
        return dict(zip(keys, (name.decode() if isinstance(name, bytes) else name, f"{major}.{minor}",
                               str(nv.nvmlDeviceGetMemoryInfo(handle).total),
                               nv.nvmlSystemGetDriverVersion(), None), strict=True))
    except Exception as e:
        return dict(zip(keys, (None, None, None, None, f"NVML query failed: {e}"), strict=True))


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists() or shutil.which("git") is None:
        # images bake the commit in at build time (EDGEPORTS_GIT_COMMIT build arg)
        return os.environ.get("EDGEPORTS_GIT_COMMIT") or None
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}-dirty" if dirty else sha or None


def _ort_facts() -> tuple[str | None, str | None]:
    try:
        import onnxruntime
    except Exception:
        return None, None
    return onnxruntime.__version__, ",".join(onnxruntime.get_available_providers())


@functools.cache
def fingerprint() -> dict[str, str | None]:
    """The platform a result row was measured on: flat `platform_*` keys (FINGERPRINT_KEYS), str or None.

    Cached per process (clocks and power mode are those at the first call). Never initialises CUDA.
    """
    import torch

    import edgeports

    ort_version, ort_providers = _ort_facts()
    facts = {
        "os": f"{_pyplatform.system()} {_pyplatform.release()}",
        "machine": _pyplatform.machine(),
        "python": _pyplatform.python_version(),
        "cpu": parse_cpuinfo(_read(PROC_CPUINFO) or "") or _pyplatform.processor() or None,
        "cpu_count": str(os.cpu_count()),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        **_gpu_facts(),
        "onnxruntime": ort_version,
        "ort_providers": ort_providers,
        "tensorrt": _version("tensorrt"),
        **jetson_facts(),
        "edgeports": edgeports.__version__,
        "git_commit": _git_commit(),
    }
    out = {f"platform_{k}": v for k, v in facts.items()}
    assert tuple(out) == FINGERPRINT_KEYS, "FINGERPRINT_KEYS out of sync"
    return out


def describe() -> list[tuple[str, str]]:
    """(label, value) lines for `edgeports doctor`: platform, GPU, Jetson facts, power mode, versions."""
    fp = fingerprint()

    def show(*keys: str, sep: str = " ") -> str:
        vals = [fp[k] for k in keys if fp[k]]
        return sep.join(vals) if vals else "-"

    lines = [
        ("platform", f"{show('platform_os')} {show('platform_machine')}, python {show('platform_python')}"),
        ("cpu", f"{show('platform_cpu')} ({show('platform_cpu_count')} threads)"),
        ("gpu", show("platform_gpu") + (f", sm {fp['platform_gpu_cc']}" if fp["platform_gpu_cc"] else "")
         + (f", driver {fp['platform_gpu_driver']}" if fp["platform_gpu_driver"] else "")
         + (f" (unavailable: {fp['platform_gpu_reason']})" if fp["platform_gpu_reason"] else "")),
    ]
    if fp["platform_l4t"] or fp["platform_jetson_model"]:
        lines += [
            ("jetson", f"{show('platform_jetson_model')}, L4T {show('platform_l4t')}, "
                       f"JetPack {show('platform_jetpack')} (CUDA {show('platform_jetpack_cuda')}, "
                       f"TensorRT {show('platform_jetpack_tensorrt')})"),
            ("power mode", show("platform_power_mode")),
            ("clocks", f"GPU {show('platform_gpu_clock_mhz')} MHz, EMC {show('platform_emc_clock_mhz')} MHz"),
        ]
    lines += [
        ("torch", f"{fp['platform_torch']} (CUDA {fp['platform_torch_cuda'] or 'none'})"),
        ("onnxruntime", f"{fp['platform_onnxruntime']} [{fp['platform_ort_providers']}]"
         if fp["platform_onnxruntime"] else "not installed"),
        ("tensorrt", fp["platform_tensorrt"] or "not installed"),
        ("edgeports", f"{fp['platform_edgeports']} ({fp['platform_git_commit'] or 'commit unknown'})"),
    ]
    return lines
