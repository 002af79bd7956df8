"""--mem-budget with the ONNX Runtime runner: the arena settings a budget composes, the classification of ORT's
allocation failures as out of memory (on error texts recorded from real runs), the capped shared arena on the
CPU EP (the mechanism CUDA budgets use, exercised here in a fresh process since ORT keeps an environment arena
for the process), and `edgeports maxctx --backend onnx` on the CPU, where RLIMIT_AS bounds ORT's arena."""

from __future__ import annotations

import importlib.util
import json
import multiprocessing
from pathlib import Path
from types import SimpleNamespace

import pytest

from edgeports import maxctx as mc
from edgeports import worker
from edgeports.runners.base import Unsupported

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxscript", "onnxruntime")),
    reason="needs onnx, onnxscript and onnxruntime (pip install 'edgeports[onnx]')")

# Error texts as ONNX Runtime wrote them. The first two were recorded on this CPU build (onnxruntime 1.32): the
# CPU allocator failing under RLIMIT_AS, and a shared arena reaching its max_mem. The CUDA ones are from reports:
# microsoft/onnxruntime#22702 (1.19, CUDA EP) and hacksider/Deep-Live-Cam#584 (a cudaMalloc failure).
OOM_TEXTS = {
    "Error in execution: Non-zero status code returned while running Einsum node. Name:'node_einsum_1' Status "
    "Message: /onnxruntime_src/onnxruntime/core/framework/bfc_arena.cc:360 void* onnxruntime::BFCArena::"
    "AllocateRawInternal(size_t, bool, onnxruntime::Stream*) Failed to allocate memory for requested buffer of "
    "size 1032192\n": "Failed to allocate memory for requested buffer of size 1032192 (Einsum node_einsum_1)",
    "Error in execution: Non-zero status code returned while running Split node. Name:'node_Split_602' Status "
    "Message: /onnxruntime_src/onnxruntime/core/framework/bfc_arena.cc:360 void* onnxruntime::BFCArena::"
    "AllocateRawInternal(size_t, bool, onnxruntime::Stream*) Available memory of 96256 is smaller than requested "
    "bytes of 196608\n": "Available memory of 96256 is smaller than requested bytes of 196608 (Split node_Split_602)",
    "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running Conv node. "
    "Name:'/patch_embed/stages/stages.0/blocks/blocks.0/mlp/fc1/Conv' Status Message: /onnxruntime_src/"
    "onnxruntime/core/framework/bfc_arena.cc:376 void* onnxruntime::BFCArena::AllocateRawInternal(size_t, bool, "
    "onnxruntime::Stream*, bool, onnxruntime::WaitNotificationFn) Failed to allocate memory for requested buffer "
    "of size 4585490524328388608": "Failed to allocate memory for requested buffer of size 4585490524328388608 "
                                   "(Conv /patch_embed/stages/stages.0/blocks/blocks.0/mlp/fc1/Conv)",
    "[ONNXRuntimeError] : 1 : FAIL : D:\\a\\_work\\1\\s\\onnxruntime\\core\\providers\\cuda\\cuda_call.cc:121 "
    "onnxruntime::CudaCall CUDA failure 2: out of memory ; GPU=0 ; hostname=DESKTOP ; file=D:\\a\\_work\\1\\s\\"
    "onnxruntime\\core\\providers\\cuda\\cuda_stream_handle.cc ; line=175 ; expr=cudaStreamCreateWithFlags(&stream, "
    "cudaStreamNonBlocking);": "CUDA failure 2: out of memory",
}
OTHER_TEXTS = (  # failures that are not out of memory: they stay `error` rows
    "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions for input: ids for the following indices "
    "index: 1 Got: 70 Expected: 64",
    "[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : Could not find an implementation for Einsum(12) node with name ''",
    "onnx runtime error 2: not enough space: expected 318080, got 314240",  # an output buffer too small
    "[ONNXRuntimeError] : 1 : FAIL : CUDA error executing cudaMemcpy(dst_data, src_data, bytes, cudaMemcpyDeviceToHost)",
)


