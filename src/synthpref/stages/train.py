"""Train stage: DPO on each preference-data setting, optionally after an SFT stage.

Method (paper §3, "DPO"): starting from the target model (or `train.base_model`), each pair
setting gets its own DPO run with TRL's `DPOTrainer` — sigmoid loss, beta 0.1, full fine-tuning
by default, LoRA via peft when `train.use_lora`. Optional SFT (`train.sft.enabled`) makes the
starting model with TRL's `SFTTrainer`, one run per SFT dataset; it runs in the sft stage before
generation (stages/sft.py), and here only when that stage has not run.

Per setting, under train/<setting>/:
    metrics.jsonl   one line per logging step (loss, rewards/*, logps/*, learning_rate, epoch, step),
                    appended and flushed as training goes, so a crash keeps the dynamics so far
    checkpoints/    Trainer checkpoints; a killed run resumes from the last one
    model/          final weights (adapter for LoRA, full safetensors otherwise) + README.md card,
                    moved into place only when complete
    inputs.json     the inputs hash the checkpoints belong to
    done.json       written last; a setting whose done.json matches its inputs is not retrained

`train.launcher: accelerate` runs each setting as `accelerate launch ... -m synthpref.stages.train_worker`,
which calls the same `train_setting` function, so single-CPU and multi-GPU runs share one code path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from ..config import ModelSpec, StudyConfig, dump_config
from .pairs import pairs_path
from ..errors import ConfigError, DataError, SynthprefError, did_you_mean
from ..rundir import RunDir, hash_obj, read_json, read_jsonl, sha256_file, write_json, write_text

# Bumped whenever a change alters what training produces, so finished settings are retrained.
TRAIN_VERSION = 1
SFT_NAME = "sft"  # reserved: train/sft/ holds the SFT stage, and evaluate calls the start model "sft"
PAIR_FIELDS = ("prompt", "chosen", "rejected")
# Config fields that choose *how* training is launched or reported, not what it computes.
_LAUNCH_ONLY = ("launcher", "accelerate_config", "num_processes", "report_to", "keep_checkpoints")
_PROJECT_ROOT = Path(__file__).resolve().parents[3]


# --------------------------------------------------------------------------- paths
def trained_model_dir(rd: RunDir, setting: str) -> Path:
    """Folder of the final model of `setting` (an adapter for LoRA runs, full weights otherwise)."""
    return rd.path("train", setting, "model")


def settings_to_train(cfg: StudyConfig, rd: RunDir) -> list[str]:
    """The configured settings that have a pairs file (a setting can legitimately yield none)."""
    return [s for s in cfg.pairs.settings if pairs_path(rd, s).exists() and pairs_path(rd, s).stat().st_size > 0]


# --------------------------------------------------------------------------- starting model
def base_model_spec(cfg: StudyConfig) -> ModelSpec:
    """The model training starts from before any SFT: `train.base_model` or the target.

    A `base_model` that is not a name in `models` (an asset, folder or hub id) inherits the target's
    prompt settings (chat template, system prompt), since it is meant to be the target's SFT model.
    """
    t = cfg.train.base_model
    if t is None:
        return cfg.models[cfg.target]
    if t in cfg.models:
        return cfg.models[t]
    return cfg.models[cfg.target].model_copy(update={"path": t, "revision": None})


def start_model_spec(cfg: StudyConfig, rd: RunDir) -> ModelSpec:
    """The model DPO starts from (and the evaluate stage's 'sft' model): SFT output or base model."""
    spec = base_model_spec(cfg)
    if cfg.train.sft.enabled:
        return spec.model_copy(update={"path": str(trained_model_dir(rd, SFT_NAME).resolve()), "revision": None})
    return spec


def _start_ref(cfg: StudyConfig, rd: RunDir) -> dict:
    """What identifies the starting model in an inputs hash (the SFT run's hash when there is one)."""
    if cfg.train.sft.enabled:
        return {"sft": sft_inputs_hash(cfg)}
    return base_model_spec(cfg).model_dump(mode="json")


# --------------------------------------------------------------------------- inputs hashes
def _train_fields(cfg: StudyConfig) -> dict:
    d = cfg.train.model_dump(mode="json")
    for k in _LAUNCH_ONLY:
        d.pop(k, None)
    return d


# TrainConfig fields the SFT run uses (through _common_args); the rest are DPO-only.
_SFT_SHARED_FIELDS = ("per_device_train_batch_size", "gradient_accumulation_steps", "warmup_ratio",
                      "lr_scheduler_type", "gradient_checkpointing", "bf16")


def _sft_data_ref(d) -> dict:
    ref = d.model_dump(mode="json")
    p = Path(d.source).expanduser()
    if p.is_file():
        ref["sha256"] = sha256_file(p)
    return ref


def sft_phase_hash(cfg: StudyConfig, i: int) -> str:
    """Inputs of SFT phase i: the datasets up to and including i (each phase starts from the last)."""
    sft = cfg.train.sft
    # Only what SFT reads: changing a DPO-only field (beta, loss, LoRA, ...) must not retrain SFT.
    t = cfg.train
    shared = {k: getattr(t, k) for k in _SFT_SHARED_FIELDS}
    hyper = sft.model_dump(mode="json", exclude={"dataset", "datasets", "enabled"})
    return hash_obj({"version": TRAIN_VERSION, "stage": SFT_NAME, "sft": hyper, "phase": i,
                     "data": [_sft_data_ref(d) for d in sft.data()[:i + 1]],
                     "train": shared, "seed": cfg.seed, "base": base_model_spec(cfg).model_dump(mode="json")})


def sft_phase_names(cfg: StudyConfig) -> list[str]:
    """train/<name>/ of each SFT phase; the last is 'sft' (the model DPO starts from)."""
    n = max(len(cfg.train.sft.data()), 1)
    return [f"{SFT_NAME}_phase{i + 1}" for i in range(n - 1)] + [SFT_NAME]


def sft_inputs_hash(cfg: StudyConfig) -> str:
    return sft_phase_hash(cfg, max(len(cfg.train.sft.data()), 1) - 1)


def setting_inputs_hash(cfg: StudyConfig, rd: RunDir, setting: str) -> str:
    return hash_obj({"version": TRAIN_VERSION, "setting": setting, "pairs": sha256_file(pairs_path(rd, setting)),
                     "train": _train_fields(cfg), "seed": cfg.seed, "start": _start_ref(cfg, rd)})


def is_done(rd: RunDir, name: str, inputs_hash: str) -> bool:
    done = rd.path("train", name, "done.json")
    if not done.exists() or not trained_model_dir(rd, name).exists():
        return False
    with contextlib.suppress(SynthprefError):
        return read_json(done).get("inputs_hash") == inputs_hash
    return False


# --------------------------------------------------------------------------- tokenizer + data
def plain_chat_template(plain_template: str, bos: bool = False) -> str:
    """A Jinja chat template that renders `chat.format_plain`: system text, blank line, then the
    user turn inside the model's `plain_template`; an answer is followed by the eos token.

    TRL formats conversational pairs with `apply_chat_template`, so plain-mode models (base models
    such as Gemma-3-270M) get this template for training: the model is trained on exactly the
    prompt text generation used, and the prompt alone is a prefix of prompt + answer, which DPO's
    completion masking relies on. `bos`: start with the bos token, which the tokenizer adds to
    plain text but `apply_chat_template` does not.
    """
    if "{prompt}" not in plain_template:
        raise ConfigError(f"models.<target>.plain_template: must contain '{{prompt}}' (got {plain_template!r})")
    prefix, suffix = plain_template.split("{prompt}", 1)
    return (
        ("{{ bos_token }}" if bos else "")
        + "{% set pre = " + json.dumps(prefix) + " %}{% set suf = " + json.dumps(suffix) + " %}"
        "{% for m in messages %}"
        "{% if m['role'] == 'system' %}{{ m['content'] + '\\n\\n' }}"
        "{% elif m['role'] == 'user' %}{{ pre + m['content'] + suf }}"
        "{% elif m['role'] == 'assistant' %}{{ m['content'] + eos_token }}{% endif %}"
        "{% endfor %}"
    )


def prepare_tokenizer(spec: ModelSpec):
    """The tokenizer with the chat template training formats prompts with.

    Follows the generation rule (`chat.prompt_mode`), so DPO trains on the prompt text the target
    answered: chat mode uses the tokenizer's template (else `chat_template` from the config);
    plain mode (known base models, or no template) installs `plain_chat_template`. The template is
    saved with the trained model, so later stages render the same text.
    """
    from ..chat import has_template, prompt_mode
    from ..models import load_tokenizer

    # DPOTrainer requires left padding (its collator and precompute assume it).
    tok = load_tokenizer(spec, padding_side="left")
    if prompt_mode(tok, spec) == "plain":
        ids = tok("x")["input_ids"]
        adds_bos = tok.bos_token_id is not None and bool(ids) and ids[0] == tok.bos_token_id
        tok.chat_template = plain_chat_template(spec.plain_template, bos=adds_bos)
    elif not has_template(tok):
        tok.chat_template = spec.chat_template
    return tok


def _truncate(tok, text: str, max_tokens: int) -> str:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= max_tokens else tok.decode(ids[:max_tokens])


def load_pairs(cfg: StudyConfig, rd: RunDir, setting: str, tok, spec: ModelSpec) -> list[dict]:
    """Pairs in TRL's conversational format, provenance columns dropped.

    TRL 1.x has no `max_prompt_length`; `train.max_prompt_length` bounds the user message here
    (keeping its start), and `train.max_length` bounds prompt + answer inside TRL (keep_start).
    The target's system prompt, if it has one, is prepended as it was at generation time.
    """
    path = pairs_path(rd, setting)
    recs = read_jsonl(path, required=PAIR_FIELDS)
    if not recs:
        raise DataError(f"{path}: no pairs; rebuild it with `synthpref pairs` or drop '{setting}' from pairs.settings")
    out = []
    for i, r in enumerate(recs, 1):
        for side in PAIR_FIELDS:
            msgs = r[side]
            if not (isinstance(msgs, list) and msgs and all(isinstance(m, dict) and "role" in m and "content" in m
                                                            for m in msgs)):
                raise DataError(f"{path}:{i}: `{side}` must be a list of {{role, content}} messages")
        prompt = [dict(m) for m in r["prompt"]]
        for m in prompt:
            if m["role"] == "user":
                m["content"] = _truncate(tok, m["content"], cfg.train.max_prompt_length)
        if spec.system_prompt and prompt[0]["role"] != "system":
            prompt = [{"role": "system", "content": spec.system_prompt}, *prompt]
        out.append({"prompt": prompt, "chosen": r["chosen"], "rejected": r["rejected"]})
    return out


def load_sft_rows(cfg: StudyConfig, phase: int = 0) -> list[dict]:
    """Conversational SFT data of one phase (synthpref.stages.sft_data)."""
    from .sft_data import load_sft_rows as load

    data = cfg.train.sft.data()
    if not data:
        raise ConfigError("train.sft.datasets: required when train.sft.enabled is true "
                          "(e.g. HuggingFaceH4/ultrachat_200k split train_sft, or a local .jsonl with `messages`)")
    where = "train.sft.dataset" if cfg.train.sft.dataset else f"train.sft.datasets[{phase}]"
    return load(data[phase], where)


# --------------------------------------------------------------------------- TRL configs
def _check_extra(extra: dict, config_cls) -> None:
    fields = {f.name for f in dataclasses.fields(config_cls) if f.init}
    for k in extra:
        if k not in fields:
            raise ConfigError(f"train.extra.{k}: not a trl.{config_cls.__name__} field{did_you_mean(k, fields)}")
        if k == "output_dir":
            raise ConfigError("train.extra.output_dir: set by synthpref (train/<setting>/checkpoints); remove it")
        if k.endswith("token"):
            # Config values are written to model cards and run files; secrets stay in the environment.
            raise ConfigError(f"train.extra.{k}: secrets do not belong in the config; set HF_TOKEN in the environment")


def _common_args(cfg: StudyConfig, device: str, output_dir: Path) -> dict:
    t = cfg.train
    return dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=t.per_device_train_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        # transformers 5 folds warmup_ratio into warmup_steps: a float < 1 is a fraction of the steps.
        warmup_steps=min(t.warmup_ratio, 0.999999),
        lr_scheduler_type=t.lr_scheduler_type,
        gradient_checkpointing=t.gradient_checkpointing,
        # bf16 on CPU is ~10x slower on AVX2 machines; TRL would otherwise default it on.
        bf16=t.bf16 if t.bf16 is not None else device == "cuda",
        fp16=False,
        use_cpu=device == "cpu",
        logging_steps=t.logging_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        report_to=list(t.report_to) or "none",
        seed=cfg.seed,
        data_seed=cfg.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )


def dpo_config(cfg: StudyConfig, device: str, output_dir: Path):
    """The trl.DPOConfig for one setting, every TrainConfig field mapped; `extra` goes in last."""
    from trl import DPOConfig

    t = cfg.train
    _check_extra(t.extra, DPOConfig)
    kwargs = _common_args(cfg, device, output_dir)
    kwargs.update(
        learning_rate=t.learning_rate, num_train_epochs=t.num_train_epochs, max_steps=t.max_steps,
        max_length=t.max_length, loss_type=[t.loss_type], beta=t.beta,
        precompute_ref_log_probs=t.precompute_ref_log_probs,
    )
    kwargs.update(t.extra)
    try:
        return DPOConfig(**kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"train: TRL rejected the DPO settings: {str(e).splitlines()[0]}") from None


def sft_config(cfg: StudyConfig, device: str, output_dir: Path):
    from trl import SFTConfig

    s = cfg.train.sft
    kwargs = _common_args(cfg, device, output_dir)
    kwargs.update(learning_rate=s.learning_rate, num_train_epochs=s.num_train_epochs, max_steps=s.max_steps,
                  max_length=s.max_length)
    return SFTConfig(**kwargs)


def lora_config(cfg: StudyConfig, model=None):
    """peft LoraConfig; with `lora.top_layers` only the last N decoder layers of `model` get
    adapters, so autograd never runs below the lowest of them. peft takes a layer list only with
    explicit module names, so "all-linear" becomes the names of the model's linear layers (its
    output head excepted, as peft's "all-linear" does)."""
    from peft import LoraConfig

    lc = cfg.train.lora
    targets, layers = lc.target_modules, {}
    if lc.top_layers is not None:
        if model is None:
            raise ConfigError("train.lora.top_layers: needs the model to count its layers; remove top_layers")
        n_layers = model.config.get_text_config().num_hidden_layers
        if lc.top_layers > n_layers:
            raise ConfigError(f"train.lora.top_layers: {lc.top_layers} > the model's {n_layers} layers; "
                              f"use at most {n_layers}")
        if targets == "all-linear":
            import torch

            head = model.get_output_embeddings()
            targets = sorted({name.rsplit(".", 1)[-1] for name, mod in model.named_modules()
                              if isinstance(mod, torch.nn.Linear) and mod is not head and ".layers." in f".{name}"})
        layers = {"layers_to_transform": list(range(n_layers - lc.top_layers, n_layers)), "layers_pattern": "layers"}
    return LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout, target_modules=targets,
                      task_type="CAUSAL_LM", **layers)


