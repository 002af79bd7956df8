"""compile runner, JIT mode (torch.compile in process) on the CPU, and its CUDA-graph decode on a GPU.

Each tiny model is compiled once per session (`jit`); zamba2 uses the 3-layer copy the AOT tests use.
"""

import copy
import dataclasses
import sys

import pytest
import torch

from edgeports.errors import EdgeportsError
from edgeports.exporters import compile as cexport
from edgeports.exporters.base import ExportOptions, read_artifact
from edgeports.measure import parity
from edgeports.measure.parity import rel_err
from edgeports.models import build, get_spec
from edgeports.models.layers import mlp
from edgeports.runners import compile as crun
from edgeports.runners.base import Unsupported
from edgeports.runners.eager import EagerRunner

MODELS = ["tiny-llama", "tiny-mamba", "tiny-mamba2", "tiny-falcon-h1", "tiny-zamba2"]
CHUNKED = ("tiny-llama", "tiny-mamba2")
TOL = 1e-4


def spec_of(name):
    spec = get_spec(name)
    if name == "tiny-zamba2":  # as tests/exporters/test_compile_export.py: hybrid, mamba, hybrid; one shared block
        config = {**spec.config, "num_hidden_layers": 3, "layers_block_type": ["hybrid", "mamba", "hybrid"],
                  "num_mem_blocks": 1}
        spec = dataclasses.replace(spec, config=config)
    return spec


@pytest.fixture(scope="session")
def jit():
    """name -> (JIT runner, eager runner on an identical copy of the LM), compiled on first use."""
    cache = {}

    def get(name):
        if name not in cache:
            lm = build(spec_of(name), dtype="float32")
            ref = EagerRunner(copy.deepcopy(lm), "cpu")
            cache[name] = crun.JitRunner(lm, "cpu", batch=1, chunked=name in CHUNKED), ref
        return cache[name]

    return get


@pytest.mark.parametrize("name", MODELS)
def test_jit_parity_with_eager(jit, name):
    """Prefill at several L and state sizes and decode, with no recompilation (the runner forbids it)."""
    runner, ref = jit(name)
    assert runner.info["mode"] == "jit" and runner.info["compile_s"] > 0
    vocab = ref.lm.spec.config["vocab_size"]
    for length, max_len in ((21, 30), (40, 64), (9, 100)):
        ids = torch.randint(0, vocab, (1, length))
        assert rel_err(runner.prefill(ids, max_len=max_len), ref.prefill(ids, max_len=max_len)) < TOL
        assert rel_err(runner.decode(4), ref.decode(4)) < TOL
        assert runner.state_bytes == ref.state_bytes
    assert runner.weight_bytes == ref.weight_bytes


@pytest.mark.parametrize("name", ["tiny-mamba", "tiny-hymba"])
def test_jit_inline_decode_kernels(name):
    """decode_kernels=inline (the SSM step math traced into the decode program) matches eager, with the
    states written in place across steps."""
    lm = build(spec_of(name), dtype="float32")
    ref = EagerRunner(copy.deepcopy(lm), "cpu")
    runner = crun.JitRunner(lm, "cpu", batch=1, chunked=False, decode_kernels="inline")
    assert runner.info["decode_kernels"] == "inline"
    ids = torch.randint(0, lm.spec.config["vocab_size"], (1, 17))
    assert rel_err(runner.prefill(ids, max_len=40), ref.prefill(ids, max_len=40)) < TOL
    for _ in range(3):
        assert rel_err(runner.decode(4), ref.decode(4)) < TOL


@pytest.mark.parametrize("name", CHUNKED)
def test_jit_chunked_prefill(jit, name):
    """Continuing prefill; 1-token chunks and prompts run the decode program (no new compilation)."""
    runner, ref = jit(name)
    for length, chunk in ((45, 16), (33, 16), (1, None)):
        ids = torch.randint(0, 256, (1, length))
        assert rel_err(runner.prefill(ids, chunk, max_len=60), ref.prefill(ids, chunk, max_len=60)) < TOL
        assert rel_err(runner.decode(3), ref.decode(3)) < TOL


