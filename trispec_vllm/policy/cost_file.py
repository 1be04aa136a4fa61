"""The cost-aware step's measurements on disk, shared by the engines that follow.

Every fresh engine used to measure its step kinds again (warm-up runs of the
speculative kinds, which lose where plain decoding wins): on a 2-core CPU at
batch 8 that was about 5% of a fixed batch's time. The measured rates depend on
the models, the drafter, the TriSpec section and the hardware, not on the
requests, so they are kept in one small JSON file per such `key` and read at
the next start.

The file is written atomically (a temporary file, then `os.replace`) under a
file lock, merged with what another engine of the same key saved meanwhile. A
file that cannot be read, was written for another key, or is older than
`max_age_s` is ignored (and replaced at the next save): the engine then
measures, as without one. Nothing here imports vLLM.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from filelock import FileLock

from trispec_vllm.fetch.cache import atomic_write_text
from trispec_vllm.policy.cost import KINDS, CostModel

FORMAT = 1
MAX_AGE_S = 30 * 24 * 3600.0

logger = logging.getLogger("vllm.trispec")


def file_for(directory: str | Path, key: dict[str, Any]) -> Path:
    """The file of `key` (a JSON-able description of models and hardware)."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return Path(directory).expanduser() / f"costs-{digest}.json"


class CostFile:
    """One key's file: `load` into a cost model at start, `save` from it now and then."""

    def __init__(
        self, directory: str | Path, key: dict[str, Any], max_age_s: float = MAX_AGE_S
    ) -> None:
        self.key = json.loads(json.dumps(key, sort_keys=True))  # as it reads back
        self.path = file_for(directory, self.key)
        self.max_age_s = max_age_s

    def _read(self) -> dict | None:
        """The file's snapshot, or None (absent, unreadable, another key, stale)."""
        try:
            payload = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            logger.warning("TriSpec: ignoring unreadable cost file %s (%s)", self.path, err)
            return None
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            logger.warning("TriSpec: ignoring cost file %s of another format", self.path)
            return None
        if payload.get("key") != self.key:
            return None
        saved_at = payload.get("saved_at")
        age = time.time() - saved_at if isinstance(saved_at, (int, float)) else -1.0
        if not 0 <= age <= self.max_age_s:
            logger.info(
                "TriSpec: ignoring stale cost file %s (%.0f days old)", self.path, age / 86400
            )
            return None
        snapshot = payload.get("snapshot")
        return snapshot if isinstance(snapshot, dict) else None

    def load(self, cost: CostModel) -> int:
        """Restore `cost` from the file; the rows restored (0: measure from scratch)."""
        try:
            with FileLock(str(self.path) + ".lock", timeout=10):
                snapshot = self._read()
        except OSError as err:  # a read-only or missing cache folder, a lock timeout
            logger.warning("TriSpec: cannot read the cost file %s (%s)", self.path, err)
            return 0
        if snapshot is None:
            return 0
        try:
            return cost.restore(snapshot)
        except ValueError as err:
            logger.warning("TriSpec: ignoring cost file %s: %s", self.path, err)
            return 0

    def save(self, cost: CostModel) -> bool:
        """Write `cost`'s snapshot, keeping the rows of the file this model has not
        measured (another engine's classes); False when it could not be written."""
        mine = cost.snapshot()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(self.path) + ".lock", timeout=10):
                merged = merge(self._read(), mine)
                payload = {
                    "format": FORMAT,
                    "key": self.key,
                    "saved_at": time.time(),
                    "snapshot": merged,
                }
                atomic_write_text(self.path, json.dumps(payload, indent=1))
        except OSError as err:
            logger.warning("TriSpec: cannot save the cost file %s (%s)", self.path, err)
            return False
        return True


def merge(theirs: dict | None, mine: dict) -> dict:
    """`mine`, plus the (class, kind) rows, intervals and budgets of `theirs` it lacks (all of
    `theirs` dropped if it is malformed)."""
    both = CostModel(kinds=KINDS)
    if theirs:
        try:
            both.restore(theirs)
        except ValueError:
            both = CostModel(kinds=KINDS)
    both.restore(mine)
    return both.snapshot()


def describe(directory: str | Path) -> list[dict[str, Any]]:
    """Every cost file in `directory`: its path, key, age in days and measured tok/s
    per kind and batch-size class (None where the file cannot be read)."""
    out = []
    for path in sorted(Path(directory).expanduser().glob("costs-*.json")):
        entry: dict[str, Any] = {"path": str(path), "key": None, "days": None, "rates": None}
        try:
            payload = json.loads(path.read_text())
            model = CostModel(kinds=KINDS)
            model.restore(payload["snapshot"])
            entry.update(
                key=payload["key"],
                days=(time.time() - float(payload["saved_at"])) / 86400,
                rates=model.rates(),
            )
        except (OSError, ValueError, KeyError, TypeError):
            pass
        out.append(entry)
    return out
