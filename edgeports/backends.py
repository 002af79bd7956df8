"""Backend discovery: every module of edgeports.exporters and edgeports.runners that declares NAME.

A backend is the pair (exporters/<name>.py, runners/<name>.py); either may be absent (hf has no
exporter; it runs from an in-memory Artifact). Nothing keeps a list: adding a backend is adding
its modules. Importing a backend module must stay cheap and never fail for a missing optional
dependency (those are imported lazily and reported by `available()`).
"""

from __future__ import annotations

import importlib
import pkgutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType

from edgeports.errors import EdgeportsError
from edgeports.exporters.base import Artifact, ExportOptions, in_memory, read_artifact
from edgeports.models import ModelSpec
from edgeports.runners.base import Capabilities, Runner

BASE_MODULES = ("base",)
ORDER = ("eager", "compile", "onnx", "trt", "hf")  # display order only; unknown names sort after


def _modules(package: str) -> dict[str, ModuleType]:
    pkg = importlib.import_module(package)
    out = {}
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name in BASE_MODULES or info.name.startswith("_") or info.ispkg:
            continue
        mod = importlib.import_module(f"{package}.{info.name}")
        if hasattr(mod, "NAME"):
            out[mod.NAME] = mod
    return out


@dataclass(frozen=True)
class Backend:
    """One backend: its exporter and/or runner module."""

    name: str
    exporter: ModuleType | None
    runner: ModuleType | None

    @property
    def needs_export(self) -> bool:
        """True when an export step produces files the runner loads."""
        return self.exporter is not None

    @property
    def caps(self) -> Capabilities:
        """What the runner supports (a backend without a runner can only export)."""
        return getattr(self.runner, "CAPS", Capabilities()) if self.runner else Capabilities()

    def available(self) -> tuple[bool, str]:
        """(True, "") or (False, reason), asking both modules."""
        for mod in (self.exporter, self.runner):
            if mod is None:
                continue
            ok, reason = mod.available()
            if not ok:
                return False, reason
        if self.runner is None:
            return False, "export only (no runner)"
        return True, ""

    def export(self, spec: ModelSpec, out_dir: str | Path, options: ExportOptions) -> Artifact:
        """Export with this backend's exporter (EdgeportsError for runner-only backends)."""
        if self.exporter is None:
            raise EdgeportsError(f"backend {self.name!r} has no export step (it runs from the model spec)")
        return self.exporter.export(spec, Path(out_dir), options)

    def prepare(self, spec: ModelSpec, options: ExportOptions, root: str | Path) -> tuple[Artifact, bool]:
        """The artifact to load for (spec, options): a valid cached export under `root` when there is
        one, else a fresh export there; an in-memory one for runner-only backends.
        Returns (artifact, reused)."""
        if self.exporter is None:
            return in_memory(self.name, spec, options), False
        out_dir = Path(root) / self.name / f"{spec.name}-{options.dtype}-{options.key()}"
        if (out_dir / "manifest.json").is_file():
            try:
                return read_artifact(out_dir, backend=self.name), True
            except EdgeportsError:
                pass  # stale or corrupt cache entry: export again over it
        t0 = time.perf_counter()
        art = self.export(spec, out_dir, options)
        return (art if art.export_s is not None else replace(art, export_s=time.perf_counter() - t0)), False

    def load(self, artifact: Artifact, device: str) -> Runner:
        """Load a runner for the artifact on device."""
        if self.runner is None:
            raise EdgeportsError(f"backend {self.name!r} has no runner")
        if artifact.backend != self.name:
            raise EdgeportsError(f"artifact {artifact.path} is for backend {artifact.backend!r}, not {self.name!r}")
        return self.runner.load(artifact, device)


def all_backends() -> dict[str, Backend]:
    """Every backend found in the exporters and runners packages, in display order."""
    exporters, runners = _modules("edgeports.exporters"), _modules("edgeports.runners")
    names = sorted(set(exporters) | set(runners), key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))
    return {n: Backend(n, exporters.get(n), runners.get(n)) for n in names}


def get_backend(name: str) -> Backend:
    """One backend by name; EdgeportsError listing the known ones otherwise."""
    backends = all_backends()
    if name not in backends:
        raise EdgeportsError(f"unknown backend {name!r} (known: {', '.join(backends)})")
    return backends[name]


def select(spec: str) -> tuple[list[Backend], list[tuple[str, str]]]:
    """'all' or 'eager,hf' -> (backends to run, [(name, reason)] left out as unavailable).

    Named backends that are unavailable are an error; `all` skips them and says why."""
    backends = all_backends()
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise EdgeportsError("empty --backend (use all or a list such as eager,hf)")
    if names == ["all"]:
        chosen, skipped = [], []
        for b in backends.values():
            ok, reason = b.available()
            (chosen.append(b) if ok else skipped.append((b.name, reason)))
        return chosen, skipped
    chosen = []
    for n in dict.fromkeys(names):
        b = get_backend(n)
        ok, reason = b.available()
        if not ok:
            raise EdgeportsError(f"backend {n!r} is not available here: {reason}")
        chosen.append(b)
    return chosen, []
