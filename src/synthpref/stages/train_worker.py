"""Entry point of one training process under `accelerate launch` (train.launcher: accelerate).

    accelerate launch --config_file configs/accelerate/zero3.yaml [--num_processes N] \\
        -m synthpref.stages.train_worker <run_dir> <setting> [--config <study yaml>]

Every process runs the same `synthpref.stages.train.train_setting` as a local run (or `train_sft`
for the reserved name 'sft'); accelerate's environment makes the Trainer shard the work, and only
the main process writes files. A worker exits when its launcher dies.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import SynthprefError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m synthpref.stages.train_worker", description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("setting", help="pair setting name, or 'sft' for the SFT stage")
    p.add_argument("--config", help="study YAML (default: <run_dir>/config.yaml)")
    args = p.parse_args(argv)

    from . import sft, train
    from ..config import load_config
    from ..lineage import SFT_NAME
    from ..rundir import RunDir
    from ..training import end_process, start_process

    rd = RunDir(Path(args.run_dir))
    try:
        cfg = load_config(args.config or rd.path("config.yaml"))
        start_process(cfg)  # before anything asks which rank writes the files
        if args.setting == SFT_NAME:
            sft.train_sft(cfg, rd)
        else:
            train.train_setting(cfg, rd, args.setting)
    except SynthprefError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        end_process()
    return 0


if __name__ == "__main__":
    sys.exit(main())
