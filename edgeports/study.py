"""`edgeports report --study`: the comparisons of arXiv 2507.12442, regenerated from a results database.

    crossover   TTFT and TPOT crossover length between a Transformer and an SSM (or hybrid) of similar
                size: where time(Transformer) / time(other) crosses 1, interpolated linearly in log L and
                log ratio between the two measured lengths around the sign change
    memory      peak memory at 57K tokens (measured, or interpolated log-log between the lengths around it)
                and the other model's saving against its Transformer
    max context the `edgeports maxctx` rows at 24 GiB, full and chunked prefill, with their projections
    scan share  the ssm_scan category's share of profiled prefill and decode time (`run --profile ops`)
    roofline    achieved FLOP/s and bytes/s against the run's measured and the vendor's declared peaks
    energy      joules per prefill and per decoded token where a counter exists

Pairs are given (`qwen2.5-0.5b:mamba2-780m,llama-3.2-1b:mamba2-1.3b:falcon-h1-1.5b`: the first model of each
group is the Transformer) or, by default, each SSM and hybrid goes with the Transformer closest in
parameter count (log scale). Only rows measured in the same setting (platform, device, dtype, batch,
decode length, prefill mode, budget, backend) are compared. Output: study.md with PNG files beside it, and
study.html, one self-contained page with the same tables and the plots embedded.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeports.errors import EdgeportsError, missing_dependency
from edgeports.lens import format_len, parse_len
from edgeports.maxctx import approx_len
from edgeports.measure.memory import format_bytes, parse_bytes
from edgeports.measure.ops import CATEGORIES
from edgeports.measure.roofline import declared_peaks
from edgeports.measure.row import Row, backend_label
from edgeports.report import peak_memory

STUDY_LEN = "57k"
STUDY_BUDGET = "24GiB"
SETTING = ("platform_gpu", "platform_cpu", "device", "dtype", "batch", "decode_len", "prefill_mode", "mem_budget",
           "backend")
COLORS = {"gemm": "#4e79a7", "attention": "#f28e2b", "ssm_scan": "#e15759", "conv": "#76b7b2", "norm": "#59a14f",
          "elementwise": "#edc948", "memory": "#b07aa1", "embedding": "#ff9da7", "other": "#9c755f"}


# ---------------------------------------------------------------------------------------------- analysis

@dataclass(frozen=True)
class Pair:
    """A Transformer and the SSM or hybrid it is compared with."""

    transformer: str
    other: str


def parse_pairs(text: str) -> list[Pair]:
    """'t1:s1:s2,t2:s3' -> [(t1, s1), (t1, s2), (t2, s3)]."""
    pairs = []
    for group in (g.strip() for g in text.split(",") if g.strip()):
        names = [n.strip() for n in group.split(":") if n.strip()]
        if len(names) < 2:
            raise EdgeportsError(f"bad --pairs group {group!r} (use transformer:other[:other...])")
        pairs += [Pair(names[0], n) for n in names[1:]]
    return pairs


def auto_pairs(models: dict[str, str], params: dict[str, float]) -> list[Pair]:
    """Each non-transformer model with the transformer closest in parameter count (log ratio)."""
    transformers = [m for m, fam in models.items() if fam == "transformer" and params.get(m)]
    pairs = []
    for m, fam in sorted(models.items()):
        if fam != "transformer" and params.get(m) and transformers:
            best = min(transformers, key=lambda t: (abs(math.log(params[t] / params[m])), t))
            pairs.append(Pair(best, m))
    return pairs


@dataclass(frozen=True)
class Crossover:
    """Where time(a) / time(b) crosses 1 over the common lengths (ratio > 1: b is faster)."""

    length: float | None  # interpolated crossover, None when there is none in range
    lens: tuple[int, ...]
    ratios: tuple[float, ...]

    def describe(self, a: str, b: str) -> str:
        """One phrase for the table."""
        if not self.lens:
            return "no common lengths"
        if self.length is not None:
            return f"{approx_len(self.length)}"
        lo, hi = format_len(self.lens[0]), format_len(self.lens[-1])
        return f"none: {b} faster from {lo}" if self.ratios[0] > 1 else f"none: {a} faster up to {hi}"


def crossover(a: dict[int, float], b: dict[int, float]) -> Crossover:
    """Crossover of time(a)/time(b) over the lengths both have, first sign change of log ratio."""
    lens = tuple(sorted(set(a) & set(b)))
    ratios = tuple(a[n] / b[n] for n in lens)
    for i in range(len(lens) - 1):
        r0, r1 = math.log(ratios[i]), math.log(ratios[i + 1])
        if r0 == 0 or r1 == 0:  # equal at a measured length
            return Crossover(float(lens[i] if r0 == 0 else lens[i + 1]), lens, ratios)
        if (r0 < 0) != (r1 < 0):
            x0, x1 = math.log(lens[i]), math.log(lens[i + 1])
            return Crossover(math.exp(x0 + (0 - r0) * (x1 - x0) / (r1 - r0)), lens, ratios)
    return Crossover(None, lens, ratios)


def at_length(points: dict[int, float], n: int) -> tuple[float | None, bool]:
    """(value at n, interpolated?): exact if measured, else log-log between the neighbours around n."""
    if n in points:
        return points[n], False
    below, above = [x for x in points if x < n], [x for x in points if x > n]
    if not below or not above:
        return None, False
    x0, x1 = max(below), min(above)
    y0, y1 = points[x0], points[x1]
    if y0 <= 0 or y1 <= 0:
        return None, False
    t = (math.log(n) - math.log(x0)) / (math.log(x1) - math.log(x0))
    return math.exp(math.log(y0) + t * (math.log(y1) - math.log(y0))), True


def _setting(r: Row) -> tuple:
    # a backend run with --opt settings is a setting of its own (compile[mode=jit] is not compile)
    return tuple(backend_label(r) if k == "backend" else getattr(r, k) for k in SETTING)


def _setting_label(s: tuple) -> str:
    d = dict(zip(SETTING, s, strict=True))
    place = d["platform_gpu"] if str(d["device"]).startswith("cuda") and d["platform_gpu"] else d["platform_cpu"]
    budget = f", budget {format_bytes(d['mem_budget'])}" if d["mem_budget"] else ""
    return (f"{d['backend']} on {d['device']} ({place or 'unknown'}), {d['dtype']}, decode {d['decode_len']}, "
            f"prefill {d['prefill_mode']}{budget}")


def _series(rows: list[Row], field_or_fn) -> dict[tuple, dict[str, dict[int, float]]]:
    """{setting: {model: {length: value}}} over ok rows with a value."""
    out: dict[tuple, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        v = field_or_fn(r) if callable(field_or_fn) else getattr(r, field_or_fn)
        if r.status == "ok" and v:
            out[_setting(r)][r.model][r.prompt_len] = float(v)
    return out


# ---------------------------------------------------------------------------------------------- document

@dataclass
class Doc:
    """Headings, paragraphs, tables and images; rendered as Markdown (+ PNG files) or one HTML page."""

    title: str
    blocks: list[tuple] = field(default_factory=list)

    def h(self, text: str) -> None:
        self.blocks.append(("h", text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, head: list[str], rows: list[list[Any]]) -> None:
        self.blocks.append(("table", head, [["-" if v is None else str(v) for v in r] for r in rows]))

    def image(self, name: str, png: bytes, caption: str) -> None:
        self.blocks.append(("img", name, png, caption))

    def markdown(self, out_dir: Path) -> str:
        """The Markdown text; images are written into out_dir."""
        lines = [f"# {self.title}", ""]
        for b in self.blocks:
            if b[0] == "h":
                lines += [f"## {b[1]}", ""]
            elif b[0] == "p":
                lines += [b[1], ""]
            elif b[0] == "table":
                lines += ["| " + " | ".join(b[1]) + " |", "|" + "|".join("---" for _ in b[1]) + "|"]
                lines += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in b[2]] + [""]
            else:
                (out_dir / b[1]).write_bytes(b[2])
                lines += [f"![{b[3]}]({b[1]})", ""]
        return "\n".join(lines)

    def html(self) -> str:
        """One self-contained page (images inlined as base64 PNG)."""
        e = html.escape
        parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(self.title)}</title><style>"
                 "body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
                 "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
                 "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}"
                 "td:first-child,th:first-child{text-align:left}img{max-width:100%}</style></head><body>",
                 f"<h1>{e(self.title)}</h1>"]
        for b in self.blocks:
            if b[0] == "h":
                parts.append(f"<h2>{e(b[1])}</h2>")
            elif b[0] == "p":
                parts.append(f"<p>{e(b[1])}</p>")
            elif b[0] == "table":
                head = "".join(f"<th>{e(c)}</th>" for c in b[1])
                body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in b[2])
                parts.append(f"<table><tr>{head}</tr>{body}</table>")
            else:
                data = base64.b64encode(b[2]).decode()
                parts.append(f"<figure><img alt='{e(b[3])}' src='data:image/png;base64,{data}'>"
                             f"<figcaption>{e(b[3])}</figcaption></figure>")
        return "\n".join(parts + ["</body></html>"])


# ---------------------------------------------------------------------------------------------- sections

def _pairs_for(rows: list[Row], pairs: list[Pair] | None) -> list[Pair]:
    if pairs is not None:
        return pairs
    from edgeports.models.info import model_info

    families = {r.model: r.family for r in rows}
    params = {}
    for m in families:
        try:
            params[m] = model_info(m).params
        except EdgeportsError:
            continue
    return auto_pairs(families, params)


def crossover_section(doc: Doc, rows: list[Row], pairs: list[Pair]) -> None:
    """TTFT and TPOT crossovers per pair and setting."""
    doc.h("Crossover: Transformer vs SSM / hybrid")
    doc.p("ratio = Transformer time / other time (> 1: the other model is faster); the crossover is interpolated "
          "in log length and log ratio between the two measured lengths around the sign change.")
    ttft, tpot = _series(rows, "ttft_p50_ms"), _series(rows, "tpot_p50_ms")
    body = []
    for s in sorted(ttft, key=str):
        for pair in pairs:
            a, b = ttft[s].get(pair.transformer), ttft[s].get(pair.other)
            if not a or not b:
                continue
            c = crossover(a, b)
            d = crossover(tpot.get(s, {}).get(pair.transformer, {}), tpot.get(s, {}).get(pair.other, {}))
            body.append([_setting_label(s), pair.transformer, pair.other, c.describe(pair.transformer, pair.other),
                         _ratio(c, 0), _ratio(c, -1), d.describe(pair.transformer, pair.other), _ratio(d, 0),
                         _ratio(d, -1)])
    if not body:
        doc.p("No pair has TTFT rows in a common setting.")
        return
    doc.table(["setting", "Transformer", "other", "TTFT crossover", "TTFT ratio (shortest)", "TTFT ratio (longest)",
               "TPOT crossover", "TPOT ratio (shortest)", "TPOT ratio (longest)"], body)


def _ratio(c: Crossover, i: int) -> str | None:
    return f"{c.ratios[i]:.2f}x @ {format_len(c.lens[i])}" if c.lens else None


def memory_section(doc: Doc, rows: list[Row], pairs: list[Pair], length: int) -> None:
    """Peak memory per model at `length`, and each pair's saving."""
    doc.h(f"Memory at {format_len(length)} tokens")
    doc.p("Peak memory: torch allocator peak on CUDA, process RSS on the CPU; 'interp.' = log-log between the "
          "measured lengths around it. Saving = 1 - other / Transformer.")
    peaks = _series(rows, peak_memory)
    by_cell = {(_setting(r), r.model, r.prompt_len): r for r in rows if r.status == "ok"}
    body = []
    for s in sorted(peaks, key=str):
        for model in sorted(peaks[s]):
            v, interp = at_length(peaks[s][model], length)
            if v is None:
                continue
            r = by_cell.get((s, model, length))
            savings = [f"{1 - v / t:.0%} vs {p.transformer}" for p in pairs if p.other == model
                       for t in [at_length(peaks[s].get(p.transformer, {}), length)[0]] if t]
            body.append([_setting_label(s), model, format_bytes(v) + (" (interp.)" if interp else ""),
                         format_bytes(r.weight_bytes) if r else None, format_bytes(r.state_bytes) if r else None,
                         format_bytes(r.activation_bytes) if r and r.activation_bytes is not None else None,
                         "; ".join(savings) or None])
    if not body:
        doc.p(f"No model has peak-memory rows around {format_len(length)}.")
        return
    doc.table(["setting", "model", "peak", "weights", "state", "activations", "saving"], body)


