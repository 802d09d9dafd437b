"""What SFT and DPO share: TRL arguments, the metrics log, checkpoints and resume, the atomic
save with a model card, and the launchers.

`fit(...)` is the one training loop both stages run: open train/<name>/ (or return its done.json
when its inputs are unchanged), build the trainer, train — resuming from the last checkpoint —,
save model/ atomically with its card, write done.json last. Every rank of a multi-process run
calls it; the main process alone writes files.

`train.launcher: accelerate` runs a stage's training as
`accelerate launch ... -m synthpref.stages.train_worker RUN_DIR NAME` (`launch`), whose workers
call the same stage functions, so single-process and multi-process runs share one code path; on
CPU the processes meet over gloo (configs/accelerate/cpu_ddp.yaml, cpu_zero3.yaml).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import yaml

from .config import ModelSpec, StudyConfig, dump_config
from .errors import ConfigError, SynthprefError, did_you_mean
from .lineage import is_done, train_fields
from .rundir import RunDir, read_json, read_jsonl, write_json, write_text

_PROJECT_ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- disk room
def disk_need(cfg: StudyConfig) -> tuple[float, str] | None:
    """(bytes, how) that full fine-tuning writes under train/: every SFT phase's model and every
    setting's, in the dtype it trains in (bf16 on a GPU with train.bf16, else float32), plus while
    one trains its checkpoint (weights, float32 master copy, Adam's two moments: 12 more bytes per
    parameter). None with LoRA (adapters are small) or when the model's size is unknown."""
    from .lineage import base_model_spec, sft_phase_names
    from .model_facts import model_size

    t = cfg.train
    if t.use_lora:
        return None
    base = base_model_spec(cfg)
    size = model_size(base.path, base.revision)
    if size is None:
        return None
    from .models import pick_device

    gpu = pick_device(cfg.device) != "cpu"
    width = 2 if gpu and (t.bf16 is None or t.bf16) else 4  # train.bf16 None: on for CUDA
    n = len(cfg.pairs.settings) + (len(sft_phase_names(cfg)) if t.sft.enabled else 0)
    need = size.params * (n * width + width + 12)
    return need, (f"{n} models of {size.params / 1e9:.2f}B parameters at {width} bytes, plus one checkpoint "
                  f"with optimizer state")


def disk_problem(cfg: StudyConfig) -> str | None:
    """A problem when the run directory's disk cannot hold what training writes (disk_need, less what
    train/ already holds): found before any stage runs, not hours later as a failed save."""
    got = disk_need(cfg)
    if got is None:
        return None
    need, how = got
    where = cfg.run_path.resolve()
    have = where / "train"
    held = sum(f.stat().st_size for f in have.rglob("*") if f.is_file()) if have.is_dir() else 0
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free
    if need - held <= free:
        return None
    return (f"full fine-tuning writes about {need / 1e9:.0f} GB under train/ ({how}); the disk of "
            f"{cfg.run_path} has {free / 1e9:.0f} GB free; free space, set run_dir on a larger disk, or "
            "train with LoRA (train.use_lora: true)")


def require_disk(cfg: StudyConfig) -> None:
    """Refuse to start training that the disk cannot hold (disk_problem), before anything is written."""
    room = disk_problem(cfg)
    if room:
        raise ConfigError(f"train: {room}")


# --------------------------------------------------------------------------- TRL arguments
def check_extra(extra: dict, config_cls) -> None:
    fields = {f.name for f in dataclasses.fields(config_cls) if f.init}
    for k in extra:
        if k not in fields:
            raise ConfigError(f"train.extra.{k}: not a trl.{config_cls.__name__} field{did_you_mean(k, fields)}")
        if k == "output_dir":
            raise ConfigError("train.extra.output_dir: set by synthpref (train/<setting>/checkpoints); remove it")
        if k.endswith("token"):
            # Config values are written to model cards and run files; secrets stay in the environment.
            raise ConfigError(f"train.extra.{k}: secrets do not belong in the config; set HF_TOKEN in the environment")


