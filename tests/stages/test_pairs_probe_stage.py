"""The pairs and probe stages on a hand-made run directory: TRL accepts the pairs, and the probe
writes its results, plot, warnings and cache, reproducibly."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pairs_helpers import full_run  # noqa: E402

from synthpref import settings  # noqa: E402
from synthpref.stages import pairs, probe  # noqa: E402
from synthpref.rundir import read_json  # noqa: E402
from synthpref.errors import ConfigError  # noqa: E402


def test_pairs_load_with_datasets_and_train_with_trl_dpo(tmp_path, tiny_model_dir):
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    cfg, rd, _ = full_run(tmp_path, n_prompts=4)
    pairs.run(cfg, rd)
    for name in settings.PRESETS:
        ds = load_dataset("json", data_files=str(rd.path("pairs", f"{name}.jsonl")), split="train")
        assert ds.num_rows == 4 and {"prompt", "chosen", "rejected", "chosen_model", "margin"} <= set(ds.column_names)

    ds = load_dataset("json", data_files=str(rd.path("pairs", "hc_self.jsonl")), split="train")
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = DPOConfig(output_dir=str(tmp_path / "dpo"), max_steps=1, per_device_train_batch_size=2, bf16=False,
                     report_to=[], max_length=128, logging_steps=1, save_strategy="no", learning_rate=1e-3)
    trainer = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    row = trainer.train_dataset[0]
    assert row["chosen_ids"] and row["rejected_ids"] and row["prompt_ids"]
    assert ds[0]["chosen"][0]["content"].strip() in tok.decode(row["chosen_ids"])
    trainer.train()
    assert "loss" in trainer.state.log_history[0]
    assert any(not (before[n] == p.detach()).all() for n, p in model.named_parameters())


def _probe_cfg(tmp_path, target_path, features, n_prompts=8, stride=2):
    return full_run(tmp_path, n_prompts=n_prompts, target_path=target_path,
                    pairs={"settings": ["original", "self_rm"]},
                    probe={"features": features, "layer_stride": stride, "folds": 4, "batch_size": 4})


def test_probe_stage_results_plot_warning_cache_and_determinism(tmp_path, tiny_model_dir):
    cfg, rd, _ = _probe_cfg(tmp_path, tiny_model_dir, ["hidden", "surface"])
    pairs.run(cfg, rd)
    summary = probe.run(cfg, rd)
    json.dumps(summary)
    res = read_json(rd.path("probe", "results.json"))
    assert res["method"]["layers"] == [0, 2]
    assert set(res["settings"]) == {"original", "self_rm"}
    hidden = [r for r in res["rows"] if r["family"] == "hidden"]
    assert len(hidden) == 2 * 2 * 2  # settings x layers x poolings
    for r in res["rows"]:
        assert 0 <= r["ci_low"] <= r["accuracy"] <= r["ci_high"] <= 1 and r["n_pairs"] == 8
    # The reported figure is the fixed layer (default: the last, 2) with the first pooling, never a
    # maximum over layers; every layer stays in rows for the curve.
    assert res["method"]["reported"]["layer"] == 2 and res["method"]["reported"]["pooling"] == "last"
    for s in ("original", "self_rm"):
        fixed = res["settings"][s]["hidden"]
        row = next(r for r in hidden if r["setting"] == s and r["layer"] == 2 and r["pooling"] == "last")
        assert (fixed["layer"], fixed["pooling"], fixed["feature"]) == (2, "last", "hidden L2 last")
        assert fixed["accuracy"] == row["accuracy"] and fixed["ci_low"] == row["ci_low"]
        assert "best" not in res["settings"][s] and "best_layer" not in res["settings"][s]
    # The hand-made pairs differ by template and length: surface features separate them -> warning.
    assert res["settings"]["original"]["surface"]["accuracy"] == 1.0
    assert any(w.startswith("original:") and "shortcuts" in w for w in res["warnings"])
    assert rd.path("probe", "layers.png").read_bytes()[:4] == b"\x89PNG"

    shards = sorted(rd.path("probe", "cache").rglob("shard-*.npz"))
    first = rd.path("probe", "results.json").read_bytes()
    probe.run(cfg, rd)
    assert rd.path("probe", "results.json").read_bytes() == first
    assert sorted(rd.path("probe", "cache").rglob("shard-*.npz")) == shards  # nothing recomputed

    cfg2, rd2, _ = _probe_cfg(tmp_path / "again", tiny_model_dir, ["hidden", "surface"])
    pairs.run(cfg2, rd2)
    probe.run(cfg2, rd2)
    a, b = read_json(rd2.path("probe", "results.json")), res
    assert a["rows"] == b["rows"] and a["warnings"] == b["warnings"]

    # Switched off, the probe leaves no earlier results behind for the report to read as this run's.
    off = cfg.model_copy(update={"probe": cfg.probe.model_copy(update={"enabled": False})})
    assert "skipped" in probe.run(off, rd)
    assert not rd.path("probe", "results.json").exists() and not rd.path("probe", "layers.png").exists()
    assert sorted(rd.path("probe", "cache").rglob("shard-*.npz")) == shards  # the cache stays for later


def test_probe_reports_the_configured_layer_not_the_best(tmp_path, tiny_model_dir):
    """probe.layer picks the reported layer in advance (probed even off the stride); the figure is
    that layer's cross-validated accuracy even where another layer scores higher."""
    cfg, rd, _ = full_run(tmp_path, n_prompts=8, target_path=tiny_model_dir, pairs={"settings": ["self_rm"]},
                          probe={"features": ["hidden"], "layer_stride": 2, "layer": 1, "pooling": ["mean", "last"],
                                 "folds": 4, "batch_size": 4})
    pairs.run(cfg, rd)
    probe.run(cfg, rd)
    res = read_json(rd.path("probe", "results.json"))
    assert res["method"]["layers"] == [0, 1, 2]
    fixed = res["settings"]["self_rm"]["hidden"]
    row = next(r for r in res["rows"] if r["layer"] == 1 and r["pooling"] == "mean")
    assert (fixed["layer"], fixed["pooling"], fixed["accuracy"]) == (1, "mean", row["accuracy"])
    bad = cfg.model_copy(update={"probe": cfg.probe.model_copy(update={"layer": 9})})
    with pytest.raises(ConfigError, match="probe.layer: 9"):
        probe.run(bad, rd)


