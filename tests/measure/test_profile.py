"""Operator breakdown: categorisation of a recorded GPU profile, a live CPU profile, layer profiles, storage."""

import json
import re
from pathlib import Path

import pytest
import torch

from edgeports.measure import profile as prof
from edgeports.measure.ops import CATEGORIES
from edgeports.results import ResultStore

FIXTURE = Path(__file__).parents[1] / "fixtures" / "profile" / "h100_hybrid_eager.json"
KERNELS = Path(__file__).parents[2] / "edgeports" / "kernels"


def fixture_records():
    return json.loads(FIXTURE.read_text())["records"]


def test_recorded_gpu_profile_is_categorised_as_expected():
    records = fixture_records()
    cats = prof.categorize_records(records)
    wrong = [(r["name"][:70], got, r["expect"]) for r, got in zip(records, cats, strict=True)
             if "expect" in r and got != r["expect"]]
    assert not wrong
    assert {r["expect"] for r in records if "expect" in r} == set(CATEGORIES) - {"other"}


def test_recorded_profile_breakdown_counts_device_time_only():
    records = fixture_records()
    table = prof.breakdown(records, device=True)
    device = [r for r in records if r["kind"] in prof.DEVICE_KINDS]
    assert sum(v["ms"] for v in table.values()) == pytest.approx(sum(r["us"] for r in device) / 1e3)
    assert sum(v["calls"] for v in table.values()) == len(device)
    # the scan is the SSD op's four triton kernels plus the cumsum it launched, nothing else
    launched_by_ssd = 9.0 + 210.0 + 95.5 + 30.2 + 480.0 + 4.2
    no_launcher = sum(r["us"] for r in device if r["launch"] is None and r["expect"] == "ssm_scan")
    assert table["ssm_scan"]["ms"] == pytest.approx((launched_by_ssd + no_launcher) / 1e3)
    assert table["ssm_scan"]["top"][0] == ["_chunk_scan", 0.48]
    assert table["embedding"]["ms"] == pytest.approx((41.2 + 33.0) / 1e3)  # the gather and the logits GEMM
    # CPU self time of the operators is a different view of the same records: not mixed into device time
    cpu = prof.breakdown(records, device=False)
    ops = [r for r in records if r["kind"] == "op"]
    assert sum(v["ms"] for v in cpu.values()) == pytest.approx(sum(r["us"] for r in ops) / 1e3)


def test_every_launched_triton_kernel_has_a_category():
    launched = set()
    for path in KERNELS.glob("triton_*.py"):
        launched |= set(re.findall(r"^\s*(_\w+)\[", path.read_text(), re.M))
    assert launched and launched == set(prof.OUR_KERNELS)


@pytest.mark.parametrize("name, cat", [
    ("aten::mm", "gemm"), ("aten::bmm", "gemm"), ("aten::addmm", "gemm"), ("aten::linear", "gemm"),
    ("aten::embedding", "embedding"), ("aten::_softmax", "attention"), ("aten::cat", "memory"),
    ("aten::index_copy_", "memory"), ("aten::sum", "elementwise"), ("aten::mul", "elementwise"),
    ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"), ("aten::conv1d", "conv"),
    ("edgeports::ssd_chunk_scan", "ssm_scan"), ("edgeports::selective_state_update", "ssm_scan"),
    ("edgeports::causal_conv1d_update", "conv"), ("edgeports.embedding", "embedding"),
    ("edgeports.logits", "embedding"), ("edgeports.norm", "norm"),
])
def test_operator_and_scope_names(name, cat):
    assert prof.own_category(name) == cat


