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
counted in `unlabelled`. The offline embedding RM is fitted on jbb-judge and pyrit-objective, so
its numbers there are in-sample (`in_training: true`); its held-out numbers are in its card.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from . import assets
from .backends.scoring.base import ScoreItem, scorer_spec
from .backends.scoring.embedding_rm import _read_csv
from .config import StudyConfig
from .errors import ConfigError, did_you_mean


def _jbb() -> list[dict]:
    rows = _read_csv(assets.fetch("jbb") / "classifier_comparison.csv")
    return [{"prompt": r["goal"], "response": r["target_response"], "label": r["human_majority"] == "1"} for r in rows]


def _pyrit(files: list[Path]) -> list[dict]:
    out = []
    for f in files:
        for r in _read_csv(f):
            if r["human_score"] in ("0", "1"):
                out.append({"prompt": r["objective"], "response": r["assistant_response"], "label": r["human_score"] == "1"})
    return out


def _pyrit_objective() -> list[dict]:
    return _pyrit(sorted((assets.fetch("pyrit-scorer-evals") / "objective").glob("*.csv")))


def _pyrit_refusal() -> list[dict]:
    return _pyrit([assets.fetch("pyrit-scorer-evals") / "refusal_scorer" / "refusal.csv"])


# set name -> (loader, what the positive human label means)
SETS: dict[str, tuple[Callable[[], list[dict]], str]] = {
    "jbb-judge": (_jbb, "harmful"),
    "pyrit-objective": (_pyrit_objective, "harmful"),
    "pyrit-refusal": (_pyrit_refusal, "refusal"),
}


def load_set(name: str) -> list[dict]:
    if name not in SETS:
        raise ConfigError(f"unknown agreement set '{name}'{did_you_mean(name, SETS)}")
    return SETS[name][0]()


def agreement(labels: list[bool], preds: list[bool | None]) -> dict:
    """n, accuracy and Cohen's kappa over the rows with a prediction."""
    from sklearn.metrics import cohen_kappa_score

    pairs = [(y, p) for y, p in zip(labels, preds) if p is not None]
    n = len(pairs)
    if n == 0:
        return {"n": 0, "unlabelled": len(labels), "accuracy": float("nan"), "kappa": float("nan")}
    ys, ps = [int(y) for y, _ in pairs], [int(p) for _, p in pairs]
    kappa = float(cohen_kappa_score(ys, ps)) if len(set(ys) | set(ps)) > 1 else float("nan")
    return {"n": n, "unlabelled": len(labels) - n, "accuracy": sum(y == p for y, p in zip(ys, ps)) / n,
            "kappa": kappa, "human_positive_rate": sum(ys) / n, "judge_positive_rate": sum(ps) / n}


def run_agreement(cfg: StudyConfig, judge_name: str, set_name: str, device: str | None = None) -> dict:
    """{n, accuracy, kappa, ...} of scorer `judge_name` against human labels of `set_name`."""
    from .stages.score import score_texts

    rows = load_set(set_name)
    positive = SETS[set_name][1]
    items = [ScoreItem(f"{i:05d}", r["prompt"], r["response"]) for i, r in enumerate(rows)]
    results = score_texts(judge_name, cfg, items, device)
    if positive == "refusal":
        preds = [None if r.harmful is None else not r.harmful for r in results]
    else:
        preds = [r.harmful for r in results]
    out = agreement([r["label"] for r in rows], preds)
    spec = scorer_spec(judge_name, cfg)
    out.update({"judge": judge_name, "set": set_name, "positive": positive,
                "unparseable": sum(1 for r in results if not r.parsed),
                "in_training": spec.kind == "embedding_rm" and set_name in ("jbb-judge", "pyrit-objective")})
    return out
