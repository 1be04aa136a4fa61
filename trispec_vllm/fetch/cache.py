"""Where fetched models live, and how they get there without ever looking half-built.

Layout under the cache root (``trispec_vllm.envs.cache_root()``: ``$TRISPEC_CACHE``,
default ``~/.cache/trispec-vllm``)::

    gguf/<name>.Q4_K_M.gguf         assembled GGUF, kept so another dtype
    gguf/<name>.Q4_K_M.gguf.json    converts without a re-download; its manifest
    models/<name>-<dtype>/          the vLLM-loadable checkpoint
    models/<name>-<dtype>/.complete written last; lists every file and its size

A checkpoint is built in a temp dir beside its final place and moved there with
``os.replace`` only once complete, the ``.complete`` marker being the last file
written inside it. A directory without a valid marker is never reported as ready.
A per-model lock file (``filelock``) keeps two concurrent fetches from building
the same thing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from filelock import FileLock, Timeout

from trispec_vllm import envs
from trispec_vllm.fetch.specs import check_dtype, get_spec

logger = logging.getLogger(__name__)

MARKER = ".complete"

PathLike = str | os.PathLike


def default_cache_dir() -> Path:
    return envs.cache_root()


def cache_root(cache_dir: PathLike | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def model_dir(name: str, dtype: str = "bfloat16", cache_dir: PathLike | None = None) -> Path:
    """Where the converted checkpoint of ``name`` in ``dtype`` lives (ready or not)."""
    get_spec(name)
    return cache_root(cache_dir) / "models" / f"{name}-{check_dtype(dtype)}"


def gguf_path(name: str, cache_dir: PathLike | None = None) -> Path:
    return cache_root(cache_dir) / "gguf" / get_spec(name).gguf_name


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
    atomic_write_text(root / MARKER, json.dumps(body, indent=1, sort_keys=True) + "\n")


def is_ready(path: PathLike) -> bool:
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


# ------------------------------------------------------------------ atomic writes


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write `path` through `write(file)` into a temporary file beside it, fsync it and
    move it into place: a reader sees the old file or the whole new one, never a torn
    one (a process killed mid-write leaves only the temporary file, removed if it can)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """`atomic_write` of a text file (UTF-8)."""
    atomic_write(path, lambda f: f.write(text.encode()))


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


def clean_stale_tmp(parent: Path, prefix: str) -> None:
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


# ------------------------------------------------------------------------- locking


@contextlib.contextmanager
def locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive inter-process lock on ``lock_path``, waiting as long as it takes."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.info("waiting for another process holding %s", lock_path)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