def maxctx_section(doc: Doc, mrows: list, budget: str) -> None:
    """The max-context searches at one budget (or every budget when none matches)."""
    from edgeports.maxctx import describe

    want = None if budget == "device" else parse_bytes(budget)
    chosen = [r for r in mrows if (r.mem_budget == want if want else r.mem_budget is None)]
    doc.h(f"Max context at {budget}")
    if not chosen:
        doc.p(f"No `edgeports maxctx` rows at {budget}" + (" (other budgets below)." if mrows else "."))
        chosen = mrows
    if not chosen:
        return
    doc.p("Bisected longest prompt whose prefill + decode fits the budget (the search limit shows as '>= limit'); "
          "projected: where the allocator peak's line over the fitting probes meets the budget.")
    body = [[r.model, r.family, backend_label(r), r.prefill_mode, r.budget, describe(r),
             format_len(r.fail_ctx) if r.fail_ctx else None, approx_len(r.projected_ctx) if r.projected_ctx else None,
             r.projection, r.status + (f": {r.reason}" if r.reason else ""), f"{r.search_s:.0f} s"]
            for r in sorted(chosen, key=lambda r: (r.model, backend_label(r), r.prefill_mode, r.budget))]
    doc.table(["model", "family", "backend", "prefill", "budget", "max context", "first failure", "projected",
               "projection", "status", "search"], body)


