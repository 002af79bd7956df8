import pytest
import torch

from edgeports.exporters.base import ExportOptions, in_memory
from edgeports.models import get_spec, zoo_names
from edgeports.runners import hf
from edgeports.runners.base import Unsupported
from edgeports.runners.eager import EagerRunner

pytest.importorskip("transformers")
TINY = [n for n in ("tiny-llama", "tiny-mamba", "tiny-mamba2") if n in zoo_names()]


def _runner(name, dtype="float32", seed=0):
    return hf.load(in_memory("hf", get_spec(name), ExportOptions(dtype=dtype, seed=seed)), "cpu")


@pytest.mark.parametrize("name", TINY)
def test_hf_matches_our_model_with_its_weights(name):
    """The hf runner and our LM holding the transformers model's weights agree (prefill + decode)."""
    r = _runner(name)
    ref = EagerRunner(hf.parity_reference(r), "cpu")
    ids = torch.randint(0, 256, (1, 40))
    torch.testing.assert_close(r.prefill(ids), ref.prefill(ids), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(r.decode(4), ref.decode(4), rtol=1e-4, atol=1e-4)
    assert r.state_bytes > 0 and r.weight_bytes > 0


@pytest.mark.parametrize("name", TINY)
def test_hf_runs_the_eager_backends_weights(name):
    """Without --weights the transformers model holds exactly build(spec, seed)'s weights."""
    from edgeports.models import build

    r = _runner(name, seed=3)
    eager = EagerRunner(build(get_spec(name), dtype="float32", seed=3), "cpu")
    ids = torch.randint(0, 256, (1, 30))
    torch.testing.assert_close(r.prefill(ids), eager.prefill(ids), rtol=1e-4, atol=1e-4)


def test_seeded_weights_are_reproducible():
    ids = torch.randint(0, 256, (1, 12))
    assert torch.equal(_runner("tiny-llama", seed=5).prefill(ids), _runner("tiny-llama", seed=5).prefill(ids))
    assert not torch.equal(_runner("tiny-llama", seed=5).prefill(ids), _runner("tiny-llama", seed=6).prefill(ids))


def test_chunked_prefill_for_attention_models():
    r = _runner("tiny-llama")
    ids = torch.randint(0, 256, (1, 40))
    torch.testing.assert_close(r.prefill(ids, chunk=16), r.prefill(ids), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif("tiny-mamba" not in zoo_names(), reason="tiny-mamba not in the zoo yet")
def test_mamba_chunked_prefill_is_unsupported():
    with pytest.raises(Unsupported, match="chunked prefill"):
        _runner("tiny-mamba").prefill(torch.randint(0, 256, (1, 40)), chunk=16)


def test_cpu_runs_swap_native_kernels_for_torch_fallbacks(monkeypatch):
    """A modeling module whose kernel wrapper resolved to a (fake) CUDA package gets its torch
    fallback back, so a CPU run never calls the CUDA kernel."""
    import sys
    import types

    from transformers.integrations.hub_kernels import use_kernel_func_from_hub_with_fallback

    cuda_pkg = types.ModuleType("fake_cuda_kernels")
    cuda_pkg.scan = lambda x: (_ for _ in ()).throw(AssertionError("CUDA kernel called with a CPU tensor"))
    monkeypatch.setitem(sys.modules, "fake_cuda_kernels", cuda_pkg)
    modeling = types.ModuleType("fake_modeling")
    monkeypatch.setitem(sys.modules, "fake_modeling", modeling)

    def scan(x):
        return x + 1

    scan.__module__ = "fake_modeling"
    modeling.scan = use_kernel_func_from_hub_with_fallback("scan", "fake_cuda_kernels")(scan)

    class Mixer(torch.nn.Module):
        def forward(self, x):
            return sys.modules["fake_modeling"].scan(x)

    Mixer.__module__ = "fake_modeling"
    model = torch.nn.Sequential(Mixer())
    wrappers = hf.kernel_wrappers(model)
    assert list(wrappers) == ["fake_modeling.scan"]
    assert hf._native_kernels(wrappers) == ["fake_modeling.scan"]
    hf.use_torch_fallbacks(wrappers)
    assert hf._native_kernels(hf.kernel_wrappers(model)) == []
    assert torch.equal(model(torch.zeros(2)), torch.ones(2))


def test_unknown_model_type_is_unsupported():
    from edgeports.models.spec import ModelSpec

    spec = ModelSpec("x", "transformer", "llama", {"model_type": "no-such-model-type"})
    with pytest.raises(Unsupported, match="no model type"):
        hf.hf_config(spec)
