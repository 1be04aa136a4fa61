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


# What a runner keeps in files, saved again at shutdown: (runner attribute, what it is).
SAVED_AT_SHUTDOWN = (
    ("trispec_learned", "the drafter head (drafter_checkpoint)"),
    ("trispec_cost_memory", "the cost-aware step's measurements (cost_memory)"),
)


def save_at_shutdown(worker) -> None:
    """At shutdown the learned drafter saves its head and the cost-aware step its
    measurements; a failed save is logged and does not stop the shutdown."""
    runner = getattr(worker, "model_runner", None)
    for attr, what in SAVED_AT_SHUTDOWN:
        saver = getattr(runner, attr, None)
        if saver is not None:
            try:
                saver.save()
            except Exception:  # noqa: BLE001 - a failed save must not break the shutdown
                logger.exception("TriSpec: saving %s at shutdown failed", what)


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
        save_at_shutdown(self)
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