# --------------------------------------------------------------------------- training dynamics
def _trainer_callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class MetricsLog(_trainer_callback_base()):
    """Appends each training log (one per `logging_steps`) to metrics.jsonl, one flushed line each.

    On resume from a checkpoint at step k, lines logged after k by the killed run are dropped
    first: the resumed run re-does those steps and logs them again, so every step appears once and
    the file describes the trajectory the final model actually followed.
    """

    def __init__(self, path: Path, resume_step: int | None, main_process: bool = True):
        self.path = Path(path)
        self.main = main_process
        self.steps: set[int] = set()
        if not self.main:
            return
        kept = []
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # torn last line of a killed run
                if resume_step is not None and rec["step"] <= resume_step and rec["step"] not in self.steps:
                    kept.append(rec)
                    self.steps.add(rec["step"])
        from ..rundir import write_jsonl

        write_jsonl(self.path, kept)

    def on_log(self, args, state, control, logs=None, **kwargs):
        # Training-step logs carry "loss"; eval logs use eval_* keys and the end-of-train
        # summary uses train_loss/train_runtime, which go to done.json instead.
        if not self.main or not logs or "loss" not in logs or state.global_step in self.steps:
            return
        rec = {k: v for k, v in logs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        rec["step"] = state.global_step
        rec["epoch"] = state.epoch
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.steps.add(state.global_step)


def read_metrics(rd: RunDir, name: str) -> list[dict]:
    path = rd.path("train", name, "metrics.jsonl")
    return read_jsonl(path) if path.exists() else []


# --------------------------------------------------------------------------- shared fit/save
def _prepare_dir(out: Path, inputs_hash: str) -> None:
    """Start over when the inputs changed, so checkpoints of other inputs are never resumed."""
    inputs = out / "inputs.json"
    old = None
    if inputs.exists():
        with contextlib.suppress(SynthprefError):
            old = read_json(inputs).get("inputs_hash")
    if old != inputs_hash:
        for p in ("checkpoints", "model", ".model.tmp"):
            shutil.rmtree(out / p, ignore_errors=True)
        for p in ("metrics.jsonl", "done.json"):
            (out / p).unlink(missing_ok=True)
        write_json(inputs, {"inputs_hash": inputs_hash})


def _last_checkpoint(ckpt_dir: Path) -> tuple[str | None, int | None]:
    from transformers.trainer_utils import get_last_checkpoint

    if not ckpt_dir.is_dir():
        return None, None
    last = get_last_checkpoint(str(ckpt_dir))
    if last is None:
        return None, None
    return last, int(Path(last).name.split("-")[-1])


def _model_card(name: str, kind: str, cfg: StudyConfig, start: ModelSpec, data: dict, final: dict,
                inputs_hash: str) -> str:
    train_yaml = yaml.safe_dump(_train_fields(cfg), sort_keys=True).rstrip()
    metrics = "\n".join(f"| {k} | {v:.6g} |" for k, v in sorted(final.items()) if isinstance(v, (int, float)))
    base = start.path
    lines = [
        "---",
        "library_name: " + ("peft" if kind == "dpo" and cfg.train.use_lora else "transformers"),
        "tags: [synthpref, trl, " + ("dpo" if kind == "dpo" else "sft") + "]",
        "---",
        "",
        f"# synthpref {kind.upper()} model: {name}",
        "",
        f"Trained by synthpref with TRL's {'DPOTrainer' if kind == 'dpo' else 'SFTTrainer'}, reproducing "
        "\"More is Less: The Pitfalls of Multi-Model Synthetic Preference Data in DPO Safety Alignment\" "
        "(arXiv 2504.02193).",
        "",
        f"- starting model: `{base}`",
        *[f"- {k}: `{v}`" for k, v in data.items()],
        f"- weights: {'LoRA adapter (load on the starting model with peft)' if kind == 'dpo' and cfg.train.use_lora else 'full model, safetensors'}",
        f"- seed: {cfg.seed}",
        f"- inputs hash: `{inputs_hash}`",
        "",
        "## Training config (`train` section)",
        "",
        "```yaml",
        train_yaml,
        "```",
        "",
        "## Final logged metrics",
        "",
        "| metric | value |",
        "| --- | --- |",
        metrics or "| (none logged) | |",
        "",
    ]
    return "\n".join(lines)


def _fit_and_save(trainer, out: Path, resume: str | None, card) -> dict:
    """Train (resuming if a checkpoint exists), then save the model atomically with its card."""
    result = trainer.train(resume_from_checkpoint=resume)
    acc = trainer.accelerator
    tmp = out / ".model.tmp"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    acc.wait_for_everyone()
    # Every rank must take part in save_model: under ZeRO-3 it gathers the sharded weights. It
    # writes the weights (the adapter alone for LoRA) and the tokenizer, with its chat template.
    trainer.save_model(str(tmp))
    if acc.is_main_process:
        # A pickled TrainingArguments: not weights, but the folder promises safetensors + JSON only.
        (tmp / "training_args.bin").unlink(missing_ok=True)
        write_text(tmp / "README.md", card())
        final = out / "model"
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    acc.wait_for_everyone()
    # train_seconds: the Trainer's own runtime of this (possibly resumed) fit, model loading excluded;
    # the report's cost table reads it from done.json.
    runtime = (result.metrics or {}).get("train_runtime")
    return {"train_loss": float(result.training_loss), "global_step": int(result.global_step),
            "train_seconds": round(float(runtime), 2) if runtime is not None else None}


def _finish(cfg: StudyConfig, out: Path, done: dict) -> None:
    if not cfg.train.keep_checkpoints:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    write_json(out / "done.json", done)  # last: marks the setting finished


def load_for_training(spec: ModelSpec):
    """The model to train, on CPU for the Trainer to place.

    `models.load_causal_lm` (safetensors-only, trust_remote_code per model) moves the model with
    `.to()`, which must not touch weights that DeepSpeed ZeRO-3 sharded while loading; under ZeRO-3
    the same rules are applied here without the move.
    """
    from transformers.integrations import is_deepspeed_zero3_enabled

    from ..models import load_causal_lm, resolve_path, torch_dtype

    if not is_deepspeed_zero3_enabled():
        return load_causal_lm(spec, "cpu")
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        resolve_path(spec.path), dtype=torch_dtype(spec.dtype, "cpu"), trust_remote_code=spec.trust_remote_code,
        use_safetensors=None if spec.allow_pickle else True, revision=spec.revision)


