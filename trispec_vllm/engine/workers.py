"""vLLM's CPU and GPU workers with TriSpec's model runner (always the V1 runner).

vLLM builds the worker named by `parallel_config.worker_cls` (set by
`config_hook`) in each worker process, by qualified name, so nothing here
depends on the executor that started the process.
"""

from __future__ import annotations

from typing import Any
from unittest import mock

from vllm.v1.worker import cpu_worker
from vllm.v1.worker.gpu_worker import Worker

from trispec_vllm.engine.model_runner import TriSpecCPUModelRunner, TriSpecGPUModelRunner
from trispec_vllm.engine.stats import worker_counters


class TriSpecCPUWorker(cpu_worker.CPUWorker):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.use_v2_model_runner = False

    def init_device(self) -> None:
        # CPUWorker.init_device builds its runner by the module-level name.
        with mock.patch.object(cpu_worker, "CPUModelRunner", TriSpecCPUModelRunner):
            super().init_device()

    def trispec_counters(self) -> dict[str, Any]:
        return worker_counters(self.model_runner.trispec)


class TriSpecGPUWorker(Worker):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.use_v2_model_runner = False

    def _make_model_runner(self):
        return TriSpecGPUModelRunner(self.vllm_config, self.device)

    def trispec_counters(self) -> dict[str, Any]:
        return worker_counters(self.model_runner.trispec)
