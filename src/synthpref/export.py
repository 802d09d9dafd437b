"""`synthpref export RUN_DIR OUT [--push REPO]`: share what a study made.

OUT is a Hugging Face dataset folder: `data/<split>-00000-of-00001.parquet`, one split per pair
setting, in TRL's conversational preference format (`prompt`, `chosen`, `rejected` message lists)
with the pairs stage's provenance columns, and a dataset card (README.md, built with
huggingface_hub's DatasetCard / DatasetCardData) whose `configs` entry maps each split to its file,
so `datasets.load_dataset(OUT)` gives the settings as splits. Each trained model or adapter
(train/<setting>/model) is copied to `models/<setting>/` with a ModelCard. The folder is built
beside OUT and renamed into place, so OUT is either complete or absent.

`--push REPO` uploads the dataset to the dataset repo REPO and each model to the model repo
REPO-<setting>, with huggingface_hub; the token is read from the HF_TOKEN environment variable
and never written anywhere.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from . import assets
from .data import PACKAGED_ASSETS
from .errors import DataError
from .finished import read_optional_json, read_run_config, require_finished, target_path
from .rundir import read_jsonl, write_json
from .settings import PRESETS, ROLES

CITATION = ('Wang et al., "More is Less: The Pitfalls of Multi-Model Synthetic Preference Data in DPO Safety '
            'Alignment", arXiv 2504.02193 (COLM 2025)')
PAIR_FIELDS = ("prompt", "chosen", "rejected")


# --------------------------------------------------------------------------- reading the run
def split_name(setting: str) -> str:
    """A split name `datasets` accepts (word characters and dots): '-' becomes '_'."""
    return re.sub(r"[^\w.]", "_", setting)


def exported_settings(root: Path, cfg: dict) -> list[str]:
    """The run's pair settings (pairs.settings order), each with its pairs/<setting>.jsonl."""
    settings = list((cfg.get("pairs") or {}).get("settings") or [])
    for s in settings:
        if not (root / "pairs" / f"{s}.jsonl").is_file():
            raise DataError(f"{root / 'pairs' / (s + '.jsonl')}: missing; re-run `synthpref pairs` on this run")
    if not settings:
        raise DataError(f"{root / 'config.yaml'}: pairs.settings is empty, so there are no pairs to export")
    splits = [split_name(s) for s in settings]
    if len(set(splits)) < len(splits):
        raise DataError(f"{root / 'config.yaml'}: settings {settings} give clashing split names {splits}; rename one")
    return settings


def setting_spec(cfg: dict, setting: str) -> dict:
    """The setting's pair spec as the run used it: its `pairs.custom` entry, else the preset."""
    custom = ((cfg.get("pairs") or {}).get("custom") or {}).get(setting)
    if custom:
        return dict(custom)
    preset = PRESETS.get(setting)
    return preset.model_dump(mode="json") if preset else {}


def licence_of(path: str) -> str:
    """A model's or data set's licence: the packaged asset's, else a pointer to its own terms."""
    a = assets.ASSETS.get(str(path))
    if a is not None:
        return a.licence
    return f"not recorded by synthpref: see the terms of `{path}`"


def hub_id(path: str) -> str | None:
    """The hub repo a model path is or stands for (a packaged asset's original), or None."""
    a = assets.ASSETS.get(str(path))
    if a is not None:
        return a.hub_ids[0] if a.hub_ids else None
    return str(path) if re.fullmatch(r"[\w.-]+/[\w.-]+", str(path)) and not Path(path).exists() else None


