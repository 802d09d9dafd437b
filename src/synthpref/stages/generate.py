"""Stage 2, generate: every source model answers every training prompt.

For each source model (one in memory at a time) and each prompt in prompts/train.jsonl (the target
as its SFT model, train/sft/model, when `train.sft.enabled`: the sft stage runs first):
`num_samples` sampled responses (paper: 5 at temperature 0.5, top_p 0.9, top_k 50,
repetition_penalty 1.2, no_repeat_ngram_size 3, 128 new tokens) plus one greedy response without
penalties (HC+Self uses the target's greedy answer; `sampling.greedy_penalties` adds them).
Responses shorter than `min_chars` characters after stripping are kept but marked `dropped` (the
authors drop sampled responses under 5 characters: `min_chars_scope: sampled`; `all` marks greedy,
human and single answers too), so the counts stay auditable. `dropped` is derived from the text,
so changing the scope re-marks records without generating anything.

The prompt local models continue is `sampling.generation_prompt`: raw (the authors: the prompt
text, no template, no special tokens) or chat (each model's prompt_format rule); the model spec's
own prompt_format, which training follows, is not changed by it. `inherit_generation_config` lets
backends that read a model's generation_config.json (hf) take from it what the authors left unset.

Outputs (record format in synthpref.tables):
    generate/<model>.jsonl   one record per response, sorted by response_id
    generate/human.jsonl     the prompts' human chosen/rejected responses (Original, HC+Self)
    generate/stats.json      per model: requested, generated, dropped, tokens, seconds, tokens/s

Determinism: response_id = stable_id(model, prompt_id, kind, sample_index, seed), and the
record's sampling seed is derived from (seed, response_id), so a response's text does not
depend on batching, order or how often the run was interrupted (see backends/generation/hf.py).
The seed is the study's `seed` for greedy answers and the replicate's (`cfg.replicate`: set per
seed by `seeds`, else `seed`) for sampled ones, so the replicates of a study share the greedy
records (same ids, reused from the first replicate's file: rundir.sharing) and differ in the rest.
Each model file is written through RecordWriter: a killed run keeps finished records and only
generates the rest; changing the model spec, sampling, prompts or seed starts that file over.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..backends.generation import GenParams, GenRequest, get_backend_class
from ..chat import user_message
from ..config import SamplingConfig, StudyConfig
from ..models import free, pick_device
from .prompts import read_prompts
from ..rundir import RecordWriter, RunDir, hash_obj, read_jsonl, retire_unlisted, stable_id, write_json, write_jsonl
from . import Checks

# Bump when the way a record is produced changes, so old files recompute instead of mixing.
GENERATE_VERSION = 2  # 2: greedy without penalties, explicit top_k

# --------------------------------------------------------------------------- stage protocol
CONFIG = ("models", "target", "roles", "generate", "pairs", "seed", "replicate_seed", "device")
READS = ("prompts", "sft")
WRITES = ("generate",)
VERSION = GENERATE_VERSION


def check(cfg: StudyConfig, checks: Checks) -> None:
    """Every model: its backend exists, takes its options, and its weights or file can be found."""
    from pydantic import ValidationError

    from ..backends.generation import REGISTRY
    from ..errors import SynthprefError

    for name, spec in cfg.models.items():
        try:
            cls = get_backend_class(spec.backend)
        except SynthprefError as e:
            checks.problem(f"models.{name}.backend", str(e))
            continue
        except ImportError as e:  # the backend module itself failed to import
            checks.problem(f"models.{name}.backend", f"backend '{spec.backend}' unavailable ({e}); valid: {', '.join(REGISTRY)}")
            continue
        problem = cls.check_spec(spec)
        if problem:
            checks.problem(f"models.{name}.{problem[0]}", problem[1])
        try:
            cls.Options.model_validate(spec.options)
        except ValidationError as e:
            err = e.errors()[0]
            checks.problem(f"models.{name}.options.{'.'.join(map(str, err['loc']))}", err["msg"])
    _note_inherit(cfg, checks)


def _note_inherit(cfg: StudyConfig, checks: Checks) -> None:
    """Say which local models cannot inherit their generation_config (their backend ignores it)."""
    if not cfg.generate.sampling.inherit_generation_config:
        return
    names = []
    for name, spec in cfg.models.items():
        try:
            cls = get_backend_class(spec.backend)
        except Exception:  # reported above
            continue
        if cls.NEEDS_LOCAL_WEIGHTS and not cls.INHERITS_GENERATION_CONFIG:
            names.append(f"{name} ({spec.backend})")
    if names:
        checks.note(f"generate.sampling.inherit_generation_config: {', '.join(names)} decode with the config's "
                    "settings only; their backend does not read the model's generation_config.json (hf does)")


def estimate(cfg: StudyConfig, plan) -> list[tuple]:
    """Per source model: tokens to generate (upper bound), or calls for API and file backends."""
    rows = []
    for m in source_models(cfg):
        mp = model_plan(cfg, m)
        tokens = plan.n_train * (mp.num_samples + int(mp.greedy)) * mp.params.max_new_tokens
        spec = cfg.models[m]
        cls = get_backend_class(spec.backend)
        if not cls.NEEDS_LOCAL_WEIGHTS:
            calls = plan.n_train * (mp.num_samples + int(mp.greedy))
            note = f"{calls:,} billed calls" if cls.COSTS_MONEY else ""
            rows.append((m, f"{tokens:,} tokens ({spec.backend})", calls * (cls.SECONDS_PER_CALL or 0.0) / 8, 0.0, note))
            continue
        sz = plan.size(m)
        if sz is None:
            rows.append((m, f"{tokens:,} tokens", None, None, plan.size_note(sz)))
            continue
        o = spec.options or {}
        gpus = int(o.get("tensor_parallel_size", 1)) * int(o.get("data_parallel_size", 1))
        wall, gh = plan.gen_cost(sz, tokens, gpus)
        rows.append((m, f"{tokens:,} tokens", wall, gh, plan.size_note(sz)))
    return rows


@dataclass(frozen=True)
class ModelPlan:
    """Effective sampling for one source model (study defaults + its override)."""

    num_samples: int
    greedy: bool
    params: GenParams
    min_chars: int
    min_chars_scope: str = "all"
    generation_prompt: str = "chat"


def source_models(cfg: StudyConfig) -> list[str]:
    """generate.sources, or the models the requested pair settings use, in a fixed order: the
    target, then stronger, peers and gpt4o members, then models named by custom settings."""
    if cfg.generate.sources:
        return list(dict.fromkeys(cfg.generate.sources))
    from ..settings import models_needed

    need = models_needed(cfg)
    order = [cfg.target, *cfg.roles.stronger, *cfg.roles.peers, *cfg.roles.gpt4o, *need]
    return [n for n in dict.fromkeys(order) if n in need]


def model_plan(cfg: StudyConfig, name: str) -> ModelPlan:
    s: SamplingConfig = cfg.generate.sampling
    o = cfg.generate.overrides.get(name)
    pick = lambda field: getattr(s, field) if o is None or getattr(o, field) is None else getattr(o, field)  # noqa: E731
    params = GenParams(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, repetition_penalty=s.repetition_penalty,
                       no_repeat_ngram_size=s.no_repeat_ngram_size, max_new_tokens=pick("max_new_tokens"),
                       batch_size=pick("batch_size"), greedy_penalties=s.greedy_penalties,
                       inherit_generation_config=s.inherit_generation_config)
    return ModelPlan(pick("num_samples"), pick("greedy"), params, s.min_chars, s.min_chars_scope, s.generation_prompt)


def takes_prompt_format(name: str, cfg: StudyConfig) -> bool:
    """Does this model's backend format prompts itself (and so honour generation_prompt)?"""
    return "prompt_format" in get_backend_class(cfg.models[name].backend).Options.model_fields


