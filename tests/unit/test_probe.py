"""The separability probe's statistics, grouped cross-validation and feature extraction."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import KFold

from synthpref.stages import probe
from synthpref.config import ModelSpec


def _pairs_data(n_pairs: int, dim: int, signal: float, seed: int = 0):
    """Gaussian features; the chosen side is shifted by `signal` along one direction."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(2 * n_pairs, dim))
    y = np.tile([1, 0], n_pairs)
    X[y == 1, 0] += signal
    groups = [f"p{i // 2}" for i in range(2 * n_pairs)]
    return X, y, groups


def test_wilson_interval_matches_reference_values():
    # Brown, Cai & DasGupta (2001): p=0.5, n=100 -> [0.4038, 0.5962]; p=0, n=10 -> [0, 0.2775].
    assert probe.wilson(0.5, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    assert probe.wilson(0.0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    lo, hi = probe.wilson(0.9, 40)
    assert lo < 0.9 < hi and hi < 1


def test_folds_never_split_a_pair():
    groups = [f"p{i // 2}" for i in range(60)]
    splits = probe.grouped_folds(groups, 5)
    assert len(splits) == 5
    seen_test = []
    for train, test in splits:
        tr = {groups[i] for i in train}
        te = {groups[i] for i in test}
        assert not tr & te
        seen_test += list(test)
    assert sorted(seen_test) == list(range(60))
    assert len(probe.grouped_folds(groups[:6], 5)) == 3  # fewer pairs than folds


def test_grouping_prevents_pair_identity_leak():
    """Each pair shares a random identity vector; the label is pure noise on top of it. Split by
    example, the probe learns an identity's label from one side and mislabels the other (accuracy
    far from 0.5); grouped by prompt it cannot, so accuracy stays at chance."""
    rng = np.random.default_rng(1)
    n, dim = 80, 120
    ident = rng.normal(size=(n, dim))
    X = np.repeat(ident, 2, axis=0) + 0.01 * rng.normal(size=(2 * n, dim))
    y = np.tile([1, 0], n)
    groups = [f"p{i // 2}" for i in range(2 * n)]

    grouped = probe.cross_validate(probe.dense_probe, X, y, groups, 5)["accuracy"]
    assert 0.35 <= grouped <= 0.65

    proba = np.zeros(2 * n)
    for tr, te in KFold(5, shuffle=True, random_state=0).split(X):  # the leak: pairs straddle folds
        est = probe.dense_probe().fit(X[tr], y[tr])
        proba[te] = est.predict_proba(X[te])[:, 1]
    leaky = float(((proba >= 0.5) == y).mean())
    assert abs(leaky - 0.5) > 0.2


def test_separable_is_high_and_shuffled_labels_are_chance():
    X, y, g = _pairs_data(100, 20, signal=4.0)
    res = probe.cross_validate(probe.dense_probe, X, y, g, 5)
    assert res["accuracy"] > 0.95 and res["pair_accuracy"] > 0.95
    assert res["ci_low"] < res["accuracy"] < res["ci_high"] and res["n_pairs"] == 100 and res["n_examples"] == 200
    y_shuf = np.random.default_rng(3).permutation(y)
    shuf = probe.cross_validate(probe.dense_probe, X, y_shuf, g, 5)
    assert 0.35 <= shuf["accuracy"] <= 0.65
    assert shuf["ci_low"] < 0.5 < shuf["ci_high"]


def test_cross_validation_is_deterministic():
    X, y, g = _pairs_data(40, 10, signal=0.8, seed=5)
    assert probe.cross_validate(probe.dense_probe, X, y, g, 4) == probe.cross_validate(probe.dense_probe, X, y, g, 4)


def test_surface_probe_finds_length_shortcut_and_not_noise():
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta"]

    def text(k):
        return " ".join(rng.choice(words, size=k))

    long_short = [text(int(rng.integers(30, 40))) if i % 2 == 0 else text(int(rng.integers(3, 8))) for i in range(80)]
    y = np.tile([1, 0], 40)
    g = [f"p{i // 2}" for i in range(80)]
    texts = np.asarray(long_short, dtype=object)
    assert probe.cross_validate(probe.surface_probe, texts, y, g, 5)["accuracy"] > 0.9
    assert probe.cross_validate(probe.length_probe, texts, y, g, 5)["accuracy"] > 0.9
    noise = np.asarray([text(10) for _ in range(80)], dtype=object)
    assert 0.3 <= probe.cross_validate(probe.surface_probe, noise, y, g, 5)["accuracy"] <= 0.7


def test_surface_counts_refusals():
    f = probe.surface_numeric(["I'm sorry, but I cannot help with that.", "Sure! Step 1: do it."])
    assert f[0, -2] >= 2 and f[0, -1] == 1.0 and f[1, -2] == 0 and f[1, -1] == 0.0


def test_probe_layers_include_embeddings_and_last():
    assert probe.probe_layers(30, 10) == [0, 10, 20, 30]
    assert probe.probe_layers(30, 4)[-1] == 30 and probe.probe_layers(2, 4) == [0, 2]


def test_format_conversation_chat_and_plain(tiny_model_dir):
    from synthpref.models import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    full, prefix, special = probe.format_conversation(tok, None, "Hi?", "Hello.")
    assert full.startswith(prefix) and "Hello." in full and "<|im_start|>assistant" in prefix and not special
    full, prefix, _ = probe.format_conversation(tok, ModelSpec(path="x", system_prompt="Be safe."), "Hi?", "Hello.")
    assert prefix.index("Be safe.") < prefix.index("Hi?") and full.startswith(prefix)
    tok.chat_template = None
    spec = ModelSpec(path="x", plain_template="Q: {prompt}\nA:")
    full, prefix, special = probe.format_conversation(tok, spec, "Hi {x}?", "Hello.")
    assert (full, prefix, special) == ("Q: Hi {x}?\nA:Hello.", "Q: Hi {x}?\nA:", True)


def test_hidden_features_do_not_depend_on_batch_padding(tiny_model_dir):
    """Left padding and the response mask must make an item's features independent of its batch."""
    from synthpref.models import load_causal_lm, load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    model = load_causal_lm(str(tiny_model_dir))
    items = [("Short?", "Yes."), ("A much longer prompt about the ocean and cats?", "Cats like to sleep. " * 5),
             ("Mid prompt?", "Sure, here is how to do it.")]
    layers = probe.probe_layers(2, 1)
    together = probe.hidden_features(model, tok, None, items, layers, ["last", "mean"], 256, 8, "cpu")
    alone = probe.hidden_features(model, tok, None, items[:1], layers, ["last", "mean"], 256, 8, "cpu")
    assert set(together) == {f"L{l}_{p}" for l in (0, 1, 2) for p in ("last", "mean")}
    assert together["L2_last"].shape == (3, 32)
    for k in together:
        np.testing.assert_allclose(together[k][0].astype(np.float32), alone[k][0].astype(np.float32), atol=2e-2)
    assert not np.allclose(together["L2_last"][0], together["L2_mean"][0])
    # Truncation keeps the end of the response and still yields features.
    short = probe.hidden_features(model, tok, None, items, [2], ["mean"], 16, 2, "cpu")
    assert np.isfinite(short["L2_mean"].astype(np.float32)).all()


def test_feature_cache_resumes(tmp_path):
    c = probe.FeatureCache(tmp_path, {"a": 1})
    c.add(["k1", "k2"], {"f": np.array([[1, 2], [3, 4]], dtype=np.float16)})
    again = probe.FeatureCache(tmp_path, {"a": 1})
    assert again.missing(["k1", "k2", "k3", "k3"]) == ["k3"]
    np.testing.assert_array_equal(again.matrix(["k2", "k1"], "f"), [[3, 4], [1, 2]])
    assert probe.FeatureCache(tmp_path, {"a": 2}).missing(["k1"]) == ["k1"]  # other settings, other folder


def test_pair_accuracy_counts_pairs():
    proba = np.array([0.9, 0.2, 0.4, 0.6, 0.5, 0.5])
    y = np.array([1, 0, 1, 0, 1, 0])
    assert probe._pair_accuracy(proba, y, ["a", "a", "b", "b", "c", "c"]) == 0.5
