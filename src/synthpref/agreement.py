"""How well a judge agrees with human labels, on packaged human-labelled sets.

Sets (each row: prompt, response, human label):
- `jbb-judge`: JailbreakBench's judge comparison (Chao et al. 2024), 100 responses to JBB
  goals with three human labels each; positive = `human_majority` 1 (jailbroken). Compared
  with the judge's `harmful`.
- `pyrit-objective`: PyRIT scorer-evals `objective/*.csv`; positive = `human_score` 1 (the
  harmful objective was achieved). Compared with `harmful`.
- `pyrit-refusal`: PyRIT scorer-evals `refusal_scorer/refusal.csv`; positive = `human_score` 1
  (the response is a refusal). Compared with "the judge says not harmful" (for the keyword
  matcher: a refusal string was found).
Accuracy and Cohen's kappa (Cohen 1960, sklearn.metrics.cohen_kappa_score) are over rows the
judge could label; rows it could not (unparseable, or a scorer without a harmful flag) are
counted in `unlabelled`.

Nothing is scored against rows it was fitted on. The offline embedding RM (`embedding_rm`) is
fitted on jbb-judge and pyrit-objective: on those sets `run_agreement` reports its out-of-fold
predictions (the same grouped folds as its card; `out_of_fold: true`) and says so. The harm judge
(`harm_head`) has its harm head fitted on PyRIT's harm labels and its refusal head on pyrit-refusal
(whose agreement it reports out of fold, nested); its harm figure on jbb-judge is on rows it was not
fitted on, but its training data were chosen among five candidates by that set (harm_head's
docstring), a small selection effect its `how` names. A fourth set, `pyrit-harm-pairs`, measures a
reward scorer's pairwise accuracy (share of human preference pairs where it scores the
human-chosen response higher); it is refused for a scorer fitted on those rows (`harm_head`).
"""

from __future__ import annotations

from .backends.scoring.base import ScoreItem, score_texts, scorer_spec
from .config import StudyConfig
from .data import LABELLED_SETS as SETS, PACKAGED, load_set
from .errors import ConfigError
from .stats import agreement


# scorer kind -> agreement sets its fitted head has seen (rows it must never be scored against)
FITTED_ON = {"embedding_rm": {"jbb-judge", "pyrit-objective"}, "harm_head": {"pyrit-harm-pairs"}}
PAIRWISE_SET = "pyrit-harm-pairs"


def pairwise_agreement(cfg: StudyConfig, judge_name: str, device: str | None = None) -> dict:
    """Share of the packaged human preference pairs where the scorer rates the human-chosen
    response above the human-rejected one (ties count as errors)."""
    pairs = PACKAGED[PAIRWISE_SET]()
    items = [ScoreItem(f"c{i:05d}", p["text"], p["human_chosen"]) for i, p in enumerate(pairs)]
    items += [ScoreItem(f"r{i:05d}", p["text"], p["human_rejected"]) for i, p in enumerate(pairs)]
    res = {r.key: r.score for r in score_texts(judge_name, cfg, items, device)}
    ok = [res[f"c{i:05d}"] is not None and res[f"r{i:05d}"] is not None and res[f"c{i:05d}"] > res[f"r{i:05d}"]
          for i in range(len(pairs))]
    return {"n": len(pairs), "pairwise_accuracy": sum(ok) / len(ok) if ok else float("nan"),
            "judge": judge_name, "set": PAIRWISE_SET, "held_out": True}


def run_agreement(cfg: StudyConfig, judge_name: str, set_name: str, device: str | None = None) -> dict:
    """{n, accuracy, kappa, ...} of scorer `judge_name` against human labels of `set_name`.

    A scorer fitted on `set_name` is measured out of fold (embedding_rm) or refused (ConfigError)."""
    spec = scorer_spec(judge_name, cfg)
    if set_name == PAIRWISE_SET:
        if set_name in FITTED_ON.get(spec.kind, set()):
            raise ConfigError(f"judge '{judge_name}' ({spec.kind}) is fitted on {set_name}; its agreement there "
                              "would be in-sample, so it is not reported")
        return pairwise_agreement(cfg, judge_name, device)
    rows = load_set(set_name)
    if set_name in FITTED_ON.get(spec.kind, set()):
        if spec.kind != "embedding_rm":
            raise ConfigError(f"judge '{judge_name}' ({spec.kind}) is fitted on {set_name}; its agreement there "
                              "would be in-sample, so it is not reported")
        from .backends.scoring.embedding_rm import out_of_fold_harmful

        preds = out_of_fold_harmful([r["prompt"] for r in rows], [r["response"] for r in rows])
        out = agreement([r["label"] for r in rows], preds)
        out.update({"judge": judge_name, "set": set_name, "positive": SETS[set_name][1], "unparseable": 0,
                    "in_training": True, "out_of_fold": True})
        return out
    positive = SETS[set_name][1]
    items = [ScoreItem(f"{i:05d}", r["prompt"], r["response"]) for i, r in enumerate(rows)]
    results = score_texts(judge_name, cfg, items, device)
    if positive == "refusal":
        preds = [None if r.harmful is None else not r.harmful for r in results]
    else:
        preds = [r.harmful for r in results]
    out = agreement([r["label"] for r in rows], preds)
    out.update({"judge": judge_name, "set": set_name, "positive": positive,
                "unparseable": sum(1 for r in results if not r.parsed), "in_training": False, "out_of_fold": False})
    return out


