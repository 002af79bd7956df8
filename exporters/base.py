"""The exporter protocol and the Artifact every exporter writes.

An exporter module `exporters/<name>.py` declares

    NAME: str
    available() -> tuple[bool, str]                  (False, reason) when it cannot export here
    export(source: ModelSpec | LM, out_dir, options: ExportOptions) -> Artifact

and is found by iterating this package (edgeports.backends pairs it with runners/<name>.py).
An Artifact is a directory: its files plus `manifest.json` (spec, dtype, backend, options, state
layout, shape ranges, library versions, file hashes, created_at, export time). `stage()` builds it
in a temporary sibling directory and renames it into place only when complete, so a failed export
leaves nothing half-written; `read_artifact()` refuses a directory whose manifest is missing or
corrupt, whose backend differs, or whose files are missing or do not match their hashes.
Runner-only backends (hf) get an in-memory Artifact (`path=None`, no files) from `in_memory()`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from edgeports.errors import EdgeportsError
from edgeports.models import LM, ModelSpec, StateSlot, build, from_pretrained, get_spec, torch_dtype

MANIFEST = "manifest.json"
FORMAT = 1
CANONICAL_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
IN_MEMORY_WEIGHTS = "<in-memory LM>"  # options.weights of an export from an LM object
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def canonical_dtype(name: str | torch.dtype) -> str:
    """'bf16' / 'bfloat16' / torch.bfloat16 -> 'bfloat16' (the one spelling stored everywhere)."""
    return CANONICAL_DTYPES[torch_dtype(name)]


@dataclass(frozen=True)
class ExportOptions:
    """How to export. `extra` holds backend-specific knobs as sorted (key, value) pairs."""

    dtype: str = "bfloat16"
    seed: int = 0  # random weights come from build(spec, seed=seed) when weights is None
    weights: str | None = None  # a local HF checkpoint directory
    batch: int = 1
    max_len: int = 4096  # longest prompt + decode the artifact must hold (static-shape backends)
    device: str = "cpu"  # where to build / trace
    extra: tuple[tuple[str, Any], ...] = field(default=())

    def __post_init__(self):
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
        object.__setattr__(self, "extra", tuple(sorted(dict(self.extra).items())))

    def get(self, key: str, default: Any = None) -> Any:
        """A backend-specific knob from `extra`, unchecked."""
        return dict(self.extra).get(key, default)

    def choice(self, key: str, default: str, allowed: tuple[str, ...]) -> str:
        """extra[key] (default when absent), which must be one of `allowed`."""
        value = self.get(key, default)
        if value not in allowed:
            raise EdgeportsError(f"option {key} must be one of {', '.join(allowed)}, got {value!r} "
                                 f"(--opt {key}=VALUE)")
        return value

    def flag(self, key: str, default: bool) -> bool:
        """extra[key] as a bool: a bool or 0/1, or (as `--opt` gives it) a string such as true/false/yes/no/1/0."""
        value = self.get(key, default)
        if isinstance(value, bool):
            return value
        word = str(value).strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise EdgeportsError(f"option {key} must be true or false, got {value!r} (--opt {key}=VALUE)")

    def integer(self, key: str, default: int) -> int:
        """extra[key] as an int (an int, or a string of one, as `--opt` gives it)."""
        value = self.get(key, default)
        try:
            return int(value)
        except (TypeError, ValueError):
            raise EdgeportsError(f"option {key} must be an integer, got {value!r} (--opt {key}=VALUE)") from None

    def to_json(self) -> dict[str, Any]:
        """Manifest form."""
        return {"dtype": self.dtype, "seed": self.seed, "weights": self.weights, "batch": self.batch,
                "max_len": self.max_len, "device": self.device, "extra": dict(self.extra)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExportOptions:
        """Inverse of to_json."""
        return cls(**{**data, "extra": tuple(data.get("extra", {}).items())})

    def key(self) -> str:
        """A short stable hash of everything that changes the exported files."""
        return hashlib.sha1(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:10]


@dataclass(frozen=True)
class Artifact:
    """An exported model: a directory with manifest.json and files (path None: in memory, no files)."""

    path: Path | None
    backend: str
    spec: ModelSpec
    options: ExportOptions
    state_layout: tuple[dict[str, Any], ...] = ()
    shape_ranges: dict[str, Any] = field(default_factory=dict, hash=False)
    versions: dict[str, str | None] = field(default_factory=dict, hash=False)
    files: dict[str, str] = field(default_factory=dict, hash=False)  # relative name -> sha256
    created_at: str = ""
    export_s: float | None = None

    @property
    def dtype(self) -> str:
        """The canonical dtype name the artifact was exported in."""
        return self.options.dtype

    def file(self, name: str) -> Path:
        """Absolute path of one of the artifact's files."""
        if self.path is None or name not in self.files:
            raise EdgeportsError(f"artifact {self.path} has no file {name!r}")
        return self.path / name

    def to_json(self) -> dict[str, Any]:
        """The manifest."""
        return {"format": FORMAT, "backend": self.backend, "spec": self.spec.to_json(), "dtype": self.dtype,
                "options": self.options.to_json(), "state_layout": list(self.state_layout),
                "shape_ranges": self.shape_ranges, "versions": self.versions, "files": self.files,
                "created_at": self.created_at, "export_s": self.export_s}


