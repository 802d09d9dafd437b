"""Run a study end to end: prompts -> sft -> generate -> score -> pairs -> probe -> train -> evaluate -> report.

The sft stage (optional, `train.sft.enabled`) comes before generation, as in the paper: the
target's responses, the probe's hidden states and DPO all come from the SFT model.

Each stage is a module with `run(cfg, rd) -> dict` that reads the previous stages' outputs from
the run directory and writes its own. A stage's key is computed just before it would run:

    key = hash(config sections it reads, chained with the stages before it,
               sha256 of every file in the run-directory folders it reads)

and the manifest records the key, those input fingerprints and the fingerprints of every file the
stage wrote. A stage is "done" only when its recorded key equals the current key *and* every
recorded output still exists with its recorded content. So whichever path ran last (`run`,
`--only`, a single-stage command), a stage whose inputs changed on disk, or whose outputs were
edited or deleted, runs again; an unchanged one is skipped. Inside a stage, work is cached per
record. Only one process writes a run directory at a time (`rundir.writer_lock`).
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
from .rundir import Fingerprints, RunDir, hash_obj, sha256_file, write_text, writer_lock

# stage -> config sections it reads (its key chains them with those of the stages before it)
STAGES: dict[str, tuple[str, ...]] = {
    "prompts": ("prompts", "prompt_files", "seed"),
    "sft": ("sft_inputs",),  # SFT before generation: Self responses, probe and DPO all use the SFT model
    "generate": ("models", "target", "roles", "generate", "pairs", "seed", "device"),
    "score": ("score",),
    "pairs": ("pairs", "score", "seed"),
    "probe": ("probe",),
    "train": ("train", "pairs", "seed"),
    "evaluate": ("evaluate", "prompts"),
    "report": ("report",),
}


# stage -> run-directory folders it writes (default: the folder named after the stage)
OUTPUTS: dict[str, tuple[str, ...]] = {"sft": ("train/sft",), "evaluate": ("eval",)}

# stage -> stages whose output folders it reads (default: every stage before it). A new stage
# needs one STAGES entry; list it here only to narrow what it reads, and add it to the READS of
# any listed stage that reads its outputs.
READS: dict[str, tuple[str, ...]] = {
    "prompts": (),
    "sft": (),
    "generate": ("prompts", "sft"),
    "score": ("prompts", "generate"),
    "pairs": ("prompts", "generate", "score"),
    "probe": ("pairs", "sft"),
    "train": ("pairs", "sft"),
    "evaluate": ("prompts", "train"),
}


def outputs_of(stage: str) -> tuple[str, ...]:
    return OUTPUTS.get(stage, (stage,))


def reads_of(stage: str) -> tuple[str, ...]:
    if stage in READS:
        return READS[stage]
    order = list(STAGES)
    return tuple(order[: order.index(stage)])


def _prompt_file_hashes(cfg: StudyConfig) -> dict[str, str]:
    """Contents of local prompt files: editing one must re-run the study from the prompts stage."""
    specs = [cfg.prompts.train, *cfg.prompts.eval.values(), *([cfg.prompts.benign] if cfg.prompts.benign else [])]
    return {s.source: sha256_file(s.source) for s in specs
            if source_kind(s.source) == "file" and Path(s.source).is_file()}


def sft_inputs(cfg: StudyConfig) -> str | None:
    """What the sft stage's output depends on (None without SFT)."""
    if not cfg.train.sft.enabled:
        return None
    from .stages.train import sft_inputs_hash

    return sft_inputs_hash(cfg)


def stage_hashes(cfg: StudyConfig) -> dict[str, str]:
    data = cfg.model_dump(mode="json")
    data["prompt_files"] = _prompt_file_hashes(cfg)
    data["sft_inputs"] = sft_inputs(cfg)
    out, prev = {}, __version__
    for stage, keys in STAGES.items():
        prev = hash_obj({"prev": prev, **{k: data.get(k) for k in keys}})
        out[stage] = prev
    return out


def stage_module(stage: str):
    return importlib.import_module(f"synthpref.stages.{stage}")


def input_fingerprints(rd: RunDir, stage: str, fp: Fingerprints) -> dict[str, str]:
    return fp.of_folders([f for s in reads_of(stage) for f in outputs_of(s)])


def stage_key(config_hash: str, inputs: dict[str, str]) -> str:
    return hash_obj({"config": config_hash, "inputs": inputs})


def is_current(rd: RunDir, stage: str, config_hash: str, fp: Fingerprints) -> bool:
    """Recorded key == key of the config and the input files on disk now, and every recorded
    output still exists with its recorded content."""
    s = rd.manifest().get("stages", {}).get(stage) or {}
    if s.get("status") != "done" or "outputs" not in s:
        return False
    return (s.get("inputs_hash") == stage_key(config_hash, input_fingerprints(rd, stage, fp))
            and fp.matches(s["outputs"]))


