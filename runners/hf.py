"""hf runner: the stock transformers model for the same spec, the peer users compare against.

Runner-only (no export step): it builds `AutoModelForCausalLM.from_config` from the spec's HF
config holding the eager backend's seeded random weights (mapped by name), or `from_pretrained`
from `--weights DIR` (local files only),
and asks for the last position's logits only (`logits_to_keep=1`). Attention runs through SDPA
(transformers' default where the model supports it).
transformers picks the mamba-ssm / causal-conv1d kernels by itself when they are importable; on
the CPU this runner swaps them for transformers' torch fallbacks, so no CPU tensor reaches a CUDA
kernel. Hub kernels are disabled (USE_HUB_KERNELS=0): nothing is downloaded at run time.
"""

from __future__ import annotations

import inspect
import os
import sys
from typing import Any

import torch

from edgeports.errors import EdgeportsError, missing_dependency
from edgeports.exporters.base import Artifact
from edgeports.models import LM, ModelSpec, arch_module, build, torch_dtype
from edgeports.runners.base import Capabilities, StepRunner, Unsupported, module_weight_bytes

NAME = "hf"
CAPS = Capabilities()
# archs whose transformers implementation cannot continue a multi-token call from a previous state
NO_CHUNKED_PREFILL = {"mamba": "transformers' Mamba restarts the SSM scan from zero on every multi-token call"}


