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

The loop, checkpoints, resume and launchers are shared with SFT (synthpref.training); which
weights the start model and each trained setting are is synthpref.lineage's business.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..chat import prepare_tokenizer
from ..config import ModelSpec, StudyConfig
from ..errors import ConfigError, DataError
from ..lineage import (SFT_NAME, TRAIN_VERSION, is_done, sft_inputs_hash, sft_phase_names, start_model_spec, start_ref,
                       train_fields)
from ..rundir import RunDir, hash_obj, read_json, read_jsonl, retire_unlisted, sha256_file
from ..settings import pairs_path
from ..training import Built, check_extra, common_args, fit, launch, load_for_training, require_disk, summary_row
from . import Checks

PAIR_FIELDS = ("prompt", "chosen", "rejected")

# --------------------------------------------------------------------------- stage protocol
CONFIG = ("train", "pairs", "seed", "replicate_seed")
READS = ("pairs", "sft")
WRITES = ("train",)
VERSION = TRAIN_VERSION


def check(cfg: StudyConfig, checks: Checks) -> None:
    """Before any compute: the start model can be found, LoRA's top_layers fits its layer count,
    the `extra` keys are DPOConfig fields, and the accelerate launch can start here (its config
    exists, DeepSpeed is installed if it asks for it, the machine has the processes' cores/GPUs)."""
    from ..errors import SynthprefError
    from ..lineage import base_model_spec
    from ..model_facts import layer_count
    from ..models import check_reference
    from ..training import disk_problem, launch_problems, resolve_accelerate_config

    t = cfg.train
    if t.base_model and t.base_model not in cfg.models:
        p = check_reference(t.base_model)
        if p:
            checks.problem("train.base_model", p)
    if t.use_lora and t.lora.top_layers is not None:
        base = base_model_spec(cfg)
        n = layer_count(base.path, base.revision)
        if n is None:
            checks.note(f"train.lora.top_layers: the layer count of '{base.path}' could not be read; checked when "
                        "training starts")
        elif t.lora.top_layers > n:
            checks.problem("train.lora.top_layers", f"{t.lora.top_layers} > the model's {n} layers; use at most {n}")
    if t.extra:
        try:
            from trl import DPOConfig

            check_extra(t.extra, DPOConfig)
        except SynthprefError as e:
            checks.error(str(e))
    room = disk_problem(cfg)
    if room:  # a note here (validate may run on another machine than the run); the sft and train stages refuse
        checks.note(f"train: {room}")
    if t.launcher == "accelerate" and t.accelerate_config:
        problems, notes = launch_problems(cfg)
        for where, msg in problems:
            checks.problem(where, msg)
        for msg in notes:
            checks.note(msg)
    elif t.accelerate_config:
        try:
            resolve_accelerate_config(t.accelerate_config)
        except SynthprefError as e:
            checks.problem("train.accelerate_config", str(e))


def estimate(cfg: StudyConfig, plan) -> list[tuple]:
    """Per setting: optimizer steps from the prompt count (an upper bound on pairs)."""
    import math

    t = cfg.train
    per_step = t.per_device_train_batch_size * t.gradient_accumulation_steps * (plan.train_gpus if plan.gpu else 1)
    steps = t.max_steps if t.max_steps > 0 else math.ceil(math.ceil(plan.n_train / per_step) * t.num_train_epochs)
    from ..costs import PAIR_TOKENS

    rows = []
    for setting in cfg.pairs.settings:
        wall, gh = plan.train_cost(plan.target, steps * per_step * PAIR_TOKENS, 8, steps * t.gradient_accumulation_steps)
        rows.append((setting, f"{steps} steps", wall, gh, plan.size_note(plan.target)))
    return rows


def settings_to_train(cfg: StudyConfig, rd: RunDir) -> list[str]:
    """The configured settings that have a pairs file (a setting can legitimately yield none)."""
    return [s for s in cfg.pairs.settings if pairs_path(rd, s).exists() and pairs_path(rd, s).stat().st_size > 0]


def setting_inputs_hash(cfg: StudyConfig, rd: RunDir, setting: str) -> str:
    return hash_obj({"version": TRAIN_VERSION, "setting": setting, "pairs": sha256_file(pairs_path(rd, setting)),
                     "train": train_fields(cfg), "seed": cfg.replicate, "start": start_ref(cfg, rd)})


