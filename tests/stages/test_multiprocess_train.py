"""`train.launcher: accelerate` with two processes on CPU (configs/accelerate/cpu_ddp.yaml: DDP over
gloo), on the tiny random Llama of test_train_stage.

Two processes with 4 examples each make the same global batch as one process with 8: DDP averages
their gradients, so SFT and DPO must end at the one-process weights up to float rounding. Only rank 0
writes metrics, checkpoints and done.json; a launcher killed mid-training leaves no worker behind,
and the resumed run ends at the same weights.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from synthpref import lineage, training
from synthpref.config import dump_config
from synthpref.errors import ConfigError
from synthpref.rundir import read_json, read_jsonl, write_jsonl
from synthpref.stages import Checks, train

from test_train_stage import make_study, tiny_model  # noqa: F401  (tiny_model is a fixture)

# Measured: the largest |w_2proc - w_1proc| over all tensors was below 1e-6 for these runs (float32,
# lr 1e-3); 1e-5 leaves room for other CPUs' reduction order while a step's update (~1e-3) stays far above.
WEIGHT_TOL = 1e-5
GLOBAL_BATCH = 8


def study(tmp: Path, model: Path, processes: int, **over):
    """One process (local) or `processes` under accelerate, with the same global batch."""
    launch = ({"launcher": "accelerate", "accelerate_config": "cpu_ddp", "num_processes": processes}
              if processes > 1 else {})
    return make_study(tmp, model, **{"per_device_train_batch_size": GLOBAL_BATCH // processes, "save_steps": 2,
                                     "keep_checkpoints": True, **launch, **over})


def sft_section(tmp: Path) -> dict:
    data = tmp / "sft.jsonl"
    write_jsonl(data, [{"messages": [{"role": "user", "content": f"Say hi {i}"},
                                     {"role": "assistant", "content": "Hi there, friend."}]} for i in range(16)])
    return {"enabled": True, "dataset": str(data), "learning_rate": 1e-3, "max_steps": 2, "max_length": 64}


def max_diff(a: Path, b: Path) -> float:
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


def assert_written_once(rd, name: str, steps: int) -> None:
    rows = read_jsonl(rd.path("train", name, "metrics.jsonl"))
    assert [r["step"] for r in rows] == list(range(1, steps + 1)), "each step logged once, by rank 0"
    ckpts = {p.name for p in rd.path("train", name, "checkpoints").glob("checkpoint-*")}
    # save_steps 2, the newest save_total_limit kept; each folder once, with rank 0's trainer state
    assert f"checkpoint-{steps}" in ckpts and ckpts <= {f"checkpoint-{s}" for s in range(2, steps + 1, 2)}
    assert all(rd.path("train", name, "checkpoints", c, "trainer_state.json").is_file() for c in ckpts)
    assert not rd.path("train", name, ".model.tmp").exists()


def test_two_processes_train_the_weights_of_one(tmp_path, tiny_model):  # noqa: F811
    sft = sft_section(tmp_path)
    one_cfg, one = study(tmp_path / "one", tiny_model, 1, sft=sft)
    two_cfg, two = study(tmp_path / "two", tiny_model, 2, sft=sft)
    train.run(one_cfg, one)
    summary = train.run(two_cfg, two)
    assert summary["settings"]["s1"]["global_step"] == 4 and summary["sft"]["global_step"] == 2

    for name, steps in (("sft", 2), ("s1", 4)):
        assert {k: read_json(two.path("train", name, "done.json"))[k] for k in ("processes", "distributed")} == \
            {"processes": 2, "distributed": "MULTI_CPU"}
        assert read_json(one.path("train", name, "done.json"))["processes"] == 1
        assert_written_once(two, name, steps)
        w1 = lineage.trained_model_dir(one, name) / "model.safetensors"
        w2 = lineage.trained_model_dir(two, name) / "model.safetensors"
        assert max_diff(w1, tiny_model / "model.safetensors") > 100 * WEIGHT_TOL, "training moved the weights"
        print(f"{name}: max |w_2proc - w_1proc| = {max_diff(w1, w2):.3g}")
        assert max_diff(w1, w2) <= WEIGHT_TOL
        for a, b in zip(read_jsonl(one.path("train", name, "metrics.jsonl")),
                        read_jsonl(two.path("train", name, "metrics.jsonl"))):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6)


def _launch(cfg, rd, name: str) -> subprocess.Popen:
    """`accelerate launch` of one setting as `training.launch` starts it, left running in a session of
    its own, so the whole launch (launcher, torchrun agent, workers) can be killed at once."""
    cfg_path = rd.path("train", "worker_config.yaml")
    cfg_path.parent.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(dump_config(cfg))
    src = str(Path(training.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = training.accelerate_command(cfg, rd, name, cfg_path, training.free_port())
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _workers(pid: int) -> list[int]:
    import psutil

    return [p.pid for p in psutil.Process(pid).children(recursive=True)]


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.time() + seconds
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert path.exists(), f"no {path.parent.name} (exit code {proc.poll()})"


def test_killed_launch_resumes_to_the_same_weights(tmp_path, tiny_model):  # noqa: F811
    """A job killed outright (SIGKILL to every process of the launch at once, as a scheduler or an
    OOM kill does) after its first checkpoint resumes from it and ends at the one-process weights."""
    steps = 24  # the first checkpoint is at step 2; 22 more steps leave the kill far from the end
    cfg, rd = study(tmp_path / "two", tiny_model, 2, max_steps=steps)
    proc = _launch(cfg, rd, "s1")
    try:
        _wait_for(rd.path("train", "s1", "checkpoints", "checkpoint-2", "trainer_state.json"), proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not rd.path("train", "s1", "done.json").exists(), "killed too late: training had finished"
    logged = [r["step"] for r in read_jsonl(rd.path("train", "s1", "metrics.jsonl"))]
    assert logged and logged[-1] < steps

    summary = train.run(cfg, rd)
    row = summary["settings"]["s1"]
    assert row["global_step"] == steps and row["resumed_from_step"] >= 2
    assert_written_once(rd, "s1", steps)

    one_cfg, one = study(tmp_path / "one", tiny_model, 1, max_steps=steps)
    train.run(one_cfg, one)
    diff = max_diff(lineage.trained_model_dir(one, "s1") / "model.safetensors",
                    lineage.trained_model_dir(rd, "s1") / "model.safetensors")
    print(f"resumed: max |w_2proc - w_1proc| = {diff:.3g}")
    assert diff <= WEIGHT_TOL


def test_workers_stop_when_synthpref_is_killed(tmp_path, tiny_model):  # noqa: F811
    """synthpref killed mid-training (SIGKILL, nothing can clean up): `training.launch` started the
    launcher so that it is told, and the launcher stops its workers. The training is far too long to
    end by itself while the test waits, so the workers are gone only because they were stopped."""
    import sys

    import psutil

    cfg, rd = study(tmp_path / "two", tiny_model, 2, max_steps=100_000)
    cfg_path = rd.path("train", "study.yaml")
    cfg_path.parent.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(dump_config(cfg))
    src = str(Path(training.__file__).resolve().parents[1])
    script = ("import sys; from synthpref import training; from synthpref.config import load_config; "
              "from synthpref.rundir import RunDir; "
              "training.launch(load_config(sys.argv[1]), RunDir(sys.argv[2]), 's1', 'h')")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", script, str(cfg_path), str(rd.root)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for(rd.path("train", "s1", "checkpoints", "checkpoint-2", "trainer_state.json"), proc)
        launched = [psutil.Process(p) for p in _workers(proc.pid) if psutil.pid_exists(p)]
        assert len(launched) >= 3, "the launcher and two workers run"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _, alive = psutil.wait_procs(launched, timeout=60)
        assert not alive, f"{len(alive)} processes outlived synthpref"
        assert not rd.path("train", "s1", "done.json").exists()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def test_launch_problems_are_found_before_compute(tmp_path, tiny_model, monkeypatch):  # noqa: F811
    import importlib.util

    cfg, rd = study(tmp_path, tiny_model, 2, num_processes=(os.cpu_count() or 1) + 1)
    checks = Checks()
    train.check(cfg, checks)
    assert any("train.num_processes" in p and "cores" in p for p in checks.problems), checks.problems

    cmd = training.accelerate_command(study(tmp_path / "b", tiny_model, 2)[0], rd, "s1", tmp_path / "c.yaml", 12345)
    assert "--multi_gpu" in cmd and cmd[cmd.index("--main_process_port") + 1] == "12345"

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "deepspeed" else real(n, *a))
    for acc, problem in (("cpu_zero3", True), ("zero3", False)):
        z_cfg, z_rd = make_study(tmp_path / acc, tiny_model, launcher="accelerate", accelerate_config=acc,
                                 num_processes=1)
        checks = Checks()
        train.check(z_cfg, checks)
        # A GPU config where no GPU is visible runs elsewhere: a note from validate, an error from launch.
        found = checks.problems if problem or torch.cuda.is_available() else checks.notes
        assert sum("synthpref[deepspeed]" in p for p in found) == 1, (checks.problems, checks.notes)
        with pytest.raises(ConfigError, match=rf"^train\.accelerate_config: {acc}\.yaml uses DeepSpeed.*"
                                              r"pip install 'synthpref\[deepspeed\]'$"):
            training.launch(z_cfg, z_rd, "s1", "h")


def test_shipped_cpu_configs_are_valid():
    from accelerate.commands.config.config_args import ClusterConfig

    for name, dist in (("cpu_ddp", "MULTI_CPU"), ("cpu_zero3", "DEEPSPEED")):
        c = ClusterConfig.from_yaml_file(str(training.resolve_accelerate_config(name)))  # rejects unknown keys
        assert c.distributed_type.value == dist and c.use_cpu and c.mixed_precision == "no" and c.num_processes == 2


def test_zero3_on_two_cpu_processes_trains_the_weights_of_one(tmp_path, tiny_model):  # noqa: F811
    """Runs where DeepSpeed is installed (`pip install -e '.[deepspeed]'`); skipped otherwise."""
    pytest.importorskip("deepspeed")
    one_cfg, one = study(tmp_path / "one", tiny_model, 1, max_steps=4)
    z_cfg, z = study(tmp_path / "z3", tiny_model, 2, max_steps=4, accelerate_config="cpu_zero3")
    train.run(one_cfg, one)
    train.run(z_cfg, z)
    done = read_json(z.path("train", "s1", "done.json"))
    assert (done["processes"], done["distributed"]) == (2, "DEEPSPEED")
    assert_written_once(z, "s1", 4)
    # zero3_save_16bit_model gathers the shards: model/ holds the full float32 weights
    diff = max_diff(lineage.trained_model_dir(one, "s1") / "model.safetensors",
                    lineage.trained_model_dir(z, "s1") / "model.safetensors")
    print(f"zero3: max |w_2proc - w_1proc| = {diff:.3g}")
    assert diff <= WEIGHT_TOL
