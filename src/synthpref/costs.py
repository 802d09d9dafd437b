"""The cost model behind `synthpref run --dry-run`: what each stage's `estimate` multiplies.

Model sizes come from config.json facts (synthpref.model_facts: the model's own config.json when
readable, else the shipped table of the paper's models), never from names; a model whose size
cannot be found is shown as unknown and left out of the totals. Token counts are upper bounds
(every response runs to max_new_tokens).

Rates: on a GPU, generation runs at a nominal vLLM batch throughput for a 7B-active model on one
H100-class GPU, scaled by active parameters; training and SFT cost 8 x params x tokens FLOPs (forward
and backward of the policy, forward of the DPO reference; 6x for SFT) at 40% of a 989 TFLOP/s bf16
peak. On a CPU, the rates measured on 2 cores for SmolLM2-135M (docs/benchmarks.md), scaled by
parameters. These are orders of magnitude, not promises.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import StudyConfig

# Measured on 2 CPU cores for SmolLM2-135M with the HF backend at batch 8-16 (docs/benchmarks.md).
CPU_TOKENS_PER_S_135M = 60.0
CPU_DPO_STEP_S_135M = 3.0  # LoRA, batch 4, ~150-token pairs
GPU_TOKENS_PER_S_7B = 2000.0  # nominal vLLM batch throughput, 7B active parameters, one H100-class GPU
GPU_PEAK_FLOPS = 989e12       # bf16 dense, H100 SXM
GPU_MFU = 0.4
PAIR_TOKENS = 2 * (64 + 128)  # prompt + response, chosen and rejected
SFT_TOKENS_PER_EXAMPLE = 1024  # upper bound: train.sft.max_length is the cap used when it is smaller

# A dry-run row of one stage: (item, work, wall seconds or None, GPU-hours or None, note).
Row = tuple


@dataclass
class Plan:
    """What every stage's estimate needs: the device, the prompt counts and the model sizes."""

    cfg: StudyConfig
    gpu: bool
    n_train: int
    n_eval: int
    n_benign: int
    target: object   # model_facts.ModelSize or None
    start: object

    @classmethod
    def of(cls, cfg: StudyConfig, n_train: int, n_eval: int, n_benign: int) -> "Plan":
        import torch

        gpu = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
        plan = cls(cfg, gpu, n_train, n_eval, n_benign, None, None)
        plan.target = plan.size(cfg.target)
        b = cfg.train.base_model
        plan.start = plan.size(b) if b else plan.target  # a name in `models` or an asset/folder/hub id
        return plan

    @property
    def train_gpus(self) -> int:
        return (self.cfg.train.num_processes or 1) if self.gpu else 1

    def size(self, name_or_path: str):
        from .model_facts import model_size

        spec = self.cfg.models.get(name_or_path)
        path, rev = (spec.path, spec.revision) if spec else (name_or_path, None)
        return model_size(path, rev)

    @staticmethod
    def size_note(sz) -> str:
        if sz is None:
            return "size unknown"
        act = f", {sz.active_params / 1e9:.1f}B active" if sz.active_params != sz.params else ""
        src = sz.source if sz.source in ("table", "hub", "hub cache") else "config.json"
        return f"{sz.params / 1e9:.2f}B params{act} ({src})"

    def train_cost(self, sz, tokens: float, flops_per_token_param: int, cpu_steps: int) -> tuple:
        """(wall seconds, GPU-hours) of training `tokens` tokens on a model of size `sz`."""
        if sz is None:
            return None, None
        if self.gpu:
            gpu_s = flops_per_token_param * sz.params * tokens / (GPU_PEAK_FLOPS * GPU_MFU)
            return gpu_s / self.train_gpus, gpu_s / 3600
        return cpu_steps * CPU_DPO_STEP_S_135M * sz.params / 135e6, 0.0

    def gen_cost(self, sz, tokens: float, gpus: int = 1, active: bool = True) -> tuple:
        """(wall seconds, GPU-hours) of generating `tokens` tokens with a model of size `sz`."""
        if self.gpu:
            gpu_s = tokens / (GPU_TOKENS_PER_S_7B * 7e9 / max(sz.active_params, 5e8))
            return gpu_s / gpus, gpu_s / 3600
        params = sz.active_params if active else sz.params
        return tokens / (CPU_TOKENS_PER_S_135M * 135e6 / params), 0.0
