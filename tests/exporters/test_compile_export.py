"""compile backend, AOT mode: export tiny models to AOTInductor packages (CPU, the C++ compiler present),
load them without model code, and check them against eager on fresh random prompts.

AOTInductor builds are slow on 2 cores, so each artifact is exported once per session (`aot`) and every
test reuses it; zamba2 uses a 3-layer copy of tiny-zamba2 (one shared block used twice) to keep the build short.
"""

import copy
import dataclasses
import json
import subprocess
import sys
import types

import pytest
import torch
from safetensors.torch import load_file

from edgeports.errors import EdgeportsError
from edgeports.exporters import compile as cexport
from edgeports.exporters.base import ExportOptions, in_memory, read_artifact
from edgeports.measure.parity import rel_err
from edgeports.models import build, get_spec
from edgeports.models.fuse import fold_constants, fuse_projections, has_unfolded_constants
from edgeports.models.layers import mlp
from edgeports.models.layers.attention import Attention
from edgeports.runners import compile as crun
from edgeports.runners import eager
from edgeports.runners.base import Unsupported

MODELS = ["tiny-llama", "tiny-mamba", "tiny-mamba2", "tiny-falcon-h1", "tiny-zamba2"]
MAX_LEN = 64
TOL = 1e-4  # fp32, relative to the largest logit


def spec_of(name):
    spec = get_spec(name)
    if name == "tiny-zamba2":  # hybrid, mamba, hybrid with one shared block: reuse and per-use adapters remain
        config = {**spec.config, "num_hidden_layers": 3, "layers_block_type": ["hybrid", "mamba", "hybrid"],
                  "num_mem_blocks": 1}
        spec = dataclasses.replace(spec, config=config)
    return spec


CHUNKED = ("tiny-llama",)  # exported with the continuing-prefill program (the default options)


def options_of(name):
    return ExportOptions(dtype="float32", max_len=MAX_LEN, extra=() if name in CHUNKED else (("chunked", False),))


@pytest.fixture(scope="session")
def aot_root(tmp_path_factory):
    return tmp_path_factory.mktemp("compile-aot")


@pytest.fixture(scope="session")
def aot(aot_root):
    """name -> its AOT artifact, exported on first use where the sweep's artifact cache would put it."""
    cache = {}

    def get(name):
        if name not in cache:
            options = options_of(name)
            out = aot_root / "compile" / f"{name}-{options.dtype}-{options.key()}"
            cache[name] = cexport.export(spec_of(name), out, options)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def loaded(aot):
    """name -> (AOT runner, eager runner with the same seeded weights)."""
    cache = {}

    def get(name):
        if name not in cache:
            art = aot(name)
            ref = eager.load(in_memory("eager", art.spec, ExportOptions(dtype="float32")), "cpu")
            cache[name] = crun.load(art, "cpu"), ref
        return cache[name]

    return get


def _ssm_layers(spec) -> int:
    return 0 if spec.family == "transformer" else spec.config["num_hidden_layers"]


@pytest.mark.parametrize("name", MODELS)
def test_aot_artifact(aot, name):
    """Packages, shared weights, manifest ranges; the SSM ops are single edgeports:: nodes, no loops."""
    art = read_artifact(aot(name).path, backend="compile")
    kinds = ["decode", "prefill", "prefill_cont"] if name in CHUNKED else ["decode", "prefill"]
    assert sorted(f for f in art.files if f.endswith(".pt2")) == [f"{k}.pt2" for k in kinds]
    assert cexport.WEIGHTS_FILE in art.files and art.export_s > 0
    assert art.shape_ranges["prefill_len"] == [2, MAX_LEN] and art.shape_ranges["state_len"] == [2, MAX_LEN]
    meta = json.loads(art.file(cexport.PROGRAMS_FILE).read_text())
    n = _ssm_layers(art.spec)
    scan = {"mamba": "selective_scan"}.get(art.spec.arch, "ssd_chunk_scan")
    for kind, prog in meta["programs"].items():
        assert prog["compile_s"] > 0 and prog["export_s"] > 0
        ops = prog["ops"]
        assert not [k for k in ops if k.startswith("hop::")], f"{kind} holds loops or branches: {ops}"
        if kind == "decode":
            expected = {"edgeports::causal_conv1d_update_": n, "edgeports::selective_state_update_": n}
        else:
            expected = {"edgeports::causal_conv1d": n, f"edgeports::{scan}": n}
        assert ops == {k: v for k, v in expected.items() if v}, kind
    if art.spec.family != "ssm":  # KV caches are the dynamic state dims
        assert art.shape_ranges["state_len_dims"]