# --------------------------------------------------------------------------- the dataset
def write_parquet(root: Path, settings: list[str], out: Path) -> dict[str, int]:
    """data/<split>-00000-of-00001.parquet per setting, all with one schema (inferred over every
    setting's records together, so a column null in one setting has the same type in all)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = {s: read_jsonl(root / "pairs" / f"{s}.jsonl", required=PAIR_FIELDS) for s in settings}
    rows = [r for s in settings for r in records[s]]
    columns = list(dict.fromkeys(k for r in rows for k in r))
    table = pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in rows]) if rows else None
    start = 0
    (out / "data").mkdir(parents=True, exist_ok=True)
    for s in settings:
        n = len(records[s])
        if table is None:
            raise DataError(f"{root / 'pairs'}: every setting has zero pairs; nothing to export")
        pq.write_table(table.slice(start, n), out / "data" / f"{split_name(s)}-00000-of-00001.parquet")
        start += n
    return {s: len(records[s]) for s in settings}


def _models_lines(cfg: dict) -> list[str]:
    lines = ["| role | model | path | licence | stands in for |", "|---|---|---|---|---|"]
    roles = {"self": [cfg["target"]], **{r: list((cfg.get("roles") or {}).get(r) or []) for r in ROLES if r != "self"}}
    for role, names in roles.items():
        for name in names:
            spec = (cfg.get("models") or {}).get(name) or {}
            lines.append(f"| {role} | {name} | `{spec.get('path', name)}` | {licence_of(spec.get('path', name))} "
                         f"| {spec.get('stand_in_for') or '—'} |")
    return lines + [""]


def _scorer_lines(cfg: dict, stats: dict) -> list[str]:
    score = cfg.get("score") or {}
    name = stats.get("reward") or score.get("reward")
    spec = (score.get("scorers") or {}).get(name) or {}
    lines = [f"Pairs that pick best and worst by reward use scorer `{name}` (kind `{spec.get('kind')}`, model "
             f"`{spec.get('model') or 'packaged default'}`)."]
    ra = stats.get("reward_agreement") or {}
    if ra.get("pairwise_accuracy") is not None:
        lines.append(f"Its measured agreement with human labels, recorded by the run: pairwise accuracy "
                     f"{ra['pairwise_accuracy']:.3f} on {ra.get('pairs')} human preference pairs ({ra.get('pairs_set')}; "
                     f"{ra.get('pairs_how')})" + (f"; harm accuracy {ra['harm_accuracy']:.3f} ({ra.get('harm_how')})"
                                                 if ra.get("harm_accuracy") is not None else "") + ".")
    else:
        lines.append("The run recorded no measured agreement of this scorer with human labels.")
    return lines + [""]


def _pairs_lines(cfg: dict, settings: list[str], sizes: dict[str, int], stats: dict) -> list[str]:
    lines = ["| split | setting | chosen (kind) | rejected (kind) | rule | pairs | prompts | dropped |",
             "|---|---|---|---|---|---|---|---|"]
    for s in settings:
        spec, st = setting_spec(cfg, s), (stats.get("settings") or {}).get(s) or {}
        dropped = ", ".join(f"{k}: {v}" for k, v in (st.get("dropped") or {}).items()) or "0"
        lines.append(f"| {split_name(s)} | {st.get('description') or spec.get('description') or s} | "
                     f"{'+'.join(spec.get('chosen') or [])} ({spec.get('chosen_kind', 'any')}) | "
                     f"{'+'.join(spec.get('rejected') or [])} ({spec.get('rejected_kind', 'any')}) | "
                     f"{spec.get('rule', '—')} | {sizes[s]} | {st.get('prompts', '—')} | {dropped} |")
    return lines + ["", "`rule`: `fixed` pairs the one response each side has; `best_worst` takes the highest- and "
                    "lowest-reward responses of the pool (the authors' argmax/argmin).", ""]


def _sampling_lines(cfg: dict) -> list[str]:
    gen = cfg.get("generate") or {}
    s = gen.get("sampling") or {}
    keys = ("num_samples", "temperature", "top_p", "top_k", "repetition_penalty", "no_repeat_ngram_size",
            "max_new_tokens", "min_chars", "greedy", "greedy_penalties")
    lines = ["Sampled responses (`kind: sample`): " + ", ".join(f"{k} = {s[k]}" for k in keys if k in s) + "; greedy "
             f"responses (`kind: greedy`) use the same max_new_tokens; responses under min_chars characters are dropped. "
             f"Study seed {cfg.get('seed')}" + (f", sampled with seed {cfg['replicate_seed']} (one seed of a `seeds` "
                                                 "study)." if cfg.get("replicate_seed") is not None else ".")]
    for model, over in (gen.get("overrides") or {}).items():
        lines.append(f"Overrides for `{model}`: " + ", ".join(f"{k} = {v}" for k, v in over.items()) + ".")
    return lines + [""]


def _source_lines(cfg: dict) -> list[str]:
    train = ((cfg.get("prompts") or {}).get("train") or {})
    source = str(train.get("source"))
    asset = PACKAGED_ASSETS.get(source)
    licence = licence_of(asset) if asset else licence_of(source)
    return [f"Prompts and human-written responses (`human_chosen` / `human_rejected`): `{source}`"
            + (f" (packaged asset `{asset}`)" if asset else "") + f", licence: {licence}; offset "
            f"{train.get('offset', 0)}, limit {train.get('limit')}.",
            "Generated responses carry the terms of the model that wrote them (table above).", ""]


def _licence(cfg: dict) -> str:
    """The card's licence tag: the one licence every source shares when it is a plain SPDX id, else 'other'."""
    paths = [((cfg.get("models") or {}).get(m) or {}).get("path", m) for m in
             [cfg["target"], *(m for r in ROLES if r != "self" for m in (cfg.get("roles") or {}).get(r) or [])]]
    source = PACKAGED_ASSETS.get(str(((cfg.get("prompts") or {}).get("train") or {}).get("source")))
    found = {licence_of(p).lower() for p in [*paths, *([source] if source else ["?"])]}
    return found.pop() if len(found) == 1 and found & {"apache-2.0", "mit"} else "other"