def _deepspeed_launch() -> bool:
    """Whether `accelerate launch` started this process with a DeepSpeed config."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"


def common_args(cfg: StudyConfig, device: str, output_dir: Path, seed: int | None = None) -> dict:
    """TrainingArguments shared by SFT and DPO; `seed` (default: the study seed) seeds init and data order."""
    t = cfg.train
    seed = cfg.seed if seed is None else seed
    return dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=t.per_device_train_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        # transformers 5 folds warmup_ratio into warmup_steps: a float < 1 is a fraction of the steps.
        warmup_steps=min(t.warmup_ratio, 0.999999),
        lr_scheduler_type=t.lr_scheduler_type,
        gradient_checkpointing=t.gradient_checkpointing,
        # bf16 on CPU is ~10x slower on AVX2 machines; TRL would otherwise default it on.
        bf16=t.bf16 if t.bf16 is not None else device == "cuda",
        fp16=False,
        # DeepSpeed on CPU joins its processes itself (over gloo); use_cpu would make accelerate skip it.
        use_cpu=device == "cpu" and not _deepspeed_launch(),
        ddp_backend="gloo" if device == "cpu" and _deepspeed_launch() else None,
        logging_steps=t.logging_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        report_to=list(t.report_to) or "none",
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )


# --------------------------------------------------------------------------- training dynamics
def _trainer_callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class MetricsLog(_trainer_callback_base()):
    """Appends each training log (one per `logging_steps`) to metrics.jsonl, one flushed line each.

    On resume from a checkpoint at step k, lines logged after k by the killed run are dropped
    first: the resumed run re-does those steps and logs them again, so every step appears once and
    the file describes the trajectory the final model actually followed.
    """

    def __init__(self, path: Path, resume_step: int | None, main_process: bool = True):
        self.path = Path(path)
        self.main = main_process
        self.steps: set[int] = set()
        if not self.main:
            return
        kept = []
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # torn last line of a killed run
                if resume_step is not None and rec["step"] <= resume_step and rec["step"] not in self.steps:
                    kept.append(rec)
                    self.steps.add(rec["step"])
        from .rundir import write_jsonl

        write_jsonl(self.path, kept)

    def on_log(self, args, state, control, logs=None, **kwargs):
        # Training-step logs carry "loss"; eval logs use eval_* keys and the end-of-train
        # summary uses train_loss/train_runtime, which go to done.json instead.
        if not self.main or not logs or "loss" not in logs or state.global_step in self.steps:
            return
        rec = {k: v for k, v in logs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        rec["step"] = state.global_step
        rec["epoch"] = state.epoch
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.steps.add(state.global_step)


def read_metrics(rd: RunDir, name: str) -> list[dict]:
    path = rd.path("train", name, "metrics.jsonl")
    return read_jsonl(path) if path.exists() else []


def last_metrics(rd: RunDir, name: str) -> dict:
    m = read_metrics(rd, name)
    return m[-1] if m else {}


# --------------------------------------------------------------------------- the shared loop
def _prepare_dir(out: Path, inputs_hash: str) -> None:
    """Start over when the inputs changed, so checkpoints of other inputs are never resumed."""
    inputs = out / "inputs.json"
    old = None
    if inputs.exists():
        with contextlib.suppress(SynthprefError):
            old = read_json(inputs).get("inputs_hash")
    if old != inputs_hash:
        for p in ("checkpoints", "model", ".model.tmp"):
            shutil.rmtree(out / p, ignore_errors=True)
        for p in ("metrics.jsonl", "done.json"):
            (out / p).unlink(missing_ok=True)
        write_json(inputs, {"inputs_hash": inputs_hash})


def last_checkpoint(ckpt_dir: Path) -> tuple[str | None, int | None]:
    """The newest complete checkpoint: the Trainer writes trainer_state.json into it last, so a
    folder without one was cut short by a kill and is passed over (and overwritten on the way)."""
    if not ckpt_dir.is_dir():
        return None, None
    steps = sorted((int(p.name.split("-")[-1]), p) for p in ckpt_dir.glob("checkpoint-*")
                   if p.is_dir() and p.name.split("-")[-1].isdigit())
    for step, p in reversed(steps):
        if (p / "trainer_state.json").is_file():
            return str(p), step
    return None, None


def model_card(name: str, kind: str, cfg: StudyConfig, start: ModelSpec, data: dict, final: dict,
                inputs_hash: str) -> str:
    train_yaml = yaml.safe_dump(train_fields(cfg), sort_keys=True).rstrip()
    metrics = "\n".join(f"| {k} | {v:.6g} |" for k, v in sorted(final.items()) if isinstance(v, (int, float)))
    base = start.path
    lines = [
        "---",
        "library_name: " + ("peft" if kind == "dpo" and cfg.train.use_lora else "transformers"),
        "tags: [synthpref, trl, " + ("dpo" if kind == "dpo" else "sft") + "]",
        "---",
        "",
        f"# synthpref {kind.upper()} model: {name}",
        "",
        f"Trained by synthpref with TRL's {'DPOTrainer' if kind == 'dpo' else 'SFTTrainer'}, reproducing "
        "\"More is Less: The Pitfalls of Multi-Model Synthetic Preference Data in DPO Safety Alignment\" "
        "(arXiv 2504.02193).",
        "",
        f"- starting model: `{base}`",
        *[f"- {k}: `{v}`" for k, v in data.items()],
        f"- weights: {'LoRA adapter (load on the starting model with peft)' if kind == 'dpo' and cfg.train.use_lora else 'full model, safetensors'}",
        f"- seed: {cfg.replicate if kind == 'dpo' else cfg.seed}",
        f"- inputs hash: `{inputs_hash}`",
        "",
        "## Training config (`train` section)",
        "",
        "```yaml",
        train_yaml,
        "```",
        "",
        "## Final logged metrics",
        "",
        "| metric | value |",
        "| --- | --- |",
        metrics or "| (none logged) | |",
        "",
    ]
    return "\n".join(lines)


def fit_and_save(trainer, out: Path, resume: str | None, card) -> dict:
    """Train (resuming if a checkpoint exists), then save the model atomically with its card."""
    result = trainer.train(resume_from_checkpoint=resume)
    acc = trainer.accelerator
    tmp = out / ".model.tmp"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    acc.wait_for_everyone()
    # Every rank must take part in save_model: under ZeRO-3 it gathers the sharded weights. It
    # writes the weights (the adapter alone for LoRA) and the tokenizer, with its chat template.
    trainer.save_model(str(tmp))
    if acc.is_main_process:
        # A pickled TrainingArguments: not weights, but the folder promises safetensors + JSON only.
        (tmp / "training_args.bin").unlink(missing_ok=True)
        write_text(tmp / "README.md", card())
        final = out / "model"
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    acc.wait_for_everyone()
    # train_seconds: the Trainer's own runtime of this (possibly resumed) fit, model loading excluded;
    # the report's cost table reads it from done.json.
    runtime = (result.metrics or {}).get("train_runtime")
    return {"train_loss": float(result.training_loss), "global_step": int(result.global_step),
            "train_seconds": round(float(runtime), 2) if runtime is not None else None}


def finish(cfg: StudyConfig, out: Path, done: dict) -> None:
    if not cfg.train.keep_checkpoints:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    write_json(out / "done.json", done)  # last: marks the setting finished


def load_for_training(spec: ModelSpec):
    """The model to train, on CPU for the Trainer to place.

    `models.load_causal_lm` (safetensors-only, trust_remote_code per model) moves the model with
    `.to()`, which must not touch weights that DeepSpeed ZeRO-3 sharded while loading; under ZeRO-3
    the same rules are applied here without the move.
    """
    from transformers.integrations import is_deepspeed_zero3_enabled

    from .models import load_causal_lm, resolve_path, torch_dtype

    if not is_deepspeed_zero3_enabled():
        return load_causal_lm(spec, "cpu")
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        resolve_path(spec.path), dtype=torch_dtype(spec.dtype, "cpu"), trust_remote_code=spec.trust_remote_code,
        use_safetensors=None if spec.allow_pickle else True, revision=spec.revision)


def device_for(cfg: StudyConfig) -> str:
    from .models import pick_device

    return pick_device(cfg.device)


def start_process(cfg: StudyConfig) -> None:
    """First thing in a launched worker: join the other processes, and watch the launcher.

    accelerate's process state must be made with cpu=True on CPU before anything asks which
    process is the main one: made without it on a machine with no GPU, every rank sees a
    one-process run and calls itself rank 0 (each would write metrics.jsonl, checkpoints, done.json).
    """
    from accelerate import PartialState

    cpu = device_for(cfg) == "cpu"
    if cpu and _deepspeed_launch():
        # accelerate finds no distributed backend for DeepSpeed on a machine without GPUs (every rank
        # would see one process); gloo is the one DeepSpeed's CPU accelerator uses without oneCCL.
        PartialState(backend="gloo")
    else:
        PartialState(cpu=cpu)
    _exit_with_launcher()


def _exit_with_launcher() -> None:
    """A daemon thread ends this process when its parent (torchrun's agent) is gone: a killed
    launcher must not leave workers training and writing into train/<name>/ behind it."""
    import threading

    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="synthpref-parent-watch", daemon=True).start()


def end_process() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_main() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


def _processes() -> dict:
    """How the run was spread, for done.json: {"processes": 2, "distributed": "MULTI_CPU"}."""
    from accelerate import PartialState

    state = PartialState()
    return {"processes": state.num_processes, "distributed": str(state.distributed_type.value)}


def barrier() -> None:
    from accelerate import PartialState

    PartialState().wait_for_everyone()


def set_process_threads() -> None:
    """All cores for one process; a core share each when several processes run on this machine
    (more threads than cores makes gloo's all-reduce wait on descheduled ranks)."""
    import torch

    from .models import set_threads

    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if local <= 1:
        set_threads()
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))