@pytest.mark.parametrize("name", MODELS)
def test_aot_parity_with_eager(loaded, name):
    """Full prefill at two state sizes (one package, dynamic L and S), then greedy decode steps."""
    runner, ref = loaded(name)
    vocab = runner.artifact.spec.config["vocab_size"]
    for length, max_len in ((21, 30), (40, MAX_LEN)):
        ids = torch.randint(0, vocab, (1, length))
        got, want = runner.prefill(ids, max_len=max_len), ref.prefill(ids, max_len=max_len)
        assert rel_err(got, want) < TOL
        assert rel_err(runner.decode(5), ref.decode(5)) < TOL
        assert runner.state_bytes == ref.state_bytes
    assert runner.weight_bytes == ref.weight_bytes


def test_aot_chunked_prefill_and_one_token_chunks(loaded):
    """prefill_cont continues the state; a 1-token chunk or prompt runs the decode package."""
    runner, ref = loaded("tiny-llama")
    for length, chunk in ((41, 16), (33, 16), (1, None)):
        ids = torch.randint(0, 256, (1, length))
        assert rel_err(runner.prefill(ids, chunk, max_len=50), ref.prefill(ids, chunk, max_len=50)) < TOL
        assert rel_err(runner.decode(3), ref.decode(3)) < TOL


def test_aot_runner_limits(loaded):
    runner, _ = loaded("tiny-mamba2")
    with pytest.raises(Unsupported, match="continuing-prefill"):
        runner.prefill(torch.randint(0, 256, (1, 20)), chunk=8)
    with pytest.raises(EdgeportsError, match="--max-len"):
        runner.prefill(torch.randint(0, 256, (1, 8)), max_len=MAX_LEN + 1)
    with pytest.raises(Unsupported, match="batch 1"):
        runner.prefill(torch.randint(0, 256, (2, 8)))


def test_state_buffers_are_kept_per_shape(loaded):
    """Same (batch, max_len): the same buffers, zeroed (so a decode graph stays valid); a new shape: new ones."""
    runner, _ = loaded("tiny-llama")
    ids = torch.randint(0, 256, (1, 10))
    runner.prefill(ids, max_len=20)
    first = [t.data_ptr() for t in runner._state]
    runner.decode(2)
    runner.reset()
    runner.prefill(ids, max_len=20)
    assert [t.data_ptr() for t in runner._state] == first and int(runner._state[-1]) == 10
    runner.prefill(ids, max_len=24)
    assert runner._state[0].shape[2] == 24


