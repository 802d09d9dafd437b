"""Run a study end to end: prompts -> generate -> score -> pairs -> probe -> train -> evaluate -> report.

Each stage is a module with `run(cfg, rd) -> dict` that reads the previous stages' outputs from
the run directory and writes its own. A stage's inputs hash is the hash of the config sections
it reads chained with the hash of the stage before it, so changing, say, `train.beta` re-runs
train, evaluate and report, while generation is reused. Inside a stage, work is cached per record.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Iterable

from rich.console import Console
from rich.table import Table

from . import __version__
from .config import StudyConfig, dump_config
from .stages.prompts import source_kind
from .rundir import RunDir, hash_obj, sha256_file, write_text

# stage -> config sections it depends on (besides the stage before it)
STAGES: dict[str, tuple[str, ...]] = {
    "prompts": ("prompts", "prompt_files", "seed"),
    "generate": ("models", "target", "roles", "generate", "pairs", "seed", "device"),
    "score": ("score",),
    "pairs": ("pairs", "score", "seed"),
    "probe": ("probe",),
    "train": ("train", "pairs", "seed"),
    "evaluate": ("evaluate", "prompts"),
    "report": ("report",),
}


def _prompt_file_hashes(cfg: StudyConfig) -> dict[str, str]:
    """Contents of local prompt files: editing one must re-run the study from the prompts stage."""
    specs = [cfg.prompts.train, *cfg.prompts.eval.values(), *([cfg.prompts.benign] if cfg.prompts.benign else [])]
    return {s.source: sha256_file(s.source) for s in specs
            if source_kind(s.source) == "file" and Path(s.source).is_file()}


def stage_hashes(cfg: StudyConfig) -> dict[str, str]:
    data = cfg.model_dump(mode="json")
    data["prompt_files"] = _prompt_file_hashes(cfg)
    out, prev = {}, __version__
    for stage, keys in STAGES.items():
        prev = hash_obj({"prev": prev, **{k: data.get(k) for k in keys}})
        out[stage] = prev
    return out


def stage_module(stage: str):
    return importlib.import_module(f"synthpref.stages.{stage}")


def plan(cfg: StudyConfig, rd: RunDir, only: Iterable[str] | None = None) -> list[tuple[str, bool]]:
    hashes = stage_hashes(cfg)
    wanted = list(only) if only else list(STAGES)
    return [(s, rd.stage_done(s, hashes[s])) for s in STAGES if s in wanted]


def run_study(cfg: StudyConfig, *, only: Iterable[str] | None = None, force: bool = False,
              console: Console | None = None) -> dict[str, dict]:
    console = console or Console(stderr=True)
    rd = RunDir(cfg.run_path).create()
    cfg_dict = cfg.model_dump(mode="json")
    write_text(rd.path("config.yaml"), dump_config(cfg))
    rd.init_manifest(cfg_dict, cfg.seed)
    hashes = stage_hashes(cfg)
    results: dict[str, dict] = {}
    steps = plan(cfg, rd, only)
    t_all = time.time()
    for i, (stage, done) in enumerate(steps, 1):
        if done and not force:
            console.print(f"[dim][{i}/{len(steps)}] {stage}: up to date, skipped[/dim]")
            results[stage] = rd.manifest()["stages"][stage].get("summary", {})
            continue
        console.rule(f"[bold][{i}/{len(steps)}] {stage}")
        t0 = time.time()
        with rd.stage_run(stage, hashes[stage]):
            summary = stage_module(stage).run(cfg, rd) or {}
        results[stage] = summary
        m = rd.manifest()
        m["stages"][stage]["summary"] = summary
        rd.update_manifest(stages=m["stages"])
        console.print(f"[green]{stage} done[/green] in {time.time() - t0:.1f}s")
    _print_summary(console, cfg, rd, results, time.time() - t_all)
    return results


def _print_summary(console: Console, cfg: StudyConfig, rd: RunDir, results: dict, seconds: float) -> None:
    ev = results.get("evaluate") or {}
    rows = ev.get("table") or []
    if rows:
        t = Table(title=f"{cfg.name}: results")
        cols = list(rows[0].keys())
        for c in cols:
            t.add_column(c)
        from .standins import footnote, setting_label

        for r in rows:
            t.add_row(*[f"{r[c]:.3f}" if isinstance(r[c], float) else
                        setting_label(cfg, str(r[c])) if c == "model" else str(r[c]) for c in cols])
        console.print(t)
        note = footnote(cfg, [str(r.get("model")) for r in rows])
        if note:
            console.print(note)
    console.print(f"run directory: {rd.root}  ({seconds:.1f}s)")
