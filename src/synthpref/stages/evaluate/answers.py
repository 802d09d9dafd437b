"""Safety and over-refusal answers: every request answered greedily by the evaluated model.

The engine is `evaluate.safety.backend`, a name in the generation registry (the same backends the
generate stage uses). The stage asks the backend class, never its name: `for_evaluation` prepares
the model (hf answers with the in-memory model, ct2 converts it once), `evaluation_ref` says what
the engine adds to the answers' cache key, `end_evaluation` frees what one format's backend holds.
"""

from __future__ import annotations

import dataclasses

from ...backends.generation import EvalTarget, GenRequest, get_backend_class
from ...config import StudyConfig
from ...rundir import RecordWriter, RunDir, hash_obj, stable_id
from .formats import Format
from .plan import EVAL_VERSION, SFT, ModelSession, gen_params, model_ref


def _seed(*parts) -> int:
    return int(stable_id(*parts, n=8), 16)


def eval_target(cfg: StudyConfig, rd: RunDir, session: ModelSession) -> EvalTarget:
    """What the backend hooks see of the session's model; nothing is loaded until `load` is called."""
    from ...lineage import trained_model_dir

    base = session.name == SFT and not cfg.train.sft.enabled
    return EvalTarget(name=session.name, spec=session.spec, device=session.device,
                      weights=None if base else trained_model_dir(rd, session.name),
                      identity=model_ref(cfg, rd, session.name), work_dir=rd.path("eval", session.name),
                      load=session.get, release=session.release)


def generate_responses(cfg: StudyConfig, rd: RunDir, session: ModelSession, rows: list[dict],
                       formats: dict[str, Format]) -> list[dict]:
    """Greedy responses for `rows`, cached per record in eval/<model>/generations.jsonl."""
    params = gen_params(cfg)
    backend_cls = get_backend_class(cfg.evaluate.safety.backend)
    target = eval_target(cfg, rd, session)
    engine = backend_cls.evaluation_ref(target)
    inputs = hash_obj({"version": EVAL_VERSION, "model": model_ref(cfg, rd, session.name),
                       "params": dataclasses.asdict(params), "seed": cfg.seed,
                       **({"engine": engine} if engine is not None else {}),
                       **({"cuda_dtype": cfg.evaluate.cuda_dtype} if str(session.device).startswith("cuda") else {})})
    writer = RecordWriter(rd.path("eval", session.name, "generations.jsonl"), "key", inputs)
    todo = [r for r in rows if not writer.done(r["key"])]
    if todo:
        make, tok = backend_cls.for_evaluation(target)
        by_format: dict[str, list[dict]] = {}
        for r in todo:
            by_format.setdefault(r["format"], []).append(r)
        for fmt_name, group in by_format.items():
            _answer_format(cfg, writer, make, tok, formats[fmt_name].spec_for(session.spec), group, params)
    writer.finish()
    return [writer.records[r["key"]] for r in rows]


def _answer_format(cfg: StudyConfig, writer: RecordWriter, make, tok, spec, group: list[dict], params) -> None:
    """One format's pending records, answered by one backend and written as they come."""
    from ...chat import format_prompt

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
    backend.end_evaluation()
