"""Run a study end to end: prompts -> sft -> generate -> score -> pairs -> probe -> train -> evaluate -> report.

The sft stage (optional, `train.sft.enabled`) comes before generation, as in the paper: the
target's responses, the probe's hidden states and DPO all come from the SFT model.

Each stage is a module following the stage protocol (synthpref.stages: CONFIG, READS, WRITES,
VERSION, check, estimate, run); this module loops over `stages.ORDER` and asks each. Every
wanted stage's `check` runs before the first computes. A stage's key is computed just before it
would run:

    key = hash(its CONFIG sections, VERSION and key_inputs, chained with the stages before it,
               sha256 of every file in the run-directory folders of the stages it READS)

and the manifest records the key, those input fingerprints and the fingerprints of every file the
stage wrote. A stage is "done" only when its recorded key equals the current key *and* every
recorded output still exists with its recorded content. So whichever path ran last (`run`,
`--only`, a single-stage command), a stage whose inputs changed on disk, or whose outputs were
edited or deleted, runs again; an unchanged one is skipped. Inside a stage, work is cached per
record. Only one process writes a run directory at a time (`rundir.writer_lock`).

With `seeds` (run_seeds), the study's own seed runs in the run directory itself, exactly as a
single-seed run (an existing one is that seed's run), and every other seed k in
<run>/seeds/seed-<k>/ with `replicate_seed: k`. Such a run is a whole run directory, but nothing
in it is computed twice: the stages whose key does not depend on the replicate seed (prompts,
sft) are adopted from the first run (hard links and its manifest entries, `adopt_shared`), and
inside `rundir.sharing` every record cache takes the records it lacks from the first run's same
file when they were made for the same inputs (greedy and human answers, their scores, the SFT
model's answers, verdicts and lm-eval results). Then <run>/seeds/report.md compares the seeds
(synthpref.replicates).
"""

from __future__ import annotations

import time
from typing import Iterable

from rich.console import Console
from rich.table import Table

from . import __version__
from .config import StudyConfig, dump_config
from .errors import ConfigError
from .rundir import Fingerprints, RunDir, hash_obj, sharing, write_text, writer_lock
from .stages import ORDER, Checks, load

def outputs_of(stage: str) -> tuple[str, ...]:
    return load(stage).WRITES


def reads_of(stage: str) -> tuple[str, ...]:
    return load(stage).READS


def stage_hashes(cfg: StudyConfig) -> dict[str, str]:
    """Per stage: hash(its CONFIG sections, its VERSION, its key_inputs, chained with every
    stage before it)."""
    data = cfg.model_dump(mode="json")
    out, prev = {}, __version__
    for name in ORDER:
        st = load(name)
        extra = st.key_inputs(cfg) if hasattr(st, "key_inputs") else {}
        prev = hash_obj({"prev": prev, "version": st.VERSION, **{k: data[k] for k in st.CONFIG if k in data}, **extra})
        out[name] = prev
    return out


def check_stages(cfg: StudyConfig, source: str = "<config>", stages: Iterable[str] | None = None) -> Checks:
    """Every stage's `check` (or those of `stages`), in order, before any compute."""
    checks = Checks(source)
    for name in stages or ORDER:
        load(name).check(cfg, checks)
    return checks


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
    wanted = list(only) if only else list(ORDER)
    fp = Fingerprints(rd.root)
    return [(s, is_current(rd, s, hashes[s], fp)) for s in ORDER if s in wanted]


def run_study(cfg: StudyConfig, *, only: Iterable[str] | None = None, force: bool = False,
              console: Console | None = None, source: str | None = None) -> dict[str, dict]:
    """Check the whole config (every stage's `check`, also under --only: a later full run must
    not fail where this one passed), then run the wanted stages in order, skipping those up to date."""
    console = console or Console(stderr=True)
    problems = check_stages(cfg, source or cfg.name).problems
    if problems:
        raise ConfigError(problems[0] + (f" (+{len(problems) - 1} more; run `synthpref validate`)" if len(problems) > 1 else ""))
    if cfg.seeds:
        return run_seeds(cfg, only=only, force=force, console=console)
    rd = RunDir(cfg.run_path).create()
    with writer_lock(rd.root, f"synthpref run {cfg.name}"):
        return _run_locked(cfg, rd, only, force, console)


