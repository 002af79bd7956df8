"""The `edgeports` command: models | backends | export | run | report | results | doctor.

Every EdgeportsError becomes one line on stderr and exit status 2 (`main()`); anything else is a
bug and keeps its traceback. The `run` options and their defaults come from SweepConfig.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from edgeports.errors import EdgeportsError
from edgeports.sweep import DEVICE_DEFAULTS, SweepConfig

DEFAULTS = SweepConfig()
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


SHORT_DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def _console():
    from rich.console import Console

    console = Console()
    # piped output defaults to 80 columns, which folds every table row into many lines
    return console if console.is_terminal else Console(width=160)


def _table(title: str | None, head: list[str], rows: list[list[str]]):
    from rich.table import Table

    t = Table(title=title)
    for h in head:
        t.add_column(h)
    for r in rows:
        t.add_row(*[("-" if v is None else str(v)) for v in r], )
    return t


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgeports")
def cli():
    """Export Transformer, SSM and hybrid LMs to several backends and sweep long-context latency,
    memory and energy identically across them."""


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def models(as_json):
    """List the model zoo with sizes, KV bytes per token and SSM state bytes."""
    from edgeports.measure.memory import format_bytes
    from edgeports.models import zoo_names
    from edgeports.models.info import info_table

    rows = info_table(zoo_names())
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    head = ["name", "family", "arch", "dtype", "params", "layers", "KV/token", "SSM state", "status"]
    body = [[r["name"], r["family"], r["arch"], r["dtype"], f"{r['params'] / 1e6:.1f}M" if r["params"] else None,
             r["layers"], format_bytes(r["kv_bytes_per_token"]) if r["kv_bytes_per_token"] is not None else None,
             format_bytes(r["ssm_state_bytes"]) if r["ssm_state_bytes"] is not None else None,
             r["status"] if r["status"] == "ok" else f"{r['status']}: {r['reason']}"] for r in rows]
    _console().print(_table("edgeports models", head, body))


def _backend_rows():
    from edgeports.backends import all_backends

    rows = []
    for b in all_backends().values():
        ok, reason = b.available()
        c = b.caps
        rows.append([b.name, "yes" if ok else "no", "yes" if b.needs_export else "no", ",".join(c.devices),
                     ",".join(SHORT_DTYPES.get(d, d) for d in c.dtypes), ",".join(c.prefill_modes), reason or ""])
    return ["backend", "available", "export step", "devices", "dtypes", "prefill", "reason"], rows


@cli.command()
def backends():
    """List the backends, whether each is available here, and why not."""
    head, rows = _backend_rows()
    _console().print(_table("edgeports backends", head, rows))


@cli.command()
def doctor():
    """Print the platform (GPU, driver, Jetson facts, library versions) and backend availability."""
    from edgeports.platform import describe

    console = _console()
    for label, value in describe():
        console.print(f"[bold]{label:>12}[/bold]  {value}", highlight=False)
    head, rows = _backend_rows()
    console.print(_table("backends", head, rows))


def _opt_option(what: str):
    """The repeatable --opt of export, run and maxctx (parsed and checked by edgeports.options)."""
    return click.option("--opt", "opts", multiple=True, metavar="[BACKEND.]KEY=VALUE",
                        help=f"Backend export option {what}, repeatable: e.g. mode=jit, fuse=false, onnx_opset=18, "
                        "onnx_chunked=false, trt_ssm=onnx-ops; BACKEND.KEY=VALUE gives it to that backend only. "
                        "A key the backend does not take is refused.")


@cli.command()
@click.argument("model_arg", metavar="[MODEL]", required=False)
@click.option("--model", "model", default=None, help="Zoo name or a local HF checkpoint directory (or give it as MODEL).")
@click.option("--backend", required=True, help="Backend with an export step (see `edgeports backends`).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Artifact directory "
              "[default: artifacts/<backend>/<model>-<dtype>].")
@click.option("--dtype", default=None, help="fp32, fp16 or bf16 [default: the model's].")
@click.option("--max-len", type=int, default=4096, show_default=True, help="Longest prompt + decode to hold.")
@click.option("--device", default="cpu", show_default=True, help="Where to build / trace.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random weights.")
@click.option("--weights", type=click.Path(exists=True, file_okay=False), default=None,
              help="Local HF checkpoint directory with the weights.")
@_opt_option("of the exported artifact")
def export(model_arg, model, backend, out, dtype, max_len, device, seed, weights, opts):
    """Export one model with one backend into an artifact directory: `edgeports export --backend trt mamba-2.8b`."""
    from edgeports.backends import get_backend
    from edgeports.exporters.base import ExportOptions, canonical_dtype
    from edgeports.models import get_spec
    from edgeports.options import options_for, parse_opts

    if model_arg and model and model_arg != model:
        raise EdgeportsError(f"two models given ({model_arg!r} and --model {model!r}): export takes one")
    model = model_arg or model
    if not model:
        raise EdgeportsError("name the model to export, e.g. `edgeports export --backend onnx tiny-llama`")
    spec = get_spec(model)
    b = get_backend(backend)
    ok, reason = b.available()
    if not ok:
        raise EdgeportsError(f"backend {backend!r} is not available here: {reason}")
    options = ExportOptions(dtype=canonical_dtype(dtype or spec.dtype), seed=seed, weights=weights,
                            max_len=max_len, device=device, extra=options_for(b, parse_opts(opts)))
    out = out or Path("artifacts") / backend / f"{spec.name}-{options.dtype}"
    art = b.export(spec, out, options)
    click.echo(f"exported {spec.name} ({options.dtype}) for {backend} to {art.path} in {art.export_s:.1f} s")


@cli.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--backend", default=None, help="Fail unless the artifact was exported for this backend.")
def inspect(artifact, backend):
    """Verify an artifact directory (manifest, file hashes) and summarise it."""
    from edgeports.exporters.base import read_artifact

    art = read_artifact(artifact, backend=backend)
    click.echo(f"{art.path}: {art.backend} artifact of {art.spec.name} ({art.spec.arch}, {art.dtype}), "
               f"max_len {art.options.max_len}, {len(art.files)} file(s) verified, created {art.created_at}")


def _sweep_options(f):
    """The `run` options, defaults taken from SweepConfig."""
    d = DEFAULTS
    cpu, gpu = DEVICE_DEFAULTS["cpu"], DEVICE_DEFAULTS["cuda"]
    opts = [
        click.option("--models", default=None, help="Comma list of zoo names or local HF dirs "
                     "[default: the smallest real model of each family]."),
        click.option("--backend", "backends", default=d.backends, show_default=True, help="'all' or a comma list."),
        click.option("--lens", default=None, help=f"Prompt lengths: 1k-64k, 1k,3k,57k, 8k-64k:+8k, 1k-64k:x4 "
                     f"[default: {cpu[0]} on cpu, {gpu[0]} on cuda]."),
        click.option("--device", default=d.device, show_default=True, help="cpu, cuda, cuda:<n> or auto."),
        click.option("--dtype", default=d.dtype, help="fp32, fp16 or bf16 [default: each model's]."),
        click.option("--batch", type=int, default=d.batch, show_default=True),
        click.option("--decode-len", type=int, default=None,
                     help=f"Decode steps per measurement [default: {cpu[1]} on cpu, {gpu[1]} on cuda]."),
        click.option("--prefill", "prefill_modes", default=",".join(d.prefill_modes), show_default=True,
                     help="Comma list of full and chunk:<n>."),
        click.option("--repeats", type=int, default=None, help=f"Timed repeats [default: {cpu[2]} on cpu, {gpu[2]} on cuda]."),
        click.option("--warmup", type=int, default=None,
                     help=f"Untimed full-length runs before each cell [default: {cpu[3]} on cpu, {gpu[3]} on cuda]."),
        click.option("--mem-budget", default=d.mem_budget, help="Memory cap per worker, e.g. 8GiB."),
        click.option("--timeout", "timeout_s", type=float, default=d.timeout_s, show_default=True,
                     help="Seconds per cell before its worker is killed."),
        click.option("--load-timeout", "load_timeout_s", type=float, default=d.load_timeout_s, show_default=True,
                     help="Seconds for exporting + loading one model/backend."),
        click.option("--seed", type=int, default=d.seed, show_default=True, help="Seed of the random weights."),
        click.option("--weights", type=click.Path(exists=True, file_okay=False), default=d.weights,
                     help="Local HF checkpoint directory (one model)."),
        click.option("--db", default=d.db, show_default=True, help="Results database (SQLite)."),
        click.option("--artifacts", default=d.artifacts, help="Artifact cache [default: <db dir>/artifacts]."),
        click.option("--force", is_flag=True, help="Measure again cells that already have results."),
        click.option("--no-progress", "progress", is_flag=True, flag_value=False, default=True),
        click.option("--profile", type=click.Choice(["ops"]), default=d.profile, help="ops: one profiled prefill "
                     "+ decode per cell, the operator breakdown stored in the ops table."),
        _opt_option("for every backend of the sweep, recorded in the rows' backend_options"),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


@cli.command()
@_sweep_options
def run(models, prefill_modes, opts, **kwargs):
    """Run a sweep: models x backends x lengths, resumable; rows go to the results database."""
    from edgeports import sweep

    config = SweepConfig(models=tuple(m.strip() for m in models.split(",") if m.strip()) if models else (),
                         prefill_modes=tuple(m.strip() for m in prefill_modes.split(",") if m.strip()),
                         options=opts, **kwargs)
    counts = sweep.run(config)
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "nothing new to measure"
    click.echo(f"{summary}; results in {config.db}")


@cli.command()
@click.option("--db", default=DEFAULTS.db, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("results/report"), show_default=True)
@click.option("--baseline", default="eager", show_default=True, help="Backend the ratio columns divide by "
              "('none' for no ratios).")
@click.option("--no-plots", is_flag=True, help="Markdown only (no matplotlib needed).")
@click.option("--study", is_flag=True, help="The study's comparisons instead: crossovers, memory at 57K, max "
              "context, scan share, roofline, energy (study.md + a self-contained study.html).")
@click.option("--pairs", default=None, help="--study: transformer:other[:other],... [default: each SSM/hybrid with "
              "the Transformer closest in size].")
@click.option("--length", default="57k", show_default=True, help="--study: the length memory is compared at.")
@click.option("--budget", default="24GiB", show_default=True, help="--study: the max-context budget shown.")
def report(db, out, baseline, no_plots, study, pairs, length, budget):
    """Write report.md and PNG plots (latency and memory vs length, operator breakdown) from the results
    database; with --study, the study's comparisons."""
    from edgeports.measure.profile import OPS_TABLE, OpRow
    from edgeports.report import write_report
    from edgeports.results import ResultStore

    if study:
        from edgeports.study import write_study

        md, page = write_study(db, out, pairs, length, budget, plots=not no_plots)
        click.echo(f"wrote {md} and {page}")
        return
    with ResultStore(db, create=False) as store:
        rows, ops = store.rows(), store.records(OPS_TABLE, OpRow)
    path = write_report(rows, out, baseline=None if baseline == "none" else baseline, plots=not no_plots)
    if ops:
        from edgeports.study import append_ops

        append_ops(path, rows, ops, plots=not no_plots)
    click.echo(f"wrote {path}")


