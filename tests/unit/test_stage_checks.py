"""Checks that used to wait for their stage now run before any compute: `synthpref validate`
(and `run`, which calls every stage's check first) refuses them with one line."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from synthpref import runner
from synthpref.cli import main
from synthpref.config import parse_config
from synthpref.errors import ConfigError
from synthpref.validate import validate


def _cfg(tmp_path: Path, model_dir: Path, **train) -> dict:
    return {"name": "t", "run_dir": str(tmp_path / "run"), "device": "cpu",
            "models": {"tgt": {"path": str(model_dir)}}, "target": "tgt",
            "prompts": {"train": {"source": "pyrit-harm-pairs", "limit": 4}},
            "pairs": {"settings": ["hc_self"]},
            "train": {"use_lora": True, **train}}


def test_top_layers_beyond_the_layer_count_is_refused_before_compute(tmp_path, tiny_model_dir):
    # the tiny model has 2 decoder layers (tests/conftest.py)
    bad = parse_config(_cfg(tmp_path, tiny_model_dir, lora={"top_layers": 3}))
    problems = validate(bad, "c.yaml")
    assert problems == ["c.yaml: train.lora.top_layers: 3 > the model's 2 layers; use at most 2"]
    ok = parse_config(_cfg(tmp_path, tiny_model_dir, lora={"top_layers": 2}))
    assert validate(ok, "c.yaml") == []
    # run refuses it before the first stage writes anything
    with pytest.raises(ConfigError, match="top_layers"):
        runner.run_study(bad, console=Console(file=io.StringIO()))
    assert not (tmp_path / "run").exists()


def test_probe_layer_beyond_the_hidden_states_is_refused_before_compute(tmp_path, tiny_model_dir):
    bad = parse_config({**_cfg(tmp_path, tiny_model_dir), "probe": {"layer": 3}})
    assert validate(bad, "c.yaml") == ["c.yaml: probe.layer: 3, but the target has hidden states 0..2 (0 = embeddings, "
                                       "2 = last layer); use one of those or null for the last"]
    assert validate(parse_config({**_cfg(tmp_path, tiny_model_dir), "probe": {"layer": 2}}), "c.yaml") == []
    with pytest.raises(ConfigError, match="probe.layer"):
        runner.run_study(bad, console=Console(file=io.StringIO()))
    assert not (tmp_path / "run").exists()


def test_top_layers_of_an_unfetched_asset_comes_from_the_shipped_facts(tmp_path, monkeypatch):
    from synthpref import assets

    monkeypatch.setattr(assets, "is_cached", lambda name: False)
    cfg = parse_config({**_cfg(tmp_path, Path("."), lora={"top_layers": 31}),
                        "models": {"tgt": {"path": "smollm2-135m-instruct"}}})
    assert any("31 > the model's 30 layers" in p for p in validate(cfg))


def test_unknown_train_extra_key_is_refused_by_validate(tmp_path, tiny_model_dir, capsys):
    cfg = tmp_path / "c.yaml"
    import yaml

    cfg.write_text(yaml.safe_dump(_cfg(tmp_path, tiny_model_dir, extra={"bettta": 0.1})))
    assert main(["validate", str(cfg)]) == 2
    # notes (e.g. the duplicate-prompt count) are not problems
    err = [l for l in capsys.readouterr().err.strip().splitlines() if not l.startswith("note: ")]
    assert len(err) == 1 and "train.extra.bettta: not a trl.DPOConfig field" in err[0]


def test_dry_run_fits_80_columns(tmp_path, tiny_model_dir, capsys, monkeypatch):
    import yaml

    monkeypatch.setenv("COLUMNS", "80")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(_cfg(tmp_path, tiny_model_dir)))
    assert main(["run", str(cfg), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in out) <= 80
    rows = [line for line in out if line.lstrip("│ ").startswith(("prompts", "generate", "train"))]
    assert len(rows) >= 3  # one line per row, not a cell wrapped over three


def test_full_fine_tuning_the_disk_cannot_hold_is_noted_and_refused_before_a_model_is_written(tmp_path, tiny_model_dir,
                                                                                            monkeypatch):
    import shutil
    from collections import namedtuple

    from synthpref import training
    from synthpref.model_facts import model_size
    from synthpref.rundir import RunDir
    from synthpref.stages import sft

    cfg = parse_config({**_cfg(tmp_path, tiny_model_dir), "train": {"use_lora": False,
                        "sft": {"enabled": True, "datasets": [{"source": "configs/smoke/sft_chat.jsonl"}]}}})
    need, how = training.disk_need(cfg)
    params = model_size(str(tiny_model_dir)).params
    assert need == params * (2 * 4 + 4 + 12) and how.startswith("2 models")  # hc_self + sft, float32 on the CPU
    assert training.disk_need(cfg.model_copy(update={"train": cfg.train.model_copy(update={"use_lora": True})})) is None
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 ** 12, 10 ** 12, int(need) - 1))
    notes: list[str] = []
    assert validate(cfg, "c.yaml", notes) == []  # validate may run elsewhere: a note, not a problem
    assert any("train: full fine-tuning writes about" in n for n in notes)
    with pytest.raises(ConfigError, match=r"train: full fine-tuning writes about .* GB free; free space"):
        sft.run(cfg, RunDir(cfg.run_path).create())
    assert not (tmp_path / "run" / "train").exists()
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 ** 12, 0, int(need) + 1))
    assert training.disk_problem(cfg) is None
