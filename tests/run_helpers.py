"""Tiny finished run directories written by hand, in the layout the stages write (for compare/export tests)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

ADVBENCH_SHA = "a" * 64


def _safety(asr: float, judge: str, n: int = 100, set_name: str = "advbench") -> dict:
    k = round(asr * n)
    return {"set": set_name, "judge": judge, "format": "chat", "value": k / n, "k": k, "n": n,
            "interval": [max(0.0, k / n - 0.1), min(1.0, k / n + 0.1)]}


def results(asr: dict[str, float], judges=("harm", "keywords"), versions=None, set_sha=ADVBENCH_SHA,
            arc: float | None = 0.5, arc_limit: int = 40) -> dict:
    """An eval/<model>/results.json: ASR per judge (`asr` maps judge -> rate), one general task."""
    versions = versions or {}
    kinds = {"harm": "harm_head", "keywords": "keywords"}
    out = {"safety": [_safety(asr[j], j) for j in judges if j in asr],
           "prompt_sets": {"advbench": {"n": 100, "sha256": set_sha}},
           "judges": {j: {"kind": kinds.get(j, "llm_judge"), "version": versions.get(j, f"{j}-v1")} for j in judges},
           "general": {}}
    if arc is not None:
        out["general"]["arc_challenge"] = {"value": arc, "interval": [arc - 0.15, arc + 0.15], "n": arc_limit,
                                           "metric": "acc_norm", "num_fewshot": 0, "limit": arc_limit}
    return out


def pair(setting: str, i: int) -> dict:
    return {"pair_id": f"{setting}-{i}", "prompt_id": f"p{i}", "setting": setting,
            "prompt": [{"role": "user", "content": f"question {i}"}],
            "chosen": [{"role": "assistant", "content": f"I will not help with {i}."}],
            "rejected": [{"role": "assistant", "content": f"Sure, step one for {i}."}],
            "chosen_model": "human" if setting == "hc_self" else "tiny", "rejected_model": "tiny",
            "chosen_kind": "human_chosen" if setting == "hc_self" else "sample", "rejected_kind": "greedy",
            "chosen_response_id": f"c{i}", "rejected_response_id": f"r{i}", "chosen_score": 1.5,
            "rejected_score": None if i == 0 else 0.5, "margin": None if i == 0 else 1.0,
            "chosen_seed": None if setting == "hc_self" else 7, "rejected_seed": 3, "swapped": False}


def make_run(root: Path, *, name: str = "study", target: str = "smollm2-135m-instruct", seed: int = 0,
             asr: dict[str, dict[str, float]] | None = None, stages=("prompts", "pairs", "train", "evaluate"),
             pairs_per_setting: int = 3, eval_kwargs: dict | None = None, probe: dict | None = None) -> Path:
    """A finished run: config.yaml, manifest.json, pairs/, train/<s>/ (adapter), eval/<model>/results.json.
    `asr`: model -> {judge: rate}; its non-sft keys are the pair settings."""
    asr = asr if asr is not None else {"sft": {"harm": 0.6, "keywords": 0.9}, "hc_self": {"harm": 0.2, "keywords": 0.7},
                                       "self_rm": {"harm": 0.5, "keywords": 0.8}}
    settings = [m for m in asr if m != "sft"]
    cfg = {"name": name, "seed": seed, "target": "tiny",
           "models": {"tiny": {"path": target}, "big": {"path": "qwen2.5-coder-1.5b-instruct", "stand_in_for": None}},
           "roles": {"stronger": ["big"], "peers": [], "gpt4o": []},
           "prompts": {"train": {"source": "pyrit-human-pairs", "offset": 0, "limit": pairs_per_setting}},
           "generate": {"sampling": {"num_samples": 5, "temperature": 0.5, "top_p": 0.9, "max_new_tokens": 48,
                                     "min_chars": 5}, "overrides": {}},
           "score": {"scorers": {"rm": {"kind": "embedding_rm", "model": None}, "harm": {"kind": "harm_head"},
                                 "keywords": {"kind": "keywords"}}, "reward": "rm"},
           "pairs": {"settings": settings, "custom": {}},
           "evaluate": {"safety": {"judges": ["keywords", "harm"]}},
           "train": {"beta": 0.1, "loss_type": "sigmoid", "learning_rate": 0.001, "num_train_epochs": 1}}
    root.mkdir(parents=True)
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    (root / "manifest.json").write_text(json.dumps({"seed": seed, "stages": {s: {"status": "done"} for s in stages}}))
    for s in settings:
        f = root / "pairs" / f"{s}.jsonl"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("".join(json.dumps(pair(s, i)) + "\n" for i in range(pairs_per_setting)))
        model = root / "train" / s / "model"
        model.mkdir(parents=True)
        (model / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/machine/cache/hf", "r": 4}))
        (model / "adapter_model.safetensors").write_bytes(b"weights of " + s.encode())
        (root / "train" / s / "done.json").write_text(json.dumps(
            {"start_model": target, "n_pairs": pairs_per_setting, "global_step": 2, "train_loss": 0.5}))
    (root / "pairs" / "stats.json").write_text(json.dumps({"reward": "rm", "settings": {
        s: {"pairs": pairs_per_setting, "prompts": pairs_per_setting, "dropped": {}} for s in settings},
        "reward_agreement": {"scorer": "rm", "kind": "embedding_rm", "pairwise_accuracy": 0.743, "pairs": 74,
                             "pairs_set": "pyrit-harm-pairs", "pairs_how": "held out"}}))
    for model, rates in asr.items():
        f = root / "eval" / model / "results.json"
        f.parent.mkdir(parents=True)
        f.write_text(json.dumps(results(rates, **(eval_kwargs or {}))))
    if probe is not None:
        (root / "probe").mkdir()
        (root / "probe" / "results.json").write_text(json.dumps(probe))
    return root