def plan(cfg: StudyConfig, rd: RunDir, only: Iterable[str] | None = None) -> list[tuple[str, bool]]:
    """(stage, up to date) for the wanted stages, judged on the run directory as it is now (a
    stage downstream of one that will re-run shows as up to date until that one has run)."""
    hashes = stage_hashes(cfg)
    wanted = list(only) if only else list(STAGES)
    fp = Fingerprints(rd.root)
    return [(s, is_current(rd, s, hashes[s], fp)) for s in STAGES if s in wanted]


def run_study(cfg: StudyConfig, *, only: Iterable[str] | None = None, force: bool = False,
              console: Console | None = None) -> dict[str, dict]:
    console = console or Console(stderr=True)
    rd = RunDir(cfg.run_path).create()
    with writer_lock(rd.root, f"synthpref run {cfg.name}"):
        return _run_locked(cfg, rd, only, force, console)


def _run_locked(cfg: StudyConfig, rd: RunDir, only, force: bool, console: Console) -> dict[str, dict]:
    cfg_dict = cfg.model_dump(mode="json")
    write_text(rd.path("config.yaml"), dump_config(cfg))
    rd.init_manifest(cfg_dict, cfg.seed)
    hashes = stage_hashes(cfg)
    results: dict[str, dict] = {}
    wanted = list(only) if only else list(STAGES)
    steps = [s for s in STAGES if s in wanted]
    fp = Fingerprints(rd.root)
    t_all = time.time()
    for i, stage in enumerate(steps, 1):
        # The key is taken now, after the stages before it ran, from the files it will read.
        inputs = input_fingerprints(rd, stage, fp)
        key = stage_key(hashes[stage], inputs)
        if not force and is_current(rd, stage, hashes[stage], fp):
            console.print(f"[dim][{i}/{len(steps)}] {stage}: up to date, skipped[/dim]")
            results[stage] = rd.manifest()["stages"][stage].get("summary", {})
            continue
        if only:
            _warn_stale_upstream(console, cfg, rd, stage, hashes, fp, wanted)
        console.rule(f"[bold][{i}/{len(steps)}] {stage}")
        t0 = time.time()
        with rd.stage_run(stage, key) as record:
            summary = stage_module(stage).run(cfg, rd) or {}
            record.update(inputs=inputs, outputs=fp.of_folders(outputs_of(stage)), summary=summary)
        fp.save()
        results[stage] = summary
        console.print(f"[green]{stage} done[/green] in {time.time() - t0:.1f}s")
    fp.save()
    _print_summary(console, cfg, rd, results, time.time() - t_all)
    return results


def _warn_stale_upstream(console: Console, cfg: StudyConfig, rd: RunDir, stage: str, hashes: dict,
                         fp: Fingerprints, wanted: list[str]) -> None:
    """With --only, a stage may read outputs of a stage that is itself out of date. It then runs on
    what is on disk (its key records exactly those files), and says so: the next full run redoes
    the upstream stage and, because the files it reads then change, this one too."""
    stale = [s for s in reads_of(stage) if s not in wanted and not is_current(rd, s, hashes[s], fp)]
    if stale:
        console.print(f"[yellow]note: {stage} reads the outputs of {', '.join(stale)}, which "
                      f"{'is' if len(stale) == 1 else 'are'} not up to date with the config; it uses the files "
                      f"on disk now, and a full `synthpref run` will redo {', '.join(stale)} and then {stage}[/yellow]")


def _print_summary(console: Console, cfg: StudyConfig, rd: RunDir, results: dict, seconds: float) -> None:
    ev = results.get("evaluate") or {}
    rows = ev.get("table") or []
    if rows:
        from .standins import footnote, setting_label

        # The model column comes first and is never cut (its names are what a user types next);
        # safety and general ability go in two tables so each fits an 80-column terminal, and a
        # header breaks at its underscores rather than ending in an ellipsis.
        labels = [setting_label(cfg, str(r["model"])) for r in rows]
        metrics = [c for c in rows[0] if c != "model"]
        safety = [c for c in metrics if c.startswith(("asr", "over_refusal"))]
        for title, cols in ((f"{cfg.name}: safety", safety),
                            (f"{cfg.name}: general ability", [c for c in metrics if c not in safety])):
            if not cols:
                continue
            t = Table(title=title)
            t.add_column("model", no_wrap=True, min_width=max(len(x) for x in labels))
            for c in cols:
                t.add_column(c.replace("_", "\n"), justify="right")
            for label, r in zip(labels, rows):
                t.add_row(label, *[f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols])
            console.print(t)
        note = footnote(cfg, [str(r.get("model")) for r in rows])
        if note:
            console.print(note)
    console.print(f"run directory: {rd.root}  ({seconds:.1f}s)")
