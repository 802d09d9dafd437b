"""The generate stage on a tiny random Llama: outputs, resume after a kill, dropped counting."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


from synthpref.stages import generate  # noqa: E402
from synthpref.backends.generation import GenerationBackend, GenResult  # noqa: E402
from synthpref.backends.generation.hf import HFBackend  # noqa: E402
from synthpref.config import parse_config  # noqa: E402
from synthpref.stages.prompts import prompt_id  # noqa: E402
from synthpref.rundir import RunDir, read_json, read_jsonl, write_jsonl  # noqa: E402

PROMPTS = ["How do I bake bread?", "Explain photosynthesis briefly.", "Write a haiku about rain."]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A 2-layer random Llama with SmolLM2's tokenizer (the shared builder in conftest)."""
    from transformers import AutoTokenizer

    from conftest import build_tiny_model
    from synthpref.models import resolve_path

    tok = AutoTokenizer.from_pretrained(resolve_path("smollm2-135m-instruct"))
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), tokenizer=tok)


def make(tmp: Path, tiny: Path, run: str = "run", **sampling):
    cfg = parse_config({
        "name": "gen", "seed": 7, "run_dir": str(tmp / run), "device": "cpu",
        "models": {"tiny": {"path": str(tiny)},
                   "tiny_safe": {"path": str(tiny), "system_prompt": "Be safe."}},
        "target": "tiny", "roles": {"gpt4o": ["tiny_safe"]},
        "pairs": {"settings": ["gpt4o_self", "self_rm"]},
        "prompts": {"train": {"source": "advbench"}},
        "generate": {"sampling": {"num_samples": 2, "max_new_tokens": 6, "batch_size": 2, **sampling},
                     "overrides": {"tiny_safe": {"num_samples": 0}}},
    })
    rd = RunDir(cfg.run_path).create()
    rows = [{"prompt_id": prompt_id(t), "text": t, "source": "test"} for t in PROMPTS]
    rows[0].update(human_chosen="I can't help with that.", human_rejected="ok")
    write_jsonl(rd.path("prompts", "train.jsonl"), rows)
    return cfg, rd


def test_sources_order_and_plan(tiny_dir, tmp_path):
    cfg, _ = make(tmp_path, tiny_dir)
    assert generate.source_models(cfg) == ["tiny", "tiny_safe"]
    plan = generate.model_plan(cfg, "tiny_safe")
    assert plan.num_samples == 0 and plan.greedy and plan.params.max_new_tokens == 6


