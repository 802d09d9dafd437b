"""Run directory: atomic writes, record-level resume, changed inputs never mixed, manifest."""

import json
import os

import pytest

from synthpref.errors import DataError, SynthprefError
from synthpref.rundir import RecordWriter, RunDir, atomic_open, read_jsonl, write_jsonl


def test_atomic_write_leaves_old_file_when_interrupted(tmp_path):
    p = tmp_path / "out.json"
    p.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(p) as f:
            f.write("new half")
            raise RuntimeError("killed")
    assert p.read_text() == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["out.json"]  # no temp file left


def _records(n):
    return [{"id": f"r{i:03d}", "v": i * i} for i in range(n)]


def test_resume_after_kill_equals_uninterrupted(tmp_path):
    full = tmp_path / "a" / "x.jsonl"
    w = RecordWriter(full, "id", "h1")
    for r in reversed(_records(10)):
        w.add(r)
    w.finish()

    part = tmp_path / "b" / "x.jsonl"
    w = RecordWriter(part, "id", "h1")
    for r in _records(10)[:6]:
        w.add(r)
    w.close()
    # simulate a kill in the middle of writing a line
    with open(str(part) + ".partial", "a") as f:
        f.write('{"id": "r006", "v"')
    assert not part.exists()
    w = RecordWriter(part, "id", "h1")
    assert len(w.records) == 6 and w.done("r005") and not w.done("r006")
    added = 0
    for r in _records(10):
        if not w.done(r["id"]):
            w.add(r)
            added += 1
    w.finish()
    assert added == 4
    assert part.read_bytes() == full.read_bytes()
    assert [r["id"] for r in read_jsonl(part)] == [f"r{i:03d}" for i in range(10)]


def test_changed_inputs_start_over(tmp_path):
    p = tmp_path / "x.jsonl"
    w = RecordWriter(p, "id", "h1")
    w.add({"id": "a"})
    w.finish()
    w2 = RecordWriter(p, "id", "h2")
    assert w2.records == {} and not p.exists()


def test_complete_file_is_reused(tmp_path):
    p = tmp_path / "x.jsonl"
    w = RecordWriter(p, "id", "h")
    w.add({"id": "a"})
    w.finish()
    mtime = os.stat(p).st_mtime_ns
    w = RecordWriter(p, "id", "h")
    assert w.complete and w.done("a")
    w.finish()
    assert os.stat(p).st_mtime_ns == mtime


def test_read_jsonl_errors_name_file_and_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(DataError, match=r"d.jsonl:2: malformed JSON"):
        read_jsonl(p)
    write_jsonl(p, [{"a": 1}, {"b": 2}])
    with pytest.raises(DataError, match=r"d.jsonl:2: missing field\(s\) a"):
        read_jsonl(p, required=["a"])


def test_unwritable_run_dir_is_one_line_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if os.access(ro, os.W_OK):  # running as root: permissions are not enforced
        blocker = tmp_path / "file"
        blocker.write_text("")
        target = blocker / "run"
    else:
        target = ro / "run"
    with pytest.raises(SynthprefError, match="not writable.*--run-dir"):
        RunDir(target).create()


def test_manifest_tracks_stage_status(tmp_path):
    rd = RunDir(tmp_path / "run").create()
    rd.init_manifest({"x": 1}, seed=3)
    with rd.stage_run("pairs", "hash1"):
        pass
    assert rd.stage_done("pairs", "hash1") and not rd.stage_done("pairs", "hash2")
    with pytest.raises(ValueError):
        with rd.stage_run("train", "h"):
            raise ValueError("boom")
    m = json.loads(rd.manifest_path.read_text())
    assert m["stages"]["train"]["status"] == "failed" and m["seed"] == 3 and "torch" in m["packages"]


def test_manifest_records_the_cpu_each_stage_ran_on(tmp_path, monkeypatch):
    """Greedy int8 text depends on the CPU's SIMD extensions, so the manifest names them, per run and
    per stage, and the report lists a stage that ran on another CPU than the run."""
    import platform

    from synthpref import rundir as rundir_mod

    rd = RunDir(tmp_path / "run").create()
    rd.init_manifest({"x": 1}, seed=0)
    with rd.stage_run("pairs", "h"):
        pass
    m = json.loads(rd.manifest_path.read_text())
    here = rundir_mod.machine()
    assert m["machine"] == here == m["stages"]["pairs"]["machine"]
    assert here["arch"] == platform.machine()
    if os.path.exists("/proc/cpuinfo") and platform.machine() == "x86_64":
        flags = open("/proc/cpuinfo").read().split("\n\n")[0]
        assert ("avx2" in here["simd"]) == (" avx2" in flags)

    other = {**here, "simd": ["avx", "avx2", "avx512f"]}
    monkeypatch.setattr(rundir_mod, "machine", lambda: other)
    with rd.stage_run("train", "h2"):
        pass
    from pathlib import Path

    from synthpref.config import load_config
    from synthpref.stages.report import Context, _section_provenance

    ctx = Context.__new__(Context)
    ctx.rd, ctx.cfg = rd, load_config(Path(__file__).parents[2] / "configs" / "demo.yaml")
    text = _section_provenance(ctx).body
    assert '"stage_machines"' in text and '"avx512f"' in text
    assert text.count('"avx512f"') == 1  # only the train stage, which ran elsewhere
