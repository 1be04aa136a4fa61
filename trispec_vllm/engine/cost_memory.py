"""The cost-aware step's measurements across engine restarts (`cost_memory`).

What the measured step rates depend on makes the file's key: the target, the
drafter, the TriSpec section, vLLM's and TriSpec's versions, and the hardware
(device, CPU or GPU model, threads, tensor parallelism, preloaded allocator and
OpenMP). Rank 0 decides every step's kind under tensor parallelism (`ranks`),
so rank 0 alone saves; every rank loads.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from trispec_vllm import cpu_runtime, envs
from trispec_vllm.policy.cost import CostModel
from trispec_vllm.policy.cost_file import CostFile

logger = logging.getLogger("vllm.trispec")

SAVE_EVERY = 64  # measured steps between saves (a save writes a few hundred bytes)


def cost_key(vllm_config, cfg, device: torch.device) -> dict[str, Any]:
    """What the step rates depend on, as JSON-able values."""
    import vllm

    from trispec_vllm import __version__

    mc = vllm_config.model_config
    spec = vllm_config.speculative_config
    pc = vllm_config.parallel_config
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = cpu_runtime.cpu_name()
    preload = os.environ.get("LD_PRELOAD", "").replace(":", " ").split()
    return {
        "versions": [__version__, vllm.__version__],
        "target": [mc.model, mc.revision, str(mc.dtype), mc.quantization, mc.enforce_eager],
        "drafter": None
        if spec is None
        else [spec.method, spec.num_speculative_tokens, getattr(spec, "model", None)],
        "trispec": cfg.model_dump(mode="json", exclude={"cost_memory", "drafter_checkpoint"}),
        "hardware": {
            "device": device.type,
            "name": device_name,
            "threads": torch.get_num_threads(),
            "cores": os.cpu_count(),
            "tp": pc.tensor_parallel_size,
            "pp": pc.pipeline_parallel_size,
            "preload": sorted(os.path.basename(p) for p in preload),
        },
    }


def tp_rank() -> int:
    try:
        from vllm.distributed import get_tensor_model_parallel_rank

        return get_tensor_model_parallel_rank()
    except (AssertionError, RuntimeError):  # no distributed state (tests of one rank)
        return 0


class CostMemory:
    """Loads a cost model from its file at start; saves it every `SAVE_EVERY`
    measured steps and at shutdown (rank 0 only)."""

    def __init__(self, file: CostFile, cost: CostModel, saves: bool) -> None:
        self.file, self.cost, self.saves = file, cost, saves
        self.unsaved = 0
        restored = file.load(cost)
        if restored:
            logger.info(
                "TriSpec: the cost-aware step starts from %d measurements in %s "
                "(cost_memory; measured tok/s %s)",
                restored,
                file.path,
                cost.rates(),
            )

    def measured(self) -> None:
        """One more measured step; save now and then."""
        self.unsaved += 1
        if self.unsaved >= SAVE_EVERY:
            self.save()

    def save(self) -> None:
        if self.saves and self.unsaved:
            self.file.save(self.cost)
            self.unsaved = 0


def open_memory(runner, cfg, cost: CostModel | None) -> CostMemory | None:
    """The runner's cost memory (None: no cost-aware step, or `cost_memory` off)."""
    if cost is None or not cfg.cost_memory:
        return None
    try:
        key = cost_key(runner.vllm_config, cfg, runner.device)
        return CostMemory(CostFile(envs.cost_dir(), key), cost, saves=tp_rank() == 0)
    except Exception:  # noqa: BLE001 - a memory that cannot start must not stop the engine
        logger.exception("TriSpec: cost_memory is off for this engine (it measures afresh)")
        return None