def generation_spec(cfg: StudyConfig, spec, name: str, plan: ModelPlan):
    """The spec a source model generates with: prompt_format raw for generation_prompt: raw."""
    if plan.generation_prompt == "raw" and takes_prompt_format(name, cfg):
        from ..chat import with_prompt_format

        return with_prompt_format(spec, "raw")
    return spec


def record_seed(study_seed: int, response_id: str) -> int:
    """The sampling seed of one record: 31 bits of hash(study seed, response_id)."""
    return int(stable_id("seed", study_seed, response_id), 16) % (2**31 - 1)


def build_requests(cfg: StudyConfig, name: str, prompts: list[dict], plan: ModelPlan) -> list[tuple[GenRequest, dict]]:
    """(request, record skeleton) for every response this model owes, in prompt order."""
    out = []
    for p in prompts:
        kinds = [("greedy", 0)] if plan.greedy else []
        kinds += [("sample", i) for i in range(plan.num_samples)]
        for kind, idx in kinds:
            # Greedy answers do not depend on a seed: they keep the study seed, so every replicate
            # (`seeds`) shares them; sampled answers take the replicate's seed.
            s = cfg.replicate if kind == "sample" else cfg.seed
            rid = stable_id(name, p["prompt_id"], kind, idx, s)
            seed = record_seed(s, rid)
            req = GenRequest(key=rid, messages=user_message(p["text"]), seed=seed, greedy=kind == "greedy")
            out.append((req, {"response_id": rid, "prompt_id": p["prompt_id"], "model": name,
                              "backend": cfg.models[name].backend, "seed": seed, "kind": kind,
                              "sample_index": idx}))
    return out


