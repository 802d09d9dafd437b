"""Safety evaluation on the ct2 backend (`evaluate.safety.backend: ct2`).

The evaluated model is converted to CTranslate2 once and the conversion is reused:
- 'sft' without an SFT run is the base model: converted into the user cache, keyed by the
  content of its folder (as for generation, see backends/generation/ct2.py);
- a trained model (SFT, or a DPO setting) is keyed by its identity in the caches
  (`evaluate.model_ref`: the training run's inputs hash from done.json) and converted into
  eval/<model>/ct2-<quantization>-<key>/. A LoRA adapter is merged into its starting model first
  (the same in-memory merge the hf path evaluates), saved to a temporary folder, converted, and the
  temporary folder deleted; full weights are converted from the trained folder directly.

The quantization comes from the starting model's `options.quantization` (auto: int8 on CPU).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from ..backends.generation.base import GenerationBackend
from ..config import ModelSpec, StudyConfig
from ..rundir import RunDir


def _options(spec: ModelSpec) -> dict:
    from ..backends.generation.ct2 import CT2Backend

    return {k: v for k, v in spec.options.items() if k in CT2Backend.Options.model_fields}


def quantization(spec: ModelSpec, device: str) -> str:
    from ..backends.generation.ct2 import resolve_quantization

    kind = "cuda" if str(device).startswith("cuda") else "cpu"
    return resolve_quantization(_options(spec).get("quantization", "auto"), kind)


def engine_ref(cfg: StudyConfig, spec: ModelSpec, device: str) -> dict:
    """What the ct2 path adds to the generations' inputs hash (its texts differ from hf's)."""
    import ctranslate2

    from ..backends.generation.ct2 import CONVERT_VERSION

    return {"backend": "ct2", "quantization": quantization(spec, device), "ctranslate2": ctranslate2.__version__,
            "convert": CONVERT_VERSION}


def ct2_factory(cfg: StudyConfig, rd: RunDir, session) -> tuple[Callable[[ModelSpec], GenerationBackend], object]:
    """(make backend for a format's spec, tokenizer) for the session's model, converting it if needed."""
    from ..backends.generation.ct2 import CT2Backend, conversion_key, converted_model, convert_folder
    from ..models import load_tokenizer, resolve_path
    from .evaluate import SFT, model_ref
    from .train import trained_model_dir

    start = session.spec
    q = quantization(start, session.device)
    if session.name == SFT and not cfg.train.sft.enabled:
        src = Path(resolve_path(start.path))
        model_dir = converted_model(start, q, src)
        tok = load_tokenizer(start)
    else:
        d = trained_model_dir(rd, session.name)
        tok = load_tokenizer(start.model_copy(update={"path": str(d), "revision": None}), padding_side="left")
        model_dir = rd.path("eval", session.name, f"ct2-{q}-{conversion_key(model_ref(cfg, rd, session.name), q)}")
        is_adapter = (d / "adapter_config.json").exists()
        src = Path(resolve_path(start.path)) if is_adapter else d
        if not (model_dir / "model.bin").exists():
            if is_adapter:
                tmp = rd.path("eval", session.name, ".merged_for_ct2")
                shutil.rmtree(tmp, ignore_errors=True)
                model, mtok = session.get()
                model.save_pretrained(tmp, safe_serialization=True)
                mtok.save_pretrained(tmp)
                try:
                    convert_folder(tmp, model_dir, q, f"{start.path} + {session.name}", start.trust_remote_code)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
            else:
                convert_folder(d, model_dir, q, str(d), start.trust_remote_code)

    def make(spec: ModelSpec) -> GenerationBackend:
        spec = spec.model_copy(update={"backend": "ct2", "options": _options(spec)})
        return CT2Backend(spec, session.device, tokenizer=tok, model_dir=model_dir, source_dir=src)

    return make, tok
