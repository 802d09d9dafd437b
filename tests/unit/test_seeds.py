"""Seeds (`seeds:` / `--seeds N`): per-seed runs share what does not depend on the seed, bad input
is one line naming the field, and the pooled prompt-clustered test gives the known answer."""

from __future__ import annotations

import io
import json
import os
import types

import pytest
import yaml
from rich.console import Console

from synthpref import replicates, runner
from synthpref.cli import with_seeds
from synthpref.config import dump_config, parse_config
from synthpref.errors import ConfigError
from synthpref.rundir import RecordWriter, sharing, write_text
from synthpref.stats import mcnemar_exact, paired_rates


def _cfg(tmp_path, **over):
    return parse_config({"name": "k", "run_dir": str(tmp_path / "run"), "models": {"m": {"path": "x"}},
                         "target": "m", "prompts": {"train": {"source": "advbench"}}, **over})


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize("seeds, words", [([], "seeds: the list is empty"), ([0, 1, 1], "seed 1 is listed twice"),
                                          ([1, 2], "does not include seed (0)"), ([0, -1], "seed -1 is negative")])
def test_bad_seeds_are_one_line_naming_the_field_and_the_fix(tmp_path, seeds, words):
    with pytest.raises(ConfigError) as e:
        _cfg(tmp_path, seeds=seeds)
    msg = str(e.value)
    assert "\n" not in msg and words in msg and "seeds" in msg
    assert any(fix in msg for fix in ("list the seeds", "list each seed once", "add 0", "use seeds >= 0"))


def test_cli_seeds_counts_from_the_config_seed_and_rejects_zero(tmp_path):
    assert with_seeds(_cfg(tmp_path, seed=3), 3).seeds == [3, 4, 5]
    with pytest.raises(ConfigError, match=r"^--seeds: 0; give the number of seeds N >= 1"):
        with_seeds(_cfg(tmp_path), 0)


def test_unset_seeds_leave_dumps_and_keys_as_before(tmp_path):
    cfg = _cfg(tmp_path)
    assert not {"seeds", "replicate_seed"} & (set(yaml.safe_load(dump_config(cfg))) | set(cfg.model_dump()))
    assert cfg.replicate == cfg.seed == 0
    one = cfg.model_copy(update={"replicate_seed": 0})
    # Setting the replicate seed changes the keys from generate on, never those of prompts or sft.
    a, b = runner.stage_hashes(cfg), runner.stage_hashes(one)
    assert a["prompts"] == b["prompts"] and a["sft"] == b["sft"] and a["generate"] != b["generate"]
    assert runner.shared_stages(cfg, one) == ["prompts", "sft"]


# --------------------------------------------------------------------------- runner with fake stages
@pytest.fixture
def fake(monkeypatch, tmp_path):
    """Three fake stages: `shared` (keyed by seed), `sampled` (keyed by replicate_seed, reads shared),
    `report` (reads sampled); each run is recorded with the seed it saw."""
    calls: list[tuple[str, int]] = []

    def stage(name, config, reads):
        def run(cfg, rd):
            calls.append((name, cfg.replicate))
            src = "".join(rd.path(r, "out.txt").read_text() for r in reads)
            write_text(rd.path(name, "out.txt"), f"{name}({src or cfg.seed},{cfg.replicate if name != 'shared' else ''})")
            return {"ran": name}
        return types.SimpleNamespace(CONFIG=config, READS=reads, WRITES=(name,), VERSION=1,
                                     check=lambda cfg, checks: None, run=run)

    mods = {"shared": stage("shared", ("seed",), ()), "sampled": stage("sampled", ("replicate_seed",), ("shared",)),
            "report": stage("report", (), ("sampled",))}
    monkeypatch.setattr(runner, "ORDER", tuple(mods))
    monkeypatch.setattr(runner, "load", lambda s: mods[s])
    monkeypatch.setattr(runner, "_print_summary", lambda *a, **k: None)
    reports = []
    monkeypatch.setattr(replicates, "write_report", lambda cfg, runs: reports.append([k for k, _ in runs]) or "r")

    def run(seeds=(0, 1, 2)):
        cfg = _cfg(tmp_path, seeds=list(seeds))
        runner.run_study(cfg, console=Console(file=io.StringIO(), width=300))

    return calls, run, tmp_path / "run", reports


