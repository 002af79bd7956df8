"""Hymba against a plain reference of its equations (there is no transformers implementation).

The reference below is written from the remote code of nvidia/Hymba-1.5B-Base (modeling_hymba.py:
HymbaModel / HymbaDecoderLayer / HymbaBlock / HymbaFlexAttention) and the paper (arXiv 2411.13676), as a
sequential per-token loop in float64 with explicit Python lists for the KV caches and an explicit
recurrence for the SSM. It shares no code with edgeports.models.archs.hymba: it only reads the same weights
by name. It covers, for every layer: RMSNorm, the joint in_proj split [q | k | v | x_ssm | gate],
NTK-scaled RoPE, GQA attention with values wider than keys, the sliding-window-plus-meta-tokens mask
(q - kv <= sliding_window or kv < num_memory_tokens) vs global layers, cross-layer KV sharing (consumers
read the producer's KV list), the Mamba1 head (causal conv + SiLU, x_proj, dt/B/C RMSNorms, dt_proj +
softplus, h = exp(dt A) h + dt B x, y = C h + D x, y * silu(gate)), the averaged normalised branch outputs,
out_proj, the SwiGLU MLP, the meta tokens prepended to the sequence (taking positions 0..M-1), the final
norm and the tied head. Prefill (one-shot and chunked) and decode logits of the optimised module must
match it. Not covered: running NVIDIA's code itself (it needs CUDA, flash-attn and mamba_ssm).
"""

import math

import pytest
import torch
import torch.nn.functional as F
from parity import rel_err

from edgeports.models import build, from_pretrained, get_spec
from edgeports.models.archs import hymba

NAME = "tiny-hymba"


def _rms(x, w, eps):
    return w * (x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps))