def available() -> tuple[bool, str]:
    """Needs transformers."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False, "transformers not importable (pip install 'edgeports[hf]')"
    return True, ""


def _transformers():
    os.environ["USE_HUB_KERNELS"] = "0"  # never fetch kernels from the hub at run time
    try:
        import transformers
    except ImportError:
        raise missing_dependency("transformers", "the hf backend", "pip install 'edgeports[hf]'") from None
    return transformers


def hf_config(spec: ModelSpec):
    """The transformers config of a spec (its model_type from the spec or the arch's HF_MODEL_TYPE)."""
    transformers = _transformers()
    config = dict(spec.config)
    model_type = config.pop("model_type", None) or getattr(arch_module(spec.arch), "HF_MODEL_TYPE", None)
    if not model_type:
        raise Unsupported(f"arch {spec.arch!r} has no transformers model type (no HF_MODEL_TYPE)")
    try:
        return transformers.AutoConfig.for_model(model_type, **config)
    except ValueError:
        raise Unsupported(f"transformers {transformers.__version__} has no model type {model_type!r}") from None


def build_hf(spec: ModelSpec, dtype: str, seed: int = 0, weights: str | None = None):
    """The transformers causal LM for a spec, on the CPU, in eval mode: the checkpoint's weights with
    `weights`, else exactly the eager backend's seeded random weights (see `copy_eager_weights`)."""
    transformers = _transformers()
    auto = transformers.AutoModelForCausalLM
    config = transformers.AutoConfig.from_pretrained(weights, local_files_only=True) if weights else hf_config(spec)
    # no attn_implementation: transformers picks SDPA where the model has it, and models without
    # attention (Mamba) refuse the argument; the one chosen is recorded in the runner's info
    kwargs = {"dtype": torch_dtype(dtype)}
    if weights:
        return auto.from_pretrained(weights, config=config, local_files_only=True, **kwargs).eval()
    model = auto.from_config(config, **kwargs).eval()
    copy_eager_weights(model, spec, seed)
    return model


def copy_eager_weights(model, spec: ModelSpec, seed: int) -> None:
    """Overwrite the transformers model's weights with those of `build(spec, seed=seed)`, through the
    arch's hf_name_map, so eager and hf run the same model. (transformers' own random init is also
    badly conditioned for some archs: Mamba-130m's bf16 logits differ from fp32 by more than 100%.)"""
    mod = arch_module(spec.arch)
    if getattr(mod, "hf_convert", None) is not None:
        raise Unsupported(f"arch {spec.arch!r} converts checkpoint tensors (hf_convert): its weights cannot be "
                          "mapped back into transformers; pass --weights DIR")
    name_map = mod.hf_name_map(spec)  # ours -> transformers, tied tensors once
    theirs = dict(model.named_parameters())  # tied tensors once
    unmapped = sorted(set(theirs) - set(name_map.values()))
    if unmapped:
        raise RuntimeError(f"{spec.arch}: transformers weight {unmapped[0]} has no counterpart in hf_name_map")
    state = model.state_dict()
    ours = build(spec, dtype="float32", seed=seed).state_dict()
    with torch.no_grad():
        for our_name, their_name in name_map.items():
            if state[their_name].shape != ours[our_name].shape:  # copy_ would broadcast silently
                raise RuntimeError(f"{spec.arch}: {our_name} {tuple(ours[our_name].shape)} vs {their_name} "
                                   f"{tuple(state[their_name].shape)}")
            state[their_name].copy_(ours[our_name])


def kernel_wrappers(model) -> dict[str, Any]:
    """transformers' kernel-or-fallback wrappers used by the model's modeling modules, by
    'module.function'. Each wrapper keeps the torch fallback as `__wrapped__`."""
    out = {}
    for modname in {type(m).__module__ for m in model.modules()}:
        module = sys.modules.get(modname)
        for name, fn in vars(module).items() if module else ():
            if inspect.isfunction(fn) and getattr(fn, "__wrapped__", None) is not None \
                    and fn.__code__.co_filename.endswith("hub_kernels.py"):
                out[f"{modname}.{name}"] = fn
    return out


def _native_kernels(wrappers: dict[str, Any]) -> list[str]:
    return sorted(k for k, fn in wrappers.items()
                  if inspect.getclosurevars(fn).nonlocals.get("is_new_implementation"))


def use_torch_fallbacks(wrappers: dict[str, Any]) -> None:
    """Point the modeling modules at the torch fallbacks (the CUDA-only kernels never see CPU tensors)."""
    for qualname, fn in wrappers.items():
        modname, _, name = qualname.rpartition(".")
        setattr(sys.modules[modname], name, fn.__wrapped__)


class HFRunner(StepRunner):
    """Runs a transformers causal LM with its own cache object as the state."""

    backend = NAME

    def __init__(self, model, spec: ModelSpec, device: torch.device | str):
        super().__init__(device, torch_dtype(next(model.parameters()).dtype))
        self.model, self.spec = model, spec
        self.weight_bytes = module_weight_bytes(model)
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache_params" if "cache_params" in params else "past_key_values"
        wrappers = kernel_wrappers(model)
        if self.device.type != "cuda":
            use_torch_fallbacks(wrappers)
        native = _native_kernels(kernel_wrappers(model))
        self.info = {"transformers": sys.modules["transformers"].__version__,
                     "attn_implementation": getattr(model.config, "_attn_implementation", None),
                     "kernels": ", ".join(n.rpartition(".")[2] for n in native) if native else "torch fallbacks"}

    def prefill(self, ids: torch.Tensor, chunk: int | None = None, max_len: int | None = None) -> torch.Tensor:
        if chunk is not None and chunk < ids.shape[1] and self.spec.arch in NO_CHUNKED_PREFILL:
            raise Unsupported(f"no chunked prefill for {self.spec.arch}: {NO_CHUNKED_PREFILL[self.spec.arch]}")
        return super().prefill(ids, chunk, max_len)

    def new_state(self, batch: int, max_len: int) -> Any:
        return None  # transformers creates its (dynamic) cache on the first call

    def _step(self, ids: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
        out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1, **{self._cache_kw: cache})
        cache = getattr(out, self._cache_kw, None)
        if cache is None:
            raise EdgeportsError(f"hf: {type(self.model).__name__} returned no cache")
        return out.logits[:, -1].float(), cache

    def prefill_step(self, ids: torch.Tensor, state: Any, first: bool) -> tuple[torch.Tensor, Any]:
        return self._step(ids, state)

    def decode_step(self, ids: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        return self._step(ids, state)


def parity_reference(runner: HFRunner) -> LM:
    """Our LM in fp32 holding the very weights of the transformers model (mapped through the arch's
    hf_name_map / hf_convert), so the parity check compares implementations, not random draws."""
    from edgeports.models.weights import weight_names

    spec = runner.spec
    mod = arch_module(spec.arch)
    convert = getattr(mod, "hf_convert", None)
    hf_state = runner.model.state_dict()
    lm = build(spec, dtype="float32", device="cpu")
    state = {}
    for ours, theirs in mod.hf_name_map(spec).items():
        t = hf_state[theirs].detach().to("cpu")
        state[ours] = (convert(spec, ours, t) if convert else t).float()
    result = lm.load_state_dict(state, strict=False)
    # what may stay unloaded: the second name of a tied tensor (hf_name_map lists each tensor once)
    missing = set(result.missing_keys) & set(weight_names(lm))
    if missing or result.unexpected_keys:
        raise RuntimeError(f"hf -> eager weight mapping incomplete: missing {sorted(missing)[:3]}, "
                           f"unexpected {result.unexpected_keys[:3]}")
    return lm.to(runner.device)


def load(artifact: Artifact, device: str) -> HFRunner:
    """Build the transformers model the (in-memory) artifact describes, on `device`."""
    opts = artifact.options
    model = build_hf(artifact.spec, opts.dtype, seed=opts.seed, weights=opts.weights)
    return HFRunner(model.to(device), artifact.spec, device)