def scan_section(doc: Doc, rows: list[Row], ops: list) -> None:
    """ssm_scan (and attention, gemm) shares of profiled prefill and decode time."""
    doc.h("Operator breakdown: the scan kernels' share")
    if not ops:
        doc.p("No operator profiles in this database (run `edgeports run --profile ops`).")
        return
    by_key = {r.cell_key: r for r in rows}
    table: dict[tuple, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    source: dict[tuple, str] = {}
    for o in ops:
        r = by_key.get(o.cell_key)
        if r is None:
            continue
        k = (r.model, r.family, backend_label(r), r.device, r.prefill_mode, r.prompt_len)
        table[k][o.phase][o.category] = o.share
        table[k][o.phase]["_total"] = table[k][o.phase].get("_total", 0.0) + o.time_ms
        source[k] = o.source
    body = []
    for k in sorted(table):
        pre, dec = table[k].get("prefill", {}), table[k].get("decode", {})
        body.append([k[0], k[1], k[2], k[4], format_len(k[5]), _pct(pre.get("ssm_scan")), _pct(dec.get("ssm_scan")),
                     _pct(pre.get("attention")), _pct(pre.get("gemm")), f"{pre.get('_total', 0):.1f}",
                     f"{dec.get('_total', 0):.2f}" if dec else None, source[k]])
    doc.table(["model", "family", "backend", "prefill mode", "prompt", "scan % prefill", "scan % decode",
               "attention % prefill", "gemm % prefill", "profiled prefill ms", "profiled decode ms/token", "source"],
              body)


def _pct(x: float | None) -> str | None:
    return f"{x:.0%}" if x is not None else None


def roofline_section(doc: Doc, rows: list[Row]) -> None:
    """Achieved FLOP/s and bytes/s against measured and declared peaks."""
    doc.h("Roofline")
    ok = [r for r in rows if r.status == "ok" and r.prefill_flop_s]
    if not ok:
        doc.p("No roofline fields in these rows.")
        return
    declared = {r.platform_gpu: declared_peaks(r.platform_gpu) for r in ok}
    notes = sorted({f"{r.peak_source}: {_si(r.peak_flop_s, 'FLOP/s')}, {_si(r.peak_bytes_s, 'B/s')}"
                    for r in ok if r.peak_flop_s})
    notes += sorted({f"declared {d.name}: {_si(d.flop_s, 'FLOP/s')}, {_si(d.bytes_s, 'B/s')} ({d.source})"
                     for d in declared.values() if d})
    doc.p("Analytic work (edgeports.measure.roofline) over the p50 time; bytes are compulsory traffic (a lower "
          "bound). Peaks: " + "; ".join(notes))
    body = []
    for r in sorted(ok, key=lambda r: (r.model, backend_label(r), r.prefill_mode, r.prompt_len)):
        d = declared.get(r.platform_gpu) if r.device.startswith("cuda") else None
        body.append([r.model, backend_label(r), r.prefill_mode, format_len(r.prompt_len), _si(r.prefill_flop_s, "FLOP/s"),
                     _frac(r.prefill_flop_s, r.peak_flop_s), _frac(r.prefill_flop_s, d.flop_s if d else None),
                     _si(r.decode_bytes_s, "B/s"),
                     _frac(r.decode_bytes_s, r.peak_bytes_s), _frac(r.decode_bytes_s, d.bytes_s if d else None)])
    doc.table(["model", "backend", "prefill", "prompt", "prefill FLOP/s", "of measured peak", "of declared",
               "decode bytes/s", "of measured peak", "of declared"], body)


def _si(x: float | None, unit: str) -> str | None:
    """1.5e12 -> '1.50 T<unit>' (T, G, M, k)."""
    if x is None:
        return None
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {prefix}{unit}"
    return f"{x:.2f} {unit}"


def _frac(x: float | None, peak: float | None) -> str | None:
    return f"{x / peak:.0%}" if x and peak else None


def energy_section(doc: Doc, rows: list[Row]) -> None:
    """Joules per prefill and per token."""
    doc.h("Energy")
    ok = [r for r in rows if r.status == "ok" and r.energy_prefill_j is not None]
    if not ok:
        reasons = sorted({r.energy_reason for r in rows if r.status == "ok" and r.energy_reason})
        doc.p("No energy readings" + (f": {'; '.join(reasons)}." if reasons else "."))
        return
    body = [[r.model, backend_label(r), r.prefill_mode, format_len(r.prompt_len), f"{r.energy_prefill_j:.3f}",
             f"{r.energy_per_token_j:.4f}" if r.energy_per_token_j is not None else None, r.energy_method]
            for r in sorted(ok, key=lambda r: (r.model, backend_label(r), r.prefill_mode, r.prompt_len))]
    doc.table(["model", "backend", "prefill", "prompt", "J / prefill", "J / token", "method"], body)


# ---------------------------------------------------------------------------------------------- plots

def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise missing_dependency("matplotlib", "study plots", "pip install 'edgeports[plots]', or pass --no-plots") \
            from None
    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    _plt().close(fig)
    return buf.getvalue()


def line_plots(doc: Doc, rows: list[Row], pairs: list[Pair]) -> None:
    """TTFT, TPOT and peak memory vs length for the paired models, one line per (model, setting)."""
    plt = _plt()
    models = {m for p in pairs for m in (p.transformer, p.other)} or {r.model for r in rows}
    for name, field_or_fn, label in (("ttft", "ttft_p50_ms", "TTFT p50 (ms)"), ("tpot", "tpot_p50_ms", "TPOT p50 (ms)"),
                                     ("memory", peak_memory, "peak memory (bytes)")):
        series = _series([r for r in rows if r.model in models], field_or_fn)
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(8, 5))
        for s, by_model in sorted(series.items(), key=str):
            d = dict(zip(SETTING, s, strict=True))
            for model, pts in sorted(by_model.items()):
                xs = sorted(pts)
                ax.plot(xs, [pts[x] for x in xs], marker="o",
                        label=f"{model} {d['backend']}" + ("" if d["prefill_mode"] == "full" else f" {d['prefill_mode']}"))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("prompt length (tokens)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        doc.image(f"study_{name}.png", _png(fig), f"{label} vs prompt length")


def ops_plots(doc: Doc, rows: list[Row], ops: list) -> None:
    """Stacked shares per category, one bar per model x length x backend, for prefill and for decode."""
    plt = _plt()
    by_key = {r.cell_key: r for r in rows}
    for phase in ("prefill", "decode"):
        bars: dict[tuple, dict[str, float]] = defaultdict(dict)
        for o in ops:
            r = by_key.get(o.cell_key)
            if r is not None and o.phase == phase:
                bars[(r.model, r.prompt_len, backend_label(r), r.prefill_mode)][o.category] = o.share
        if not bars:
            continue
        keys = sorted(bars)
        fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(keys) + 2), 5))
        bottom = [0.0] * len(keys)
        for cat in CATEGORIES:
            vals = [bars[k].get(cat, 0.0) for k in keys]
            if any(vals):
                ax.bar(range(len(keys)), vals, bottom=bottom, color=COLORS[cat], label=cat)
                bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels([f"{m} {format_len(n)} {b}" + ("" if p == "full" else f" {p}") for m, n, b, p in keys],
                           rotation=60, ha="right", fontsize=7)
        ax.set_ylabel(f"share of profiled {phase} time")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
        doc.image(f"study_ops_{phase}.png", _png(fig), f"operator breakdown of {phase} (model x length x backend)")