def test_budget_arena_options():
    """Both the CUDA EP options and the environment arena carry the cap and kSameAsRequested growth; the
    provider's other options are kept; ORT accepts the arena config as composed."""
    import onnxruntime as ort

    from edgeports.runners.ort import budget_arena

    base = {"device_id": "1", "user_compute_stream": "1234", "cudnn_conv_algo_search": "HEURISTIC"}
    options, cfg = budget_arena(base, 3 << 30)
    assert options == {**base, "gpu_mem_limit": str(3 << 30), "arena_extend_strategy": "kSameAsRequested"}
    assert cfg == {"max_mem": 3 << 30, "arena_extend_strategy": 1}  # 1 = kSameAsRequested
    made = ort.OrtArenaCfg(cfg)
    assert (made.max_mem, made.arena_extend_strategy) == (3 << 30, 1)
    for bad in (0, -5):
        with pytest.raises(ValueError, match="positive size"):
            budget_arena(base, bad)


@pytest.mark.parametrize("text", list(OOM_TEXTS))
def test_ort_allocation_failures_are_oom(text):
    from edgeports.runners.ort import _oom_or_raise, oom_message

    assert oom_message(text) == OOM_TEXTS[text]
    with pytest.raises(MemoryError) as caught:
        _oom_or_raise(RuntimeError(text), "prefill")
    assert worker._status(caught.value) == "oom"  # what a sweep row and a maxctx probe see
    assert worker._reason(caught.value) == f"out of memory: ONNX Runtime (prefill): {OOM_TEXTS[text]}"


@pytest.mark.parametrize("text", OTHER_TEXTS)
def test_other_ort_failures_are_not_oom(text):
    from edgeports.runners.ort import _oom_or_raise, oom_message

    assert oom_message(text) is None
    _oom_or_raise(RuntimeError(text), "prefill")  # returns: the caller re-raises the original
    assert worker._status(RuntimeError(text)) == "error"


def test_limit_memory_refusals():
    """Dynamic KV caches change size per prompt (no fixed split: Unsupported, a skipped row); weights + state
    that take the whole budget leave no arena (MemoryError: an oom at load)."""
    from edgeports.runners.ort import OrtRunner

    dynamic = SimpleNamespace(cache_axes={"past.0.k": (2, 0)})
    with pytest.raises(Unsupported, match="dynamic KV caches"):
        OrtRunner.limit_memory(dynamic, 8 << 30)
    full = SimpleNamespace(cache_axes={}, max_len=4096, _torch_part=lambda: 8 << 30)
    with pytest.raises(MemoryError, match="leave nothing"):
        OrtRunner.limit_memory(full, 8 << 30)


# ---------------------------------------------------------------------------------------------- real runs

BUDGET = "32MiB"
CAP = 4096


@pytest.fixture(scope="module")
def onnx_maxctx(tmp_path_factory):
    """`edgeports maxctx --backend onnx` for tiny-mamba2 on the CPU (fp32, full prefill, 4 decode steps) under
    32 MiB: the sweep worker exports the artifact (kept for the test below), RLIMIT_AS bounds the process."""
    root = tmp_path_factory.mktemp("ort-budget")
    config = mc.MaxCtxConfig(models=("tiny-mamba2",), backends="onnx", budgets=(BUDGET,), decode_len=4,
                             device="cpu", start=1024, max_len=CAP, resolution=0.25, db=str(root / "e.db"),
                             artifacts=str(root / "artifacts"))
    return mc.run(config), root / "artifacts"


def test_maxctx_onnx_on_the_cpu_under_rlimit_as(onnx_maxctx):
    """ORT's CPU arena failing under RLIMIT_AS ('Failed to allocate memory ...') is an oom probe, so the search
    bisects to a finite maximum instead of stopping at an error (before, it was an `error` row). Full prefill
    of tiny-mamba2 holds ~6-7 KB of activations per token: 32 MiB runs out after a few thousand tokens."""
    rows, _ = onnx_maxctx
    (row,) = rows
    assert row.status == "ok", row.reason
    assert 0 < row.max_ctx < CAP and not row.capped and row.fail_ctx - row.max_ctx <= max(256, row.max_ctx / 4)
    assert {status for _, status, _, _ in json.loads(row.probes)} == {"ok", "oom"}
    assert row.projected_ctx is None  # the CPU: RLIMIT_AS bounds address space, no allocator peak to fit


