"""edgeports.platform: parsers on fixtures written from the documented formats, the Jetson readers on
fake sysfs trees, and the NVML readers against a fake pynvml."""

import shutil
import sys
import time
import types
from pathlib import Path

import pytest

from edgeports import platform

FIX = Path(__file__).parent / "fixtures" / "platform"
NANO = FIX / "orin-nano-r36.4.3"
AGX = FIX / "agx-orin-r36.3.0"
X86 = FIX / "x86-workstation"


@pytest.fixture
def sysroot(monkeypatch):
    """Point the module at a fixture root; clear the per-process caches around the test."""

    def use(root: Path) -> Path:
        monkeypatch.setattr(platform, "SYSROOT", root)
        platform.fingerprint.cache_clear()
        return root

    yield use
    platform.fingerprint.cache_clear()


@pytest.fixture
def no_nvml(monkeypatch):
    monkeypatch.setattr(platform, "_nvml", lambda: "pynvml not importable (test)")


def test_nv_tegra_release_and_jetpack_tables():
    assert platform.parse_nv_tegra_release((NANO / "etc/nv_tegra_release").read_text()) == "36.4.3"
    assert platform.parse_nv_tegra_release((AGX / "etc/nv_tegra_release").read_text()) == "36.3.0"
    assert platform.parse_nv_tegra_release("# R35 (release), REVISION: 4.1, GCID: 1") == "35.4.1"
    assert platform.parse_nv_tegra_release("TARGET_USERSPACE_LIB_DIR=nvidia") is None
    assert platform.jetpack_for_l4t("36.4.3") == ("6.2", "12.6", "10.3.0")
    assert platform.jetpack_for_l4t("36.3.0") == ("6.0", "12.2", "8.6.2")
    # an unlisted point release: JetPack unknown, but the r36.4 branch's CUDA/TensorRT are known
    assert platform.jetpack_for_l4t("36.4.9") == (None, "12.6", "10.3.0")
    assert platform.jetpack_for_l4t(None) == (None, None, None)


def test_meminfo_and_cpuinfo():
    info = platform.parse_meminfo((NANO / "proc/meminfo").read_text())
    assert info["MemTotal"] == 7802332 * 1024 and info["MemAvailable"] == 5468800 * 1024
    assert info["HugePages_Total"] == 0  # no unit: a count, not kB
    assert platform.parse_cpuinfo((NANO / "proc/cpuinfo").read_text()) == "Cortex-A78AE"
    assert platform.parse_cpuinfo((X86 / "proc/cpuinfo").read_text()) == "13th Gen Intel(R) Core(TM) i9-13900K"
    assert platform.parse_cpuinfo("") is None


@pytest.mark.parametrize("name, expected", [
    ("orin-nano-maxn-super.txt", "MAXN_SUPER (2)"),
    ("orin-nano-15w-warn.txt", "15W (0)"),
    ("agx-orin-maxn.txt", "MAXN (0)"),
])
def test_nvpmodel_query(name, expected):
    assert platform.parse_nvpmodel_query((FIX / "nvpmodel-q" / name).read_text()) == expected


def test_nvpmodel_status_file():
    conf = (NANO / "etc/nvpmodel.conf").read_text()
    assert platform.parse_nvpmodel_status("pmode:0002 fmode:quiet", conf) == "MAXN_SUPER (2)"
    assert platform.parse_nvpmodel_status("pmode:0003", conf) == "7W (3)"
    assert platform.parse_nvpmodel_status("pmode:0001", None) == "mode 1"
    assert platform.parse_nvpmodel_status("garbage", conf) is None


def test_orin_nano_facts(sysroot):
    sysroot(NANO)
    assert platform.is_jetson()
    assert platform.jetson_facts() == {
        "jetson_model": "NVIDIA Jetson Orin Nano Developer Kit", "l4t": "36.4.3", "jetpack": "6.2",
        "jetpack_cuda": "12.6", "jetpack_tensorrt": "10.3.0", "power_mode": "MAXN_SUPER (2)",
        "gpu_clock_mhz": "1020", "emc_clock_mhz": "3199",
    }


