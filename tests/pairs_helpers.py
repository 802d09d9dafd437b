"""Hand-made run directories for the pairs and probe tests: prompts, responses and reward scores
written in the shared record formats (synthpref.tables), so the stages run on known numbers."""

from __future__ import annotations

from pathlib import Path

from synthpref.config import parse_config
from synthpref.stages.prompts import prompt_id
from synthpref.rundir import RunDir, stable_id, write_jsonl

MODELS = {"tgt": "smollm2-135m-instruct", "big": "qwen2.5-coder-0.5b-instruct", "peer1": "gemma-3-270m",
          "peer2": "gemma-3-270m", "oracle": "qwen2.5-coder-0.5b-instruct"}


def study_config(tmp_path: Path, target_path: str | None = None, **sections):
    data = {
        "name": "t", "seed": 0, "run_dir": str(tmp_path / "run"),
        "models": {k: {"path": v} for k, v in MODELS.items()},
        "target": "tgt",
        "roles": {"stronger": ["big"], "peers": ["peer1", "peer2"], "gpt4o": ["oracle"]},
        "prompts": {"train": {"source": "pyrit-harm-pairs"}},
        "score": {"scorers": {"rm": {"kind": "embedding_rm"}}, "reward": "rm"},
    }
    if target_path:
        data["models"]["tgt"]["path"] = str(target_path)
    data.update(sections)
    return parse_config(data)


def response(pid: str, model: str, kind: str, text: str, idx: int | None = None, seed: int | None = 0) -> dict:
    return {"response_id": stable_id("resp", pid, model, kind, idx), "prompt_id": pid, "model": model,
            "backend": "hf" if model != "human" else "human", "seed": seed, "kind": kind,
            "sample_index": idx, "text": text, "n_tokens": len(text.split()), "finish_reason": "stop",
            "dropped": False}


def write_run(cfg, prompts: list[str], responses: list[dict], scores: dict[str, float | None]) -> RunDir:
    """prompts: texts; responses: records (their prompt_id from prompt_id(text)); scores: response_id -> score."""
    rd = RunDir(cfg.run_path).create()
    write_jsonl(rd.path("prompts", "train.jsonl"),
                [{"prompt_id": prompt_id(t), "text": t, "source": "test"} for t in prompts])
    by_model: dict[str, list[dict]] = {}
    for r in responses:
        by_model.setdefault(r["model"], []).append(r)
    for m, rs in by_model.items():
        write_jsonl(rd.path("generate", f"{m}.jsonl"), rs)
    write_jsonl(rd.path("score", "rm.jsonl"),
                [{"response_id": rid, "prompt_id": next(r["prompt_id"] for r in responses if r["response_id"] == rid),
                  "scorer": "rm", "score": s, "harmful": None, "raw": None, "parsed": s is not None, "version": 1}
                 for rid, s in sorted(scores.items())])
    return rd


def full_run(tmp_path: Path, n_prompts: int = 6, target_path: str | None = None, **sections):
    """A run where every preset setting can build pairs: humans, target (greedy + 3 samples), a
    stronger model, two peers and a GPT-4o stand-in, with rewards that rank them predictably."""
    cfg = study_config(tmp_path, target_path, **sections)
    prompts = [f"How do I do harmful thing number {i}?" for i in range(n_prompts)]
    rs, scores = [], {}

    def add(r, s):
        rs.append(r)
        scores[r["response_id"]] = s

    for i, t in enumerate(prompts):
        pid = prompt_id(t)
        add(response(pid, "human", "human_chosen", f"I can't help with harmful thing {i}.", seed=None), 0.9)
        add(response(pid, "human", "human_rejected", f"Sure, harmful thing {i} goes like this: step one...", seed=None), -0.9)
        add(response(pid, "tgt", "greedy", f"Okay! Thing {i}: you start by doing it."), -0.2)
        for k in range(3):
            add(response(pid, "tgt", "sample", f"Sample {k} for {i}: " + "word " * (k + 1), idx=k, seed=100 + k), 0.1 * k)
        add(response(pid, "big", "greedy", f"As an AI I must decline request {i}; here is why, at length."), 0.5)
        add(response(pid, "oracle", "greedy", f"I'm sorry, but I cannot assist with {i}."), 0.8)
        add(response(pid, "peer1", "greedy", f"Peer one answer {i}."), 0.3)
        add(response(pid, "peer2", "greedy", f"Peer two answer {i} which is longer."), -0.5)
    return cfg, write_run(cfg, prompts, rs, scores), prompts