def _rotate(x, pos, theta):
    """RoPE of one head vector x[d] at position pos (rotate-half convention)."""
    d = x.shape[-1]
    inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    ang = torch.cat([pos * inv, pos * inv])
    x1, x2 = x[: d // 2], x[d // 2:]
    return x * torch.cos(ang) + torch.cat([-x2, x1]) * torch.sin(ang)


class Reference:
    """Token-at-a-time Hymba in float64, reading the weights of an edgeports model by name."""

    def __init__(self, lm, config):
        c = self.c = config
        self.w = {k: v.detach().double() for k, v in lm.state_dict().items()}
        self.H, self.heads, self.kv = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]
        self.hd = self.H // self.heads
        self.D = c["mamba_expand"] * self.H
        self.vd = self.D // self.heads
        self.N, self.K = c["mamba_d_state"], c["mamba_d_conv"]
        self.R = math.ceil(self.H / 16) if c["mamba_dt_rank"] == "auto" else c["mamba_dt_rank"]
        self.M, self.W, self.eps = c["num_memory_tokens"], c["sliding_window"], c["rms_norm_eps"]
        n = c["max_position_embeddings"] / c["orig_max_position_embeddings"]
        self.theta = c["rope_theta"] * (2 * n - 1) ** (self.hd / (self.hd - 2))
        self.producer = {cons: g[0] for g in c["kv_reuse_group"] for cons in g[1:]}
        L = c["num_hidden_layers"]
        self.kv_cache = {i: [] for i in range(L) if i not in self.producer}  # layer -> [(k[kv,hd], v[kv,vd])]
        self.conv = [torch.zeros(self.D, self.K, dtype=torch.float64) for _ in range(L)]  # last K inputs
        self.ssm = [torch.zeros(self.D, self.N, dtype=torch.float64) for _ in range(L)]
        self.t = 0  # position of the next token
        for m in self.w["memory_tokens"]:  # the meta tokens come first, as ordinary tokens
            self.step(m)

    def layer(self, i, x):
        w = lambda n: self.w[f"blocks.{i}.{n}"]  # noqa: E731
        c, t = self.c, self.t
        h = _rms(x, w("input_layernorm.weight"), self.eps)
        p = w("mamba.in_proj.weight") @ h
        q, p = p[: self.H], p[self.H:]
        q = torch.stack([_rotate(q[j * self.hd:(j + 1) * self.hd], t, self.theta) for j in range(self.heads)])
        if i not in self.producer:
            k, v, p = p[: self.kv * self.hd], p[self.kv * self.hd: self.kv * (self.hd + self.vd)], \
                p[self.kv * (self.hd + self.vd):]
            k = torch.stack([_rotate(k[j * self.hd:(j + 1) * self.hd], t, self.theta) for j in range(self.kv)])
            self.kv_cache[i].append((k, v.view(self.kv, self.vd)))
        xs, z = p[: self.D], p[self.D:]
        # attention over the producer's (or own) cache: keys at positions 0..t
        cache = self.kv_cache[self.producer.get(i, i)]
        glob = i in c["global_attn_idx"]
        seen = [j for j in range(t + 1) if glob or j < self.M or t - j <= self.W]
        attn = []
        for hh in range(self.heads):
            g = hh // (self.heads // self.kv)
            s = torch.stack([q[hh] @ cache[j][0][g] for j in seen]) / math.sqrt(self.hd)
            a = torch.softmax(s, 0)
            attn.append(sum(a[n] * cache[j][1][g] for n, j in enumerate(seen)))
        attn = torch.cat(attn)  # [D]
        # Mamba1 head
        self.conv[i] = torch.cat([self.conv[i][:, 1:], xs[:, None]], dim=1)
        xc = F.silu((self.conv[i] * w("mamba.conv1d.weight")[:, 0]).sum(-1) + w("mamba.conv1d.bias"))
        dbc = w("mamba.x_proj.weight") @ xc
        dt, B, C = dbc[: self.R], dbc[self.R: self.R + self.N], dbc[self.R + self.N:]
        dt = _rms(dt, w("mamba.dt_layernorm.weight"), self.eps)
        B = _rms(B, w("mamba.B_layernorm.weight"), self.eps)
        C = _rms(C, w("mamba.C_layernorm.weight"), self.eps)
        dt = F.softplus(w("mamba.dt_proj.weight") @ dt + w("mamba.dt_proj.bias"))  # [D]
        A = -torch.exp(w("mamba.A_log"))
        self.ssm[i] = torch.exp(dt[:, None] * A) * self.ssm[i] + (dt * xc)[:, None] * B[None, :]
        y = (self.ssm[i] @ C + w("mamba.D") * xc) * F.silu(z)
        fused = (_rms(attn, w("mamba.pre_avg_layernorm1.weight"), self.eps)
                 + _rms(y, w("mamba.pre_avg_layernorm2.weight"), self.eps)) / 2
        x = x + w("mamba.out_proj.weight") @ fused
        h = _rms(x, w("pre_moe_layernorm.weight"), self.eps)
        mlp = w("mlp.down_proj.weight") @ (F.silu(w("mlp.gate_proj.weight") @ h) * (w("mlp.up_proj.weight") @ h))
        return x + mlp

    def step(self, x):
        for i in range(self.c["num_hidden_layers"]):
            x = self.layer(i, x)
        self.t += 1
        return x

    def token(self, tok: int) -> torch.Tensor:
        """Feed one token id -> logits[V] (float64)."""
        x = self.step(self.w["embed.weight"][tok])
        return self.w["embed.weight"] @ _rms(x, self.w["norm.weight"], self.eps)  # tied head


@pytest.fixture(scope="module")
def model():
    spec = get_spec(NAME)
    return spec, build(spec, dtype="float32", seed=3)