def open_run(rd: RunDir, name: str, inputs_hash: str) -> tuple[Path, dict | None]:
    """(train/<name>/, None) ready to train into, or (folder, done summary) when already trained
    with these inputs. The main process clears stale state; every process waits for it."""
    out = rd.path("train", name)
    if is_done(rd, name, inputs_hash):
        return out, {**read_json(out / "done.json"), "skipped": True}
    out.mkdir(parents=True, exist_ok=True)
    if is_main():
        _prepare_dir(out, inputs_hash)
    barrier()
    set_process_threads()
    return out, None


@dataclasses.dataclass
class Built:
    """What a stage's `build` hands the loop: the trainer, and what done.json and the card say."""

    trainer: object
    start: ModelSpec      # the weights training started from (the card's "starting model")
    card_data: dict       # data lines of the model card
    record: dict          # fields of done.json particular to the stage


def fit(cfg: StudyConfig, rd: RunDir, name: str, kind: str, inputs_hash: str,
        build: Callable[[str, Path, list], Built], callbacks: list | None = None) -> dict:
    """The training loop SFT and DPO share, for train/<name>/ with these inputs.

    `build(device, checkpoint_dir, callbacks)` makes the TRL trainer (its arguments before the
    weights load: under ZeRO-3 that makes from_pretrained shard them). A run whose done.json
    matches `inputs_hash` is not repeated; a killed one resumes from its last checkpoint.
    """
    from .models import free

    t0 = time.time()
    out, done = open_run(rd, name, inputs_hash)
    if done:
        return done
    ckpt = out / "checkpoints"
    resume, resume_step = last_checkpoint(ckpt)
    log = MetricsLog(out / "metrics.jsonl", resume_step, is_main())
    b = build(device_for(cfg), ckpt, [log, *(callbacks or [])])

    def card():
        return model_card(name, kind, cfg, b.start, b.card_data, last_metrics(rd, name), inputs_hash)

    res = fit_and_save(b.trainer, out, resume, card)
    done = {**b.record, "inputs_hash": inputs_hash, "start_model": b.start.path, **res,
            **_processes(), "resumed_from_step": resume_step, "final": last_metrics(rd, name)}
    b.trainer = None
    del b
    free()
    if is_main():
        finish(cfg, out, done)
    barrier()
    return {**done, "seconds": round(time.time() - t0, 2), "skipped": False}


