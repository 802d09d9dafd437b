"""Generation throughput: ct2 (int8, float32) vs the batched hf backend vs the authors' batch-1 loop
(vs llama.cpp single-stream when llama-cpp-python is importable, vs the vllm backend when vllm is
importable: on CPU, vLLM's CPU build in .venv-vllm), per model, for two workloads.

Workloads, on the first --n-prompts AdvBench behaviours (the model's chat template):
- greedy:   one greedy answer per prompt (the evaluation's decoding: no repetition controls);
- sample5:  --samples sampled answers per prompt with the paper's settings (temperature 0.5,
            top_p 0.9, repetition_penalty 1.2, no_repeat_ngram_size 3): the Self+RM workload.
Every contender generates --max-new-tokens tokens at most; tokens are those each contender
reports (up to and including the stop token); tok/s = tokens / generation seconds (model load
and the one-off ct2 conversion are not counted; ct2's per-bucket reload for seeded sampling is).
ct2 int8 also runs the sampled workload with `sample_bucket: 1` (one prompt per call) beside the
default bucket of 8 prompts.
The slow contenders answer fewer prompts (--slow-prompts for hf batched's sample5 workload,
--loop-seqs sequences for the batch-1 loop, which runs one sequence at a time, so its tok/s is the
same for both workloads and is measured once, sampled); their tok/s is what is compared.

    python benchmarks/bench_generate.py
    .venv-vllm/bin/python benchmarks/bench_generate.py --models smollm2-135m-instruct --contenders ct2 hf vllm
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time

from synthpref.backends.generation import GenParams, GenRequest, get_backend_class
from synthpref.chat import prompt_token_ids, user_message
from synthpref.config import ModelSpec
from synthpref.stages.prompts import PACKAGED

MODELS = ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"]


def batch1_loop(model, tokenizer, ids: list[list[int]], params: GenParams) -> tuple[int, float]:
    """(generated tokens, seconds) for one-prompt-at-a-time sampling (the authors' script)."""
    import torch

    n, t0 = 0, time.perf_counter()
    for x in ids:
        inp = torch.tensor([x], device=model.device)
        with torch.inference_mode():
            out = model.generate(input_ids=inp, attention_mask=torch.ones_like(inp), do_sample=True,
                                 temperature=params.temperature, top_p=params.top_p,
                                 repetition_penalty=params.repetition_penalty,
                                 no_repeat_ngram_size=params.no_repeat_ngram_size,
                                 max_new_tokens=params.max_new_tokens, pad_token_id=tokenizer.pad_token_id)
        n += out.shape[1] - inp.shape[1]
    return n, time.perf_counter() - t0


def timed(backend, reqs, params) -> tuple[int, float]:
    t0 = time.perf_counter()
    n = sum(r.n_tokens for r in backend.generate(reqs, params))
    return n, time.perf_counter() - t0


def workloads(prompts: list[str], samples: int, seed: int) -> dict[str, list[GenRequest]]:
    greedy = [GenRequest(f"g{i:03d}", user_message(t), seed, greedy=True) for i, t in enumerate(prompts)]
    sampled = [GenRequest(f"s{i:03d}-{j}", user_message(t), seed + 1000 * i + j, greedy=False)
               for i, t in enumerate(prompts) for j in range(samples)]
    return {"greedy": greedy, f"sample{samples}": sampled}


def bench_model(model: str, args) -> dict[str, dict[str, tuple[int, float]]]:
    prompts = [r["text"] for r in PACKAGED["advbench"]()[: args.n_prompts]]
    work = workloads(prompts, args.samples, args.seed)
    wname = f"sample{args.samples}"
    greedy_p = GenParams(repetition_penalty=1.0, no_repeat_ngram_size=0, max_new_tokens=args.max_new_tokens,
                         batch_size=args.batch_size)
    sample_p = GenParams(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    params = {"greedy": greedy_p, wname: sample_p}
    rows: dict[str, dict[str, tuple[int, float]]] = {"greedy": {}, wname: {}}

    def report(w, name, val):
        rows[w][name] = val
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")  # a shared machine: say how busy
        print(f"{model} {w:8s} {name:24s} {val[0]:6d} tok {val[1]:8.2f} s {val[0] / val[1]:8.1f} tok/s "
              f"(load {load:.1f})", flush=True)

    for contender in args.contenders:
        CONTENDERS[contender](model, args, work, params, report)
    return rows


def run_ct2(model, args, work, params, report):
    wname = f"sample{args.samples}"
    for q in ("int8", "float32"):
        t0 = time.perf_counter()
        b = get_backend_class("ct2")(ModelSpec(path=model, backend="ct2", options={"quantization": q}))
        print(f"{model} ct2 {q}: ready in {time.perf_counter() - t0:.1f} s (conversion on first use)", flush=True)
        timed(b, work["greedy"][:2], GenParams(max_new_tokens=4, batch_size=2))  # warm-up
        for w in params:
            report(w, f"ct2 {q}", timed(b, work[w], params[w]))
        b.close()
        if q == "int8":  # sampling one prompt per call (sample_bucket 1, the earlier design) vs the default bucket
            b1 = get_backend_class("ct2")(ModelSpec(path=model, backend="ct2",
                                                    options={"quantization": q, "sample_bucket": 1}))
            report(wname, f"ct2 {q} bucket=1", timed(b1, work[wname], params[wname]))
            b1.close()


def run_hf(model, args, work, params, report):
    import torch

    wname = f"sample{args.samples}"
    hf = get_backend_class("hf")(ModelSpec(path=model))
    timed(hf, work["greedy"][:2], GenParams(max_new_tokens=4, batch_size=2))  # warm-up
    report("greedy", f"hf batched (bs={args.batch_size})", timed(hf, work["greedy"], params["greedy"]))
    slow = work[wname][: args.slow_prompts * args.samples]
    report(wname, f"hf batched (bs={args.batch_size})", timed(hf, slow, params[wname]))
    if "loop" in args.contenders:
        torch.manual_seed(args.seed)
        ids = [prompt_token_ids(hf.tokenizer, hf.spec, r.messages) for r in work["greedy"][: args.loop_seqs]]
        loop = batch1_loop(hf.model, hf.tokenizer, ids, params[wname])
        for w in params:
            report(w, "batch-1 loop (authors)", loop)
    hf.close()


def run_vllm(model, args, work, params, report):
    """The vllm backend (on a CPU machine: vLLM's CPU build, `make install-vllm`), float32, the same
    requests as the others; engine start-up is printed, not timed."""
    if importlib.util.find_spec("vllm") is None:
        print("vllm skipped: vllm is not installed (`make install-vllm` builds .venv-vllm)", flush=True)
        return
    t0 = time.perf_counter()
    spec = ModelSpec(path=model, backend="vllm", dtype="float32", options=json.loads(args.vllm_options))
    vl = get_backend_class("vllm")(spec, device=args.device)
    print(f"{model} vllm: engine ready in {time.perf_counter() - t0:.1f} s", flush=True)
    timed(vl, work["greedy"][:2], GenParams(max_new_tokens=4, batch_size=2))  # warm-up
    for w in params:
        report(w, "vllm (float32)", timed(vl, work[w], params[w]))
    vl.close()


def run_llamacpp(model, args, work, params, report):
    if importlib.util.find_spec("llama_cpp") is None:
        print("llama.cpp skipped: llama-cpp-python is not installed", flush=True)
        return
    wname = f"sample{args.samples}"
    try:
        lc = get_backend_class("llamacpp")(ModelSpec(path=model, backend="llamacpp"))
        for w in params:
            reqs = work[w][: args.loop_seqs] if w == wname else work[w]
            report(w, "llama.cpp single-stream", timed(lc, reqs, params[w]))
        lc.close()
    except Exception as e:  # e.g. a model with no GGUF file
        print(f"llama.cpp skipped for {model}: {e}", flush=True)


# "loop" (the authors' batch-1 loop) runs inside run_hf, on its loaded model.
CONTENDERS = {"ct2": run_ct2, "hf": run_hf, "loop": lambda *a: None, "vllm": run_vllm, "llamacpp": run_llamacpp}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=MODELS, help="asset names or folders")
    ap.add_argument("--n-prompts", type=int, default=16)
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--slow-prompts", type=int, default=4, help="prompts of hf batched's sampled workload")
    ap.add_argument("--loop-seqs", type=int, default=4, help="sequences of the batch-1 loop (and llama.cpp sampled)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=list(CONTENDERS),
                    help="which engines run (hf is the reference of the x column)")
    ap.add_argument("--device", default="cpu", help="device for the vllm contender (cpu: vLLM's CPU build)")
    ap.add_argument("--vllm-options", default='{"max_model_len": 1024, "gpu_memory_utilization": 0.1, '
                    '"enforce_eager": true}', help="vllm backend options (JSON); the default suits the CPU build")
    args = ap.parse_args(argv)

    import torch

    result = {"args": vars(args), "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "models": {}}
    for model in args.models:
        rows = bench_model(model, args)
        out = {}
        for w, contenders in rows.items():
            hf = next((v for k, v in contenders.items() if k.startswith("hf batched")), None)
            hf_tps = hf[0] / hf[1] if hf else None
            out[w] = {k: {"tokens": n, "seconds": round(s, 2), "tokens_per_s": round(n / s, 1),
                          "x_hf_batched": round(n / s / hf_tps, 2) if hf_tps else None}
                      for k, (n, s) in contenders.items()}
        result["models"][model] = out
    print("\n| model | workload | contender | tokens | seconds | tok/s | x hf batched |\n|---|---|---|---|---|---|---|")
    for model, ws in result["models"].items():
        for w, cs in ws.items():
            for k, v in cs.items():
                print(f"| {model} | {w} | {k} | {v['tokens']} | {v['seconds']} | {v['tokens_per_s']} | {v['x_hf_batched']} |")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
