"""The paper's pipeline order: SFT is its own stage before generation, and generation, the probe
and DPO all use the SFT model; SFT datasets run one after the other; splits are checked up front."""

from __future__ import annotations

from pathlib import Path

import pytest

from synthpref import hub, lineage
from synthpref import runner
from synthpref.config import parse_config
from synthpref.rundir import RunDir, read_json, write_jsonl
from synthpref.stages import generate, sft, train
from synthpref.stages.prompts import prompt_id
from synthpref.stages.sft_data import check_split, load_sft_rows
from synthpref.validate import validate


def test_stage_order_puts_sft_before_generate():
    assert list(runner.ORDER) == ["prompts", "sft", "generate", "score", "pairs", "probe", "train", "evaluate",
                                   "report"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from conftest import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-sft"), seed=1)


def chat_rows(n: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"Say hi {i}"},
                          {"role": "assistant", "content": "Hi there, friend."}]} for i in range(n)]


def saferlhf_rows() -> list[dict]:
    return [{"prompt": f"How do I hurt someone {i}?", "response_0": "Here is how.", "response_1": "I won't help.",
             "is_response_0_safe": False, "is_response_1_safe": i != 3, "safer_response_id": 1} for i in range(6)]


@pytest.fixture
def sft_sources(tmp_path) -> tuple[Path, Path]:
    """A saved DatasetDict with UltraChat's split names, and a SafeRLHF-style local JSONL."""
    import datasets

    chat = tmp_path / "ultrachat_like"
    datasets.DatasetDict({"train_sft": datasets.Dataset.from_list(chat_rows(8)),
                          "test_sft": datasets.Dataset.from_list(chat_rows(2))}).save_to_disk(str(chat))
    safe = tmp_path / "saferlhf.jsonl"
    write_jsonl(safe, saferlhf_rows())
    return chat, safe


def make(tmp_path: Path, tiny: Path, sft_section: dict | None, **train_extra):
    cfg = parse_config({
        "name": "sft", "seed": 3, "run_dir": str(tmp_path / "run"), "device": "cpu",
        "models": {"tiny": {"path": str(tiny)}}, "target": "tiny",
        "prompts": {"train": {"source": "advbench"}}, "pairs": {"settings": ["self_rm"]},
        "generate": {"sampling": {"num_samples": 1, "max_new_tokens": 4, "batch_size": 2}},
        "train": {"sft": sft_section or {"enabled": False}, **train_extra},
    })
    return cfg, RunDir(cfg.run_path).create()


# --------------------------------------------------------------------------- split check
def test_split_check_on_a_saved_datasetdict(sft_sources):
    from synthpref.config import SFTData

    chat, safe = sft_sources
    assert check_split(SFTData(source=str(chat), split="train_sft"), "w") == (None, None)
    problem, _ = check_split(SFTData(source=str(chat), split="train"), "train.sft.datasets[0]")
    assert problem.startswith("train.sft.datasets[0].split: 'train' is not a split of")
    assert "available: train_sft, test_sft" in problem
    problem, _ = check_split(SFTData(source=str(chat)), "w")
    assert "required" in problem and "train_sft" in problem
    problem, _ = check_split(SFTData(source=str(safe), split="train_sft"), "w")
    assert "local file has only 'train'" in problem
    assert check_split(SFTData(source=str(safe), format="saferlhf_safer"), "w") == (None, None)


def test_split_check_for_hub_datasets_offline(monkeypatch):
    import datasets

    from synthpref.config import SFTData

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach the hub")

    from synthpref.stages import sft_data

    monkeypatch.setattr(datasets, "get_dataset_split_names", offline)
    monkeypatch.setattr(hub, "_STATE", {"why": None})  # the hub "answers" the probe; the call fails
    # Known datasets are checked offline from their cards' splits: UltraChat has no 'train'.
    problem, note = check_split(SFTData(source="HuggingFaceH4/ultrachat_200k", split="train"), "w")
    assert "did you mean 'train_sft'" in problem and "train_gen" in problem and note is None
    assert check_split(SFTData(source="HuggingFaceH4/ultrachat_200k", split="train_sft"), "w") == (None, None)
    # Another hub dataset: a clear note, not a silent pass and not a false failure.
    problem, note = check_split(SFTData(source="someone/chat-data", split="train"), "w")
    assert problem is None and "could not check split 'train'" in note and "ConnectionError" in note
    # Offline mode (or no answer to the probe): a note without asking.
    monkeypatch.setattr(hub, "_STATE", {"why": "HF_HUB_OFFLINE is set"})
    problem, note = check_split(SFTData(source="someone/chat-data", split="train"), "w")
    assert problem is None and "HF_HUB_OFFLINE is set" in note
    # Prompt sets from the hub get the same check.
    assert "is not a split of 'PKU-Alignment/PKU-SafeRLHF'" in sft_data.check_hub_split(
        "PKU-Alignment/PKU-SafeRLHF", "validation", "prompts.train")[0]
    # When the hub answers, its splits are used.
    monkeypatch.setattr(hub, "_STATE", {"why": None})
    monkeypatch.setattr(datasets, "get_dataset_split_names", lambda *a, **k: ["train", "validation"])
    problem, _ = check_split(SFTData(source="someone/chat-data", split="test"), "w")
    assert "available: train, validation" in problem


