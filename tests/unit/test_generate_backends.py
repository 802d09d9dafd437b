"""Generation backends and prompt formatting, on a tiny random Llama (fast) and SmolLM2 (@slow)."""

from __future__ import annotations

import copy
import importlib.util
import os
from pathlib import Path

import pytest


from synthpref.backends.generation import GenParams, GenRequest, get_backend_class  # noqa: E402
from synthpref.chat import format_prompt, prompt_mode, prompt_token_ids  # noqa: E402
from synthpref.config import ModelSpec  # noqa: E402
from synthpref.errors import ConfigError  # noqa: E402

SMOL = "smollm2-135m-instruct"


def smol_tokenizer_dir() -> Path:
    from synthpref.models import resolve_path

    return Path(resolve_path(SMOL))


def build_tiny_llama(out: Path) -> Path:
    """A 2-layer, 32-wide random Llama with SmolLM2's tokenizer (and its ChatML template)."""
    from transformers import AutoTokenizer

    from conftest import build_tiny_model

    return build_tiny_model(out, tokenizer=AutoTokenizer.from_pretrained(smol_tokenizer_dir()))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def hf_backend(tiny_dir):
    b = get_backend_class("hf")(ModelSpec(path=str(tiny_dir)), device="cpu")
    yield b
    b.close()


@pytest.fixture(scope="module")
def smol_tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smol_tokenizer_dir())


def msgs(text):
    return ({"role": "user", "content": text},)


def requests(n=6, greedy_every=0, seed0=100):
    return [GenRequest(f"k{i:02d}", msgs("tell me about " + "the sea " * (i + 1)), seed=seed0 + i,
                       greedy=bool(greedy_every) and i % greedy_every == 0) for i in range(n)]


# --------------------------------------------------------------------------- prompt formatting
def test_chat_template_with_system_prompt(smol_tok):
    spec = ModelSpec(path="x", system_prompt="Refuse harmful requests.")
    text = format_prompt(smol_tok, spec, msgs("hello"))
    assert text.startswith("<|im_start|>system\nRefuse harmful requests.<|im_end|>\n")
    assert "SmolLM" not in text  # our system prompt replaces the template's default one
    assert text.endswith("<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n")


def test_no_template_falls_back_to_plain_then_config_template(smol_tok):
    tok = copy.deepcopy(smol_tok)
    tok.chat_template = None
    spec = ModelSpec(path="x", plain_template="Q: {prompt}\nA:", system_prompt="Be careful.")
    assert prompt_mode(tok, spec) == "plain"
    assert format_prompt(tok, spec, msgs("hi")) == "Be careful.\n\nQ: hi\nA:"
    spec2 = ModelSpec(path="x", chat_template="{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
                      "{% if add_generation_prompt %}[assistant]{% endif %}")
    assert format_prompt(tok, spec2, msgs("hi")) == "[user] hi\n[assistant]"
    # The tokenizer's own template wins over the config's when it has one.
    assert format_prompt(smol_tok, spec2, msgs("hi")).startswith("<|im_start|>")


def test_base_model_is_plain_even_with_a_template(smol_tok):
    base = ModelSpec(path="gemma-3-270m", plain_template="Question: {prompt}\nAnswer:")
    assert prompt_mode(smol_tok, base) == "plain"
    assert format_prompt(smol_tok, base, msgs("why?")) == "Question: why?\nAnswer:"
    forced = ModelSpec(path="gemma-3-270m", options={"prompt_format": "chat"})
    assert prompt_mode(smol_tok, forced) == "chat"
    with pytest.raises(ConfigError, match="prompt_format"):
        prompt_mode(smol_tok, ModelSpec(path="x", options={"prompt_format": "jinja"}))


def test_plain_prompt_gets_bos_chat_prompt_does_not_double_it(smol_tok):
    tok = copy.deepcopy(smol_tok)
    chat_ids = prompt_token_ids(tok, ModelSpec(path="x"), msgs("hi"))
    assert chat_ids == tok(format_prompt(tok, ModelSpec(path="x"), msgs("hi")), add_special_tokens=False)["input_ids"]


# --------------------------------------------------------------------------- registry / options
def test_registry_and_option_errors(tiny_dir):
    with pytest.raises(ConfigError, match="did you mean 'vllm'"):
        get_backend_class("vlm")
    with pytest.raises(ConfigError, match=r"options\.bogus.*valid options: prompt_format"):
        get_backend_class("hf")(ModelSpec(path=str(tiny_dir), options={"bogus": 1}))