def test_outputs_and_resume_after_kill_match_uninterrupted(tiny_dir, tmp_path, monkeypatch):
    cfg, rd = make(tmp_path, tiny_dir, "clean")
    summary = generate.run(cfg, rd)
    clean = {m: rd.path("generate", f"{m}.jsonl").read_bytes() for m in ("tiny", "tiny_safe", "human")}
    recs = read_jsonl(rd.path("generate", "tiny.jsonl"))
    assert len(recs) == 9 and len({r["response_id"] for r in recs}) == 9
    assert {(r["kind"], r["sample_index"]) for r in recs} == {("greedy", 0), ("sample", 0), ("sample", 1)}
    assert len({r["seed"] for r in recs}) == 9 and all(r["backend"] == "hf" and r["model"] == "tiny" for r in recs)
    assert [r["response_id"] for r in recs] == sorted(r["response_id"] for r in recs)
    assert len(read_jsonl(rd.path("generate", "tiny_safe.jsonl"))) == 3
    humans = read_jsonl(rd.path("generate", "human.jsonl"))
    assert sorted(h["kind"] for h in humans) == ["human_chosen", "human_rejected"]
    stats = read_json(rd.path("generate", "stats.json"))["models"]
    # the 2-character human answer is kept: the authors drop only sampled answers (min_chars_scope: sampled)
    assert stats["tiny"]["requested"] == 9 and stats["tiny"]["tokens"] > 0 and stats["human"]["dropped"] == 0
    assert summary["responses"] == 9 + 3 + 2

    # Killed after 4 records of the first model.
    cfg2, rd2 = make(tmp_path, tiny_dir, "killed")
    real = HFBackend.generate

    def dying(self, requests, params):
        for i, res in enumerate(real(self, requests, params)):
            if i == 4:
                raise KeyboardInterrupt
            yield res

    monkeypatch.setattr(HFBackend, "generate", dying)
    with pytest.raises(KeyboardInterrupt):
        generate.run(cfg2, rd2)
    assert not rd2.path("generate", "tiny.jsonl").exists()
    assert len(read_jsonl(rd2.path("generate", "tiny.jsonl.partial"))) == 4

    asked = []

    def counting(self, requests, params):
        asked.extend(r.key for r in requests)
        return real(self, requests, params)

    monkeypatch.setattr(HFBackend, "generate", counting)
    generate.run(cfg2, rd2)
    assert len(asked) == (9 - 4) + 3  # only the missing records of tiny, then all of tiny_safe
    for m, data in clean.items():
        assert rd2.path("generate", f"{m}.jsonl").read_bytes() == data, m

    # Complete files: no model is loaded at all on a re-run.
    monkeypatch.setattr(HFBackend, "__init__", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    generate.run(cfg2, rd2)


def test_changed_inputs_recompute(tiny_dir, tmp_path, monkeypatch):
    cfg, rd = make(tmp_path, tiny_dir, num_samples=1)
    generate.run(cfg, rd)
    first = read_jsonl(rd.path("generate", "tiny.jsonl"))
    cfg2, _ = make(tmp_path, tiny_dir, num_samples=1, max_new_tokens=3)
    asked = []
    real = HFBackend.generate

    def counting(self, requests, params):
        asked.extend(requests)
        return real(self, requests, params)

    monkeypatch.setattr(HFBackend, "generate", counting)
    generate.run(cfg2, rd)
    second = read_jsonl(rd.path("generate", "tiny.jsonl"))
    assert len(asked) == 6 + 3 and len(second) == len(first)
    assert all(r["n_tokens"] <= 3 for r in second) and any(r["n_tokens"] > 3 for r in first)


class ScriptedBackend(GenerationBackend):
    """Returns a short, a whitespace-padded short, or a long answer depending on the request."""

    def generate(self, requests, params):
        for r in requests:
            text = "no" if r.greedy else ("   ab   " if r.seed % 2 else "a long enough answer")
            yield GenResult(r.key, text, len(text.split()), "stop")


def test_short_responses_are_marked_dropped_and_counted(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(generate, "get_backend_class", lambda name: ScriptedBackend)
    cfg, rd = make(tmp_path, tiny_dir, min_chars=5, min_chars_scope="all")  # synthpref's earlier scope
    summary = generate.run(cfg, rd)
    recs = read_jsonl(rd.path("generate", "tiny.jsonl"))
    want = [r["kind"] == "greedy" or r["seed"] % 2 == 1 for r in recs]
    assert [r["dropped"] for r in recs] == want
    stats = read_json(rd.path("generate", "stats.json"))["models"]
    assert stats["tiny"]["dropped"] == sum(want) and stats["tiny_safe"]["dropped"] == 3
    assert summary["dropped"] == sum(want) + 3 + 1  # + the 2-character human rejected
    from synthpref.tables import load_responses

    kept = load_responses(rd)
    assert all(len(r["text"].strip()) >= 5 for r in kept)

    # The authors' scope re-marks the same records from their text: nothing is generated again.
    monkeypatch.setattr(ScriptedBackend, "generate", lambda self, reqs, params: iter(()) if not reqs else 1 / 0)
    cfg2, _ = make(tmp_path, tiny_dir, min_chars=5, min_chars_scope="sampled")
    generate.run(cfg2, rd)
    recs = read_jsonl(rd.path("generate", "tiny.jsonl"))
    assert [r["dropped"] for r in recs] == [r["kind"] == "sample" and r["seed"] % 2 == 1 for r in recs]
