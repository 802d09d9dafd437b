"""The authors' decoding: greedy without penalties, sampling with the five controls and top_k 50,
on every backend (hf for real on a tiny model; vllm and llama.cpp through their call arguments)."""

from __future__ import annotations

import sys
import types

import pytest

from synthpref.backends.generation import GenParams, GenRequest, get_backend_class
from synthpref.backends.generation.base import NGramIndex, banned_ngram_tokens
from synthpref.config import ModelSpec
from synthpref.errors import BackendError

PAPER = GenParams(temperature=0.5, top_p=0.9, top_k=50, repetition_penalty=1.2, no_repeat_ngram_size=3,
                  max_new_tokens=12, batch_size=4)


def test_penalties_apply_to_sampling_only_unless_switched_on():
    assert PAPER.penalties(greedy=True) == (1.0, 0)
    assert PAPER.penalties(greedy=False) == (1.2, 3)
    old = GenParams(greedy_penalties=True)
    assert old.penalties(greedy=True) == (1.2, 3)


def test_config_defaults_are_the_authors():
    from synthpref.config import SamplingConfig

    s = SamplingConfig()
    assert (s.num_samples, s.temperature, s.top_p, s.top_k, s.repetition_penalty, s.no_repeat_ngram_size,
            s.max_new_tokens, s.greedy, s.greedy_penalties) == (5, 0.5, 0.9, 50, 1.2, 3, 128, True, False)


@pytest.mark.parametrize("seed", range(5))
def test_banned_ngrams_match_transformers(seed):
    import random

    import torch
    from transformers import NoRepeatNGramLogitsProcessor

    rng = random.Random(seed)
    for n in (1, 2, 3, 4):
        ids = [rng.randrange(6) for _ in range(rng.randrange(1, 15))]
        scores = torch.zeros(1, 6)
        out = NoRepeatNGramLogitsProcessor(n)(torch.tensor([ids]), scores.clone())
        want = {i for i in range(6) if out[0, i] == float("-inf")}
        assert banned_ngram_tokens(ids, n) == want, (ids, n)


@pytest.mark.parametrize("seed", range(3))
def test_incremental_ngram_index_matches_the_full_scan(seed):
    import random

    rng = random.Random(seed)
    for n in (0, 1, 2, 3, 4):
        ids, index = [rng.randrange(5) for _ in range(rng.randrange(0, 4))], NGramIndex(n)
        for _ in range(30):
            assert index.banned(ids) == banned_ngram_tokens(ids, n), (ids, n)
            ids = ids + [rng.randrange(5) for _ in range(rng.choice((1, 1, 2)))]
        # as vLLM gives it: the prompt, the output so far and a not yet filled placeholder (-1) after k
        prompt, output, index = [rng.randrange(5) for _ in range(rng.randrange(0, 4))], [], NGramIndex(n)
        for _ in range(30):
            want = banned_ngram_tokens(prompt + output, n)
            assert index.banned(prompt, output + [-1], len(output)) == want, (prompt, output, n)
            output = output + [rng.randrange(5) for _ in range(rng.choice((1, 1, 2)))]


# --------------------------------------------------------------------------- hf, for real
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from conftest import build_tiny_model

    d = build_tiny_model(tmp_path_factory.mktemp("tiny-decoding"), seed=3)
    b = get_backend_class("hf")(ModelSpec(path=str(d)), device="cpu")
    yield b
    b.close()


def test_hf_greedy_is_plain_argmax_without_penalties(tiny):
    """The backend's greedy text equals transformers' greedy decoding with no processors at all,
    and differs from greedy decoding with the sampling penalties (which the old default applied)."""
    import torch

    req = GenRequest("g", ({"role": "user", "content": "the sea the sea the sea"},), seed=1, greedy=True)
    ours = next(iter(tiny.generate([req], PAPER)))
    ids = torch.tensor([tiny.encode(req)])

    def decode(**kw):
        with torch.inference_mode():
            out = tiny.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                      max_new_tokens=PAPER.max_new_tokens, eos_token_id=tiny.stop_ids,
                                      pad_token_id=tiny.tokenizer.pad_token_id, top_k=None, top_p=None,
                                      temperature=None, **kw)
        return out[0, ids.shape[1]:].tolist()

    plain = decode()
    assert tiny.tokenizer.decode(plain[:ours.n_tokens], skip_special_tokens=True).strip() == ours.text
    penalised = decode(repetition_penalty=1.2, no_repeat_ngram_size=3)
    old = next(iter(tiny.generate([req], GenParams(**{**PAPER.__dict__, "greedy_penalties": True}))))
    assert tiny.tokenizer.decode(penalised[:old.n_tokens], skip_special_tokens=True).strip() == old.text
    assert plain != penalised  # the switch matters on this prompt, so the test can tell them apart


