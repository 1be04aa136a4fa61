"""The drafter head's checkpoint: learned weights, optimiser state, provenance.

Written atomically (a temporary file in the same folder, then `os.replace`)
under a file lock, so a server killed mid-save, or two savers, never leave a
torn file: a restarted server reads the last complete one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from filelock import FileLock

from trispec_vllm.fetch.cache import atomic_write

FORMAT = 1


class CheckpointError(ValueError):
    """A drafter checkpoint that cannot be used with this proxy."""


def save(
    path: str | Path,
    head_state: dict,
    learner_state: dict | None,
    fingerprint: str,
    draft_vocab: torch.Tensor | None = None,
) -> None:
    """`draft_vocab`: the [N] token ids the head drafts from (None: all of them)."""
    path = Path(path).expanduser()
    payload = {
        "format": FORMAT,
        "fingerprint": fingerprint,
        "head": head_state,
        "learner": learner_state,
        "draft_vocab": None if draft_vocab is None else draft_vocab.detach().cpu().clone(),
    }
    with FileLock(str(path) + ".lock"):
        atomic_write(path, lambda f: torch.save(payload, f))


def load(path: str | Path, fingerprint: str) -> dict:
    """The checkpoint at `path`, checked against the proxy's `fingerprint`."""
    path = Path(path).expanduser()
    with FileLock(str(path) + ".lock"):
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable file: one clear message
            raise CheckpointError(
                f"drafter_checkpoint {path} is not a readable checkpoint: {err}"
            ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"drafter_checkpoint {path} is not a TriSpec drafter checkpoint")
    if payload["fingerprint"] != fingerprint:
        raise CheckpointError(
            f"drafter_checkpoint {path} was trained for another proxy "
            f"({payload['fingerprint']}; this proxy: {fingerprint})"
        )
    vocab = payload.get("draft_vocab")
    if vocab is not None:
        size = json.loads(fingerprint).get("vocab_size")
        ok = isinstance(vocab, torch.Tensor) and vocab.dim() == 1 and vocab.numel() > 0
        if (
            not ok
            or vocab.dtype.is_floating_point
            or int(vocab.min()) < 0
            or (size is not None and int(vocab.max()) >= size)
        ):
            raise CheckpointError(
                f"drafter_checkpoint {path}: its draft vocabulary is not a list of token ids "
                f"of this proxy (vocab_size {size})"
            )
    return payload


def check_path(path: str | Path, fingerprint: str) -> None:
    """Fail early (before any weights load) on a checkpoint path that cannot work."""
    path = Path(path).expanduser()
    if not path.parent.is_dir():
        raise CheckpointError(f"drafter_checkpoint {path}: folder {path.parent} does not exist")
    if path.exists():
        load(path, fingerprint)
    elif not os.access(path.parent, os.W_OK):
        raise CheckpointError(f"drafter_checkpoint {path}: folder {path.parent} is not writable")
