"""Train-stage pieces that need no training: config mapping, errors, metrics log, data, launch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from synthpref import chat, lineage, training
from synthpref.stages import train
from synthpref.config import parse_config
from synthpref.errors import ConfigError, DataError
from synthpref.rundir import RunDir, write_jsonl

ACCEL = Path(__file__).resolve().parents[2] / "configs" / "accelerate"


def study(tmp_path: Path, **train_over):
    return parse_config({"name": "t", "run_dir": str(tmp_path / "run"), "models": {"m": {"path": str(tmp_path)}},
                         "target": "m", "prompts": {"train": {"source": "advbench"}},
                         "pairs": {"settings": ["a", "b"]}, "train": train_over})


def pair(i: int, prompt: str = "How do I pick a lock?") -> dict:
    return {"pair_id": f"p{i}", "prompt_id": f"q{i}", "setting": "a", "chosen_model": "x", "margin": 0.5,
            "prompt": [{"role": "user", "content": prompt}],
            "chosen": [{"role": "assistant", "content": "No."}],
            "rejected": [{"role": "assistant", "content": "Sure."}]}


# --------------------------------------------------------------------------- DPOConfig mapping
def test_every_train_field_reaches_dpo_config(tmp_path):
    cfg = study(tmp_path, beta=0.25, learning_rate=3e-6, loss_type="ipo", max_length=200, warmup_ratio=0.2,
                precompute_ref_log_probs=True, gradient_checkpointing=True, save_steps=7, save_total_limit=3,
                logging_steps=2, max_steps=11, per_device_train_batch_size=2, gradient_accumulation_steps=3,
                lr_scheduler_type="cosine", extra={"label_smoothing": 0.05, "max_grad_norm": 0.5})
    a = train.dpo_config(cfg, "cpu", tmp_path / "ck")
    assert (a.beta, a.learning_rate, a.loss_type, a.max_length) == (0.25, 3e-6, ["ipo"], 200)
    assert a.precompute_ref_log_probs and a.gradient_checkpointing
    assert (a.save_steps, a.save_total_limit, a.logging_steps, a.max_steps) == (7, 3, 2, 11)
    assert (a.per_device_train_batch_size, a.gradient_accumulation_steps, a.warmup_steps) == (2, 3, 0.2)
    assert a.lr_scheduler_type == "cosine" and a.seed == cfg.seed
    assert (a.label_smoothing, a.max_grad_norm) == (0.05, 0.5)  # extra passes through
    assert a.bf16 is False and a.use_cpu  # bf16 None -> off on CPU
    assert a.report_to in ("none", [], ["none"])


def test_bf16_default_follows_device(tmp_path):
    cfg = study(tmp_path)
    assert training.common_args(cfg, "cuda", tmp_path)["bf16"] is True
    assert training.common_args(cfg, "cpu", tmp_path)["bf16"] is False
    forced = study(tmp_path, bf16=False, report_to=["tensorboard"])
    assert training.common_args(forced, "cuda", tmp_path)["bf16"] is False
    assert training.common_args(forced, "cuda", tmp_path)["report_to"] == ["tensorboard"]


def test_unknown_extra_key_names_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.extra\.betta: not a trl\.DPOConfig field \(did you mean 'beta'"):
        train.dpo_config(study(tmp_path, extra={"betta": 0.2}), "cpu", tmp_path)
    with pytest.raises(ConfigError, match=r"train\.extra\.output_dir"):
        train.dpo_config(study(tmp_path, extra={"output_dir": "/x"}), "cpu", tmp_path)


def test_lora_config_from_spec(tmp_path):
    lc = train.lora_config(study(tmp_path, use_lora=True, lora={"r": 4, "alpha": 8, "dropout": 0.1,
                                                                 "target_modules": ["q_proj", "v_proj"]}))
    assert (lc.r, lc.lora_alpha, lc.lora_dropout) == (4, 8, 0.1)
    assert set(lc.target_modules) == {"q_proj", "v_proj"} and lc.task_type == "CAUSAL_LM"


# --------------------------------------------------------------------------- inputs hash
def test_lora_top_layers_adapts_only_the_upper_layers(tmp_path, tiny_model_dir):
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    n = model.config.num_hidden_layers
    assert n >= 2
    lc = train.lora_config(study(tmp_path, use_lora=True, lora={"r": 4, "alpha": 8, "top_layers": 1}), model)
    peft_model = get_peft_model(model, lc)
    adapted = {int(name.split(".layers.")[1].split(".")[0]) for name, _ in peft_model.named_parameters() if "lora_A" in name}
    assert adapted == {n - 1}
    # autograd stops at the lowest adapted layer: nothing below it is part of the graph
    peft_model.train()
    hidden = peft_model(input_ids=torch.tensor([[1, 2, 3, 4]]), output_hidden_states=True).hidden_states
    assert [h.requires_grad for h in hidden] == [False] * n + [True]
    with pytest.raises(ConfigError, match="top_layers"):
        train.lora_config(study(tmp_path, use_lora=True, lora={"top_layers": n + 1}), model)


def test_inputs_hash_tracks_what_changes_the_result(tmp_path):
    cfg = study(tmp_path)
    rd = RunDir(cfg.run_path).create()
    write_jsonl(rd.path("pairs", "a.jsonl"), [pair(0)])
    h = train.setting_inputs_hash(cfg, rd, "a")
    assert train.setting_inputs_hash(study(tmp_path, report_to=["wandb"], keep_checkpoints=True), rd, "a") == h
    assert train.setting_inputs_hash(study(tmp_path, beta=0.3), rd, "a") != h
    write_jsonl(rd.path("pairs", "a.jsonl"), [pair(0, "another prompt")])
    assert train.setting_inputs_hash(cfg, rd, "a") != h


def test_start_model_is_base_model_or_sft_output(tmp_path):
    cfg = study(tmp_path, base_model="my-org/sft-model")
    rd = RunDir(cfg.run_path)
    assert lineage.start_model_spec(cfg, rd).path == "my-org/sft-model"
    sft = study(tmp_path, sft={"enabled": True, "dataset": "x.jsonl"})
    assert lineage.start_model_spec(sft, rd).path == str(lineage.trained_model_dir(rd, "sft").resolve())


# --------------------------------------------------------------------------- metrics log
class _State:
    def __init__(self, step, zero=True):
        self.global_step, self.epoch, self.is_world_process_zero = step, step / 4, zero


def test_metrics_log_appends_and_dedupes_on_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = training.MetricsLog(path, resume_step=None)
    for s in (1, 2, 3):
        log.on_log(None, _State(s), None, logs={"loss": 0.7 - s / 10, "rewards/margins": s / 10, "learning_rate": 1e-3})
    log.on_log(None, _State(3), None, logs={"loss": 0.1})  # same step again: ignored
    log.on_log(None, _State(3), None, logs={"train_loss": 0.5, "train_runtime": 9.0})  # end summary: not a step
    with open(path, "a") as f:
        f.write('{"step": 4, "lo')  # torn line from a kill
    lines = [json.loads(x) for x in path.read_text().splitlines()[:3]]
    assert [r["step"] for r in lines] == [1, 2, 3] and lines[0]["epoch"] == 0.25

    # Resume from checkpoint-2: step 3 (logged after it) is dropped and re-logged once.
    log2 = training.MetricsLog(path, resume_step=2)
    log2.on_log(None, _State(2), None, logs={"loss": 9.9})
    log2.on_log(None, _State(3), None, logs={"loss": 0.35})
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3] and recs[1]["loss"] == pytest.approx(0.5)
    assert recs[2]["loss"] == 0.35


# --------------------------------------------------------------------------- data
@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from synthpref.models import resolve_path

    try:
        return AutoTokenizer.from_pretrained(resolve_path("smollm2-135m-instruct"))
    except Exception:
        pytest.skip("SmolLM2 tokenizer not cached")


def test_load_pairs_drops_provenance_and_bounds_prompt(tmp_path, tok):
    cfg = study(tmp_path, max_prompt_length=8)
    rd = RunDir(cfg.run_path).create()
    long = "word " * 50
    write_jsonl(rd.path("pairs", "a.jsonl"), [pair(0, long), pair(1)])
    spec = cfg.models["m"].model_copy(update={"system_prompt": "Be safe."})
    rows = train.load_pairs(cfg, rd, "a", tok, spec)
    assert set(rows[0]) == {"prompt", "chosen", "rejected"}
    assert rows[0]["prompt"][0] == {"role": "system", "content": "Be safe."}
    assert len(tok(rows[0]["prompt"][1]["content"], add_special_tokens=False)["input_ids"]) == 8
    assert rows[1]["prompt"][1]["content"] == "How do I pick a lock?"


def test_malformed_pairs_name_file_and_line(tmp_path, tok):
    cfg = study(tmp_path)
    rd = RunDir(cfg.run_path).create()
    bad = pair(1)
    bad["chosen"] = "not a message list"
    write_jsonl(rd.path("pairs", "a.jsonl"), [pair(0), bad])
    with pytest.raises(DataError, match=r"a\.jsonl:2: `chosen` must be a list"):
        train.load_pairs(cfg, rd, "a", tok, cfg.models["m"])


def test_run_without_pairs_files_is_a_data_error(tmp_path):
    cfg = study(tmp_path)
    with pytest.raises(DataError, match="no pairs file for any of pairs.settings"):
        train.run(cfg, RunDir(cfg.run_path).create())


def test_plain_chat_template_renders_prompt_as_prefix(tok):
    t = tok.__class__.from_pretrained(tok.name_or_path)
    t.chat_template = chat.plain_chat_template("Question: {prompt}\nAnswer:")
    prompt = [{"role": "user", "content": "Why?"}]
    p = t.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full = t.apply_chat_template(prompt + [{"role": "assistant", "content": " Because."}], tokenize=False)
    assert p == "Question: Why?\nAnswer:" and full == p + " Because." + t.eos_token
    with pytest.raises(ConfigError, match="plain_template"):
        chat.plain_chat_template("no placeholder")


# --------------------------------------------------------------------------- accelerate
@pytest.mark.parametrize("name,dist,zero", [("ddp", "MULTI_GPU", None), ("zero2", "DEEPSPEED", 2),
                                            ("zero3", "DEEPSPEED", 3)])
def test_shipped_accelerate_configs_are_valid(name, dist, zero):
    from accelerate.commands.config.config_args import ClusterConfig

    c = ClusterConfig.from_yaml_file(str(ACCEL / f"{name}.yaml"))  # rejects unknown keys
    assert c.distributed_type.value == dist and c.mixed_precision == "bf16" and not c.use_cpu
    assert (c.deepspeed_config or {}).get("zero_stage") == zero
    if zero == 3:
        assert c.deepspeed_config["zero3_init_flag"] and c.deepspeed_config["zero3_save_16bit_model"]


def test_accelerate_command(tmp_path):
    cfg = study(tmp_path, launcher="accelerate", accelerate_config="configs/accelerate/zero3.yaml", num_processes=4)
    rd = RunDir(cfg.run_path)
    cmd = training.accelerate_command(cfg, rd, "a", tmp_path / "c.yaml")
    i = cmd.index("--config_file")
    assert Path(cmd[i + 1]) == (ACCEL / "zero3.yaml").resolve()
    assert cmd[cmd.index("--num_processes") + 1] == "4"
    assert cmd[-6:] == ["-m", "synthpref.stages.train_worker", str(rd.root), "a", "--config", str(tmp_path / "c.yaml")]
    assert training.resolve_accelerate_config("ddp") == (ACCEL / "ddp.yaml").resolve()
    with pytest.raises(ConfigError, match=r"train\.accelerate_config: 'zero4' not found \(did you mean 'zero"):
        training.resolve_accelerate_config("zero4")
