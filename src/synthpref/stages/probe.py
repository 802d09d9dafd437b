"""The separability probe: how easily a linear classifier tells chosen from rejected, per setting.

The paper's mechanism (Sec. 5 of arXiv 2504.02193): multi-model pairs are highly linearly
separable, so DPO can lower its loss on superficial cues instead of learning the safety
constraint. The paper does not publish its probe, so this follows the standard linear-probe
recipe (Alain & Bengio 2016, "Understanding intermediate layers using linear classifier probes"):
an L2-regularised logistic regression on frozen features, scored by cross-validation. Feature
families, each probed separately:

* ``hidden``    the target model's hidden states of prompt + response (chat-formatted, as DPO
                sees them), at every `probe.layer_stride`-th layer plus the last, pooled at the
                last token or averaged over the response tokens;
* ``embedding`` a sentence embedding of the response alone (all-MiniLM-L6-v2 by default);
* ``surface``   shortcut features only: length, punctuation and refusal-keyword counts plus
                TF-IDF word n-grams (vectoriser fit inside each training fold);
* ``length``    character and word counts alone.

Each pair gives two examples (chosen = 1, rejected = 0). Folds are grouped by prompt (sklearn
GroupKFold; the repeats of a prompt that prompts.dedup: false keeps are one group), so the two
sides of a pair, or two pairs of one prompt, are never split across train and test. The 95%
interval is Wilson's score interval (Wilson 1927; recommended by Brown, Cai & DasGupta 2001) on the
pooled out-of-fold accuracy, with n = number of prompts (= pairs without repeats): the two
examples of a pair share a prompt and are not independent, so counting groups rather than
examples keeps the interval honest.
``pair_accuracy`` is the fraction of pairs whose chosen side gets the higher out-of-fold
probability (a ranking view that DPO's pairwise loss mirrors).

The reported hidden-state separability is the accuracy at one layer fixed before any result is
seen: ``probe.layer`` (default: the last layer) with the first ``probe.pooling``. Taking the best
of many layers' cross-validated accuracies would pick up noise as well as signal (the maximum of
several noisy estimates is biased upward, most at small n), and nested CV would cost a full inner
cross-validation per layer and outer fold; a fixed layer is unbiased and cheap. Every probed layer's
accuracy stays in ``rows`` (and probe/layers.png) as a curve to look at, not as the figure reported.

Outputs: probe/results.json, probe/layers.png, and a feature cache under probe/cache/ so each
unique (prompt, response) is encoded once across settings and a killed run resumes.
"""

from __future__ import annotations

import math
import random
import re
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..config import ModelSpec, StudyConfig
from ..data import base_prompt_id
from ..errors import ConfigError, DataError
from ..rundir import RunDir, atomic_open, donor_file, hash_obj, read_jsonl, stable_id, write_json
from ..backends.scoring.keywords import GCG_REFUSAL_PREFIXES
from ..figures import save_png
from ..stats import wilson_bounds

# --------------------------------------------------------------------------- stage protocol
CONFIG = ("probe", "replicate_seed")
READS = ("pairs", "sft")
WRITES = ("probe",)
VERSION = 3  # results.json: settings[<s>]["hidden"] is the fixed-layer figure (no max over layers)
FEATURES_VERSION = 2  # what the cached features depend on; unchanged, so caches carry over
Z95 = 1.959963984540054

# The keyword judge's refusal strings (Zou et al. 2023), lower-cased, plus a few modern refusals.
REFUSAL_KEYWORDS = tuple(dict.fromkeys(
    [p.lower() for p in GCG_REFUSAL_PREFIXES] + ["i can't", "i must decline", "i won't"]))
PUNCTUATION = ".,!?;:-*#'\"()[]/`"


