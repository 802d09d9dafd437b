"""Reading a finished run directory from outside the pipeline (`synthpref compare`, `synthpref export`).

A run directory is finished for a purpose when its manifest records the stages that purpose reads
as done. These readers never write into the run directory, so they work on a read-only copy.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from .errors import DataError
from .rundir import read_json


def require_finished(path: str | Path, stages: tuple[str, ...]) -> Path:
    """The run directory `path`, checked: a folder with manifest.json and config.yaml whose
    manifest marks every stage in `stages` done. Otherwise a one-line error naming the path and the fix."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; pass a run directory written by `synthpref run` (runs/<study>)")
    for name in ("manifest.json", "config.yaml"):
        if not (root / name).is_file():
            raise DataError(f"{root / name}: missing, so {root} is not a synthpref run directory; pass the folder "
                            "`synthpref run` wrote (runs/<study>)")
    manifest = read_json(root / "manifest.json")
    for stage in stages:
        status = ((manifest.get("stages") or {}).get(stage) or {}).get("status")
        if status != "done":
            raise DataError(f"{root}: the {stage} stage is {status or 'not run'}, so this run is not finished; "
                            f"finish it with `synthpref run <config> --run-dir {root}`")
    return root


def read_run_config(root: Path) -> dict:
    """The resolved study config a run wrote (config.yaml), as a plain mapping: read as data, not
    validated against today's schema, so a run made by another synthpref version still reads."""
    path = Path(root) / "config.yaml"
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: missing; pass a run directory written by `synthpref run`") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not readable YAML ({type(e).__name__}); re-run `synthpref run` to rewrite it") from None
    if not isinstance(cfg, dict) or "target" not in cfg or "models" not in cfg:
        raise DataError(f"{path}: not a study config (no `target` or `models`); pass a run directory written by "
                        "`synthpref run`")
    return cfg


def target_path(cfg: dict) -> str:
    """What the run's target model is (its `path`: a packaged asset name, hub id or folder)."""
    spec = (cfg.get("models") or {}).get(cfg["target"]) or {}
    return str(spec.get("path") or cfg["target"])


def read_optional_json(path: Path) -> dict | None:
    return read_json(path) if Path(path).is_file() else None
