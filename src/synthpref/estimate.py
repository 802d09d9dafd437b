"""`synthpref run --dry-run`: the plan in stage order, with estimated work, wall time and GPU-hours.

Each stage's `estimate(cfg, plan)` (the stage protocol, synthpref.stages) gives its rows; the cost
model they use (rates, model sizes from config.json facts) is synthpref.costs. The table fits an
80-column terminal: long notes fold inside their column instead of widening the table.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from .config import StudyConfig
from .costs import Plan
from .stages import ORDER, all_stages


def estimate(cfg: StudyConfig) -> dict:
    """rows: (stage, item, work, wall seconds or None, GPU-hours or None, size note), in stage order,
    for one seed. With `seeds`, the totals count every seed: the shared stages once (those whose key
    the replicate seed does not change: runner.shared_stages), every later stage once per seed.
    `repeated` names the latter; `seeds` is how many seeds the totals count."""
    from .runner import seed_configs, shared_stages
    from .stages.prompts import count

    n_eval = sum(count(s) for s in cfg.prompts.eval.values())
    plan = Plan.of(cfg, count(cfg.prompts.train), n_eval, count(cfg.prompts.benign))
    rows = [(name, *row) for name, st in all_stages() for row in st.estimate(cfg, plan)]
    runs = seed_configs(cfg)
    repeated: list[str] = []
    if len(runs) > 1:
        shared = shared_stages(runs[0][1], runs[1][1])
        repeated = [s for s in ORDER if s not in shared]

    def times(r) -> float:
        return 1 + (len(runs) - 1) * per_seed_share(cfg, r) if r[0] in repeated else 1

    total_s = sum(r[3] * times(r) for r in rows if r[3] is not None)
    gpu_h = sum(r[4] * times(r) for r in rows if r[4] is not None)
    return {"rows": rows, "total_s": total_s, "gpu_hours": gpu_h, "device": "cuda" if plan.gpu else "cpu",
            "n_train": plan.n_train, "n_eval": plan.n_eval, "unknown": [f"{r[0]}:{r[1]}" for r in rows if r[3] is None],
            "seeds": len(runs), "repeated": repeated}


def per_seed_share(cfg: StudyConfig, row: tuple) -> float:
    """The share of a repeated stage's row that a later seed computes again: a greedy-only model's
    answers (e.g. the GPT-4o role) and the SFT model's evaluation are shared by every seed
    (runner: `rundir.sharing`); the rest counts once per seed (a model's greedy answer beside its
    samples is counted again: an upper bound)."""
    from .stages.generate import model_plan

    stage, item = row[0], row[1]
    if stage == "generate" and item in cfg.models and model_plan(cfg, item).num_samples == 0:
        return 0.0
    if stage == "evaluate":
        models = cfg.evaluate.models or ["sft", *cfg.pairs.settings]
        return (len(models) - ("sft" in models)) / len(models) if models else 1.0
    return 1.0


def _table(est: dict, wanted: list[str], done: dict) -> Table:
    t = Table(title=f"plan on {est['device']}: {est['n_train']} train prompts, {est['n_eval']} eval prompts",
              pad_edge=False, collapse_padding=True)
    t.add_column("stage", no_wrap=True)
    t.add_column("item", overflow="fold", max_width=18)
    t.add_column("work", overflow="fold", max_width=22)
    t.add_column("wall", justify="right", no_wrap=True)
    if est["device"] == "cuda":
        t.add_column("GPU-h", justify="right", no_wrap=True)
    t.add_column("model size", overflow="fold", max_width=20)
    for stage, item, work, secs, gh, note in est["rows"]:
        if stage not in wanted:
            continue
        wall = "?" if secs is None else f"{secs / 60:.1f} min"
        gpu = ["?" if gh is None else f"{gh:.1f}"] if est["device"] == "cuda" else []
        t.add_row(stage + (" ✓" if done.get(stage) else ""), item, work, wall, *gpu, note)
    return t


def print_plan(cfg: StudyConfig, only=None) -> None:
    from .rundir import RunDir
    from .runner import plan

    console = Console()
    done = dict(plan(cfg, RunDir(cfg.run_path), only)) if Path(cfg.run_path).exists() else {}
    wanted = list(only) if only else list(ORDER)
    est = estimate(cfg)
    console.print(f"[bold]{cfg.name}[/bold]")
    console.print(_table(est, wanted, done))
    if any(done.values()):
        console.print("✓ = up to date in the run directory, will be skipped")
    console.print("stages in order: " + " -> ".join(s for s in ORDER if s in wanted))
    gh = f", {est['gpu_hours']:.0f} GPU-hours" if est["device"] == "cuda" else ""
    seeds = ""
    if est["seeds"] > 1:
        console.print(f"{est['seeds']} seeds: the rows above are one seed's; {', '.join(est['repeated'])} run once "
                      "per seed, except greedy-only models' answers and the SFT model's evaluation; the stages "
                      "before them once (shared)")
        seeds = f" for {est['seeds']} seeds"
    console.print(f"estimated total{seeds}: {est['total_s'] / 3600:.1f} h wall{gh} (upper bound on tokens; order of "
                  f"magnitude; '?' rows not included)")