# --------------------------------------------------------------------------- statistics
def wilson(p_hat: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a rate (Wilson 1927; Brown, Cai & DasGupta 2001)."""
    return (0.0, 1.0) if n <= 0 else wilson_bounds(p_hat, n, z)


def grouped_folds(groups: Sequence[str], folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """GroupKFold splits: every group (prompt) lies wholly in one test fold."""
    from sklearn.model_selection import GroupKFold

    groups = np.asarray(groups)
    k = min(folds, len(set(groups.tolist())))
    return list(GroupKFold(n_splits=k).split(np.zeros(len(groups)), groups=groups))


def cross_validate(make_estimator: Callable, X, y: np.ndarray, groups: Sequence[str], folds: int) -> dict:
    """Out-of-fold accuracy of a fresh estimator per fold (grouped by prompt), with Wilson CI."""
    y = np.asarray(y)
    proba = np.zeros(len(y), dtype=np.float64)
    splits = grouped_folds(groups, folds)
    for train, test in splits:
        est = make_estimator()
        est.fit(_take(X, train), y[train])
        proba[test] = est.predict_proba(_take(X, test))[:, list(est.classes_).index(1)]
    pred = (proba >= 0.5).astype(int)
    acc = float((pred == y).mean())
    n_pairs = len(set(np.asarray(groups).tolist()))
    lo, hi = wilson(acc, n_pairs)
    return {"accuracy": round(acc, 4), "ci_low": round(lo, 4), "ci_high": round(hi, 4),
            "pair_accuracy": _pair_accuracy(proba, y, groups), "n_pairs": n_pairs,
            "n_examples": int(len(y)), "folds": len(splits)}


def _pair_accuracy(proba: np.ndarray, y: np.ndarray, groups: Sequence[str]) -> float | None:
    by: dict[str, dict[int, float]] = {}
    for p, lab, g in zip(proba, y, groups):
        by.setdefault(g, {})[int(lab)] = float(p)
    wins = [1.0 if d[1] > d[0] else 0.5 if d[1] == d[0] else 0.0 for d in by.values() if 0 in d and 1 in d]
    return round(float(np.mean(wins)), 4) if wins else None


def _take(X, idx):
    if isinstance(X, np.ndarray):
        return X[idx]
    return [X[i] for i in idx]


# --------------------------------------------------------------------------- classifiers
def dense_probe():
    """Standardise, then L2 logistic regression (C=1): the usual linear probe on frozen features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))


def surface_numeric(texts) -> np.ndarray:
    """Shortcut features of a response: lengths, layout, punctuation, refusal-keyword hits."""
    rows = []
    for t in texts:
        low = t.lower().replace("\u2019", "'")
        words = t.split()
        n = max(len(t), 1)
        rows.append([
            len(t), len(words), math.log1p(len(t)), t.count("\n"),
            len(re.findall(r"^\s*(?:\d+[.)]|[-*•])\s", t, flags=re.M)),  # list items
            sum(ch.isdigit() for ch in t) / n, sum(ch.isupper() for ch in t) / n,
            *(t.count(ch) for ch in PUNCTUATION),
            sum(low.count(k) for k in REFUSAL_KEYWORDS),
            float(any(low.lstrip().startswith(k) for k in REFUSAL_KEYWORDS)),
        ])
    return np.asarray(rows, dtype=np.float64)


def length_numeric(texts) -> np.ndarray:
    return np.asarray([[len(t), len(t.split())] for t in texts], dtype=np.float64)


