"""Model sizes for `synthpref run --dry-run`, from config.json facts, never from model names.

Where a model's config.json is readable (a local folder, a packaged asset, the local hub cache,
or the hub when it answers) its facts are read there. So that the paper configs' estimates work
offline, FACTS ships the config.json fields of the paper's models (transcribed from each model's
config.json on the hub, revision main; see SOURCE). Parameter counts are computed from
those fields (embeddings, attention with grouped KV heads and Qwen2's q/k/v biases, gated MLP or
mixture of experts, norms, untied LM head), not taken from names or model cards.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

SOURCE = ("config.json of each hub model (revision main), fields transcribed as written there; the parameter "
          "counts computed from them equal the sizes the models' cards state (tests/unit/test_paper_configs.py)")

# hub id -> config.json fields: hidden_size, num_hidden_layers, vocab_size, intermediate_size,
# num_attention_heads, num_key_value_heads, tie_word_embeddings, attention_bias (Qwen2 has q/k/v
# biases), num_local_experts / num_experts_per_tok (Mixtral).
_LLAMA2_7B = dict(hidden_size=4096, num_hidden_layers=32, vocab_size=32000, intermediate_size=11008,
                  num_attention_heads=32, num_key_value_heads=32, tie_word_embeddings=False)
_MISTRAL_7B = dict(hidden_size=4096, num_hidden_layers=32, vocab_size=32000, intermediate_size=14336,
                   num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False)
_QWEN2_7B = dict(hidden_size=3584, num_hidden_layers=28, vocab_size=152064, intermediate_size=18944,
                 num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False, attention_bias=True)
_LLAMA31_8B = dict(hidden_size=4096, num_hidden_layers=32, vocab_size=128256, intermediate_size=14336,
                   num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False)
_LLAMA_70B = dict(hidden_size=8192, num_hidden_layers=80, intermediate_size=28672, num_attention_heads=64,
                  num_key_value_heads=8, tie_word_embeddings=False)
_QWEN_72B = dict(hidden_size=8192, num_hidden_layers=80, vocab_size=152064, intermediate_size=29568,
                 num_attention_heads=64, num_key_value_heads=8, tie_word_embeddings=False, attention_bias=True)

FACTS: dict[str, dict] = {
    # the six target models (base checkpoints) and their instruct versions (same shapes)
    "meta-llama/Llama-2-7b-hf": _LLAMA2_7B,
    "meta-llama/Llama-2-7b-chat-hf": _LLAMA2_7B,
    "mistralai/Mistral-7B-v0.1": _MISTRAL_7B,
    "mistralai/Mistral-7B-Instruct-v0.1": _MISTRAL_7B,
    "Qwen/Qwen2-7B": _QWEN2_7B,
    "Qwen/Qwen2-7B-Instruct": _QWEN2_7B,
    "meta-llama/Llama-3.1-8B": _LLAMA31_8B,
    "meta-llama/Llama-3.1-8B-Instruct": _LLAMA31_8B,
    "mistralai/Mistral-7B-v0.3": {**_MISTRAL_7B, "vocab_size": 32768},
    "mistralai/Mistral-7B-Instruct-v0.3": {**_MISTRAL_7B, "vocab_size": 32768},
    "Qwen/Qwen2.5-7B": _QWEN2_7B,
    "Qwen/Qwen2.5-7B-Instruct": _QWEN2_7B,
    # the stronger models
    "meta-llama/Llama-2-70b-chat-hf": {**_LLAMA_70B, "vocab_size": 32000},
    "meta-llama/Llama-3.1-70B-Instruct": {**_LLAMA_70B, "vocab_size": 128256},
    "mistralai/Mixtral-8x7B-Instruct-v0.1": {**_MISTRAL_7B, "num_local_experts": 8, "num_experts_per_tok": 2},
    "Qwen/Qwen2-72B-Instruct": _QWEN_72B,
    "Qwen/Qwen2.5-72B-Instruct": _QWEN_72B,
    # the packaged models' hub repos (synthpref fetch --list), so a config naming an asset that is
    # not fetched yet is checked (train.lora.top_layers) without downloading it
    "HuggingFaceTB/SmolLM2-135M-Instruct": dict(
        hidden_size=576, num_hidden_layers=30, vocab_size=49152, intermediate_size=1536, num_attention_heads=9,
        num_key_value_heads=3, head_dim=64, tie_word_embeddings=True),
    "Qwen/Qwen2.5-Coder-0.5B-Instruct": dict(
        hidden_size=896, num_hidden_layers=24, vocab_size=151936, intermediate_size=4864, num_attention_heads=14,
        num_key_value_heads=2, tie_word_embeddings=True, attention_bias=True),
    "Qwen/Qwen2.5-Coder-1.5B-Instruct": dict(
        hidden_size=1536, num_hidden_layers=28, vocab_size=151936, intermediate_size=8960, num_attention_heads=12,
        num_key_value_heads=2, tie_word_embeddings=True, attention_bias=True),
    "google/gemma-3-270m": dict(
        hidden_size=640, num_hidden_layers=18, vocab_size=262144, intermediate_size=2048, num_attention_heads=4,
        num_key_value_heads=1, head_dim=256, tie_word_embeddings=True),
}


@dataclass(frozen=True)
class ModelSize:
    params: int          # all weights
    active_params: int   # weights used per token (differs for mixture-of-experts models)
    hidden_size: int
    num_layers: int
    vocab_size: int
    source: str          # where the facts came from: config.json path, 'hub', or 'table'


def count_params(c: dict) -> tuple[int, int]:
    """(total, active-per-token) parameters of a decoder-only transformer from config.json fields."""
    h, n_layers, v = c["hidden_size"], c["num_hidden_layers"], c["vocab_size"]
    heads = c.get("num_attention_heads", 1)
    head_dim = c.get("head_dim") or h // heads
    kv = c.get("num_key_value_heads") or heads
    q_out, kv_out = heads * head_dim, kv * head_dim
    attn = h * q_out + 2 * h * kv_out + q_out * h
    if c.get("attention_bias") or c.get("model_type") == "qwen2":
        attn += q_out + 2 * kv_out
    inter = c.get("intermediate_size") or 4 * h
    mlp_one = 3 * h * inter
    experts, used = c.get("num_local_experts") or 1, c.get("num_experts_per_tok") or 1
    router = h * experts if experts > 1 else 0
    norms = 2 * h
    embed = v * h
    head = 0 if c.get("tie_word_embeddings", False) else v * h
    total = embed + head + h + n_layers * (attn + mlp_one * experts + router + norms)
    active = embed + head + h + n_layers * (attn + mlp_one * min(used, experts) + router + norms)
    return total, active


def _size(c: dict, source: str) -> ModelSize:
    total, active = count_params(c)
    return ModelSize(total, active, c["hidden_size"], c["num_hidden_layers"], c["vocab_size"], source)


def _read_config(path: str, revision: str | None) -> tuple[dict | None, str]:
    from . import assets, hub
    from .models import resolve_path

    if path in assets.ASSETS and not assets.is_cached(path):  # never fetch (download, convert) to size it
        ids = [h for h in assets.ASSETS[path].hub_ids if h in FACTS]
        return (dict(FACTS[ids[0]]), "table") if ids else (None, "")

    try:
        local = Path(resolve_path(path))
    except Exception:
        local = None
    if local is not None and (local / "config.json").is_file():
        return json.loads((local / "config.json").read_text(encoding="utf-8")), str(local / "config.json")
    if "/" not in path or path.startswith((".", "/", "~")):
        return None, ""
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(path, "config.json", revision=revision)
        if isinstance(cached, str):
            return json.loads(Path(cached).read_text(encoding="utf-8")), "hub cache"
    except Exception:
        pass
    if path in FACTS:
        return dict(FACTS[path]), "table"
    if hub.unreachable():
        return None, ""
    try:  # one short request; an unreachable hub is not asked again in this process
        import httpx
        from huggingface_hub import constants

        r = httpx.get(f"{constants.ENDPOINT}/{path}/resolve/{revision or 'main'}/config.json", timeout=5,
                      follow_redirects=True)
        r.raise_for_status()
        return r.json(), "hub"
    except httpx.HTTPStatusError:
        return None, ""  # the hub answered: this repo has no readable config.json
    except Exception as e:
        hub.mark_unreachable(type(e).__name__)
        return None, ""


def model_size(path: str, revision: str | None = None) -> ModelSize | None:
    """The size of a model from its config.json facts, or None when they cannot be found."""
    c, source = _read_config(path, revision)
    if not c:
        return None
    c = c.get("text_config", c) if "hidden_size" not in c else c
    try:
        return _size(c, source)
    except (KeyError, TypeError, ZeroDivisionError):
        return None


def layer_count(path: str, revision: str | None = None) -> int | None:
    """Decoder layers of a model, read without downloading or converting anything: a packaged
    asset that is not fetched yet is looked up by the hub repo it stands in for."""
    size = model_size(path, revision)
    return size.num_layers if size else None