# --------------------------------------------------------------------------- seeds
def seed_configs(cfg: StudyConfig) -> list[tuple[int, StudyConfig]]:
    """(seed, the config of its run) for `cfg.seeds`, the study's own seed first: its run is the
    single-seed study in the run directory itself; seed k runs in <run>/seeds/seed-<k>/."""
    base = cfg.model_copy(update={"seeds": None})
    out = [(cfg.seed, base)]
    for k in cfg.seeds or []:
        if k != cfg.seed:
            out.append((k, base.model_copy(update={"replicate_seed": k,
                                                    "run_dir": str(cfg.run_path / "seeds" / f"seed-{k}")})))
    return out


def shared_stages(base: StudyConfig, other: StudyConfig) -> list[str]:
    """The leading stages whose key is the same under both configs: their outputs are the same, so
    a replicate adopts them. Keys chain, so the first stage that differs ends the list."""
    a, b = stage_hashes(base), stage_hashes(other)
    out: list[str] = []
    for s in ORDER:
        if a[s] != b[s]:
            break
        out.append(s)
    return out


def adopt_shared(base_cfg: StudyConfig, base: RunDir, cfg: StudyConfig, rd: RunDir) -> list[str]:
    """Give `rd` the outputs of the shared stages that are done in `base` (hard links, a copy across
    file systems) and their manifest entries, so its runner skips them. Returns the stages adopted."""
    import os
    import shutil

    hashes, fp_base, fp = stage_hashes(cfg), Fingerprints(base.root), Fingerprints(rd.root)
    adopted = []
    for s in shared_stages(base_cfg, cfg):
        entry = (base.manifest().get("stages") or {}).get(s)
        if not is_current(base, s, hashes[s], fp_base) or is_current(rd, s, hashes[s], fp):
            continue
        for folder in outputs_of(s):
            shutil.rmtree(rd.path(folder), ignore_errors=True)
        for rel in entry["outputs"]:
            dest = rd.path(rel)
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(base.path(rel), dest)
            except OSError:
                shutil.copy2(base.path(rel), dest)
        rd.set_stage(s, entry)
        adopted.append(s)
    return adopted


def run_seeds(cfg: StudyConfig, *, only=None, force: bool = False, console: Console | None = None) -> dict:
    """Every seed of `cfg.seeds`, the study's own first, each later one sharing its work (see the
    module docstring); then the seeds report. Returns the first run's results plus
    'seeds': {seed: that run's results}."""
    console = console or Console(stderr=True)
    runs = seed_configs(cfg)
    (seed0, cfg0), root = runs[0], RunDir(cfg.run_path).create()
    results: dict[int, dict] = {}
    with writer_lock(root.root, f"synthpref run {cfg.name} (seeds {cfg.seeds})"):
        console.rule(f"[bold]seed {seed0} (1/{len(runs)}): {root.root}")
        # The first seed's report comes last, so that it can point at the seeds report beside it.
        first = [s for s in (only or ORDER) if s != "report"]
        results[seed0] = _run_locked(cfg0, root, first, force, console) if first else {}
        for i, (k, sub) in enumerate(runs[1:], 2):
            rd = RunDir(sub.run_path).create()
            console.rule(f"[bold]seed {k} ({i}/{len(runs)}): {rd.root}")
            with writer_lock(rd.root, f"synthpref run {cfg.name} seed {k}"), sharing(rd.root, root.root):
                adopted = adopt_shared(cfg0, root, sub, rd)
                if adopted:
                    console.print(f"[dim]shared with seed {seed0}: {', '.join(adopted)}[/dim]")
                results[k] = _run_locked(sub, rd, only, force, console)
        if not only or "report" in only:
            from .replicates import write_report

            path = write_report(cfg, [(k, RunDir(c.run_path)) for k, c in runs])
            console.print(f"seeds report: {path}", soft_wrap=True)
            console.rule(f"[bold]seed {seed0}: report")
            results[seed0] = {**results[seed0], **_run_locked(cfg0, root, ["report"], force, console)}
    return {**results[seed0], "seeds": results}


def _run_locked(cfg: StudyConfig, rd: RunDir, only, force: bool, console: Console) -> dict[str, dict]:
    cfg_dict = cfg.model_dump(mode="json")
    write_text(rd.path("config.yaml"), dump_config(cfg))
    rd.init_manifest(cfg_dict, cfg.seed, cfg.replicate_seed)
    hashes = stage_hashes(cfg)
    results: dict[str, dict] = {}
    wanted = list(only) if only else list(ORDER)
    steps = [s for s in ORDER if s in wanted]
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
            summary = load(stage).run(cfg, rd) or {}
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
    report = rd.path("report", "report.html")
    where = f"report: {report}" if report.exists() else f"run directory: {rd.root}"
    console.print(f"{where}  ({seconds:.1f}s)", soft_wrap=True)
