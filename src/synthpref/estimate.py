"""`synthpref run --dry-run`: the plan in stage order, with estimated work, wall time and GPU-hours.

Model sizes come from config.json facts (synthpref.model_facts: the model's own config.json when
readable, else the shipped table of the paper's models), never from names; a model whose size
cannot be found is shown as unknown and left out of the totals. Token counts are upper bounds
(every response runs to max_new_tokens).

Rates: on a GPU, generation runs at a nominal vLLM batch throughput for a 7B-active model on one
H100-class GPU, scaled by active parameters; training and SFT cost 8 x params x tokens FLOPs (forward
and backward of the policy, forward of the DPO reference; 6x for SFT) at 40% of a 989 TFLOP/s bf16
peak. On a CPU, the rates measured on 2 cores for SmolLM2-135M (docs/benchmarks.md), scaled by
parameters. These are orders of magnitude, not promises.
"""

from __future__ import annotations

import math
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .config import StudyConfig

# Measured on 2 CPU cores for SmolLM2-135M with the HF backend at batch 8-16 (docs/benchmarks.md).
CPU_TOKENS_PER_S_135M = 60.0
CPU_DPO_STEP_S_135M = 3.0  # LoRA, batch 4, ~150-token pairs
GPU_TOKENS_PER_S_7B = 2000.0  # nominal vLLM batch throughput, 7B active parameters, one H100-class GPU
GPU_PEAK_FLOPS = 989e12       # bf16 dense, H100 SXM
GPU_MFU = 0.4
PAIR_TOKENS = 2 * (64 + 128)  # prompt + response, chosen and rejected
SFT_TOKENS_PER_EXAMPLE = 1024  # upper bound: train.sft.max_length is the cap used when it is smaller

# Rows of SFT datasets the paper configs use (their hub dataset cards), for offline estimates.
KNOWN_ROWS = {("HuggingFaceH4/ultrachat_200k", "train_sft"): 207_865}


def _size(cfg: StudyConfig, name_or_path: str):
    from .model_facts import model_size

    spec = cfg.models.get(name_or_path)
    path, rev = (spec.path, spec.revision) if spec else (name_or_path, None)
    return model_size(path, rev)


def _count_prompts(spec) -> int:
    if spec.limit:
        return spec.limit
    try:
        from .stages.prompts import load_prompt_set

        return len(load_prompt_set(spec))
    except Exception:
        return 0


def _sft_rows(d) -> int | None:
    """Rows of one SFT dataset: its limit, KNOWN_ROWS, or a local JSONL's line count; else None."""
    n = d.limit or KNOWN_ROWS.get((d.source, d.split))
    if n is None:
        p = Path(d.source).expanduser()
        if p.is_file() and p.suffix == ".jsonl":
            n = sum(1 for line in p.open(encoding="utf-8") if line.strip())
    return n


def _gpus(spec) -> int:
    o = spec.options or {}
    return int(o.get("tensor_parallel_size", 1)) * int(o.get("data_parallel_size", 1))


