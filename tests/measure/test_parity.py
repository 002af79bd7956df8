import torch

from edgeports.measure.parity import TOLERANCE, check, rel_err
from edgeports.models import build, get_spec
from edgeports.runners.eager import EagerRunner


def _runner(dtype="float32", seed=0):
    return EagerRunner(build(get_spec("tiny-llama"), dtype=dtype, seed=seed), "cpu")


def test_rel_err():
    ref = torch.tensor([[1.0, -4.0]])
    assert rel_err(ref, ref) == 0
    assert abs(rel_err(ref + torch.tensor([[0.0, 0.4]]), ref) - 0.1) < 1e-6


def test_same_weights_pass_in_fp32_and_bf16():
    ids = torch.randint(0, 256, (1, 48), generator=torch.Generator().manual_seed(0))
    ref = EagerRunner(build(get_spec("tiny-llama"), dtype="bfloat16").float(), "cpu")
    same = check(_runner(), _runner(), ids, None, "float32")
    assert same.ok and same.max_err == 0 and same.text.startswith("ok (prefill+decode")
    half = check(_runner("bfloat16"), ref, ids, 16, "bfloat16")
    assert half.ok, half.text
    assert 0 < half.max_err <= TOLERANCE["bfloat16"]


def test_different_weights_fail_with_a_parity_reason():
    ids = torch.randint(0, 256, (1, 48), generator=torch.Generator().manual_seed(0))
    res = check(_runner(seed=1), _runner(seed=0), ids, None, "float32")
    assert not res.ok and res.text.startswith("parity: ") and res.max_err > TOLERANCE["float32"]


def test_prompt_len_fits_the_state():
    """Short sweeps (static-shape artifacts exported for a few dozen tokens) still get a parity check."""
    from edgeports.measure.parity import PARITY_LEN, prompt_len

    assert prompt_len(None) == PARITY_LEN
    assert prompt_len(10_000) == PARITY_LEN
    assert prompt_len(PARITY_LEN + 1) == PARITY_LEN
    assert prompt_len(24) == 23  # one slot left for the decode step
    assert prompt_len(2) == 2
