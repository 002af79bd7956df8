"""`edgeports report --study` on a fixture store built here from synthetic rows (test data only)."""

import math

import pytest

from edgeports import study
from edgeports.cli import main
from edgeports.maxctx import MAXCTX_KEY, MAXCTX_TABLE, MaxCtxRow
from edgeports.measure.profile import OPS_KEY, OPS_TABLE, OpRow
from edgeports.measure.row import Row
from edgeports.results import ResultStore

LENS = [1 << k for k in range(10, 17)]  # 1k .. 64k
GPU = "NVIDIA H100 80GB HBM3"
T, S = "qwen2.5-0.5b", "mamba2-780m"


def synthetic_row(model, family, n, ttft, tpot, mem, key):
    return Row(model=model, arch="qwen2" if family == "transformer" else "mamba2", family=family, backend="eager",
               device="cuda", dtype="bfloat16", batch=1, prompt_len=n, decode_len=32, prefill_mode="full",
               repeats=3, status="ok", ttft_p50_ms=ttft, tpot_p50_ms=tpot, peak_allocated_bytes=mem,
               weight_bytes=mem // 4, state_bytes=mem // 8, activation_bytes=mem - mem // 4 - mem // 8,
               prefill_flop_s=4e14, decode_bytes_s=2e12, peak_flop_s=8e14, peak_bytes_s=3e12,
               peak_source="measured on test", energy_prefill_j=0.5 * ttft, energy_per_token_j=0.01,
               energy_method="nvml-energy-counter (synthetic)", platform_gpu=GPU, cell_key=key)


def maxctx_row(model, family, mode, max_ctx, capped):
    return MaxCtxRow(model=model, arch="x", family=family, backend="eager", device="cuda", dtype="bfloat16", batch=1,
                     prefill_mode=mode, decode_len=16, budget="24GiB", mem_budget=24 << 30, weights="random:0",
                     status="ok", max_ctx=max_ctx, fail_ctx=None if capped else max_ctx + 4096, capped=int(capped),
                     cap=256 * 1024, resolution=1 / 16, projected_ctx=None if capped else max_ctx + 1000,
                     projection="synthetic", peak_bytes_at_max=None, probes="[]", reason=None, search_s=10.0,
                     key=f"{model}-{mode}", timestamp="t", platform_id="p", platform_gpu=GPU, platform_cpu=None,
                     platform_git_commit=None, platform="{}")


@pytest.fixture
def db(tmp_path):
    """Transformer: TTFT (L/1k)^2 ms, TPOT 1 + L/8k ms, memory 1000 B/token. SSM: TTFT 3 L/1k ms, TPOT 2 ms,
    memory 200 B/token. So TTFT crosses at 3k, TPOT at 8k, and the SSM saves 80% of memory at every length."""
    path = tmp_path / "e.db"
    with ResultStore(path) as store:
        ops = []
        for n in LENS:
            x = n / 1024
            for model, fam, ttft, tpot, mem, shares in (
                    (T, "transformer", x * x, 1 + n / 8192, 1000 * n, {"gemm": 0.7, "attention": 0.3}),
                    (S, "ssm", 3 * x, 2.0, 200 * n, {"gemm": 0.4, "ssm_scan": 0.6})):
                key = f"{model}-{n}"
                store.add(synthetic_row(model, fam, n, ttft, tpot, mem, key))
                ops += [OpRow(cell_key=key, phase=phase, category=c, time_ms=ttft * share, share=share, calls=3,
                              source="cuda-kernels", top=None) for phase in ("prefill", "decode")
                        for c, share in shares.items()]
        store.add_records(OPS_TABLE, ops, OPS_KEY)
        store.add_records(MAXCTX_TABLE, [maxctx_row(T, "transformer", "full", 48 * 1024, False),
                                         maxctx_row(S, "ssm", "full", 256 * 1024, True)], MAXCTX_KEY)
    return str(path)


