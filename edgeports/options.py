"""Backend options: the `--opt KEY=VALUE` of `edgeports export`, `run` and `maxctx`, parsed and checked here.

An option is `KEY=VALUE` (for every backend the command runs) or `BACKEND.KEY=VALUE` (for that backend only,
so a `--backend all` sweep can pass `--opt compile.mode=jit`). Each exporter module declares the keys it
reads as `OPTIONS = {key: checker}`, where checker(ExportOptions) reads and validates that key (raising
EdgeportsError for a bad value); a backend without an exporter, or whose exporter declares none, takes no
options. A key a backend does not declare is refused, never ignored: a typo must not measure the defaults
under a label that claims otherwise. The checked pairs become ExportOptions.extra (so the artifact cache
keys on them) and, as `canonical()`, the backend_options column of result rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from edgeports.errors import EdgeportsError

Opt = tuple[str | None, str, str]  # (backend it is scoped to or None, key, value)
Extra = tuple[tuple[str, str], ...]  # sorted (key, value) pairs: ExportOptions.extra


def parse_opts(texts: Iterable[str]) -> tuple[Opt, ...]:
    """`--opt` texts -> (scope, key, value) triples; EdgeportsError for one that is not [BACKEND.]KEY=VALUE.
    Whether the scope names a backend is checked by options_for()."""
    out = []
    for text in texts:
        name, sep, value = text.partition("=")
        scope, dot, key = name.strip().rpartition(".")
        if not sep or not key or (dot and not scope):
            raise EdgeportsError(f"--opt wants KEY=VALUE or BACKEND.KEY=VALUE (e.g. compile.mode=jit), got {text!r}")
        out.append((scope or None, key, value.strip()))
    return tuple(out)


def declared(backend) -> dict[str, Callable[[Any], Any]]:
    """The options a backend (edgeports.backends.Backend) takes: its exporter's OPTIONS, {} without one."""
    return dict(getattr(backend.exporter, "OPTIONS", {})) if backend.exporter is not None else {}


def check(backend, extra: Extra) -> Extra:
    """`extra` as ExportOptions.extra for `backend`, every key declared by it and every value accepted by
    its checker (EdgeportsError otherwise, naming the --opt to fix)."""
    from edgeports.backends import all_backends
    from edgeports.exporters.base import ExportOptions

    known = declared(backend)
    for key, value in extra:
        if key not in known:
            takes = f"its options: {', '.join(sorted(known))}" if known else "it takes none"
            others = [b.name for b in all_backends().values() if key in declared(b)]
            hint = f"; {others[0]} takes it: --opt {others[0]}.{key}={value}" if others else ""
            raise EdgeportsError(f"backend {backend.name!r} has no option {key!r} ({takes}){hint}")
    options = ExportOptions(extra=extra)
    for key, _ in extra:
        known[key](options)
    return options.extra


def options_for(backend, opts: tuple[Opt, ...]) -> Extra:
    """The checked (key, value) pairs of `opts` that apply to `backend`: the unscoped ones and those scoped to
    it. Every scope must name a known backend, and an option scoped to another backend is checked against
    that one too (a typo there fails even when that backend is not run). A key given twice is refused."""
    from edgeports.backends import all_backends

    backends = all_backends()
    mine: dict[str, str] = {}
    for scope, key, value in opts:
        if scope is not None and scope not in backends:
            raise EdgeportsError(f"--opt {scope}.{key}={value}: no backend {scope!r} (known: {', '.join(backends)})")
        if scope not in (None, backend.name):
            check(backends[scope], ((key, value),))
            continue
        if key in mine:
            raise EdgeportsError(f"--opt {key} given twice for backend {backend.name!r} ({mine[key]!r} and {value!r})")
        mine[key] = value
    return check(backend, tuple(mine.items()))


def canonical(extra: Extra) -> str:
    """The backend_options column: 'k=v,k=v' sorted by key, '' for none."""
    return ",".join(f"{k}={v}" for k, v in sorted(extra))
