"""Stage 2, generate: every source model answers every training prompt.

For each source model (one in memory at a time) and each prompt in prompts/train.jsonl (the target
as its SFT model, train/sft/model, when `train.sft.enabled`: the sft stage runs first):
`num_samples` sampled responses (paper: 5 at temperature 0.5, top_p 0.9, top_k 50,
repetition_penalty 1.2, no_repeat_ngram_size 3, 128 new tokens) plus one greedy response without
penalties (HC+Self uses the target's greedy answer; `sampling.greedy_penalties` adds them).
Responses shorter than `min_chars` characters after stripping are kept but marked `dropped` (the
authors drop responses under 5 characters), so the counts stay auditable.

Outputs (record format in synthpref.tables):
    generate/<model>.jsonl   one record per response, sorted by response_id
    generate/human.jsonl     the prompts' human chosen/rejected responses (Original, HC+Self)
    generate/stats.json      per model: requested, generated, dropped, tokens, seconds, tokens/s

Determinism: response_id = stable_id(model, prompt_id, kind, sample_index, study seed), and the
record's sampling seed is derived from (study seed, response_id), so a response's text does not
depend on batching, order or how often the run was interrupted (see backends/generation/hf.py).
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

# Bump when the way a record is produced changes, so old files recompute instead of mixing.
GENERATE_VERSION = 2  # 2: greedy without penalties, explicit top_k


@dataclass(frozen=True)
class ModelPlan:
    """Effective sampling for one source model (study defaults + its override)."""

    num_samples: int
    greedy: bool
    params: GenParams
    min_chars: int


def source_models(cfg: StudyConfig) -> list[str]:
    """generate.sources, or the models the requested pair settings use, in a fixed order: the
    target, then stronger, peers and gpt4o members, then models named by custom settings."""
    if cfg.generate.sources:
        return list(dict.fromkeys(cfg.generate.sources))
    from .pairs import models_needed

    need = models_needed(cfg)
    order = [cfg.target, *cfg.roles.stronger, *cfg.roles.peers, *cfg.roles.gpt4o, *need]
    return [n for n in dict.fromkeys(order) if n in need]


def model_plan(cfg: StudyConfig, name: str) -> ModelPlan:
    s: SamplingConfig = cfg.generate.sampling
    o = cfg.generate.overrides.get(name)
    pick = lambda field: getattr(s, field) if o is None or getattr(o, field) is None else getattr(o, field)  # noqa: E731
    params = GenParams(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, repetition_penalty=s.repetition_penalty,
                       no_repeat_ngram_size=s.no_repeat_ngram_size, max_new_tokens=pick("max_new_tokens"),
                       batch_size=pick("batch_size"), greedy_penalties=s.greedy_penalties)
    return ModelPlan(pick("num_samples"), pick("greedy"), params, s.min_chars)


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
            rid = stable_id(name, p["prompt_id"], kind, idx, cfg.seed)
            seed = record_seed(cfg.seed, rid)
            req = GenRequest(key=rid, messages=user_message(p["text"]), seed=seed, greedy=kind == "greedy")
            out.append((req, {"response_id": rid, "prompt_id": p["prompt_id"], "model": name,
                              "backend": cfg.models[name].backend, "seed": seed, "kind": kind,
                              "sample_index": idx}))
    return out


def model_inputs_hash(cfg: StudyConfig, name: str, prompts: list[dict], plan: ModelPlan) -> str:
    """What a model's records depend on: its spec (minus runtime-only options), sampling and seed.

    The prompt ids and the number of samples are not part of it: each record is keyed by (model,
    prompt, kind, sample index, seed) and its sampling seed derives from that key, so adding
    prompts or samples generates only the new records, and removing some drops only theirs (they
    move to stale/generate/<model>.jsonl, see `generate_model`)."""
    from .sft import policy_ref

    spec = cfg.models[name].model_dump(mode="json")
    runtime = get_backend_class(cfg.models[name].backend).RUNTIME_OPTIONS
    spec["options"] = {k: v for k, v in spec["options"].items() if k not in runtime}
    return hash_obj({"version": GENERATE_VERSION, "model": name, "spec": spec,
                     "params": {k: v for k, v in asdict(plan.params).items() if k != "batch_size"},
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


def is_dropped(text: str, min_chars: int) -> bool:
    return len(text.strip()) < min_chars


def human_records(prompts: list[dict], min_chars: int) -> list[dict]:
    out = []
    for p in prompts:
        for kind in ("human_chosen", "human_rejected"):
            text = p.get(kind)
            if text is None or not str(text).strip():
                continue
            out.append({"response_id": stable_id("human", p["prompt_id"], kind), "prompt_id": p["prompt_id"],
                        "model": "human", "backend": None, "seed": None, "kind": kind, "sample_index": 0,
                        "text": str(text), "n_tokens": None, "finish_reason": None,
                        "dropped": is_dropped(str(text), min_chars)})
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
    writer = RecordWriter(rd.path("generate", f"{name}.jsonl"), "response_id",
                          model_inputs_hash(cfg, name, prompts, plan))
    wanted = {req.key for req, _ in todo}
    _keep_stale(rd, name, writer.prune(lambda r: r["response_id"] in wanted))
    pending = [(req, rec) for req, rec in todo if not writer.done(req.key)]
    t0, new_tokens, load_s, extra = time.perf_counter(), 0, 0.0, {}
    if pending:  # a complete file (or a partial holding every record) needs no model load
        skeleton = {req.key: rec for req, rec in pending}
        from .sft import policy_spec

        spec = policy_spec(cfg, rd, name)  # the target answers as its SFT model when SFT is enabled
        backend = get_backend_class(spec.backend)(spec, device=device, **backend_kwargs)
        load_s, t0 = time.perf_counter() - t0, time.perf_counter()
        try:
            with writer, _progress(console or Console(stderr=True)) as bar:
                task = bar.add_task(f"generate {name}", total=len(todo), completed=len(todo) - len(pending), tps=0.0)
                for res in backend.generate([req for req, _ in pending], plan.params):
                    writer.add({**skeleton[res.key], "text": res.text, "n_tokens": res.n_tokens,
                                "finish_reason": res.finish_reason, "refused_by_api": res.refused,
                                "dropped": res.refused or is_dropped(res.text, plan.min_chars)})
                    new_tokens += res.n_tokens
                    bar.update(task, advance=1, tps=new_tokens / max(time.perf_counter() - t0, 1e-9))
            report = getattr(backend, "report", None)  # e.g. the responses backend's matched/unmatched counts
            extra = report() if report else {}
        finally:
            backend.close()
            del backend
            free()
    seconds = time.perf_counter() - t0 if pending else 0.0
    recs = writer.finish()
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
    humans = human_records(prompts, cfg.generate.sampling.min_chars)
    write_jsonl(out / "human.jsonl", humans)
    stats["human"] = {"requested": len(humans), "generated": len(humans),
                      "dropped": sum(r["dropped"] for r in humans), "tokens": None}
    write_json(out / "stats.json", {"version": GENERATE_VERSION, "device": device, "models": stats})
    # A model no longer in the config must not be scored or paired: its file moves to stale/.
    retire_unlisted(rd, "generate", [f"{m}.jsonl" for m in stats] + ["stats.json"])
    return {"models": len(stats) - 1, "responses": sum(s["generated"] for s in stats.values()),
            "dropped": sum(s["dropped"] for s in stats.values()),
            "refused_by_api": sum(s.get("refused_by_api", 0) for s in stats.values())}