# --------------------------------------------------------------------------- launching
def resolve_accelerate_config(ref: str) -> Path:
    """A path as given, else relative to the synthpref checkout; 'zero3' means configs/accelerate/zero3.yaml."""
    cands = [Path(ref).expanduser(), _PROJECT_ROOT / ref, _PROJECT_ROOT / "configs" / "accelerate" / f"{ref}.yaml"]
    for c in cands:
        if c.is_file():
            return c.resolve()
    shipped = sorted(p.stem for p in (_PROJECT_ROOT / "configs" / "accelerate").glob("*.yaml"))
    raise ConfigError(f"train.accelerate_config: '{ref}' not found{did_you_mean(Path(ref).stem, shipped)}")


@dataclasses.dataclass
class LaunchPlan:
    """What an accelerate config and `train` ask for: the file, how many processes, on what."""

    path: Path
    processes: int
    cpu: bool          # processes on CPU cores (gloo) rather than one per GPU
    deepspeed: bool
    machines: int


def launch_plan(cfg: StudyConfig) -> LaunchPlan:
    path = resolve_accelerate_config(cfg.train.accelerate_config)
    try:
        acc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(acc, dict):
        raise ConfigError(f"{path}: an accelerate config is a mapping (write one with `accelerate config`)")
    dist = str(acc.get("distributed_type", "NO"))
    return LaunchPlan(path=path, processes=int(cfg.train.num_processes or acc.get("num_processes") or 1),
                      cpu=bool(acc.get("use_cpu")) or dist == "MULTI_CPU", deepspeed=dist == "DEEPSPEED",
                      machines=int(acc.get("num_machines") or 1))