def test_packages_run_without_model_code(aot, loaded, tmp_path):
    """A fresh process loads the packages with no arch or layer module imported, and gets eager's logits."""
    names = ["tiny-mamba", "tiny-zamba2"]
    ids = torch.randint(0, 256, (1, 19))
    torch.save(ids, tmp_path / "ids.pt")
    script = f"""
import sys, torch
from edgeports.exporters.base import read_artifact
from edgeports.runners import compile as crun
ids = torch.load({str(tmp_path / 'ids.pt')!r})
out = {{}}
for name, path in {[(n, str(aot(n).path)) for n in names]!r}:
    r = crun.load(read_artifact(path, backend="compile"), "cpu")
    out[name] = (r.prefill(ids, max_len=30), r.decode(4))
torch.save(out, {str(tmp_path / 'out.pt')!r})
print(",".join(m for m in sys.modules if m.startswith("edgeports.models.")))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = proc.stdout.strip().splitlines()[-1].split(",")
    assert not [m for m in imported if m.startswith(("edgeports.models.archs", "edgeports.models.layers",
                                                       "edgeports.models.transformer"))], imported
    out = torch.load(tmp_path / "out.pt")
    for name in names:
        _, ref = loaded(name)
        assert rel_err(out[name][0], ref.prefill(ids, max_len=30)) < TOL
        assert rel_err(out[name][1], ref.decode(4)) < TOL


def test_parity_reference_has_the_artifact_weights(loaded):
    runner, ref = loaded("tiny-falcon-h1")
    lm = crun.parity_reference(runner)
    assert lm.head_device().type == "cpu" and next(lm.parameters()).dtype == torch.float32
    expected = copy.deepcopy(ref.lm)
    assert fuse_projections(expected) > 0  # the packages hold fused projections (the export default)
    want = expected.state_dict()
    assert lm.state_dict().keys() == want.keys()
    for name, p in lm.state_dict().items():
        torch.testing.assert_close(p, want[name], rtol=0, atol=0, msg=name)


def test_sweep_worker_checks_parity_then_measures(aot, aot_root):
    """Through the sweep's worker: the cached artifact is reused, parity against eager fp32 (full and
    chunked) passes, then a cell is measured."""
    from edgeports import worker as w

    aot("tiny-llama")
    job = {"model": "tiny-llama", "backend": "compile", "device": "cpu", "dtype": "float32", "seed": 0,
           "weights": None, "batch": 1, "max_len": MAX_LEN, "prefill_modes": ["chunk:16", "full"],
           "mem_budget": None, "artifacts": str(aot_root)}
    worker = w.Worker(job)
    assert worker.load()["export_reused"] == 1
    for mode in ("full", "chunk:16"):
        row = worker.cell({"id": 1, "prompt_len": 40, "decode_len": 4, "prefill_mode": mode, "repeats": 1,
                           "warmup": 1})
        assert row["status"] == "ok", row
        assert row["parity"].startswith("ok") and row["parity_max_err"] < 1e-3, row["parity"]
        assert row["ttft_p50_ms"] > 0 and row["tpot_p50_ms"] > 0 and json.loads(row["runner_info"])["mode"] == "aot"


def test_sweep_worker_reports_a_failed_export(monkeypatch, tmp_path):
    """A model that fails to export fails the worker's load with the one-line error the sweep records."""
    from edgeports import worker as w

    _no_fake_op_in_mlp(monkeypatch)
    job = {"model": "tiny-llama", "backend": "compile", "device": "cpu", "dtype": "float32", "seed": 0,
           "weights": None, "batch": 1, "max_len": MAX_LEN, "prefill_modes": ["full"], "mem_budget": None,
           "artifacts": str(tmp_path)}
    with pytest.raises(EdgeportsError) as err:
        w.Worker(job).load()
    assert w._status(err.value) == "error" and "arch llama" in w._reason(err.value)


def _no_fake_op_in_mlp(monkeypatch):
    """Make every MLP call an op with a CPU kernel but no fake implementation (torch.export cannot trace it)."""
    if not hasattr(torch.ops.edgeports_test, "nofake"):
        lib = torch.library.Library("edgeports_test", "DEF")
        lib.define("nofake(Tensor x) -> Tensor")
        lib.impl("nofake", lambda x: x.clone(), "CPU")
        _LIBS.append(lib)
    forward = mlp.GatedMLP.forward
    monkeypatch.setattr(mlp.GatedMLP, "forward", lambda self, x: torch.ops.edgeports_test.nofake(forward(self, x)))


_LIBS = []  # keeps the test library registered for the session


def test_export_failure_names_arch_and_op(monkeypatch, tmp_path):
    """A model that cannot be exported: one EdgeportsError line with the model, arch, program and op."""
    _no_fake_op_in_mlp(monkeypatch)
    with pytest.raises(EdgeportsError) as err:
        cexport.export(get_spec("tiny-llama"), tmp_path / "a", ExportOptions(dtype="float32", max_len=MAX_LEN))
    msg = str(err.value)
    assert "tiny-llama (arch llama)" in msg and "prefill program" in msg and "edgeports_test" in msg, msg
    assert "\n" not in msg and not (tmp_path / "a").exists()