def test_probe_skips_settings_with_too_few_pairs(tmp_path, tiny_model_dir):
    cfg, rd, _ = _probe_cfg(tmp_path, tiny_model_dir, ["surface"], n_prompts=1)
    pairs.run(cfg, rd)
    probe.run(cfg, rd)
    res = read_json(rd.path("probe", "results.json"))
    assert set(res["skipped"]) == {"original", "self_rm"} and res["rows"] == []


@pytest.mark.slow
def test_probe_on_packaged_smollm2_hidden_states(tmp_path):
    cfg, rd, _ = full_run(tmp_path, n_prompts=12, pairs={"settings": ["original"]},
                          probe={"layer_stride": 10, "folds": 3, "batch_size": 8})
    pairs.run(cfg, rd)
    probe.run(cfg, rd)
    res = read_json(rd.path("probe", "results.json"))
    assert res["method"]["layers"] == [0, 10, 20, 30]
    fams = {r["family"] for r in res["rows"]}
    assert fams == {"hidden", "embedding", "surface", "length"}
    # Human refusal vs human compliance: the last layer of a real model separates them.
    last = [r for r in res["rows"] if r["setting"] == "original" and r["layer"] == 30]
    assert max(r["accuracy"] for r in last) >= 0.9
    assert res["settings"]["original"]["embedding"]["accuracy"] >= 0.9
