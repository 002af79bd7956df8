"""ModelSpec: what a model is (name, family, arch, HF-style config), loaded from the zoo or a local dir."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from edgeports.errors import EdgeportsError

FAMILIES = ("transformer", "ssm", "hybrid")
DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class ModelSpec:
    """One model: its zoo name, family, arch and the HF-style config dict it is built from.

    `config` holds exactly the keys of the model's published `config.json` that matter for shape and
    behaviour (the same dict builds the transformers reference in parity tests). `source` says where
    the numbers come from; `published_params` is the size the publisher states (for sanity checks).
    """

    name: str
    family: str
    arch: str
    config: dict[str, Any] = field(hash=False, compare=False)
    dtype: str = "bfloat16"
    source: str = ""
    published_params: float | None = None

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise EdgeportsError(f"model {self.name!r}: family must be one of {FAMILIES}, got {self.family!r}")
        if self.dtype not in DTYPES:
            raise EdgeportsError(f"model {self.name!r}: dtype must be one of {DTYPES}, got {self.dtype!r}")

    @property
    def is_tiny(self) -> bool:
        """Tiny test configs are named tiny-*."""
        return self.name.startswith("tiny-")

    def to_json(self) -> dict[str, Any]:
        """The zoo JSON form (round-trips through `from_json`); written into artifact manifests."""
        out = {"name": self.name, "family": self.family, "arch": self.arch, "dtype": self.dtype,
               "_source": self.source, "config": dict(self.config)}
        if self.published_params is not None:
            out["published_params"] = self.published_params
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelSpec:
        """Parse a zoo entry or a manifest's spec block."""
        try:
            return cls(name=data["name"], family=data["family"], arch=data["arch"], config=dict(data["config"]),
                       dtype=data.get("dtype", "bfloat16"), source=data.get("_source", ""),
                       published_params=data.get("published_params"))
        except KeyError as e:
            raise EdgeportsError(f"model spec is missing the field {e.args[0]!r}") from None


def _zoo_dir():
    return resources.files("edgeports.models") / "zoo"


def zoo_names() -> list[str]:
    """Every model name in the zoo, real configs first then tiny-*, each group sorted."""
    names = [p.name[:-5] for p in _zoo_dir().iterdir() if p.name.endswith(".json")]
    return sorted(names, key=lambda n: (n.startswith("tiny-"), n))


def get_spec(name: str) -> ModelSpec:
    """A zoo model by name, or a local directory holding an HF `config.json` (+ optional weights)."""
    path = Path(name)
    if path.is_dir():
        from edgeports.models.weights import spec_from_hf_dir

        return spec_from_hf_dir(path)
    entry = _zoo_dir() / f"{name}.json"
    if not entry.is_file():
        close = [n for n in zoo_names() if name.lower() in n or n in name.lower()]
        hint = f" (did you mean {', '.join(close[:4])}?)" if close else " (`edgeports models` lists them)"
        raise EdgeportsError(f"unknown model {name!r}{hint}")
    return ModelSpec.from_json(json.loads(entry.read_text()))


def all_specs() -> list[ModelSpec]:
    """Every zoo spec."""
    return [get_spec(n) for n in zoo_names()]
