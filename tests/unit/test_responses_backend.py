"""`backend: responses`: answers from a prompt/response JSONL (e.g. the authors' released GPT-4o
answers), joined to the study's prompts by normalised text; unmatched prompts counted."""

from __future__ import annotations

import pytest

from synthpref.backends.generation import GenRequest, get_backend_class
from synthpref.backends.generation.base import GenParams
from synthpref.config import ModelSpec, parse_config
from synthpref.errors import ConfigError, DataError
from synthpref.rundir import RunDir, read_json, read_jsonl, write_jsonl
from synthpref.stages import generate
from synthpref.stages.prompts import prompt_id
from synthpref.validate import validate


def req(key: str, text: str, greedy: bool = True) -> GenRequest:
    return GenRequest(key, ({"role": "user", "content": text},), seed=0, greedy=greedy)


@pytest.fixture
def answers(tmp_path):
    f = tmp_path / "gpt4o.jsonl"
    write_jsonl(f, [{"prompt": "How do I pick a lock?", "response": "  Sorry, but I can't assist with that. "},
                    {"prompt": "Is it okay to eat\u00a0bread with  mold?\n", "response": "No, throw it away."},
                    {"prompt": "How do I pick a lock?", "response": "a later duplicate"}])
    return f


def test_join_by_normalised_text_and_unmatched_counted(answers):
    b = get_backend_class("responses")(ModelSpec(path=str(answers), backend="responses"))
    out = {r.key: r.text for r in b.generate([req("a", "How do I pick a lock?"),
                                               req("b", "Is it okay to eat bread with mold?"),
                                               req("c", "Something the file lacks")], GenParams())}
    assert out == {"a": "Sorry, but I can't assist with that.", "b": "No, throw it away."}
    assert b.report() == {"source": str(answers), "answers_in_file": 2, "matched": 2, "unmatched": 1}
    with pytest.raises(ConfigError, match="num_samples: 0"):
        list(b.generate([req("d", "How do I pick a lock?", greedy=False)], GenParams()))


def test_bad_rows_and_missing_file(tmp_path):
    f = tmp_path / "bad.jsonl"
    write_jsonl(f, [{"instruction": "x", "output": "y"}])
    with pytest.raises(DataError, match="needs fields 'prompt' and 'response'"):
        get_backend_class("responses")(ModelSpec(path=str(f), backend="responses"))
    b = get_backend_class("responses")(ModelSpec(path=str(f), backend="responses",
                                                 options={"prompt_field": "instruction", "response_field": "output"}))
    assert b.answers == {"x": "y"}
    with pytest.raises(ConfigError, match="does not exist"):
        get_backend_class("responses")(ModelSpec(path=str(tmp_path / "nope.jsonl"), backend="responses"))


def test_generate_stage_with_the_gpt4o_role_from_a_file(tmp_path, answers):
    cfg = parse_config({
        "name": "r", "seed": 1, "run_dir": str(tmp_path / "run"),
        "models": {"tgt": {"path": "smollm2-135m-instruct"},
                   "gpt4o_released": {"path": str(answers), "backend": "responses"}},
        "target": "tgt", "roles": {"gpt4o": ["gpt4o_released"]},
        "prompts": {"train": {"source": "advbench"}}, "pairs": {"settings": ["gpt4o_self"]},
        "generate": {"sources": ["gpt4o_released"], "overrides": {"gpt4o_released": {"num_samples": 0}}},
    })
    assert not [p for p in validate(cfg, "c.yaml") if "gpt4o_released" in p]
    rd = RunDir(cfg.run_path).create()
    texts = ["How do I pick a lock?", "Unknown prompt"]
    write_jsonl(rd.path("prompts", "train.jsonl"), [{"prompt_id": prompt_id(t), "text": t, "source": "t"} for t in texts])
    generate.run(cfg, rd)
    recs = read_jsonl(rd.path("generate", "gpt4o_released.jsonl"))
    assert [(r["prompt_id"], r["text"], r["kind"]) for r in recs] == [
        (prompt_id(texts[0]), "Sorry, but I can't assist with that.", "greedy")]
    stats = read_json(rd.path("generate", "stats.json"))["models"]["gpt4o_released"]
    assert stats["requested"] == 2 and stats["generated"] == 1 and stats["unmatched"] == 1

    missing = cfg.model_copy(update={"models": {**cfg.models, "gpt4o_released": cfg.models["gpt4o_released"].model_copy(
        update={"path": str(tmp_path / "nope.jsonl")})}})
    assert any("responses file" in p for p in validate(missing, "c.yaml"))


def test_authors_prompt_split_layout_reads_with_dotted_fields(tmp_path):
    """data/safeRLHF-50k rows hold chosen/rejected conversations; dotted fields read them."""
    from synthpref.config import PromptSetSpec
    from synthpref.stages.prompts import load_prompt_set

    f = tmp_path / "train.jsonl"
    write_jsonl(f, [{"chosen": [{"content": "How do I pick a lock?", "role": "user"},
                                {"content": "I can't help with that.", "role": "assistant"}],
                     "rejected": [{"content": "How do I pick a lock?", "role": "user"},
                                  {"content": "Use a tension wrench.", "role": "assistant"}]}])
    rows = load_prompt_set(PromptSetSpec(source=str(f), text_field="chosen.0.content",
                                         chosen_field="chosen.1.content", rejected_field="rejected.1.content"))
    assert [(r["text"], r["human_chosen"], r["human_rejected"]) for r in rows] == [
        ("How do I pick a lock?", "I can't help with that.", "Use a tension wrench.")]
    with pytest.raises(DataError, match="no 'chosen.5.content' text"):
        load_prompt_set(PromptSetSpec(source=str(f), text_field="chosen.5.content"))


def test_a_missing_file_is_reported_under_the_field_that_names_it(tmp_path):
    cls = get_backend_class("responses")
    by_path = ModelSpec(path=str(tmp_path / "nope.jsonl"), backend="responses")
    by_option = ModelSpec(path="gpt-4o", backend="responses", options={"file": str(tmp_path / "nope.jsonl")})
    assert cls.check_spec(by_path)[0] == "path" and "nope.jsonl" in cls.check_spec(by_path)[1]
    assert cls.check_spec(by_option)[0] == "options.file" and "nope.jsonl" in cls.check_spec(by_option)[1]
    assert cls.check_spec(by_option.model_copy(update={"options": {"file": 3}}))[0] == "options.file"
