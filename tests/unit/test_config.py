"""Config: unknown keys with did-you-mean, overrides, cross-field rules, malformed YAML, every shipped YAML."""

from pathlib import Path

import pytest

from synthpref.config import load_config, parse_config
from synthpref.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]

MINIMAL = {
    "name": "t",
    "models": {"m": {"path": "smollm2-135m-instruct"}},
    "target": "m",
    "prompts": {"train": {"source": "advbench", "limit": 4}},
}


def _with(**changes):
    import copy

    d = copy.deepcopy(MINIMAL)
    d.update(changes)
    return d


def test_minimal_config_gets_paper_defaults():
    cfg = parse_config(MINIMAL)
    s = cfg.generate.sampling
    assert (s.num_samples, s.temperature, s.top_p, s.repetition_penalty, s.no_repeat_ngram_size, s.max_new_tokens) == (
        5, 0.5, 0.9, 1.2, 3, 128)
    assert cfg.train.loss_type == "sigmoid" and cfg.train.beta == 0.1
    assert cfg.pairs.settings == ["original", "hc_self", "gpt4o_self", "stronger_self", "peer_rm", "all_rm", "self_rm"]
    assert cfg.evaluate.safety.max_new_tokens == 512


def test_unknown_key_is_an_error_with_did_you_mean():
    d = _with(generate={"sampling": {"temprature": 0.7}})
    with pytest.raises(ConfigError, match=r"generate\.sampling\.temprature: unknown key \(did you mean 'temperature'\?\)"):
        parse_config(d, "x.yaml")


def test_unknown_key_under_a_named_model():
    d = _with(models={"m": {"path": "p", "trust_remote_cod": True}})
    with pytest.raises(ConfigError, match=r"models\.m\.trust_remote_cod: unknown key \(did you mean 'trust_remote_code'\?\)"):
        parse_config(d)


def test_target_must_name_a_model():
    with pytest.raises(ConfigError, match=r"target: 'mm' is not in models \(did you mean 'm'\?\)"):
        parse_config(_with(target="mm"))


def test_a_model_named_human_is_refused():
    d = _with(models={"m": {"path": "p"}, "human": {"path": "q"}})
    with pytest.raises(ConfigError, match=r"models: 'human' is the name of the prompts' human-written answers"):
        parse_config(d)


def test_role_member_must_be_a_model():
    with pytest.raises(ConfigError, match=r"roles.peers: 'gema' is not in models"):
        parse_config(_with(roles={"peers": ["gema"]}))


def test_reward_scorer_must_exist():
    with pytest.raises(ConfigError, match=r"score.reward: 'rmm'"):
        parse_config(_with(score={"reward": "rmm"}))


def test_bad_value_names_field_and_value():
    with pytest.raises(ConfigError, match=r"generate.sampling.top_p: .*got 1.5"):
        parse_config(_with(generate={"sampling": {"top_p": 1.5}}))


def test_overrides_parse_as_yaml(tmp_path):
    import yaml

    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(MINIMAL))
    cfg = load_config(p, ["train.beta=0.05", "generate.sampling.num_samples=3", "pairs.settings=[self_rm]"])
    assert cfg.train.beta == 0.05 and cfg.generate.sampling.num_samples == 3 and cfg.pairs.settings == ["self_rm"]


def test_malformed_yaml_names_file_and_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\nmodels: {a: [\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+:\d+: malformed YAML"):
        load_config(p)


def test_missing_file():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("/nonexistent/x.yaml")


def test_accelerate_launcher_needs_a_config():
    with pytest.raises(ConfigError, match="accelerate_config"):
        parse_config(_with(train={"launcher": "accelerate"}))


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.yaml")
                                        if "accelerate" not in p.parts and "smoke" not in p.parts))  # smoke/: override recipes
def test_every_shipped_study_config_validates(path, monkeypatch):
    """Like `synthpref validate`: schema plus references (asset names, sources, settings, formats)."""
    from synthpref.validate import validate

    monkeypatch.chdir(ROOT)
    cfg = load_config(path)
    assert validate(cfg, path) == []
