"""The CTranslate2 backend: conversion cache, sampling controls, determinism (tiny random Llama),
and float32 greedy == hf greedy on SmolLM2 (@slow)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

pytest.importorskip("ctranslate2")

from synthpref.backends.generation import GenParams, GenRequest, get_backend_class  # noqa: E402
from synthpref.backends.generation import ct2 as ct2mod  # noqa: E402
from synthpref.config import ModelSpec  # noqa: E402
from synthpref.errors import BackendError  # noqa: E402


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty synthpref cache, so conversions land in the test's folder."""
    monkeypatch.setenv("SYNTHPREF_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    from conftest import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-ct2"), seed=3)


def msgs(text):
    return ({"role": "user", "content": text},)


def spec_of(path, **options) -> ModelSpec:
    return ModelSpec(path=str(path), backend="ct2", options=options)


def sampled(prompts: list[str], n: int, seed0: int = 7) -> list[GenRequest]:
    return [GenRequest(f"p{i}s{j}", msgs(t), seed=seed0 + 10 * i + j, greedy=False)
            for i, t in enumerate(prompts) for j in range(n)]


PROMPTS = ["The ocean is wide", "Cats like to sleep and", "Write a tutorial on how to make"]


def test_conversion_is_cached_and_keyed(cache, tiny_dir):
    spec = spec_of(tiny_dir, quantization="float32")
    b1 = get_backend_class("ct2")(spec)
    assert (b1.model_dir / "model.bin").exists() and b1.model_dir.parent == cache / "ct2"
    mtime = (b1.model_dir / "model.bin").stat().st_mtime_ns
    b2 = get_backend_class("ct2")(spec)
    assert b2.model_dir == b1.model_dir and (b2.model_dir / "model.bin").stat().st_mtime_ns == mtime
    b3 = get_backend_class("ct2")(spec_of(tiny_dir, quantization="int8"))
    assert b3.model_dir != b1.model_dir  # quantization is part of the key
    assert not [p for p in (cache / "ct2").iterdir() if p.name.startswith(".") and p.is_dir()]  # no temp left


def test_unconvertible_model_names_model_and_hf(cache, tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    d = tmp_path / "bert"
    BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=8)).save_pretrained(d)
    with pytest.raises(BackendError, match=r"model '.*bert'.*backend: hf"):
        ct2mod.convert_folder(d, cache / "ct2" / "bert-x", "float32", str(d))
    assert not (cache / "ct2" / "bert-x").exists()


def test_pickle_weights_convert_only_when_the_config_allows_pickle(cache, tiny_dir, tmp_path):
    import shutil

    from transformers import AutoModelForCausalLM

    d = tmp_path / "pickled"
    shutil.copytree(tiny_dir, d)
    for f in d.glob("*.safetensors"):
        f.unlink()
    import torch

    torch.save(AutoModelForCausalLM.from_pretrained(tiny_dir).state_dict(), d / "pytorch_model.bin")
    assert (d / "pytorch_model.bin").exists() and not list(d.glob("*.safetensors"))
    with pytest.raises(BackendError, match=r"has no \.safetensors.*allow_pickle: true"):
        get_backend_class("ct2")(spec_of(d, quantization="float32"))
    assert not [p for p in (cache / "ct2").glob("*") if p.is_dir()]  # nothing half-written
    spec = spec_of(d, quantization="float32").model_copy(update={"allow_pickle": True})
    assert (get_backend_class("ct2")(spec).model_dir / "model.bin").exists()


