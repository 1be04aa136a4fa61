"""Every change trispec-vllm makes to vLLM 0.32, listed in one place.

`apply_trispec_patches()` (called by the `vllm.general_plugins` entry point in
every vLLM process) applies the process-wide ones; each is idempotent and
leaves engines without a `trispec` section on stock vLLM code paths.

Process-wide, applied here:
  1. `Platform.check_and_update_config` is wrapped (`config_hook`): the
     `trispec` section is validated before weights load, unsupported features
     are switched off and TriSpec's worker class is selected.
  2. `VllmConfig._get_v2_model_runner_unsupported_features` is wrapped
     (`config_hook`): engines with a `trispec` section use vLLM's V1 model runner
     throughout, chosen the way vLLM chooses it for features V2 lacks.
  3. `PrometheusStatLogger.__init__/record` and `LoggingStatLogger.record/log`
     are wrapped (`stats`): `trispec:*` counters and the periodic log line.
  4. `llm_engine.get_metrics_snapshot` is wrapped (`stats`): `LLM.get_metrics()`
     lists the `trispec:*` counters.
  5. CPU with TRISPEC_CPU_SAMPLING_FIX=1 only: `rejection_sampler.
     expand_batch_to_tokens` is replaced (`cpu_workarounds`), so stock SD engines
     get the fix too (for fair comparisons).

  14. CPU with TRISPEC_CPU_GEMM_MIN_ROWS set (`trispec-vllm cpu-env` sets it where
     it measured a gain): `layers.utils.dispatch_cpu_unquantized_gemm` is wrapped
     (`cpu_gemm`), so every linear layer it sets up, in every engine, pads bf16
     inputs of fewer rows to that many.

Applied where TriSpec's own worker and runner run (engines with a `trispec`
section only):
  6. the worker classes and model runners are subclasses (`workers`,
     `model_runner`); the CPU worker's module-level `CPUModelRunner` name is
     swapped while `init_device` builds the runner;
  7. the TriSpec CPU runner replaces `expand_batch_to_tokens` (as 5);
  8. with the proxy as drafter, the draft model proposer's `_greedy_sample`
     is replaced on that instance to keep its logits (`fused_drafter`);
  9. in steps run by vLLM's own `execute_model`, the runner's
     `_update_states` is shadowed for that call (the batch is already updated);
 10. the TriSpec CPU runner selects numba's `workqueue` threading layer before
     vLLM builds its ngram drafter, unless the user set NUMBA_THREADING_LAYER
     (`cpu_runtime.keep_torch_threads`: numba's OpenMP layer leaves torch's
     passes on one thread after the drafter's first proposal).
 15. with `proxy_vocab`, the proxy's `LogitsProcessor.forward` (the draft model's,
     where the proxy is the drafter) is replaced on that instance: it is handed a
     head of the subset's rows and spreads the logits back (`proxy_vocab`).

Process-wide, applied here, acting on engines with a `trispec` section only
(`scheduler_hooks`, one wrap per method):
 11. `Scheduler.schedule` is wrapped (`waiting`): its output carries how many
     requests were left waiting for a slot, which the cost-aware step's objective
     reads.
 12. `Scheduler.update_from_output` is wrapped: it keeps whether the runner output
     is marked as proposing no drafts (`draft_call`, read by 13), and with
     `max_holds` a request whose step emitted no token (held) has the step's
     scheduled tokens rolled back (`held`), which vLLM does only for steps that
     emit one.
 13. `EngineCore.post_step` is wrapped (`draft_call`): after a step whose runner
     output is marked as proposing no drafts (a plain step chosen by the
     cost-aware step), the engine core skips its `take_draft_token_ids` call to
     the worker.
"""

from __future__ import annotations

from trispec_vllm import envs


def apply_trispec_patches() -> None:
    """Apply patches 1-5, 11-13 and 14 (idempotent; cheap when vLLM is already imported)."""
    from trispec_vllm.engine import config_hook, cpu_workarounds, scheduler_hooks, stats

    config_hook.patch_platform_config_hook()
    config_hook.patch_v2_runner_choice()
    stats.patch_stat_loggers()
    stats.patch_metrics_reader()
    scheduler_hooks.patch_scheduler()
    if envs.flag("TRISPEC_CPU_SAMPLING_FIX"):
        from vllm.platforms import current_platform

        if current_platform.is_cpu():
            cpu_workarounds.install_cpu_sampling_fix()
    min_rows = envs.get("TRISPEC_CPU_GEMM_MIN_ROWS")
    if min_rows and not min_rows.isdigit():
        raise ValueError(f"TRISPEC_CPU_GEMM_MIN_ROWS must be a row count, got {min_rows!r}")
    if min_rows and int(min_rows) > 1:
        from vllm.platforms import current_platform

        if current_platform.is_cpu():
            from trispec_vllm.engine import cpu_gemm

            cpu_gemm.install_gemm_padding(int(min_rows))