def test_hf_sampling_gets_top_k_and_penalties(tiny, monkeypatch):
    seen = {}
    orig = tiny.model.generate

    def spy(**kw):
        seen["gc"], seen["procs"] = kw["generation_config"], kw["logits_processor"]
        return orig(**kw)

    monkeypatch.setattr(tiny.model, "generate", spy)
    req = GenRequest("s", ({"role": "user", "content": "hello"},), seed=5, greedy=False)
    list(tiny.generate([req], PAPER))
    names = [type(p).__name__ for p in seen["procs"]]
    assert names[:3] == ["TemperatureLogitsWarper", "TopKLogitsWarper", "TopPLogitsWarper"]
    assert seen["procs"][1].top_k == 50
    assert seen["gc"].repetition_penalty == 1.2 and seen["gc"].no_repeat_ngram_size == 3
    req = GenRequest("g", ({"role": "user", "content": "hello"},), seed=5, greedy=True)
    list(tiny.generate([req], PAPER))
    assert not seen["procs"] and seen["gc"].repetition_penalty is None and seen["gc"].no_repeat_ngram_size is None


# --------------------------------------------------------------------------- vllm and llama.cpp arguments
NGRAM_MOD = "synthpref.backends.generation.vllm_ngram"


@pytest.fixture
def fake_vllm(monkeypatch):
    """A stand-in for vLLM's SamplingParams and the V1 logits-processor base module (our own logic
    only: the real engine runs in tests/vllm, `make test-vllm`)."""
    import enum
    from dataclasses import dataclass

    made = []

    class SamplingParams:
        def __init__(self, **kw):
            made.append(kw)
            self.extra_args = kw.get("extra_args")

    class MoveDirectionality(enum.Enum):
        UNIDIRECTIONAL = 1
        SWAP = 2

    @dataclass
    class BatchUpdate:
        batch_size: int
        removed: list
        added: list
        moved: list

    lp = types.ModuleType("vllm.v1.sample.logits_processor")
    lp.LogitsProcessor, lp.BatchUpdate, lp.MoveDirectionality = object, BatchUpdate, MoveDirectionality
    mod = types.ModuleType("vllm")
    mod.SamplingParams, mod.__version__ = SamplingParams, "0.32.0"
    monkeypatch.setitem(sys.modules, "vllm", mod)
    for name in ("vllm.v1", "vllm.v1.sample"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "vllm.v1.sample.logits_processor", lp)
    monkeypatch.delenv("VLLM_USE_V2_MODEL_RUNNER", raising=False)
    sys.modules.pop(NGRAM_MOD, None)
    yield lp, made
    sys.modules.pop(NGRAM_MOD, None)


def test_vllm_params_match_hf(fake_vllm):
    from synthpref.backends.generation import vllm_backend as vb

    _, made = fake_vllm
    p = {"temperature": 0.5, "top_p": 0.9, "top_k": 50, "penalties_greedy": PAPER.penalties(True),
         "penalties_sample": PAPER.penalties(False), "max_new_tokens": 12}
    vb._sampling_params({"greedy": True, "seed": 7}, p, [2])
    vb._sampling_params({"greedy": False, "seed": 7}, p, [2])
    greedy, sample = made
    assert greedy["temperature"] == 0.0 and greedy["repetition_penalty"] == 1.0 and "extra_args" not in greedy
    assert greedy["top_k"] == -1 and greedy["seed"] is None
    assert (sample["temperature"], sample["top_p"], sample["top_k"], sample["repetition_penalty"]) == (0.5, 0.9, 50, 1.2)
    assert sample["extra_args"] == {"no_repeat_ngram_size": 3} and sample["seed"] == 7


