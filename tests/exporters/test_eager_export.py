import json

import pytest
import torch

from edgeports.errors import EdgeportsError
from edgeports.exporters import eager
from edgeports.exporters.base import ExportOptions, read_artifact, stage
from edgeports.models import build, get_spec
from edgeports.runners.eager import load, load_lm

SPEC = get_spec("tiny-llama")


def _logits(lm, ids):
    with torch.inference_mode():
        return lm.prefill(ids, lm.new_state(1, ids.shape[1]), first=True)[0]


def test_random_weights_export_only_the_seed(tmp_path):
    art = eager.export(SPEC, tmp_path / "a", ExportOptions(dtype="fp32", seed=3, max_len=64))
    assert art.files == {} and art.options.seed == 3 and art.dtype == "float32"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["manifest.json"]
    back = read_artifact(tmp_path / "a", backend="eager")
    assert back == art
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert {"spec", "dtype", "backend", "options", "state_layout", "shape_ranges", "versions", "files",
            "created_at"} <= set(manifest)
    # the layout is that of the model at max_len, in the exported dtype
    lm = build(SPEC, dtype="float32", seed=3)
    assert manifest["state_layout"] == [s.to_json() for s in lm.state_layout(1, 64)]
    ids = torch.randint(0, 256, (1, 20))
    assert torch.equal(_logits(load_lm(back, "cpu"), ids), _logits(lm, ids))


def test_lm_export_writes_weights_that_load_back(tmp_path):
    lm = build(SPEC, dtype="float32", seed=7)
    art = eager.export(lm, tmp_path / "w", ExportOptions(dtype="fp32", seed=0))
    assert set(art.files) == {eager.WEIGHTS_FILE}
    runner = load(read_artifact(tmp_path / "w"), "cpu")
    ids = torch.randint(0, 256, (1, 20))
    assert torch.equal(runner.prefill(ids), _logits(lm, ids))


def _weights_artifact(tmp_path):
    eager.export(build(SPEC, dtype="float32"), tmp_path / "w", ExportOptions(dtype="fp32"))
    return tmp_path / "w"


def test_hash_mismatch_missing_file_and_corrupt_manifest(tmp_path):
    path = _weights_artifact(tmp_path)
    weights = path / eager.WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(EdgeportsError, match="does not match its hash"):
        read_artifact(path)
    weights.unlink()
    with pytest.raises(EdgeportsError, match="is missing"):
        read_artifact(path)
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(EdgeportsError, match="corrupt manifest.json"):
        read_artifact(path)
    (path / "manifest.json").write_text(json.dumps({"format": 1, "backend": "eager"}))
    with pytest.raises(EdgeportsError, match="corrupt manifest.json"):
        read_artifact(path)


def test_wrong_backend_and_not_an_artifact(tmp_path):
    path = _weights_artifact(tmp_path)
    with pytest.raises(EdgeportsError, match="exported for backend 'eager', not 'onnx'"):
        read_artifact(path, backend="onnx")
    with pytest.raises(EdgeportsError, match="not an artifact"):
        read_artifact(tmp_path)


def test_failed_export_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with stage(tmp_path / "x") as tmp:
            (tmp / "half.bin").write_bytes(b"12")
            raise RuntimeError("export failed halfway")
    assert list(tmp_path.iterdir()) == []


def test_export_replaces_an_older_artifact_whole(tmp_path):
    _weights_artifact(tmp_path)
    eager.export(SPEC, tmp_path / "w", ExportOptions(dtype="fp32"))
    assert read_artifact(tmp_path / "w").files == {}
    assert not (tmp_path / "w" / eager.WEIGHTS_FILE).exists()


def test_unwritable_out_dir_is_a_user_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(EdgeportsError, match="cannot write an artifact"):
        eager.export(SPEC, blocker / "a", ExportOptions())


@pytest.mark.parametrize("value,want", [(None, True), (False, False), (True, True), (0, False), (1, True),
                                        ("false", False), ("No", False), ("0", False), ("off", False),
                                        ("true", True), ("yes", True), ("1", True)])
def test_option_flag_reads_bools_and_cli_strings(value, want):
    extra = () if value is None else (("chunked", value),)
    assert ExportOptions(extra=extra).flag("chunked", True) is want


def test_option_checks_are_one_line_errors_naming_the_key():
    opts = ExportOptions(extra=(("mode", "fast"), ("chunked", "maybe"), ("opset", "x"), ("n", "17")))
    assert ExportOptions().choice("mode", "aot", ("aot", "jit")) == "aot"
    assert opts.integer("n", 3) == 17 and opts.integer("absent", 3) == 3
    for call, words in [(lambda: opts.choice("mode", "aot", ("aot", "jit")), "option mode must be one of aot, jit, got 'fast'"),
                        (lambda: opts.flag("chunked", True), "option chunked must be true or false, got 'maybe'"),
                        (lambda: opts.integer("opset", 23), "option opset must be an integer, got 'x'")]:
        with pytest.raises(EdgeportsError, match=words) as info:
            call()
        assert "\n" not in str(info.value)
