import pytest

from edgeports.errors import EdgeportsError
from edgeports.lens import format_len, parse_len, parse_lens


@pytest.mark.parametrize("spec, want", [
    ("1k-64k", (1024, 2048, 4096, 8192, 16384, 32768, 65536)),
    ("1k,3k,57k", (1024, 3072, 58368)),
    ("8k-32k:+8k", (8192, 16384, 24576, 32768)),
    ("1k-64k:x4", (1024, 4096, 16384, 65536)),
    ("256-1k", (256, 512, 1024)),
    ("1k-5k", (1024, 2048, 4096)),  # the end is never exceeded
    ("512", (512,)),
    ("256, 1k-2k, 512", (256, 1024, 2048, 512)),  # mixed parts keep their order
    ("1k,1k,1024", (1024,)),  # duplicates dropped
    ("1m", (1 << 20,)),
    ("4K", (4096,)),
])
def test_grammar(spec, want):
    assert parse_lens(spec) == want


@pytest.mark.parametrize("spec, words", [
    ("64k-1k", "smaller than the start"),
    ("abc", "bad length"),
    ("0", "positive"),
    ("", "empty"),
    ("   ", "empty"),
    ("1k,,2k", "empty item"),
    ("1k-64k:x1", "at least 2"),
    ("1k-64k:y2", "bad --lens step"),
    ("1k-64k:+0", "positive"),
    ("-5", "bad length"),
    ("1.5k", "bad length"),
    ("1-1m:+1", "expands to"),
])
def test_bad_specs_are_one_line_errors(spec, words):
    with pytest.raises(EdgeportsError, match=words) as e:
        parse_lens(spec)
    assert "\n" not in str(e.value)


def test_format_round_trips():
    for n in (256, 1024, 1536, 65536, 1 << 20):
        assert parse_len(format_len(n)) == n
    assert format_len(4096) == "4k" and format_len(1536) == "1536"