def test_measure_parity_check_passes(jit):
    """The sweep's parity check (measure.parity.check) accepts the JIT runner against its fp32 reference."""
    runner, _ = jit("tiny-mamba2")
    reference = EagerRunner(crun.parity_reference(runner), "cpu")
    ids = torch.randint(0, 256, (1, parity.PARITY_LEN))
    for chunk in (None, 16):
        result = parity.check(runner, reference, ids, chunk, "float32")
        assert result.ok and result.max_err < 1e-4, result.text


def test_shapes_outside_the_compiled_ones_are_errors_not_recompiles(jit):
    runner, ref = jit("tiny-llama")
    with pytest.raises(EdgeportsError, match="would recompile"):
        runner.prefill(torch.randint(0, 256, (2, 8)))  # batch 2: compiled for batch 1
    ids = torch.randint(0, 256, (1, 8))  # and the runner still works
    assert rel_err(runner.prefill(ids, max_len=20), ref.prefill(ids, max_len=20)) < TOL


def test_unchunked_runner_refuses_chunks(jit):
    runner, _ = jit("tiny-mamba")
    with pytest.raises(Unsupported, match="continuing-prefill"):
        runner.prefill(torch.randint(0, 256, (1, 20)), chunk=8)


def test_jit_artifact_roundtrip(tmp_path):
    """mode=jit exports the eager artifact under the compile backend; load() compiles it."""
    options = ExportOptions(dtype="float32", max_len=64, extra=(("mode", "jit"), ("chunked", False)))
    art = cexport.export(get_spec("tiny-mamba"), tmp_path / "a", options)
    art = read_artifact(art.path, backend="compile")
    assert not [f for f in art.files if f.endswith(".pt2")] and art.options.get("mode") == "jit"
    runner = crun.load(art, "cpu")
    assert isinstance(runner, crun.JitRunner) and "prefill_cont" not in runner.programs
    ref = EagerRunner(crun.parity_reference(runner), "cpu")
    ids = torch.randint(0, 256, (1, 12))
    assert rel_err(runner.prefill(ids), ref.prefill(ids)) < TOL


def test_compile_failure_names_arch_and_op(monkeypatch):
    """A graph break under fullgraph=True fails the load with one line naming the model, arch and program."""
    forward = mlp.GatedMLP.forward

    def breaks(self, x):
        torch._dynamo.graph_break()
        return forward(self, x)

    monkeypatch.setattr(mlp.GatedMLP, "forward", breaks)
    with pytest.raises(EdgeportsError) as err:
        crun.JitRunner(build(get_spec("tiny-llama"), dtype="float32"), "cpu", batch=1)
    msg = str(err.value)
    assert "torch.compile of the prefill program of tiny-llama (arch llama)" in msg and "\n" not in msg, msg


