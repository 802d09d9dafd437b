"""`synthpref run --dry-run`: the plan, with estimated tokens, training steps and time.

Token counts are upper bounds (every response runs to max_new_tokens). Time uses throughput
measured on a 2-core CPU (benchmarks/ and docs/benchmarks.md) scaled by parameter count, or a
nominal GPU rate; it is an order of magnitude, not a promise.
"""

from __future__ import annotations

import math
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .config import StudyConfig

# Measured on 2 CPU cores for SmolLM2-135M with the HF backend at batch 8-16 (docs/benchmarks.md).
CPU_TOKENS_PER_S_135M = 60.0
GPU_TOKENS_PER_S_7B = 2000.0  # nominal vLLM batch throughput on one H100-class GPU
CPU_DPO_STEP_S_135M = 3.0  # LoRA, batch 4, ~150-token pairs
PARAMS_M = {"smollm2-135m-instruct": 135, "gemma-3-270m": 270, "qwen2.5-coder-0.5b-instruct": 494}


def _params_m(path: str) -> float:
    if path in PARAMS_M:
        return PARAMS_M[path]
    low = path.lower()
    for tag, val in (("70b", 70000), ("8x7b", 47000), ("8b", 8000), ("7b", 7000), ("1.5b", 1500), ("0.5b", 500)):
        if tag in low:
            return val
    return 1000.0


def _count_prompts(spec) -> int:
    if spec.limit:
        return spec.limit
    try:
        from .stages.prompts import load_prompt_set

        return len(load_prompt_set(spec))
    except Exception:
        return 0


def estimate(cfg: StudyConfig) -> dict:
    import torch

    gpu = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    n_train = _count_prompts(cfg.prompts.train)
    n_eval = sum(_count_prompts(s) for s in cfg.prompts.eval.values())
    n_benign = _count_prompts(cfg.prompts.benign) if cfg.prompts.benign else 0
    s = cfg.generate.sampling
    from .stages.generate import source_models

    rows = []
    total_s = 0.0
    for m in source_models(cfg):
        ov = cfg.generate.overrides.get(m)
        ns = ov.num_samples if ov and ov.num_samples is not None else s.num_samples
        greedy = ov.greedy if ov and ov.greedy is not None else s.greedy
        mnt = ov.max_new_tokens if ov and ov.max_new_tokens else s.max_new_tokens
        tokens = n_train * (ns + int(greedy)) * mnt
        spec = cfg.models[m]
        if spec.backend == "openai":
            secs = n_train * (ns + int(greedy)) * 2.0 / 8  # ~2 s per call, 8 concurrent
        elif gpu:
            secs = tokens / (GPU_TOKENS_PER_S_7B * 7000 / max(_params_m(spec.path), 500))
        else:
            secs = tokens / (CPU_TOKENS_PER_S_135M * 135 / _params_m(spec.path))
        rows.append(("generate", m, f"{tokens:,} tokens", secs))
        total_s += secs
    t = cfg.train
    per_step = t.per_device_train_batch_size * t.gradient_accumulation_steps
    steps = t.max_steps if t.max_steps > 0 else math.ceil(math.ceil(n_train / per_step) * t.num_train_epochs)
    target_m = _params_m(cfg.models[cfg.target].path)
    step_s = (0.5 if gpu else CPU_DPO_STEP_S_135M * target_m / 135) * t.gradient_accumulation_steps
    for setting in cfg.pairs.settings:
        rows.append(("train", setting, f"{steps} steps", steps * step_s))
        total_s += steps * step_s
    n_models = len(cfg.evaluate.models or ["sft", *cfg.pairs.settings])
    ev_tokens = n_models * (n_eval * len(cfg.evaluate.safety.formats) + n_benign) * cfg.evaluate.safety.max_new_tokens
    ev_s = ev_tokens / (GPU_TOKENS_PER_S_7B if gpu else CPU_TOKENS_PER_S_135M * 135 / target_m)
    rows.append(("evaluate", f"{n_models} models", f"{ev_tokens:,} tokens", ev_s))
    total_s += ev_s
    return {"rows": rows, "total_s": total_s, "device": "cuda" if gpu else "cpu",
            "n_train": n_train, "n_eval": n_eval}


def print_plan(cfg: StudyConfig, only=None) -> None:
    from .rundir import RunDir
    from .runner import plan

    console = Console()
    rd = RunDir(cfg.run_path)
    steps = plan(cfg, rd, only) if Path(cfg.run_path).exists() else [(s, False) for s in (only or [])] or None
    est = estimate(cfg)
    t = Table(title=f"plan for '{cfg.name}' on {est['device']} ({est['n_train']} train prompts, {est['n_eval']} eval prompts)")
    for c in ("stage", "item", "work", "est. time"):
        t.add_column(c)
    for stage, item, work, secs in est["rows"]:
        t.add_row(stage, item, work, f"{secs / 60:.1f} min")
    console.print(t)
    if steps:
        console.print("stages: " + ", ".join(f"{s}{' (done)' if d else ''}" for s, d in steps))
    console.print(f"estimated total: {est['total_s'] / 60:.1f} min (upper bound on tokens; order of magnitude)")
