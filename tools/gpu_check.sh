#!/usr/bin/env bash
# GPU check, prepared for one CUDA GPU; finishes within 8 minutes (a hard `timeout`).
# What it measures, on packaged models (no hub):
#   1. the vllm backend on the CUDA vLLM wheel with the paper's sampling (T 0.5, top_p 0.9,
#      top_k 50, repetition_penalty 1.2, no_repeat_ngram_size 3): tok/s per model;
#   2. SFT and DPO through `accelerate launch` in bf16 (configs/accelerate/ddp.yaml, one process): s/step;
#   3. the smoke run of configs/paper/llama31_8b.yaml end to end (every stage, the seven settings,
#      evaluation, report) with configs/smoke/gpu.yaml's overrides; the run directory is printed.
# Needs: a venv with this package and its vllm extra (`pip install -e ".[vllm]"`) and a CUDA GPU.
# Usage: bash tools/gpu_check.sh [python]   (default: .venv/bin/python, else python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
RUN=runs/gpu-check
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: torch sees no CUDA GPU')"
"$PY" -c "import vllm" 2>/dev/null || { echo "gpu_check: vllm is not importable; pip install -e '.[vllm]'"; exit 2; }
"$PY" -c "import torch, vllm; print(f'torch {torch.__version__}, vllm {vllm.__version__}, {torch.cuda.get_device_name(0)}')"
export HF_HUB_OFFLINE=1
start=$(date +%s)
timeout 470 "$PY" -m synthpref.cli run configs/paper/llama31_8b.yaml --smoke --overrides-file configs/smoke/gpu.yaml \
  --run-dir "$RUN"
"$PY" - "$RUN-smoke" <<'PYEOF'
import json, pathlib, sys
run = pathlib.Path(sys.argv[1])
stats = json.loads((run / "generate" / "stats.json").read_text())
for name, s in stats["models"].items():
    if s.get("tokens_per_s"):
        print(f"generate {name}: {s['tokens_per_s']:.1f} tok/s ({s['new_tokens']} tokens)")
for done in sorted(run.glob("train/*/done.json")) + sorted(run.glob("sft/**/done.json")):
    d = json.loads(done.read_text())
    if d.get("global_step"):
        print(f"train {done.parent.name}: {d['train_seconds'] / d['global_step']:.2f} s/step ({d['global_step']} steps)")
print(f"report: {run / 'report'}")
PYEOF
echo "gpu_check: done in $(( $(date +%s) - start )) s"
