import pytest

from edgeports.errors import EdgeportsError
from edgeports.measure.row import Row
from edgeports.report import markdown_table, write_report


def row(backend, n, ttft, tpot, mem, status="ok", model="tiny-llama", device="cpu"):
    return Row(model=model, arch="llama", family="transformer", backend=backend, device=device, dtype="float32",
               batch=1, prompt_len=n, decode_len=4, prefill_mode="full", status=status, cell_key=f"{backend}{n}",
               ttft_p50_ms=ttft, tpot_p50_ms=tpot, rss_peak_bytes=mem,
               reason=None if status == "ok" else "out of memory", platform_cpu="cpu0")


ROWS = [row("eager", 1024, 10.0, 2.0, 100 << 20), row("eager", 2048, 20.0, 2.0, 200 << 20),
        row("hf", 1024, 15.0, 1.0, 50 << 20), row("hf", 2048, None, None, None, status="oom")]


def test_table_has_ratio_columns_against_the_baseline():
    table = markdown_table(ROWS, "eager")
    lines = [ln for ln in table.splitlines() if ln.startswith("| tiny-llama")]
    assert len(lines) == 4
    hf1k = next(ln for ln in lines if "| hf | 1k |" in ln).split(" | ")
    assert hf1k[-3:] == ["1.50x", "0.50x", "0.50x |"]
    assert "oom: out of memory" in next(ln for ln in lines if "| hf | 2k |" in ln)
    assert "TTFT vs eager" in table


def test_no_baseline_means_no_ratios():
    assert "vs" not in markdown_table(ROWS, None)


def test_write_report_with_plots(tmp_path):
    pytest.importorskip("matplotlib")
    path = write_report(ROWS, tmp_path / "rep", baseline="hf")
    text = path.read_text()
    assert "TTFT vs hf" in text and "![ttft](ttft.png)" in text
    for name in ("ttft", "tpot", "memory"):
        png = tmp_path / "rep" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_errors(tmp_path):
    with pytest.raises(EdgeportsError, match="no result rows"):
        write_report([], tmp_path)
    with pytest.raises(EdgeportsError, match="baseline backend 'trt' has no rows"):
        write_report(ROWS, tmp_path, baseline="trt")
    assert write_report(ROWS, tmp_path / "md", baseline=None, plots=False).is_file()
    assert not list((tmp_path / "md").glob("*.png"))