# --------------------------------------------------------------------------- hf backend
def test_gumbel_sampling_matches_softmax():
    """The per-row Gumbel-max processor samples from softmax(logits) (Gumbel-max trick)."""
    import torch

    from synthpref.backends.generation.hf import _gumbel_processor_class

    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    n = 4000
    proc = _gumbel_processor_class()(list(range(n)))
    picks = proc(None, logits.repeat(n, 1)).argmax(-1)
    freq = torch.bincount(picks, minlength=4).float() / n
    assert torch.allclose(freq, logits.softmax(-1), atol=0.03), freq
    again = _gumbel_processor_class()(list(range(n)))(None, logits.repeat(n, 1)).argmax(-1)
    assert torch.equal(picks, again)  # same seeds, same draws


def test_greedy_batched_equals_unbatched(hf_backend):
    reqs = requests(5, greedy_every=1)
    p = GenParams(max_new_tokens=8, batch_size=5)
    batched = {r.key: r for r in hf_backend.generate(reqs, p)}
    single = {r.key: r for r in hf_backend.generate(reqs, GenParams(max_new_tokens=8, batch_size=1))}
    assert set(batched) == {r.key for r in reqs}
    assert {k: v.text for k, v in batched.items()} == {k: v.text for k, v in single.items()}
    assert all(0 < r.n_tokens <= 8 for r in batched.values())
    assert all((r.finish_reason == "length") == (r.n_tokens == 8) for r in batched.values())


def test_sampled_text_depends_on_seed_not_batch(hf_backend):
    reqs = requests(5)
    p = GenParams(max_new_tokens=8, batch_size=3)
    full = {r.key: r.text for r in hf_backend.generate(reqs, p)}
    # a "resumed" run: only some requests, batched differently, in another order
    part = {r.key: r.text for r in hf_backend.generate(list(reversed(reqs[1:4])), GenParams(max_new_tokens=8, batch_size=2))}
    assert part == {k: full[k] for k in part}
    reseeded = {r.key: r.text for r in hf_backend.generate(requests(5, seed0=9000), p)}
    assert sum(reseeded[k] != full[k] for k in full) >= 4
    greedy = {r.key: r.text for r in hf_backend.generate(requests(5, greedy_every=1), p)}
    assert sum(greedy[k] != full[k] for k in full) >= 4


def test_greedy_and_sampled_are_batched_separately(hf_backend, monkeypatch):
    seen = []
    orig = type(hf_backend)._generate_batch

    def spy(self, batch, ids, params):
        seen.append({r.greedy for r in batch})
        return orig(self, batch, ids, params)

    monkeypatch.setattr(type(hf_backend), "_generate_batch", spy)
    out = list(hf_backend.generate(requests(7, greedy_every=2), GenParams(max_new_tokens=3, batch_size=8)))
    assert len(out) == 7 and len(seen) == 2 and all(len(s) == 1 for s in seen)


def test_preloaded_model_and_close(tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    # the spec path is never loaded when model and tokenizer are given (the evaluate stage's case)
    b = get_backend_class("hf")(ModelSpec(path="/nonexistent/model"), model=model, tokenizer=tok)
    out = list(b.generate(requests(2, greedy_every=1), GenParams(max_new_tokens=4, batch_size=2)))
    assert len(out) == 2 and b.model is model
    b.close()
    assert b.model is None and b.tokenizer is None


@pytest.mark.slow
def test_smollm2_generates_real_text():
    from synthpref.models import resolve_path

    resolve_path(SMOL)
    b = get_backend_class("hf")(ModelSpec(path=SMOL), device="cpu")
    try:
        reqs = [GenRequest("a", msgs("What is the capital of France?"), 1, True),
                GenRequest("b", msgs("Name a fruit."), 2, False)]
        out = {r.key: r for r in b.generate(reqs, GenParams(max_new_tokens=16, batch_size=2))}
        again = {r.key: r for r in b.generate(reqs[1:], GenParams(max_new_tokens=16, batch_size=1))}
    finally:
        b.close()
    assert "Paris" in out["a"].text
    assert out["b"].text and out["b"].text == again["b"].text
    assert 0 < out["a"].n_tokens <= 16


# --------------------------------------------------------------------------- optional backends
def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


@pytest.mark.gpu
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None or not _cuda(), reason="needs vllm and a CUDA GPU")
def test_vllm_seeded_and_matches_request_count(tiny_dir):
    b = get_backend_class("vllm")(ModelSpec(path=str(tiny_dir), options={"max_model_len": 512,
                                                                         "gpu_memory_utilization": 0.3}))
    try:
        reqs = requests(4, greedy_every=2)
        p = GenParams(max_new_tokens=8, no_repeat_ngram_size=0)
        first = {r.key: r.text for r in b.generate(reqs, p)}
        second = {r.key: r.text for r in b.generate(reqs[::-1], p)}
    finally:
        b.close()
    assert set(first) == {r.key for r in reqs} and first == second


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python not installed")
def test_llamacpp_seeded_on_gguf():
    b = get_backend_class("llamacpp")(ModelSpec(path=SMOL, backend="llamacpp"))
    try:
        reqs = [GenRequest("a", msgs("Name a colour."), 5, False), GenRequest("g", msgs("Say hi."), 0, True)]
        p = GenParams(max_new_tokens=8)
        first = {r.key: r.text for r in b.generate(reqs, p)}
        second = {r.key: r.text for r in b.generate(reqs[::-1], p)}
    finally:
        b.close()
    assert b.chat and first == second and all(first.values())