def test_vllm_ngram_processor_follows_rows_and_bans_like_transformers(fake_vllm):
    """Rows join, leave, move and swap as vLLM's BatchUpdate says; each row's bans are its own."""
    import torch

    lp, _ = fake_vllm
    from synthpref.backends.generation import vllm_ngram as vn
    from vllm import SamplingParams

    proc = vn.NoRepeatNGramProcessor(None, torch.device("cpu"), False)
    on, off = SamplingParams(extra_args={"no_repeat_ngram_size": 2}), SamplingParams()
    out0, out1, out2 = [5], [], [1]
    proc.update_state(lp.BatchUpdate(3, [], [(0, on, [1, 5, 2], out0), (1, on, [3, 3], out1), (2, off, [1, 1], out2)], []))
    logits = proc.apply(torch.zeros(3, 8))
    # row 0: "... 5 2 5": last token 5 was followed by 2 -> 2 banned; row 1: "3 3": 3 banned; row 2: off
    assert [set(torch.nonzero(torch.isinf(r)).flatten().tolist()) for r in logits] == [{2}, {3}, set()]
    out0.append(7)  # the engine grows the output list in place
    proc.update_state(lp.BatchUpdate(2, [2], [], [(1, 0, lp.MoveDirectionality.SWAP)]))
    logits = proc.apply(torch.zeros(2, 8))  # row 0 is now the "3 3" request, row 1 "1 5 2 5 7"
    assert torch.isinf(logits[0, 3]) and not torch.isinf(logits[1]).any()
    proc.update_state(lp.BatchUpdate(1, [0], [], [(1, 0, lp.MoveDirectionality.UNIDIRECTIONAL)]))
    out0.extend([-1])  # an async placeholder is not indexed
    assert set(torch.nonzero(torch.isinf(proc.apply(torch.zeros(1, 8))[0])).flatten().tolist()) == set()
    with pytest.raises(ValueError, match="non-negative integer"):
        vn.NoRepeatNGramProcessor.validate_params(SamplingParams(extra_args={"no_repeat_ngram_size": "3"}))


def test_vllm_without_the_processor_interface_refuses(fake_vllm, monkeypatch):
    from synthpref.backends.generation import vllm_backend as vb

    assert vb.ngram_problem() is None
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "1")
    msg = vb.ngram_problem()
    assert "unset VLLM_USE_V2_MODEL_RUNNER" in msg and "backend: hf" in msg
    monkeypatch.delenv("VLLM_USE_V2_MODEL_RUNNER")
    monkeypatch.delitem(sys.modules, "vllm.v1.sample.logits_processor")  # an old vLLM
    sys.modules.pop(NGRAM_MOD, None)
    monkeypatch.setattr("builtins.__import__", _refuse("vllm.v1.sample.logits_processor"))
    msg = vb.ngram_problem()
    assert "vLLM 0.32.0 lacks" in msg and "pip install 'synthpref[vllm]'" in msg and "\n" not in msg


def _refuse(name):
    real = __import__

    def imp(mod, *a, **kw):
        if mod == name:
            raise ImportError(f"No module named '{name}'")
        return real(mod, *a, **kw)

    return imp


def test_llamacpp_call_arguments():
    from synthpref.backends.generation.llamacpp import LlamaCppBackend

    calls = []

    class FakeLlama:
        def create_completion(self, **kw):
            calls.append(kw)
            return {"choices": [{"text": "ok", "finish_reason": "stop"}], "usage": {"completion_tokens": 1}}

    b = LlamaCppBackend.__new__(LlamaCppBackend)
    b.spec, b.llm, b.chat = ModelSpec(path="x.gguf"), FakeLlama(), False
    b._one(GenRequest("g", ({"role": "user", "content": "hi"},), seed=1, greedy=True), PAPER)
    b._one(GenRequest("s", ({"role": "user", "content": "hi"},), seed=1, greedy=False), PAPER)
    greedy, sample = calls
    assert greedy["repeat_penalty"] == 1.0 and "logits_processor" not in greedy and greedy["top_k"] == 1
    assert (sample["repeat_penalty"], sample["top_k"], sample["temperature"], sample["top_p"]) == (1.2, 50, 0.5, 0.9)
    import numpy as np

    scores = sample["logits_processor"][0](np.array([5, 6, 7, 5, 6]), np.zeros(8))
    assert scores[7] == float("-inf") and np.isfinite(np.delete(scores, 7)).all()  # "5 6 7" seen: 7 banned after "5 6"


def test_vllm_engine_refusing_the_extra_arg_is_a_clear_error(fake_vllm):
    """An engine built without our processor class rejects the request's extra_args when it is
    added: that error becomes one line naming the fixes."""
    from synthpref.backends.generation import vllm_backend as vb

    class Engine:
        def generate(self, prompts, sps, use_tqdm=False):
            raise ValueError("extra_args.no_repeat_ngram_size: no logits processor takes it")

    p = {"temperature": 0.5, "top_p": 0.9, "top_k": 50, "penalties_greedy": (1.0, 0), "penalties_sample": (1.2, 3),
         "max_new_tokens": 12}
    with pytest.raises(BackendError, match="engine refused no_repeat_ngram_size.*backend: hf"):
        vb._run_engine(Engine(), [{"key": "k", "ids": [1, 2], "seed": 1, "greedy": False}], p, [2])
