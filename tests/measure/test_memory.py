import numpy as np
import pytest
import torch

from edgeports.errors import EdgeportsError
from edgeports.measure.memory import PeakSampler, format_bytes, is_oom, parse_bytes, rss_bytes, vm_size


@pytest.mark.parametrize("text, want", [("8GiB", 8 << 30), ("512MiB", 512 << 20), ("6GB", 6 * 10**9),
                                        ("1048576", 1 << 20), ("1.5KiB", 1536), ("2 gib", 2 << 30)])
def test_parse_bytes(text, want):
    assert parse_bytes(text) == want


@pytest.mark.parametrize("text", ["", "abc", "8XB", "-1GiB", "0", "GiB"])
def test_parse_bytes_rejects(text):
    with pytest.raises(EdgeportsError):
        parse_bytes(text)


def test_format_bytes():
    assert format_bytes(None) == "-"
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(3 << 30) == "3.0 GiB"


def test_sampler_sees_a_transient_allocation():
    base = rss_bytes()
    with PeakSampler() as mem:
        a = np.ones(64 << 20, dtype=np.uint8)  # 64 MiB, touched
        a[::4096] = 2
        del a
    assert mem.rss_peak >= base + (48 << 20)
    assert mem.device_peak is None


def test_sampler_tracks_a_device_reader():
    values = iter(range(100, 10_000))
    with PeakSampler(lambda: next(values), interval_s=0.001) as mem:
        pass
    assert mem.device_peak is not None and mem.device_peak >= 101


def test_vm_size_is_at_least_rss():
    assert vm_size() >= rss_bytes()


def test_is_oom():
    assert is_oom(MemoryError())
    assert is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_oom(RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory"))
    assert not is_oom(RuntimeError("shape mismatch"))
    assert not is_oom(ValueError("out of memory"))  # only allocator failures count