def model_inputs_hash(cfg: StudyConfig, name: str, prompts: list[dict], plan: ModelPlan, device: str = "cpu",
                      every_setting: bool = False) -> str:
    """What a model's records depend on: its spec (options as the backend resolves them on `device`,
    minus runtime-only ones), sampling and seed.

    The prompt ids and the number of samples are not part of it: each record is keyed by (model,
    prompt, kind, sample index, seed) and its sampling seed derives from that key, so adding
    prompts or samples generates only the new records, and removing some drops only theirs (they
    move to stale/generate/<model>.jsonl, see `generate_model`)."""
    from ..lineage import policy_ref

    spec = cfg.models[name].model_dump(mode="json")
    cls = get_backend_class(cfg.models[name].backend)
    spec["options"] = cls.record_options(spec["options"], device)
    params = {k: v for k, v in asdict(plan.params).items() if k not in ("batch_size", "inherit_generation_config")}
    if plan.num_samples == 0 and not every_setting:  # greedy only (e.g. the GPT-4o role): sampling cannot change its texts,
        used = ["max_new_tokens", "greedy_penalties"]  # so changing them keeps its (maybe paid) answers
        used += ["repetition_penalty", "no_repeat_ngram_size"] if plan.params.greedy_penalties else []
        params = {k: params[k] for k in used}
    # The authors' switches enter the hash only where they change this model's texts, so records
    # made before they existed (or by backends that ignore them, e.g. paid API answers) stay valid.
    if plan.params.inherit_generation_config and cls.INHERITS_GENERATION_CONFIG:
        params["inherit_generation_config"] = True
    if plan.generation_prompt == "raw" and takes_prompt_format(name, cfg):
        params["generation_prompt"] = "raw"
    return hash_obj({"version": GENERATE_VERSION, "model": name, "spec": spec, "params": params,
                     "min_chars": plan.min_chars, "seed": cfg.seed,
                     "sft": policy_ref(cfg, name)})


def _keep_stale(rd: RunDir, name: str, gone: list[dict]) -> None:
    """Records of prompts or samples no longer asked for go to stale/generate/<name>.jsonl (merged
    with what is there), so paid answers are kept on disk but never read by a stage."""
    if not gone:
        return
    path = rd.path("stale", "generate", f"{name}.jsonl")
    old = {r["response_id"]: r for r in (read_jsonl(path) if path.exists() else [])}
    old.update({r["response_id"]: r for r in gone})
    write_jsonl(path, [old[k] for k in sorted(old)])


def is_dropped(text: str, min_chars: int, kind: str = "sample", scope: str = "all") -> bool:
    """Too short to keep: under `min_chars` characters after stripping, for the responses `scope`
    covers (sampled: only `kind == "sample"`, the authors' filter, generate.py:148-149)."""
    return (scope == "all" or kind == "sample") and len(text.strip()) < min_chars


def _mark_dropped(rec: dict, plan: ModelPlan) -> bool:
    return bool(rec.get("refused_by_api")) or is_dropped(rec["text"], plan.min_chars, rec["kind"], plan.min_chars_scope)


def _remark(path, recs: list[dict], plan: ModelPlan) -> list[dict]:
    """Records with `dropped` re-derived for the current min_chars_scope (rewritten if one changed)."""
    fixed = [{**r, "dropped": _mark_dropped(r, plan)} for r in recs]
    if any(a["dropped"] != b["dropped"] for a, b in zip(recs, fixed)):
        write_jsonl(path, fixed)
    return fixed


def human_records(prompts: list[dict], min_chars: int, scope: str = "all") -> list[dict]:
    out = []
    for p in prompts:
        for kind in ("human_chosen", "human_rejected"):
            text = p.get(kind)
            if text is None or not str(text).strip():
                continue
            out.append({"response_id": stable_id("human", p["prompt_id"], kind), "prompt_id": p["prompt_id"],
                        "model": "human", "backend": None, "seed": None, "kind": kind, "sample_index": 0,
                        "text": str(text), "n_tokens": None, "finish_reason": None,
                        "dropped": is_dropped(str(text), min_chars, kind, scope)})
    return sorted(out, key=lambda r: r["response_id"])


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[tps]:.1f} tok/s"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=console, transient=False)