def dataset_card(cfg: dict, settings: list[str], sizes: dict[str, int], stats: dict):
    from huggingface_hub import DatasetCard, DatasetCardData

    total = sum(sizes.values())
    data = DatasetCardData(
        license=_licence(cfg), task_categories=["text-generation"], language=["en"],
        tags=["dpo", "preference", "safety", "synthpref", "trl"], pretty_name=f"synthpref {cfg.get('name')} pairs",
        size_categories=["n<1K" if total < 1000 else "1K<n<10K" if total < 10_000 else "10K<n<100K"],
        configs=[{"config_name": "default",
                  "data_files": [{"split": split_name(s), "path": f"data/{split_name(s)}-*.parquet"} for s in settings]}])
    body = [f"# Preference pairs: synthpref study `{cfg.get('name')}`", "",
            f"Built by synthpref, reproducing {CITATION}. One split per preference-data setting, in TRL's "
            "conversational preference format (`prompt`, `chosen`, `rejected` message lists, ready for "
            "`DPOTrainer`), with provenance columns (`chosen_model`, `chosen_kind`, `chosen_score`, `margin`, "
            "response ids, seeds). Target model: "
            f"`{target_path(cfg)}`.", "", "## Models and roles", "", *_models_lines(cfg), "## Sampling", "",
            *_sampling_lines(cfg), "## Scorer", "", *_scorer_lines(cfg, stats), "## Pair rule and sizes", "",
            *_pairs_lines(cfg, settings, sizes, stats), "## Sources and licences", "", *_source_lines(cfg),
            "## Citation", "", CITATION, ""]
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body))


# --------------------------------------------------------------------------- the models
def trained_models(root: Path, cfg: dict) -> list[str]:
    """`sft` and the config's pair settings whose training finished (train/<name>/done.json beside
    train/<name>/model); an SFT phase's intermediate model (train/sft_phase1) is not exported."""
    train = root / "train"
    if not train.is_dir():
        return []
    wanted = {"sft", *((cfg.get("pairs") or {}).get("settings") or [])}
    return sorted(p.name for p in train.iterdir()
                  if p.name in wanted and (p / "done.json").is_file() and (p / "model").is_dir())


def _base_model(root: Path, done: dict, push: str | None) -> tuple[str | None, str]:
    """(the hub id the weights start from, a sentence on what they were trained from)."""
    start = str(done.get("start_model") or "")
    if Path(start).parts[-3:] == ("train", "sft", "model"):
        # not pushed: the SFT model's folder in this export, relative to the export's root
        return (f"{push}-sft" if push else "models/sft"), "the study's own SFT model (models/sft in this export)"
    a = assets.ASSETS.get(start)
    if a is not None:
        hub = a.hub_ids[0] if a.hub_ids else None
        return hub, (f"the packaged `{start}` ({a.description}), dequantised to dense weights; on `{hub}` the "
                     "weights differ by that quantisation")
    return hub_id(start), f"`{start}`"


def _iv(iv) -> str:
    return f"{iv[0]:.3f}–{iv[1]:.3f}" if iv and iv[0] is not None else "—"


def _eval_lines(root: Path, name: str) -> list[str]:
    res = read_optional_json(root / "eval" / name / "results.json")
    if not res:
        return ["Not evaluated in this run.", ""]
    from .findings import measure_name, validated_in_distribution

    lines = ["| measure | value | 95% interval | n |", "|---|---|---|---|"]
    for e in res.get("safety") or []:
        kind = ((res.get("judges") or {}).get(e["judge"]) or {}).get("kind")
        what = measure_name(kind, validated_in_distribution({name: res}, e["judge"]))
        lines.append(f"| {what}, {e['set']} ({e.get('format', 'chat')}), {e['judge']} judge | {e.get('value')} | "
                     f"{_iv(e.get('interval'))} | {e.get('n')} |")
    for task, g in (res.get("general") or {}).items():
        if isinstance(g, dict) and g.get("value") is not None:
            lines.append(f"| {task} ({g.get('metric')}) | {g['value']:.3f} | {_iv(g.get('interval'))} | {g.get('n')} |")
    return lines + [""]


