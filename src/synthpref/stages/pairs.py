"""Preference pairs for every setting of the paper (its Table of settings, x-axis of Fig. 1).

A setting is a `PairSpec`: which sources feed the chosen and the rejected side, which kind of
response (greedy / sampled) each side takes, and the rule that picks one pair per prompt. The
paper's settings are presets below; a new setting is one `pairs.custom` entry in the study
config, no code. Per setting the stage writes ``pairs/<setting>.jsonl`` in TRL's conversational
preference format (``prompt`` / ``chosen`` / ``rejected`` message lists) plus provenance columns,
``pairs/drops/<setting>.jsonl`` (why each skipped prompt was skipped), ``pairs/stats.json`` and a
dataset card ``pairs/README.md``.

Selection follows the authors' public code where it exists: chosen = argmax reward and rejected
= argmin reward over the pool (Self+RM, Peer+RM, All+RM); fixed sides for Original / HC+Self /
GPT4o+Self / Stronger+Self; the optional `rm_swap` is their combine_data.py two-way swap.
"""

from __future__ import annotations

import random
import re
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from ..standins import footnote, setting_label, setting_stand_ins
from ..config import PairSpec, StudyConfig
from ..settings import HUMAN_SOURCES, MODEL_KINDS, ROLES, available_settings, expand_sources, pairs_path, resolve_settings
from ..errors import ConfigError, DataError, SynthprefError, did_you_mean
from .prompts import read_prompts
from ..rundir import RunDir, hash_obj, retire_unlisted, stable_id, write_json, write_jsonl, write_text
from ..tables import load_responses, load_scores
from . import Checks

# --------------------------------------------------------------------------- stage protocol
CONFIG = ("pairs", "score", "seed", "replicate_seed")
READS = ("prompts", "generate", "score")
WRITES = ("pairs",)
VERSION = 1


def check(cfg: StudyConfig, checks: Checks) -> None:
    """Every requested setting is known, names sources the study has, and has on each side a model
    that makes the kind of answer that side takes."""
    try:
        specs = resolve_settings(cfg)
    except SynthprefError as e:
        checks.error(str(e))  # the message already names pairs.settings or the setting
        return
    for name, spec in specs.items():
        for side in ("chosen", "rejected"):
            problem = side_without_answers(cfg, name, side, spec)
            if problem:
                checks.error(problem)


def side_without_answers(cfg: StudyConfig, setting: str, side: str, spec) -> str | None:
    """A side whose models make none of the answers it takes would leave the setting without a pair,
    found out only after generation (num_samples 0 for a sampled side, greedy off for a greedy one,
    or generate.sources leaving its models out): the problem, else None."""
    from .generate import model_plan

    models, human = expand_sources(cfg, getattr(spec, side))
    if human or not models:
        return None
    kind = getattr(spec, f"{side}_kind")
    listed = set(cfg.generate.sources) if cfg.generate.sources else None

    def yields(m: str) -> bool:
        if listed is not None and m not in listed:
            return False
        p = model_plan(cfg, m)
        return {"greedy": p.greedy, "sample": p.num_samples > 0}.get(kind, p.greedy or p.num_samples > 0)

    if any(yields(m) for m in models):
        return None
    what = {"greedy": "greedy answers", "sample": "sampled answers"}.get(kind, "answers")
    return (f"pairs setting '{setting}': no model on its {side} side ({', '.join(sorted(models))}) makes {what} "
            f"(see generate.sources, generate.sampling / generate.overrides: num_samples, greedy), so it would get "
            f"no pairs; generate them or drop '{setting}' from pairs.settings")


def estimate(cfg: StudyConfig, plan) -> list[tuple]:
    return [(f"{len(cfg.pairs.settings)} settings", "-", 0.0, 0.0, "")]


# Why a prompt got no pair (counted in stats.json, listed in pairs/drops/<setting>.jsonl).
DROP_REASONS = ("no_chosen_responses", "no_rejected_responses", "missing_score", "margin_below_min",
                "no_positive_margin", "identical_texts")


# --------------------------------------------------------------------------- selection
@dataclass
class Decision:
    chosen: dict | None = None
    rejected: dict | None = None
    reason: str | None = None
    detail: str = ""
    swapped: bool = False