def test_live_cpu_profile_of_an_eager_model():
    """A real torch.profiler run: CPU op self time, module scopes, decode per token, runner left reset."""
    from edgeports.backends import get_backend
    from edgeports.exporters.base import ExportOptions, in_memory
    from edgeports.measure.cell import prompt_ids
    from edgeports.models import get_spec

    spec = get_spec("tiny-llama")
    runner = get_backend("eager").load(in_memory("eager", spec, ExportOptions(dtype="float32")), "cpu")
    ids = prompt_ids(spec.config["vocab_size"], 1, 64, "cpu")
    out = prof.profile_cell(runner, ids, None, max_len=72, decode_len=8)
    assert out["source"] == "cpu-ops" and "self CPU time" in out["note"]
    assert set(out["phases"]) == {"prefill", "decode"}
    pre = out["phases"]["prefill"]["categories"]
    assert pre["gemm"]["ms"] > 0 and pre["attention"]["ms"] > 0 and pre["norm"]["ms"] > 0
    assert pre["embedding"]["ms"] > 0  # the embedding gather and the logits head, through the module scopes
    assert pre["ssm_scan"]["ms"] == 0
    assert runner.state_bytes == 0
    with prof.module_scopes(runner) as hooked:
        assert hooked == 2 * 2 + 1 + 1 + 1  # two norms per block, the final norm, embedding, head
    assert all(not m._forward_hooks for m in runner.lm.modules())


def test_live_cpu_profile_of_an_ssm_counts_the_scan():
    from edgeports.backends import get_backend
    from edgeports.exporters.base import ExportOptions, in_memory
    from edgeports.measure.cell import prompt_ids
    from edgeports.models import get_spec

    spec = get_spec("tiny-mamba2")
    runner = get_backend("eager").load(in_memory("eager", spec, ExportOptions(dtype="float32")), "cpu")
    out = prof.profile_cell(runner, prompt_ids(spec.config["vocab_size"], 1, 64, "cpu"), 16, max_len=66,
                            decode_len=2)
    for phase in ("prefill", "decode"):
        cats = out["phases"][phase]["categories"]
        assert cats["ssm_scan"]["ms"] > 0 and cats["conv"]["ms"] > 0 and cats["attention"]["ms"] == 0


class LayerRunner:
    """A runner with an ORT-style layer_profile (what runners/ort.py returns)."""

    backend = "onnx"

    def __init__(self):
        self.calls = []

    def layer_profile(self, ids, chunk=None, decode_steps=0):
        self.calls.append((ids.shape[1], chunk, decode_steps))
        return {"layers": {"prefill": [("/q_proj/MatMul", "MatMul", 3.0), ("scan_0", "Scan", 5.0)],
                           "decode": [("/q_proj/MatMul", "MatMul", 0.8)]},
                "categories": {"prefill": {"gemm": 3.0, "ssm_scan": 5.0}, "decode": {"gemm": 0.8}}}

    def reset(self):
        self.calls.append("reset")


def test_layer_profiles_map_onto_the_same_rows(tmp_path):
    runner = LayerRunner()
    out = prof.profile_cell(runner, torch.zeros(1, 32, dtype=torch.long), 8, max_len=40, decode_len=16)
    assert runner.calls == [(32, 8, prof.PROFILE_DECODE_STEPS), "reset"]
    assert out["source"] == "ort-nodes"
    assert out["phases"]["decode"]["categories"]["gemm"]["ms"] == pytest.approx(0.8 / prof.PROFILE_DECODE_STEPS)
    rows = prof.op_rows("k1", out)
    assert len(rows) == 2 * len(CATEGORIES)
    scan = next(r for r in rows if r.phase == "prefill" and r.category == "ssm_scan")
    assert scan.share == pytest.approx(5 / 8) and scan.calls is None
    with ResultStore(tmp_path / "e.db") as store:
        prof.store_ops(store, "k1", out, "t0")
        prof.store_ops(store, "k1", out, "t1")  # measured again: replaced, not duplicated
        back = store.records(prof.OPS_TABLE, prof.OpRow)
    assert len(back) == len(rows) and {r.timestamp for r in back} == {"t1"}


def test_a_failing_profiler_costs_only_the_profile():
    class Broken(LayerRunner):
        def layer_profile(self, *a, **k):
            raise RuntimeError("profiler exploded\nsecond line")

    out = prof.profile_or_error(Broken(), torch.zeros(1, 4, dtype=torch.long), None, 8, 2)
    assert out == {"error": "RuntimeError: profiler exploded"}
