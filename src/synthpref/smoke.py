"""`synthpref run CONFIG --smoke`: every stage of a config at toy size, through the same backends
and launchers, so a config is rehearsed in minutes before GPUs are booked.

The smoke run keeps the config's models, engines, launcher, settings, scorers and judges; it
only caps sizes (prompts, samples, answer lengths, training steps, probe pairs, evaluation
limits) and writes to <run directory>-smoke so the real run's cache is never touched. Caps only
shrink: a value already below its cap stays. Overrides on the command line (and
`--overrides-file`) are applied before the caps; to move a config onto other models or another
machine (e.g. packaged models on a CPU), see configs/smoke/ and docs/reproduce.md.
"""

from __future__ import annotations

from typing import Any

from .config import StudyConfig, parse_config

PROMPTS = 8          # training prompts
EVAL_PROMPTS = 4     # per safety set, and benign prompts
SAMPLES = 2          # sampled answers per prompt (Self+RM needs two to pick best and worst)
NEW_TOKENS = 16      # every generated answer
JUDGE_TOKENS = 64    # an LLM judge's reply (room for its verdict line), asked again at most once
STEPS = 2            # optimizer steps of each SFT dataset and each DPO setting
PROBE_PAIRS = 8      # pairs per setting for the probe (2 folds)
SFT_ROWS = 16        # examples per SFT dataset
GENERAL_LIMIT = 2    # examples per lm-eval task
FEWSHOT = 1          # lm-eval shots (the few-shot path runs; 25-shot ARC contexts would dominate a CPU smoke run)
TRAIN_TOKENS = 256   # train.max_length and train.sft.max_length (prompts: half); answers are NEW_TOKENS long


def _cap(d: dict, key: str, cap: int, changes: list[str], where: str, none_is_max: bool = True) -> None:
    """d[key] = min(d[key], cap), recording the change; None (no limit) counts as above any cap."""
    old = d.get(key)
    if old is None and not none_is_max:
        return
    if old is None or old > cap:
        d[key] = cap
        changes.append(f"{where}.{key}: {old} -> {cap}")


def _shrink_data(data: dict, ch: list[str]) -> None:
    p = data["prompts"]
    _cap(p["train"], "limit", PROMPTS, ch, "prompts.train")
    for name, spec in p["eval"].items():
        _cap(spec, "limit", EVAL_PROMPTS, ch, f"prompts.eval.{name}")
    if p.get("benign"):
        _cap(p["benign"], "limit", EVAL_PROMPTS, ch, "prompts.benign")
    g = data["generate"]
    _cap(g["sampling"], "num_samples", SAMPLES, ch, "generate.sampling")
    _cap(g["sampling"], "max_new_tokens", NEW_TOKENS, ch, "generate.sampling")
    for m, ov in g["overrides"].items():
        _cap(ov, "num_samples", SAMPLES, ch, f"generate.overrides.{m}", none_is_max=False)
        _cap(ov, "max_new_tokens", NEW_TOKENS, ch, f"generate.overrides.{m}", none_is_max=False)
    for name, s in data["score"]["scorers"].items():
        if s["kind"] == "llm_judge":
            _cap(s["options"], "max_new_tokens", JUDGE_TOKENS, ch, f"score.scorers.{name}.options")
            _cap(s["options"], "parse_retries", 1, ch, f"score.scorers.{name}.options")


def _shrink_compute(data: dict, ch: list[str]) -> None:
    pr = data["probe"]
    _cap(pr, "max_pairs", PROBE_PAIRS, ch, "probe")
    _cap(pr, "folds", 2, ch, "probe")
    t = data["train"]
    for sec, where in ((t, "train"), (t["sft"], "train.sft")):
        if not isinstance(sec.get("max_steps"), int) or not 0 < sec["max_steps"] <= STEPS:  # -1, 0, None: epochs
            ch.append(f"{where}.max_steps: {sec.get('max_steps')} -> {STEPS}")
            sec["max_steps"] = STEPS
    _cap(t, "save_steps", STEPS, ch, "train")  # one checkpoint, at the last step: the save path runs once
    _cap(t, "max_length", TRAIN_TOKENS, ch, "train")
    _cap(t, "max_prompt_length", TRAIN_TOKENS // 2, ch, "train")
    _cap(t["sft"], "max_length", TRAIN_TOKENS, ch, "train.sft")
    for i, d in enumerate(t["sft"]["datasets"]):
        _cap(d, "limit", SFT_ROWS, ch, f"train.sft.datasets[{i}]")
    e = data["evaluate"]
    _cap(e["safety"], "max_new_tokens", NEW_TOKENS, ch, "evaluate.safety")
    _cap(e["general"], "limit", GENERAL_LIMIT, ch, "evaluate.general")
    for task in e["general"]["tasks"]:
        _cap(e["general"]["tasks"], task, FEWSHOT, ch, "evaluate.general.tasks")


def smoke_config(cfg: StudyConfig) -> tuple[StudyConfig, list[str]]:
    """The toy-size copy of `cfg` and one line per value changed."""
    data: dict[str, Any] = cfg.model_dump(mode="json")
    changes: list[str] = []
    if cfg.train.sft.dataset and not cfg.train.sft.datasets:  # one form, so the cap below applies to it
        data["train"]["sft"]["datasets"] = [{"source": cfg.train.sft.dataset}]
        data["train"]["sft"]["dataset"] = None
    _shrink_data(data, changes)
    _shrink_compute(data, changes)
    data["run_dir"] = f"{cfg.run_path}-smoke"  # never the real run's directory, so its cache stays whole
    changes.append(f"run_dir: {cfg.run_path} -> {data['run_dir']}")
    return parse_config(data, "--smoke"), changes
