"""Resolve a model reference (asset name, local path, hub id) and load it safely.

Safety rules: weights load from safetensors only, unless the config sets `allow_pickle` for
that model; `trust_remote_code` is passed only when the config sets it for that model. One
model is held at a time: each stage drops its model and calls `free()` (the garbage collector and
the CUDA cache) before the next one loads, so the CPU demo stays well under 8 GB RSS.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path

from . import assets
from .config import ModelSpec
from .errors import AssetError, ConfigError


def resolve_path(ref: str) -> str:
    """Asset name -> cached folder; existing path -> itself; anything else -> hub id (as is)."""
    if ref in assets.ASSETS:
        return str(assets.resolve_asset_path(ref))
    if Path(ref).expanduser().exists():
        return str(Path(ref).expanduser())
    if ref.startswith((".", "/", "~")):
        raise ConfigError(f"model path '{ref}' does not exist")
    return ref


def check_reference(ref: str) -> str | None:
    """For `synthpref validate`: None if `ref` looks loadable, else a one-line problem."""
    if ref in assets.ASSETS or Path(ref).expanduser().exists():
        return None
    if ref.startswith((".", "/", "~")):
        return f"path '{ref}' does not exist"
    if "/" not in ref:
        from .errors import did_you_mean

        return f"'{ref}' is neither a packaged asset nor a path nor a hub id{did_you_mean(ref, assets.ASSETS)}"
    return None  # hub id: checked when loaded


def pick_device(pref: str = "auto") -> str:
    import torch

    if pref == "cpu":
        return "cpu"
    if pref == "cuda" or (pref == "auto" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


def torch_dtype(spec_dtype: str, device: str, cuda_auto: str = "bfloat16"):
    """The torch dtype of a model spec's `dtype` on `device`: auto is float32 on CPU and
    `cuda_auto` on CUDA (the study's score.cuda_dtype / evaluate.cuda_dtype where it has one)."""
    import torch

    if spec_dtype == "auto":
        return getattr(torch, cuda_auto) if device == "cuda" else torch.float32
    return getattr(torch, spec_dtype)


def with_cuda_dtype(spec: ModelSpec, device: str, cuda_dtype: str) -> ModelSpec:
    """`spec` with dtype `cuda_dtype` when it runs on CUDA with dtype auto (evaluate.cuda_dtype:
    the authors evaluated in float16, eval.py:58); otherwise unchanged (CPU stays float32)."""
    if spec.dtype == "auto" and str(device).startswith("cuda"):
        return spec.model_copy(update={"dtype": cuda_dtype})
    return spec


def _hub_error(ref: str, err: Exception) -> AssetError:
    alt = assets.stand_in_for(ref)
    hint = f"; offline, the packaged asset '{alt}' can stand in" if alt else ""
    return AssetError(f"could not load '{ref}' from the hub ({type(err).__name__}){hint}")


def load_tokenizer(spec: ModelSpec | str, padding_side: str = "left"):
    from transformers import AutoTokenizer

    spec = spec if isinstance(spec, ModelSpec) else ModelSpec(path=spec)
    path = resolve_path(spec.path)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=spec.trust_remote_code, revision=spec.revision)
    except OSError as e:
        raise _hub_error(spec.path, e) from None
    tok.padding_side = padding_side
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(spec: ModelSpec | str, device: str = "cpu"):
    from transformers import AutoModelForCausalLM

    spec = spec if isinstance(spec, ModelSpec) else ModelSpec(path=spec)
    path = resolve_path(spec.path)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch_dtype(spec.dtype, device), trust_remote_code=spec.trust_remote_code,
            use_safetensors=None if spec.allow_pickle else True, revision=spec.revision)
    except OSError as e:
        if Path(path).exists() and not spec.allow_pickle:
            raise AssetError(f"{path}: no safetensors weights; set models.<name>.allow_pickle: true "
                             "for this model only if you trust the file") from None
        raise _hub_error(spec.path, e) from None
    model.to(device)
    model.eval()
    return model


def free() -> None:
    """Collect garbage and empty the CUDA cache; the caller drops its own references first."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def set_threads() -> None:
    """Use all cores for torch on CPU (the default can be lower inside containers)."""
    import torch

    n = os.cpu_count() or 1
    if torch.get_num_threads() < n:
        torch.set_num_threads(n)