def _device(cfg: StudyConfig) -> str:
    from ..models import pick_device

    return pick_device(cfg.device)


def _is_main() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


def _barrier() -> None:
    from accelerate import PartialState

    PartialState().wait_for_everyone()


# --------------------------------------------------------------------------- SFT
def _open_run(rd: RunDir, name: str, inputs_hash: str) -> tuple[Path, dict | None]:
    """(train/<name>/, None) ready to train into, or (folder, done summary) when already trained
    with these inputs. The main process clears stale state; every process waits for it."""
    from ..models import set_threads

    out = rd.path("train", name)
    if is_done(rd, name, inputs_hash):
        return out, {**read_json(out / "done.json"), "skipped": True}
    out.mkdir(parents=True, exist_ok=True)
    if _is_main():
        _prepare_dir(out, inputs_hash)
    _barrier()
    set_threads()
    return out, None


def train_sft(cfg: StudyConfig, rd: RunDir, *, _callbacks: list | None = None) -> dict:
    """Supervised fine-tuning of the base model on the SFT datasets, one after the other
    (train/sft_phase1/, ...), the last phase in train/sft/model/.

    Always full fine-tuning (merged weights), so the DPO stage and the evaluate stage's 'sft'
    model start from one plain checkpoint whether or not DPO then uses LoRA.
    """
    spec = base_model_spec(cfg)
    res: dict = {}
    for i, name in enumerate(sft_phase_names(cfg)):
        res = _train_sft_phase(cfg, rd, i, name, spec, _callbacks)
        spec = spec.model_copy(update={"path": str(trained_model_dir(rd, name).resolve()), "revision": None})
    return res