def _capped_arena_child(artifact_dir: str, device: str, arena_bytes: int, long_len: int) -> dict:
    """In a fresh process: the unlimited runner's logits, then the same runner with its sessions remade on one
    arena capped at `arena_bytes` (a budget of torch's part + that). On CUDA through the worker's
    apply_mem_budget (which also caps torch's allocator); on the CPU through limit_memory alone (the worker
    would set RLIMIT_AS there instead)."""
    import torch

    from edgeports.exporters.base import read_artifact
    from edgeports.measure.cell import prompt_ids
    from edgeports.runners import ort

    runner = ort.load(read_artifact(artifact_dir, backend="onnx"), device)
    vocab = runner.artifact.spec.config["vocab_size"]
    short = prompt_ids(vocab, 1, 32, runner.device, seed=3)
    long = prompt_ids(vocab, 1, long_len, runner.device, seed=3)
    reference = (runner.prefill(short).clone(), runner.decode(4).clone())
    runner.reset()
    worker._release(device)
    budget = runner._torch_part() + arena_bytes
    if runner.device.type == "cuda":
        split = worker.apply_mem_budget(budget, device, runner.weight_bytes, runner)
    else:
        split = {"outside_torch_bytes": runner.limit_memory(budget)}
    capped = (runner.prefill(short), runner.decode(4))
    runner.reset()
    try:
        runner.prefill(long)
        failure = None
    except MemoryError as e:
        failure = (worker._status(e), worker._reason(e))
    runner.reset()
    again = runner.prefill(short)  # the arena is usable after a failed run
    return {"arena": split["outside_torch_bytes"], "info": runner.info["ort_arena"], "failure": failure,
            "provider": runner.info["provider"],
            "same": [torch.equal(a, b) for a, b in zip(reference, capped, strict=True)] + [torch.equal(again, reference[0])]}


def _check_capped_arena(artifacts: Path, device: str, arena_bytes: int, long_len: int) -> dict:
    (manifest,) = Path(artifacts).glob("onnx/*/manifest.json")
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        out = pool.apply(_capped_arena_child, (str(manifest.parent), device, arena_bytes, long_len))
    assert out["arena"] == arena_bytes
    assert out["info"]["max_mem"] == arena_bytes and out["info"]["extend"] == "kSameAsRequested"
    assert out["info"]["shared_by"] == ["decode", "prefill", "prefill_next"]
    assert out["same"] == [True, True, True]
    assert out["failure"] is not None, f"a {long_len}-token prefill fit an arena of {arena_bytes} bytes"
    status, reason = out["failure"]
    assert status == "oom" and reason.startswith("out of memory: ONNX Runtime (prefill): "), reason
    return out


def test_capped_shared_arena_on_the_cpu(onnx_maxctx):
    """The CUDA budget's mechanism on the CPU EP: every session of the runner shares one arena capped at the
    budget minus torch's part. A 32-token prefill + decode fits 4 MiB with logits identical to the unlimited
    sessions'; a 2048-token prefill (~13 MB of activations) fails as out of memory, and the runner goes on."""
    out = _check_capped_arena(onnx_maxctx[1], "cpu", 4 << 20, 2048)
    assert "Available memory of" in out["failure"][1]  # the arena's own limit, not the process running out


@pytest.mark.gpu
def test_capped_shared_arena_on_cuda(onnx_maxctx):
    """The same on the CUDA EP (onnxruntime-gpu), through the worker's split: a 16 MiB arena; a 4000-token
    prefill needs ~26 MB of activations."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
    out = _check_capped_arena(onnx_maxctx[1], "cuda", 16 << 20, 4000)
    assert out["provider"] == "CUDAExecutionProvider"
