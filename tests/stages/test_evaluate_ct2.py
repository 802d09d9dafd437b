"""Safety evaluation through the ct2 backend: a LoRA-trained model is merged and converted once,
float32 ct2 answers equal the hf (reference) answers, and a re-run converts and generates nothing."""

from __future__ import annotations

import pytest

pytest.importorskip("ctranslate2")

from synthpref.backends.generation import ct2 as ct2mod  # noqa: E402
from synthpref.config import parse_config  # noqa: E402
from synthpref.rundir import RunDir, read_json, read_jsonl, write_json  # noqa: E402
from synthpref.stages import evaluate  # noqa: E402
from synthpref.stages.evaluate import plan  # noqa: E402

from test_evaluate_stage import install_fakes, make_study  # noqa: E402


def lora_adapter(base, out, seed=1):
    """A LoRA adapter on `base` with non-zero B, so the merged model differs from the base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)  # as the train stage saves it
    return out


def study(root, models_dir, backend: str):
    import shutil

    cfg, rd = make_study(root, models_dir, models=["sft", "self_rm"], general={"enabled": False})
    data = cfg.model_dump(mode="json")
    data["models"]["tiny"].update(backend="ct2", options={"quantization": "float32"})
    data["evaluate"]["safety"].update(backend=backend, formats=["chat", "alpaca"])
    cfg = parse_config(data)
    model = rd.path("train", "self_rm", "model")
    shutil.rmtree(model)
    lora_adapter(models_dir[0], model)
    write_json(rd.path("train", "self_rm", "done.json"), {"inputs_hash": "lora-1"})
    return cfg, RunDir(cfg.run_path)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    from eval_helpers import build_loud_tiny_model

    root = tmp_path_factory.mktemp("models")
    return build_loud_tiny_model(root / "base", seed=0), build_loud_tiny_model(root / "trained", seed=1)


def test_ct2_evaluation_matches_hf_and_caches_conversions(models_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SYNTHPREF_CACHE", str(tmp_path / "cache"))
    install_fakes(monkeypatch, tmp_path / "assets")
    cfg_hf, rd_hf = study(tmp_path / "hf", models_dir, "hf")
    evaluate.run(cfg_hf, rd_hf)
    cfg, rd = study(tmp_path / "ct2", models_dir, "ct2")
    from synthpref.stages.evaluate import plan

    released, real_release = [], plan.ModelSession.release

    def release(self):
        released.append((self.name, self.model is not None))
        real_release(self)

    monkeypatch.setattr(plan.ModelSession, "release", release)
    evaluate.run(cfg, rd)
    # the merged LoRA model is dropped once converted (held then), so at the session's end nothing is
    # left to drop (general evaluation is off here: nothing loads it again)
    assert [held for name, held in released if name == "self_rm"] == [True, False]
    for m in ("sft", "self_rm"):
        got = {r["key"]: (r["response"], r["n_tokens"]) for r in read_jsonl(rd.path("eval", m, "generations.jsonl"))}
        want = {r["key"]: (r["response"], r["n_tokens"]) for r in read_jsonl(rd_hf.path("eval", m, "generations.jsonl"))}
        assert got == want, m
    assert read_json(rd.path("eval", "sft", "results.json"))["generation"]["backend"] == "ct2"
    # the LoRA model was merged and converted into its eval folder; the base model into the cache
    assert len(list(rd.path("eval", "self_rm").glob("ct2-float32-*/model.bin"))) == 1
    assert not rd.path("eval", "self_rm", ".merged_for_ct2").exists()
    assert list((tmp_path / "cache" / "ct2").glob("*-float32-*/model.bin"))
    sft_ans = {r["response"] for r in read_jsonl(rd.path("eval", "sft", "generations.jsonl"))}
    lora_ans = {r["response"] for r in read_jsonl(rd.path("eval", "self_rm", "generations.jsonl"))}
    assert sft_ans != lora_ans  # the adapter changed the model

    def boom(*a, **k):
        raise AssertionError("converted or loaded again")

    monkeypatch.setattr(ct2mod, "convert_folder", boom)
    monkeypatch.setattr(plan, "load_model", boom)
    for p in rd.path("eval").rglob("generations.jsonl"):
        p.unlink()  # regenerate: the cached conversions are reused, no HF model is loaded
    evaluate.run(cfg, rd)
    got = {r["key"]: r["response"] for r in read_jsonl(rd.path("eval", "self_rm", "generations.jsonl"))}
    assert got == {r["key"]: r["response"] for r in read_jsonl(rd_hf.path("eval", "self_rm", "generations.jsonl"))}
