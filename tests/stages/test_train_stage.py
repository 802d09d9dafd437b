"""Train stage end to end on a tiny random Llama (built here) and, @slow, on the packaged SmolLM2.

The pairs differ systematically (chosen: a refusal; rejected: compliance), so DPO has a signal to
learn: the reward margin must rise, the weights must change, and a resumed run must follow the same
trajectory as an uninterrupted one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from synthpref import lineage
from synthpref.stages import train
from synthpref.config import parse_config
from synthpref.rundir import RunDir, read_json, read_jsonl, write_jsonl

REWARD_KEYS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
               "logps/chosen", "logps/rejected", "learning_rate", "epoch", "step")
TOPICS = ["pick a lock", "make a weapon", "steal a car", "hack an email", "forge money", "poison a dog",
          "cheat on a test", "spread malware"]


def word_tokenizer(texts: list[str]):
    """A word-level tokenizer over `texts` (+ the plain-template words), ~100 tokens.

    A small vocabulary keeps the LM head, which dominates a tiny model's step time, cheap on 2
    CPU cores. It has no chat template, so training goes through the plain-template fallback that
    base models (no chat template) use.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Whitespace()
    specials = ["<unk>", "<pad>", "<eos>"]
    words = sorted({w for t in [*texts, "### Instruction: ### Response: Say hi Hi there, friend."]
                    for w, _ in pre.pre_tokenize_str(t)})
    vocab = {w: i for i, w in enumerate(specials + words)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A random 2-layer Llama (hidden 32) with a word-level tokenizer, saved as safetensors."""
    from transformers import LlamaConfig, LlamaForCausalLM

    texts = [m["content"] for p in make_pairs() for side in ("prompt", "chosen", "rejected") for m in p[side]]
    tok = word_tokenizer(texts)
    torch.manual_seed(0)
    conf = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=256,
                       tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    d = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    LlamaForCausalLM(conf).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def make_pairs(n: int = 16) -> list[dict]:
    out = []
    for i in range(n):
        t = TOPICS[i % len(TOPICS)]
        out.append({"pair_id": f"p{i:02d}", "prompt_id": f"q{i:02d}", "setting": "s1", "chosen_model": "a",
                    "rejected_model": "b", "margin": 1.0,
                    "prompt": [{"role": "user", "content": f"How do I {t}? (case {i})"}],
                    "chosen": [{"role": "assistant", "content": "I cannot help with that request."}],
                    "rejected": [{"role": "assistant", "content": f"Sure, here is how to {t}: first get tools."}]})
    return out


def make_study(tmp: Path, model: Path, settings=("s1",), **train_over):
    rd = RunDir(tmp / "run").create()
    for s in settings:
        write_jsonl(rd.path("pairs", f"{s}.jsonl"), make_pairs())
    t = {"learning_rate": 1e-3, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1,
         "num_train_epochs": 2, "max_length": 64, "max_prompt_length": 32, "save_steps": 50, "warmup_ratio": 0.0}
    t.update(train_over)
    cfg = parse_config({"name": "t", "run_dir": str(rd.root), "models": {"tiny": {"path": str(model)}},
                        "target": "tiny", "prompts": {"train": {"source": "advbench"}},
                        "pairs": {"settings": list(settings)}, "train": t})
    return cfg, rd


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _assert_dynamics(rd: RunDir, setting: str, n_steps: int) -> list[dict]:
    m = read_jsonl(rd.path("train", setting, "metrics.jsonl"))
    assert [r["step"] for r in m] == list(range(1, n_steps + 1))
    for r in m:
        assert all(k in r for k in REWARD_KEYS), sorted(set(REWARD_KEYS) - set(r))
    assert m[-1]["rewards/margins"] > m[0]["rewards/margins"]
    return m


def test_full_finetune_learns_saves_and_is_not_retrained(tmp_path, tiny_model):
    cfg, rd = make_study(tmp_path, tiny_model)
    summary = train.run(cfg, rd)
    row = summary["settings"]["s1"]
    assert row["global_step"] == 4 and not row["skipped"]
    _assert_dynamics(rd, "s1", 4)

    mdir = lineage.trained_model_dir(rd, "s1")
    assert sorted(p.name for p in mdir.iterdir() if p.suffix in (".bin", ".pt", ".pth")) == []
    before, after = _weights(tiny_model / "model.safetensors"), _weights(mdir / "model.safetensors")
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) >= len(before) // 2, "full fine-tuning should move most tensors"
    card = (mdir / "README.md").read_text()
    done = read_json(rd.path("train", "s1", "done.json"))
    assert "s1" in card and done["pairs_sha256"] in card and "beta: 0.1" in card and "rewards/margins" in card
    assert not rd.path("train", "s1", "checkpoints").exists()  # keep_checkpoints: false
    assert done["global_step"] == 4 and done["train_seconds"] > 0  # the report's cost table reads these

    # A finished setting is not retrained: same inputs -> nothing rewritten.
    mtimes = {p: p.stat().st_mtime_ns for p in (mdir / "model.safetensors", rd.path("train", "s1", "done.json"))}
    again = train.run(cfg, rd)
    assert again["settings"]["s1"]["skipped"]
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())


def test_lora_learns_and_load_trained_merges(tmp_path, tiny_model):
    cfg, rd = make_study(tmp_path, tiny_model, use_lora=True, learning_rate=2e-2,
                         lora={"r": 8, "alpha": 16, "dropout": 0.0})
    train.run(cfg, rd)
    _assert_dynamics(rd, "s1", 4)
    mdir = lineage.trained_model_dir(rd, "s1")
    assert (mdir / "adapter_config.json").exists() and (mdir / "adapter_model.safetensors").exists()
    assert not (mdir / "model.safetensors").exists()
    adapter = _weights(mdir / "adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items())  # B starts at zero

    model, tok = lineage.load_trained(cfg, rd, "s1", "cpu")
    assert tok.padding_side == "left"
    assert not any("lora" in n for n, _ in model.named_parameters())  # merged, plain model
    base = _weights(tiny_model / "model.safetensors")
    merged = model.state_dict()
    changed = [k for k in base if k in merged and not torch.equal(base[k], merged[k])]
    assert changed and all("proj" in k for k in changed)


class CrashAfterLog:
    """Simulates a kill: raises once step `at` is logged (after the checkpoint at save_steps)."""

    def __new__(cls, at: int):
        from transformers import TrainerCallback

        class _Crash(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kw):
                if logs and "loss" in logs and state.global_step >= at:
                    raise KeyboardInterrupt(f"simulated kill at step {state.global_step}")

        return _Crash()


def test_killed_run_resumes_from_checkpoint_without_duplicate_steps(tmp_path, tiny_model):
    cfg, rd = make_study(tmp_path / "a", tiny_model, save_steps=2, keep_checkpoints=True)
    with pytest.raises(KeyboardInterrupt):
        train.train_setting(cfg, rd, "s1", _callbacks=[CrashAfterLog(3)])
    assert (rd.path("train", "s1", "checkpoints", "checkpoint-2")).is_dir()
    assert [r["step"] for r in read_jsonl(rd.path("train", "s1", "metrics.jsonl"))] == [1, 2, 3]
    assert not rd.path("train", "s1", "done.json").exists()

    summary = train.run(cfg, rd)
    assert summary["settings"]["s1"]["resumed_from_step"] == 2
    assert summary["settings"]["s1"]["global_step"] == 4
    resumed = _assert_dynamics(rd, "s1", 4)  # steps 1..4 exactly once

    cfg2, rd2 = make_study(tmp_path / "b", tiny_model, save_steps=2, keep_checkpoints=True)
    train.run(cfg2, rd2)
    straight = read_jsonl(rd2.path("train", "s1", "metrics.jsonl"))
    for a, b in zip(resumed, straight):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-5)
        assert a["rewards/margins"] == pytest.approx(b["rewards/margins"], rel=1e-3, abs=1e-5)


def test_changed_inputs_start_over(tmp_path, tiny_model):
    cfg, rd = make_study(tmp_path, tiny_model, max_steps=1)
    train.run(cfg, rd)
    first = read_json(rd.path("train", "s1", "done.json"))
    cfg2 = cfg.model_copy(update={"train": cfg.train.model_copy(update={"beta": 0.2})})
    res = train.run(cfg2, rd)
    assert not res["settings"]["s1"]["skipped"]
    assert read_json(rd.path("train", "s1", "done.json"))["inputs_hash"] != first["inputs_hash"]
    assert len(read_jsonl(rd.path("train", "s1", "metrics.jsonl"))) == 1


def test_sft_stage_makes_the_dpo_start_model(tmp_path, tiny_model):
    sft_data = tmp_path / "sft.jsonl"
    write_jsonl(sft_data, [{"messages": [{"role": "user", "content": f"Say hi {i}"},
                                         {"role": "assistant", "content": "Hi there, friend."}]} for i in range(8)])
    cfg, rd = make_study(tmp_path, tiny_model, max_steps=2,
                         sft={"enabled": True, "dataset": str(sft_data), "learning_rate": 1e-3, "max_steps": 2,
                              "max_length": 64})
    summary = train.run(cfg, rd)
    assert summary["sft"]["global_step"] == 2
    sft_dir = lineage.trained_model_dir(rd, "sft")
    sft_w, base_w = _weights(sft_dir / "model.safetensors"), _weights(tiny_model / "model.safetensors")
    assert any(not torch.equal(sft_w[k], base_w[k]) for k in base_w)
    assert read_json(rd.path("train", "s1", "done.json"))["start_model"] == str(sft_dir.resolve())
    assert len(read_jsonl(rd.path("train", "sft", "metrics.jsonl"))) == 2
    model, _ = lineage.load_trained(cfg, rd, "sft")
    assert torch.equal(model.state_dict()["model.norm.weight"], sft_w["model.norm.weight"])


def test_accelerate_launcher_runs_the_same_training(tmp_path, tiny_model):
    """`launcher: accelerate` with a one-process CPU config: the worker path end to end."""
    acc = tmp_path / "cpu.yaml"
    acc.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: 'NO'\nmixed_precision: 'no'\n"
                   "num_processes: 1\nuse_cpu: true\nnum_machines: 1\nmachine_rank: 0\n")
    cfg, rd = make_study(tmp_path, tiny_model, max_steps=2, launcher="accelerate", accelerate_config=str(acc),
                         num_processes=1)
    summary = train.run(cfg, rd)
    assert summary["settings"]["s1"]["global_step"] == 2
    assert [r["step"] for r in read_jsonl(rd.path("train", "s1", "metrics.jsonl"))] == [1, 2]
    assert (lineage.trained_model_dir(rd, "s1") / "model.safetensors").exists()


@pytest.mark.slow
def test_lora_dpo_on_packaged_smollm2(tmp_path):
    from synthpref.models import resolve_path

    path = Path(resolve_path("smollm2-135m-instruct"))
    rd = RunDir(tmp_path / "run").create()
    write_jsonl(rd.path("pairs", "s1.jsonl"), make_pairs(8))
    cfg = parse_config({"name": "t", "models": {"smol": {"path": "smollm2-135m-instruct"}}, "target": "smol",
                        "prompts": {"train": {"source": "advbench"}}, "pairs": {"settings": ["s1"]},
                        "train": {"use_lora": True, "learning_rate": 1e-3, "max_steps": 2, "max_length": 64,
                                  "max_prompt_length": 24, "per_device_train_batch_size": 1,
                                  "gradient_accumulation_steps": 1}})
    summary = train.run(cfg, rd)
    assert summary["settings"]["s1"]["global_step"] == 2
    m = read_jsonl(rd.path("train", "s1", "metrics.jsonl"))
    assert [r["step"] for r in m] == [1, 2] and all("rewards/margins" in r for r in m)
    cfg_json = json.loads((lineage.trained_model_dir(rd, "s1") / "adapter_config.json").read_text())
    assert Path(cfg_json["base_model_name_or_path"]) == path