def test_failing_op_from_torch_messages():
    assert cexport.failing_op(RuntimeError("While executing %x : call_function[target=torch.ops.aten.nonzero.default]")) \
        == "op aten.nonzero.default"
    assert cexport.failing_op(ValueError("nothing to see")) == "an unidentified op"


def test_options_are_checked(tmp_path):
    spec = get_spec("tiny-llama")
    with pytest.raises(EdgeportsError, match="option mode must be one of aot, jit"):
        cexport.export(spec, tmp_path / "a", ExportOptions(extra=(("mode", "fast"),)))
    with pytest.raises(EdgeportsError, match="max-len"):
        cexport.export(spec, tmp_path / "b", ExportOptions(max_len=4))
    for mode in ("aot", "jit"):  # before any work in either mode: jit once wrote the artifact, load then failed
        for key in ("fuse", "chunked"):
            with pytest.raises(EdgeportsError, match=f"option {key} must be true or false, got 'maybe'"):
                cexport.export(spec, tmp_path / f"{mode}-{key}", ExportOptions(extra=(("mode", mode), (key, "maybe"))))
            assert not (tmp_path / f"{mode}-{key}").exists()
    ok, reason = cexport.available()
    assert ok, reason


def test_unfused_export_through_the_runner(tmp_path):
    """--opt fuse=false (a string, as the CLI gives it): separate q/k/v and gate/up weights in the packages,
    which the runner runs and parity_reference rebuilds unfused."""
    options = ExportOptions(dtype="float32", max_len=MAX_LEN, extra=(("chunked", False), ("fuse", "false")))
    art = read_artifact(cexport.export(get_spec("tiny-llama"), tmp_path / "a", options).path, backend="compile")
    meta = json.loads(art.file(cexport.PROGRAMS_FILE).read_text())
    assert meta["fused_projections"] is False
    assert any(".q_proj." in n for n in meta["constants"]) and not any("qkv_proj" in n for n in meta["constants"])
    runner = crun.load(art, "cpu")
    lm = crun.parity_reference(runner)
    assert not any(isinstance(m, Attention) and m.fused_qkv for m in lm.modules())
    ref = eager.load(in_memory("eager", art.spec, ExportOptions(dtype="float32")), "cpu")
    ids = torch.randint(0, 256, (1, 21))
    assert rel_err(runner.prefill(ids, max_len=40), ref.prefill(ids, max_len=40)) < TOL
    assert rel_err(runner.decode(3), ref.decode(3)) < TOL


def test_inline_decode_kernels(tmp_path):
    """--opt decode_kernels=inline: decode holds no edgeports:: node (the step math is traced in), prefill
    keeps its ops; the packages match eager."""
    options = ExportOptions(dtype="float32", max_len=MAX_LEN, extra=(("chunked", False), ("decode_kernels", "inline")))
    art = read_artifact(cexport.export(get_spec("tiny-mamba2"), tmp_path / "a", options).path, backend="compile")
    ops = {k: p["ops"] for k, p in json.loads(art.file(cexport.PROGRAMS_FILE).read_text())["programs"].items()}
    n = art.spec.config["num_hidden_layers"]
    assert ops == {"decode": {}, "prefill": {"edgeports::causal_conv1d": n, "edgeports::ssd_chunk_scan": n}}
    runner = crun.load(art, "cpu")
    assert runner.info["decode_kernels"] == "inline"
    ref = eager.EagerRunner(crun.parity_reference(runner), "cpu")
    ids = torch.randint(0, 256, (1, 21))
    assert rel_err(runner.prefill(ids, max_len=40), ref.prefill(ids, max_len=40)) < TOL
    for _ in range(2):
        assert rel_err(runner.decode(3), ref.decode(3)) < TOL