def test_a_hub_id_is_snapshotted_without_pickle_files_then_converted(cache, tiny_dir, monkeypatch):
    import huggingface_hub

    asked = {}

    def snapshot(repo_id, revision=None, ignore_patterns=None):  # the hub is unreachable here
        asked.update(repo=repo_id, revision=revision, ignore=ignore_patterns)
        return str(tiny_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    spec = ModelSpec(path="someorg/tiny-llama", revision="abc", backend="ct2", options={"quantization": "float32"})
    b = get_backend_class("ct2")(spec)
    assert (b.model_dir / "model.bin").exists() and b.model_dir.name.startswith("tiny-llama-float32-")
    assert asked["repo"] == "someorg/tiny-llama" and asked["revision"] == "abc" and "*.bin" in asked["ignore"]

    def down(*a, **k):
        raise OSError("Cannot reach the hub")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", down)
    with pytest.raises(BackendError, match=r"someorg/other.*cannot download.*models.<name>.path"):
        get_backend_class("ct2")(spec.model_copy(update={"path": "someorg/other"}))


def test_evaluating_a_hub_id_starting_model_converts_its_snapshot(cache, tiny_dir, monkeypatch, tmp_path):
    import huggingface_hub

    from synthpref import models
    from synthpref.backends.generation.base import EvalTarget

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, revision=None, ignore_patterns=None:
                        str(tiny_dir))
    real = models.load_tokenizer
    monkeypatch.setattr(models, "load_tokenizer", lambda spec, **k: real(spec.model_copy(update={"path": str(tiny_dir)}), **k))
    start = ModelSpec(path="someorg/tiny-llama", backend="ct2", options={"quantization": "float32"})
    target = EvalTarget(name="sft", spec=start, device="cpu", weights=None, identity=None, work_dir=tmp_path,
                        load=lambda: None)
    make, _ = get_backend_class("ct2").for_evaluation(target)
    b = make(start)
    assert (b.model_dir / "model.bin").exists() and b.model_dir.name.startswith("tiny-llama-float32-")


def test_no_repeat_ngram_and_shape(cache, tiny_dir):
    b = get_backend_class("ct2")(spec_of(tiny_dir, quantization="float32"))
    # greedy_penalties: the greedy request gets the n-gram block too (by default greedy takes none)
    params = GenParams(temperature=1.5, top_p=1.0, repetition_penalty=1.0, no_repeat_ngram_size=3,
                       max_new_tokens=40, batch_size=4, greedy_penalties=True)
    reqs = sampled(PROMPTS, 3) + [GenRequest("g0", msgs("The ocean is wide"), seed=1, greedy=True)]
    out = {r.key: r for r in b.generate(reqs, params)}
    assert set(out) == {r.key for r in reqs}
    for res in out.values():
        assert res.finish_reason in ("stop", "length") and 0 < res.n_tokens <= 40
    # no 3-gram repeats in the generated ids (re-tokenising text is not exact; check the ids)
    for r in reqs:
        ids = b._call(b._generator(), [b.encode(r)], params, r.greedy, 1)[0].sequences_ids[0]
        grams = [tuple(ids[i:i + 3]) for i in range(len(ids) - 2)]
        assert len(grams) == len(set(grams)), r.key
    # without the control (the default for greedy requests), this tiny model repeats itself greedily
    loose = GenParams(repetition_penalty=1.0, no_repeat_ngram_size=3, max_new_tokens=40)
    ids = b._call(b._generator(), [b.encode(reqs[-1])], loose, True, 1)[0].sequences_ids[0]
    grams = [tuple(ids[i:i + 3]) for i in range(len(ids) - 2)]
    assert len(grams) != len(set(grams))


def test_sampling_is_deterministic_per_prompt_group(cache, tiny_dir):
    """sample_bucket 1: one prompt per call, so a prompt's samples do not depend on other prompts."""
    b = get_backend_class("ct2")(spec_of(tiny_dir, quantization="float32", sample_bucket=1))
    params = GenParams(temperature=1.0, top_p=0.95, max_new_tokens=24, batch_size=2)
    reqs = sampled(PROMPTS, 4)
    a = {r.key: r.text for r in b.generate(reqs, params)}
    again = {r.key: r.text for r in b.generate(list(reversed(reqs)), params)}
    assert a == again  # same texts whatever the order
    alone = {r.key: r.text for r in b.generate([r for r in reqs if r.key.startswith("p1")], params)}
    assert alone == {k: v for k, v in a.items() if k.startswith("p1")}  # other prompts do not matter
    assert len({v for k, v in a.items() if k.startswith("p0")}) > 1  # the samples differ from each other
    other = {r.key: r.text for r in b.generate(sampled(PROMPTS, 4, seed0=1000), params)}
    assert other != a  # the seeds drive the draws