def estimate(cfg: StudyConfig) -> dict:
    """rows: (stage, item, work, wall seconds or None, GPU-hours or None, size note), in stage order."""
    import torch

    gpu = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    n_train = _count_prompts(cfg.prompts.train)
    n_eval = sum(_count_prompts(s) for s in cfg.prompts.eval.values())
    n_benign = _count_prompts(cfg.prompts.benign) if cfg.prompts.benign else 0
    s = cfg.generate.sampling
    from .stages.generate import source_models

    target = _size(cfg, cfg.target)
    start = _size(cfg, cfg.train.base_model) if cfg.train.base_model and cfg.train.base_model not in cfg.models else target
    train_gpus = cfg.train.num_processes or 1 if gpu else 1
    rows: list[tuple] = [("prompts", f"{n_train} train, {n_eval} eval, {n_benign} benign", "load", 0.0, 0.0, "")]

    def size_note(sz) -> str:
        if sz is None:
            return "size unknown"
        act = f", {sz.active_params / 1e9:.1f}B active" if sz.active_params != sz.params else ""
        return f"{sz.params / 1e9:.2f}B params{act} ({sz.source if sz.source in ('table', 'hub', 'hub cache') else 'config.json'})"

    def train_cost(sz, tokens: float, flops_per_token_param: int, cpu_steps: int) -> tuple[float | None, float | None]:
        if sz is None:
            return None, None
        if gpu:
            gpu_s = flops_per_token_param * sz.params * tokens / (GPU_PEAK_FLOPS * GPU_MFU)
            return gpu_s / train_gpus, gpu_s / 3600
        return cpu_steps * CPU_DPO_STEP_S_135M * sz.params / 135e6, 0.0

    # sft
    if cfg.train.sft.enabled:
        for i, d in enumerate(cfg.train.sft.data()):
            item = f"{i + 1}. {d.source}" + (f" [{d.split}]" if d.split else "")
            n_sft = _sft_rows(d)
            if n_sft is None:
                rows.append(("sft", item, "rows unknown (set limit to estimate)", None, None, size_note(start)))
                continue
            toks = n_sft * min(SFT_TOKENS_PER_EXAMPLE, cfg.train.sft.max_length) * cfg.train.sft.num_train_epochs
            steps = math.ceil(n_sft / (cfg.train.per_device_train_batch_size * cfg.train.gradient_accumulation_steps))
            wall, gh = train_cost(start, toks, 6, steps)
            rows.append(("sft", item, f"{n_sft:,} examples", wall, gh, size_note(start)))
    else:
        rows.append(("sft", "off", "-", 0.0, 0.0, ""))

    # generate
    for m in source_models(cfg):
        ov = cfg.generate.overrides.get(m)
        ns = ov.num_samples if ov and ov.num_samples is not None else s.num_samples
        greedy = ov.greedy if ov and ov.greedy is not None else s.greedy
        mnt = ov.max_new_tokens if ov and ov.max_new_tokens else s.max_new_tokens
        tokens = n_train * (ns + int(greedy)) * mnt
        spec = cfg.models[m]
        if spec.backend in ("openai", "responses"):
            calls = n_train * (ns + int(greedy))
            wall = calls * 2.0 / 8 if spec.backend == "openai" else 0.0  # ~2 s per call, 8 concurrent
            rows.append(("generate", m, f"{tokens:,} tokens ({spec.backend})", wall, 0.0, ""))
            continue
        sz = _size(cfg, m)
        if sz is None:
            rows.append(("generate", m, f"{tokens:,} tokens", None, None, size_note(sz)))
            continue
        if gpu:
            per_gpu = GPU_TOKENS_PER_S_7B * 7e9 / max(sz.active_params, 5e8)
            gpu_s = tokens / per_gpu
            rows.append(("generate", m, f"{tokens:,} tokens", gpu_s / _gpus(spec), gpu_s / 3600, size_note(sz)))
        else:
            rows.append(("generate", m, f"{tokens:,} tokens", tokens / (CPU_TOKENS_PER_S_135M * 135e6 / sz.active_params),
                         0.0, size_note(sz)))

    n_scorers = sum(1 for sc in cfg.score.scorers.values() if sc.score_training)
    rows.append(("score", f"{n_scorers} scorer(s)", "all responses", None, None, "not estimated (small next to generation)"))
    rows.append(("pairs", f"{len(cfg.pairs.settings)} settings", "-", 0.0, 0.0, ""))
    rows.append(("probe", "on" if cfg.probe.enabled else "off", "forward passes", None, None, "not estimated"))

    # train
    t = cfg.train
    per_step = t.per_device_train_batch_size * t.gradient_accumulation_steps * (train_gpus if gpu else 1)
    steps = t.max_steps if t.max_steps > 0 else math.ceil(math.ceil(n_train / per_step) * t.num_train_epochs)
    for setting in cfg.pairs.settings:
        wall, gh = train_cost(target, steps * per_step * PAIR_TOKENS, 8, steps * t.gradient_accumulation_steps)
        rows.append(("train", setting, f"{steps} steps", wall, gh, size_note(target)))

    # evaluate
    n_models = len(cfg.evaluate.models or ["sft", *cfg.pairs.settings])
    ev_tokens = n_models * (n_eval * len(cfg.evaluate.safety.formats) + n_benign) * cfg.evaluate.safety.max_new_tokens
    if target is None:
        rows.append(("evaluate", f"{n_models} models", f"{ev_tokens:,} tokens + lm-eval", None, None, "size unknown"))
    elif gpu:
        gpu_s = ev_tokens / (GPU_TOKENS_PER_S_7B * 7e9 / max(target.active_params, 5e8))
        rows.append(("evaluate", f"{n_models} models", f"{ev_tokens:,} tokens (lm-eval not included)", gpu_s, gpu_s / 3600,
                     size_note(target)))
    else:
        rows.append(("evaluate", f"{n_models} models", f"{ev_tokens:,} tokens (lm-eval not included)",
                     ev_tokens / (CPU_TOKENS_PER_S_135M * 135e6 / target.params), 0.0, size_note(target)))
    rows.append(("report", "tables, figures", "-", 0.0, 0.0, ""))
    total_s = sum(r[3] for r in rows if r[3] is not None)
    gpu_h = sum(r[4] for r in rows if r[4] is not None)
    return {"rows": rows, "total_s": total_s, "gpu_hours": gpu_h, "device": "cuda" if gpu else "cpu",
            "n_train": n_train, "n_eval": n_eval, "unknown": [f"{r[0]}:{r[1]}" for r in rows if r[3] is None]}


def print_plan(cfg: StudyConfig, only=None) -> None:
    from .rundir import RunDir
    from .runner import STAGES, plan

    console = Console()
    done = dict(plan(cfg, RunDir(cfg.run_path), only)) if Path(cfg.run_path).exists() else {}
    wanted = list(only) if only else list(STAGES)
    est = estimate(cfg)
    t = Table(title=f"plan for '{cfg.name}' on {est['device']} ({est['n_train']} train prompts, {est['n_eval']} eval prompts)")
    for c in ("#", "stage", "item", "work", "est. wall", "GPU-h", "model size (config.json)"):
        t.add_column(c)
    order = {s: i for i, s in enumerate(STAGES, 1)}
    for stage, item, work, secs, gh, note in est["rows"]:
        if stage not in wanted:
            continue
        mark = " (done)" if done.get(stage) else ""
        t.add_row(str(order[stage]), stage + mark, item, work, "?" if secs is None else f"{secs / 60:.1f} min",
                  "?" if gh is None else (f"{gh:.1f}" if est["device"] == "cuda" else "-"), note)
    console.print(t)
    console.print("stages in order: " + " -> ".join(s for s in STAGES if s in wanted))
    gh = f", {est['gpu_hours']:.0f} GPU-hours" if est["device"] == "cuda" else ""
    console.print(f"estimated total: {est['total_s'] / 3600:.1f} h wall{gh} (upper bound on tokens; order of "
                  f"magnitude; '?' rows not included)")
