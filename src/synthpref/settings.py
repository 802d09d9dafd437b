"""The pair-setting table: the paper's seven settings as presets, the sources a setting may
name, and where a setting's pairs live in a run directory.

A setting is a `PairSpec` (config.py): which sources feed the chosen and the rejected side, which
kind of response (greedy / sampled) each side takes, and the rule that picks one pair per prompt.
Adding a pair setting is one entry in PRESETS (or one `pairs.custom` entry in a study config).
The pairs stage builds the pairs; the report and the stand-in notes read this table.
"""

from __future__ import annotations

import re
from pathlib import Path

from .config import PairSpec, StudyConfig
from .errors import ConfigError, did_you_mean
from .rundir import RunDir

ROLES = ("self", "stronger", "peers", "gpt4o")
HUMAN_SOURCES = ("human_chosen", "human_rejected")
MODEL_KINDS = ("greedy", "sample")
_ALL_RM = ["self", "peers", "stronger", "gpt4o"]

PRESETS: dict[str, PairSpec] = {
    "original": PairSpec(
        chosen=["human_chosen"], rejected=["human_rejected"], rule="fixed",
        description="Original Dataset: human-labelled chosen vs human-labelled rejected"),
    "hc_self": PairSpec(
        chosen=["human_chosen"], rejected=["self"], rejected_kind="greedy", rule="fixed",
        description="HC+Self: human-labelled chosen vs the target's own greedy response"),
    "gpt4o_self": PairSpec(
        chosen=["gpt4o"], rejected=["self"], chosen_kind="greedy", rejected_kind="greedy", rule="fixed",
        description="GPT4o+Self: GPT-4o's greedy response vs the target's greedy response"),
    "stronger_self": PairSpec(
        chosen=["stronger"], rejected=["self"], chosen_kind="greedy", rejected_kind="greedy", rule="fixed",
        description="Stronger+Self: a larger same-family model's greedy response vs the target's greedy response"),
    "peer_rm": PairSpec(
        chosen=["peers"], rejected=["peers"], rule="best_worst",
        description="Peer+RM: best and worst by reward over the peer models' responses"),
    "all_rm": PairSpec(
        chosen=list(_ALL_RM), rejected=list(_ALL_RM), rule="best_worst",
        description="All+RM: best and worst by reward over self + peers + stronger + GPT-4o responses"),
    "self_rm": PairSpec(
        chosen=["self"], rejected=["self"], chosen_kind="sample", rejected_kind="sample", rule="best_worst",
        description="Self+RM: best and worst by reward of the target's own N samples (paper: N=5)"),
}

_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


def available_settings(cfg: StudyConfig) -> dict[str, PairSpec]:
    """Presets, overridden or extended by `pairs.custom`."""
    return {**PRESETS, **cfg.pairs.custom}


def resolve_settings(cfg: StudyConfig) -> dict[str, PairSpec]:
    """The settings `pairs.settings` asks for, in that order, with every source name checked."""
    known = available_settings(cfg)
    out: dict[str, PairSpec] = {}
    for name in cfg.pairs.settings:
        if name == "sft":
            raise ConfigError("pairs.settings: 'sft' is the untrained baseline, not a pair setting; remove it "
                              "(evaluate.models includes 'sft' by default)")
        if name not in known:
            raise ConfigError(f"pairs.settings: unknown setting '{name}'{did_you_mean(name, known)}; "
                              "define it under pairs.custom")
        if not _NAME_RE.match(name):
            raise ConfigError(f"pairs.settings: '{name}' is not a valid setting name (letters, digits, _ . -)")
        spec = known[name]
        for side in ("chosen", "rejected"):
            for src in getattr(spec, side):
                _check_source(cfg, name, side, src)
        out[name] = spec
    return out


def _check_source(cfg: StudyConfig, setting: str, side: str, src: str) -> None:
    valid = [*cfg.models, *ROLES, *HUMAN_SOURCES]
    if src not in valid:
        raise ConfigError(f"pairs setting '{setting}': {side} source '{src}' is not a model, role or human "
                          f"source{did_you_mean(src, valid)}")
    if src in ROLES and not cfg.role_members(src):
        # Caught here, not after hours of generation: the setting would have no pairs.
        raise ConfigError(f"pairs setting '{setting}': {side} source is role '{src}', but roles.{src} is empty; "
                          f"add a model to roles.{src} or drop '{setting}' from pairs.settings")


def expand_sources(cfg: StudyConfig, sources: list[str]) -> tuple[set[str], set[str]]:
    """(model names, human kinds) a list of source names stands for. Roles expand to their members."""
    models, human = set(), set()
    for src in sources:
        if src in HUMAN_SOURCES:
            human.add(src)
        elif src in ROLES:
            models.update(cfg.role_members(src))
        else:
            models.add(src)
    return models, human


def models_needed(cfg: StudyConfig) -> list[str]:
    """Models whose responses the requested settings use (the default `generate.sources`)."""
    need: set[str] = set()
    for spec in resolve_settings(cfg).values():
        need |= expand_sources(cfg, spec.chosen + spec.rejected)[0]
    return sorted(need)


def pairs_path(rd: RunDir, setting: str) -> Path:
    return rd.path("pairs", f"{setting}.jsonl")