def test_agx_orin_facts_without_nvpmodel_or_emc(sysroot):
    sysroot(AGX)
    facts = platform.jetson_facts()
    assert facts["jetpack"] == "6.0" and facts["jetpack_tensorrt"] == "8.6.2"
    assert facts["power_mode"] is None and facts["emc_clock_mhz"] is None
    assert facts["gpu_clock_mhz"] == "1300"  # 1300.5 MHz rounds half-to-even


def test_ina3221_rails(sysroot):
    sysroot(NANO)
    rails = platform.ina3221_rails()
    assert [r.label for r in rails] == ["VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"]  # in7 "sum" skipped
    total = platform.total_power_rails(rails)
    assert [r.label for r in total] == ["VDD_IN"]  # the others are sub-rails of VDD_IN
    assert total[0].watts() == pytest.approx(5.080 * 1.320)

    sysroot(AGX)
    rails = platform.ina3221_rails()
    assert sorted(r.label for r in rails) == ["VDDQ_VDD2_1V8AO", "VDD_CPU_CV", "VDD_GPU_SOC", "VIN_SYS_5V0"]
    assert platform.total_power_rails(rails) == rails  # no input rail: the sum is the total
    assert sum(r.watts() for r in rails) == pytest.approx(19.136 * 1.160 + 19.136 * 0.240 + 5.064 * 0.720
                                                          + 5.056 * 0.152)


def test_jetson_memory_reader_is_live_unified_memory(sysroot, tmp_path):
    root = sysroot(tmp_path / "root")
    shutil.copytree(NANO, root)
    read, reason = platform.device_memory_reader("cuda:0")
    assert reason is None
    assert read() == (7802332 - 5468800) * 1024
    (root / "proc/meminfo").write_text("MemTotal: 1000 kB\nMemAvailable: 250 kB\n")
    assert read() == 750 * 1024


def test_jetson_energy_meter_integrates_rail_power(sysroot, tmp_path):
    root = sysroot(tmp_path / "root")
    shutil.copytree(NANO, root)
    hw = root / "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon1"
    meter, reason, method = platform.energy_reader("cuda")
    assert (reason, method) == (None, "ina3221-rails")
    try:
        for milliamps in (1320, 2600):
            (hw / "curr1_input").write_text(f"{milliamps}\n")
            meter()  # the power step is taken at a sample
            ta = time.perf_counter()
            e0 = meter()
            tb = time.perf_counter()
            time.sleep(0.1)
            tc = time.perf_counter()
            e1 = meter()
            td = time.perf_counter()
            # constant power P between the calls, whose samples lie in [ta, tb] and [tc, td]
            watts = 5.080 * milliamps / 1000
            assert watts * (tc - tb) * (1 - 1e-9) <= e1 - e0 <= watts * (td - ta) * (1 + 1e-9)
    finally:
        meter.close()
    assert not meter._thread.is_alive()


def test_cpu_and_non_jetson_have_reasons(sysroot, no_nvml):
    sysroot(X86)
    assert not platform.is_jetson()
    assert set(platform.jetson_facts().values()) == {None}
    for reader in (platform.device_memory_reader("cpu"), platform.energy_reader("cpu")):
        assert reader[0] is None and "cpu" in reader[1]
    read, reason = platform.device_memory_reader("cuda")
    assert read is None and "pynvml" in reason
    assert platform.energy_reader("cuda") == (None, "pynvml not importable (test)", None)
    assert platform.ina3221_rails() == []


class FakeNVML(types.ModuleType):
    """Just enough of pynvml: two GPUs, the second without an energy counter."""

    def __init__(self):
        super().__init__("pynvml")
        self.energy_mj = [123_456, None]
        self.used = [1 << 30, 2 << 30]

    def nvmlInit(self):
        pass

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetHandleByUUID(self, uuid):
        return {"GPU-aaaa": 0, "GPU-bbbb": 1}[uuid]

    def nvmlDeviceGetMemoryInfo(self, h):
        return types.SimpleNamespace(used=self.used[h], total=24 << 30)

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        if self.energy_mj[h] is None:
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")
        return self.energy_mj[h]

    def nvmlDeviceGetName(self, h):
        return b"NVIDIA GeForce RTX 4090"

    def nvmlDeviceGetCudaComputeCapability(self, h):
        return 8, 9

    def nvmlSystemGetDriverVersion(self):
        return "580.65.06"


