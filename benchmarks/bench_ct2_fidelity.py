"""Fidelity of the ct2 backend: its greedy output vs the hf backend's, token for token.

For each model, the first --n-prompts AdvBench behaviours (chat template, as the evaluate stage
formats them) are answered greedily with --max-new-tokens by the hf backend (the reference) and by
ct2 at float32 and int8. A record agrees when both backends return the same text and the same
number of generated tokens (up to and including the stop token); `prefix` is the mean share of the
reference's characters that the ct2 text reproduces before the first difference.
Decoding is the evaluation's (no repetition penalty, no n-gram blocking) unless --penalties, which
uses the generation stage's (repetition_penalty 1.2, no_repeat_ngram_size 3).

    python benchmarks/bench_ct2_fidelity.py --n-prompts 32 --max-new-tokens 64
"""

from __future__ import annotations

import argparse
import json
import os
import time

from synthpref.backends.generation import GenParams, GenRequest, get_backend_class
from synthpref.chat import user_message
from synthpref.config import ModelSpec
from synthpref.stages.prompts import PACKAGED

MODELS = ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"]


def common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def run_backend(spec: ModelSpec, reqs, params) -> tuple[dict, float]:
    b = get_backend_class(spec.backend)(spec, device="cpu")
    t0 = time.perf_counter()
    out = {r.key: (r.text, r.n_tokens) for r in b.generate(reqs, params)}
    s = time.perf_counter() - t0
    b.close()
    return out, s


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--n-prompts", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--penalties", action="store_true", help="the generation stage's repetition controls")
    args = ap.parse_args(argv)

    prompts = [r["text"] for r in PACKAGED["advbench"]()[: args.n_prompts]]
    reqs = [GenRequest(f"p{i:03d}", user_message(t), 0, greedy=True) for i, t in enumerate(prompts)]
    params = GenParams(repetition_penalty=1.2 if args.penalties else 1.0,
                       no_repeat_ngram_size=3 if args.penalties else 0,
                       max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    result: dict = {"n_prompts": len(prompts), "max_new_tokens": args.max_new_tokens, "penalties": args.penalties,
                    "threads": os.cpu_count(), "models": {}}
    for model in args.models:
        ref, ref_s = run_backend(ModelSpec(path=model), reqs, params)
        rows = {"hf": {"seconds": round(ref_s, 2)}}
        for q in ("float32", "int8"):
            got, s = run_backend(ModelSpec(path=model, backend="ct2", options={"quantization": q}), reqs, params)
            agree = sum(got[k] == ref[k] for k in ref)
            prefix = sum(common_prefix(got[k][0], ref[k][0]) / max(len(ref[k][0]), 1) for k in ref) / len(ref)
            rows[f"ct2 {q}"] = {"agree": agree, "of": len(ref), "agree_rate": round(agree / len(ref), 4),
                                "mean_prefix": round(prefix, 4), "seconds": round(s, 2)}
            print(f"{model} ct2 {q}: {agree}/{len(ref)} identical, mean prefix {prefix:.3f}", flush=True)
        result["models"][model] = rows
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