# ---------------------------------------------------------------------------------------------- entry

def build(rows: list[Row], ops: list, mrows: list, pairs: list[Pair] | None = None, length: str = STUDY_LEN,
          budget: str = STUDY_BUDGET, plots: bool = True) -> Doc:
    """The study document from rows (rows table), ops (OpRow) and maxctx rows (MaxCtxRow)."""
    if not rows and not mrows:
        raise EdgeportsError("no result rows to report (run `edgeports run` / `edgeports maxctx` first)")
    n = parse_len(length)
    pairs = _pairs_for(rows, pairs)
    doc = Doc("edgeports study: SSM vs Transformer characterization")
    doc.p(f"{len(rows)} measurement rows, {len(ops)} operator rows, {len(mrows)} max-context rows. Pairs: "
          + (", ".join(f"{p.transformer} vs {p.other}" for p in pairs) or "none (no Transformer with a comparable model)")
          + ".")
    crossover_section(doc, rows, pairs)
    memory_section(doc, rows, pairs, n)
    maxctx_section(doc, mrows, budget)
    scan_section(doc, rows, ops)
    roofline_section(doc, rows)
    energy_section(doc, rows)
    if plots and rows:
        doc.h("Plots")
        line_plots(doc, rows, pairs)
        if ops:
            ops_plots(doc, rows, ops)
    return doc