def launch_problems(cfg: StudyConfig) -> tuple[list[tuple[str, str]], list[str]]:
    """([(field, problem)], [notes]) of `train.launcher: accelerate` on this machine, before compute.

    A GPU config checked where no GPU is visible (a login node, a laptop) gets notes, not problems:
    it runs elsewhere. `launch` turns every note about this machine into an error.
    """
    import importlib.util

    try:
        plan = launch_plan(cfg)
    except ConfigError as e:
        return [("train.accelerate_config", str(e).removeprefix("train.accelerate_config: "))], []
    problems, notes = [], []
    gpus = 0
    if not plan.cpu:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    runs_here = plan.cpu or gpus > 0
    if plan.deepspeed and importlib.util.find_spec("deepspeed") is None:
        msg = (f"{plan.path.name} uses DeepSpeed, which is not installed; install the extra: "
               "pip install 'synthpref[deepspeed]'")
        problems.append(("train.accelerate_config", msg)) if runs_here else notes.append(f"train.accelerate_config: {msg}")
    cores = os.cpu_count() or 1
    if plan.cpu and plan.machines == 1 and plan.processes > cores:
        problems.append(("train.num_processes", f"{plan.processes} CPU processes > this machine's {cores} cores; "
                         f"use at most {cores}"))
    if not plan.cpu and plan.machines == 1 and gpus == 0:
        notes.append(f"train.accelerate_config: {plan.path.name} runs one process per GPU and no CUDA GPU is "
                     "visible here; on CPU use configs/accelerate/cpu_ddp.yaml")
    elif not plan.cpu and plan.machines == 1 and plan.processes > gpus:
        problems.append(("train.num_processes", f"{plan.processes} processes > the {gpus} visible GPUs; "
                         f"use at most {gpus}"))
    return problems, notes


def free_port() -> int:
    """A TCP port nothing listens on now, for the processes' rendezvous on this machine."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_command(cfg: StudyConfig, rd: RunDir, name: str, config_path: Path, port: int | None = None) -> list[str]:
    plan = launch_plan(cfg)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(plan.path)]
    if cfg.train.num_processes:
        cmd += ["--num_processes", str(cfg.train.num_processes)]
    if plan.cpu and not plan.deepspeed and plan.processes > 1:
        # accelerate launches a MULTI_CPU config as ONE process unless mpirun is set up; its torchrun
        # launcher (--multi_gpu) starts them all, and use_cpu makes each one join over gloo.
        cmd += ["--multi_gpu"]
    if port is not None and plan.machines == 1:
        cmd += ["--main_process_ip", "127.0.0.1", "--main_process_port", str(port)]
    return cmd + ["-m", "synthpref.stages.train_worker", str(rd.root), name, "--config", str(config_path)]


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the process that started it dies (Linux), so
    killing synthpref stops `accelerate launch`, whose torchrun agent then stops the workers."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def launch(cfg: StudyConfig, rd: RunDir, name: str, inputs_hash: str) -> dict:
    t0 = time.time()
    problems, notes = launch_problems(cfg)
    if problems or notes:
        # Here a note is about this machine, which is the one about to train: stop before any process starts.
        raise ConfigError(f"{problems[0][0]}: {problems[0][1]}" if problems else notes[0])
    cfg_path = rd.path("train", "worker_config.yaml")
    write_text(cfg_path, dump_config(cfg))
    cmd = accelerate_command(cfg, rd, name, cfg_path, free_port())
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if launch_plan(cfg).cpu:
        env.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed would otherwise look for a GPU
    linux = sys.platform.startswith("linux")
    rc = subprocess.run(cmd, env=env, preexec_fn=_die_with_parent if linux else None).returncode
    if rc != 0:
        raise SynthprefError(f"train.launcher: `accelerate launch` for '{name}' exited with code {rc}; "
                             f"its output is above; re-run to resume from train/{name}/checkpoints/")
    if not is_done(rd, name, inputs_hash):
        raise SynthprefError(f"train.launcher: `accelerate launch` for '{name}' finished without writing "
                             f"train/{name}/done.json for these inputs (its output is above); re-run to resume "
                             f"from train/{name}/checkpoints/")
    return {**read_json(rd.path("train", name, "done.json")), "seconds": round(time.time() - t0, 2),
            "skipped": False}


def summary_row(res: dict) -> dict:
    final = res.get("final") or {}
    return {"global_step": res.get("global_step"), "train_loss": res.get("train_loss"),
            "final_margin": final.get("rewards/margins"), "final_accuracy": final.get("rewards/accuracies"),
            "seconds": res.get("seconds"), "skipped": res.get("skipped", False),
            "resumed_from_step": res.get("resumed_from_step")}
