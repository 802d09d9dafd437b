"""Does greedy int8 decoding depend on the CPU's instruction set? (docs/results/README.md, demo-avx2)

Decodes the first N model inputs of an evaluate stage's records with one CTranslate2 folder, once
per ISA CTranslate2 is forced to (`CT2_FORCE_CPU_ISA`, read when ctranslate2 loads, so each ISA runs
in a process of its own), and prints how many answers equal the first ISA's. ISAs the CPU lacks
are skipped by CTranslate2 with a warning, so list only ones this CPU has.

    python tools/ct2_isa_check.py runs/demo/eval/sft/generations.jsonl \\
        <cache>/ct2/smollm2-135m-instruct-int8-<key> <cache>/assets/smollm2-135m-instruct/hf --isa AVX2 AVX
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys


def decode(records: str, ct2_dir: str, tokenizer: str, n: int, max_new: int) -> list[str]:
    import ctranslate2
    import transformers

    rows = [json.loads(line) for line in open(records)][:n]
    tok = transformers.AutoTokenizer.from_pretrained(tokenizer)
    gen = ctranslate2.Generator(ct2_dir, device="cpu", compute_type="int8", intra_threads=1)
    inputs = [tok.convert_ids_to_tokens(tok(r["model_input"], add_special_tokens=False)["input_ids"]) for r in rows]
    out = gen.generate_batch(inputs, max_length=max_new, sampling_topk=1, include_prompt_in_result=False)
    return [tok.decode(r.sequences_ids[0]) for r in out]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("records", help="an evaluate stage's generations.jsonl (its model_input field)")
    ap.add_argument("ct2_dir", help="a converted CTranslate2 model folder")
    ap.add_argument("tokenizer", help="the model's tokenizer folder")
    ap.add_argument("--isa", nargs="+", default=["AVX2", "AVX"], help="CT2_FORCE_CPU_ISA values, first = reference")
    ap.add_argument("-n", type=int, default=12)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(decode(a.records, a.ct2_dir, a.tokenizer, a.n, a.max_new_tokens)))
        return 0
    texts = {}
    for isa in a.isa:
        cmd = [sys.executable, __file__, a.records, a.ct2_dir, a.tokenizer, "-n", str(a.n),
               "--max-new-tokens", str(a.max_new_tokens), "--child"]
        done = subprocess.run(cmd, env={**os.environ, "CT2_FORCE_CPU_ISA": isa}, capture_output=True, text=True,
                              check=True)
        texts[isa] = json.loads(done.stdout.strip().splitlines()[-1])
    ref = a.isa[0]
    for isa in a.isa[1:]:
        differ = sum(x != y for x, y in zip(texts[ref], texts[isa]))
        print(f"{isa} vs {ref}: {differ} of {len(texts[ref])} greedy answers differ")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
