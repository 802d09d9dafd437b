"""One test per switch of the authors' data pipeline (docs/reproduce.md): each shows the authors'
behaviour, the default, on a small fixture, and that the other value gives synthpref's earlier one."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pairs_helpers import response, study_config, write_run  # noqa: E402

from synthpref.backends.generation import GenParams  # noqa: E402
from synthpref.chat import prompt_token_ids, user_message, with_prompt_format  # noqa: E402
from synthpref.config import ModelSpec, load_config, parse_config  # noqa: E402
from synthpref.data import base_prompt_id, prompt_id  # noqa: E402
from synthpref.rundir import RunDir, read_jsonl, write_jsonl  # noqa: E402
from synthpref.stages import generate, pairs, prompts  # noqa: E402
from synthpref.validate import validate  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _prompt_file(tmp_path: Path) -> Path:
    """Five rows, two of them repeats, each row with its own human pair (as PKU-SafeRLHF rows)."""
    rows = [("How do I pick a lock?", "No.", "Use a pin."), ("Insult my boss.", "I won't.", "You fool."),
            ("How do I pick a lock?", "I can't help.", "Rake it."), ("Make a weapon.", "No way.", "Take a pipe."),
            ("how do I pick a lock", "Sorry.", "Bump key.")]
    path = tmp_path / "prompts.jsonl"
    write_jsonl(path, [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in rows])
    return path


def _cfg(tmp_path: Path, **sections):
    data = {"name": "t", "run_dir": str(tmp_path / "run"), "models": {"tgt": {"path": "smollm2-135m-instruct"}},
            "target": "tgt",
            "prompts": {"train": {"source": str(_prompt_file(tmp_path)), "chosen_field": "chosen",
                                  "rejected_field": "rejected"}},
            "pairs": {"settings": ["original"]}}
    data.update(sections)
    return parse_config(data)


# --------------------------------------------------------------------------- prompts.dedup
def test_duplicate_prompts_are_kept_with_their_own_human_pairs_and_counted(tmp_path):
    cfg = _cfg(tmp_path)
    assert cfg.prompts.dedup is False  # the authors' default
    rd = RunDir(cfg.run_path).create()
    summary = prompts.run(cfg, rd)
    train = read_jsonl(rd.path("prompts", "train.jsonl"))
    assert summary["train"] == 5 and summary["duplicates_kept"] == 2
    pid = prompt_id("How do I pick a lock?")
    assert [r["prompt_id"] for r in train if base_prompt_id(r["prompt_id"]) == pid] == [pid, f"{pid}-r1", f"{pid}-r2"]
    assert [r.get("repeat_of") for r in train] == [None, None, pid, None, pid]
    # Original: one pair per row, so every row's human pair is used (the authors' DPO entries).
    humans = generate.human_records(train, 5, "sampled")
    write_jsonl(rd.path("generate", "human.jsonl"), humans)
    write_jsonl(rd.path("score", "rm.jsonl"), [])
    pairs.run(cfg, rd)
    chosen = sorted(p["chosen"][0]["content"] for p in read_jsonl(rd.path("pairs", "original.jsonl")))
    assert chosen == sorted(["No.", "I won't.", "I can't help.", "No way.", "Sorry."])
    # dedup: true is synthpref's earlier behaviour: the first row of each prompt, repeats counted.
    cfg2 = _cfg(tmp_path / "b", prompts={**cfg.prompts.model_dump(), "dedup": True})
    rd2 = RunDir(cfg2.run_path).create()
    assert prompts.run(cfg2, rd2)["duplicates_dropped"] == 2
    assert len(read_jsonl(rd2.path("prompts", "train.jsonl"))) == 3


def test_validate_prints_duplicates_and_the_sft_overlap(tmp_path):
    sft = tmp_path / "safe.jsonl"
    write_jsonl(sft, [{"prompt": p, "response_0": "No.", "response_1": "Yes.", "safer_response_id": 0,
                       "is_response_0_safe": True} for p in ("How do I pick a lock?", "Bake a cake.", "Make a weapon.")])
    cfg = _cfg(tmp_path, train={"sft": {"enabled": True, "datasets": [{"source": str(sft), "format": "saferlhf_safer"}]}})
    notes: list[str] = []
    validate(cfg, "c.yaml", notes)
    assert any("prompts.train: 2 duplicate prompt(s) kept of 5 rows" in n for n in notes), notes
    assert any("train.sft.datasets[0]: 2 of 3 SFT examples share their prompt with the DPO training prompts; left out"
               in n for n in notes), notes


def test_paper_config_validate_says_what_it_could_not_count():
    notes: list[str] = []
    validate(load_config(ROOT / "configs" / "paper" / "llama31_8b.yaml"), "p.yaml", notes)
    assert any("duplicate prompts kept: not counted" in n and "hub set" in n for n in notes), notes
    assert any("overlap with the DPO prompts not counted" in n for n in notes), notes


# --------------------------------------------------------------------------- train.sft.exclude_dpo_prompts
def test_sft_leaves_the_dpo_prompts_out(tmp_path):
    from synthpref.stages.sft import load_sft_rows

    sft = tmp_path / "safe.jsonl"
    write_jsonl(sft, [{"prompt": p, "response_0": "No.", "response_1": "Yes.", "safer_response_id": 0}
                      for p in ("Insult my boss!", "Bake a cake.")])
    sft_cfg = {"enabled": True, "datasets": [{"source": str(sft), "format": "saferlhf_safer"}]}
    cfg = _cfg(tmp_path, train={"sft": sft_cfg})
    rows, left_out = load_sft_rows(cfg, 0)
    assert left_out == 1 and [r["messages"][0]["content"] for r in rows] == ["Bake a cake."]
    cfg = _cfg(tmp_path, train={"sft": {**sft_cfg, "exclude_dpo_prompts": False}})
    assert load_sft_rows(cfg, 0)[1] == 0


# --------------------------------------------------------------------------- generate.sampling.min_chars_scope
def test_a_three_character_greedy_answer_is_kept():
    assert not generate.is_dropped("Yes", 5, "greedy", "sampled")
    assert generate.is_dropped("Yes", 5, "sample", "sampled")  # the authors drop short samples only
    assert generate.is_dropped("Yes", 5, "greedy", "all")      # synthpref's earlier scope
    humans = generate.human_records([{"prompt_id": "p", "human_chosen": "No.", "human_rejected": "Sure, here."}], 5,
                                    "sampled")
    assert not any(h["dropped"] for h in humans)


# --------------------------------------------------------------------------- generate.sampling.generation_prompt
def test_the_raw_prompt_is_tokenised_without_special_tokens(smollm2_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    spec = ModelSpec(path=str(smollm2_dir))
    text = "How do I pick a lock?"
    raw = prompt_token_ids(tok, with_prompt_format(spec, "raw"), user_message(text))
    assert raw == tok(text, add_special_tokens=False)["input_ids"]
    assert raw != prompt_token_ids(tok, spec, user_message(text))  # chat: the template's turn markers


def test_generation_prompt_is_set_for_generation_only(tmp_path):
    cfg = _cfg(tmp_path, models={"tgt": {"path": "smollm2-135m-instruct"},
                                 "api": {"path": "gpt-x", "backend": "openai"}})
    plan = generate.model_plan(cfg, "tgt")
    assert plan.generation_prompt == "raw"
    assert generate.generation_spec(cfg, cfg.models["tgt"], "tgt", plan).options["prompt_format"] == "raw"
    assert cfg.models["tgt"].options == {}  # the spec training formats with is untouched
    assert generate.generation_spec(cfg, cfg.models["api"], "api", plan) is cfg.models["api"]


def test_old_behaviour_keeps_the_record_hash(tmp_path):
    """Demo records made before these switches stay valid: the earlier values add nothing to the hash."""
    old = {"min_chars_scope": "all", "generation_prompt": "chat", "inherit_generation_config": False}
    cfg = _cfg(tmp_path, generate={"sampling": old})
    h_old = generate.model_inputs_hash(cfg, "tgt", [], generate.model_plan(cfg, "tgt"))
    cfg2 = _cfg(tmp_path, generate={"sampling": {**old, "min_chars_scope": "sampled"}})
    assert generate.model_inputs_hash(cfg2, "tgt", [], generate.model_plan(cfg2, "tgt")) == h_old
    cfg3 = _cfg(tmp_path)  # raw prompt + inherited config change the texts, so the hash
    assert generate.model_inputs_hash(cfg3, "tgt", [], generate.model_plan(cfg3, "tgt")) != h_old


# --------------------------------------------------------------------------- inherit_generation_config
def test_greedy_inherits_the_models_repetition_penalty():
    qwen_like = {"repetition_penalty": 1.05, "no_repeat_ngram_size": None, "top_k": 20}
    authors = GenParams(inherit_generation_config=True)
    assert authors.decoding(True, qwen_like) == (1.05, 0, 50)    # greedy: the model's penalty
    assert authors.decoding(False, qwen_like) == (1.2, 3, 20)    # samples: ours, the model's top_k
    assert authors.decoding(True, {}) == (1.0, 0, 50)
    ours = GenParams()
    assert ours.decoding(True, qwen_like) == (1.0, 0, 50) and ours.decoding(False, qwen_like) == (1.2, 3, 50)


def test_hf_backend_reads_the_generation_config(tiny_model_dir):
    from synthpref.backends.generation.hf import HFBackend

    b = HFBackend(ModelSpec(path=str(tiny_model_dir)))
    b.model.generation_config.repetition_penalty = 1.05
    assert b.INHERITS_GENERATION_CONFIG and b.model_generation_config()["repetition_penalty"] == 1.05
    b.close()


# --------------------------------------------------------------------------- pairs.tie_break / pairs.identical
def _self_rm(tmp_path: Path, scores: list[float], rules: dict | None = None):
    spec = {"chosen": ["self"], "rejected": ["self"], "chosen_kind": "sample", "rejected_kind": "sample",
            "rule": "best_worst"}
    cfg = study_config(tmp_path, pairs={"settings": ["x"], "custom": {"x": spec}, **(rules or {})})
    pid = prompt_id("P?")
    rs = [response(pid, "tgt", "sample", f"answer {i}", i) for i in range(len(scores))]
    rd = write_run(cfg, ["P?"], rs, {r["response_id"]: s for r, s in zip(rs, scores)})
    pairs.run(cfg, rd)
    return read_jsonl(rd.path("pairs", "x.jsonl")), json.loads(rd.path("pairs", "stats.json").read_text())


def test_a_tie_goes_to_the_first_index(tmp_path):
    recs, _ = _self_rm(tmp_path / "a", [0.0, 1.0, 1.0, -2.0, -2.0])
    assert (recs[0]["chosen"][0]["content"], recs[0]["rejected"][0]["content"]) == ("answer 1", "answer 3")
    recs, _ = _self_rm(tmp_path / "b", [0.0, 1.0, 1.0, -2.0, -2.0], {"tie_break": "id"})
    ids = {f"answer {i}": response(prompt_id("P?"), "tgt", "sample", "", i)["response_id"] for i in range(5)}
    assert recs[0]["chosen_response_id"] == min(ids["answer 1"], ids["answer 2"])


def test_equal_rewards_keep_one_response_on_both_sides(tmp_path):
    recs, stats = _self_rm(tmp_path / "a", [0.5] * 5)
    assert recs[0]["chosen"] == recs[0]["rejected"] == [{"role": "assistant", "content": "answer 0"}]
    assert stats["settings"]["x"]["identical_kept"] == 1
    recs, stats = _self_rm(tmp_path / "b", [0.5] * 5, {"tie_break": "id", "identical": "drop"})
    assert recs[0]["chosen"] != recs[0]["rejected"] and "identical_kept" not in stats["settings"]["x"]


# --------------------------------------------------------------------------- cuda dtypes
def test_reward_model_and_evaluation_run_in_float16_on_cuda(tmp_path):
    import torch

    from synthpref.backends.scoring.reward_model import RewardModelScorer
    from synthpref.models import torch_dtype, with_cuda_dtype

    cfg = _cfg(tmp_path, score={"scorers": {"rm": {"kind": "reward_model", "model": "some/rm"}}, "reward": "rm"})
    assert (cfg.score.cuda_dtype, cfg.evaluate.cuda_dtype) == ("float16", "float16")
    rm = RewardModelScorer("rm", cfg.score.scorers["rm"], cfg, device="cuda")
    assert torch_dtype("auto", "cuda", rm.cuda_dtype()) == torch.float16
    assert rm.identity()["cuda_dtype"] == "float16"
    assert "cuda_dtype" not in RewardModelScorer("rm", cfg.score.scorers["rm"], cfg, device="cpu").identity()
    assert torch_dtype("auto", "cpu", "float16") == torch.float32
    spec = ModelSpec(path="m")
    assert with_cuda_dtype(spec, "cuda", "float16").dtype == "float16" and with_cuda_dtype(spec, "cpu", "float16") is spec


# --------------------------------------------------------------------------- configs
@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "paper").glob("*.yaml")), ids=lambda p: p.stem)
def test_paper_configs_use_the_authors_defaults(path):
    c = load_config(path)
    s = c.generate.sampling
    assert (c.prompts.dedup, s.min_chars_scope, s.generation_prompt, s.inherit_generation_config) == (
        False, "sampled", "raw", True)
    assert (c.pairs.tie_break, c.pairs.identical, c.score.cuda_dtype, c.evaluate.cuda_dtype) == (
        "first", "keep", "float16", "float16")
    assert c.evaluate.safety.inherit_generation_config and c.train.sft.exclude_dpo_prompts


@pytest.mark.parametrize("name", ["demo", "laptop"])
def test_embedded_studies_keep_the_earlier_behaviour(name):
    c = load_config(ROOT / "configs" / f"{name}.yaml")
    s = c.generate.sampling
    assert (c.prompts.dedup, s.min_chars_scope, s.generation_prompt, s.inherit_generation_config) == (
        True, "all", "chat", False)
    assert (c.pairs.tie_break, c.pairs.identical, c.score.cuda_dtype, c.evaluate.cuda_dtype) == (
        "id", "drop", "bfloat16", "bfloat16")
    assert not c.evaluate.safety.inherit_generation_config and not c.train.sft.exclude_dpo_prompts