def surface_probe():
    """TF-IDF word 1-2 grams + scaled shortcut counts -> logistic regression. Being a Pipeline,
    the vectoriser's vocabulary and IDF are fit on the training fold only (no leakage)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import FeatureUnion, make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    union = FeatureUnion([
        ("tfidf", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, max_features=50000)),
        ("counts", make_pipeline(FunctionTransformer(surface_numeric), StandardScaler())),
    ])
    return make_pipeline(union, LogisticRegression(C=1.0, max_iter=2000))


def length_probe():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    return make_pipeline(FunctionTransformer(length_numeric), StandardScaler(), LogisticRegression(max_iter=2000))


# --------------------------------------------------------------------------- feature cache
class FeatureCache:
    """Features per text key, in .npz shards written atomically as batches finish (resume-safe).
    The folder name hashes everything the features depend on, so stale features are never reused."""

    def __init__(self, root: Path, identity: dict):
        self.dir = Path(root) / stable_id("features", identity)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data: dict[str, dict[str, np.ndarray]] = {}
        shards = sorted(self.dir.glob("shard-*.npz"))
        shared = donor_file(self.dir)  # a `seeds` replicate also reads the first run's features of this identity
        if shared is not None and shared.is_dir():
            shards = sorted(shared.glob("shard-*.npz")) + shards
        for f in shards:
            with np.load(f, allow_pickle=False) as z:
                arrays = {n: z[n] for n in z.files}
            for i, k in enumerate(arrays.pop("__keys__").tolist()):
                self.data[k] = {n: v[i] for n, v in arrays.items()}

    def missing(self, keys: Sequence[str]) -> list[str]:
        return [k for k in dict.fromkeys(keys) if k not in self.data]

    def add(self, keys: list[str], feats: dict[str, np.ndarray]) -> None:
        if not keys:
            return
        with atomic_open(self.dir / f"shard-{stable_id(*keys)}.npz", "wb") as f:
            np.savez(f, __keys__=np.asarray(keys), **feats)
        for i, k in enumerate(keys):
            self.data[k] = {n: v[i] for n, v in feats.items()}

    def matrix(self, keys: Sequence[str], name: str) -> np.ndarray:
        return np.stack([self.data[k][name] for k in keys]).astype(np.float32)


# --------------------------------------------------------------------------- hidden states
def format_conversation(tok, spec: ModelSpec | None, prompt: str, response: str) -> tuple[str, str, bool]:
    """(full text, prompt-only prefix, add_special_tokens) as generation and DPO training show a
    pair to the target: the same prompt-format rule as synthpref.chat (plain for base models)."""
    from ..chat import format_prompt, has_template, prompt_mode, with_system

    spec = spec or ModelSpec(path="-")
    msgs = [{"role": "user", "content": prompt}]
    prefix = format_prompt(tok, spec, msgs)
    if prompt_mode(tok, spec) == "plain":
        return prefix + response, prefix, True
    template = None if has_template(tok) else spec.chat_template
    full = tok.apply_chat_template(with_system(spec, msgs) + [{"role": "assistant", "content": response}],
                                   tokenize=False, chat_template=template)
    return full, prefix, False


def probe_layers(n_layers: int, stride: int, reported: int | None = None) -> list[int]:
    """Hidden-state indices 0 (embeddings) .. n_layers (last block), every `stride`, last always in,
    plus the reported layer."""
    return sorted(set(range(0, n_layers + 1, stride)) | {n_layers} | ({reported} if reported is not None else set()))


def reported_layer(requested: int | None, n_layers: int) -> int:
    """The hidden-state index whose accuracy is reported: `probe.layer`, or the last layer."""
    if requested is None:
        return n_layers
    if requested > n_layers:
        raise ConfigError(f"probe.layer: {requested}, but the target has hidden states 0..{n_layers} "
                          f"(0 = embeddings, {n_layers} = last layer); use one of those or null for the last")
    return requested


def num_layers(model) -> int:
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(cfg.num_hidden_layers)


def hidden_features(model, tok, spec: ModelSpec | None, items: list[tuple[str, str]], layers: list[int],
                    poolings: Sequence[str], max_length: int, batch_size: int, device: str) -> dict[str, np.ndarray]:
    """Pooled hidden states for (prompt, response) items: {"L<layer>_<pooling>": [n, d] float16}.

    `last` is the final token of the formatted conversation (what a reward head reads); `mean`
    averages the response's tokens only, so the prompt, shared by both sides, does not dilute it.
    Sequences are truncated from the left to keep the response's end, batched by length.
    """
    import torch

    enc = [format_conversation(tok, spec, p, r) for p, r in items]
    tok.padding_side, tok.truncation_side = "left", "left"
    order = sorted(range(len(items)), key=lambda i: -len(enc[i][0]))
    out = {f"L{l}_{p}": [None] * len(items) for l in layers for p in poolings}
    base = getattr(model, "base_model", model)  # skip the LM head: its logits are not needed
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        fulls = [enc[i][0] for i in idx]
        special = enc[idx[0]][2]
        batch = tok(fulls, add_special_tokens=special, truncation=True, max_length=max_length, padding=True,
                    return_tensors="pt").to(device)
        n_full = [len(tok(enc[i][0], add_special_tokens=special)["input_ids"]) for i in idx]
        n_pre = [len(tok(enc[i][1], add_special_tokens=special)["input_ids"]) for i in idx]
        width = batch["input_ids"].shape[1]
        pos = torch.arange(width, device=device)
        att = batch["attention_mask"].bool()
        # Position p of a left-padded, left-truncated row is token p - width + n_full of the full text.
        resp = torch.stack([(pos - width + nf >= npre) for nf, npre in zip(n_full, n_pre)]) & att
        resp = torch.where(resp.any(1, keepdim=True), resp, att)
        with torch.no_grad():
            hs = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      output_hidden_states=True).hidden_states
        m = resp.unsqueeze(-1).float()
        for l in layers:
            h = hs[l].float()
            pooled = {"last": h[:, -1, :], "mean": (h * m).sum(1) / m.sum(1)}
            for p in poolings:
                v = pooled[p].cpu().numpy().astype(np.float16)
                for j, i in enumerate(idx):
                    out[f"L{l}_{p}"][i] = v[j]
    return {k: np.stack(v) for k, v in out.items()}


# --------------------------------------------------------------------------- data
def _pairs_for(rd: RunDir, setting: str, max_pairs: int | None, seed: int) -> list[dict]:
    path = rd.path("pairs", f"{setting}.jsonl")
    if not path.exists():
        raise DataError(f"{path}: pairs not found; run `synthpref pairs` first")
    recs = read_jsonl(path, required=("prompt_id", "prompt", "chosen", "rejected"))
    if max_pairs and len(recs) > max_pairs:
        recs = random.Random(stable_id("probe-subsample", seed, setting)).sample(recs, max_pairs)
    return sorted(recs, key=lambda r: r["prompt_id"])


def examples(recs: list[dict]) -> dict:
    """Two examples per pair: (prompt, chosen, 1) and (prompt, rejected, 0), grouped by prompt_id."""
    prompts, responses, y, groups = [], [], [], []
    for r in recs:
        p = r["prompt"][-1]["content"] if isinstance(r["prompt"], list) else r["prompt"]
        for side, lab in (("chosen", 1), ("rejected", 0)):
            t = r[side][-1]["content"] if isinstance(r[side], list) else r[side]
            prompts.append(p)
            responses.append(t)
            y.append(lab)
            groups.append(base_prompt_id(r["prompt_id"]))  # a repeated prompt stays in one fold
    return {"prompts": prompts, "responses": responses, "y": np.asarray(y), "groups": groups}


def _hkey(prompt: str, response: str) -> str:
    return stable_id("conv", prompt, response)


def _rkey(response: str) -> str:
    return stable_id("resp", response)


# --------------------------------------------------------------------------- stage
def _hidden_cache(cfg: StudyConfig, rd: RunDir, items: dict[str, tuple[str, str]],
                  device: str) -> tuple[FeatureCache, list[int], int]:
    from .. import models

    from ..lineage import policy_ref, policy_spec

    spec = policy_spec(cfg, rd, cfg.target)  # the SFT model when SFT is enabled: the one DPO trains
    tok = models.load_tokenizer(spec)
    model = models.load_causal_lm(spec, device)
    try:
        n_layers = num_layers(model)
        layer = reported_layer(cfg.probe.layer, n_layers)
        layers = probe_layers(n_layers, cfg.probe.layer_stride, layer)
        cache = FeatureCache(rd.path("probe", "cache"), {
            "kind": "hidden", "model": spec.model_dump(mode="json"), "sft": policy_ref(cfg, cfg.target), "layers": layers, "pooling": cfg.probe.pooling,
            "max_length": cfg.probe.max_length, "version": FEATURES_VERSION, "device": device})
        todo = cache.missing(list(items))
        chunk = max(cfg.probe.batch_size * 16, 64)
        for s in range(0, len(todo), chunk):
            keys = todo[s:s + chunk]
            cache.add(keys, hidden_features(model, tok, spec, [items[k] for k in keys], layers, cfg.probe.pooling,
                                            cfg.probe.max_length, cfg.probe.batch_size, device))
    finally:
        del model
        models.free()
    return cache, layers, layer


def _embedding_cache(cfg: StudyConfig, rd: RunDir, texts: dict[str, str], device: str) -> FeatureCache:
    from sentence_transformers import SentenceTransformer

    from .. import models

    ref = models.resolve_path(cfg.probe.embedding_model)
    cache = FeatureCache(rd.path("probe", "cache"), {"kind": "embedding", "model": cfg.probe.embedding_model,
                                                     "version": FEATURES_VERSION})
    todo = cache.missing(list(texts))
    if todo:
        st = SentenceTransformer(ref, device=device, model_kwargs={"use_safetensors": True})
        try:
            for s in range(0, len(todo), 512):
                keys = todo[s:s + 512]
                emb = st.encode([texts[k] for k in keys], batch_size=cfg.probe.batch_size * 4,
                                convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
                cache.add(keys, {"embedding": emb.astype(np.float16)})
        finally:
            del st
            models.free()
    return cache


def plot_layers(rows: list[dict], path: Path, reported: int | None = None, reported_pooling: str | None = None,
                labels: dict[str, str] | None = None) -> None:
    """Accuracy per layer, one panel per pooling; the reported (fixed) layer is marked in the
    reported pooling's panel; settings named by `labels` (a dagger for stand-ins)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    hidden = [r for r in rows if r["family"] == "hidden"]
    poolings = sorted({r["pooling"] for r in hidden}) or ["last"]
    fig, axes = plt.subplots(1, len(poolings), figsize=(5.5 * len(poolings), 4.6), squeeze=False, sharey=True,
                             layout="constrained")
    for ax, pool in zip(axes[0], poolings):
        for setting in dict.fromkeys(r["setting"] for r in hidden):
            pts = sorted((r["layer"], r["accuracy"]) for r in hidden if r["setting"] == setting and r["pooling"] == pool)
            name = (labels or {}).get(setting, setting)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        ax.axhline(0.5, color="grey", ls=":", lw=1)
        if reported is not None and pool == reported_pooling:
            ax.axvline(reported, color="black", ls="--", lw=1)
            ax.annotate("reported layer", (reported, 0.32), xytext=(-4, 0), textcoords="offset points",
                        ha="right", fontsize=8)
        ax.set(title=f"hidden states, {pool} pooling", xlabel="layer (0 = embeddings)", ylim=(0.3, 1.02))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0][0].set_ylabel("chosen-vs-rejected probe accuracy (grouped CV)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    # Below the panels, never over the curves.
    fig.legend(handles, labels, loc="outside lower center", ncol=min(4, max(len(labels), 1)), fontsize=8)
    save_png(fig, path)


def _load_settings(cfg: StudyConfig, rd: RunDir) -> tuple[dict[str, dict], dict[str, str]]:
    """(setting -> probe examples, setting -> why it was skipped)."""
    from ..settings import resolve_settings

    data, skipped = {}, {}
    for name in resolve_settings(cfg):
        recs = _pairs_for(rd, name, cfg.probe.max_pairs, cfg.replicate)
        if len(recs) < 2:
            skipped[name] = f"{len(recs)} pair(s); the probe needs at least 2"
            continue
        data[name] = examples(recs)
    return data, skipped


def _feature_caches(cfg: StudyConfig, rd: RunDir, data: dict[str, dict], device: str):
    """(hidden-state cache or None, probed layers, reported layer or None, embedding cache or None);
    one model in memory at a time."""
    hcache = ecache = layer = None
    layers: list[int] = []
    if "hidden" in cfg.probe.features and data:
        items = {_hkey(p, r): (p, r) for d in data.values() for p, r in zip(d["prompts"], d["responses"])}
        hcache, layers, layer = _hidden_cache(cfg, rd, items, device)  # frees the target before the next model
    if "embedding" in cfg.probe.features and data:
        ecache = _embedding_cache(cfg, rd, {_rkey(r): r for d in data.values() for r in d["responses"]}, device)
    return hcache, layers, layer, ecache


def _probe_setting(pc, name: str, d: dict, hcache, layers: list[int], ecache) -> tuple[list[dict], str | None]:
    """Cross-validated probe rows for one setting (every feature family), and a surface warning or None."""
    y, g, base, rows, warning = d["y"], d["groups"], {"setting": name}, [], None
    if hcache is not None:
        keys = [_hkey(p, r) for p, r in zip(d["prompts"], d["responses"])]
        for l in layers:
            for pool in pc.pooling:
                res = cross_validate(dense_probe, hcache.matrix(keys, f"L{l}_{pool}"), y, g, pc.folds)
                rows.append({**base, "family": "hidden", "layer": l, "pooling": pool, **res})
    if ecache is not None:
        X = ecache.matrix([_rkey(r) for r in d["responses"]], "embedding")
        rows.append({**base, "family": "embedding", "layer": None, "pooling": None,
                     **cross_validate(dense_probe, X, y, g, pc.folds)})
    if "surface" in pc.features:
        texts = np.asarray(d["responses"], dtype=object)
        surf = cross_validate(surface_probe, texts, y, g, pc.folds)
        rows.append({**base, "family": "surface", "layer": None, "pooling": None, **surf})
        rows.append({**base, "family": "length", "layer": None, "pooling": None,
                     **cross_validate(length_probe, texts, y, g, pc.folds)})
        if surf["accuracy"] > pc.surface_warn_threshold:
            warning = (f"{name}: surface features alone tell chosen from rejected with accuracy {surf['accuracy']:.2f} "
                       f"(> probe.surface_warn_threshold {pc.surface_warn_threshold}); DPO can fit these pairs by "
                       "shortcuts (length, style, refusal words) rather than the safety constraint")
    return rows, warning


def _setting_result(rows: list[dict], n_pairs: int, layer: int | None, pooling: str) -> dict:
    """One setting's entry in results.json: the hidden-state accuracy at the fixed reported layer
    and pooling (not a maximum over layers), and each other family."""
    ci = ("accuracy", "ci_low", "ci_high", "pair_accuracy")
    fixed = next((r for r in rows if r["family"] == "hidden" and r["layer"] == layer and r["pooling"] == pooling), None)
    return {
        "n_pairs": n_pairs,
        "hidden": ({"layer": layer, "pooling": pooling, **{k: fixed[k] for k in ci},
                    "feature": f"hidden L{layer} {pooling}", "selection": "fixed layer (probe.layer)"}
                   if fixed else None),
        **{f: next(({k: r[k] for k in ci} for r in rows if r["family"] == f), None)
           for f in ("embedding", "surface", "length")},
    }


def _method(pc, layers: list[int], layer: int | None) -> dict:
    return {"classifier": "StandardScaler + LogisticRegression(C=1) (surface: TF-IDF 1-2 grams + counts)",
            "cv": f"GroupKFold by prompt_id, {pc.folds} folds (fewer when there are fewer pairs)",
            "ci": "Wilson 95% score interval, n = distinct prompts (the CV groups; `n_pairs` counts them)", "layers": layers, "pooling": pc.pooling,
            "reported": ({"layer": layer, "pooling": pc.pooling[0],
                          "rule": "fixed in advance: probe.layer (null = last layer) and the first probe.pooling; "
                                  "not a maximum over layers"} if layer is not None else None),
            "embedding_model": pc.embedding_model if "embedding" in pc.features else None,
            "max_pairs": pc.max_pairs, "max_length": pc.max_length,
            "config_hash": hash_obj(pc.model_dump(mode="json"))[:16]}


def _summary(per_setting: dict[str, dict], warnings: list[str]) -> dict:
    summary: dict = {}
    for name, s in per_setting.items():
        summary[name] = {"n_pairs": s["n_pairs"],
                         **{f: (s[f] or {}).get("accuracy") for f in ("hidden", "surface", "embedding")}}
    if warnings:
        summary["warnings"] = len(warnings)
    return summary


def check(cfg: StudyConfig, checks) -> None:
    """probe.layer names a hidden state the target has (read from its config.json, nothing loaded),
    so a bad index is refused before generation rather than after it."""
    if not (cfg.probe.enabled and "hidden" in cfg.probe.features and cfg.probe.layer is not None):
        return
    from ..lineage import base_model_spec
    from ..model_facts import layer_count

    base = base_model_spec(cfg)  # the probed model is its SFT model: the same layers
    n = layer_count(base.path, base.revision)
    if n is None:
        checks.note(f"probe.layer: the layer count of '{base.path}' could not be read; checked when the probe runs")
        return
    try:
        reported_layer(cfg.probe.layer, n)
    except ConfigError as e:
        checks.error(str(e))


def estimate(cfg: StudyConfig, plan) -> list[tuple]:
    return [("on" if cfg.probe.enabled else "off", "forward passes", None, None, "not estimated")]


def run(cfg: StudyConfig, rd: RunDir) -> dict:
    """Stage: probe/results.json (accuracy + 95% CI per setting and feature family; hidden states at the
    fixed reported layer, every probed layer in `rows`) and probe/layers.png (the per-layer curve)."""
    from rich.console import Console

    from ..models import pick_device, set_threads

    if not cfg.probe.enabled:
        from ..rundir import retire_unlisted

        retire_unlisted(rd, "probe", ["cache"])  # an earlier run's results are not this run's
        return {"skipped": "probe.enabled is false"}
    console = Console(stderr=True)
    set_threads()
    out = rd.stage("probe")
    data, skipped = _load_settings(cfg, rd)
    hcache, layers, layer, ecache = _feature_caches(cfg, rd, data, pick_device(cfg.device))
    rows, warnings, per_setting = [], [], {}
    for name, d in data.items():
        setting_rows, warning = _probe_setting(cfg.probe, name, d, hcache, layers, ecache)
        if warning:
            warnings.append(warning)
            console.print(f"[yellow]warning:[/yellow] {warning}")
        rows += setting_rows
        per_setting[name] = _setting_result(setting_rows, int(len(d["y"]) // 2), layer, cfg.probe.pooling[0])
    write_json(out / "results.json", {"version": VERSION, "target": cfg.target,
                                      "method": _method(cfg.probe, layers, layer),
                                      "settings": per_setting, "skipped": skipped, "rows": rows, "warnings": warnings})
    if any(r["family"] == "hidden" for r in rows):
        from ..standins import setting_label

        plot_layers(rows, out / "layers.png", layer, cfg.probe.pooling[0], {s: setting_label(cfg, s) for s in data})
    return _summary(per_setting, warnings)
