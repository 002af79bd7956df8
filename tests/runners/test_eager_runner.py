import pytest
import torch

from edgeports.errors import EdgeportsError
from edgeports.exporters.base import ExportOptions, in_memory
from edgeports.models import build, get_spec, zoo_names
from edgeports.runners import eager
from edgeports.runners.base import parse_prefill_mode

TINY = [n for n in ("tiny-llama", "tiny-mamba", "tiny-mamba2") if n in zoo_names()]


def _runner(name, dtype="float32"):
    return eager.load(in_memory("eager", get_spec(name), ExportOptions(dtype=dtype)), "cpu")


@pytest.mark.parametrize("name", TINY)
def test_runner_matches_the_model_loop(name):
    """prefill/decode == lm.prefill then greedy lm.decode steps, on fresh random ids."""
    r = _runner(name)
    lm = build(get_spec(name), dtype="float32")
    ids = torch.randint(0, lm.spec.config["vocab_size"], (1, 37))
    got_prefill = r.prefill(ids, max_len=45)
    got_decode = r.decode(5)
    with torch.inference_mode():
        logits, state = lm.prefill(ids, lm.new_state(1, 45), first=True)
        assert torch.allclose(got_prefill, logits)
        for _ in range(5):
            logits, state = lm.decode(logits.argmax(-1, keepdim=True), state)
    torch.testing.assert_close(got_decode, logits)
    assert r.state_bytes == lm.state_bytes(1, 45)
    assert r.weight_bytes == lm.weight_bytes()


@pytest.mark.parametrize("name", TINY)
def test_chunked_prefill_matches_full(name):
    r = _runner(name)
    ids = torch.randint(0, 256, (1, 50))
    full = r.prefill(ids)
    full_next = r.decode(3)
    chunked = r.prefill(ids, chunk=16)
    torch.testing.assert_close(chunked, full, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(r.decode(3), full_next, rtol=1e-4, atol=1e-4)


def test_bf16_runner_and_reset():
    r = _runner("tiny-llama", "bf16")
    assert r.dtype == torch.bfloat16
    logits = r.prefill(torch.randint(0, 256, (2, 9)))
    assert logits.shape == (2, 256) and logits.dtype == torch.float32
    assert r.state_bytes > 0
    r.reset()
    assert r.state_bytes == 0


def test_misuse_is_reported():
    r = _runner("tiny-llama")
    with pytest.raises(EdgeportsError, match="before prefill"):
        r.decode(1)
    r.prefill(torch.randint(0, 256, (1, 8)), max_len=10)
    with pytest.raises(EdgeportsError, match="overflows"):
        r.decode(3)
    with pytest.raises(EdgeportsError, match="does not fit"):
        r.prefill(torch.randint(0, 256, (1, 8)), max_len=4)


def test_prefill_modes():
    assert parse_prefill_mode("full") is None and parse_prefill_mode("chunk:512") == 512
    for bad in ("chunk", "chunk:0", "chunk:x", "partial"):
        with pytest.raises(EdgeportsError):
            parse_prefill_mode(bad)