@dataclass
class Pools:
    """Responses of one prompt, indexed so each setting can pull its sides cheaply."""

    by_model: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))
    by_human: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))

    def side(self, cfg: StudyConfig, sources: list[str], kind: str) -> list[dict]:
        models, human = expand_sources(cfg, sources)
        out = [r for m in models for r in self.by_model.get(m, ()) if kind == "any" or r["kind"] == kind]
        out += [r for h in human for r in self.by_human.get(h, ())]
        return sorted(out, key=lambda r: r["response_id"])


def _score(r: dict) -> float | None:
    return r.get("_score")


@dataclass(frozen=True)
class Rules:
    """How equal rewards and equal texts are handled (pairs.tie_break, pairs.identical).

    `order`: the sources of the setting in pool order (a role stands for its members in roles
    order); with tie_break 'first', a tie goes to the response listed first - source order,
    greedy before samples, then sample index - as np.argmax / np.argmin return the first index
    of the authors' list of 5 samples (generate.py:188-189)."""

    tie_break: str = "first"
    identical: str = "keep"
    order: tuple[str, ...] = ()


def _position(r: dict, rules: Rules) -> tuple:
    if rules.tie_break == "id":
        return (r["response_id"],)
    src = r["kind"] if r["kind"] in HUMAN_SOURCES else r.get("model")
    at = rules.order.index(src) if src in rules.order else len(rules.order)
    return (at, r["kind"] != "greedy", r.get("sample_index") or 0, r["response_id"])


def _fixed_pick(pool: list[dict]) -> dict:
    """A side's single response: greedy first, else the lowest sample_index; then by id."""
    return min(pool, key=lambda r: (r["kind"] != "greedy", r.get("sample_index") or 0, r.get("model") or "",
                                    r["response_id"]))


def _best(pool: list[dict], rules: Rules = Rules("id")) -> dict:
    return min(pool, key=lambda r: (-_score(r), *_position(r, rules)))


def _worst(pool: list[dict], rules: Rules = Rules("id")) -> dict:
    return min(pool, key=lambda r: (_score(r), *_position(r, rules)))


def _scored(pool: list[dict]) -> list[dict]:
    return [r for r in pool if _score(r) is not None]


def _missing(cs: list[dict], rs: list[dict]) -> Decision:
    return Decision(reason="missing_score", detail=f"{len(cs)} chosen / {len(rs)} rejected responses scored")


def _pick_fixed(cp: list[dict], rp: list[dict], same_pool: bool, seed: int, rules: Rules):
    c, r = _fixed_pick(cp), _fixed_pick(rp)
    if same_pool and c is r:
        # One pool on both sides with a fixed rule: the side's next response is the rejected one.
        rest = [x for x in rp if x is not c]
        if not rest:
            return Decision(reason="no_rejected_responses", detail="pool has a single response")
        r = _fixed_pick(rest)
    return c, r


def _pick_random(cp: list[dict], rp: list[dict], same_pool: bool, seed: int, rules: Rules):
    rng = random.Random(seed)
    c = rng.choice(cp)
    rest = [x for x in rp if x["response_id"] != c["response_id"]]
    if not rest:
        return Decision(reason="no_rejected_responses", detail="pool has a single response")
    return c, rng.choice(rest)


def _pick_best_worst(cp: list[dict], rp: list[dict], same_pool: bool, seed: int, rules: Rules):
    cs, rs = _scored(cp), _scored(rp)
    if not cs or not rs:
        return _missing(cs, rs)
    c = _best(cs, rules)
    if not same_pool:
        return c, _worst(rs, rules)
    # One pool needs two responses (the authors skip a prompt with fewer than 2, generate.py:187).
    if len(rs) < 2:
        return Decision(reason="no_rejected_responses", detail="pool has a single scored response")
    # identical 'keep': argmin over the whole pool, as the authors (equal rewards give the same
    # response on both sides); 'drop': the worst among the others, so the sides differ.
    return c, _worst(rs if rules.identical == "keep" else [x for x in rs if x is not c], rules)