def test_seed_dependent_stages_run_per_seed_and_shared_ones_once(fake):
    calls, run, root, reports = fake
    run()
    # seed 0's report last: it names the seeds report written just before it
    assert calls == [("shared", 0), ("sampled", 0), ("sampled", 1), ("report", 1),
                     ("sampled", 2), ("report", 2), ("report", 0)]
    assert reports == [[0, 1, 2]]
    # The study's own seed is the run directory itself, as a single-seed run; the others share its output.
    assert (root / "sampled" / "out.txt").read_text() == "sampled(shared(0,),0)"
    for k in (1, 2):
        sub = root / "seeds" / f"seed-{k}"
        assert (sub / "sampled" / "out.txt").read_text() == f"sampled(shared(0,),{k})"
        assert os.path.samefile(sub / "shared" / "out.txt", root / "shared" / "out.txt")  # a hard link, not a copy
        m = json.loads((sub / "manifest.json").read_text())["stages"]
        assert m["shared"]["outputs"] == json.loads((root / "manifest.json").read_text())["stages"]["shared"]["outputs"]
        written = yaml.safe_load((sub / "config.yaml").read_text())
        assert "seeds" not in written and written["replicate_seed"] == k
    assert not {"seeds", "replicate_seed"} & set(yaml.safe_load((root / "config.yaml").read_text()))  # as one seed


def test_a_rerun_does_no_work_and_a_new_seed_only_its_own(fake):
    calls, run, root, _ = fake
    run()
    calls.clear()
    run()
    assert calls == []
    run(seeds=(0, 1, 2, 3))
    assert calls == [("sampled", 3), ("report", 3)]


def test_an_interrupted_seeds_run_resumes_with_the_unfinished_seed_only(fake):
    calls, run, root, reports = fake
    stage = runner.load("sampled")
    real = stage.run

    def dies_at_seed_2(cfg, rd):
        if cfg.replicate == 2:
            raise RuntimeError("killed")
        return real(cfg, rd)

    stage.run = dies_at_seed_2
    with pytest.raises(RuntimeError):
        run()
    assert reports == []  # no seeds report from an unfinished set of seeds
    stage.run = real
    calls.clear()
    run()
    # seed 0's report had not been written yet (it comes after the seeds report)
    assert calls == [("sampled", 2), ("report", 2), ("report", 0)] and reports == [[0, 1, 2]]
    assert (root / "seeds" / "seed-2" / "sampled" / "out.txt").read_text() == "sampled(shared(0,),2)"


def test_an_existing_single_seed_run_is_the_first_seed(fake, tmp_path):
    calls, run, root, _ = fake
    runner.run_study(_cfg(tmp_path), console=Console(file=io.StringIO(), width=300))
    calls.clear()
    run(seeds=(0, 1))
    assert calls == [("sampled", 1), ("report", 1)]


# --------------------------------------------------------------------------- record sharing
def test_a_writer_takes_missing_records_from_the_shared_run_only_for_the_same_inputs(tmp_path):
    donor, mine = tmp_path / "a", tmp_path / "a" / "seeds" / "seed-1"
    w = RecordWriter(donor / "gen" / "m.jsonl", "id", "h1")
    for i in range(3):
        w.add({"id": f"r{i}", "text": f"t{i}"})
    w.finish()
    with sharing(mine, donor):
        w = RecordWriter(mine / "gen" / "m.jsonl", "id", "h1")
        w.prune(lambda r: r["id"] != "r2")  # the stage's own rule applies to shared records too
        assert w.done("r0") and not w.done("r2") and not w.done("x")
        w.add({"id": "x", "text": "new"})
        assert [r["id"] for r in w.finish()] == ["r0", "x"] and w.reused == 1
        other = RecordWriter(mine / "gen" / "other.jsonl", "id", "h1")
        assert not other.done("r0")  # no such file in the shared run
        changed = RecordWriter(mine / "gen2" / "m.jsonl", "id", "h2")
        assert not changed.done("r0")
    assert not RecordWriter(tmp_path / "b" / "gen" / "m.jsonl", "id", "h1").done("r0")  # outside `sharing`


# --------------------------------------------------------------------------- pooled test
def _table(first: list[bool], second: list[bool], prompts: list[str] | None = None) -> dict:
    from synthpref.findings import keyed_rates

    prompts = prompts or [f"p{i}" for i in range(len(first))]
    return keyed_rates(zip(prompts, first, second))