@cli.command()
@click.option("--models", required=True, help="Comma list of zoo names or local HF dirs.")
@click.option("--backend", "backends", default="eager", show_default=True, help="Comma list of backends.")
@click.option("--mem-budget", "budgets", default="24GiB", show_default=True,
              help="Comma list of budgets: sizes (8GiB, 16GiB, 24GiB) or 'device' (the whole GPU).")
@click.option("--prefill", "prefill_modes", default="full", show_default=True, help="Comma list of full, chunk:<n>.")
@click.option("--decode", "decode_len", type=int, default=16, show_default=True,
              help="Decode steps that must fit after the prefill.")
@click.option("--device", default="auto", show_default=True)
@click.option("--dtype", default=None, help="fp32, fp16 or bf16 [default: each model's].")
@click.option("--start", default="4k", show_default=True, help="First length probed (doubling from there).")
@click.option("--max-len", default="256k", show_default=True, help="Search limit (reported as '>= limit').")
@click.option("--resolution", type=float, default=1 / 16, show_default=True,
              help="Stop when the gap between fit and failure is at most this fraction of the fit.")
@click.option("--no-confirm", "confirm", is_flag=True, flag_value=False, default=True,
              help="Do not re-measure the bounding failure in a fresh worker.")
@click.option("--timeout", "timeout_s", type=float, default=600.0, show_default=True, help="Seconds per probe.")
@click.option("--load-timeout", "load_timeout_s", type=float, default=1800.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--db", default=DEFAULTS.db, show_default=True)
@click.option("--artifacts", default=None, help="Artifact cache [default: <db dir>/artifacts].")
@click.option("--force", is_flag=True, help="Search again where a result is stored.")
@_opt_option("for every backend searched, recorded in the rows' backend_options")
def maxctx(models, backends, budgets, prefill_modes, decode_len, device, dtype, start, max_len, resolution, confirm,
           timeout_s, load_timeout_s, seed, db, artifacts, force, opts):
    """Bisect the longest context whose prefill + decode fits a memory budget, per model, backend, budget
    and prefill mode (isolated worker processes; rows in the maxctx table)."""
    from edgeports import maxctx as mc
    from edgeports.lens import format_len, parse_len
    from edgeports.measure.row import backend_label

    split = lambda text: tuple(x.strip() for x in text.split(",") if x.strip())  # noqa: E731
    config = mc.MaxCtxConfig(models=split(models), backends=backends, budgets=split(budgets),
                             prefill_modes=split(prefill_modes), decode_len=decode_len, device=device, dtype=dtype,
                             start=parse_len(start), max_len=parse_len(max_len), resolution=resolution,
                             confirm=confirm, timeout_s=timeout_s, load_timeout_s=load_timeout_s, seed=seed, db=db,
                             artifacts=artifacts, force=force, options=opts)

    def show(r):
        click.echo(f"{r.model} {backend_label(r)} {r.prefill_mode} @ {r.budget}: {mc.describe(r)}"
                   + (f" (projected {mc.approx_len(r.projected_ctx)})" if r.projected_ctx else "")
                   + (f" [{r.status}: {r.reason}]" if r.reason else "") + f" in {r.search_s:.0f} s")

    written = mc.run(config, on_row=show)
    rows = [r for r in mc.rows(db) if r.model in config.models]
    head = ["model", "backend", "prefill", "budget", "max context", "first failure", "projected", "status"]
    body = [[r.model, backend_label(r), r.prefill_mode, r.budget, mc.describe(r), format_len(r.fail_ctx) if r.fail_ctx else None,
             mc.approx_len(r.projected_ctx) if r.projected_ctx else None, r.status] for r in rows]
    _console().print(_table(f"edgeports maxctx ({len(written)} new)", head, body))


@cli.group()
def results():
    """Work with the results database."""


@results.command("export")
@click.option("--db", default=DEFAULTS.db, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet", "json"]), default="csv", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="[default: <db dir>/results.<format>]")
def results_export(db, fmt, out):
    """Export every row as CSV, Parquet or JSON."""
    from edgeports.results import ResultStore, export_rows

    with ResultStore(db, create=False) as store:
        rows = store.rows()
    path = export_rows(rows, out or Path(db).parent / f"results.{fmt}", fmt)
    click.echo(f"wrote {len(rows)} rows to {path}")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: EdgeportsError -> one line on stderr, exit 2; Ctrl-C -> exit 130."""
    try:
        cli.main(args=argv, prog_name="edgeports", standalone_mode=False)
    except EdgeportsError as e:
        click.echo(f"edgeports: error: {e}", err=True)
        sys.exit(EXIT_USER_ERROR)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo("edgeports: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)



if __name__ == "__main__":
    main()
