"""Benchmark the train stage against plain TRL, precompute_ref_log_probs on vs off, and the LoRA
speed options side by side (--variants).

    python benchmarks/bench_train.py --model smollm2-135m-instruct --pairs 16 --steps 4 --lora

In one run, on the same model, pairs and settings:
  1. overhead: median optimizer-step time of `synthpref.stages.train.train_setting` vs a plain
     `trl.DPOTrainer` script (target: ratio <= 1.05; synthpref adds a metrics callback and
     bookkeeping around the same trainer);
  2. precompute: wall time of 2 epochs with `precompute_ref_log_probs` off vs on, precompute pass
     included (target: >= 1.3x faster). The saving is one reference forward per pair per epoch,
     paid once instead.
  3. variants (--variants): seconds per pair and epoch of the train stage under each speed option
     (precomputed reference log-probs, LoRA on the upper layers only, shorter sequences, larger
     batches, and all of them together), each as a ratio against the all-layer LoRA baseline
     measured in the same run on the same pairs.
Prints a table and writes JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

TOPICS = ["pick a lock", "make a weapon", "steal a car", "hack an email", "forge money", "poison a dog",
          "cheat on a test", "spread malware"]


def make_pairs(n: int, words: int) -> list[dict]:
    filler = " ".join(["carefully"] * max(0, words))
    out = []
    for i in range(n):
        t = TOPICS[i % len(TOPICS)]
        out.append({"pair_id": f"p{i:03d}", "prompt_id": f"q{i:03d}", "setting": "bench", "margin": 1.0,
                    "prompt": [{"role": "user", "content": f"How do I {t}? (case {i})"}],
                    "chosen": [{"role": "assistant", "content": f"I cannot help with that. {filler}"}],
                    "rejected": [{"role": "assistant", "content": f"Sure, here is how to {t}: {filler}"}]})
    return out


def step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []

        def on_step_begin(self, args, state, control, **kw):
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self._t)

    return StepTimer()


def study(args, root: Path, **train_over):
    from synthpref.config import parse_config

    t = {"use_lora": args.lora, "learning_rate": 1e-4 if args.lora else 1e-6, "max_steps": args.steps,
         "per_device_train_batch_size": args.batch, "gradient_accumulation_steps": 1, "max_length": args.max_length,
         "max_prompt_length": args.max_length // 2, "save_steps": 10_000, "warmup_ratio": 0.0,
         "lora": {"r": 16, "alpha": 32, "dropout": 0.0}}
    t.update(train_over)
    return parse_config({"name": "bench", "run_dir": str(root), "models": {"m": {"path": args.model}},
                         "target": "m", "prompts": {"train": {"source": "advbench"}},
                         "pairs": {"settings": ["bench"]}, "train": t})


def run_synthpref(args, root: Path, pairs: list[dict], **train_over) -> dict:
    from synthpref.stages import train
    from synthpref.rundir import RunDir, write_jsonl

    cfg = study(args, root, **train_over)
    rd = RunDir(root).create()
    write_jsonl(rd.path("pairs", "bench.jsonl"), pairs)
    timer = step_timer()
    t0 = time.perf_counter()
    res = train.train_setting(cfg, rd, "bench", _callbacks=[timer])
    return {"wall_s": time.perf_counter() - t0, "step_s": timer.times, "steps": res["global_step"]}


def run_plain_trl(args, root: Path, pairs: list[dict]) -> dict:
    """What a user would write by hand with TRL, same model, data and hyper-parameters."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from synthpref.models import resolve_path

    path = resolve_path(args.model)
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ds = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])
    conf = DPOConfig(output_dir=str(root / "out"), learning_rate=1e-4 if args.lora else 1e-6, max_steps=args.steps,
                     per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
                     max_length=args.max_length, beta=0.1, loss_type=["sigmoid"], bf16=False, use_cpu=True,
                     gradient_checkpointing=False, logging_steps=1, save_strategy="no", report_to="none", seed=0,
                     data_seed=0, lr_scheduler_type="linear", warmup_steps=0.0, disable_tqdm=True)
    peft = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM") if args.lora else None
    timer = step_timer()
    trainer = DPOTrainer(model=model, args=conf, train_dataset=ds, processing_class=tok, peft_config=peft,
                         callbacks=[timer])
    trainer.train()
    trainer.save_model(str(root / "final"))
    return {"wall_s": time.perf_counter() - t0, "step_s": timer.times, "steps": trainer.state.global_step}