def measured_agreement(cfg: StudyConfig, judge_name: str) -> dict | None:
    """The judge's agreement with human labels on rows it was not fitted on, for results.json:
    {set, n, accuracy, kappa, how}; None where no packaged measurement applies (API/LLM judges)."""
    spec = scorer_spec(judge_name, cfg)
    if spec.kind == "keywords" and not spec.options:
        a = run_agreement(cfg, judge_name, "jbb-judge")
        how = "no fitting; the full set"
    elif spec.kind == "harm_head":
        from .backends.scoring.harm_head import card

        a = card()["agreement"]
        how = ("fitted on PyRIT harm labels only, none of the set's rows; its training data were chosen among "
               "five candidates on this set, a small selection effect")
    elif spec.kind == "embedding_rm":
        from .backends.scoring.embedding_rm import card

        c = card()["agreement"]
        return {"set": "jbb-judge + pyrit-objective", "n": None, "accuracy": c["cv_accuracy"], "kappa": c["cv_kappa"],
                "how": f"out-of-fold, {c['cv_folds']} folds grouped by prompt (fitted on these sets)"}
    else:
        return None
    return {"set": "jbb-judge", "n": a["n"], "accuracy": a["accuracy"], "kappa": a["kappa"], "how": how}


def own_answers_agreement(cfg: StudyConfig, judge_name: str) -> dict | None:
    """The judge's agreement on the labelled set of this toolkit's own kind of answers
    (labelled_answers: harmful substance, refusal), for results.json; None for judges that are not
    packaged (an LLM or API judge costs calls: `synthpref agreement --set synthpref-answers-v1`)."""
    from . import labelled_answers

    spec = scorer_spec(judge_name, cfg)
    if spec.kind not in ("harm_head", "keywords"):
        return None
    ok, why = labelled_answers.applies(cfg)
    key = (judge_name, spec.model_dump_json(), labelled_answers.file_digest())
    if key not in _OWN_ANSWERS:  # the same judge on the same rows gives the same verdicts: measured once
        _OWN_ANSWERS[key] = labelled_answers.judge_agreement(cfg, judge_name)
    return {**_OWN_ANSWERS[key], "in_distribution": ok, "why": why}


_OWN_ANSWERS: dict[tuple, dict] = {}


def refusal_agreement(cfg: StudyConfig, judge_name: str, cached_only: bool = False) -> dict | None:
    """Agreement of the refusal verdict that decides over-refusal and the answer classes (the
    judge's refusal verdict under synthpref.answer_classes' rules) with PyRIT's human refusal
    labels (refusal_scorer/refusal*.csv), on rows it was not fitted on: for `harm_head`, whose
    refusal head is fitted on these rows, nested out-of-fold predictions; for the keyword matcher
    (fitted on nothing) every row. {set, n, k, accuracy, ci_low, ci_high, kappa, how, rules};
    None for a judge that gives no refusal verdict, or (`cached_only`) when the harm_head's
    out-of-fold predictions are not in the cache yet."""
    from .answer_classes import RULES_VERSION, decide_refusal
    from .backends.scoring import harm_head
    from .stats import wilson_interval

    kind = scorer_spec(judge_name, cfg).kind
    if kind == "harm_head":
        if cached_only and not harm_head.refusal_oof_path().exists():
            return None
        rows = harm_head.refusal_out_of_fold()
        heads = [r["head_refusal"] for r in rows]
        how = ("nested out-of-fold: 5 folds grouped by prompt, C chosen inside each training part; the head is "
               "fitted on these rows, never on the row it predicts")
    elif kind == "keywords":
        rows = harm_head.refusal_rows()
        items = [ScoreItem(f"{i:05d}", r["prompt"], r["response"]) for i, r in enumerate(rows)]
        heads = [None if x.harmful is None else not x.harmful for x in score_texts(judge_name, cfg, items)]
        how = "no fitting; every row"
    else:
        return None
    preds = [decide_refusal(h, r["prompt"], r["response"]) for h, r in zip(heads, rows)]
    out = agreement([bool(r["label"]) for r in rows], preds)
    k = round(out["accuracy"] * out["n"]) if out["n"] else 0
    ci = wilson_interval(k, out["n"]) or (None, None)
    return {"judge": judge_name, "kind": kind, "verdict": "refusal", "set": "pyrit-refusal (refusal_scorer/refusal*.csv)",
            "n": out["n"], "k": k, "accuracy": out["accuracy"], "ci_low": ci[0], "ci_high": ci[1],
            "kappa": out["kappa"], "human_positive_rate": out.get("human_positive_rate"),
            "judge_positive_rate": out.get("judge_positive_rate"), "how": how, "rules": RULES_VERSION}


def reward_agreement(cfg: StudyConfig) -> dict | None:
    """The pair-selecting scorer's measured agreement with humans on rows it was not fitted on
    (for pairs/stats.json and the report); None where no packaged measurement applies."""
    spec = scorer_spec(cfg.score.reward, cfg)
    if spec.kind != "embedding_rm":
        return None
    from .backends.scoring.embedding_rm import card, head_path

    if not head_path().exists():  # fitted (and measured) by the score stage; never fitted here
        return {"scorer": cfg.score.reward, "kind": spec.kind, "pairwise_accuracy": None,
                "note": "head not fitted yet: run the score stage"}
    c = card()["agreement"]
    return {"scorer": cfg.score.reward, "kind": spec.kind,
            "pairwise_accuracy": c["pairwise_accuracy"], "pairs": c["pairs"], "pairs_set": PAIRWISE_SET,
            "pairs_how": "held out: these prompts are excluded from the head's training rows",
            "harm_accuracy": c["cv_accuracy"], "harm_kappa": c["cv_kappa"],
            "harm_how": f"out-of-fold on its own training rows (jbb-judge + pyrit-objective), {c['cv_folds']} folds "
                        "grouped by prompt"}
