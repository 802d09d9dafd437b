"""`synthpref validate`: everything that can be checked before compute is spent.

Pydantic already checked types, unknown keys and cross-field rules when the config loaded. Here
we check what needs the outside world: model references (asset names, paths), prompt sources,
pair setting names, backend options, scorer models, jailbreak template names, accelerate
configs. Each problem is one line naming the field and the fix. Nothing is downloaded.
"""

from __future__ import annotations

from pydantic import ValidationError

from .config import StudyConfig
from .errors import SynthprefError


def validate(cfg: StudyConfig, source: str = "<config>", notes: list[str] | None = None) -> list[str]:
    """Problems (each blocks a run); `notes`, when given, collects what could not be checked."""
    problems: list[str] = []
    notes = notes if notes is not None else []

    def add(field: str, msg: str) -> None:
        problems.append(f"{source}: {field}: {msg}")

    from .backends.generation import REGISTRY as GEN_BACKENDS, get_backend_class
    from .models import check_reference

    for name, spec in cfg.models.items():
        if spec.backend == "responses":
            ref = spec.options.get("file") or spec.path
            if not ref.startswith(("http://", "https://")):
                from pathlib import Path

                if not Path(ref).expanduser().is_file():
                    add(f"models.{name}.path", f"responses file '{ref}' does not exist (a local JSONL or an http(s) URL)")
        elif spec.backend != "openai":
            p = check_reference(spec.path)
            if p:
                add(f"models.{name}.path", p)
        try:
            cls = get_backend_class(spec.backend)
            cls.Options.model_validate(spec.options)
        except ValidationError as e:
            err = e.errors()[0]
            add(f"models.{name}.options.{'.'.join(map(str, err['loc']))}", err["msg"])
        except SynthprefError as e:
            add(f"models.{name}.backend", str(e))
        except ImportError as e:  # backend module itself failed to import
            add(f"models.{name}.backend", f"backend '{spec.backend}' unavailable ({e}); valid: {', '.join(GEN_BACKENDS)}")

    from .stages.prompts import check_source

    for where, spec in [("prompts.train", cfg.prompts.train), *[(f"prompts.eval.{n}", s) for n, s in cfg.prompts.eval.items()],
                        *([("prompts.benign", cfg.prompts.benign)] if cfg.prompts.benign else [])]:
        p = check_source(spec, where)
        if p:
            problems.append(f"{source}: {p}")
        elif spec.source.startswith("hub:"):
            from .stages.sft_data import check_hub_split

            p, note = check_hub_split(spec.source[4:], spec.split, where)
            if p:
                problems.append(f"{source}: {p}")
            if note:
                notes.append(f"{source}: {note}")

    try:
        from .stages.pairs import resolve_settings

        resolve_settings(cfg)
    except SynthprefError as e:
        problems.append(f"{source}: {e}")  # the message already names pairs.settings or the setting

    from .backends.scoring import get_scorer_class

    for name, sc in cfg.score.scorers.items():
        try:
            get_scorer_class(sc.kind)
        except SynthprefError as e:
            add(f"score.scorers.{name}.kind", str(e))
        if sc.model and sc.model not in cfg.models:
            p = check_reference(sc.model)
            if p:
                add(f"score.scorers.{name}.model", p)

        if sc.rubric_file:
            from pathlib import Path

            if not Path(sc.rubric_file).expanduser().is_file():
                add(f"score.scorers.{name}.rubric_file", f"'{sc.rubric_file}' does not exist")

    from .stages.sft_data import check_split

    sft_data = cfg.train.sft.data()
    if cfg.train.sft.enabled and not sft_data:
        add("train.sft.datasets", "required when train.sft.enabled is true (e.g. HuggingFaceH4/ultrachat_200k, "
            "split train_sft)")
    for i, d in enumerate(sft_data):
        problem, note = check_split(d, "train.sft.dataset" if cfg.train.sft.dataset else f"train.sft.datasets[{i}]")
        if problem:
            problems.append(f"{source}: {problem}")
        if note:
            notes.append(f"{source}: {note}")

    if cfg.train.base_model and cfg.train.base_model not in cfg.models:
        p = check_reference(cfg.train.base_model)
        if p:
            add("train.base_model", p)
    if cfg.train.accelerate_config:
        from .stages.train import resolve_accelerate_config

        try:
            resolve_accelerate_config(cfg.train.accelerate_config)
        except SynthprefError as e:
            add("train.accelerate_config", str(e))

    for fmt in cfg.evaluate.safety.formats:
        try:
            from .stages.evaluate_formats import check_format

            check_format(fmt)
        except SynthprefError as e:
            add("evaluate.safety.formats", str(e))
    return problems