def _truncate(tok, text: str, max_tokens: int) -> str:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= max_tokens else tok.decode(ids[:max_tokens])


def load_pairs(cfg: StudyConfig, rd: RunDir, setting: str, tok, spec: ModelSpec) -> list[dict]:
    """Pairs in TRL's conversational format, provenance columns dropped.

    TRL 1.x has no `max_prompt_length`; `train.max_prompt_length` bounds the user message here
    (keeping its start), and `train.max_length` bounds prompt + answer inside TRL (keep_start).
    The target's system prompt, if it has one, is prepended (DPO trains in the chat template; under
    `generate.sampling.generation_prompt: raw` the answers were generated without it)
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


def dpo_config(cfg: StudyConfig, device: str, output_dir: Path):
    """The trl.DPOConfig for one setting, every TrainConfig field mapped; `extra` goes in last."""
    from trl import DPOConfig

    t = cfg.train
    check_extra(t.extra, DPOConfig)
    kwargs = common_args(cfg, device, output_dir, seed=cfg.replicate)
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


def train_setting(cfg: StudyConfig, rd: RunDir, setting: str, *, _callbacks: list | None = None) -> dict:
    """DPO on pairs/<setting>.jsonl from the starting model -> train/<setting>/model/.

    The same function runs in-process (launcher: local) and in each `accelerate launch` worker.
    """
    if setting == SFT_NAME:
        raise ConfigError(f"pairs.settings: '{SFT_NAME}' is reserved for the SFT model; rename that setting")
    if not pairs_path(rd, setting).exists():
        raise DataError(f"{pairs_path(rd, setting)}: file not found; run `synthpref pairs` first")

    def build(device, ckpt, callbacks) -> Built:
        from datasets import Dataset
        from trl import DPOTrainer

        spec = start_model_spec(cfg, rd)
        tok = prepare_tokenizer(spec)
        rows = load_pairs(cfg, rd, setting, tok, spec)
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
        trainer = DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=tok,
                             peft_config=lora_config(cfg, model) if cfg.train.use_lora else None,
                             callbacks=callbacks)
        pairs_sha = sha256_file(pairs_path(rd, setting))
        return Built(trainer, spec,
                     {"data setting": setting, "pairs file": f"pairs/{setting}.jsonl", "pairs sha256": pairs_sha,
                      "pairs": len(rows)},
                     {"setting": setting, "pairs_sha256": pairs_sha, "n_pairs": len(rows), "use_lora": cfg.train.use_lora})

    return fit(cfg, rd, setting, "dpo", setting_inputs_hash(cfg, rd, setting), build, _callbacks)


def run(cfg: StudyConfig, rd: RunDir) -> dict:
    """Train every configured setting that has pairs (SFT first when enabled); returns a summary."""
    settings = settings_to_train(cfg, rd)
    if not settings:
        raise DataError(f"{rd.path('pairs')}: no pairs file for any of pairs.settings "
                        f"({', '.join(cfg.pairs.settings)}); run `synthpref pairs` first")
    require_disk(cfg)
    rd.stage("train")
    summary: dict[str, Any] = {"settings": {}, "use_lora": cfg.train.use_lora, "launcher": cfg.train.launcher,
                               "no_pairs": [s for s in cfg.pairs.settings if s not in settings]}
    if cfg.train.sft.enabled:
        # The sft stage (before generate) made it; run here only if this stage is run on its own.
        if not is_done(rd, SFT_NAME, sft_inputs_hash(cfg)):
            from . import sft

            sft.run(cfg, rd)
        summary["sft"] = summary_row({**read_json(rd.path("train", SFT_NAME, "done.json")), "skipped": True})
    for s in settings:
        if cfg.train.launcher == "accelerate":
            h = setting_inputs_hash(cfg, rd, s)
            res = ({**read_json(rd.path("train", s, "done.json")), "skipped": True}
                   if is_done(rd, s, h) else launch(cfg, rd, s, h))
        else:
            res = train_setting(cfg, rd, s)
        summary["settings"][s] = summary_row(res)
    # The model of a setting that was dropped, or whose pairs became empty, moves to stale/, so
    # evaluation and the report never pick it up.
    folder = rd.path("train")
    retire_unlisted(rd, "train", [SFT_NAME, *sft_phase_names(cfg), *settings, *(p.name for p in folder.iterdir() if not p.is_dir())])
    return summary
