"""transformers backend: batched, left-padded generation on CPU or GPU.

Batching: requests are formatted with the model's prompt format (synthpref.chat), split into
greedy and sampled groups (different decoding, never mixed), sorted by prompt length (longest
first, so an out-of-memory batch shows up at once and padding stays small) and cut into batches
of `batch_size`. Decoder-only models need LEFT padding so every row's last position is its own
last prompt token.

Per-record seeds: `generate(do_sample=True)` draws every row from one global RNG, so a row's text
would depend on which rows share its batch (and a resumed run batches differently). Instead we
sample with the Gumbel-max trick: after the usual processors (repetition penalty, no-repeat
n-grams, temperature, top-k, top-p) a logits processor adds Gumbel(0, 1) noise drawn from a
`torch.Generator` seeded with *that row's* seed, and decoding takes the argmax. argmax(logits + G)
is an exact sample from softmax(logits) (Gumbel 1954; Maddison et al. 2014, "A* Sampling"), so
the distribution is the one `do_sample=True` uses, while each row's random stream is its own: a
record's text depends on its seed, not on its batch. (Padding can still change logits in the
last float bits; on CPU float32 we see identical texts across batchings in the tests.)
"""

from __future__ import annotations

import copy
from typing import Iterator

from ...config import ModelSpec
from ...chat import prompt_mode, prompt_token_ids, stop_token_ids
from .base import EvalTarget, GenerationBackend, GenParams, GenRequest, GenResult, LocalModelOptions, split_by_kind


def _gumbel_processor_class():
    import torch
    from transformers import LogitsProcessor

    class PerRowGumbel(LogitsProcessor):
        """Adds Gumbel noise from one generator per row; greedy decoding then samples exactly."""

        def __init__(self, seeds: list[int]):
            self.gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]

        def __call__(self, input_ids, scores):
            vocab = scores.shape[-1]
            u = torch.stack([torch.rand(vocab, generator=g) for g in self.gens]).to(scores.device)
            gumbel = -torch.log(-torch.log(u.clamp(min=1e-20)))
            return scores + gumbel.to(scores.dtype)

    return PerRowGumbel


# Greedy requests get neither the repetition penalty nor n-gram blocking (GenParams.penalties).


class HFBackend(GenerationBackend):
    INHERITS_GENERATION_CONFIG = True

    class Options(LocalModelOptions):
        pass

    EVALUATES_TRAINED = True  # answers with the evaluate stage's in-memory model (a LoRA adapter merged)

    def __init__(self, spec: ModelSpec, device: str = "cpu", model=None, tokenizer=None, **kwargs):
        super().__init__(spec, device)
        from ...models import load_causal_lm, load_tokenizer, set_threads

        set_threads()
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(spec)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # A caller's in-memory model (e.g. the model just trained) is used as is, on its device.
        self.model = model if model is not None else load_causal_lm(spec, device)
        self.device = str(self.model.device)
        self.mode = prompt_mode(self.tokenizer, spec)
        self.stop_ids = self._stop_ids()

    def _stop_ids(self) -> list[int]:
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        return stop_token_ids(self.tokenizer, self.spec, eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])

    def encode(self, req: GenRequest) -> list[int]:
        return prompt_token_ids(self.tokenizer, self.spec, req.messages)

    def model_generation_config(self) -> dict:
        """The decoding values the model's generation_config sets (the rest are None)."""
        gc = self.model.generation_config
        return {k: getattr(gc, k, None) for k in ("repetition_penalty", "no_repeat_ngram_size", "top_k")}

    def generate(self, requests: list[GenRequest], params: GenParams) -> Iterator[GenResult]:
        encoded = {r.key: self.encode(r) for r in requests}
        for group in split_by_kind(requests):
            group = sorted(group, key=lambda r: (-len(encoded[r.key]), r.key))
            for i in range(0, len(group), params.batch_size):
                batch = group[i:i + params.batch_size]
                yield from self._generate_batch(batch, [encoded[r.key] for r in batch], params)

    def _generate_batch(self, batch: list[GenRequest], ids: list[list[int]], params: GenParams) -> list[GenResult]:
        import torch
        from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        pad = self.tokenizer.pad_token_id
        width = max(len(x) for x in ids)
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids], device=self.model.device)
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=self.model.device)

        # Start from the model's generation config so its own defaults cannot override ours.
        gc = copy.deepcopy(self.model.generation_config)
        greedy = batch[0].greedy
        # greedy: no penalties (the authors' greedy pass) unless greedy_penalties, or the model's own
        # with inherit_generation_config; sampling: the model's top_k then wins over ours
        rep, ngram, top_k = params.decoding(greedy, self.model_generation_config())
        gc.update(max_new_tokens=params.max_new_tokens, min_new_tokens=None, max_length=None, do_sample=False,
                  num_beams=1, temperature=None, top_p=None, top_k=None, min_p=None, typical_p=None,
                  repetition_penalty=rep if rep != 1.0 else None,
                  no_repeat_ngram_size=ngram or None,
                  eos_token_id=self.stop_ids, pad_token_id=pad)
        processors = LogitsProcessorList()
        if not greedy:
            # transformers' sampling order: temperature, top-k, top-p.
            processors.append(TemperatureLogitsWarper(params.temperature))
            if top_k > 0:
                processors.append(TopKLogitsWarper(top_k))
            if params.top_p < 1.0:
                processors.append(TopPLogitsWarper(params.top_p))
            processors.append(_gumbel_processor_class()([r.seed for r in batch]))
        with torch.inference_mode():
            out = self.model.generate(input_ids=input_ids, attention_mask=mask, generation_config=gc,
                                      logits_processor=processors)
        stops = set(self.stop_ids)
        results = []
        for req, row in zip(batch, out[:, width:].tolist()):
            end = next((j for j, t in enumerate(row) if t in stops), None)
            n = len(row) if end is None else end + 1
            text = self.tokenizer.decode(row[:n], skip_special_tokens=True).strip()
            results.append(GenResult(req.key, text, n, "length" if end is None else "stop"))
        return results

    @classmethod
    def for_evaluation(cls, target: EvalTarget):
        model, tok = target.load()

        def make(spec: ModelSpec) -> "HFBackend":
            return cls(cls.own_options(spec), target.device, model=model, tokenizer=tok)

        return make, tok

    def end_evaluation(self) -> None:
        # The model is the evaluate stage's (target.load), which frees it: drop our reference only.
        self.model = self.tokenizer = None

    def close(self) -> None:
        from ...models import free

        self.model = None
        self.tokenizer = None
        free()

