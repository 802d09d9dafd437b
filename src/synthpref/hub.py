"""Can the Hugging Face Hub be asked? One rule for every caller (validate's split checks, the
dry run's model sizes, lm-eval's offline fallback): not when HF_HUB_OFFLINE, HF_DATASETS_OFFLINE or
TRANSFORMERS_OFFLINE is set, else one short request per process; an unreachable hub is not asked
again in this process."""

from __future__ import annotations

import os

OFFLINE_VARS = ("HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")  # beside huggingface_hub's HF_HUB_OFFLINE

_STATE: dict[str, str | None] = {}


def unreachable() -> str | None:
    """Why the hub cannot be asked (offline mode, or no answer to one short request), else None."""
    if "why" not in _STATE:
        try:
            import httpx
            from huggingface_hub import constants

            set_var = next((v for v in OFFLINE_VARS if os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")),
                           None)
            if constants.HF_HUB_OFFLINE:
                _STATE["why"] = "HF_HUB_OFFLINE is set"
            elif set_var:
                _STATE["why"] = f"{set_var} is set"
            else:
                httpx.head(constants.ENDPOINT, timeout=5)
                _STATE["why"] = None
        except Exception as e:
            _STATE["why"] = f"{type(e).__name__}"
    return _STATE["why"]


def mark_unreachable(why: str) -> None:
    """A request to the hub failed: do not ask it again in this process."""
    _STATE["why"] = why