def _pick_length_matched(cp: list[dict], rp: list[dict], same_pool: bool, seed: int, rules: Rules):
    cs, rs = _scored(cp), _scored(rp)
    if not cs or not rs:
        return _missing(cs, rs)
    cands = [(abs(len(a["text"]) - len(b["text"])), -(_score(a) - _score(b)), a["response_id"], b["response_id"], a, b)
             for a in cs for b in rs if a["response_id"] != b["response_id"] and _score(a) > _score(b)]
    if not cands:
        return Decision(reason="no_positive_margin", detail="no candidate pair has chosen reward > rejected reward")
    *_, c, r = min(cands, key=lambda t: t[:4])
    return c, r


_PICKERS = {"fixed": _pick_fixed, "random": _pick_random, "best_worst": _pick_best_worst,
            "max_min_margin": _pick_best_worst, "length_matched": _pick_length_matched}


def select(spec: PairSpec, chosen_pool: list[dict], rejected_pool: list[dict], rng_seed: int,
           rules: Rules = Rules()) -> Decision:
    """Pick one (chosen, rejected) from the two pools by `spec.rule`; a Decision with a reason if none."""
    if not chosen_pool:
        return Decision(reason="no_chosen_responses")
    if not rejected_pool:
        return Decision(reason="no_rejected_responses")
    if spec.rule not in _PICKERS:  # pragma: no cover - the config's Literal forbids it
        raise ConfigError(f"unknown pair rule '{spec.rule}'")
    same_pool = {r["response_id"] for r in chosen_pool} == {r["response_id"] for r in rejected_pool}
    picked = _PICKERS[spec.rule](chosen_pool, rejected_pool, same_pool, rng_seed, rules)
    return picked if isinstance(picked, Decision) else _settle(spec, *picked, rules)


def _settle(spec: PairSpec, c: dict, r: dict, rules: Rules) -> Decision:
    """The picked pair after the optional RM swap, the margin floor and the identical-text rule."""
    swapped = False
    if spec.rule in ("best_worst", "max_min_margin", "length_matched") or spec.rm_swap or spec.min_margin > 0:
        if _score(c) is None or _score(r) is None:
            return Decision(reason="missing_score", detail=f"{c['response_id'] if _score(c) is None else r['response_id']}")
        if spec.rm_swap and _score(c) < _score(r):
            c, r, swapped = r, c, True
        if spec.min_margin > 0 and _score(c) - _score(r) < spec.min_margin:
            return Decision(reason="margin_below_min", detail=f"{_score(c) - _score(r):.4g} < {spec.min_margin:g}")
    if rules.identical == "drop" and c["text"].strip() == r["text"].strip():
        return Decision(reason="identical_texts", detail=f"{c['response_id']} == {r['response_id']}")
    return Decision(chosen=c, rejected=r, swapped=swapped)


def source_order(cfg: StudyConfig, sources: list[str]) -> tuple[str, ...]:
    """Sources in the order a setting lists them, roles expanded to their members."""
    out: list[str] = []
    for src in sources:
        out += cfg.role_members(src) if src in ROLES else [src]
    return tuple(dict.fromkeys(out))


def _pair_record(setting: str, prompt: dict, d: Decision) -> dict:
    c, r = d.chosen, d.rejected
    cs, rs = _score(c), _score(r)
    return {
        "pair_id": stable_id("pair", setting, prompt["prompt_id"], c["response_id"], r["response_id"]),
        "prompt_id": prompt["prompt_id"],
        "setting": setting,
        "prompt": [{"role": "user", "content": prompt["text"]}],
        "chosen": [{"role": "assistant", "content": c["text"]}],
        "rejected": [{"role": "assistant", "content": r["text"]}],
        "chosen_model": c.get("model"),
        "rejected_model": r.get("model"),
        "chosen_kind": c["kind"],
        "rejected_kind": r["kind"],
        "chosen_response_id": c["response_id"],
        "rejected_response_id": r["response_id"],
        "chosen_score": cs,
        "rejected_score": rs,
        "margin": None if cs is None or rs is None else cs - rs,
        "chosen_seed": c.get("seed"),
        "rejected_seed": r.get("seed"),
        "swapped": d.swapped,
    }


def _rng_seed(seed: int, prompt_id: str) -> int:
    # Seeded by (study seed, prompt): the same prompt draws the same pair whatever else changes.
    return int(stable_id("random-pair", seed, prompt_id), 16)


