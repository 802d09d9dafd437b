"""synthpref export on tiny hand-made runs, offline: the folder loads with datasets.load_dataset
(splits = settings, rows round-trip), the cards parse with huggingface_hub, --push calls the hub
API with the token from HF_TOKEN and writes it nowhere."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from run_helpers import make_run  # noqa: E402

from synthpref import export as exp  # noqa: E402
from synthpref.cli import main  # noqa: E402
from synthpref.errors import DataError  # noqa: E402


def _pairs(run: Path, setting: str) -> list[dict]:
    return [json.loads(l) for l in (run / "pairs" / f"{setting}.jsonl").read_text().splitlines()]


def test_export_round_trips_through_load_dataset_and_the_cards_parse(tmp_path):
    from datasets import load_dataset
    from huggingface_hub import DatasetCard, ModelCard

    run = make_run(tmp_path / "run")
    res = exp.export_run(run, tmp_path / "out")
    assert res["splits"] == {"hc_self": 3, "self_rm": 3} and res["models"] == ["hc_self", "self_rm"]
    ds = load_dataset(str(tmp_path / "out"))
    assert sorted(ds) == ["hc_self", "self_rm"]
    for s in ("hc_self", "self_rm"):
        want = _pairs(run, s)
        got = ds[s].to_list()
        assert [{k: r[k] for k in want[0]} for r in got] == want  # every column, nulls included
    card = DatasetCard.load(tmp_path / "out" / "README.md")
    assert [d["split"] for d in card.data.configs[0]["data_files"]] == ["hc_self", "self_rm"]
    assert card.data.license == "other"  # Apache-2.0 models, MIT prompts
    for text in ("pairwise accuracy 0.743 on 74", "temperature = 0.5", "`qwen2.5-coder-1.5b-instruct`",
                 "| stronger | big |", "licence: MIT", "self (greedy) | fixed | 3 | 3 | 0 |"):
        assert text in card.text, text
    mc = ModelCard.load(tmp_path / "out" / "models" / "hc_self" / "README.md")
    assert mc.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and mc.data.library_name == "peft"
    # the rates are named for what they measure (findings.measure_name): neither judge is validated here
    assert "| harm-judge flag rate, advbench (chat), harm judge | 0.2 |" in mc.text
    assert "| non-refusal rate, advbench (chat), keywords judge | 0.7 |" in mc.text and "| ASR," not in mc.text
    adapter = json.loads((tmp_path / "out" / "models" / "hc_self" / "adapter_config.json").read_text())
    assert adapter == {"base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct", "r": 4}  # no machine path
    assert (tmp_path / "out" / "models" / "self_rm" / "adapter_model.safetensors").read_bytes() == b"weights of self_rm"
    assert not list(tmp_path.glob(".out.tmp-*"))


def test_an_sft_phase_is_not_exported_and_an_adapter_on_the_sft_model_points_into_the_export(tmp_path):
    run = make_run(tmp_path / "run")
    for name in ("sft", "sft_phase1"):
        (run / "train" / name / "model").mkdir(parents=True)
        (run / "train" / name / "model" / "model.safetensors").write_bytes(b"full weights")
        (run / "train" / name / "done.json").write_text(json.dumps({"start_model": "smollm2-135m-instruct"}))
    done = run / "train" / "hc_self" / "done.json"
    done.write_text(json.dumps({**json.loads(done.read_text()), "start_model": "/somewhere/run/train/sft/model"}))
    res = exp.export_run(run, tmp_path / "out")
    assert res["models"] == ["hc_self", "self_rm", "sft"]
    adapter = json.loads((tmp_path / "out" / "models" / "hc_self" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "models/sft" and (tmp_path / "out" / "models" / "sft").is_dir()
    from huggingface_hub import ModelCard

    mc = ModelCard.load(tmp_path / "out" / "models" / "hc_self" / "README.md")
    assert mc.data.base_model is None and "relative to the export's root" in mc.text  # not a hub repo id


def test_split_names_and_pairs_only(tmp_path):
    from datasets import load_dataset

    run = make_run(tmp_path / "run", asr={"sft": {"harm": 0.5}, "my-set.v2": {"harm": 0.4}})
    res = exp.export_run(run, tmp_path / "out", models=False)
    assert res == {"splits": {"my_set.v2": 3}, "models": [], "out": str(tmp_path / "out")}
    assert list(load_dataset(str(tmp_path / "out"))) == ["my_set.v2"]
    assert not (tmp_path / "out" / "models").exists()


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(DataError, match=r"full: already exists and is not empty"):
        exp.export_run(run, tmp_path / "full")
    unfinished = make_run(tmp_path / "early", stages=("prompts",))
    with pytest.raises(DataError, match=r"the pairs stage is not run"):
        exp.export_run(unfinished, tmp_path / "o1")
    (run / "pairs" / "self_rm.jsonl").unlink()
    assert main(["export", str(run), str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err.strip()
    assert "pairs/self_rm.jsonl: missing; re-run `synthpref pairs`" in err and "\n" not in err
    assert not (tmp_path / "o2").exists() and not list(tmp_path.glob(".o2.tmp-*"))


def test_push_uses_hf_token_from_the_environment_only(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("token", token))

        def create_repo(self, repo_id, repo_type=None, private=None, exist_ok=False):
            calls.append(("create", repo_id, repo_type, private))

        def upload_folder(self, repo_id, folder_path, repo_type=None, ignore_patterns=None, commit_message=None):
            calls.append(("upload", repo_id, Path(folder_path).name, repo_type, ignore_patterns))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    run = make_run(tmp_path / "run")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(DataError, match="HF_TOKEN"):
        exp.export_run(run, tmp_path / "out", push="me/pairs")
    assert not (tmp_path / "out").exists() and not calls  # checked before any work
    monkeypatch.setenv("HF_TOKEN", "hf_secret_test_token")
    assert main(["export", str(run), str(tmp_path / "out"), "--push", "me/pairs"]) == 0
    assert calls == [("token", "hf_secret_test_token"),
                     ("create", "me/pairs", "dataset", True), ("upload", "me/pairs", "out", "dataset", ["models/*"]),
                     ("create", "me/pairs-hc_self", "model", True), ("upload", "me/pairs-hc_self", "hc_self", "model", None),
                     ("create", "me/pairs-self_rm", "model", True), ("upload", "me/pairs-self_rm", "self_rm", "model", None)]
    for f in (tmp_path / "out").rglob("*"):
        assert not f.is_file() or b"hf_secret_test_token" not in f.read_bytes(), f
    from huggingface_hub import ModelCard

    assert ModelCard.load(tmp_path / "out" / "models" / "hc_self" / "README.md").data.datasets == ["me/pairs"]


def test_every_packaged_prompt_set_names_the_asset_its_licence_comes_from():
    from synthpref.assets import ASSETS
    from synthpref.data import PACKAGED, PACKAGED_ASSETS

    assert set(PACKAGED_ASSETS) == set(PACKAGED) and all(a in ASSETS for a in PACKAGED_ASSETS.values())