@pytest.mark.parametrize("key, default, values", [
    ("fuse", True, (("false", False), ("true", True))),
    ("freeze", False, (("false", False), ("true", True))),
    ("decode_kernels", "custom", (("inline", "inline"), ("custom", "custom"))),
    ("gemv", "auto", (("inductor", "inductor"), ("triton", "triton"))),
])
def test_jit_artifact_passes_its_options_to_the_runner(tmp_path, monkeypatch, key, default, values):
    seen = []
    monkeypatch.setattr(crun, "JitRunner", lambda lm, device, batch, chunked, **kw: seen.append(kw[key]))
    for value, want in (*values, (None, default)):
        extra = (("mode", "jit"),) + (((key, value),) if value else ())
        art = cexport.export(get_spec("tiny-llama"), tmp_path / str(value), ExportOptions(max_len=MAX_LEN, extra=extra))
        crun.load(read_artifact(art.path, backend="compile"), "cpu")
        got = seen.pop()
        assert got == want and type(got) is type(want)


def test_export_leaves_the_callers_lm_as_it_was(tmp_path, monkeypatch):
    """An unfolded LM is copied before folding; an LM handed in folded keeps its buffers (the same tensors, the
    same values), so a JIT runner's captured graph that reads them is not disturbed (packages not compiled)."""
    monkeypatch.setattr(cexport, "compile_package", lambda ep, path, *a, **k: path.write_bytes(b""))
    options = ExportOptions(max_len=MAX_LEN, extra=(("chunked", False),))
    plain = build(get_spec("tiny-mamba"), dtype="float32", seed=4)
    cexport.export(plain, tmp_path / "a", options)
    assert has_unfolded_constants(plain)
    folded = build(get_spec("tiny-mamba"), dtype="float32", seed=4)
    fold_constants(folded)
    before = {n: (b, b.clone()) for n, b in folded.named_buffers() if "folded_" in n}
    cexport.export(folded, tmp_path / "b", options)
    after = dict(folded.named_buffers())
    for n, (tensor, value) in before.items():
        assert after[n] is tensor and torch.equal(tensor, value), n


def test_weights_option_is_checked_before_any_work(tmp_path):
    options = ExportOptions(max_len=MAX_LEN, extra=(("weights", "inside"),))
    with pytest.raises(EdgeportsError, match="weights must be one of auto, shared, embedded"):
        cexport.export(get_spec("tiny-llama"), tmp_path / "a", options)
    assert not (tmp_path / "a").exists()


def test_fused_lm_exported_with_fuse_off_records_fused_names(tmp_path, monkeypatch):
    """An LM handed in already fused (a JIT runner's) with fuse=false: programs.json says what the weight
    names are, so parity_reference fuses its rebuilt LM and finds every weight (packages not compiled here)."""
    monkeypatch.setattr(cexport, "compile_package", lambda ep, path, *a, **k: path.write_bytes(b""))
    lm = build(get_spec("tiny-llama"), dtype="float32", seed=3)
    assert fuse_projections(lm) > 0
    options = ExportOptions(max_len=MAX_LEN, seed=3, extra=(("chunked", False), ("fuse", False)))
    art = read_artifact(cexport.export(lm, tmp_path / "a", options).path, backend="compile")
    assert json.loads(art.file(cexport.PROGRAMS_FILE).read_text())["fused_projections"] is True
    stored = load_file(str(art.file(cexport.WEIGHTS_FILE)))
    runner = types.SimpleNamespace(artifact=art, device=torch.device("cpu"), weights=lambda: stored)
    ref = crun.parity_reference(runner)
    for name, p in lm.state_dict().items():
        torch.testing.assert_close(ref.state_dict()[name], p, rtol=0, atol=0, msg=name)


def test_prefill_length_range_is_checked(monkeypatch):
    """Dim.DYNAMIC lets torch.export narrow L's range without an error; the exporter makes it one (the
    manifest promises [2, max_len])."""
    forward = cexport.InPlaceStep.forward

    def narrowing(self, ids, *state):
        torch._check(ids.shape[1] >= 4)
        return forward(self, ids, *state)

    lm = build(get_spec("tiny-llama"), dtype="float32")
    monkeypatch.setattr(cexport.InPlaceStep, "forward", narrowing)
    with pytest.raises(ValueError, match=r"narrowed the prompt length L to \[4, 64\], not \[2, 64\]"):
        cexport.export_program(lm, "prefill", 1, MAX_LEN)