def build_pairs(cfg: StudyConfig, setting: str, spec: PairSpec, prompts: list[dict],
                pools: dict[str, Pools]) -> tuple[list[dict], list[dict]]:
    """(pair records sorted by prompt_id, drop records) for one setting."""
    pairs, drops = [], []
    rules = Rules(cfg.pairs.tie_break, cfg.pairs.identical, source_order(cfg, spec.chosen + spec.rejected))
    for p in sorted(prompts, key=lambda p: p["prompt_id"]):
        pool = pools.get(p["prompt_id"], Pools())
        d = select(spec, pool.side(cfg, spec.chosen, spec.chosen_kind),
                   pool.side(cfg, spec.rejected, spec.rejected_kind), _rng_seed(cfg.replicate, p["prompt_id"]), rules)
        if d.reason:
            drops.append({"setting": setting, "prompt_id": p["prompt_id"], "reason": d.reason, "detail": d.detail})
        else:
            pairs.append(_pair_record(setting, p, d))
    return pairs, drops


# --------------------------------------------------------------------------- statistics + card
def _dist(xs: list[float]) -> dict:
    if not xs:
        return {"mean": None, "median": None, "p10": None, "p90": None}
    s = sorted(xs)

    def q(f: float) -> float:  # linear interpolation between order statistics (numpy's default)
        k = (len(s) - 1) * f
        lo, hi = int(k), min(int(k) + 1, len(s) - 1)
        return s[lo] + (s[hi] - s[lo]) * (k - lo)

    return {"mean": round(statistics.fmean(s), 4), "median": round(q(0.5), 4),
            "p10": round(q(0.1), 4), "p90": round(q(0.9), 4)}


def setting_stats(spec: PairSpec, n_prompts: int, pairs: list[dict], drops: list[dict]) -> dict:
    margins = [p["margin"] for p in pairs if p["margin"] is not None]
    md = _dist(margins)
    return {
        "description": spec.description,
        "rule": spec.rule,
        "prompts": n_prompts,
        "pairs": len(pairs),
        "dropped": dict(sorted(Counter(d["reason"] for d in drops).items())),
        "swapped": sum(p["swapped"] for p in pairs),
        "chosen_chars": _dist([len(p["chosen"][0]["content"]) for p in pairs]),
        "rejected_chars": _dist([len(p["rejected"][0]["content"]) for p in pairs]),
        "margin": {"mean": md["mean"], "median": md["median"], "n": len(margins)},
        "chosen_longer": round(sum(len(p["chosen"][0]["content"]) > len(p["rejected"][0]["content"])
                                   for p in pairs) / len(pairs), 4) if pairs else None,
        "source_mix": {
            "chosen_model": dict(sorted(Counter(str(p["chosen_model"]) for p in pairs).items())),
            "rejected_model": dict(sorted(Counter(str(p["rejected_model"]) for p in pairs).items())),
        },
    }


