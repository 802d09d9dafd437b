"""Stand-in models: a local model playing a role the paper fills with another model (GPT-4o,
a 70B "stronger" model, ...).

A model spec says what it stands for with `stand_in_for:` (e.g. "GPT-4o"). Every place that
names a pair setting built from such a model (pairs stats, the report's tables and figures)
marks it through these helpers, so a result from a stand-in is never read as the real thing.
"""

from __future__ import annotations

from .config import StudyConfig

MARK = "†"


def setting_models(cfg: StudyConfig, setting: str) -> set[str]:
    """Model names whose responses a pair setting uses (roles expanded); empty for unknown names."""
    from .settings import available_settings, expand_sources

    spec = available_settings(cfg).get(setting)
    if spec is None:
        return set()
    return expand_sources(cfg, list(spec.chosen) + list(spec.rejected))[0]


def setting_stand_ins(cfg: StudyConfig, setting: str) -> dict[str, str]:
    """{model name: what it stands in for} for the stand-ins a setting's pairs come from."""
    return {m: cfg.models[m].stand_in_for for m in sorted(setting_models(cfg, setting))
            if m in cfg.models and cfg.models[m].stand_in_for}


def setting_label(cfg: StudyConfig, setting: str) -> str:
    """The setting's name, with a dagger when any of its sources is a stand-in."""
    return f"{setting}{MARK}" if setting_stand_ins(cfg, setting) else setting


def footnote(cfg: StudyConfig, settings: list[str]) -> str | None:
    """One line explaining the dagger for the given settings, or None when none uses a stand-in."""
    seen: dict[str, str] = {}
    for s in settings:
        seen.update(setting_stand_ins(cfg, s))
    if not seen:
        return None
    parts = [f"{m} ({cfg.models[m].path}) stands in for {what}" for m, what in seen.items()]
    return f"{MARK} stand-in: " + "; ".join(parts) + "."
