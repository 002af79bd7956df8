import dataclasses

import pytest

from edgeports import platform
from edgeports.measure.row import CONFIG_FIELDS, Row, cell_key, field_types, platform_id

CONFIG = dict(model="tiny-llama", arch="llama", family="transformer", backend="eager", device="cpu",
              dtype="float32", batch=1, prompt_len=256, decode_len=4, prefill_mode="full", mem_budget=None,
              weights="random:0")


def test_platform_fields_are_exactly_the_fingerprint():
    fields = {f.name for f in dataclasses.fields(Row) if f.name.startswith("platform_")}
    assert fields == set(platform.FINGERPRINT_KEYS)


def test_config_fields_are_row_fields():
    names = {f.name for f in dataclasses.fields(Row)}
    assert set(CONFIG_FIELDS) <= names


def test_field_types_are_sql_representable():
    types = field_types()
    assert set(types.values()) <= {int, float, str}
    assert types["ttft_p50_ms"] is float and types["prompt_len"] is int and types["reason"] is str


def test_status_is_checked():
    with pytest.raises(ValueError):
        Row(**CONFIG, status="fine")


def test_from_dict_ignores_unknown_keys():
    row = Row.from_dict({**CONFIG, "status": "ok", "column_from_the_future": 1})
    assert row.to_dict()["model"] == "tiny-llama"


def test_cell_key_depends_on_config_and_platform_only():
    fp = {"platform_cpu": "x", "platform_gpu": None, "platform_torch": "2.6"}
    k = cell_key(CONFIG, fp)
    assert k == cell_key(dict(CONFIG), {**fp, "platform_torch": "2.13"})  # versions do not matter
    assert k != cell_key({**CONFIG, "prompt_len": 512}, fp)
    assert k != cell_key(CONFIG, {**fp, "platform_gpu": "RTX 4090"})
    assert platform_id(fp) != platform_id({**fp, "platform_cpu": "y"})
