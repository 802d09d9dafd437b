"""Generation throughput: synthpref's batched hf backend vs the authors' batch-1 loop (vs llama.cpp).

All contenders answer the same prompts (the first --n-prompts AdvBench behaviours, formatted with
the model's chat template) with the paper's sampling settings (temperature 0.5, top_p 0.9,
repetition_penalty 1.2, no_repeat_ngram_size 3) and --max-new-tokens, in one process on one
device, so the ratios are comparable. Tokens are the generated tokens each contender reports
(up to and including the stop token). The batch-1 loop is what the authors' generation script
does: `model.generate(do_sample=True)` on one prompt at a time.

    SYNTHPREF_CACHE=... python benchmarks/bench_generate.py --n-prompts 16 --max-new-tokens 64
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time

from synthpref.backends.generation import GenParams, GenRequest, get_backend_class
from synthpref.chat import prompt_token_ids, user_message
from synthpref.config import ModelSpec
from synthpref.models import pick_device
from synthpref.stages.prompts import PACKAGED


def batch1_loop(model, tokenizer, ids: list[list[int]], params: GenParams) -> tuple[int, float]:
    """(generated tokens, seconds) for one-prompt-at-a-time sampling."""
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


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="asset name, folder or hub id")
    ap.add_argument("--n-prompts", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import torch

    device = pick_device(args.device)
    prompts = [r["text"] for r in PACKAGED["advbench"]()[: args.n_prompts]]
    reqs = [GenRequest(f"p{i:04d}", user_message(t), args.seed + i, greedy=False) for i, t in enumerate(prompts)]
    params = GenParams(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    spec = ModelSpec(path=args.model)
    rows: dict[str, tuple[int, float]] = {}

    hf = get_backend_class("hf")(spec, device=device)
    timed(hf, reqs[:2], GenParams(max_new_tokens=4, batch_size=2))  # warm-up (allocator, kernels)
    rows[f"hf batched (bs={args.batch_size})"] = timed(hf, reqs, params)
    print(f"hf batched: {rows[f'hf batched (bs={args.batch_size})']}", flush=True)
    torch.manual_seed(args.seed)
    ids = [prompt_token_ids(hf.tokenizer, spec, r.messages) for r in reqs]
    rows["batch-1 loop (authors)"] = batch1_loop(hf.model, hf.tokenizer, ids, params)
    print(f"batch-1 loop: {rows['batch-1 loop (authors)']}", flush=True)
    hf.close()

    if importlib.util.find_spec("llama_cpp") is not None:
        try:
            lc = get_backend_class("llamacpp")(ModelSpec(path=args.model, backend="llamacpp"))
            rows["llama.cpp (GGUF)"] = timed(lc, reqs, params)
            lc.close()
        except Exception as e:  # e.g. a model with no GGUF file
            print(f"llama.cpp skipped: {e}")
    else:
        print("llama.cpp skipped: llama-cpp-python is not installed")

    base = rows["batch-1 loop (authors)"]
    base_tps = base[0] / base[1]
    print(f"\nmodel={args.model} device={device} threads={torch.get_num_threads()} prompts={len(prompts)} "
          f"max_new_tokens={args.max_new_tokens}")
    print(f"{'contender':28s} {'tokens':>7s} {'seconds':>8s} {'tok/s':>8s} {'x batch-1':>9s}")
    result = {}
    for name, (n, s) in rows.items():
        tps = n / s
        print(f"{name:28s} {n:7d} {s:8.2f} {tps:8.1f} {tps / base_tps:9.2f}")
        result[name] = {"tokens": n, "seconds": round(s, 3), "tokens_per_s": round(tps, 2),
                        "ratio_vs_batch1": round(tps / base_tps, 3)}
    print(json.dumps({"model": args.model, "device": device, "results": result}))
    return result


if __name__ == "__main__":
    main()
