"""`--smoke` caps a config's sizes without touching its models, engines or settings, and
`--overrides-file` moves a paper config onto packaged models."""

from pathlib import Path

import pytest

from synthpref.config import load_config, overrides_from_file
from synthpref.errors import ConfigError
from synthpref.smoke import smoke_config

ROOT = Path(__file__).resolve().parents[2]
PAPER = ROOT / "configs" / "paper" / "llama31_8b.yaml"
RECIPE = ROOT / "configs" / "smoke" / "cpu.yaml"


def test_smoke_caps_sizes_and_keeps_the_study():
    cfg = load_config(PAPER)
    small, changes = smoke_config(cfg)
    assert small.prompts.train.limit == 8 and small.prompts.eval["advbench"].limit == 4
    assert small.generate.sampling.num_samples == 2 and small.generate.sampling.max_new_tokens == 16
    assert small.generate.overrides["gpt4o"].max_new_tokens == 16
    assert small.train.max_steps == 2 and small.train.sft.max_steps == 2
    assert small.evaluate.general.limit == 2 and small.evaluate.safety.max_new_tokens == 16
    assert str(small.run_path) == f"{cfg.run_path}-smoke"
    # what makes the study the paper's is untouched
    assert small.models == cfg.models and small.pairs.settings == cfg.pairs.settings
    assert small.train.launcher == "accelerate" and small.train.accelerate_config == cfg.train.accelerate_config
    assert small.evaluate.safety.judges == cfg.evaluate.safety.judges
    assert any(c.startswith("train.max_steps: -1 -> 2") for c in changes)


def test_smoke_only_shrinks():
    cfg = load_config(PAPER, ["prompts.train.limit=3", "generate.sampling.num_samples=0"])
    small, changes = smoke_config(cfg)
    assert small.prompts.train.limit == 3 and small.generate.sampling.num_samples == 0
    assert not any(c.startswith("prompts.train.limit") for c in changes)


@pytest.mark.parametrize("given, capped", [(0, 2), (-1, 2), (1, 1), (50, 2)])
def test_smoke_caps_every_step_count_that_would_train_longer(given, capped):
    small, _ = smoke_config(load_config(PAPER, [f"train.max_steps={given}", f"train.sft.max_steps={given}"]))
    assert small.train.max_steps == capped and small.train.sft.max_steps == capped


def test_an_overrides_file_value_yaml_reads_as_a_date_stays_its_text(tmp_path):
    f = tmp_path / "o.yaml"
    f.write_text("name: 2024-01-01\n")
    assert load_config(PAPER, overrides_from_file(f)).name == "2024-01-01"


def test_recipe_moves_every_paper_config_onto_packaged_models():
    recipe = overrides_from_file(RECIPE)
    for path in sorted((ROOT / "configs" / "paper").glob("*.yaml")):
        cfg = load_config(path, recipe)
        assert cfg.device == "cpu" and cfg.train.num_processes == 2
        assert {m.path for m in cfg.models.values() if m.backend == "hf"} >= {"smollm2-135m-instruct"}
        assert cfg.prompts.train.source == "pyrit-human-pairs"
        # layered with the vLLM CPU recipe: the target, the stronger model and one peer generate on vllm
        on_vllm = load_config(path, recipe + overrides_from_file(RECIPE.parent / "cpu_vllm.yaml"))
        vllm = {n: m for n, m in on_vllm.models.items() if m.backend == "vllm"}
        assert set(vllm) == {"target", "stronger", "peer_a"} and all(m.dtype == "float32" for m in vllm.values())
        assert on_vllm.models["stronger"].stand_in_for and on_vllm.device == "cpu"


def test_overrides_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "o.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="o.yaml: expected a mapping"):
        overrides_from_file(bad)
    with pytest.raises(ConfigError, match="not found"):
        overrides_from_file(tmp_path / "missing.yaml")


def test_overrides_may_follow_options(monkeypatch):
    from synthpref import cli

    seen = {}
    monkeypatch.setattr(cli, "cmd_run", lambda args: seen.update(vars(args)) or 0)
    assert cli.main(["run", str(PAPER), "--smoke", "train.beta=0.2", "--overrides-file", str(RECIPE), "seed=1"]) == 0
    assert seen["overrides"] == ["train.beta=0.2", "seed=1"] and seen["smoke"] and seen["overrides_file"] == [str(RECIPE)]
    with pytest.raises(SystemExit):
        cli.main(["run", str(PAPER), "--smoke", "--no-such-flag"])


def test_recipes_layer_in_order_and_the_qwen_recipe_keeps_the_family(monkeypatch):
    """`--overrides-file` repeated: later files win. The Qwen configs' recipe trains a Qwen target with
    the larger Qwen as its stronger model; everything else is cpu.yaml's."""
    from synthpref import cli

    qwen = ROOT / "configs" / "smoke" / "cpu_qwen.yaml"
    for name in ("qwen2_7b", "qwen25_7b"):
        cfg = cli._load(cli.build_parser().parse_args(
            ["run", str(ROOT / "configs" / "paper" / f"{name}.yaml"), "--smoke", "--overrides-file", str(RECIPE),
             "--overrides-file", str(qwen)]))
        assert cfg.models["target"].path == "qwen2.5-coder-0.5b-instruct"
        assert cfg.models["stronger"].path == "qwen2.5-coder-1.5b-instruct" and not cfg.models["stronger"].stand_in_for
        assert cfg.train.num_processes == 1 and cfg.device == "cpu"  # the second file over the first
        assert cfg.models["peer_b"].path == "gemma-3-270m" and cfg.train.max_steps == 2  # the first, and --smoke
    swapped = cli._load(cli.build_parser().parse_args(
        ["run", str(PAPER), "--overrides-file", str(qwen), "--overrides-file", str(RECIPE)]))
    assert swapped.models["target"].path == "smollm2-135m-instruct"  # order decides