def write_study(db: str, out_dir: str | Path, pairs: str | None = None, length: str = STUDY_LEN,
                budget: str = STUDY_BUDGET, plots: bool = True) -> tuple[Path, Path]:
    """Write study.md (+ PNGs) and study.html into out_dir from the results database at db."""
    from edgeports.maxctx import MAXCTX_TABLE, MaxCtxRow
    from edgeports.measure.profile import OPS_TABLE, OpRow
    from edgeports.results import ResultStore

    with ResultStore(db, create=False) as store:
        rows, ops, mrows = store.rows(), store.records(OPS_TABLE, OpRow), store.records(MAXCTX_TABLE, MaxCtxRow)
    doc = build(rows, ops, mrows, parse_pairs(pairs) if pairs else None, length, budget, plots)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        md, page = out / "study.md", out / "study.html"
        md.write_text(doc.markdown(out) + "\n")
        page.write_text(doc.html())
    except OSError as e:
        raise EdgeportsError(f"cannot write the study to {out}: {e.strerror or e}") from None
    return md, page



def append_ops(report: Path, rows: list[Row], ops: list, plots: bool = True) -> None:
    """Add the operator-breakdown table (and stacked bars) to a plain `edgeports report`."""
    doc = Doc("")
    scan_section(doc, rows, ops)
    if plots:
        ops_plots(doc, rows, ops)
    text = doc.markdown(report.parent).split("\n", 2)[2]  # without the (empty) title
    with open(report, "a") as f:
        f.write("\n" + text + "\n")
