"""model_info / info_table: parameter counts against published sizes and transformers, cache bytes by hand."""

from __future__ import annotations

import importlib.util
import json
import random

import pytest
import torch
from torch import nn

from edgeports.models import LM, Block, ModelSpec, get_spec, zoo_names
from edgeports.models import info as info_mod
from edgeports.models.info import LONG_CONTEXT, count_params, info_table, model_info
from edgeports.models.state import StateSlot

REAL = [n for n in zoo_names() if not n.startswith("tiny-")]
HF_MODEL = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "phi3": "Phi3ForCausalLM",
            "mamba": "MambaForCausalLM", "mamba2": "Mamba2ForCausalLM", "falcon_h1": "FalconH1ForCausalLM",
            "zamba2": "Zamba2ForCausalLM"}


def _spec_or_skip(name: str) -> ModelSpec:
    spec = get_spec(name)
    if importlib.util.find_spec(f"edgeports.models.archs.{spec.arch}") is None:
        pytest.skip(f"edgeports.models.archs.{spec.arch} is not implemented yet")
    return spec


def _raw(name: str) -> dict:
    from importlib import resources

    return json.loads((resources.files("edgeports.models") / "zoo" / f"{name}.json").read_text())


@pytest.mark.parametrize("name", REAL)
def test_params_within_3pct_of_published(name):
    spec = _spec_or_skip(name)
    note = _raw(name).get("_params_note")
    if note:  # only a rounded size class is published; test_params_equal_transformers pins the count
        pytest.skip(f"{name}: {note}")
    params = model_info(spec).params
    assert abs(params / spec.published_params - 1) <= 0.03, (params, spec.published_params)


@pytest.mark.parametrize("name", [n for n in REAL if get_spec(n).arch in HF_MODEL])
def test_params_equal_transformers(name):
    """Same parameter count as transformers' model built from the same config (both on meta)."""
    transformers = pytest.importorskip("transformers")
    spec = _spec_or_skip(name)
    hf_cls = getattr(transformers, HF_MODEL[spec.arch])
    with torch.device("meta"):
        hf = hf_cls(hf_cls.config_class(**spec.config))
    assert model_info(spec).params == count_params(hf)


def test_llama_3_2_1b_kv_bytes_by_hand():
    spec = _spec_or_skip("llama-3.2-1b")
    info = model_info(spec)
    # k and v, 16 layers, 8 KV heads (GQA of 32 query heads), head_dim 64, bf16
    assert info.kv_bytes_per_token == 2 * 16 * 8 * 64 * 2 == 32768
    assert info.kv_bytes_fixed == 0 and not info.kv_window_capped
    assert info.ssm_state_bytes == 0
    assert (info.layers, info.family, info.dtype) == (16, "transformer", "bfloat16")


def test_mamba_130m_ssm_state_bytes_by_hand():
    spec = _spec_or_skip("mamba-130m")
    info = model_info(spec)
    layers, d_inner, d_state, d_conv = 24, 2 * 768, 16, 4
    conv = layers * d_inner * (d_conv - 1) * 2  # the last d_conv-1 inputs (kernels' contract), bf16
    ssm = layers * d_inner * d_state * 4  # float32
    assert info.ssm_state_bytes == conv + ssm == 2_580_480
    assert info.kv_bytes_per_token == 0 and info.kv_bytes_fixed == 0


def test_hymba_kv_is_window_capped():
    """Only the 3 global-attention layers grow at long context; sliding-window layers are capped."""
    spec = _spec_or_skip("hymba-1.5b")
    c = spec.config
    info = model_info(spec)
    qk_dim = c["hidden_size"] // c["num_attention_heads"]
    per_layer = c["num_key_value_heads"] * (qk_dim + c["v_head_dim"]) * 2  # k + v, bf16
    assert info.kv_bytes_per_token == len(c["global_attn_idx"]) * per_layer == 5760
    assert info.kv_window_capped and info.kv_bytes_fixed > 0


# ---- the derivation itself, on a stub arch with fresh random sizes ----------------------------