@pytest.mark.gpu
@pytest.mark.parametrize("mode, kernels, gemv", [("jit", "custom", "auto"), ("aot", "custom", "auto"),
                                                ("jit", "inline", "auto"), ("jit", "custom", "inductor"),
                                                ("aot", "custom", "inductor")])
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-mamba", "tiny-mamba2"])
def test_cuda_graph_decode(tmp_path, mode, kernels, gemv, name):
    """On CUDA the decode step is captured after its first plain call and replayed; logits match eager, with
    the projections as edgeports::gemv (auto, on CUDA) or Inductor's own."""
    if kernels == "inline" and name == "tiny-llama":
        pytest.skip("no SSM step ops")
    options = ExportOptions(dtype="float32", max_len=128, device="cuda",
                            extra=(("mode", mode), ("decode_kernels", kernels), ("gemv", gemv)))
    runner = crun.load(cexport.export(get_spec(name), tmp_path / "a", options), "cuda")
    assert runner.info["gemv"] == ("triton" if gemv == "auto" else "inductor"), runner.info
    ref = EagerRunner(crun.parity_reference(runner), "cuda")
    for length in (37, 64):
        ids = torch.randint(0, 256, (1, length), device="cuda")
        assert rel_err(runner.prefill(ids, max_len=length + 40), ref.prefill(ids, max_len=length + 40)) < 1e-3
        for _ in range(3):
            assert rel_err(runner.decode(8), ref.decode(8)) < 1e-3
        assert runner.info["cuda_graph"] == "on", runner.info
    chunked = torch.randint(0, 256, (1, 50), device="cuda")
    assert rel_err(runner.prefill(chunked, 16, max_len=90), ref.prefill(chunked, 16, max_len=90)) < 1e-3
    assert rel_err(runner.decode(5), ref.decode(5)) < 1e-3
    runner.close()


_PROMOTE_IN_CHILD = """
import ctypes, torch
from edgeports.runners import compile as crun
def visible():  # a libstdc++ symbol, looked up the way a newly loaded library's references are
    try:
        ctypes.CDLL(None).__getattr__("_ZNSt6locale7classicEv")
        return True
    except AttributeError:
        return False
before = visible()
path = crun._make_libstdcxx_global()
print(before, path, visible())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="dlopen scopes as on Linux")
def test_libstdcxx_is_made_global_before_a_cuda_package_loads():
    """The cure for the CUDA packages' crash at load (runners/compile.py, _make_libstdcxx_global): after
    `import torch` libstdc++ is loaded but invisible to a global lookup; promoted, it is found, and no second
    copy is loaded (the path is the one torch brought in)."""
    import subprocess

    proc = subprocess.run([sys.executable, "-c", _PROMOTE_IN_CHILD], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-800:]
    before, path, after = proc.stdout.split()
    assert (before, after) == ("False", "True"), proc.stdout
    assert "libstdc++.so" in path


_LOAD_IN_CHILD = """
import sys, torch
from edgeports.exporters.base import read_artifact
from edgeports.measure.parity import rel_err
from edgeports.runners import compile as crun
from edgeports.runners.eager import EagerRunner
runner = crun.load(read_artifact(sys.argv[1], backend="compile"), "cuda")
ref = EagerRunner(crun.parity_reference(runner).float(), "cuda")
ids = torch.randint(0, 256, (1, 37), device="cuda")
errs = [rel_err(runner.prefill(ids, max_len=80), ref.prefill(ids, max_len=80))]
errs += [rel_err(runner.decode(4), ref.decode(4)) for _ in range(2)]
print("max rel err", max(errs))
"""


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("weights", ["embedded", "shared"])
def test_cuda_aot_package_loads_in_each_dtype(tmp_path, dtype, weights):
    """A package loaded in a fresh process (as the benchmark workers do): there, every CUDA package of torch
    2.11 died at load until the runner made libstdc++ global (_make_libstdcxx_global). The tiny model in each
    dtype and weights mode, loaded in a child process so that a crash fails this case with its output
    instead of ending the run."""
    import subprocess

    options = ExportOptions(dtype=dtype, max_len=128, device="cuda",
                            extra=(("mode", "aot"), ("chunked", False), ("weights", weights)))
    art = cexport.export(get_spec("tiny-mamba2"), tmp_path / "a", options)
    proc = subprocess.run([sys.executable, "-X", "faulthandler", "-c", _LOAD_IN_CHILD, str(art.path)],
                          capture_output=True, text=True, timeout=300)
    out = (proc.stdout + proc.stderr)[-1500:]
    assert proc.returncode == 0, f"exit {proc.returncode}: {out}"
    err = float(proc.stdout.split("max rel err")[-1])
    assert err < parity.TOLERANCE[dtype], out
