"""The pipeline: one module per stage, run in `ORDER`.

Every stage module declares the same things (the stage protocol, `Stage` below), and the
runner, the command line, `synthpref validate` and `run --dry-run` loop over `ORDER` and ask
each module; nothing else lists the stages. Adding a stage is one module plus one `ORDER` entry.

    CONFIG     config sections (top-level keys of the study config) its output depends on; its
               cache key chains them with the keys of every stage before it
    READS      stages whose output folders it reads (their files' hashes join its key)
    WRITES     run-directory folders it writes (fingerprinted after it runs)
    VERSION    bumped whenever its output for the same inputs changes; part of its key, so a
               changed stage re-runs without --force
    check(cfg, checks)    everything about its part of the config that can be checked before
                          any compute (models exist, options valid, layer counts fit); problems
                          and notes go to `checks`
    estimate(cfg, plan)   rows of the dry-run plan: (item, work, wall seconds, GPU-hours, note)
    run(cfg, rd)          do the work; returns a JSON-able summary for the manifest

Optionally `key_inputs(cfg) -> dict`: inputs outside the config and the run directory that the
output depends on (local prompt files, the SFT run), hashed into the key.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol

ORDER: tuple[str, ...] = ("prompts", "sft", "generate", "score", "pairs", "probe", "train", "evaluate", "report")


class Stage(Protocol):
    CONFIG: tuple[str, ...]
    READS: tuple[str, ...]
    WRITES: tuple[str, ...]
    VERSION: int

    def check(self, cfg: Any, checks: "Checks") -> None: ...

    def estimate(self, cfg: Any, plan: Any) -> list[tuple]: ...

    def run(self, cfg: Any, rd: Any) -> dict: ...


@dataclass
class Checks:
    """What `check` found: problems block a run, notes say what could not be checked."""

    source: str = "<config>"
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def problem(self, where: str, msg: str) -> None:
        """A problem with config field `where` (e.g. 'train.lora.top_layers')."""
        self.problems.append(f"{self.source}: {where}: {msg}")

    def error(self, msg: str) -> None:
        """A problem whose message already names its field."""
        self.problems.append(f"{self.source}: {msg}")

    def note(self, msg: str) -> None:
        self.notes.append(f"{self.source}: {msg}")


def load(name: str) -> ModuleType:
    """The module of stage `name` (one of ORDER)."""
    return importlib.import_module(f"{__name__}.{name}")


def all_stages() -> list[tuple[str, ModuleType]]:
    return [(name, load(name)) for name in ORDER]