@pytest.fixture
def fake_nvml(monkeypatch, sysroot):
    sysroot(X86)
    nv = FakeNVML()
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    platform._nvml.cache_clear()
    yield nv
    platform._nvml.cache_clear()


def test_nvml_readers_follow_cuda_visible_devices(fake_nvml, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    read, reason = platform.device_memory_reader("cuda:1")
    assert reason is None and read() == 2 << 30
    energy, reason, method = platform.energy_reader("cuda:0")
    assert method == "nvml-energy-counter" and energy() == pytest.approx(123.456)
    fake_nvml.energy_mj[0] += 5000
    assert energy() == pytest.approx(128.456)
    # torch's cuda:0 is the first *visible* device, whatever NVML calls it
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-bbbb,GPU-aaaa")
    assert platform.device_memory_reader("cuda:0")[0]() == 2 << 30
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    energy, reason, method = platform.energy_reader("cuda")
    assert energy is None and method is None and "not supported" in reason


def test_fingerprint_on_x86_with_nvml(fake_nvml, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    fp = platform.fingerprint()
    assert tuple(fp) == platform.FINGERPRINT_KEYS
    assert all(v is None or isinstance(v, str) for v in fp.values())
    assert fp["platform_gpu"] == "NVIDIA GeForce RTX 4090" and fp["platform_gpu_cc"] == "8.9"
    assert fp["platform_gpu_driver"] == "580.65.06" and fp["platform_gpu_reason"] is None
    assert fp["platform_cpu"] == "13th Gen Intel(R) Core(TM) i9-13900K"
    assert fp["platform_l4t"] is None and fp["platform_power_mode"] is None
    assert platform.fingerprint() is fp  # cached per process


def test_fingerprint_and_describe_on_jetson(sysroot, monkeypatch):
    sysroot(NANO)
    monkeypatch.setattr(platform, "_git_commit", lambda: "abc123")
    fp = platform.fingerprint()
    assert fp["platform_gpu_cc"] == "8.7" and fp["platform_gpu"].startswith("tegra234 integrated GPU")
    assert fp["platform_gpu_memory_bytes"] == str(7802332 * 1024)
    assert (fp["platform_jetpack"], fp["platform_power_mode"]) == ("6.2", "MAXN_SUPER (2)")
    lines = dict(platform.describe())
    assert lines["power mode"] == "MAXN_SUPER (2)"
    assert "JetPack 6.2" in lines["jetson"] and "TensorRT 10.3.0" in lines["jetson"]
    assert lines["clocks"] == "GPU 1020 MHz, EMC 3199 MHz"
    assert "abc123" in lines["edgeports"]


def test_git_commit_from_env_outside_a_checkout(monkeypatch, tmp_path):
    fake_file = tmp_path / "edgeports" / "platform.py"
    monkeypatch.setattr(platform, "__file__", str(fake_file))
    monkeypatch.setenv("EDGEPORTS_GIT_COMMIT", "deadbeef")
    assert platform._git_commit() == "deadbeef"
    monkeypatch.delenv("EDGEPORTS_GIT_COMMIT")
    assert platform._git_commit() is None


def test_device_tree_from_the_container_mount(sysroot, tmp_path):
    """In a container /proc/device-tree is masked; `make run-jetson` mounts it at run/edgeports/device-tree."""
    root = sysroot(tmp_path / "root")
    shutil.copytree(NANO, root)
    shutil.move(root / "proc/device-tree", root / "run/edgeports/device-tree")
    assert not (root / "proc/device-tree").exists()
    assert platform.device_tree("model") == "NVIDIA Jetson Orin Nano Developer Kit"
    assert platform.jetson_facts()["jetson_model"] == "NVIDIA Jetson Orin Nano Developer Kit"
    assert platform.fingerprint()["platform_gpu_cc"] == "8.7"  # SoC from the mounted `compatible`
