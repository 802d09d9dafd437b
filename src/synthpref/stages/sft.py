"""Stage: supervised fine-tuning of the base model, before any response is generated.

The paper's pipeline: base model -> SFT (UltraChat, then safety SFT data) -> generation, probe and
DPO all from that SFT model. With `train.sft.enabled`, this stage runs TRL's SFTTrainer on each
`train.sft.datasets` entry in order (each run continues from the previous one's weights) and leaves
the final model in train/sft/model/; the generate stage then answers with it as the target ("Self"
responses are on-policy for the model being DPO-trained), the probe reads its hidden states, DPO
starts from it and the evaluate stage calls it 'sft'. Without SFT the stage records that it was
skipped and the target model is used as configured.

Outputs: train/sft/ (model/, checkpoints/, metrics.jsonl, done.json), as the train stage's runs.
"""

from __future__ import annotations

from ..config import ModelSpec, StudyConfig
from ..errors import ConfigError
from ..lineage import SFT_NAME, base_model_spec, is_done, sft_inputs_hash, sft_phase_hash, sft_phase_names, trained_model_dir
from ..rundir import RunDir, read_json
from ..training import Built, common_args, fit, launch, load_for_training, require_disk, summary_row
from . import Checks


# --------------------------------------------------------------------------- stage protocol
CONFIG: tuple[str, ...] = ()  # what it depends on is key_inputs: the SFT run's own inputs hash
READS: tuple[str, ...] = ()
WRITES = ("train/sft",)
VERSION = 1


def key_inputs(cfg: StudyConfig) -> dict:
    return {"sft_inputs": sft_inputs_hash(cfg) if cfg.train.sft.enabled else None}


def check(cfg: StudyConfig, checks: Checks) -> None:
    """The SFT datasets exist and have the named splits."""
    from .sft_data import check_split

    sft_data = cfg.train.sft.data()
    if cfg.train.sft.enabled and not sft_data:
        checks.problem("train.sft.datasets", "required when train.sft.enabled is true (e.g. "
                       "HuggingFaceH4/ultrachat_200k, split train_sft)")
    for i, d in enumerate(sft_data):
        problem, note = check_split(d, "train.sft.dataset" if cfg.train.sft.dataset else f"train.sft.datasets[{i}]")
        if problem:
            checks.error(problem)
        if note:
            checks.note(note)
    if cfg.train.sft.enabled:
        _note_dpo_overlap(cfg, checks)


def _note_dpo_overlap(cfg: StudyConfig, checks: Checks) -> None:
    """How many SFT examples share their prompt with the DPO training prompts, from what can be read."""
    from .prompts import readable_rows
    from .sft_data import overlapping, prompt_keys, readable_sft_rows

    left = "left out" if cfg.train.sft.exclude_dpo_prompts else "kept"
    flag = f"train.sft.exclude_dpo_prompts: {str(cfg.train.sft.exclude_dpo_prompts).lower()}"
    prompts, why = readable_rows(cfg.prompts.train, cfg.seed)
    for i, d in enumerate(cfg.train.sft.data()):
        where = "train.sft.dataset" if cfg.train.sft.dataset else f"train.sft.datasets[{i}]"
        if prompts is None:
            checks.note(f"{where}: overlap with the DPO prompts not counted: prompts.train cannot be read here "
                        f"({why}); {left} when SFT runs ({flag})")
            continue
        rows, why_sft = readable_sft_rows(d, where)
        if rows is None:
            checks.note(f"{where}: overlap with the DPO prompts not counted: the SFT set cannot be read here "
                        f"({why_sft}); {left} when SFT runs ({flag})")
            continue
        n = sum(overlapping(rows, prompt_keys(prompts)))
        checks.note(f"{where}: {n} of {len(rows)} SFT examples share their prompt with the DPO training prompts; "
                    f"{left} ({flag})")


def estimate(cfg: StudyConfig, plan) -> list[tuple]:
    if not cfg.train.sft.enabled:
        return [("off", "-", 0.0, 0.0, "")]
    import math

    from ..costs import SFT_TOKENS_PER_EXAMPLE

    rows = []
    t = cfg.train
    for i, d in enumerate(cfg.train.sft.data()):
        item = f"{i + 1}. {d.source}" + (f" [{d.split}]" if d.split else "")
        n_sft = _rows(d)
        if n_sft is None:
            rows.append((item, "rows unknown (set limit to estimate)", None, None, plan.size_note(plan.start)))
            continue
        toks = n_sft * min(SFT_TOKENS_PER_EXAMPLE, t.sft.max_length) * t.sft.num_train_epochs
        steps = math.ceil(n_sft / (t.per_device_train_batch_size * t.gradient_accumulation_steps))
        wall, gh = plan.train_cost(plan.start, toks, 6, steps)
        rows.append((item, f"{n_sft:,} examples", wall, gh, plan.size_note(plan.start)))
    return rows


# Rows of SFT datasets the paper configs use (their hub dataset cards), for offline estimates.
KNOWN_ROWS = {("HuggingFaceH4/ultrachat_200k", "train_sft"): 207_865}


