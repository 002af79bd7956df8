"""Shared parity and chunked-prefill checks for every arch's tests. Stable API:

    check_parity(spec, tmp_path, prompt_len=24, decode_steps=4, chunks=None, attn_implementation="eager")
        Build the transformers model from spec.config (AutoConfig.for_model(<arch>.HF_MODEL_TYPE, **config),
        AutoModelForCausalLM.from_config, fp32, seed 0, eval), save_pretrained it to tmp_path, load that
        directory with edgeports.models.from_pretrained, then compare the last-position logits of the
        prefill and of `decode_steps` greedy decode steps (HF with its own cache, use_cache=True; both
        sides are fed HF's argmax token) to 1e-4 relative (||a - b|| / ||b||). `chunks` (e.g. [40, 20])
        runs the prompt as several prefill calls on both sides (HF continuing its cache).
        Returns the list of relative errors (prefill first).

    check_chunked(spec_or_name, chunks=(1, 7, 64), length=100)
        Chunked prefill (first chunk first=True, later ones first=False) equals one-shot prefill for any
        LM: logits and every state tensor.
        Returns the worst relative error.

    rel_err(a, b) -> float    ||a - b|| / ||b||

Both build tiny models on the CPU in float32; keep lengths small (20-100 tokens) so tests stay fast.
"""

from __future__ import annotations

import inspect

import torch

from edgeports.models import ModelSpec, arch_module, build, from_pretrained, get_spec

RTOL = 1e-4


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _spec(spec: ModelSpec | str) -> ModelSpec:
    return get_spec(spec) if isinstance(spec, str) else spec


def hf_model(spec: ModelSpec | str, attn_implementation: str = "eager", seed: int = 0):
    """The transformers reference for `spec`: random weights (seeded), float32, eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = _spec(spec)
    config = {k: v for k, v in spec.config.items() if k != "model_type"}
    cfg = AutoConfig.for_model(arch_module(spec.arch).HF_MODEL_TYPE, **config)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn_implementation, dtype=torch.float32)
    return model.eval()


def _hf_step(model, ids: torch.Tensor, cache):
    """One HF forward continuing `cache` -> (last-position logits [B,V], cache)."""
    kwargs = {"use_cache": True}
    if cache is not None:
        # SSM models name their cache cache_params; transformers' attention models past_key_values
        names = inspect.signature(model.forward).parameters
        kwargs["cache_params" if "cache_params" in names else "past_key_values"] = cache
        if "cache_position" in names:
            start = cache.get_seq_length() if hasattr(cache, "get_seq_length") else None
            if start is not None:
                kwargs["cache_position"] = torch.arange(start, start + ids.shape[1])
    out = model(input_ids=ids, **kwargs)
    cache = getattr(out, "past_key_values", None) or getattr(out, "cache_params", None)
    return out.logits[:, -1].float(), cache


@torch.no_grad()
def check_parity(spec: ModelSpec | str, tmp_path, prompt_len: int = 24, decode_steps: int = 4,
                 chunks: list[int] | None = None, attn_implementation: str = "eager", batch: int = 1,
                 rtol: float = RTOL, seed: int = 0) -> list[float]:
    """Our LM loaded from an HF save_pretrained dir vs the transformers model: prefill + greedy decode."""
    spec = _spec(spec)
    hf = hf_model(spec, attn_implementation, seed)
    hf.save_pretrained(tmp_path)
    lm = from_pretrained(tmp_path, dtype="float32")

    gen = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, spec.config["vocab_size"], (batch, prompt_len), generator=gen)
    chunks = chunks or [prompt_len]
    assert sum(chunks) == prompt_len, f"chunks {chunks} do not add up to prompt_len {prompt_len}"
    state = lm.new_state(batch, prompt_len + decode_steps)
    cache, start, errs = None, 0, []
    for i, n in enumerate(chunks):
        piece = ids[:, start:start + n]
        ref, cache = _hf_step(hf, piece, cache)
        ours, state = lm.prefill(piece, state, first=i == 0)
        start += n
    errs.append(rel_err(ours, ref))
    for _ in range(decode_steps):
        nxt = ref.argmax(-1, keepdim=True)  # [B,1]: both sides follow HF's greedy choice
        ref, cache = _hf_step(hf, nxt, cache)
        ours, state = lm.decode(nxt, state)
        errs.append(rel_err(ours, ref))
    assert max(errs) < rtol, f"{spec.name}: relative logits error per step {errs} exceeds {rtol}"
    return errs


@torch.no_grad()
def check_chunked(spec: ModelSpec | str, chunks=(1, 7, 64), length: int = 100, batch: int = 1,
                  rtol: float = RTOL, seed: int = 0) -> float:
    """Chunked prefill (each chunk size in `chunks`) equals one-shot prefill: logits and every state tensor."""
    spec = _spec(spec)
    lm = build(spec, dtype="float32", seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, spec.config["vocab_size"], (batch, length), generator=gen)
    max_len = length + 3
    ref_logits, ref_state = lm.prefill(ids, lm.new_state(batch, max_len), first=True)
    worst = 0.0
    for size in chunks:
        state = lm.new_state(batch, max_len)
        for i, start in enumerate(range(0, length, size)):
            logits, state = lm.prefill(ids[:, start:start + size], state, first=i == 0)
        errs = {"logits": rel_err(logits, ref_logits)}
        for slot, a, b in zip(lm.state_layout(batch, max_len), state, ref_state, strict=True):
            if slot.kind == "pos":  # + tokens an arch prepends to a fresh state (Hymba's meta tokens)
                want = length + getattr(lm, "n_prefix", 0)
                assert int(a) == int(b) == want, f"{spec.name}: pos {int(a)} != {want}"
            else:  # whole tensors: KV positions never written are zeros on both sides
                errs[slot.name] = rel_err(a, b)
        bad = {k: v for k, v in errs.items() if not v < rtol}
        assert not bad, f"{spec.name}: chunk {size}: chunked != one-shot for {bad}"
        worst = max(worst, *errs.values())
    return worst