def _train_sft_phase(cfg: StudyConfig, rd: RunDir, phase: int, name: str, spec: ModelSpec,
                     _callbacks: list | None) -> dict:
    from datasets import Dataset
    from trl import SFTTrainer

    from ..models import free

    inputs_hash = sft_phase_hash(cfg, phase)
    t0 = time.time()
    out, done = _open_run(rd, name, inputs_hash)
    if done:
        return done
    device = _device(cfg)
    tok = prepare_tokenizer(spec)
    tok.padding_side = "right"  # SFTTrainer pads on the right
    rows = load_sft_rows(cfg, phase)
    ckpt = out / "checkpoints"
    args = sft_config(cfg, device, ckpt)  # before the model loads: lets ZeRO-3 shard it while loading
    model = load_for_training(spec)
    resume, resume_step = _last_checkpoint(ckpt)
    log = MetricsLog(out / "metrics.jsonl", resume_step, _is_main())
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                         callbacks=[log, *(_callbacks or [])])
    source = cfg.train.sft.data()[phase]
    data = {"sft dataset": source.source, "split": source.split, "examples": len(rows)}

    def card():
        return _model_card(name, "sft", cfg, spec, data, _last(rd, name), inputs_hash)

    res = _fit_and_save(trainer, out, resume, card)
    done = {"name": name, "inputs_hash": inputs_hash, "dataset": source.source, "split": source.split,
            "n_examples": len(rows), "start_model": spec.path, **res, "final": _last(rd, name)}
    del trainer, model
    free()
    if _is_main():
        _finish(cfg, out, done)
    _barrier()
    return {**done, "seconds": round(time.time() - t0, 2), "resumed_from_step": resume_step, "skipped": False}