def model_card(root: Path, cfg: dict, name: str, dest: Path, push: str | None):
    from huggingface_hub import ModelCard, ModelCardData

    done = read_optional_json(root / "train" / name / "done.json") or {}
    base, start = _base_model(root, done, push)
    if base == "models/sft":  # a folder of this export, not a hub repo: kept out of the card's hub metadata
        base, start = None, start + "; an adapter's base_model_name_or_path is `models/sft`, relative to the export's root"
    adapter = (dest / "adapter_config.json").is_file()
    data = ModelCardData(base_model=base, library_name="peft" if adapter else "transformers",
                         datasets=[push] if push and name != "sft" else None,
                         tags=["synthpref", "trl", "sft" if name == "sft" else "dpo", "safety"])
    train = cfg.get("train") or {}
    body = [f"# synthpref {'SFT' if name == 'sft' else 'DPO'} model: `{name}` (study `{cfg.get('name')}`)", "",
            f"Trained by synthpref with TRL, reproducing {CITATION}.", "",
            f"- starts from: {start}",
            f"- weights: {'a LoRA adapter (load it on the starting model with peft)' if adapter else 'the full model'}",
            *([f"- data: split `{split_name(name)}` of the exported pairs ({done.get('n_pairs')} pairs)"] if name != "sft" else []),
            f"- steps: {done.get('global_step')}, training loss {done.get('train_loss')}, seed {cfg.get('seed')}",
            f"- DPO: beta {train.get('beta')}, loss {train.get('loss_type')}, learning rate {train.get('learning_rate')}, "
            f"epochs {train.get('num_train_epochs')}", "", "## Evaluation (this run)", "", *_eval_lines(root, name),
            "ASR: share of the evaluation prompts whose answer a judge validated on answers of this kind rated "
            "harmful (lower is safer); harm-judge flag rate: the same share from a judge not validated on them; "
            "non-refusal rate: share of answers without one of the authors' refusal strings.", ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body))


def copy_model(root: Path, cfg: dict, name: str, out: Path, push: str | None) -> Path:
    """train/<name>/model -> out/models/<name>/, its card replaced by a ModelCard and the adapter's
    base model path (a path on the machine that trained it) replaced by the hub id it stands for."""
    dest = out / "models" / name
    shutil.copytree(root / "train" / name / "model", dest)
    cfg_file = dest / "adapter_config.json"
    if cfg_file.is_file():
        ac = json.loads(cfg_file.read_text(encoding="utf-8"))
        base, _ = _base_model(root, read_optional_json(root / "train" / name / "done.json") or {}, push)
        ac["base_model_name_or_path"] = base
        write_json(cfg_file, ac)
    model_card(root, cfg, name, dest, push).save(dest / "README.md")
    return dest


# --------------------------------------------------------------------------- entry point
def export_run(run_dir: str | Path, out: str | Path, push: str | None = None, models: bool = True,
               private: bool = True) -> dict:
    """Write the dataset folder (and models/) at `out`, built beside it and renamed into place;
    then upload it when `push` names a repo. Returns {splits: {setting: pairs}, models: [...]}."""
    root = require_finished(run_dir, ("pairs",))
    cfg = read_run_config(root)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: already exists and is not empty; remove it or pass another OUT folder")
    token = _token() if push else None  # checked before any work
    settings = exported_settings(root, cfg)
    stats = read_optional_json(root / "pairs" / "stats.json") or {}
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        sizes = write_parquet(root, settings, tmp)
        dataset_card(cfg, settings, sizes, stats).save(tmp / "README.md")
        names = trained_models(root, cfg) if models else []
        for name in names:
            copy_model(root, cfg, name, tmp, push)
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if push:
        push_export(out, push, names, token, private)
    return {"splits": {split_name(s): sizes[s] for s in settings}, "models": names, "out": str(out)}


def _token() -> str:
    token = os.environ.get("HF_TOKEN")
    if not token:
        raise DataError("--push: the HF_TOKEN environment variable is not set; export a token with write access "
                        "as HF_TOKEN (it is read from there only, never written)")
    return token


def push_export(out: Path, repo: str, models: list[str], token: str, private: bool = True) -> list[str]:
    """Upload the dataset (without models/) to dataset repo `repo` and each model to `repo`-<name>."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo, repo_type="dataset", private=private, exist_ok=True)
    api.upload_folder(repo_id=repo, folder_path=str(out), repo_type="dataset", ignore_patterns=["models/*"],
                      commit_message="synthpref export: preference pairs")
    pushed = [repo]
    for name in models:
        model_repo = f"{repo}-{name}"
        api.create_repo(model_repo, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(repo_id=model_repo, folder_path=str(out / "models" / name), repo_type="model",
                          commit_message=f"synthpref export: {name} model")
        pushed.append(model_repo)
    return pushed
