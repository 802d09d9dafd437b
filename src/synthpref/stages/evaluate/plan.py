"""Which models the evaluate stage answers with, on which prompts, and how they are named in caches.

Everything here is read from the config and the run directory; no model is loaded. A model is
loaded only through `ModelSession`, on first use, so a model whose outputs are all cached is never
loaded and only one is in memory at a time.
"""

from __future__ import annotations

import logging
from typing import Any

from ...backends.generation import GenParams, get_backend_class
from ...config import ModelSpec, StudyConfig
from ...errors import ConfigError, DataError, did_you_mean
from ...lineage import SFT_NAME
from ...rundir import RunDir, read_json, stable_id
from .formats import Format, parse_format

log = logging.getLogger(__name__)

EVAL_VERSION = 1
SFT = SFT_NAME  # the starting model: the SFT model, or the base model when there is no SFT run
BENIGN = "benign"


def models_to_evaluate(cfg: StudyConfig, rd: RunDir) -> tuple[list[str], list[str]]:
    """(models to evaluate, settings skipped because they have no trained model)."""
    from ...lineage import trained_model_dir

    valid = [SFT, *cfg.pairs.settings]
    if cfg.evaluate.models is not None:
        for m in cfg.evaluate.models:
            if m not in valid:
                raise ConfigError(f"evaluate.models: '{m}' is neither 'sft' nor a pair setting{did_you_mean(m, valid)}")
        return list(cfg.evaluate.models), []
    present = [s for s in cfg.pairs.settings if trained_model_dir(rd, s).exists()]
    return [SFT, *present], [s for s in cfg.pairs.settings if s not in present]


def safety_sets(cfg: StudyConfig) -> list[str]:
    return list(cfg.evaluate.safety.sets if cfg.evaluate.safety.sets is not None else cfg.prompts.eval)


def evaluating_backend(cfg: StudyConfig):
    """The generation backend class of `evaluate.safety.backend`, which must answer with trained models."""
    cls = get_backend_class(cfg.evaluate.safety.backend)
    if not cls.EVALUATES_TRAINED:
        from ...backends.generation import REGISTRY

        able = [n for n in REGISTRY if get_backend_class(n).EVALUATES_TRAINED]
        raise ConfigError(f"evaluate.safety.backend: backend '{cfg.evaluate.safety.backend}' cannot answer with "
                          f"a trained model; use one of {', '.join(able)}")
    return cls


def checked_inputs(cfg: StudyConfig, rd: RunDir) -> tuple[dict[str, Format], list[str], list[str], list[str]]:
    """(formats, prompt sets, models, skipped settings), after everything a typo can break is checked,
    before any model loads."""
    formats = {f: parse_format(f) for f in cfg.evaluate.safety.formats}
    sets = safety_sets(cfg)
    for s in sets:
        if not rd.path("prompts", f"eval_{s}.jsonl").exists():
            raise DataError(f"{rd.path('prompts', f'eval_{s}.jsonl')}: missing; run the prompts stage first")
    evaluating_backend(cfg)
    if cfg.evaluate.general.mmlu_subjects:
        from ...lm_eval_tasks import check_subjects

        check_subjects(cfg.evaluate.general.mmlu_subjects)
    models, missing = models_to_evaluate(cfg, rd)
    for s in missing:
        log.warning("evaluate: setting '%s' has no trained model; skipped", s)
    return formats, sets, models, missing


def gen_params(cfg: StudyConfig) -> GenParams:
    # Greedy decoding with no repetition penalty or n-gram blocking: the paper's evaluation decodes
    # greedily, and those processors (used for training-data sampling) would change greedy outputs.
    s = cfg.evaluate.safety
    # inherit_generation_config (the authors': true): a backend that honours it lets the model's own
    # generation_config (e.g. Qwen's repetition_penalty 1.05) shape the greedy answer.
    return GenParams(temperature=1.0, top_p=1.0, repetition_penalty=1.0, no_repeat_ngram_size=0,
                     max_new_tokens=s.max_new_tokens, batch_size=s.batch_size,
                     inherit_generation_config=s.inherit_generation_config)


def model_ref(cfg: StudyConfig, rd: RunDir, model: str) -> Any:
    """What identifies the weights of `model` in the caches' inputs hashes."""
    from ... import lineage

    if model == SFT:
        if cfg.train.sft.enabled:
            return {"sft": lineage.sft_inputs_hash(cfg)}
        return {"base": lineage.base_model_spec(cfg).model_dump(mode="json")}
    done = rd.path("train", model, "done.json")
    if done.exists():
        return {"setting": model, "train": read_json(done).get("inputs_hash")}
    return {"setting": model, "train": None}


def build_requests(cfg: StudyConfig, rd: RunDir, model: str, formats: list[Format]) -> list[dict]:
    """One record skeleton per (set, format, prompt) plus one per benign prompt, with its key."""
    rows = []
    for set_name in safety_sets(cfg):
        for p in read_set(rd, f"eval_{set_name}"):
            for fmt in formats:
                text = fmt.user_text(p["text"])
                rows.append({"model": model, "set": set_name, "format": fmt.name, "prompt_id": p["prompt_id"],
                             "prompt": p["text"], "input": text,
                             "key": stable_id("eval", model, set_name, fmt.name, p["prompt_id"], text)})
    if cfg.evaluate.over_refusal and rd.path("prompts", "benign.jsonl").exists():
        for p in read_set(rd, BENIGN):
            rows.append({"model": model, "set": BENIGN, "format": "chat", "prompt_id": p["prompt_id"],
                         "prompt": p["text"], "input": p["text"],
                         "key": stable_id("eval", model, BENIGN, "chat", p["prompt_id"], p["text"])})
    return rows


def read_set(rd: RunDir, name: str) -> list[dict]:
    from ..prompts import read_prompts

    return read_prompts(rd, name)


class ModelSession:
    """Loads the model on first use and frees it on exit, so a model whose outputs are all
    cached is never loaded, and only one is in memory at a time."""

    def __init__(self, cfg: StudyConfig, rd: RunDir, name: str, device: str):
        self.cfg, self.rd, self.name, self.device = cfg, rd, name, device
        self.model = self.tokenizer = None

    @property
    def spec(self) -> ModelSpec:
        from ...lineage import start_model_spec

        return start_model_spec(self.cfg, self.rd)

    def get(self):
        if self.model is None:
            self.model, self.tokenizer = load_model(self.cfg, self.rd, self.name, self.device)
        return self.model, self.tokenizer

    def release(self) -> None:
        """Drop the model now (e.g. once a backend has converted it), so the next one does not sit
        beside it; a later `get` loads it again."""
        from ...models import free

        self.model = self.tokenizer = None
        free()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def load_model(cfg: StudyConfig, rd: RunDir, name: str, device: str):
    from ...lineage import load_trained

    return load_trained(cfg, rd, name, device, cuda_dtype=cfg.evaluate.cuda_dtype)