def _last(rd: RunDir, name: str) -> dict:
    m = read_metrics(rd, name)
    return m[-1] if m else {}


# --------------------------------------------------------------------------- DPO
def train_setting(cfg: StudyConfig, rd: RunDir, setting: str, *, _callbacks: list | None = None) -> dict:
    """DPO on pairs/<setting>.jsonl from the starting model -> train/<setting>/model/.

    The same function runs in-process (launcher: local) and in each `accelerate launch` worker.
    """
    from datasets import Dataset
    from trl import DPOTrainer

    from ..models import free

    if setting == SFT_NAME:
        raise ConfigError(f"pairs.settings: '{SFT_NAME}' is reserved for the SFT model; rename that setting")
    if not pairs_path(rd, setting).exists():
        raise DataError(f"{pairs_path(rd, setting)}: file not found; run `synthpref pairs` first")
    inputs_hash = setting_inputs_hash(cfg, rd, setting)
    t0 = time.time()
    out, done = _open_run(rd, setting, inputs_hash)
    if done:
        return done
    device = _device(cfg)
    spec = start_model_spec(cfg, rd)
    tok = prepare_tokenizer(spec)
    rows = load_pairs(cfg, rd, setting, tok, spec)
    ckpt = out / "checkpoints"
    # The DPOConfig is built before any weights load: under ZeRO-3 that is what makes
    # from_pretrained shard the weights as they load.
    args = dpo_config(cfg, device, ckpt)
    # Loaded on CPU; the Trainer places it (one device, DDP replicas or DeepSpeed shards).
    model = load_for_training(spec)
    ref_model = None
    if not cfg.train.use_lora and not cfg.train.precompute_ref_log_probs:
        # Full fine-tuning needs a frozen copy of the start model. Loaded explicitly from the same
        # safetensors folder: left to itself TRL reloads from config._name_or_path, which for a
        # converted GGUF asset is not a loadable safetensors folder.
        ref_model = load_for_training(spec)
    # With LoRA the reference is the base with the adapter disabled; with precompute, TRL runs the
    # start model once over the data before training and keeps no reference model.
    resume, resume_step = _last_checkpoint(ckpt)
    log = MetricsLog(out / "metrics.jsonl", resume_step, _is_main())
    trainer = DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tok,
                         peft_config=lora_config(cfg, model) if cfg.train.use_lora else None,
                         callbacks=[log, *(_callbacks or [])])
    pairs_sha = sha256_file(pairs_path(rd, setting))
    data = {"data setting": setting, "pairs file": f"pairs/{setting}.jsonl", "pairs sha256": pairs_sha,
            "pairs": len(rows)}

    def card():
        return _model_card(setting, "dpo", cfg, spec, data, _last(rd, setting), inputs_hash)

    res = _fit_and_save(trainer, out, resume, card)
    done = {"setting": setting, "inputs_hash": inputs_hash, "pairs_sha256": pairs_sha, "n_pairs": len(rows),
            "start_model": spec.path, "use_lora": cfg.train.use_lora, **res, "final": _last(rd, setting)}
    del trainer, model, ref_model
    free()
    if _is_main():
        _finish(cfg, out, done)
    _barrier()
    return {**done, "seconds": round(time.time() - t0, 2), "resumed_from_step": resume_step, "skipped": False}