class _Attn(Block):
    def __init__(self, kv_heads, head_dim, window, meta):
        super().__init__()
        self.kv_heads, self.head_dim, self.window, self.meta = kv_heads, head_dim, window, meta
        self.proj = nn.Linear(4, 4)

    def state_slots(self, batch, max_len):
        n = (min(max_len, self.window) if self.window else max_len) + self.meta
        shape = (batch, self.kv_heads, n, self.head_dim)
        dtype = self.proj.weight.dtype
        return [StateSlot("k", "k", shape, dtype), StateSlot("v", "v", shape, dtype)]


class _SSM(Block):
    def __init__(self, d, n, w):
        super().__init__()
        self.d, self.n, self.w = d, n, w
        self.proj = nn.Linear(4, 4)

    def state_slots(self, batch, max_len):
        return [StateSlot("conv", "conv", (batch, self.d, self.w - 1), self.proj.weight.dtype),
                StateSlot("ssm", "ssm", (batch, self.d, self.n), torch.float32)]


class _StubArch:
    @staticmethod
    def build(spec):
        c = spec.config
        blocks = [_Attn(c["kv"], c["hd"], None, 0) for _ in range(c["n_full"])]
        blocks += [_Attn(c["kv"], c["hd"], c["window"], c["meta"]) for _ in range(c["n_win"])]
        blocks += [_SSM(c["d"], c["n"], c["w"]) for _ in range(c["n_ssm"])]
        emb = nn.Embedding(c["vocab"], 4)
        head = nn.Linear(4, c["vocab"], bias=False)
        head.weight = emb.weight  # tied: counted once
        return LM(spec, emb, blocks, nn.LayerNorm(4), head)


@pytest.mark.parametrize("seed", range(4))
def test_derivation_on_stub_arch(monkeypatch, seed):
    rnd = random.Random(seed)
    c = {"kv": rnd.randint(1, 8), "hd": rnd.choice([16, 64, 96]), "window": rnd.randint(2, 4096),
         "meta": rnd.choice([0, 128]), "n_full": rnd.randint(0, 3), "n_win": rnd.randint(0, 3),
         "d": rnd.randint(8, 512), "n": rnd.choice([16, 128]), "w": 4, "n_ssm": rnd.randint(0, 3),
         "vocab": rnd.randint(10, 1000)}
    dtype, size = rnd.choice([("bfloat16", 2), ("float32", 4)])
    monkeypatch.setattr(info_mod, "arch_module", lambda arch: _StubArch)
    spec = ModelSpec(name="stub", family="hybrid", arch="stub", config=c, dtype=dtype, published_params=1.0)
    info = model_info(spec)

    kv_tok = 2 * c["kv"] * c["hd"] * size  # k + v of one layer for one token
    assert info.kv_bytes_per_token == c["n_full"] * kv_tok
    assert info.kv_bytes_fixed == c["n_win"] * (min(LONG_CONTEXT, c["window"]) + c["meta"]) * kv_tok
    assert info.kv_window_capped == (c["n_win"] > 0 and c["window"] < LONG_CONTEXT)
    assert info.kv_bytes(LONG_CONTEXT) == info.kv_bytes_fixed + LONG_CONTEXT * info.kv_bytes_per_token
    assert info.ssm_state_bytes == c["n_ssm"] * c["d"] * ((c["w"] - 1) * size + c["n"] * 4)
    n_blocks = c["n_full"] + c["n_win"] + c["n_ssm"]
    assert info.params == c["vocab"] * 4 + n_blocks * 20 + 8  # tied embedding, 4x4+4 per block, LayerNorm
    assert info.layers == n_blocks  # no num_hidden_layers in this config


def test_info_table_rows():
    missing = ModelSpec(name="x", family="ssm", arch="no_such_arch", config={"model_type": "no_such_arch"},
                        published_params=5e8)
    names = [n for n in zoo_names() if n.startswith("tiny-")
             and importlib.util.find_spec(f"edgeports.models.archs.{get_spec(n).arch}")]
    rows = info_table([missing, *names])
    json.dumps(rows)  # the CLI prints them as JSON
    assert rows[0]["status"] == "not implemented" and "no_such_arch" in rows[0]["reason"]
    assert rows[0]["params"] is None and rows[0]["published_params"] == 5e8
    for row, name in zip(rows[1:], names, strict=True):
        assert row["status"] == "ok" and row["name"] == name and row["params"] > 0
        assert row["kv_bytes_per_token"] + row["ssm_state_bytes"] > 0
