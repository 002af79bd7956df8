"""benchmarks/_variants.py without a GPU: the variant benchmarks' shared options, variant selection and table
rows, and both scripts' --help and argument errors (they exit before touching torch.cuda or nvcc)."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))
import _variants  # noqa: E402

VARIANTS = {"default": (), "q256": ("-DEP_SSD_Q=256",), "bm128": ("-DEP_SSD_BM=128",)}
DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


def _select(argv):
    args = _variants.parser("Doc line.\nmore", VARIANTS, DTYPES, lens="4096,16384").parse_args(argv)
    return args, _variants.select("prog", args, VARIANTS, DTYPES)


def test_defaults_select_every_variant_in_order():
    args, sel = _select([])
    assert sel == _variants.Selection(("default", "q256", "bm128"), ("bfloat16", "float16"), (4096, 16384))
    assert args.arch is None and 1 <= args.jobs <= len(VARIANTS)


def test_selection_keeps_the_given_order_and_skips_empty_items():
    _, sel = _select(["--variants", "bm128,,default", "--dtypes", "fp16", "--lens", "777,"])
    assert sel == _variants.Selection(("bm128", "default"), ("float16",), (777,))


@pytest.mark.parametrize("argv, says", [
    (["--variants", "default,q512"], "unknown variants ['q512'] (known: default, q256, bm128)"),
    (["--dtypes", "bf16,fp8"], "unknown dtypes ['fp8'] (known: bf16, fp16)"),
    (["--lens", "4k"], "--lens takes positive integers"),
    (["--lens", "0"], "--lens takes positive integers"),
])
def test_bad_selection_exits_with_one_line(argv, says):
    with pytest.raises(SystemExit) as e:
        _select(argv)
    msg = str(e.value)
    assert msg.startswith("prog: ") and says in msg and "\n" not in msg


def test_table_head_and_rows_as_recorded():
    """The heading plugin_variants.py printed in results/h100-2026-11-23/13-*.txt, and one of its cells."""
    recorded = (BENCH / "results/h100-2026-11-23/13-plugin-variants-scan-conv.txt").read_text().splitlines()
    names = ["default", "lanes4+cv4", "lanes16", "tile16", "tile64+cv16", "threads128", "minb8", "twopass"]
    blank, heading, rule = _variants.head(["op", "dtype", "L", "triton ms", "copy ms"], names).split("\n")
    assert blank == "" and heading in recorded and rule in recorded
    assert _variants.ratio_cell(1.449, 1.280) == "1.449 (1.13x)"
    assert _variants.ratio_cell(1.449, None) == "1.449"
    assert _variants.row(["bfloat16", "16384", "-"], ["1.449"]) == "| bfloat16 | 16384 | - | 1.449 |"


@pytest.mark.parametrize("script, extra", [("plugin_variants.py", "--dtypes"), ("ssd_variants.py", "--no-split")])
def test_scripts_help_and_errors_without_a_gpu(script, extra):
    run = lambda *a: subprocess.run([sys.executable, str(BENCH / script), *a], capture_output=True, text=True)  # noqa: E731
    helped = run("--help")
    assert helped.returncode == 0 and extra in helped.stdout and "--variants" in helped.stdout
    bad = run("--variants", "nope")
    assert bad.returncode == 1 and f"{script[:-3]}: unknown variants ['nope']" in bad.stderr


@pytest.mark.parametrize("has_triton", [True, False])
def test_timed_runs_cuda_under_each_variant_library(has_triton):
    """timed() calls impl="cuda" with each variant's library bound (and impl="triton" only where there is one);
    on CPU median_ms times with host clocks, so plain callables stand in for the ops."""
    from edgeports.kernels import impl_cuda

    seen = []

    def call(impl):
        seen.append((impl, impl_cuda._override[-1] if impl_cuda._override else None))
        return sum(range(1000))  # (a measurable time, so the triton cell is not 0)
    libs = {"default": "lib-a", "bm128": "lib-b"}
    tri, cells = _variants.timed(libs, call, has_triton)
    assert (tri == "-") is (not has_triton) and len(cells) == 2
    assert all(c.endswith("x)") is has_triton for c in cells)
    want = ([("triton", None)] if has_triton else []) + [("cuda", "lib-a"), ("cuda", "lib-b")]
    assert sorted(set(seen), key=seen.index) == want and not impl_cuda._override
