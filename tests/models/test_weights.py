"""Loading local HF checkpoints: sharded and single-file, strict errors naming the tensor, dtypes, tying."""

import json

import pytest
import torch
from parity import hf_model, rel_err
from safetensors.torch import load_file, save_file

from edgeports.errors import EdgeportsError
from edgeports.models import build, from_pretrained, get_spec
from edgeports.models.weights import spec_from_hf_dir


def write_checkpoint(path, name="tiny-llama", edit=None):
    """Our seeded tiny model written as an HF-style checkpoint dir; `edit(tensors)` may tamper with it."""
    spec = get_spec(name)
    lm = build(spec, dtype="float32")
    from edgeports.models import arch_module

    sd = lm.state_dict()
    tensors = {hf: sd[ours].contiguous() for ours, hf in arch_module(spec.arch).hf_name_map(spec).items()}
    if edit:
        edit(tensors)
    path.mkdir(exist_ok=True)
    save_file(tensors, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(dict(spec.config, dtype="float32")))
    return lm


def logits(lm, n=12):
    ids = torch.arange(n)[None] % lm.spec.config["vocab_size"]
    return lm.prefill(ids, lm.new_state(1, n), first=True)[0]


def test_roundtrip_single_file(tmp_path):
    ref = write_checkpoint(tmp_path)
    lm = from_pretrained(tmp_path)
    assert lm.spec.arch == "llama" and lm.spec.family == "transformer"
    assert torch.equal(logits(lm), logits(ref))
    assert lm.head.weight is lm.embed.weight  # tie survives meta build + assign


def test_sharded_hf_checkpoint(tmp_path):
    hf = hf_model("tiny-qwen2")
    hf.save_pretrained(tmp_path / "one")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    shards = list((tmp_path / "sharded").glob("*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    a, b = from_pretrained(tmp_path / "one", dtype="float32"), from_pretrained(tmp_path / "sharded", dtype="float32")
    assert torch.equal(logits(a), logits(b))
    ids = torch.arange(12)[None]
    with torch.no_grad():
        assert rel_err(logits(b), hf(ids).logits[:, -1]) < 1e-5


def test_missing_tensor_named(tmp_path):
    write_checkpoint(tmp_path, edit=lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(EdgeportsError, match=r"missing tensor 'model\.layers\.1\.mlp\.up_proj\.weight'"):
        from_pretrained(tmp_path)


def test_shape_mismatch_named(tmp_path):
    def shrink(t):
        t["model.layers.0.self_attn.k_proj.weight"] = t["model.layers.0.self_attn.k_proj.weight"][:-1]
    write_checkpoint(tmp_path, edit=shrink)
    with pytest.raises(EdgeportsError, match=r"'model\.layers\.0\.self_attn\.k_proj\.weight' has shape \(31, 64\)"):
        from_pretrained(tmp_path)


def test_unused_tensor_named(tmp_path):
    write_checkpoint(tmp_path, edit=lambda t: t.update({"model.layers.0.extra.weight": torch.zeros(3)}))
    with pytest.raises(EdgeportsError, match=r"'model\.layers\.0\.extra\.weight' is not used"):
        from_pretrained(tmp_path)


def test_tied_copy_and_rotary_tables_ignored(tmp_path):
    def add(t):
        t["lm_head.weight"] = t["model.embed_tokens.weight"].clone()  # some tied checkpoints keep the copy
        t["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    ref = write_checkpoint(tmp_path, edit=add)
    assert torch.equal(logits(from_pretrained(tmp_path)), logits(ref))


def test_missing_shard_named(tmp_path):
    hf_model("tiny-llama").save_pretrained(tmp_path, max_shard_size="40KB")
    shard = sorted(tmp_path.glob("*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(EdgeportsError, match=shard.name):
        from_pretrained(tmp_path)


def test_bf16_load_keeps_rope_in_fp32(tmp_path):
    write_checkpoint(tmp_path, "tiny-phi3")
    lm = from_pretrained(tmp_path, dtype="bfloat16")
    assert lm.embed.weight.dtype == torch.bfloat16
    assert {b.dtype for b in lm.buffers()} == {torch.float32}
    sd = load_file(str(tmp_path / "model.safetensors"))
    assert torch.equal(lm.blocks[0].self_attn.qkv_proj.weight,
                       sd["model.layers.0.self_attn.qkv_proj.weight"].to(torch.bfloat16))


def test_spec_from_dir_errors(tmp_path):
    with pytest.raises(EdgeportsError, match="no config.json"):
        spec_from_hf_dir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(EdgeportsError, match="'gpt2' has no edgeports implementation"):
        spec_from_hf_dir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(get_spec("tiny-llama").config))
    with pytest.raises(EdgeportsError, match="no \\*.safetensors"):
        from_pretrained(tmp_path)


def test_get_spec_accepts_a_directory(tmp_path):
    write_checkpoint(tmp_path, "tiny-phi3")
    spec = get_spec(str(tmp_path))
    assert (spec.arch, spec.family, spec.dtype) == ("phi3", "transformer", "float32")
