"""`synthpref validate`: everything that can be checked before compute is spent.

Pydantic already checked types, unknown keys and cross-field rules when the config loaded. Here
each stage's `check` (the stage protocol, synthpref.stages) looks at its part of the config
against the outside world: model references (asset names, paths), backend options, prompt
sources, pair setting names, scorer models, SFT data, LoRA layer counts, accelerate configs,
jailbreak template names. Each problem is one line naming the field and the fix. Nothing is
downloaded.
"""

from __future__ import annotations

from .config import StudyConfig
from .runner import check_stages


def validate(cfg: StudyConfig, source: str = "<config>", notes: list[str] | None = None) -> list[str]:
    """Problems (each blocks a run); `notes`, when given, collects what could not be checked."""
    checks = check_stages(cfg, source)
    if notes is not None:
        notes.extend(checks.notes)
    return checks.problems