# --------------------------------------------------------------------------- launching
def resolve_accelerate_config(ref: str) -> Path:
    """A path as given, else relative to the synthpref checkout; 'zero3' means configs/accelerate/zero3.yaml."""
    cands = [Path(ref).expanduser(), _PROJECT_ROOT / ref, _PROJECT_ROOT / "configs" / "accelerate" / f"{ref}.yaml"]
    for c in cands:
        if c.is_file():
            return c.resolve()
    shipped = sorted(p.stem for p in (_PROJECT_ROOT / "configs" / "accelerate").glob("*.yaml"))
    raise ConfigError(f"train.accelerate_config: '{ref}' not found{did_you_mean(Path(ref).stem, shipped)}")


def accelerate_command(cfg: StudyConfig, rd: RunDir, name: str, config_path: Path) -> list[str]:
    cmd = [sys.executable, "-m", "accelerate.commands.launch",
           "--config_file", str(resolve_accelerate_config(cfg.train.accelerate_config))]
    if cfg.train.num_processes:
        cmd += ["--num_processes", str(cfg.train.num_processes)]
    return cmd + ["-m", "synthpref.stages.train_worker", str(rd.root), name, "--config", str(config_path)]


def _launch(cfg: StudyConfig, rd: RunDir, name: str, inputs_hash: str) -> dict:
    t0 = time.time()
    cfg_path = rd.path("train", "worker_config.yaml")
    write_text(cfg_path, dump_config(cfg))
    cmd = accelerate_command(cfg, rd, name, cfg_path)
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    rc = subprocess.run(cmd, env=env).returncode
    if rc != 0 or not is_done(rd, name, inputs_hash):
        raise SynthprefError(f"train.launcher: `accelerate launch` for '{name}' exited with code {rc}; "
                             f"its output is above; re-run to resume from train/{name}/checkpoints/")
    return {**read_json(rd.path("train", name, "done.json")), "seconds": round(time.time() - t0, 2),
            "skipped": False}