def dataset_card(cfg: StudyConfig, specs: dict[str, PairSpec], stats: dict) -> str:
    lines = [
        "---", "task_categories: [text-generation]", "tags: [dpo, preference, safety, synthpref]", "---", "",
        f"# Preference pairs: study `{cfg.name}`", "",
        "Built by synthpref (reproducing arXiv 2504.02193, *More is Less*). One file per setting in TRL's",
        "conversational preference format (`prompt`, `chosen`, `rejected` message lists) with provenance",
        "columns (`chosen_model`, `chosen_response_id`, `chosen_score`, `margin`, seeds, ...).", "",
        f"Target model: `{cfg.target}` ({cfg.models[cfg.target].path}); reward scorer: `{cfg.score.reward}`; "
        f"seed {cfg.replicate}.", "",
        "| setting | chosen | rejected | rule | pairs | dropped | chosen chars (median) | rejected chars (median) | margin (mean) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, spec in specs.items():
        s = stats[name]
        drops = ", ".join(f"{k}: {v}" for k, v in s["dropped"].items()) or "0"
        lines.append(f"| {setting_label(cfg, name)} | {'+'.join(spec.chosen)} ({spec.chosen_kind}) | {'+'.join(spec.rejected)} "
                     f"({spec.rejected_kind}) | {spec.rule} | {s['pairs']} | {drops} | {s['chosen_chars']['median']} "
                     f"| {s['rejected_chars']['median']} | {s['margin']['mean']} |")
    lines += ["", "Role members: " + "; ".join(f"{r}: {', '.join(cfg.role_members(r)) or '-'}" for r in ROLES), ""]
    note = footnote(cfg, list(specs))
    if note:
        lines += [note, ""]
    return "\n".join(lines)


def push_to_hub(rd: RunDir, repo_id: str, settings: list[str], private: bool) -> None:
    """Upload each setting as a config of one hub dataset (token from HF_TOKEN / huggingface-cli login)."""
    from datasets import load_dataset

    for name in settings:
        ds = load_dataset("json", data_files=str(pairs_path(rd, name)), split="train")
        ds.push_to_hub(repo_id, config_name=name, private=private)


# --------------------------------------------------------------------------- stage
def _load_pools(rd: RunDir, reward: str) -> tuple[dict[str, Pools], int]:
    """prompt_id -> Pools with each response's reward attached (`_score`); also the count unscored."""
    try:
        scores = load_scores(rd, reward)
    except DataError:
        raise DataError(f"{rd.path('score', reward + '.jsonl')}: reward scores not found; run `synthpref score` "
                        f"first (score.reward is '{reward}')") from None
    pools: dict[str, Pools] = defaultdict(Pools)
    unscored = 0
    for r in load_responses(rd):
        s = scores.get(r["response_id"])
        r = {**r, "_score": None if s is None or s.get("score") is None else float(s["score"])}
        unscored += r["_score"] is None
        if r["kind"] in HUMAN_SOURCES:
            pools[r["prompt_id"]].by_human[r["kind"]].append(r)
        elif r["kind"] in MODEL_KINDS:
            pools[r["prompt_id"]].by_model[r["model"]].append(r)
    return pools, unscored


def run(cfg: StudyConfig, rd: RunDir) -> dict:
    """Stage: one pairs/<setting>.jsonl per requested setting, plus drops, stats.json and README.md."""
    specs = resolve_settings(cfg)
    out = rd.stage("pairs")
    prompts = read_prompts(rd, "train")
    pools, unscored = _load_pools(rd, cfg.score.reward)
    stats: dict = {"version": VERSION, "seed": cfg.replicate, "reward": cfg.score.reward,
                   "unscored_responses": unscored, "settings": {}}
    for name, spec in specs.items():
        pairs, drops = build_pairs(cfg, name, spec, prompts, pools)
        write_jsonl(pairs_path(rd, name), pairs)
        write_jsonl(out / "drops" / f"{name}.jsonl", drops)
        stats["settings"][name] = setting_stats(spec, len(prompts), pairs, drops)
        if cfg.pairs.identical == "keep":  # the authors keep them; say how many
            stats["settings"][name]["identical_kept"] = sum(
                p["chosen"][0]["content"].strip() == p["rejected"][0]["content"].strip() for p in pairs)
        stats["settings"][name]["spec_hash"] = hash_obj(spec.model_dump(mode="json"))[:16]
        stats["settings"][name]["stand_ins"] = setting_stand_ins(cfg, name)
    from ..agreement import reward_agreement

    stats["reward_agreement"] = reward_agreement(cfg)
    write_json(out / "stats.json", stats)
    # A setting no longer in the config must not be trained, probed or reported: it moves to stale/.
    retire_unlisted(rd, "pairs", [f"{n}.jsonl" for n in specs] + ["stats.json", "drops"]
                    + (["README.md"] if cfg.pairs.card else []))  # no card asked for: none left from before
    retire_unlisted(rd, "pairs/drops", [f"{n}.jsonl" for n in specs])
    if cfg.pairs.card:
        write_text(out / "README.md", dataset_card(cfg, specs, stats["settings"]))
    if cfg.pairs.push_to_hub:
        push_to_hub(rd, cfg.pairs.push_to_hub, list(specs), cfg.pairs.private)
    return {name: {"pairs": s["pairs"], "dropped": sum(s["dropped"].values())} for name, s in stats["settings"].items()}