def test_pooled_test_on_distinct_prompts_is_the_exact_mcnemar_test():
    # Three seeds on different prompts; per seed (b = only the setting refuses, c = only sft): (3, 0), (2, 1), (4, 0).
    seeds = {0: _table([True] * 3 + [False] * 5, [False] * 8, [f"a{i}" for i in range(8)]),
             1: _table([True, True, False, True, False], [False, False, True, True, False], [f"b{i}" for i in range(5)]),
             2: _table([True] * 6, [False] * 4 + [True] * 2, [f"c{i}" for i in range(6)])}
    assert [(t["b"], t["c"]) for t in seeds.values()] == [(3, 0), (2, 1), (4, 0)]
    p = replicates.pooled_test(list(seeds.values()))
    assert (p["b"], p["c"], p["n"], p["strata"], p["prompts"], p["prompts_changed"]) == (9, 1, 19, 3, 19, 10)
    assert p["p_value"] == pytest.approx(22 / 1024) == mcnemar_exact(9, 1)  # one pair per prompt: McNemar
    assert p["difference"] == pytest.approx(8 / 19)
    # No seed alone is significant (2 * 2^-3 = 0.25, 1.0, 2 * 2^-4 = 0.125); pooled they are.
    rows = replicates.combine({k: {("s", "harmful-prompt refusal", "x/chat"): t} for k, t in seeds.items()})
    (row,) = rows
    assert row["pooled"]["p_adjusted"] == pytest.approx(22 / 1024) and row["verdict"] == "moved up"
    assert row["moved_in"] == 0 and row["seed_verdicts"]["0"].startswith("no detectable change")
    assert row["spread"]["min"] == pytest.approx(3 / 8) and row["spread"]["max"] == 1.0


def test_pooled_test_counts_a_prompt_that_moves_in_every_seed_once():
    """The same three prompts move in all three seeds (the shared SFT answer): nine discordant pairs
    but three units of evidence, p = 2/8, where pairs counted as independent would give 2/512."""
    same = _table([True] * 3 + [False] * 5, [False] * 8)
    p = replicates.pooled_test([same, same, same])
    assert (p["b"], p["c"], p["prompts"], p["prompts_changed"]) == (9, 0, 8, 3)
    assert p["p_value"] == pytest.approx(0.25) and mcnemar_exact(9, 0) == pytest.approx(2 / 512)


def test_moved_in_counts_seeds_moving_the_pooled_way_and_holm_covers_every_pooled_test():
    big = _table([True] * 8 + [False] * 2, [False] * 10)  # b=8, c=0 on p0..p7 in each seed
    against = _table([False] * 8, [True] * 8)  # b=0, c=8: moved down
    tests = {0: {("s", "m", "w"): big, ("t", "m", "w"): against},
             1: {("s", "m", "w"): big, ("t", "m", "w"): _table([False] * 4, [False] * 4)}}
    rows = {r["setting"]: r for r in replicates.combine(tests)}
    assert rows["s"]["moved_in"] == 2 and rows["s"]["direction"] == "moved up"
    assert rows["t"]["moved_in"] == 1 and rows["t"]["direction"] == "moved down" and rows["t"]["seeds"] == [0, 1]
    # s: eight prompts, each +2 over the two seeds; t: eight prompts, each -1: both p = 2 / 2^8
    assert rows["s"]["pooled"]["p_value"] == rows["t"]["pooled"]["p_value"] == pytest.approx(2 ** -7)
    assert rows["s"]["pooled"]["p_adjusted"] == rows["t"]["pooled"]["p_adjusted"] == pytest.approx(2 * 2 ** -7)  # Holm
    md = replicates.to_markdown({"study": "x", "seeds": [0, 1], "runs": {"0": ".", "1": "seeds/seed-1"},
                                 "test": replicates.TEST_NAME, "alpha": 0.05, "harm_measure": "ASR",
                                 "rows": list(rows.values())})
    assert "prompt-clustered exact sign-flip" in md and "| 2 of 2 |" in md and "| 1 of 2 |" in md
    assert "| 20 (10) | 0 / 16 | 8 |" in md


def test_probe_features_of_the_same_identity_are_read_from_the_shared_run(tmp_path):
    import numpy as np

    from synthpref.stages.probe import FeatureCache

    donor, mine = tmp_path / "a", tmp_path / "a" / "seeds" / "seed-1"
    FeatureCache(donor / "probe" / "cache", {"m": 1}).add(["k1", "k2"], {"x": np.ones((2, 3))})
    with sharing(mine, donor):
        assert FeatureCache(mine / "probe" / "cache", {"m": 1}).missing(["k1", "k2", "k3"]) == ["k3"]
        assert FeatureCache(mine / "probe" / "cache", {"m": 2}).missing(["k1"]) == ["k1"]  # other weights