@torch.no_grad()
@pytest.mark.parametrize("chunks", [[30], [1, 13, 16]])
def test_prefill_and_decode_match_reference(model, chunks):
    spec, lm = model
    c = spec.config
    assert c["num_memory_tokens"] > 0 and 0 < c["sliding_window"] < 30  # the test must exercise both
    ids = torch.randint(0, c["vocab_size"], (1, sum(chunks)), generator=torch.Generator().manual_seed(7))
    ref = Reference(lm, c)
    for tok in ids[0].tolist():
        want = ref.token(tok)
    state, start = lm.new_state(1, sum(chunks) + 4), 0
    for n, size in enumerate(chunks):
        got, state = lm.prefill(ids[:, start:start + size], state, first=n == 0)
        start += size
    errs = [rel_err(got[0], want)]
    for _ in range(4):
        tok = int(want.argmax())
        want = ref.token(tok)
        got, state = lm.decode(torch.tensor([[tok]]), state)
        errs.append(rel_err(got[0], want))
    assert max(errs) < 1e-4, errs


@torch.no_grad()
def test_fresh_state_gets_meta_tokens_without_first(model):
    spec, lm = model
    ids = torch.randint(0, spec.config["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(1))
    a, sa = lm.prefill(ids, lm.new_state(2, 16), first=True)
    b, sb = lm.prefill(ids, lm.new_state(2, 16), first=False)
    assert int(sa[-1]) == int(sb[-1]) == 12 + spec.config["num_memory_tokens"]
    assert rel_err(b, a) < 1e-6


def test_kv_sharing_consumers_have_no_cache(model):
    spec, lm = model
    layout = lm.state_layout(1, 8)
    consumers = {cons for g in spec.config["kv_reuse_group"] for cons in g[1:]}
    for i in range(spec.config["num_hidden_layers"]):
        kinds = [s.kind for s in layout if s.name.startswith(f"layers.{i}.")]
        assert kinds == (["conv", "ssm"] if i in consumers else ["conv", "ssm", "k", "v"]), (i, kinds)
    # a sliding-window layer's cache is meta + window + 1 slots at any max_len; a global one grows with it
    k = {s.name: s.shape[2] for s in lm.state_layout(1, 1000) if s.kind == "k"}
    M, W = spec.config["num_memory_tokens"], spec.config["sliding_window"]
    assert k["layers.1.k"] == M + W + 1 and k["layers.0.k"] == 1000 + M


@torch.no_grad()
def test_loads_remote_code_checkpoint_names(model, tmp_path):
    """Our weights saved under the remote code's names load back through from_pretrained."""
    import json

    from safetensors.torch import save_file

    spec, lm = model
    names = hymba.hf_name_map(spec)
    assert names["blocks.2.mamba.x_proj.weight"] == "model.layers.2.mamba.x_proj.0.weight"
    assert names["memory_tokens"] == "model.memory_tokens"
    sd = lm.state_dict()
    save_file({hf: sd[ours].contiguous() for ours, hf in names.items()}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(spec.config))
    loaded = from_pretrained(tmp_path, dtype="float32")
    ids = torch.randint(0, spec.config["vocab_size"], (1, 9))
    a, _ = lm.prefill(ids, lm.new_state(1, 9), first=True)
    b, _ = loaded.prefill(ids, loaded.new_state(1, 9), first=True)
    assert rel_err(b, a) < 1e-6


@torch.no_grad()
def test_exports_with_dynamic_length(model):
    """torch.export of prefill (continuing a state, symbolic L up to past the ring) matches eager, states included."""
    spec, lm = model

    class Prefill(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lm = lm

        def forward(self, ids, state):
            return self.lm(ids, *state)

    _, state = lm.prefill(torch.randint(0, 256, (1, 5)), lm.new_state(1, 60), first=True)
    L = torch.export.Dim("L", min=2, max=48)
    ep = torch.export.export(Prefill(), (torch.zeros(1, 5, dtype=torch.long), list(state)),
                             dynamic_shapes=({1: L}, [None] * len(state)), strict=False)
    ring = spec.config["sliding_window"] + 1
    for n in (3, ring + 7):  # within and past the sliding-window ring
        ids = torch.randint(0, spec.config["vocab_size"], (1, n))
        got = ep.module()(ids, [s.clone() for s in state])
        want = lm(ids, *[s.clone() for s in state])
        assert max(rel_err(a.double(), b.double()) for a, b in zip(got, want, strict=True)) < 1e-6
