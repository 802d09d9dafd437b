"""Which weights a model name means, in one place.

A study names models; the stages load weights. The mapping:

- the *base* model: `train.base_model`, else the target as configured (`base_model_spec`);
- `sft` (`SFT_NAME`): with `train.sft.enabled`, the SFT stage's output in train/sft/model/, which
  then also answers as the target in generate and probe (`policy_spec`) and is where DPO starts
  (`start_model_spec`); without SFT, the base model itself;
- a pair setting: train/<setting>/model/ — full weights, or a LoRA adapter that `load_trained`
  merges onto the start model in memory;
- what identifies each of these in a cache key: `policy_ref`, `start_ref`, `sft_inputs_hash`.

Used by the sft, generate, probe, train and evaluate stages; nothing here imports a stage.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from .config import ModelSpec, StudyConfig
from .errors import DataError, SynthprefError
from .rundir import RunDir, hash_obj, read_json, sha256_file

# Bumped whenever a change alters what training produces, so finished settings are retrained.
TRAIN_VERSION = 1
SFT_NAME = "sft"  # reserved: train/sft/ holds the SFT stage, and evaluate calls the start model "sft"
# Config fields that choose *how* training is launched or reported, not what it computes.
_LAUNCH_ONLY = ("launcher", "accelerate_config", "num_processes", "report_to", "keep_checkpoints")


def trained_model_dir(rd: RunDir, setting: str) -> Path:
    """Folder of the final model of `setting` (an adapter for LoRA runs, full weights otherwise)."""
    return rd.path("train", setting, "model")


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


def start_ref(cfg: StudyConfig, rd: RunDir) -> dict:
    """What identifies the starting model in an inputs hash (the SFT run's hash when there is one)."""
    if cfg.train.sft.enabled:
        return {"sft": sft_inputs_hash(cfg)}
    return base_model_spec(cfg).model_dump(mode="json")


def policy_spec(cfg: StudyConfig, rd: RunDir, name: str):
    """The spec a stage should load for model `name`: for the target with SFT enabled, the SFT
    model (train/sft/model, same backend and prompt settings); otherwise models.<name> as written."""
    if name == cfg.target and cfg.train.sft.enabled:
        if not trained_model_dir(rd, SFT_NAME).is_dir():
            raise DataError(f"{trained_model_dir(rd, SFT_NAME)}: no SFT model yet; run `synthpref sft` first "
                            "(train.sft.enabled is true, so the target answers as its SFT model)")
        return start_model_spec(cfg, rd)
    return cfg.models[name]


def policy_ref(cfg: StudyConfig, name: str) -> str | None:
    """What identifies the SFT weights in a cache key (None when `name` is used as written)."""
    if name == cfg.target and cfg.train.sft.enabled:
        return sft_inputs_hash(cfg)
    return None


# --------------------------------------------------------------------------- inputs hashes
def train_fields(cfg: StudyConfig) -> dict:
    d = cfg.train.model_dump(mode="json")
    for k in _LAUNCH_ONLY:
        d.pop(k, None)
    return d


# TrainConfig fields the SFT run uses (through common_args); the rest are DPO-only.
_SFT_SHARED_FIELDS = ("per_device_train_batch_size", "gradient_accumulation_steps", "warmup_ratio",
                      "lr_scheduler_type", "gradient_checkpointing", "bf16")


def _sft_data_ref(d) -> dict:
    ref = d.model_dump(mode="json")
    p = Path(d.source).expanduser()
    if p.is_file():
        ref["sha256"] = sha256_file(p)
    return ref


def _dpo_prompts_ref(cfg: StudyConfig) -> dict:
    ref = cfg.prompts.train.model_dump(mode="json")
    p = Path(cfg.prompts.train.source).expanduser()
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
    # With exclude_dpo_prompts the SFT data depends on the DPO prompt set too.
    dpo = _dpo_prompts_ref(cfg) if sft.exclude_dpo_prompts else None
    return hash_obj({"version": TRAIN_VERSION, "stage": SFT_NAME, "sft": hyper, "phase": i, "dpo_prompts": dpo,
                     "data": [_sft_data_ref(d) for d in sft.data()[:i + 1]],
                     "train": shared, "seed": cfg.seed, "base": base_model_spec(cfg).model_dump(mode="json")})


def sft_phase_names(cfg: StudyConfig) -> list[str]:
    """train/<name>/ of each SFT phase; the last is 'sft' (the model DPO starts from)."""
    n = max(len(cfg.train.sft.data()), 1)
    return [f"{SFT_NAME}_phase{i + 1}" for i in range(n - 1)] + [SFT_NAME]


def sft_inputs_hash(cfg: StudyConfig) -> str:
    return sft_phase_hash(cfg, max(len(cfg.train.sft.data()), 1) - 1)


def is_done(rd: RunDir, name: str, inputs_hash: str) -> bool:
    done = rd.path("train", name, "done.json")
    if not done.exists() or not trained_model_dir(rd, name).exists():
        return False
    with contextlib.suppress(SynthprefError):
        return read_json(done).get("inputs_hash") == inputs_hash
    return False


# --------------------------------------------------------------------------- loading
def load_trained(cfg: StudyConfig, rd: RunDir, setting: str, device: str = "cpu", cuda_dtype: str | None = None):
    """(model, tokenizer) of a trained setting, ready for generation (left padding).

    LoRA runs are the starting model plus the saved adapter, merged in memory (merge_and_unload),
    so callers get one plain model either way. `setting='sft'` gives the starting model.
    `cuda_dtype`: the dtype on CUDA for a spec with dtype auto (evaluate.cuda_dtype).
    """
    from .chat import prepare_tokenizer
    from .models import load_causal_lm, load_tokenizer, with_cuda_dtype

    start = start_model_spec(cfg, rd)
    if cuda_dtype:
        start = with_cuda_dtype(start, device, cuda_dtype)
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


def plain_weights(cfg: StudyConfig, rd: RunDir, name: str) -> Path | None:
    """A folder with the full weights of model `name` (safetensors), when one exists without
    merging: the base model's folder for 'sft' without SFT, train/<name>/model for a full
    fine-tune. None for a LoRA run: merge it in memory (`load_trained`) and `save_merged`."""
    from .models import resolve_path

    if name == SFT_NAME and not cfg.train.sft.enabled:
        return Path(resolve_path(start_model_spec(cfg, rd).path))
    d = trained_model_dir(rd, name)
    if not d.is_dir():
        raise DataError(f"{d}: no trained model for '{name}'; run `synthpref train` first")
    return None if (d / "adapter_config.json").exists() else d


def save_merged(model, tokenizer, out: Path) -> Path:
    """Write a merged in-memory model and its tokenizer to `out` (replaced) as safetensors: the
    copy an engine that loads folders (vLLM, the CTranslate2 converter) needs for a LoRA run."""
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
