"""SFT datasets: loading them as conversations, and checking their splits before compute.

A source is a local file (.jsonl/.json/.parquet), a folder written by `datasets`' save_to_disk
(a Dataset or a DatasetDict), or a hub dataset id. Splits are checked by `synthpref validate`:
a saved DatasetDict lists its own; the hub is asked when it answers; offline, the splits of the
datasets the paper configs use come from KNOWN_SPLITS (their dataset cards), and any other hub
dataset gets a note that its split could not be checked.
"""

from __future__ import annotations

from pathlib import Path

from ..config import SFTData
from ..errors import AssetError, ConfigError, DataError

# Splits from the datasets' hub cards (HuggingFaceH4/ultrachat_200k: train_sft/test_sft for SFT,
# train_gen/test_gen for generation; PKU-Alignment/PKU-SafeRLHF: train/test), so a wrong split in
# the paper configs is caught offline too.
KNOWN_SPLITS: dict[str, tuple[str, ...]] = {
    "HuggingFaceH4/ultrachat_200k": ("train_sft", "test_sft", "train_gen", "test_gen"),
    "PKU-Alignment/PKU-SafeRLHF": ("train", "test"),
}
FILE_SUFFIXES = (".jsonl", ".json", ".parquet")


def _local(source: str) -> Path | None:
    p = Path(source).expanduser()
    if p.exists():
        return p
    if source.startswith((".", "/", "~")) or source.endswith(FILE_SUFFIXES):
        raise ConfigError(f"file or folder '{source}' does not exist")
    return None


def _saved_splits(p: Path) -> tuple[str, ...] | None:
    """The splits of a save_to_disk folder (None: a single Dataset, no splits)."""
    if (p / "dataset_dict.json").is_file():
        import json

        return tuple(json.loads((p / "dataset_dict.json").read_text(encoding="utf-8"))["splits"])
    return None


def _hub_splits(source: str, config_name: str | None) -> tuple[tuple[str, ...] | None, str | None]:
    """(splits, why not): from KNOWN_SPLITS, else asked from the hub."""
    if source in KNOWN_SPLITS and config_name is None:
        return KNOWN_SPLITS[source], None
    from ..hub import unreachable

    why = unreachable()
    if why:
        return None, why
    try:
        import datasets

        return tuple(datasets.get_dataset_split_names(source, config_name)), None
    except Exception as e:  # offline, unknown id, gated
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:120]}" if str(e) else type(e).__name__


def check_hub_split(source: str, split: str | None, where: str, config_name: str | None = None
                    ) -> tuple[str | None, str | None]:
    """(problem, note) for a hub dataset's split (default 'train')."""
    splits, why = _hub_splits(source, config_name)
    split = split or "train"
    if splits is None:
        return None, (f"{where}.split: could not check split '{split}' of hub dataset '{source}' (the hub did not "
                      f"answer: {why}); a wrong split fails when it is loaded")
    if split not in splits:
        return _bad_split(where, split, source, splits), None
    return None, None


def check_split(data: SFTData, where: str) -> tuple[str | None, str | None]:
    """(problem, note) for `synthpref validate`; reads only metadata, never the rows."""
    try:
        p = _local(data.source)
    except ConfigError as e:
        return f"{where}.source: {e}", None
    if p is not None:
        if p.is_dir():
            splits = _saved_splits(p)
            if splits is None:
                if data.split not in (None, "train"):
                    return f"{where}.split: '{data.split}' but {p} is a single dataset with no splits; remove split", None
                return None, None
            if data.split is None:
                return f"{where}.split: required, {p} has splits: {', '.join(splits)}", None
            if data.split not in splits:
                return _bad_split(where, data.split, data.source, splits), None
            return None, None
        if data.split not in (None, "train"):
            return f"{where}.split: '{data.split}' but a local file has only 'train'; remove split", None
        return None, None
    return check_hub_split(data.source, data.split, where, data.config_name)


def _bad_split(where: str, split: str, source: str, splits) -> str:
    from ..errors import did_you_mean

    return (f"{where}.split: '{split}' is not a split of '{source}'{did_you_mean(split, splits)} "
            f"(available: {', '.join(splits)})")


def _to_messages(row: dict, data: SFTData) -> list[dict] | None:
    if data.format == "messages":
        return row["messages"]
    i = row.get("safer_response_id")
    if i is None or row.get(f"response_{i}") is None:
        return None
    if data.safe_only and not row.get(f"is_response_{i}_safe", True):
        return None
    return [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row[f"response_{i}"]}]


def load_sft_rows(data: SFTData, where: str = "train.sft.datasets") -> list[dict]:
    """[{'messages': [...]}, ...] from one SFT dataset."""
    import datasets

    problem, _ = check_split(data, where)
    if problem:
        raise ConfigError(problem)
    p = _local(data.source)
    try:
        if p is not None and p.is_dir():
            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[data.split]
        elif p is not None:
            kind = "parquet" if p.suffix == ".parquet" else "json"
            ds = datasets.load_dataset(kind, data_files=str(p), split="train")
        else:
            ds = datasets.load_dataset(data.source, data.config_name, split=data.split or "train")
    except (ConfigError, DataError):
        raise
    except Exception as e:  # hub unreachable, unknown id, unreadable file
        raise AssetError(f"{where}: could not load '{data.source}' split '{data.split or 'train'}' "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ''})") from None
    need = ["messages"] if data.format == "messages" else ["prompt", "response_0", "response_1", "safer_response_id"]
    missing = [c for c in need if c not in ds.column_names]
    if missing:
        raise DataError(f"{where}: '{data.source}' has no {', '.join(missing)} column for format '{data.format}' "
                        f"(columns: {', '.join(ds.column_names)})")
    if data.limit:
        ds = ds.select(range(min(data.limit, len(ds))))
    rows = [m for m in (_to_messages(r, data) for r in ds) if m]
    if not rows:
        raise DataError(f"{where}: '{data.source}' gave no SFT examples")
    return [{"messages": m} for m in rows]


# --------------------------------------------------------------------------- overlap with the DPO prompts
def first_user_text(messages: list[dict]) -> str | None:
    return next((str(m.get("content")) for m in messages if m.get("role") == "user"), None)


def prompt_keys(prompts: list[dict]) -> set[str]:
    """Normalised texts of prompt records (the key the train/eval overlap check uses too)."""
    from ..data import normalise

    return {normalise(str(p["text"])) for p in prompts}


def overlapping(rows: list[dict], keys: set[str]) -> list[bool]:
    """Per SFT example: does its first user turn equal (normalised) one of the DPO prompts?"""
    from ..data import normalise

    out = []
    for r in rows:
        text = first_user_text(r["messages"])
        out.append(text is not None and normalise(text) in keys)
    return out


def without_dpo_prompts(rows: list[dict], keys: set[str]) -> tuple[list[dict], int]:
    """(the SFT examples whose prompt is not a DPO training prompt, how many were left out)."""
    hit = overlapping(rows, keys)
    return [r for r, h in zip(rows, hit) if not h], sum(hit)


def readable_sft_rows(data: SFTData, where: str) -> tuple[list[dict] | None, str]:
    """(the examples of a local SFT dataset, or None; why not): validate reads files, never the hub."""
    try:
        p = _local(data.source)
    except ConfigError as e:
        return None, str(e)
    if p is None:
        return None, f"'{data.source}' is a hub dataset, which validate does not download"
    try:
        return load_sft_rows(data, where), ""
    except (ConfigError, DataError, AssetError) as e:
        return None, str(e)

