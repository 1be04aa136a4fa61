"""vLLM's CPU and GPU workers with TriSpec's model runner (always the V1 runner).

vLLM builds the worker named by `parallel_config.worker_cls` (set by
`config_hook`) in each worker process, by qualified name, so nothing here
depends on the executor that started the process.
"""

from __future__ import annotations

import logging
from typing import Any
from unittest import mock

from vllm.v1.worker import cpu_worker
from vllm.v1.worker.gpu_worker import Worker

from trispec_vllm.engine.model_runner import TriSpecCPUModelRunner, TriSpecGPUModelRunner
from trispec_vllm.engine.stats import worker_counters

logger = logging.getLogger("vllm.trispec")


def save_drafter(worker) -> None:
    """At shutdown the learned drafter saves its head to drafter_checkpoint."""
    drafter = getattr(getattr(worker, "model_runner", None), "trispec_learned", None)
    if drafter is not None:
        try:
            drafter.save()
        except Exception:  # noqa: BLE001 - a failed save must not break the shutdown
            logger.exception("TriSpec: saving the drafter head at shutdown failed")


def save_costs(worker) -> None:
    """At shutdown the cost-aware step saves its measurements (`cost_memory`)."""
    memory = getattr(getattr(worker, "model_runner", None), "trispec_cost_memory", None)
    if memory is not None:
        try:
            memory.save()
        except Exception:  # noqa: BLE001 - a failed save must not break the shutdown
            logger.exception("TriSpec: saving the cost-aware step's measurements failed")


class TriSpecWorkerMethods:
    """What TriSpec adds to vLLM's CPU and GPU workers (called by name through
    `collective_rpc`)."""

    def trispec_counters(self) -> dict[str, Any]:
        return worker_counters(self.model_runner.trispec, self.model_runner.trispec_cost)

    def trispec_drafter(self) -> dict[str, Any] | None:
        """The learned drafter's state: optimiser steps taken (saved ones included)."""
        drafter = self.model_runner.trispec_learned
        if drafter is None or drafter.learner is None:
            return None
        return {"updates": drafter.learner.updates, "buffer": len(drafter.buffer)}

    def shutdown(self) -> None:
        save_drafter(self)
        save_costs(self)
        super().shutdown()


class TriSpecCPUWorker(TriSpecWorkerMethods, cpu_worker.CPUWorker):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.use_v2_model_runner = False

    def init_device(self) -> None:
        # CPUWorker.init_device builds its runner by the module-level name.
        with mock.patch.object(cpu_worker, "CPUModelRunner", TriSpecCPUModelRunner):
            super().init_device()


class TriSpecGPUWorker(TriSpecWorkerMethods, Worker):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.use_v2_model_runner = False

    def _make_model_runner(self):
        return TriSpecGPUModelRunner(self.vllm_config, self.device)