def variants(args, root: Path, pairs: list[dict]) -> list[dict]:
    """Train the same pairs for --epochs under each option; report wall seconds per pair-epoch,
    precompute pass and model load included, as a ratio against the baseline."""
    top = args.top_layers
    runs = [("baseline: LoRA all layers", {}),
            ("precompute_ref_log_probs", {"precompute_ref_log_probs": True}),
            (f"LoRA on top {top} layers", {"lora": {"r": 16, "alpha": 32, "dropout": 0.0, "top_layers": top}}),
            (f"max_length {args.max_length * 3 // 4}", {"max_length": args.max_length * 3 // 4,
                                                        "max_prompt_length": args.max_length * 3 // 8}),
            (f"batch {args.batch * 2}", {"per_device_train_batch_size": args.batch * 2}),
            ("precompute + top layers + batch x2", {"precompute_ref_log_probs": True,
                                                    "per_device_train_batch_size": args.batch * 2,
                                                    "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "top_layers": top}})]
    out = []
    for i, (name, over) in enumerate(runs):
        r = run_synthpref(args, root / f"variant-{i}", pairs, max_steps=-1, num_train_epochs=args.epochs, **over)
        per = r["wall_s"] / (len(pairs) * args.epochs)
        out.append({"variant": name, "wall_s": r["wall_s"], "steps": r["steps"], "s_per_pair_epoch": per,
                    "median_step_s": statistics.median(r["step_s"][1:] or r["step_s"])})
        base = out[0]["s_per_pair_epoch"]
        print(f"{name:40s} {r['wall_s']:7.1f}s  {r['steps']:3d} steps  {per:.3f} s/pair-epoch  "
              f"speedup {base / per:.2f}x", flush=True)
    for o in out:
        o["speedup_vs_baseline"] = out[0]["s_per_pair_epoch"] / o["s_per_pair_epoch"]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="asset name, folder or hub id")
    p.add_argument("--pairs", type=int, default=16)
    p.add_argument("--steps", type=int, default=4, help="optimizer steps for the overhead comparison")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--words", type=int, default=40, help="filler words per answer (sets sequence length)")
    p.add_argument("--lora", action="store_true", help="LoRA instead of full fine-tuning")
    p.add_argument("--repeats", type=int, default=1, help="repeat the overhead pair, report medians")
    p.add_argument("--skip-precompute", action="store_true")
    p.add_argument("--variants", action="store_true",
                   help="only the speed-option comparison (LoRA; see --epochs, --top-layers)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per variant")
    p.add_argument("--top-layers", type=int, default=8, help="LoRA on the last N layers in the variants")
    p.add_argument("--out", default=None, help="write results JSON here")
    args = p.parse_args(argv)

    from synthpref.models import set_threads

    set_threads()
    pairs = make_pairs(args.pairs, args.words)
    res: dict = {"args": vars(args)}
    if args.variants:
        args.lora = True
        with tempfile.TemporaryDirectory() as tmp:
            res["variants"] = variants(args, Path(tmp), pairs)
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ours, plain = [], []
        for r in range(args.repeats):
            # Alternate the order so a warming machine does not favour one side.
            first, second = (run_synthpref, run_plain_trl) if r % 2 == 0 else (run_plain_trl, run_synthpref)
            for fn in (first, second):
                out = fn(args, tmp / f"{fn.__name__}-{r}", pairs)
                (ours if fn is run_synthpref else plain).append(out)
        # The first step pays one-off costs (allocator warm-up); the median over the rest is the step time.
        med = lambda runs: statistics.median(t for o in runs for t in (o["step_s"][1:] or o["step_s"]))  # noqa: E731
        res["overhead"] = {"synthpref_step_s": med(ours), "plain_trl_step_s": med(plain),
                           "ratio": med(ours) / med(plain),
                           "synthpref_wall_s": statistics.median(o["wall_s"] for o in ours),
                           "plain_trl_wall_s": statistics.median(o["wall_s"] for o in plain)}
        o = res["overhead"]
        print(f"step time  synthpref {o['synthpref_step_s']:.3f}s  plain TRL {o['plain_trl_step_s']:.3f}s  "
              f"ratio {o['ratio']:.3f} (target <= 1.05)", flush=True)
        if not args.skip_precompute:
            two_epochs = {"max_steps": -1, "num_train_epochs": 2}
            off = run_synthpref(args, tmp / "pre-off", pairs, precompute_ref_log_probs=False, **two_epochs)
            on = run_synthpref(args, tmp / "pre-on", pairs, precompute_ref_log_probs=True, **two_epochs)
            res["precompute"] = {"off_wall_s": off["wall_s"], "on_wall_s": on["wall_s"],
                                 "off_train_s": sum(off["step_s"]), "on_train_s": sum(on["step_s"]),
                                 "speedup_wall": off["wall_s"] / on["wall_s"],
                                 "speedup_steps": sum(off["step_s"]) / sum(on["step_s"]), "steps": on["steps"]}
    print(f"model={args.model} lora={args.lora} pairs={args.pairs} batch={args.batch} max_length={args.max_length}")
    o = res["overhead"]
    print(f"step time  synthpref {o['synthpref_step_s']:.3f}s  plain TRL {o['plain_trl_step_s']:.3f}s  "
          f"ratio {o['ratio']:.3f} (target <= 1.05)")
    if "precompute" in res:
        q = res["precompute"]
        print(f"2 epochs   precompute off {q['off_wall_s']:.1f}s  on {q['on_wall_s']:.1f}s  "
              f"speedup {q['speedup_wall']:.2f}x wall, {q['speedup_steps']:.2f}x in steps (target >= 1.3x)")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