def library_versions(*modules: str) -> dict[str, str | None]:
    """Versions of python, torch, edgeports and the named (already importable) modules."""
    import edgeports

    out = {"python": platform.python_version(), "torch": torch.__version__, "edgeports": edgeports.__version__}
    for name in modules:
        try:
            out[name] = __import__(name).__version__
        except Exception:  # not installed, or a broken install: record that it was not there
            out[name] = None
    return out


def sha256(path: Path) -> str:
    """Hex sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def layout_json(layout: tuple[StateSlot, ...]) -> tuple[dict[str, Any], ...]:
    """A State layout in manifest form."""
    return tuple(s.to_json() for s in layout)


def resolve_spec(source: ModelSpec | LM | str) -> ModelSpec:
    """The ModelSpec of whatever an exporter was handed."""
    if isinstance(source, LM):
        return source.spec
    return get_spec(source) if isinstance(source, str) else source


def lm_options(lm: LM, options: ExportOptions, **changes: Any) -> ExportOptions:
    """The options recorded for an export of an LM handed in: its weights are whatever it holds, so its own
    dtype (not the requested one) and IN_MEMORY_WEIGHTS instead of a checkpoint path; `changes` on top."""
    return replace(options, dtype=next(lm.parameters()).dtype, weights=IN_MEMORY_WEIGHTS, **changes)


def build_lm(spec: ModelSpec, options: ExportOptions, device: str | torch.device | None = None) -> LM:
    """The LM an export starts from: local weights when options.weights, else seeded random weights."""
    device = device or options.device
    if options.weights:
        return from_pretrained(options.weights, dtype=options.dtype, device=device)
    return build(spec, dtype=options.dtype, device=device, seed=options.seed)


@contextlib.contextmanager
def stage(out_dir: str | Path) -> Iterator[Path]:
    """A temporary directory beside out_dir that replaces out_dir only when the block succeeds."""
    out_dir = Path(out_dir)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    except OSError as e:
        raise EdgeportsError(f"cannot write an artifact at {out_dir}: {e.strerror or e}") from None
    try:
        yield tmp
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_manifest(staging: Path, final_dir: Path, *, backend: str, spec: ModelSpec, options: ExportOptions,
                   state_layout: tuple[dict[str, Any], ...] = (), shape_ranges: dict[str, Any] | None = None,
                   versions: dict[str, str | None] | None = None, export_s: float | None = None) -> Artifact:
    """Hash every file already in `staging`, write its manifest, and return the Artifact as it will
    be once `stage()` moves it to `final_dir`."""
    files = {p.relative_to(staging).as_posix(): sha256(p) for p in sorted(staging.rglob("*"))
             if p.is_file() and p.name != MANIFEST}
    art = Artifact(path=Path(final_dir), backend=backend, spec=spec, options=options, state_layout=state_layout,
                   shape_ranges=shape_ranges or {}, versions=versions or library_versions(), files=files,
                   created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), export_s=export_s)
    (staging / MANIFEST).write_text(json.dumps(art.to_json(), indent=1, sort_keys=True))
    return art


def in_memory(backend: str, spec: ModelSpec, options: ExportOptions) -> Artifact:
    """The Artifact of a runner-only backend: what to build, no files."""
    return Artifact(path=None, backend=backend, spec=spec, options=options, versions=library_versions(),
                    created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def read_artifact(path: str | Path, backend: str | None = None, verify: bool = True) -> Artifact:
    """Load and check an artifact directory; EdgeportsError when it is missing, corrupt or mismatched."""
    path = Path(path)
    manifest = path / MANIFEST
    if not manifest.is_file():
        raise EdgeportsError(f"{path} is not an artifact (no {MANIFEST}); export one with `edgeports export`")
    try:
        data = json.loads(manifest.read_text())
        if data.get("format") != FORMAT:
            raise EdgeportsError(f"artifact {path}: manifest format {data.get('format')!r}, expected {FORMAT}")
        art = Artifact(path=path, backend=data["backend"], spec=ModelSpec.from_json(data["spec"]),
                       options=ExportOptions.from_json(data["options"]),
                       state_layout=tuple(data.get("state_layout", ())), shape_ranges=data.get("shape_ranges", {}),
                       versions=data.get("versions", {}), files=dict(data["files"]),
                       created_at=data.get("created_at", ""), export_s=data.get("export_s"))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise EdgeportsError(f"artifact {path}: corrupt {MANIFEST} ({type(e).__name__}: {e})") from None
    if backend is not None and art.backend != backend:
        raise EdgeportsError(f"artifact {path} was exported for backend {art.backend!r}, not {backend!r}")
    if verify:
        verify_files(art)
    return art


def verify_files(art: Artifact) -> None:
    """Every file the manifest lists exists and matches its sha256."""
    for name, digest in art.files.items():
        f = art.path / name
        if not f.is_file():
            raise EdgeportsError(f"artifact {art.path}: file {name!r} is missing")
        if sha256(f) != digest:
            raise EdgeportsError(f"artifact {art.path}: file {name!r} does not match its hash (corrupt or modified)")