def test_crossover_interpolates_in_log_length():
    a = {n: (n / 1024) ** 2 for n in LENS}
    b = {n: 3 * n / 1024 for n in LENS}
    c = study.crossover(a, b)
    assert c.length == pytest.approx(3072) and c.ratios[0] == pytest.approx(1 / 3)
    assert study.crossover({1: 2.0, 2: 2.0}, {1: 1.0, 2: 1.0}).describe("A", "B") == "none: B faster from 1"
    assert study.crossover({1: 1.0, 2: 1.0}, {1: 2.0, 2: 3.0}).describe("A", "B") == "none: A faster up to 2"
    assert study.crossover({}, {1: 1.0}).describe("A", "B") == "no common lengths"


def test_values_between_lengths_are_interpolated_log_log():
    pts = {1024: 10.0, 4096: 160.0}  # y = L^2 scaled
    v, interp = study.at_length(pts, 2048)
    assert interp and v == pytest.approx(40.0)
    assert study.at_length(pts, 1024) == (10.0, False) and study.at_length(pts, 8192) == (None, False)


def test_pairs():
    assert study.parse_pairs("a:b:c, d:e") == [study.Pair("a", "b"), study.Pair("a", "c"), study.Pair("d", "e")]
    fams = {"q05": "transformer", "l1": "transformer", "m780": "ssm", "m13": "ssm", "f15": "hybrid"}
    params = {"q05": 0.49e9, "l1": 1.24e9, "m780": 0.45e9, "m13": 1.3e9, "f15": 1.55e9}
    assert study.auto_pairs(fams, params) == [study.Pair("l1", "f15"), study.Pair("l1", "m13"), study.Pair("q05", "m780")]
    with pytest.raises(Exception, match="bad --pairs"):
        study.parse_pairs("lonely")


def test_study_report_on_the_fixture_store(db, tmp_path):
    md, page = study.write_study(db, tmp_path / "out", pairs=f"{T}:{S}")
    text = md.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| eager on cuda") and f"| {T} | {S} |" in line)
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[3] == "3.0k"  # TTFT crossover, exactly where (L/1k)^2 = 3 L/1k
    assert cells[4] == "0.33x @ 1k" and cells[5] == "21.33x @ 64k"
    assert cells[6] == "8k"  # TPOT ratio is exactly 1 at the measured 8k
    mem = next(line for line in text.splitlines() if f"| {S} |" in line and "interp." in line)
    assert "80% vs " + T in mem  # 57k lies between the measured 32k and 64k
    assert "11.1 MiB (interp.)" in mem  # 200 B/token x 57k = 11.1 MiB: log-log interpolation of a line is exact
    assert "| 48k |" in text and ">= 256k (limit)" in text
    scan = next(line for line in text.splitlines() if line.startswith(f"| {S} | ssm | eager | full | 57k")
                or line.startswith(f"| {S} | ssm | eager | full | 64k"))
    assert "| 60% | 60% |" in scan
    assert "50%" in text  # prefill 4e14 of the measured 8e14 FLOP/s
    assert "declared H100 SXM5" in text
    for name in ("study_ttft.png", "study_tpot.png", "study_memory.png", "study_ops_prefill.png",
                 "study_ops_decode.png"):
        assert (md.parent / name).stat().st_size > 1000 and f"]({name})" in text
    html = page.read_text()
    assert html.count("data:image/png;base64,") == 5 and "src='study_" not in html  # self-contained
    assert "3.0k" in html and "<table>" in html


def test_cli_report_study_and_plain_report(db, tmp_path, capsys):
    main(["report", "--study", "--db", db, "--out", str(tmp_path / "s"), "--pairs", f"{T}:{S}", "--no-plots"])
    assert "study.html" in capsys.readouterr().out
    assert not list((tmp_path / "s").glob("*.png"))
    main(["report", "--db", db, "--out", str(tmp_path / "r"), "--baseline", "none"])
    text = (tmp_path / "r" / "report.md").read_text()
    assert "## Operator breakdown" in text and "(study_ops_prefill.png)" in text
    assert (tmp_path / "r" / "study_ops_decode.png").is_file()


def test_auto_pairs_from_the_zoo_sizes(db, tmp_path):
    md, _ = study.write_study(db, tmp_path / "auto", plots=False)
    assert f"Pairs: {T} vs {S}." in md.read_text()
    assert math.isfinite(study.crossover({1: 1.0, 2: 4.0}, {1: 2.0, 2: 2.0}).length)