def _state_len_sizes(ep, lm, max_len):
    """(size, offset) of every dynamic state dim of an exported program (its user inputs are ids, *state)."""
    names = ep.graph_signature.user_inputs[1:]
    vals = {n.name: n.meta["val"] for n in ep.graph.nodes if n.op == "placeholder"}
    return [(vals[name].shape[d], off) for name, dd in zip(names, cexport.state_len_dims(lm, 1, max_len), strict=True)
            for d, off in dd.items()]


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-hymba"])  # Hymba: cache dims are S + 6 meta tokens
def test_state_len_dims_are_one_symbol_over_the_whole_range(name):
    """Every cache dim of the decode and continuing-prefill programs is S + offset for one symbol S that takes
    every value in [2, max_len] (what the manifest's state_len range promises)."""
    lm = build(get_spec(name), dtype="float32")
    for kind in ("decode", "prefill_cont"):
        ep = cexport.export_program(lm, kind, 1, MAX_LEN)
        sizes = _state_len_sizes(ep, lm, MAX_LEN)
        assert len(sizes) >= 4 and all(isinstance(s, torch.SymInt) for s, _ in sizes), (kind, sizes)
        exprs = {s.node.expr - off for s, off in sizes}
        assert len(exprs) == 1, (kind, exprs)
        (expr,) = exprs
        (sym,) = expr.free_symbols
        vr = ep.range_constraints[sym]
        shift = expr - sym
        assert (vr.lower + shift, vr.upper + shift) == (2, MAX_LEN), (kind, expr, vr)


def _with_guard(monkeypatch, guard):
    """InPlaceStep.forward, first branching on guard(S) for the first cache's length S."""
    forward = cexport.InPlaceStep.forward

    def guarded(self, ids, *state):
        if guard(state[0].shape[2]):
            ids = ids + 0
        return forward(self, ids, *state)

    monkeypatch.setattr(cexport.InPlaceStep, "forward", guarded)


@pytest.mark.skipif(cexport._dim_hint() is None, reason="this torch has no Dim.DYNAMIC hint: named Dims")
def test_state_len_survives_a_guard_true_for_every_length(monkeypatch):
    """Regression: on CUDA (torch 2.11, H100) the attention of the continuing prefill made a guard like
    `min(16*S, 32*S) != 64*S`, true for every S, that a named Dim("state_len") reported as a violated
    constraint. min(16*S, 32*S*S) != 64*S is one that the CPU path keeps unsimplified too."""
    lm = build(get_spec("tiny-llama"), dtype="float32")
    _with_guard(monkeypatch, lambda s: torch.sym_min(16 * s, 32 * s * s) != 64 * s)
    ep = cexport.export_program(lm, "prefill_cont", 1, MAX_LEN)
    assert len({s.node.expr for s, _ in _state_len_sizes(ep, lm, MAX_LEN)}) == 1


@pytest.mark.skipif(cexport._dim_hint() is None, reason="this torch has no Dim.DYNAMIC hint: named Dims")
def test_state_length_range_is_checked(monkeypatch):
    """A guard over part of S's range narrows it silently under Dim.DYNAMIC; the exporter makes that an error."""
    lm = build(get_spec("tiny-llama"), dtype="float32")
    _with_guard(monkeypatch, lambda s: torch._check(s >= 4))
    with pytest.raises(ValueError, match=r"narrowed the state length S to \[4, 64\], not \[2, 64\]"):
        cexport.export_program(lm, "decode", 1, MAX_LEN)



@pytest.mark.skipif(cexport._dim_hint() is None, reason="this torch has no Dim.DYNAMIC hint: named Dims")
def test_unrelated_state_lengths_are_refused(monkeypatch):
    """Without the tie of _OneStateLen each cache dim keeps a symbol of its own: the check refuses that."""
    monkeypatch.setattr(cexport._OneStateLen, "forward", cexport.InPlaceStep.forward)
    lm = build(get_spec("tiny-llama"), dtype="float32")
    with pytest.raises(ValueError, match=r"made the state length S s\d+, s\d+, s\d+, s\d+ over its 4 dims, not one"):
        cexport.export_program(lm, "decode", 1, MAX_LEN)


