"""`edgeports report`: a Markdown table and log-log PNG plots from the results store.

The table has one line per (model, backend, length) with TTFT, TPOT, tokens/s and peak memory, and
ratio columns against a baseline backend measured in the same setting (same platform, device,
dtype, batch, prompt/decode lengths and prefill mode): ratio = this backend / baseline, so < 1 is
faster or smaller. Plots: TTFT, TPOT and peak memory against prompt length, one line per
(model, backend). matplotlib is imported only for the plots.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from edgeports.errors import EdgeportsError, missing_dependency
from edgeports.lens import format_len
from edgeports.measure.memory import format_bytes
from edgeports.measure.row import Row, backend_label

# the setting a ratio compares within (everything of the cell but the backend, plus the platform)
SETTING = ("platform_cpu", "platform_gpu", "device", "dtype", "batch", "decode_len", "prefill_mode", "mem_budget",
           "weights")
PLOTS = {"ttft": ("ttft_p50_ms", "TTFT p50 (ms)"), "tpot": ("tpot_p50_ms", "TPOT p50 (ms)"),
         "memory": (None, "peak memory (bytes)")}


def peak_memory(row: Row) -> int | None:
    """The peak a user would compare: torch allocator peak on CUDA, process RSS elsewhere."""
    return row.peak_allocated_bytes if row.peak_allocated_bytes is not None else row.rss_peak_bytes


def _setting(row: Row) -> tuple:
    return tuple(getattr(row, k) for k in SETTING)


def _ratio(x: float | None, base: float | None) -> str:
    return f"{x / base:.2f}x" if x is not None and base else "-"


def _num(x: float | None, fmt: str = "{:.1f}") -> str:
    return fmt.format(x) if x is not None else "-"


def markdown_table(rows: list[Row], baseline: str | None) -> str:
    """The Markdown report table (one section per setting)."""
    by_setting: dict[tuple, list[Row]] = defaultdict(list)
    for r in rows:
        by_setting[_setting(r)].append(r)
    out = []
    for setting, group in by_setting.items():
        s = dict(zip(SETTING, setting, strict=True))
        place = s["platform_gpu"] if s["device"].startswith("cuda") and s["platform_gpu"] else s["platform_cpu"]
        budget = f", budget {format_bytes(s['mem_budget'])}" if s["mem_budget"] else ""
        out.append(f"### {s['device']} ({place or 'unknown'}), {s['dtype']}, batch {s['batch']}, "
                   f"decode {s['decode_len']}, prefill {s['prefill_mode']}{budget}\n")
        base = {(r.model, r.prompt_len): r for r in group if backend_label(r) == baseline and r.status == "ok"}
        head = ["model", "backend", "prompt", "status", "TTFT p50 ms", "TPOT p50 ms", "prefill tok/s", "decode tok/s",
                "peak mem"]
        if baseline:
            head += [f"TTFT vs {baseline}", f"TPOT vs {baseline}", f"mem vs {baseline}"]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "|".join("---" for _ in head) + "|")
        for r in sorted(group, key=lambda r: (r.model, backend_label(r) != baseline, backend_label(r), r.prompt_len)):
            ok = r.status == "ok"
            status = r.status if ok or not r.reason else f"{r.status}: {r.reason[:60]}"
            cells = [r.model, backend_label(r), format_len(r.prompt_len), status.replace("|", "/"),
                     _num(r.ttft_p50_ms), _num(r.tpot_p50_ms, "{:.2f}"), _num(r.prefill_tok_s, "{:.0f}"),
                     _num(r.decode_tok_s, "{:.1f}"), format_bytes(peak_memory(r)) if ok else "-"]
            if baseline:
                b = base.get((r.model, r.prompt_len))
                cells += ([_ratio(r.ttft_p50_ms, b.ttft_p50_ms), _ratio(r.tpot_p50_ms, b.tpot_p50_ms),
                           _ratio(peak_memory(r), peak_memory(b))] if ok and b else ["-"] * 3)
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def plot(rows: list[Row], out_dir: Path) -> list[Path]:
    """log-log PNGs of TTFT, TPOT and peak memory vs prompt length; one line per (model, backend)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise missing_dependency("matplotlib", "report plots", "pip install 'edgeports[plots]', or pass --no-plots") from None
    written = []
    for name, (field, label) in PLOTS.items():
        series: dict[tuple, list[tuple[int, float]]] = defaultdict(list)
        for r in rows:
            y = peak_memory(r) if field is None else getattr(r, field)
            if r.status == "ok" and y:
                series[(r.model, backend_label(r), r.device, r.dtype, r.prefill_mode)].append((r.prompt_len, y))
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(8, 5))
        for (model, backend, _device, _dtype, mode), pts in sorted(series.items()):
            pts.sort()
            suffix = "" if mode == "full" else f" {mode}"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{model} {backend}{suffix}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("prompt length (tokens)")
        ax.set_ylabel(label)
        ax.set_title(f"{label} vs prompt length")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def write_report(rows: list[Row], out_dir: str | Path, baseline: str | None = "eager", plots: bool = True) -> Path:
    """Write report.md (+ PNG plots) into out_dir; returns the report path."""
    if not rows:
        raise EdgeportsError("no result rows to report (run `edgeports run` first)")
    labels = {backend_label(r) for r in rows}
    if baseline and baseline not in labels:
        raise EdgeportsError(f"baseline backend {baseline!r} has no rows (backends: {', '.join(sorted(labels))})")
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EdgeportsError(f"cannot write the report to {out_dir}: {e.strerror or e}") from None
    images = plot(rows, out_dir) if plots else []
    lines = ["# edgeports report", "",
             f"{len(rows)} rows; ratios are backend / {baseline} in the same setting (< 1 = faster or smaller)."
             if baseline else f"{len(rows)} rows.",
             "Peak memory: torch allocator peak on CUDA, process RSS on the CPU.", "",
             markdown_table(rows, baseline)]
    lines += [f"![{p.stem}]({p.name})" for p in images]
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report
