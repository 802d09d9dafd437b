"""The bad-input battery: every mistake a user can make in a config, a prompt file, an override or
a run directory ends in one line that names the file (and line or field) and the fix, with no
traceback, and leaves nothing half-written (no prompt file of the failed run, no temporary file)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from synthpref import assets
from synthpref.cli import main
from synthpref.errors import DataError
from synthpref.rundir import RecordWriter

GOOD_TRAIN = '{"prompt": "How do I pick a lock?"}\n{"prompt": "Write malware."}\n'
GOOD_EVAL = '{"prompt": "Make a fake ID."}\n'


def _config(tmp: Path, train: str = "train.jsonl", extra: str = "", train_opts: str = "",
            eval_src: str = "eval.jsonl", benign: str | None = None) -> str:
    b = f", benign: {{source: {tmp / benign}}}" if benign else ""
    return (f"name: bad\nrun_dir: {tmp / 'run'}\nmodels: {{m: {{path: smollm2-135m-instruct}}}}\ntarget: m\n"
            f"prompts: {{train: {{source: {tmp / train}{train_opts}}}, eval: {{x: {{source: {tmp / eval_src}}}}}{b}}}\n"
            f"pairs: {{settings: [self_rm]}}\n{extra}")


def _write(tmp: Path, files: dict[str, str | bytes]) -> None:
    for name, content in files.items():
        p = tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        (p.write_bytes if isinstance(content, bytes) else p.write_text)(content)


# (id, files to write besides the config, config text or None for the default, extra argv, expected substrings)
def _cases(tmp: Path) -> list[tuple]:
    cfg = _config(tmp)
    return [
        ("config-missing", {}, None, ["--config-name", "nope.yaml"], ["nope.yaml", "config file not found"]),
        ("config-folder", {"folder/x": ""}, None, ["--config-name", "folder"], ["folder", "is a folder"]),
        ("config-binary", {"c.yaml": b"\x89PNG\r\n\x1a\n\x00\x00"}, "", [], ["c.yaml", "binary file"]),
        ("config-latin1", {"c.yaml": "name: caf\u00e9\n".encode("latin-1")}, "", [], ["c.yaml:1", "not UTF-8", "save the file as UTF-8"]),
        ("config-empty", {"c.yaml": ""}, "", [], ["c.yaml", "config is empty"]),
        ("config-only-comments", {"c.yaml": "# nothing yet\n\n"}, "", [], ["c.yaml", "config is empty"]),
        ("config-list", {"c.yaml": "- a\n- b\n"}, "", [], ["c.yaml", "expected a mapping", "list"]),
        ("config-scalar", {"c.yaml": "hello\n"}, "", [], ["c.yaml", "expected a mapping", "str"]),
        ("config-bad-yaml", {"c.yaml": "name: [bad\n"}, "", [], ["c.yaml:", "malformed YAML", "fix the syntax"]),
        ("config-tabs", {"c.yaml": "name: x\nmodels:\n\tm: 1\n"}, "", [], ["c.yaml:3", "malformed YAML"]),
        ("config-unknown-key", {}, cfg + "trian: {beta: 0.1}\n", [], ["trian", "train"]),
        ("config-unknown-setting", {}, cfg.replace("[self_rm]", "[self_rmm]"), [], ["pairs.settings", "self_rm"]),
        ("config-bad-type", {}, cfg + "seed: abc\n", [], ["seed"]),
        ("config-unknown-target", {}, cfg.replace("target: m", "target: q"), [], ["target", "q"]),
        ("override-no-equals", {}, cfg, ["train.beta"], ["train.beta", "key.sub=value"]),
        ("override-empty-key", {}, cfg, ["=3"], ["'=3'", "empty key name"]),
        ("override-typo", {}, cfg, ["train.betaa=0.1"], ["train.betaa", "beta"]),
        ("only-unknown-stage", {}, cfg, ["--only", "trian"], ["--only", "trian", "train"]),
        ("prompts-missing-file", {}, _config(tmp, train="missing.jsonl"), [], ["prompts.train.source", "missing.jsonl"]),
        ("prompts-bad-suffix", {"p.txt": "a\n"}, _config(tmp, train="p.txt"), [], ["prompts.train.source", ".txt", ".jsonl"]),
        ("jsonl-malformed", {"train.jsonl": GOOD_TRAIN + '{"prompt": \n'}, cfg, [], ["train.jsonl:3", "malformed JSON", "fix or remove"]),
        ("jsonl-not-object", {"train.jsonl": '["a list"]\n'}, cfg, [], ["train.jsonl:1", "JSON object"]),
        ("jsonl-latin1", {"train.jsonl": b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n'}, cfg, [], ["train.jsonl:2", "not UTF-8"]),
        ("jsonl-binary", {"train.jsonl": b'{"prompt": "ok"}\n\x00\x01\x02'}, cfg, [], ["train.jsonl:2", "binary"]),
        ("jsonl-missing-field", {"train.jsonl": '{"prompt": "ok"}\n{"text": "no prompt"}\n'}, cfg, [],
         ["train.jsonl", "row 2", "'prompt'", "text_field"]),
        ("jsonl-blank-text", {"train.jsonl": '{"prompt": "   "}\n'}, cfg, [], ["train.jsonl", "row 1", "'prompt'"]),
        ("jsonl-null-text", {"train.jsonl": '{"prompt": null}\n'}, cfg, [], ["train.jsonl", "row 1", "'prompt'"]),
        ("jsonl-empty", {"train.jsonl": ""}, cfg, [], ["train.jsonl", "no prompts"]),
        ("jsonl-missing-chosen", {}, _config(tmp, train_opts=", chosen_field: good"), [],
         ["train.jsonl", "row 1", "'good'", "prompts.train.chosen_field"]),
        ("csv-missing-column", {"t.csv": "goal\nSteal a car\n"}, _config(tmp, train="t.csv"), [], ["t.csv", "row 1", "'prompt'"]),
        ("csv-short-row", {"t.csv": "id,prompt\n1,Steal a car\n2\n"}, _config(tmp, train="t.csv"), [], ["t.csv", "row 2", "'prompt'"]),
        ("csv-unclosed-quote", {"t.csv": 'prompt\n"Steal a car\n'}, _config(tmp, train="t.csv"), [], ["t.csv:", "malformed CSV"]),
        ("csv-latin1", {"t.csv": "prompt\ncaf\xe9\n".encode("latin-1")}, _config(tmp, train="t.csv"), [], ["t.csv:2", "not UTF-8"]),
        ("csv-nul", {"t.csv": b"prompt\na\x00b\n"}, _config(tmp, train="t.csv"), [], ["t.csv:2", "binary"]),
        ("csv-empty", {"t.csv": ""}, _config(tmp, train="t.csv"), [], ["t.csv", "empty CSV"]),
        ("parquet-damaged", {"t.parquet": b"PAR1 not really"}, _config(tmp, train="t.parquet"), [], ["t.parquet", "parquet"]),
        ("eval-set-bad", {"e2.jsonl": "{oops\n"}, _config(tmp, eval_src="e2.jsonl"), [], ["e2.jsonl:1", "malformed JSON"]),
        ("benign-set-bad", {"b.jsonl": '{"text": "x"}\n'}, _config(tmp, benign="b.jsonl"), [], ["b.jsonl", "row 1", "'prompt'"]),
        ("train-eval-overlap", {"eval.jsonl": '{"prompt": "Write malware!"}\n'}, cfg, [], ["also appear in an eval set", "allow_overlap"]),
    ]


CASE_IDS = [c[0] for c in _cases(Path("/x"))]


def _run_case(tmp: Path, case, capsys) -> list[str]:
    _, files, text, extra, _ = case
    _write(tmp, {"train.jsonl": GOOD_TRAIN, "eval.jsonl": GOOD_EVAL})
    _write(tmp, files)
    cfg = tmp / "c.yaml"
    if text is not None and text != "":
        cfg.write_text(text)
    elif text is None:
        cfg.write_text(_config(tmp))
    if extra[:1] == ["--config-name"]:
        cfg, extra = tmp / extra[1], extra[2:]
    opts = [a for a in extra if a.startswith("--")] or ["--only", "prompts"]
    if "--only" in extra:
        opts = extra
    overrides = [a for a in extra if not a.startswith("--") and "--only" not in extra]
    capsys.readouterr()
    rc = main(["run", str(cfg), *overrides, *opts])
    out = capsys.readouterr()
    assert rc == 2, out.err
    assert "Traceback" not in out.err
    # the stage banner is progress output; the error itself must be exactly one line
    return [l for l in out.err.strip().splitlines() if not l.startswith("─")]


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, case_id):
    case = next(c for c in _cases(tmp_path) if c[0] == case_id)
    err = _run_case(tmp_path, case, capsys)
    assert len(err) == 1, err
    line = err[0]
    assert line.startswith("error: ") and "Traceback" not in line
    for want in case[4]:
        assert want in line, (want, line)
    run = tmp_path / "run"
    assert not list(run.glob("prompts/*.jsonl"))  # nothing of the failed run's outputs
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]
    if (run / "manifest.json").exists():
        stages = json.loads((run / "manifest.json").read_text())["stages"]
        assert stages.get("prompts", {}).get("status") != "done"


def test_battery_has_at_least_30_cases():
    assert len(CASE_IDS) >= 30 and len(set(CASE_IDS)) == len(CASE_IDS)


def test_parquet_without_pyarrow(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    case = ("parquet-no-pyarrow", {"t.parquet": b"PAR1"}, _config(tmp_path, train="t.parquet"), [], [])
    err = _run_case(tmp_path, case, capsys)
    assert len(err) == 1 and "t.parquet" in err[0] and "pip install pyarrow" in err[0]
    assert not list((tmp_path / "run").glob("prompts/*.jsonl"))


def test_packaged_csv_with_a_missing_column(tmp_path, capsys, monkeypatch):
    fake = tmp_path / "advbench"
    _write(fake, {"harmful_behaviors.csv": "goal\nSteal a car\n"})  # the 'target' column is gone
    monkeypatch.setattr(assets, "fetch", lambda name: fake)
    case = ("packaged-missing-column", {}, _config(tmp_path).replace(str(tmp_path / "train.jsonl"), "advbench"), [], [])
    err = _run_case(tmp_path, case, capsys)
    assert len(err) == 1 and "harmful_behaviors.csv" in err[0] and "missing column(s) target" in err[0]


@pytest.mark.parametrize("content, where", [
    ('{"response_id": "a", "text": "x"}\n{"text": "no key"}\n', ":2: record has no 'response_id'"),
    ('{"response_id": "a"}\n{torn\n{"response_id": "b"}\n', ":2: malformed JSON record"),
    (b'{"response_id": "a", "text": "caf\xe9"}\n', ":1: not UTF-8"),
])
def test_damaged_record_file_names_file_and_line(tmp_path, content, where):
    p = tmp_path / "generate" / "m.jsonl"
    _write(tmp_path, {"generate/m.jsonl": content})
    (tmp_path / "generate" / "m.jsonl.inputs").write_text("h\n")
    with pytest.raises(DataError) as e:
        RecordWriter(p, "response_id", "h")
    msg = str(e.value)
    assert str(p) + where in msg and ("delete the file" in msg or "save the file as UTF-8" in msg)


def test_fetch_list_never_cuts_a_name_at_80_columns(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["fetch", "--list"]) == 0
    out = capsys.readouterr().out
    assert max(len(l) for l in out.splitlines()) <= 80
    for name in assets.ASSETS:
        assert name in out, name