def generate_model(cfg: StudyConfig, rd: RunDir, name: str, prompts: list[dict], device: str,
                   console: Console | None = None, **backend_kwargs) -> dict:
    """Generate (or resume) generate/<name>.jsonl; returns this model's stats."""
    plan = model_plan(cfg, name)
    todo = build_requests(cfg, name, prompts, plan)
    h = model_inputs_hash(cfg, name, prompts, plan, device)
    # Before greedy-only models were keyed by the greedy settings alone, every setting was in the key:
    # a file stored under that key holds the same answers (maybe paid for) and is kept.
    earlier = [model_inputs_hash(cfg, name, prompts, plan, device, every_setting=True)] if plan.num_samples == 0 else []
    writer = RecordWriter(rd.path("generate", f"{name}.jsonl"), "response_id", h, same_as=earlier)
    wanted = {req.key for req, _ in todo}
    _keep_stale(rd, name, writer.prune(lambda r: r["response_id"] in wanted))
    pending = [(req, rec) for req, rec in todo if not writer.done(req.key)]
    t0, new_tokens, load_s, extra = time.perf_counter(), 0, 0.0, {}
    if pending:  # a complete file (or a partial holding every record) needs no model load
        skeleton = {req.key: rec for req, rec in pending}
        from ..lineage import policy_spec

        spec = generation_spec(cfg, policy_spec(cfg, rd, name), name, plan)  # the target answers as its SFT model
        backend = get_backend_class(spec.backend)(spec, device=device, **backend_kwargs)
        load_s, t0 = time.perf_counter() - t0, time.perf_counter()
        try:
            with writer, _progress(console or Console(stderr=True)) as bar:
                task = bar.add_task(f"generate {name}", total=len(todo), completed=len(todo) - len(pending), tps=0.0)
                for res in backend.generate([req for req, _ in pending], plan.params):
                    writer.add({**skeleton[res.key], "text": res.text, "n_tokens": res.n_tokens,
                                "finish_reason": res.finish_reason, "refused_by_api": res.refused,
                                "dropped": res.refused or is_dropped(res.text, plan.min_chars,
                                                                     skeleton[res.key]["kind"], plan.min_chars_scope)})
                    new_tokens += res.n_tokens
                    bar.update(task, advance=1, tps=new_tokens / max(time.perf_counter() - t0, 1e-9))
            report = getattr(backend, "report", None)  # e.g. the responses backend's matched/unmatched counts
            extra = report() if report else {}
        finally:
            backend.close()
            del backend
            free()
    seconds = time.perf_counter() - t0 if pending else 0.0
    recs = _remark(writer.path, writer.finish(), plan)
    return {"requested": len(todo), "generated": len(recs), "dropped": sum(bool(r["dropped"]) for r in recs),
            "refused_by_api": sum(bool(r.get("refused_by_api")) for r in recs),
            "tokens": sum(r["n_tokens"] or 0 for r in recs), "new_tokens": new_tokens,
            "load_seconds": round(load_s, 3), "seconds": round(seconds, 3),
            "tokens_per_s": round(new_tokens / seconds, 2) if new_tokens else None, **extra}


def run(cfg: StudyConfig, rd: RunDir) -> dict:
    out = rd.stage("generate")
    prompts = read_prompts(rd, "train")
    device = pick_device(cfg.device)
    stats = {name: generate_model(cfg, rd, name, prompts, device) for name in source_models(cfg)}
    humans = human_records(prompts, cfg.generate.sampling.min_chars, cfg.generate.sampling.min_chars_scope)
    write_jsonl(out / "human.jsonl", humans)
    stats["human"] = {"requested": len(humans), "generated": len(humans),
                      "dropped": sum(r["dropped"] for r in humans), "tokens": None}
    write_json(out / "stats.json", {"version": GENERATE_VERSION, "device": device, "models": stats})
    # A model no longer in the config must not be scored or paired: its file moves to stale/.
    retire_unlisted(rd, "generate", [f"{m}.jsonl" for m in stats] + ["stats.json"])
    return {"models": len(stats) - 1, "responses": sum(s["generated"] for s in stats.values()),
            "dropped": sum(s["dropped"] for s in stats.values()),
            "refused_by_api": sum(s.get("refused_by_api", 0) for s in stats.values())}