def test_validate_catches_a_wrong_split_before_compute(tmp_path, tiny, sft_sources):
    chat, _ = sft_sources
    cfg, _ = make(tmp_path, tiny, {"enabled": True, "datasets": [{"source": str(chat), "split": "train"}]})
    problems = validate(cfg, "c.yaml")
    assert any("c.yaml: train.sft.datasets[0].split: 'train' is not a split" in p for p in problems), problems
    cfg, _ = make(tmp_path, tiny, {"enabled": True, "datasets": [{"source": str(chat), "split": "train_sft"}]})
    assert not [p for p in validate(cfg, "c.yaml") if "sft" in p]


def test_saferlhf_safer_rows(sft_sources):
    from synthpref.config import SFTData

    _, safe = sft_sources
    rows = load_sft_rows(SFTData(source=str(safe), format="saferlhf_safer"))
    assert len(rows) == 5  # row 3's safer response is labelled unsafe
    assert rows[0]["messages"] == [{"role": "user", "content": "How do I hurt someone 0?"},
                                   {"role": "assistant", "content": "I won't help."}]
    assert len(load_sft_rows(SFTData(source=str(safe), format="saferlhf_safer", safe_only=False))) == 6


# --------------------------------------------------------------------------- pipeline
def test_stage_hashes_follow_sft(tmp_path, tiny, sft_sources):
    chat, _ = sft_sources
    base = {"enabled": True, "datasets": [{"source": str(chat), "split": "train_sft"}], "max_steps": 1}
    h = runner.stage_hashes(make(tmp_path, tiny, base)[0])
    # A DPO-only change leaves SFT and generation alone...
    assert runner.stage_hashes(make(tmp_path, tiny, base, beta=0.3)[0])["generate"] == h["generate"]
    # ...an SFT change re-runs SFT and everything after it.
    h2 = runner.stage_hashes(make(tmp_path, tiny, {**base, "learning_rate": 1e-4})[0])
    assert h2["prompts"] == h["prompts"] and h2["sft"] != h["sft"] and h2["generate"] != h["generate"]


def test_sft_without_config_is_skipped(tmp_path, tiny):
    cfg, rd = make(tmp_path, tiny, None)
    assert sft.run(cfg, rd)["skipped"] is True
    assert lineage.policy_spec(cfg, rd, "tiny").path == str(tiny)


def test_two_sft_phases_then_generation_from_the_sft_model(tmp_path, tiny, sft_sources, monkeypatch):
    chat, safe = sft_sources
    cfg, rd = make(tmp_path, tiny, {
        "enabled": True, "max_steps": 1, "max_length": 64, "learning_rate": 1e-3,
        "datasets": [{"source": str(chat), "split": "train_sft"},
                     {"source": str(safe), "format": "saferlhf_safer"}]}, per_device_train_batch_size=2,
        gradient_accumulation_steps=1)
    # Generation before SFT is refused rather than silently using the base model.
    with pytest.raises(Exception, match="run `synthpref sft` first"):
        lineage.policy_spec(cfg, rd, "tiny")
    summary = sft.run(cfg, rd)
    assert summary["sft"]["global_step"] == 1
    phase1 = read_json(rd.path("train", "sft_phase1", "done.json"))
    final = read_json(rd.path("train", "sft", "done.json"))
    assert phase1["start_model"] == str(tiny) and phase1["split"] == "train_sft"
    assert final["start_model"] == str(lineage.trained_model_dir(rd, "sft_phase1").resolve())
    assert final["n_examples"] == 5 and final["inputs_hash"] == lineage.sft_inputs_hash(cfg)

    seen = []
    real = generate.get_backend_class

    def spy(name):
        cls = real(name)

        class Spy(cls):
            def __init__(self, spec, **kw):
                seen.append(spec.path)
                super().__init__(spec, **kw)

        return Spy

    monkeypatch.setattr(generate, "get_backend_class", spy)
    write_jsonl(rd.path("prompts", "train.jsonl"), [{"prompt_id": prompt_id("Hello"), "text": "Hello", "source": "t"}])
    generate.run(cfg, rd)
    assert seen == [str(lineage.trained_model_dir(rd, "sft").resolve())]
    # DPO starts from the same model, and the train stage does not train SFT again.
    assert lineage.start_model_spec(cfg, rd).path == seen[0]
