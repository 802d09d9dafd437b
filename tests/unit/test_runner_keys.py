"""The runner's content-addressed stage keys on two fake stages (no models): a stage re-runs when
its config, the files it reads, or its own recorded outputs change, and only then."""

from __future__ import annotations

import io
import json
import types

import pytest
from rich.console import Console

from synthpref import runner
from synthpref.config import parse_config
from synthpref.rundir import write_text


@pytest.fixture
def fake(monkeypatch, tmp_path):
    calls: list[str] = []

    def stage(name, config, reads):
        def run(cfg, rd):
            calls.append(name)
            src = "".join(rd.path(r, "out.txt").read_text() for r in reads)
            write_text(rd.path(name, "out.txt"), f"{name}({src or cfg.seed})")
            return {"ran": name}
        # the stage protocol (synthpref.stages): what the runner asks of a stage module
        return types.SimpleNamespace(CONFIG=config, READS=reads, WRITES=(name,), VERSION=1,
                                     check=lambda cfg, checks: None, run=run)

    mods = {"up": stage("up", ("seed",), ()), "down": stage("down", ("name",), ("up",))}
    monkeypatch.setattr(runner, "ORDER", ("up", "down"))
    monkeypatch.setattr(runner, "load", lambda s: mods[s])
    monkeypatch.setattr(runner, "_print_summary", lambda *a, **k: None)

    def run(seed=0, only=None):
        cfg = parse_config({"name": "k", "seed": seed, "run_dir": str(tmp_path / "run"),
                            "models": {"m": {"path": "x"}}, "target": "m", "prompts": {"train": {"source": "advbench"}}})
        err = io.StringIO()
        runner.run_study(cfg, only=only, console=Console(file=err, width=300))
        return err.getvalue()

    return calls, run, tmp_path / "run"


def test_reruns_only_on_changed_config_inputs_or_outputs(fake):
    calls, run, rd = fake
    run()
    assert calls == ["up", "down"]
    calls.clear()
    run()
    assert calls == []  # nothing changed
    (rd / "down" / "out.txt").write_text("edited by hand")
    run()
    assert calls == ["down"]  # its recorded output no longer matches
    calls.clear()
    (rd / "up" / "out.txt").unlink()
    run()
    assert calls == ["up"]  # recomputed to the same bytes, so down's inputs are unchanged
    m = json.loads((rd / "manifest.json").read_text())["stages"]
    assert m["down"]["inputs"] == {"up/out.txt": m["up"]["outputs"]["up/out.txt"]}


def test_only_downstream_after_upstream_config_change_warns_then_full_run_fixes(fake):
    calls, run, rd = fake
    run()
    calls.clear()
    err = run(seed=1, only=["down"])
    assert calls == ["down"] and "note: down reads the outputs of up" in err
    assert (rd / "down" / "out.txt").read_text() == "down(up(0))"  # the files on disk, as recorded
    calls.clear()
    run(seed=1)
    assert calls == ["up", "down"]  # up's config changed; down's input file changed with it
    assert (rd / "down" / "out.txt").read_text() == "down(up(1))"