def test_embedded_weights_travel_as_a_blob(tmp_path):
    """CUDA packages embed their weights by default (exporters/compile.py `_shares_weights`); asked for here on
    the CPU (--opt weights=embedded): the weights sit in each package as a binary blob beside the library (not
    appended to it), the runner loads them without the weights file and matches eager."""
    import zipfile

    if not hasattr(torch._inductor.config.aot_inductor, "package_constants_on_disk_format"):
        pytest.skip("this torch has no aot_inductor.package_constants_on_disk_format")
    spec = dataclasses.replace(get_spec("tiny-mamba2"), config={**get_spec("tiny-mamba2").config,
                                                                "num_hidden_layers": 1})
    options = ExportOptions(dtype="float32", max_len=MAX_LEN, extra=(("chunked", False), ("weights", "embedded")))
    art = read_artifact(cexport.export(spec, tmp_path / "a", options).path, backend="compile")
    assert json.loads(art.file(cexport.PROGRAMS_FILE).read_text())["weights"] == "embedded"
    for kind in ("prefill", "decode"):
        names = zipfile.ZipFile(art.file(f"{kind}.pt2")).namelist()
        assert any(n.endswith(".blob") for n in names), names
    runner = crun.load(art, "cpu")
    ref = eager.load(in_memory("eager", spec, ExportOptions(dtype="float32")), "cpu")
    ids = torch.randint(0, spec.config["vocab_size"], (1, 19))
    assert rel_err(runner.prefill(ids, max_len=40), ref.prefill(ids, max_len=40)) < TOL
    assert rel_err(runner.decode(3), ref.decode(3)) < TOL


def test_cpp_compile_failure_says_what_the_compiler_said():
    """Inductor's CppCompileError begins "C++ compile error" (mamba2-2.7b's CUDA decode package, H100): the
    one-line error also carries the compiler's first error line."""
    exc = RuntimeError("C++ compile error\n\nCommand:\ng++ /tmp/x/wrapper.cpp -shared -o x.so\n\nOutput:\n"
                       "/tmp/x/wrapper.cpp:12:3: error: 'foo' was not declared in this scope\n"
                       "/tmp/x/wrapper.cpp:40:1: error: expected ';'\n")
    msg = str(cexport.failure(get_spec("tiny-mamba2"), "AOTInductor compile of the decode program", exc))
    assert "C++ compile error" in msg and "'foo' was not declared" in msg and "expected ';'" not in msg, msg
    assert "\n" not in msg
    plain = str(cexport.failure(get_spec("tiny-mamba2"), "export", ValueError("bad\nerror: later")))
    assert plain.endswith("ValueError: bad (error: later)")


def test_int_arrays_are_declared_at_each_use_while_packaging():
    """uncached_int_arrays: inside it, two requests for the same size array declare it twice (each where it
    is used; the cache could hand back a name declared in another buffer); outside, the cache is back."""
    from torch._inductor.codegen.cpp_wrapper_cpu import CppWrapperCpu

    declared = []

    class Wrapper:
        codegen_int_array_var_cache: dict = {}

        def _codegen_int_array_var_impl(self, int_array, writeline, known_statically):
            declared.append(int_array)
            return f"int_array_{len(declared)}"

    lines = []
    with cexport.uncached_int_arrays() as patched:
        assert patched
        names = [CppWrapperCpu.codegen_int_array_var(Wrapper(), "{2L, 3L}", lines.append) for _ in range(2)]
    assert names == ["int_array_1", "int_array_2"] and declared == ["{2L, 3L}"] * 2
    w = Wrapper()
    again = [CppWrapperCpu.codegen_int_array_var(w, "{4L}", lines.append) for _ in range(2)]
    assert again == ["int_array_3"] * 2 and len(declared) == 3  # torch's cached version restored