def _rows(d) -> int | None:
    """Rows of one SFT dataset: its limit, KNOWN_ROWS, or a local JSONL's line count; else None."""
    from pathlib import Path

    n = d.limit or KNOWN_ROWS.get((d.source, d.split))
    if n is None:
        p = Path(d.source).expanduser()
        if p.is_file() and p.suffix == ".jsonl":
            n = sum(1 for line in p.open(encoding="utf-8") if line.strip())
    return n


def run(cfg: StudyConfig, rd: RunDir) -> dict:
    if not cfg.train.sft.enabled:
        return {"skipped": True, "reason": "train.sft.enabled is false: generation and DPO use the target as configured"}
    require_disk(cfg)
    rd.stage("train")
    if cfg.train.launcher == "accelerate":
        h = sft_inputs_hash(cfg)
        res = ({**read_json(rd.path("train", SFT_NAME, "done.json")), "skipped": True}
               if is_done(rd, SFT_NAME, h) else launch(cfg, rd, SFT_NAME, h))
    else:
        res = train_sft(cfg, rd)
    return {"sft": summary_row(res), "model": f"train/{SFT_NAME}/model"}


def train_sft(cfg: StudyConfig, rd: RunDir, *, _callbacks: list | None = None) -> dict:
    """Supervised fine-tuning of the base model on the SFT datasets, one after the other
    (train/sft_phase1/, ...), the last phase in train/sft/model/.

    Always full fine-tuning (merged weights), so the DPO stage and the evaluate stage's 'sft'
    model start from one plain checkpoint whether or not DPO then uses LoRA.
    """
    spec = base_model_spec(cfg)
    res: dict = {}
    for i, name in enumerate(sft_phase_names(cfg)):
        res = _train_sft_phase(cfg, rd, i, name, spec, _callbacks)
        spec = spec.model_copy(update={"path": str(trained_model_dir(rd, name).resolve()), "revision": None})
    return res


def _train_sft_phase(cfg: StudyConfig, rd: RunDir, phase: int, name: str, spec: ModelSpec,
                     _callbacks: list | None) -> dict:
    def build(device, ckpt, callbacks) -> Built:
        from datasets import Dataset
        from trl import SFTTrainer

        from ..chat import prepare_tokenizer

        tok = prepare_tokenizer(spec)
        tok.padding_side = "right"  # SFTTrainer pads on the right
        rows, excluded = load_sft_rows(cfg, phase, rd)
        args = sft_config(cfg, device, ckpt)  # before the model loads: lets ZeRO-3 shard it while loading
        model = load_for_training(spec)
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                             callbacks=callbacks)
        source = cfg.train.sft.data()[phase]
        return Built(trainer, spec, {"sft dataset": source.source, "split": source.split, "examples": len(rows),
                                     "left out (DPO prompts)": excluded},
                     {"name": name, "dataset": source.source, "split": source.split, "n_examples": len(rows),
                      "n_excluded_dpo_prompts": excluded})

    return fit(cfg, rd, name, "sft", sft_phase_hash(cfg, phase), build, _callbacks)


def sft_config(cfg: StudyConfig, device: str, output_dir):
    from trl import SFTConfig

    s = cfg.train.sft
    kwargs = common_args(cfg, device, output_dir)
    kwargs.update(learning_rate=s.learning_rate, num_train_epochs=s.num_train_epochs, max_steps=s.max_steps,
                  max_length=s.max_length)
    return SFTConfig(**kwargs)


def load_sft_rows(cfg: StudyConfig, phase: int = 0, rd: RunDir | None = None) -> tuple[list[dict], int]:
    """(conversational SFT data of one phase, how many examples were left out because their prompt
    is a DPO training prompt: train.sft.exclude_dpo_prompts) (synthpref.stages.sft_data)."""
    from .sft_data import load_sft_rows as load, prompt_keys, without_dpo_prompts

    data = cfg.train.sft.data()
    if not data:
        raise ConfigError("train.sft.datasets: required when train.sft.enabled is true "
                          "(e.g. HuggingFaceH4/ultrachat_200k split train_sft, or a local .jsonl with `messages`)")
    where = "train.sft.dataset" if cfg.train.sft.dataset else f"train.sft.datasets[{phase}]"
    rows = load(data[phase], where)
    if not cfg.train.sft.exclude_dpo_prompts:
        return rows, 0
    return without_dpo_prompts(rows, prompt_keys(_dpo_prompts(cfg, rd)))


def _dpo_prompts(cfg: StudyConfig, rd: RunDir | None) -> list[dict]:
    """The DPO training prompts: the prompts stage's file (it runs first), else the configured set."""
    from .prompts import load_prompt_set, read_prompts

    if rd is not None and rd.path("prompts", "train.jsonl").exists():
        return read_prompts(rd, "train")
    return load_prompt_set(cfg.prompts.train, cfg.seed, "prompts.train", dedup=False)
