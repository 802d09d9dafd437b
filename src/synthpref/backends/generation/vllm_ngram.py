"""transformers' no_repeat_ngram_size as a vLLM logits processor (imports vllm: loaded only by the
vllm backend, and by the vLLM engine itself from `PROCESSOR`).

vLLM (>= 0.10.2 V1 engine; tested with 0.32) takes custom logits processors as classes given to
the engine (`LLM(logits_processors=[...])`), built once per engine; a request switches one on
through `SamplingParams(extra_args={EXTRA_ARG: n})`. This is vLLM's "V1 model runner" interface:
the engine tells the processor which requests joined, left or moved between batch rows
(`update_state`), hands it each row's prompt ids and a reference to its growing output-id list,
and calls `apply(logits)` on the whole batch before sampling. vLLM's newer "model runner V2"
(the GPU default in 0.32 when Triton is present) takes a different, device-side interface; the
backend therefore selects the V1 runner (VLLM_USE_V2_MODEL_RUNNER=0) when it registers this class.

Rule (transformers' NoRepeatNGramLogitsProcessor): over prompt + output so far, a token that
would complete an n-gram already present is banned (-inf). Each row keeps an NGramIndex, so a
step indexes only the tokens added since the last one.
"""

from __future__ import annotations

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from .base import NGramIndex

EXTRA_ARG = "no_repeat_ngram_size"
PROCESSOR = f"{__name__}:NoRepeatNGramProcessor"  # the form vLLM loads in its engine process


def requested_n(params: SamplingParams) -> int:
    """The n a request asked for through extra_args (0: none)."""
    return int((params.extra_args or {}).get(EXTRA_ARG) or 0)


class NoRepeatNGramProcessor(LogitsProcessor):
    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        # batch row -> (prompt ids, the engine's live output-id list, this row's n-gram index)
        self.rows: dict[int, tuple[list[int], list[int], NGramIndex]] = {}

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams):
        n = (sampling_params.extra_args or {}).get(EXTRA_ARG)
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise ValueError(f"extra_args.{EXTRA_ARG} must be a non-negative integer, got {n!r}")

    def is_argmax_invariant(self) -> bool:
        return False  # a ban can remove the argmax: greedy requests must see it too

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for i in batch_update.removed:
            self.rows.pop(i, None)
        for i, params, prompt_ids, output_ids in batch_update.added:
            n = requested_n(params)
            if n:
                self.rows[i] = (list(prompt_ids or ()), output_ids, NGramIndex(n))
            else:
                self.rows.pop(i, None)  # a new request in a reused row
        for a, b, how in batch_update.moved:
            ra, rb = self.rows.pop(a, None), self.rows.pop(b, None)
            if ra is not None:
                self.rows[b] = ra
            if rb is not None and how == MoveDirectionality.SWAP:
                self.rows[a] = rb

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        for i, (prompt, output, index) in self.rows.items():
            k = len(output)
            while k and output[k - 1] < 0:  # an async-scheduling placeholder not yet filled in
                k -= 1
            banned = index.banned(prompt, output, k)
            if banned:
                logits[i, list(banned)] = float("-inf")
        return logits