def _summary_row(res: dict) -> dict:
    final = res.get("final") or {}
    return {"global_step": res.get("global_step"), "train_loss": res.get("train_loss"),
            "final_margin": final.get("rewards/margins"), "final_accuracy": final.get("rewards/accuracies"),
            "seconds": res.get("seconds"), "skipped": res.get("skipped", False),
            "resumed_from_step": res.get("resumed_from_step")}


def run(cfg: StudyConfig, rd: RunDir) -> dict:
    """Train every configured setting that has pairs (SFT first when enabled); returns a summary."""
    settings = settings_to_train(cfg, rd)
    if not settings:
        raise DataError(f"{rd.path('pairs')}: no pairs file for any of pairs.settings "
                        f"({', '.join(cfg.pairs.settings)}); run `synthpref pairs` first")
    rd.stage("train")
    if cfg.train.launcher == "accelerate":
        resolve_accelerate_config(cfg.train.accelerate_config)  # fail before any compute
        for k in cfg.train.extra:  # same check the workers make, here before launching any
            from trl import DPOConfig

            _check_extra({k: None}, DPOConfig)
    summary: dict[str, Any] = {"settings": {}, "use_lora": cfg.train.use_lora, "launcher": cfg.train.launcher,
                               "no_pairs": [s for s in cfg.pairs.settings if s not in settings]}
    if cfg.train.sft.enabled:
        # The sft stage (before generate) made it; run here only if this stage is run on its own.
        if not is_done(rd, SFT_NAME, sft_inputs_hash(cfg)):
            from . import sft

            sft.run(cfg, rd)
        summary["sft"] = _summary_row({**read_json(rd.path("train", SFT_NAME, "done.json")), "skipped": True})
    for s in settings:
        if cfg.train.launcher == "accelerate":
            h = setting_inputs_hash(cfg, rd, s)
            res = ({**read_json(rd.path("train", s, "done.json")), "skipped": True}
                   if is_done(rd, s, h) else _launch(cfg, rd, s, h))
        else:
            res = train_setting(cfg, rd, s)
        summary["settings"][s] = _summary_row(res)
    skipped = [s for s in cfg.pairs.settings if s not in settings]
    if skipped:
        summary["no_pairs"] = skipped
    # The model of a setting that was dropped, or whose pairs became empty, moves to stale/, so
    # evaluation and the report never pick it up.
    from ..rundir import retire_unlisted

    folder = rd.path("train")
    retire_unlisted(rd, "train", [SFT_NAME, *sft_phase_names(cfg), *settings, *(p.name for p in folder.iterdir() if not p.is_dir())])
    return summary


# --------------------------------------------------------------------------- for the evaluate stage
def load_trained(cfg: StudyConfig, rd: RunDir, setting: str, device: str = "cpu"):
    """(model, tokenizer) of a trained setting, ready for generation (left padding).

    LoRA runs are the starting model plus the saved adapter, merged in memory (merge_and_unload),
    so callers get one plain model either way. `setting='sft'` gives the starting model.
    """
    from ..models import load_causal_lm, load_tokenizer

    start = start_model_spec(cfg, rd)
    if setting == SFT_NAME and not cfg.train.sft.enabled:
        return load_causal_lm(start, device), prepare_tokenizer(start)
    d = trained_model_dir(rd, setting)
    if not d.is_dir():
        raise DataError(f"{d}: no trained model for '{setting}'; run `synthpref train` first")
    tok = load_tokenizer(start.model_copy(update={"path": str(d), "revision": None}), padding_side="left")
    if (d / "adapter_config.json").exists():
        from peft import PeftModel

        base = load_causal_lm(start, device)
        model = PeftModel.from_pretrained(base, str(d)).merge_and_unload()
        model.eval()
        return model, tok
    return load_causal_lm(start.model_copy(update={"path": str(d), "revision": None}), device), tok