def test_vllm_data_parallel_on_cpu_splits_the_cores():
    """vLLM's CPU build: each data-parallel engine binds its own share of this process's cores."""
    import os

    from synthpref.backends.generation.vllm_backend import _dp_envs

    cores = sorted(os.sched_getaffinity(0))
    if len(cores) >= 2:
        a, b = _dp_envs(2, 1, "cpu")
        sets = [set(map(int, e["VLLM_CPU_OMP_THREADS_BIND"].split(","))) for e in (a, b)]
        assert sets[0] and sets[1] and not sets[0] & sets[1] and sets[0] | sets[1] <= set(cores)
    problem = _dp_envs(len(cores) + 1, 1, "cpu")
    assert isinstance(problem, str) and f"{len(cores)} available" in problem


def _reports(rank, queue):
    queue.put((rank, [("k", [1], "stop")], None))


def _dies(rank, queue):
    import os

    os._exit(9)  # as the OOM killer would leave it: no report


def test_vllm_data_parallel_collect_names_an_engine_that_died_instead_of_waiting_for_ever():
    import multiprocessing as mp

    from synthpref.backends.generation.vllm_backend import collect
    from synthpref.errors import BackendError

    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=f, args=(r, queue)) for r, f in enumerate((_reports, _reports))]
    for p in procs:
        p.start()
    assert sorted(r for r, _, _ in collect(queue, procs, poll_s=0.5)) == [0, 1]
    procs = [ctx.Process(target=f, args=(r, queue)) for r, f in enumerate((_reports, _dies))]
    for p in procs:
        p.start()
    got = []
    with pytest.raises(BackendError, match=r"engine 1 exited with code -?9 without answering"):
        for r, _, _ in collect(queue, procs, poll_s=0.5):
            got.append(r)
    assert got == [0]
    for p in procs:
        p.join()


def test_llamacpp_raw_prompt_is_tokenised_without_bos_and_plain_keeps_it(monkeypatch, tmp_path):
    """Our logic only (llama-cpp-python is not installed here): a raw prompt reaches llama.cpp as
    tokens made with add_bos=False, special=False, as the hf backend tokenises it; a plain prompt as
    text, which llama.cpp prefixes with the model's BOS."""
    import sys
    import types

    seen = {}

    class FakeLlama:
        metadata = {}

        def __init__(self, **kw):
            pass

        def tokenize(self, text, add_bos=True, special=False):
            seen["tokenize"] = (text, add_bos, special)
            return [7, 8, 9]

        def create_completion(self, prompt, **kw):
            seen["prompt"] = prompt
            return {"choices": [{"text": " ok", "finish_reason": "stop"}], "usage": {"completion_tokens": 1}}

    monkeypatch.setitem(sys.modules, "llama_cpp", types.SimpleNamespace(Llama=FakeLlama))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    p = GenParams(max_new_tokens=4)
    raw = get_backend_class("llamacpp")(ModelSpec(path=str(gguf), backend="llamacpp", options={"prompt_format": "raw"}))
    assert [r.text for r in raw.generate([GenRequest("r", msgs("Say hi."), 0, True)], p)] == ["ok"]
    assert seen["tokenize"] == (b"Say hi.", False, False) and seen["prompt"] == [7, 8, 9]
    plain = get_backend_class("llamacpp")(ModelSpec(path=str(gguf), backend="llamacpp", options={"prompt_format": "plain"}))
    seen.clear()
    list(plain.generate([GenRequest("p", msgs("Say hi."), 0, True)], p))
    assert isinstance(seen["prompt"], str) and "Say hi." in seen["prompt"] and "tokenize" not in seen