def test_sampling_buckets_are_deterministic_and_resume_exactly(cache, tiny_dir):
    """Buckets of 2 prompts: order and batch size do not matter, and a run resumed after the first
    bucket (only the later bucket's requests pending) writes the uninterrupted run's texts."""
    b = get_backend_class("ct2")(spec_of(tiny_dir, quantization="float32", sample_bucket=2))
    params = GenParams(temperature=1.0, top_p=0.95, max_new_tokens=24, batch_size=2)
    reqs = sampled(PROMPTS, 3)
    a = {r.key: r.text for r in b.generate(reqs, params)}
    assert a == {r.key: r.text for r in b.generate(list(reversed(reqs)), dataclasses.replace(params, batch_size=7))}
    # buckets are cut longest prompt first: the shortest prompt is alone in the second bucket
    n_ids = {i: len(b.encode(GenRequest("x", msgs(t), seed=0, greedy=False))) for i, t in enumerate(PROMPTS)}
    last = min(n_ids, key=lambda i: (n_ids[i], -i))
    resumed = {r.key: r.text for r in b.generate([r for r in reqs if r.key.startswith(f"p{last}s")], params)}
    assert resumed == {k: v for k, v in a.items() if k.startswith(f"p{last}s")}
    assert len(set(a.values())) > 3  # samples differ across records
    one = get_backend_class("ct2")(spec_of(tiny_dir, quantization="float32", sample_bucket=1))
    assert {r.key: r.text for r in one.generate(reqs, params)} != a  # the bucket size is part of the draw


def test_greedy_matches_hf_on_tiny_model(cache, tiny_dir):
    spec = ModelSpec(path=str(tiny_dir))
    hf = get_backend_class("hf")(spec)
    b = get_backend_class("ct2")(spec_of(tiny_dir, quantization="float32"))
    params = GenParams(repetition_penalty=1.0, no_repeat_ngram_size=0, max_new_tokens=16, batch_size=4)
    reqs = [GenRequest(f"g{i}", msgs(t), seed=0, greedy=True) for i, t in enumerate(PROMPTS)]
    want = {r.key: (r.text, r.n_tokens, r.finish_reason) for r in hf.generate(reqs, params)}
    got = {r.key: (r.text, r.n_tokens, r.finish_reason) for r in b.generate(reqs, params)}
    assert got == want
    hf.close()


@pytest.mark.slow
def test_float32_greedy_equals_hf_on_smollm2(smollm2_dir):
    from synthpref.stages.prompts import PACKAGED

    prompts = [r["text"] for r in PACKAGED["advbench"]()[:4]]
    reqs = [GenRequest(f"a{i}", msgs(t), seed=0, greedy=True) for i, t in enumerate(prompts)]
    params = GenParams(repetition_penalty=1.0, no_repeat_ngram_size=0, max_new_tokens=32, batch_size=4)
    hf = get_backend_class("hf")(ModelSpec(path=str(smollm2_dir)))
    want = {r.key: r.text for r in hf.generate(reqs, params)}
    hf.close()
    b = get_backend_class("ct2")(spec_of(smollm2_dir, quantization="float32"))  # converts into the user cache
    got = {r.key: r.text for r in b.generate(reqs, params)}
    assert got == want


def test_record_key_holds_the_resolved_quantization(monkeypatch):
    """`quantization: auto` is int8 on CPU and int8_float16 on CUDA: a run moved to a GPU must key its
    records apart from the CPU ones instead of mixing them under "auto"."""
    import ctranslate2

    from synthpref.backends.generation.ct2 import CT2Backend

    monkeypatch.setattr(ctranslate2, "get_cuda_device_count", lambda: 1)
    cpu = CT2Backend.record_options({"quantization": "auto", "intra_threads": 2}, "cpu")
    gpu = CT2Backend.record_options({"intra_threads": 2}, "cuda")
    assert cpu == {"quantization": "int8"} and gpu == {"quantization": "int8_float16"}
    assert CT2Backend.record_options({"quantization": "float32"}, "cuda") == {"quantization": "float32"}
