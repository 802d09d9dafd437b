"""CTranslate2 backend: the model converted once to a CTranslate2 folder, run int8 (CPU default)
or float32, batched, in C++.

Conversion: the model's safetensors folder (the same cached copy the hf backend loads) is
converted with `ctranslate2.converters.TransformersConverter` into
`<cache>/ct2/<name>-<quantization>-<key>/`, where key = hash(content of the model folder,
quantization, ctranslate2 version, CONVERT_VERSION). The conversion writes into a temporary
folder that is renamed into place, so a killed conversion leaves nothing half-written. File
hashes are memoised by (path, size, mtime) so a 2 GB checkpoint is not re-read on every load.
A trained model (the evaluate stage) is converted under a key its caller gives (the trained
model's identity) instead, see `convert_folder` and `CT2Backend.for_evaluation`.

Prompts: formatted exactly as the hf backend does (synthpref.chat.prompt_token_ids, the HF
tokenizer of the model), then handed to CTranslate2 as token strings; the stop tokens are the
same ids (eos of the generation config and tokenizer, plus turn-end markers in chat mode).

Batching and seeds:
- greedy requests are sorted by prompt length (longest first) and cut into batches of
  `batch_size`; greedy decoding draws no random numbers, so a text depends only on its prompt
  (padding can move logits in the last float bits, as in the hf backend).
- sampled requests are grouped by prompt (all pending samples of one prompt), the groups sorted by
  (size, prompt length, first record key) and cut into buckets of `sample_bucket` prompts of
  equal group size; each bucket is drawn in ONE call with `num_hypotheses` = the group size.
  CTranslate2 has no per-row seed: its sampler is one `std::mt19937` per worker thread, seeded
  from `ctranslate2.set_random_seed` when that thread first samples, and never re-seeded
  afterwards. So every bucket gets a fresh `Generator` (fresh worker thread) created right after
  `set_random_seed(bucket seed)`, where bucket seed = hash of the bucket's sorted record seeds, and
  each prompt's hypotheses go to its records in order of (seed, key). A sampled record's text
  therefore depends on: its prompt, the sampling settings, the quantization, `sample_bucket` (part
  of the model's key) and the other prompts of its bucket -- not on the call order or
  `batch_size`. Re-running gives the same texts, and so does a run resumed after an interruption
  between buckets (each bucket's records are written together; the pending groups of a resumed
  run are the uninterrupted run's later buckets, cut the same way). A run killed while one bucket's
  records were being written draws the rest of that bucket as a smaller one: deterministic given
  what the file holds, but not the uninterrupted run's texts for those records.
  Earlier versions drew one prompt per call (`sample_bucket: 1` still does that, so a text then
  depends on its own prompt only); a bucket of 8 prompts made SmolLM2 sampling 2.3x faster on CPU (see
  docs/benchmarks.md). `batch_size` does not apply to sampled requests.

Controls per kind (greedy / sampled) are chosen in one place, `decoding_controls`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Literal

from pydantic import Field

from ...chat import prompt_mode, prompt_token_ids, stop_token_ids
from ...config import ModelSpec
from ...errors import BackendError
from ...rundir import sha256_file
from .base import EvalTarget, GenerationBackend, GenParams, GenRequest, GenResult, LocalModelOptions, split_by_kind

# Bump when the conversion call changes (its options), so cached conversions are redone.
CONVERT_VERSION = 1

Quantization = Literal["auto", "int8", "int8_float32", "int8_float16", "int8_bfloat16", "float16", "bfloat16",
                       "float32"]


def _import_ct2(what: str):
    try:
        import ctranslate2
    except ImportError:
        raise BackendError(f"{what} uses backend 'ct2' but ctranslate2 is not installed; "
                           "pip install ctranslate2 or use backend: hf") from None
    return ctranslate2


def _ct2_device(ct2, device: str) -> str:
    return "cuda" if str(device).startswith("cuda") and ct2.get_cuda_device_count() > 0 else "cpu"


def resolve_quantization(q: str, device: str) -> str:
    """'auto': int8 on CPU (fast, small), int8_float16 on CUDA."""
    if q != "auto":
        return q
    return "int8_float16" if device == "cuda" else "int8"


def decoding_controls(greedy: bool, params: GenParams) -> dict[str, Any]:
    """generate_batch keywords for one kind of request, as the hf backend decodes: the penalties come
    from `params.penalties(greedy)` (greedy: none, the authors' greedy pass, unless greedy_penalties);
    sampled requests add temperature, top-k and top-p, greedy takes the argmax (sampling_topk=1)."""
    rep, ngram = params.penalties(greedy)
    c: dict[str, Any] = {"repetition_penalty": rep, "no_repeat_ngram_size": ngram or 0}
    if greedy:
        c["sampling_topk"] = 1
    else:
        c.update(sampling_topk=params.top_k or 0, sampling_topp=params.top_p, sampling_temperature=params.temperature)
    return c


# --------------------------------------------------------------------------- conversion cache
def cache_root() -> Path:
    from ... import assets

    return assets.cache_dir() / "ct2"


def _file_sha256(path: Path, memo: dict) -> str:
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    if key not in memo:
        memo[key] = sha256_file(path)
    return memo[key]


def content_hash(folder: Path) -> str:
    """sha256 over the folder's files (names and contents), memoised in <cache>/ct2/hashes.json."""
    memo_path = cache_root() / "hashes.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    n = len(memo)
    h = hashlib.sha256()
    for p in sorted(q for q in folder.rglob("*") if q.is_file() and not q.name.startswith(".")):
        h.update(f"{p.relative_to(folder).as_posix()}\0{_file_sha256(p, memo)}\n".encode())
    if len(memo) != n:
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo_path.with_name(f".hashes.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(memo, sort_keys=True))
        os.replace(tmp, memo_path)
    return h.hexdigest()


def conversion_key(identity: Any, quantization: str) -> str:
    ct2 = _import_ct2("conversion")
    blob = json.dumps({"identity": identity, "quantization": quantization, "ctranslate2": ct2.__version__,
                       "version": CONVERT_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def convert_folder(source: Path, dest: Path, quantization: str, model_name: str,
                   trust_remote_code: bool = False, allow_pickle: bool = False) -> Path:
    """Convert the HF folder `source` into `dest` (skipped when dest is complete); atomic rename.
    The converter loads the weights with transformers, which falls back to pickle (.bin) files
    when a folder has no safetensors: such a folder is refused unless the config allows pickle."""
    if (dest / "model.bin").exists():
        return dest
    if not allow_pickle and not any(Path(source).glob("*.safetensors")):
        raise BackendError(f"model '{model_name}': {source} has no .safetensors weights, and converting its pickle "
                           "weights (.bin/.pt) would run code from the file; set models.<name>.allow_pickle: true "
                           "only if you trust it, or convert the weights to safetensors")
    ct2 = _import_ct2(f"model '{model_name}'")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        conv = ct2.converters.TransformersConverter(str(source), low_cpu_mem_usage=True,
                                                     trust_remote_code=trust_remote_code)
        conv.convert(str(tmp / "model"), quantization=quantization, force=True)
    except Exception as e:  # the converter raises ValueError/NotImplementedError/KeyError... per model
        shutil.rmtree(tmp, ignore_errors=True)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BackendError(f"model '{model_name}' cannot be converted to CTranslate2 ({reason[:300]}); "
                           "use backend: hf for this model") from None
    try:
        os.replace(tmp / "model", dest)
    except OSError:
        if not (dest / "model.bin").exists():  # not another process finishing first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def is_hub_id(ref: str) -> bool:
    """An org/name reference that is neither a packaged asset nor an existing folder."""
    from ...models import resolve_path

    return "/" in ref and not ref.startswith((".", "/", "~")) and not Path(resolve_path(ref)).is_dir()


def hub_snapshot(spec: ModelSpec) -> Path:
    """The local snapshot of hub model `spec` (downloaded once into the hub cache), without pickle
    files unless the config allows pickle for this model."""
    from huggingface_hub import snapshot_download

    ignore = None if spec.allow_pickle else ["*.bin", "*.pt", "*.pth", "*.pkl", "*.ckpt"]
    try:
        return Path(snapshot_download(spec.path, revision=spec.revision, ignore_patterns=ignore))
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BackendError(f"model '{spec.path}': cannot download it from the hub for CTranslate2 ({reason[:200]}); "
                           "check the id and your access, or point models.<name>.path at a local folder") from None


def converted_model(spec: ModelSpec, quantization: str, source: Path | None = None) -> Path:
    """The cached CTranslate2 folder of `spec` (converting it on first use)."""
    from ...models import resolve_path

    src = Path(source) if source is not None else Path(resolve_path(spec.path))
    if not src.is_dir():
        raise BackendError(f"model '{spec.path}': backend ct2 converts a local safetensors folder and '{src}' is "
                           "not one (fetch the model first, or use backend: hf)")
    key = conversion_key({"content": content_hash(src)}, quantization)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(spec.path).name)[:60]
    # The name is only for people reading the cache: any folder with this key is this model.
    done = [p for p in cache_root().glob(f"*-{quantization}-{key}") if (p / "model.bin").exists()]
    if done:
        return done[0]
    dest = cache_root() / f"{name}-{quantization}-{key}"
    return convert_folder(src, dest, quantization, spec.path, spec.trust_remote_code, spec.allow_pickle)


# --------------------------------------------------------------------------- backend
def group_seed(seeds: list[int]) -> int:
    blob = ",".join(str(s) for s in sorted(seeds))
    return int(hashlib.sha256(blob.encode()).hexdigest()[:8], 16)


class CT2Backend(GenerationBackend):
    class Options(LocalModelOptions):
        quantization: Quantization = Field(
            "auto", description="weights/compute type; auto: int8 on CPU, int8_float16 on CUDA")
        intra_threads: int = Field(0, ge=0, description="CPU threads per generation (0: CTranslate2's default)")
        sample_bucket: int = Field(
            8, ge=1, description="prompts drawn together in one sampling call (one seed per bucket); 1: one "
            "prompt per call, so a sample depends on its own prompt only (slower)")

    RUNTIME_OPTIONS = frozenset({"intra_threads"})
    EVALUATES_TRAINED = True  # converts each evaluated model once (a LoRA adapter merged first)

    @classmethod
    def record_options(cls, options: dict, device: str) -> dict:
        """`quantization: auto` keyed as what it resolves to on this device (int8 on CPU,
        int8_float16 on CUDA): the same config moved to a GPU makes new records, not mixed ones."""
        out = super().record_options(options, device)
        ct2 = _import_ct2("the generate stage")
        out["quantization"] = resolve_quantization(options.get("quantization", "auto"), _ct2_device(ct2, device))
        return out

    def __init__(self, spec: ModelSpec, device: str = "cpu", tokenizer=None, model_dir: str | Path | None = None,
                 source_dir: str | Path | None = None, **kwargs):
        """`model_dir`: an already converted folder (e.g. a trained model's); `source_dir`: the HF
        folder to convert instead of the spec's path; `tokenizer`: the HF tokenizer to format with."""
        super().__init__(spec, device)
        ct2 = _import_ct2(f"model '{spec.path}'")
        from ...models import load_tokenizer

        self.ct2_device = _ct2_device(ct2, device)
        if source_dir is None and model_dir is None and is_hub_id(spec.path):
            source_dir = hub_snapshot(spec)  # tokenizer, eos ids and conversion all read the snapshot
        self.quantization = resolve_quantization(self.options.quantization, self.ct2_device)
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(
            spec if source_dir is None else spec.model_copy(update={"path": str(source_dir), "revision": None}))
        self.model_dir = Path(model_dir) if model_dir is not None else converted_model(
            spec, self.quantization, Path(source_dir) if source_dir is not None else None)
        self.mode = prompt_mode(self.tokenizer, spec)
        self.stop_ids = stop_token_ids(self.tokenizer, spec, self._config_eos(source_dir))
        self._greedy = None  # Generator for greedy batches, loaded on first use

    def _config_eos(self, source_dir) -> list[int]:
        """eos ids of the model's generation_config.json (the hf backend's extra stop ids)."""
        from ...models import resolve_path

        try:
            src = Path(source_dir) if source_dir is not None else Path(resolve_path(self.spec.path))
            eos = json.loads((src / "generation_config.json").read_text()).get("eos_token_id")
        except Exception:  # no file, bad JSON: the tokenizer's eos still applies
            return []
        return [e for e in (eos if isinstance(eos, list) else [eos]) if isinstance(e, int)]

    def _generator(self):
        import ctranslate2

        return ctranslate2.Generator(str(self.model_dir), device=self.ct2_device, compute_type=self.quantization,
                                     intra_threads=self.options.intra_threads)

    def encode(self, req: GenRequest) -> list[int]:
        return prompt_token_ids(self.tokenizer, self.spec, req.messages)

    def generate(self, requests: list[GenRequest], params: GenParams) -> Iterator[GenResult]:
        encoded = {r.key: self.encode(r) for r in requests}
        greedy, sampled = split_by_kind(requests)
        greedy = sorted(greedy, key=lambda r: (-len(encoded[r.key]), r.key))
        for i in range(0, len(greedy), params.batch_size):
            batch = greedy[i:i + params.batch_size]
            if self._greedy is None:
                self._greedy = self._generator()
            out = self._call(self._greedy, [encoded[r.key] for r in batch], params, True, 1)
            yield from (self._result(r, res.sequences_ids[0], params) for r, res in zip(batch, out))
        groups: dict[tuple, list[GenRequest]] = {}
        for r in sampled:
            groups.setdefault(tuple(encoded[r.key]), []).append(r)
        order = sorted(groups.items(), key=lambda kv: (len(kv[1]), -len(kv[0]), min(r.key for r in kv[1])))
        size = self.options.sample_bucket
        bucket: list[tuple[tuple, list[GenRequest]]] = []
        for item in order:
            if bucket and (len(bucket) == size or len(bucket[0][1]) != len(item[1])):
                yield from self._sample_bucket(bucket, params)
                bucket = []
            bucket.append(item)
        if bucket:
            yield from self._sample_bucket(bucket, params)

    def _sample_bucket(self, bucket: list[tuple[tuple, list[GenRequest]]], params: GenParams) -> list[GenResult]:
        import ctranslate2

        groups = [sorted(g, key=lambda r: (r.seed, r.key)) for _, g in bucket]
        ctranslate2.set_random_seed(group_seed([r.seed for g in groups for r in g]))
        gen = self._generator()  # fresh worker thread: its sampler is seeded from the seed just set
        try:
            out = self._call(gen, [list(ids) for ids, _ in bucket], params, False, len(groups[0]))
        finally:
            del gen
        return [self._result(r, seq, params) for g, res in zip(groups, out) for r, seq in zip(g, res.sequences_ids)]

    def _call(self, gen, ids: list[list[int]], params: GenParams, greedy: bool, n: int):
        tokens = [self.tokenizer.convert_ids_to_tokens(x) for x in ids]
        return gen.generate_batch(tokens, max_length=params.max_new_tokens, include_prompt_in_result=False,
                                  end_token=self.stop_ids or None, return_end_token=True, num_hypotheses=n,
                                  beam_size=1, **decoding_controls(greedy, params))

    def _result(self, req: GenRequest, row: list[int], params: GenParams) -> GenResult:
        stops = set(self.stop_ids)
        end = next((j for j, t in enumerate(row) if t in stops), None)
        n = len(row) if end is None else end + 1
        text = self.tokenizer.decode(row[:n], skip_special_tokens=True).strip()
        return GenResult(req.key, text, n, "length" if end is None else "stop")

    # -- evaluation (the evaluate stage's hooks)
    # The evaluated model is converted once and the conversion reused:
    # - the base model (no trained weights) is converted into the user cache, keyed by the content of
    #   its folder, as for generation;
    # - trained weights are keyed by their identity in the caches (the training run's inputs hash)
    #   and converted into <work_dir>/ct2-<quantization>-<key>/. A LoRA adapter is merged into its
    #   starting model first (the same in-memory merge the hf backend evaluates), saved to a
    #   temporary folder, converted, and the temporary folder deleted; full weights are converted
    #   from the trained folder directly.
    # The quantization comes from the starting model's `options.quantization` (auto: int8 on CPU).
    @classmethod
    def _eval_quantization(cls, target: EvalTarget) -> str:
        # The device ct2 will run on (CPU when it sees no GPU), so the key names what actually runs.
        kind = _ct2_device(_import_ct2(f"model '{target.spec.path}'"), target.device)
        return resolve_quantization(cls.own_options(target.spec).options.get("quantization", "auto"), kind)

    @classmethod
    def evaluation_ref(cls, target: EvalTarget) -> dict:
        """Its texts differ from hf's (quantization, C++ kernels): the answers' hash names the engine."""
        ct2 = _import_ct2(f"model '{target.spec.path}'")
        return {"backend": "ct2", "quantization": cls._eval_quantization(target), "ctranslate2": ct2.__version__,
                "convert": CONVERT_VERSION}

    @classmethod
    def for_evaluation(cls, target: EvalTarget):
        from ...models import load_tokenizer, resolve_path

        start, q = target.spec, cls._eval_quantization(target)

        def start_dir() -> Path:  # the starting model's folder (a hub id: its safetensors snapshot)
            return hub_snapshot(start) if is_hub_id(start.path) else Path(resolve_path(start.path))

        if target.weights is None:
            src = start_dir()
            model_dir = converted_model(start, q, src)
            tok = load_tokenizer(start)
        else:
            d = target.weights
            tok = load_tokenizer(start.model_copy(update={"path": str(d), "revision": None}), padding_side="left")
            model_dir = target.work_dir / f"ct2-{q}-{conversion_key(target.identity, q)}"
            is_adapter = (d / "adapter_config.json").exists()
            src = start_dir() if is_adapter else d
            if not (model_dir / "model.bin").exists():
                cls._convert_trained(target, model_dir, q, is_adapter)

        def make(spec: ModelSpec) -> "CT2Backend":
            spec = cls.own_options(spec).model_copy(update={"backend": "ct2"})
            return cls(spec, target.device, tokenizer=tok, model_dir=model_dir, source_dir=src)

        return make, tok

    @staticmethod
    def _convert_trained(target: EvalTarget, model_dir: Path, q: str, is_adapter: bool) -> None:
        start, d = target.spec, target.weights
        if not is_adapter:
            convert_folder(d, model_dir, q, str(d), start.trust_remote_code, start.allow_pickle)
            return
        from ...lineage import save_merged

        tmp = target.work_dir / ".merged_for_ct2"
        save_merged(*target.load(), tmp)
        target.release()  # the merged HF model is on disk now: not held beside the CTranslate2 one
        try:
            convert_folder(tmp, model_dir, q, f"{start.path} + {target.name}", start.trust_remote_code)  # safetensors
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def close(self) -> None:
        from ...models import free

        self._greedy = None
        self.tokenizer = None
        free()
