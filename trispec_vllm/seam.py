"""Every vLLM extension point TriSpec overrides, in one place.

- the platform's `check_and_update_config`, wrapped so a `trispec` section in
  `additional_config` is validated before any weights load and selects
  TriSpec's worker (features TriSpec cannot support yet are switched off);
- the workers (CPU and GPU), which always build the V1 model runner;
- the model runner's `load_model` (loads the proxy), `_dummy_run` (warms the
  proxy up), `execute_model` (the TriSpec step), `_sample` / `_bookkeeping_sync`
  (two vLLM 0.32 CPU fixes) and `sample_tokens` (counts, stats to the scheduler);
- the front end's stat loggers and `LLM.get_metrics()` reader (`trispec:*`).
Keep this module thin: decisions live in the pure modules (config, router, step).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from trispec_vllm.config import (
    SUPPORTED_DRAFTERS,
    TriSpecConfig,
    TriSpecConfigError,
    parse_trispec_config,
)
from trispec_vllm.metrics import PREFIX, STATS_KEY, PrometheusCounters, TriSpecStats

if TYPE_CHECKING:
    from vllm.config import VllmConfig

logger = logging.getLogger("vllm.trispec")  # under vLLM's logger: same handlers and format
_HOOK_MARK = "_trispec_hook"


def install_config_hook() -> None:
    """Wrap the current platform's config hook (once per process)."""
    from vllm.platforms import current_platform

    platform_cls = type(current_platform)
    original = platform_cls.check_and_update_config
    if getattr(original, _HOOK_MARK, False):
        return

    @functools.wraps(original)
    def check_and_update_config(vllm_config: VllmConfig) -> None:
        cfg = parse_trispec_config(vllm_config.additional_config)
        if cfg is not None:
            validate_engine_config(cfg, vllm_config)
            adjust_engine_config(vllm_config)
        original(vllm_config)
        if cfg is not None and vllm_config.scheduler_config.async_scheduling:
            # The platform hook may turn async scheduling back on (GPU).
            vllm_config.scheduler_config.async_scheduling = False

    setattr(check_and_update_config, _HOOK_MARK, True)
    platform_cls.check_and_update_config = staticmethod(check_and_update_config)
    install_stat_logger_hooks()


# ---------------------------------------------------------------------------
# Stats: worker -> scheduler stats -> front-end stat loggers.


def _split_stats(scheduler_stats):
    """(TriSpec's step counts or None, scheduler_stats without them)."""
    import dataclasses

    payload = getattr(scheduler_stats, "kv_connector_stats", None)
    if not payload or STATS_KEY not in payload:
        return None, scheduler_stats
    rest = {k: v for k, v in payload.items() if k != STATS_KEY} or None
    return payload[STATS_KEY], dataclasses.replace(scheduler_stats, kv_connector_stats=rest)


def install_metrics_reader_hook() -> None:
    """`LLM.get_metrics()` lists `vllm:*` metrics only; add the `trispec:*` counters."""
    from vllm.v1.engine import llm_engine

    original = llm_engine.get_metrics_snapshot
    if getattr(original, _HOOK_MARK, False):
        return

    @functools.wraps(original)
    def get_metrics_snapshot():
        from prometheus_client import REGISTRY
        from vllm.v1.metrics.reader import Counter

        collected = original()
        for metric in REGISTRY.collect():
            if metric.name.startswith(PREFIX) and metric.type == "counter":
                for sample in metric.samples:
                    if sample.name == metric.name + "_total":
                        collected.append(
                            Counter(name=metric.name, labels=sample.labels, value=int(sample.value))
                        )
        return collected

    setattr(get_metrics_snapshot, _HOOK_MARK, True)
    llm_engine.get_metrics_snapshot = get_metrics_snapshot


def install_stat_logger_hooks() -> None:
    """Teach vLLM's Prometheus and logging stat loggers about TriSpec's counts."""
    from vllm.v1.metrics import loggers

    prom = loggers.PrometheusStatLogger
    if getattr(prom.record, _HOOK_MARK, False):
        return
    prom_init, prom_record = prom.__init__, prom.record
    log_record, log_log = loggers.LoggingStatLogger.record, loggers.LoggingStatLogger.log

    @functools.wraps(prom_init)
    def prometheus_init(self, vllm_config, *args, **kwargs):
        prom_init(self, vllm_config, *args, **kwargs)
        self.trispec_counters = None
        if parse_trispec_config(vllm_config.additional_config) is not None:
            self.trispec_counters = PrometheusCounters(
                self._counter_cls,
                self._histogram_cls,
                ["model_name", "engine"],
                self.per_engine_labelvalues,
            )

    @functools.wraps(prom_record)
    def prometheus_record(self, scheduler_stats, iteration_stats, *args, **kwargs):
        step, scheduler_stats = _split_stats(scheduler_stats)
        engine_idx = kwargs.get("engine_idx", args[1] if len(args) > 1 else 0)
        if step and getattr(self, "trispec_counters", None) is not None:
            self.trispec_counters.observe(step, engine_idx)
        return prom_record(self, scheduler_stats, iteration_stats, *args, **kwargs)

    @functools.wraps(log_record)
    def logging_record(self, scheduler_stats, iteration_stats, *args, **kwargs):
        step, scheduler_stats = _split_stats(scheduler_stats)
        if step:
            acc = getattr(self, "trispec_interval", None) or TriSpecStats()
            stats = TriSpecStats.from_dict(step)
            acc.add(stats)
            acc.add_requests(stats)
            self.trispec_interval = acc
        return log_record(self, scheduler_stats, iteration_stats, *args, **kwargs)

    @functools.wraps(log_log)
    def logging_log(self):
        log_log(self)
        acc = getattr(self, "trispec_interval", None)
        if acc is not None and acc.proxy_steps:
            logger.info(
                "TriSpec: %d steps, target ran in %d (%.0f%%), %d request-steps completed by "
                "the proxy, %d escalated, %d tokens emitted, %d catch-up tokens",
                acc.proxy_steps,
                acc.target_steps,
                100 * acc.target_steps / acc.proxy_steps,
                acc.proxy_completions,
                acc.escalations,
                acc.emitted_tokens,
                acc.catchup_tokens,
            )
            if acc.per_request:
                logger.info("TriSpec requests: %s", acc.request_summary())
            self.trispec_interval = None

    install_metrics_reader_hook()
    for fn in (prometheus_record, logging_record):
        setattr(fn, _HOOK_MARK, True)
    prom.__init__, prom.record = prometheus_init, prometheus_record
    loggers.LoggingStatLogger.record = logging_record
    loggers.LoggingStatLogger.log = logging_log


def validate_engine_config(cfg: TriSpecConfig, vllm_config: VllmConfig) -> None:
    """Fail with a clear message on settings TriSpec cannot serve (no weights read)."""
    spec = vllm_config.speculative_config
    if spec is None:
        raise TriSpecConfigError(
            "TriSpec needs a drafter: set speculative_config, e.g. "
            '{"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3}'
        )
    if spec.method not in SUPPORTED_DRAFTERS:
        raise TriSpecConfigError(
            f"speculative_config method '{spec.method}' is not supported by TriSpec yet; "
            f"use one of {', '.join(SUPPORTED_DRAFTERS)} (EAGLE-style drafters need the "
            "proxy adapter, which is not built yet)"
        )
    if cfg.disable_by_batch_size is not None and spec.method != "ngram":
        raise TriSpecConfigError(
            f"disable_by_batch_size works with the ngram drafter only (got '{spec.method}': "
            "a drafter with its own KV cache would miss the steps it skips)"
        )
    check_proxy_vocab(cfg.proxy_model, vllm_config.model_config.get_vocab_size())


def check_proxy_vocab(proxy_model: str, target_vocab: int) -> None:
    """The proxy must exist and share the target's vocabulary (checked from config.json)."""
    path = Path(proxy_model).expanduser()
    if not path.exists():
        raise TriSpecConfigError(
            f"proxy_model '{proxy_model}' does not exist (give a local model directory; "
            "models are not downloaded from a hub by TriSpec)"
        )
    config_file = path / "config.json"
    if not config_file.is_file():
        raise TriSpecConfigError(f"proxy_model '{proxy_model}' has no config.json")
    proxy_cfg = json.loads(config_file.read_text())
    text_cfg = proxy_cfg.get("text_config", proxy_cfg)
    vocab = text_cfg.get("vocab_size")
    if vocab != target_vocab:
        raise TriSpecConfigError(
            f"proxy_model '{proxy_model}' has a vocabulary of {vocab} tokens but the target "
            f"has {target_vocab}: the proxy must share the target's tokenizer and vocabulary"
        )
    if os.environ.get("TRISPEC_DEBUG"):
        logger.info("TriSpec proxy %s: vocabulary %d matches the target", proxy_model, vocab)


# ---------------------------------------------------------------------------
# Engine settings TriSpec needs, applied with a logged warning.


def adjust_engine_config(vllm_config: VllmConfig) -> None:
    """Switch off what TriSpec cannot support yet and select its worker."""
    cache = vllm_config.cache_config
    if cache.enable_prefix_caching:
        logger.warning(
            "TriSpec: prefix caching disabled (a cached block may hold positions "
            "that have proxy KV but no target KV)"
        )
        cache.enable_prefix_caching = False
    sched = vllm_config.scheduler_config
    if getattr(sched, "async_scheduling", False):
        logger.warning("TriSpec: async scheduling disabled (routing needs the step's outputs)")
        sched.async_scheduling = False
    if vllm_config.kv_transfer_config is not None:
        raise TriSpecConfigError("TriSpec does not support KV connectors (kv_transfer_config)")
    if vllm_config.parallel_config.pipeline_parallel_size > 1:
        raise TriSpecConfigError("TriSpec does not support pipeline parallelism yet")
    if vllm_config.parallel_config.tensor_parallel_size > 1:
        # Every rank would route on its own copy of the (all-gathered) proxy logits;
        # until the routing mask is broadcast from rank 0 and tested on GPUs, refuse.
        raise TriSpecConfigError("TriSpec does not support tensor parallelism yet")
    from vllm.config.compilation import CUDAGraphMode

    # torch.compile stays as configured; CUDA graphs are off because the routed
    # step runs a sub-batch of data-dependent size.
    if vllm_config.compilation_config.cudagraph_mode != CUDAGraphMode.NONE:
        logger.warning("TriSpec: CUDA graphs disabled (the target runs a routed sub-batch)")
        vllm_config.compilation_config.cudagraph_mode = CUDAGraphMode.NONE
    parallel = vllm_config.parallel_config
    if parallel.worker_cls not in ("auto", WORKER_CPU, WORKER_GPU):
        raise TriSpecConfigError(
            f"TriSpec selects its own worker, but worker_cls={parallel.worker_cls} was given"
        )
    from vllm.platforms import current_platform

    parallel.worker_cls = WORKER_CPU if current_platform.is_cpu() else WORKER_GPU


WORKER_CPU = "trispec_vllm.seam.TriSpecCPUWorker"
WORKER_GPU = "trispec_vllm.seam.TriSpecGPUWorker"


# ---------------------------------------------------------------------------
# Worker and model runner.


def _runner_mixin():
    """The TriSpec model-runner overrides, as a mixin over vLLM's V1 runner."""
    from vllm.distributed.kv_transfer.kv_connector.v1.metrics import KVConnectorStats
    from vllm.forward_context import set_forward_context
    from vllm.v1.attention.backend import CommonAttentionMetadata
    from vllm.v1.outputs import EMPTY_MODEL_RUNNER_OUTPUT, KVConnectorOutput
    from vllm.v1.worker.gpu_model_runner import ExecuteModelState

    from trispec_vllm import proxy_runner
    from trispec_vllm.step import (
        StepBatch,
        TriSpecStep,
        drop_bonus,
        greedy_verify,
        pyramid_tokens,
    )

    class TriSpecRunnerMixin:
        trispec: TriSpecStep

        def _trispec_setup(self) -> None:
            cfg = parse_trispec_config(self.vllm_config.additional_config)
            assert cfg is not None
            self.trispec = TriSpecStep(cfg)
            self.trispec_proxy = None
            self._trispec_last_step = None
            self._trispec_step_batch = None
            self._trispec_override = None  # (rows mask, tokens) to apply after sampling
            self._trispec_no_bonus = None  # [B] requests whose bonus token is dropped
            # The proxy is the draft model itself: its drafting passes give the margins.
            self.trispec_fused = proxy_is_drafter(cfg, self.vllm_config.speculative_config)
            self._trispec_recording: list[torch.Tensor] | None = None
            self._trispec_own = None  # (req ids, [R, K, V] drafter logits) of the last proposal

        def load_model(self, *args, **kwargs) -> None:
            super().load_model(*args, **kwargs)
            if self.trispec_fused and self._trispec_record_drafter():
                logger.info(
                    "TriSpec: the proxy is the draft model (%s): its drafting passes give the "
                    "margins, so it is loaded once and needs no pass of its own",
                    self.trispec.cfg.proxy_model,
                )
                return
            self.trispec_fused = False
            logger.info("TriSpec: loading proxy %s", self.trispec.cfg.proxy_model)
            self.trispec_proxy = proxy_runner.load_proxy(
                self.vllm_config, self.trispec.cfg.proxy_model
            )

        def _trispec_record_drafter(self) -> bool:
            """Make vLLM's greedy draft-model drafter keep the logits of its drafting
            passes (it computes them to take the argmax, then drops them)."""
            drafter = getattr(self, "drafter", None)
            if drafter is None or not hasattr(drafter, "_greedy_sample"):
                return False
            if getattr(drafter, "use_local_argmax_reduction", False) or getattr(
                drafter, "use_heterogeneous_vocab", False
            ):
                return False

            def greedy_sample(hidden_states: torch.Tensor) -> torch.Tensor:
                logits = drafter.model.compute_logits(hidden_states)
                if self._trispec_recording is not None:
                    self._trispec_recording.append(logits)
                return logits.argmax(dim=-1)

            drafter._greedy_sample = greedy_sample
            return True

        @torch.inference_mode()
        def _dummy_run(self, num_tokens, *args, **kwargs):
            """vLLM's warm-up/profile pass, extended to the proxy so that it is
            compiled (and its memory counted) before the first request, not during it."""
            out = super()._dummy_run(num_tokens, *args, **kwargs)
            if self.trispec_proxy is not None:
                with set_forward_context(None, self.vllm_config, num_tokens=num_tokens):
                    self.trispec_proxy(
                        input_ids=self.input_ids.gpu[:num_tokens],
                        positions=self._get_positions(num_tokens),
                    )
            return out

        def _target_layer_names(self) -> list[str]:
            return [
                n
                for n in self._kv_layer_names()
                if not proxy_runner.is_proxy_layer(n) and not n.startswith("draft_model.")
            ]

        def _proxy_layer_names(self) -> list[str]:
            return [n for n in self._kv_layer_names() if proxy_runner.is_proxy_layer(n)]

        def _kv_layer_names(self) -> list[str]:
            return [n for g in self.kv_cache_config.kv_cache_groups for n in g.layer_names]

        def execute_model(self, scheduler_output, intermediate_tensors=None):
            if self.execute_model_state is not None:
                raise RuntimeError("sample_tokens() must be called after execute_model()")
            t_start = time.perf_counter()
            deferred = self._update_states(scheduler_output)
            self.trispec.forget(self.requests.keys())
            if not scheduler_output.total_num_scheduled_tokens:
                return EMPTY_MODEL_RUNNER_OUTPUT
            if len(self.kv_cache_config.kv_cache_groups) != 1:
                raise RuntimeError("TriSpec supports models with one KV cache group only")

            num_reqs = self.input_batch.num_reqs
            req_ids = list(self.input_batch.req_ids)
            num_sched = np.array(
                [scheduler_output.num_scheduled_tokens[r] for r in req_ids], dtype=np.int32
            )
            if self._trispec_plain_step(scheduler_output, req_ids, num_sched):
                return self._trispec_vllm_step(
                    scheduler_output, intermediate_tensors, deferred, req_ids, num_sched, t_start
                )
            num_tokens = scheduler_output.total_num_scheduled_tokens
            logits_indices, spec_meta, max_sampled = self._prepare_inputs(
                scheduler_output, num_sched
            )
            cg_mode, batch_desc, _, tokens_across_dp, cg_stats = (
                self._determine_batch_execution_and_padding(
                    num_tokens=num_tokens,
                    num_reqs=num_reqs,
                    num_scheduled_tokens_np=num_sched,
                    max_num_scheduled_tokens=int(num_sched.max()),
                    use_cascade_attn=False,
                    num_encoder_reqs=0,
                    allow_microbatching=False,
                )
            )
            slot_by_group, slot_by_layer = self._get_slot_mappings(
                num_tokens_padded=num_tokens,
                num_reqs_padded=num_reqs,
                num_tokens_unpadded=num_tokens,
            )
            attn_md, spec_cm = self._build_attention_metadata(
                num_tokens=num_tokens,
                num_reqs=num_reqs,
                max_query_len=int(num_sched.max()),
                logits_indices=logits_indices,
                max_num_sampled_tokens=max_sampled,
                use_spec_decode=True,
                num_scheduled_tokens=scheduler_output.num_scheduled_tokens,
                slot_mappings=slot_by_group,
            )
            input_ids, inputs_embeds, positions, _, model_kwargs, _ = self._preprocess(
                scheduler_output, num_tokens, None
            )

            def on_vllm_batch(model) -> torch.Tensor:
                """`model` over vLLM's own batch, inputs and attention metadata."""
                with set_forward_context(
                    attn_md,
                    self.vllm_config,
                    num_tokens=num_tokens,
                    num_tokens_across_dp=tokens_across_dp,
                    cudagraph_runtime_mode=cg_mode,
                    batch_descriptor=batch_desc,
                    slot_mapping=slot_by_layer,
                ):
                    return model(
                        input_ids=input_ids, positions=positions, inputs_embeds=inputs_embeds
                    )

            t_prepared = time.perf_counter()
            batch = self._trispec_batch(req_ids, num_sched, spec_meta)
            self._trispec_step_batch = batch
            # 1. Proxy over every scheduled token of every request (none above
            # max_proxy_batch; from its own watermark when it skipped earlier steps).
            logits = proxy_hidden = own_known = None
            if self.trispec_fused:
                logits, own_known = self._trispec_own_rows(batch)
            elif not self.trispec.skip_proxy(batch):
                proxy_wm = self.trispec.proxy_watermarks(batch)
                if (proxy_wm < batch.num_computed).any():
                    logits = self._trispec_proxy_catchup(batch, proxy_wm)
                else:
                    proxy_hidden = on_vllm_batch(self.trispec_proxy)
                    logits = self.trispec_proxy.compute_logits(proxy_hidden[logits_indices])
                self.trispec.proxy_ran(batch)

            t_proxy = time.perf_counter()
            # 2. Route every request on the proxy's margins.
            plan = self.trispec.plan(batch, logits, own_drafts=own_known)
            self._trispec_no_bonus = None
            if own_known is not None and plan.decision.proxy_completes.any():
                self._trispec_no_bonus = plan.decision.proxy_completes.numpy()

            t_routed = time.perf_counter()
            # 3. Target on the escalated sub-batch, from each watermark to the end.
            hidden_size = self.model_config.get_hidden_size()
            hidden_states = torch.zeros(
                (num_tokens, hidden_size), dtype=self.model_config.dtype, device=self.device
            )
            proxy_logits = logits
            tb = None
            if plan.escalated_rows.size:
                bt = self.input_batch.block_table[0]
                tb = self.trispec.target_batch(
                    batch, plan, self.input_batch.token_ids_cpu, bt.get_cpu_tensor(), bt.block_size
                )
                if tb.num_reqs == num_reqs and tb.num_tokens == num_tokens:
                    # Every request escalated with nothing to catch up: the target's batch
                    # is vLLM's own, so it runs on vLLM's inputs and attention metadata.
                    target_hidden = on_vllm_batch(self.model)
                    self.trispec.stats.native_target_steps += 1
                else:
                    target_hidden = self._trispec_forward(
                        tb, self._target_layer_names(), self.model
                    )
                logit_rows, hidden_rows = self.trispec.target_rows(batch, plan, tb)
                if logit_rows.size:
                    dev = self.device
                    target_logits = self.model.compute_logits(
                        target_hidden[torch.from_numpy(hidden_rows).to(dev)]
                    )
                    if logits is None:  # no proxy this step: every row is the target's
                        logits = target_logits.new_empty(
                            (len(logits_indices), target_logits.shape[1])
                        )
                    else:  # never narrow the target's rows to the proxy's dtype
                        wide = torch.promote_types(logits.dtype, target_logits.dtype)
                        logits = logits.to(wide, copy=True)
                    logits[torch.from_numpy(logit_rows).to(dev)] = target_logits.to(logits.dtype)
                    self.trispec.observe_target(
                        batch, plan, logit_rows, target_logits.argmax(dim=-1).cpu().numpy()
                    )
                # Target hidden states of this step's tokens, where the target ran
                # (prompt logprobs read them for prefilling requests).
                src, dst = self._trispec_step_token_map(batch, tb)
                hidden_states[dst] = target_hidden[src].to(hidden_states.dtype)
            self._trispec_override = fuzzy = None
            if plan.pyramid_rows is not None and plan.pyramid_rows.any():
                tokens, fuzzy = pyramid_tokens(
                    self.trispec.cfg,
                    batch,
                    plan,
                    proxy_logits,
                    logits,
                    self.input_batch.generators,
                )
                self._trispec_override = (plan.pyramid_rows, tokens)
            step = self.trispec.finish(batch, plan, tb, fuzzy)
            t_end = time.perf_counter()
            step.add_times(
                prepare=t_prepared - t_start,
                proxy=t_proxy - t_prepared,
                route=t_routed - t_proxy,
                target=t_end - t_routed,
            )
            self.trispec.stats.add_times(**step.times)
            self._trispec_last_step = step

            self.execute_model_state = ExecuteModelState(
                scheduler_output,
                logits,
                spec_meta,
                spec_cm,
                hidden_states,
                hidden_states[logits_indices],
                None,
                None,
                cg_stats,
                slot_by_layer,
            )
            self.kv_connector_output = None
            if deferred:
                deferred()
            return None

        def _trispec_plain_step(self, scheduler_output, req_ids, num_sched) -> bool:
            """Whether this step is plain decoding, run by vLLM's own code: a batch at
            `disable_by_batch_size` or above, no drafts scheduled, and nothing for the
            target to catch up."""
            if not self.trispec.speculation_disabled(len(req_ids)):
                return False
            if scheduler_output.scheduled_spec_decode_tokens:
                return False
            computed = self.input_batch.num_computed_tokens_cpu[: len(req_ids)]
            return self.trispec.target_up_to_date(req_ids, computed)

        def _trispec_vllm_step(
            self, scheduler_output, intermediate_tensors, deferred, req_ids, num_sched, t_start
        ):
            """vLLM's own execute_model over the already-updated batch; the target's
            watermarks advance, the proxy's stay (it catches up when it next runs)."""
            computed = self.input_batch.num_computed_tokens_cpu[: len(req_ids)].copy()
            self._update_states = lambda _: deferred  # the batch is already updated
            try:
                out = super().execute_model(scheduler_output, intermediate_tensors)
            finally:
                del self._update_states
            self._trispec_step_batch = None
            self._trispec_override = self._trispec_no_bonus = None
            self._trispec_last_step = self.trispec.plain_step(
                req_ids, computed, num_sched, time.perf_counter() - t_start
            )
            return out

        def propose_draft_token_ids(self, scheduler_output, *args, **kwargs):
            """vLLM's drafter, except in batches where speculation is disabled; when the
            proxy is the drafter, its logits at each draft are kept for the next step."""
            num_reqs = self.input_batch.num_reqs
            if self.trispec.speculation_disabled(num_reqs):
                return [[] for _ in range(num_reqs)]
            if not self.trispec_fused:
                return super().propose_draft_token_ids(scheduler_output, *args, **kwargs)
            self._trispec_recording = []
            try:
                out = super().propose_draft_token_ids(scheduler_output, *args, **kwargs)
                passes = self._trispec_recording
            finally:
                self._trispec_recording = None
            self._trispec_own = None
            if passes and all(p.shape[0] >= num_reqs for p in passes):
                own = torch.stack([p[:num_reqs] for p in passes], dim=1)  # [R, K, V]
                self._trispec_own = (list(self.input_batch.req_ids), own)
            return out

        def _trispec_own_rows(self, batch):
            """The proxy's logits rows of this step from the drafter's last proposal
            (draft positions; bonus rows are zeros and never trusted), and [B] whether
            a request's drafts came from that proposal."""
            b = len(batch.req_ids)
            n = batch.num_drafts
            offsets = batch.row_offsets()
            known = np.zeros(b, dtype=bool)
            rec, self._trispec_own = self._trispec_own, None
            vocab = self.model_config.get_vocab_size()
            if rec is None:
                return torch.zeros((int((n + 1).sum()), vocab), device=self.device), known
            rec_ids, own = rec
            where = {r: i for i, r in enumerate(rec_ids)}
            src_req, src_pos, dst = [], [], []
            for i, req_id in enumerate(batch.req_ids):
                j = where.get(req_id)
                if j is None or not 0 < n[i] <= own.shape[1]:
                    continue
                known[i] = True
                src_req += [j] * int(n[i])
                src_pos += range(int(n[i]))
                dst += range(int(offsets[i]), int(offsets[i] + n[i]))
            rows = own.new_zeros((int((n + 1).sum()), own.shape[2]))
            if dst:
                dev = own.device
                rows[torch.tensor(dst, device=dev)] = own[
                    torch.tensor(src_req, device=dev), torch.tensor(src_pos, device=dev)
                ]
            return rows, known

        def sample_tokens(self, grammar_output):
            t0 = time.perf_counter()
            out = super().sample_tokens(grammar_output)
            if self._trispec_last_step is not None:
                # vLLM's sampler, bookkeeping and the drafter's proposal for the next step.
                elapsed = time.perf_counter() - t0
                self._trispec_last_step.add_times(sample_and_draft=elapsed)
                self.trispec.stats.add_times(sample_and_draft=elapsed)
            step = self._trispec_last_step
            if step is not None and hasattr(out, "sampled_token_ids"):
                for req_id, tokens in zip(out.req_ids, out.sampled_token_ids, strict=False):
                    if req_id in step.per_request:
                        step.per_request[req_id][3] = len(tokens)
                emitted = sum(len(t) for t in out.sampled_token_ids)
                step.emitted_tokens = emitted
                self.trispec.stats.emitted_tokens += emitted
                self._trispec_last_step = None
                # Ride vLLM's worker -> scheduler stats channel (KV connectors are
                # refused with TriSpec, so the channel is otherwise unused).
                if out.kv_connector_output is None:
                    out.kv_connector_output = KVConnectorOutput(
                        kv_connector_stats=KVConnectorStats(data={STATS_KEY: step.as_dict()})
                    )
            return out

        # vLLM's V1 runner rewinds a seeded request's generator by offset when the
        # token it sampled is discarded (a partial prefill chunk); CPU generators
        # have no offset, so on CPU the state is saved before sampling and put back.
        def _discarded_cpu_generators(self) -> dict[int, torch.Generator]:
            if self.device.type != "cpu":
                return {}
            rows = np.nonzero(self.discard_request_mask.np[: self.input_batch.num_reqs])[0]
            gens = self.input_batch.generators
            return {int(i): gens[int(i)] for i in rows if int(i) in gens}

        def _sample(self, logits, spec_decode_metadata):
            saved = {i: g.get_state() for i, g in self._discarded_cpu_generators().items()}
            out = super()._sample(logits, spec_decode_metadata)
            for i, state in saved.items():
                self.input_batch.generators[i].set_state(state)
            batch = self._trispec_step_batch
            if spec_decode_metadata is not None and batch is not None and batch.mixed_sampling:
                # vLLM 0.32's CPU rejection sampler can overwrite greedy requests'
                # tokens when sampled requests share the batch; greedy verification
                # is deterministic, so redo it for the plain-greedy rows.
                fixed = greedy_verify(
                    logits,
                    batch.num_drafts,
                    batch.draft_tokens,
                    batch.plain_greedy,
                    out.sampled_token_ids,
                )
                out.sampled_token_ids.copy_(fixed)
            if self._trispec_override is not None:
                rows, tokens = self._trispec_override
                self._trispec_override = None
                ids = out.sampled_token_ids
                idx = torch.from_numpy(np.nonzero(rows)[0]).to(ids.device)
                ids[idx] = tokens[:, : ids.shape[1]][idx.cpu()].to(ids.device, ids.dtype)
            if self._trispec_no_bonus is not None and batch is not None:
                drop_bonus(out.sampled_token_ids, self._trispec_no_bonus, batch.num_drafts)
                self._trispec_no_bonus = None
            return out

        def _bookkeeping_sync(self, *args, **kwargs):
            hidden = self._discarded_cpu_generators()
            for i in hidden:
                del self.input_batch.generators[i]
            try:
                return super()._bookkeeping_sync(*args, **kwargs)
            finally:
                self.input_batch.generators.update(hidden)

        def _trispec_batch(self, req_ids, num_sched, spec_meta) -> StepBatch:
            ib = self.input_batch
            b = len(req_ids)
            if spec_meta is None:
                num_drafts = np.zeros(b, dtype=np.int64)
                drafts = torch.zeros(0, dtype=torch.long)
            else:
                num_drafts = np.asarray(spec_meta.num_draft_tokens, dtype=np.int64)
                drafts = spec_meta.draft_token_ids
            greedy = np.array([r in ib.greedy_reqs for r in req_ids], dtype=bool)
            # Penalties, bad words and allowed-token masks change the sampled
            # distribution in ways the proxy's margins do not see: never trusted.
            plain = ib.frequency_penalties_cpu[:b] == 0
            plain &= ib.presence_penalties_cpu[:b] == 0
            plain &= ib.repetition_penalties_cpu[:b] == 1
            for row in ib.bad_words_token_ids:
                if row < b:
                    plain[row] = False
            if ib.allowed_token_ids_mask_cpu_tensor is not None:
                plain &= ~ib.allowed_token_ids_mask_cpu_tensor[:b].any(dim=1).numpy()
            biased, min_p = processed_rows(ib.logitsprocs, b)
            plain &= ~biased
            return StepBatch(
                req_ids=req_ids,
                mixed_sampling=bool(greedy.any() and not greedy.all()),
                num_scheduled=num_sched.astype(np.int64),
                num_computed=ib.num_computed_tokens_cpu[:b].astype(np.int64),
                num_prompt=ib.num_prompt_tokens[:b].astype(np.int64),
                num_drafts=num_drafts,
                draft_tokens=drafts,
                trust_allowed=plain,
                temperature=np.where(greedy, 0.0, ib.temperature_cpu[:b]).astype(np.float32),
                plain_greedy=plain & greedy,
                untruncated=~min_p
                & np.array(
                    [r not in ib.top_k_reqs and r not in ib.top_p_reqs for r in req_ids], dtype=bool
                ),
            )

        def _trispec_step_token_map(self, batch, tb):
            """Indices mapping the target's tokens of this step to the full batch."""
            full_start = np.zeros(len(batch.req_ids), dtype=np.int64)
            np.cumsum(batch.num_scheduled[:-1], out=full_start[1:])
            src, dst = [], []
            for i, r in enumerate(tb.rows):
                s = int(batch.num_scheduled[r])
                src.append(tb.step_offsets[i] + np.arange(s))
                dst.append(full_start[r] + np.arange(s))
            dev = self.device
            return (
                torch.from_numpy(np.concatenate(src)).to(dev),
                torch.from_numpy(np.concatenate(dst)).to(dev),
            )

        def _trispec_proxy_catchup(self, batch, proxy_wm) -> torch.Tensor:
            """The proxy over every request from its watermark (the tokens of steps it
            skipped, then this step's), returning its logits at the sampled rows."""
            from trispec_vllm.step import sampled_hidden_rows
            from trispec_vllm.target_batch import build_target_batch

            bt = self.input_batch.block_table[0]
            rows = np.arange(len(batch.req_ids))
            tb = build_target_batch(
                rows,
                proxy_wm,
                batch.num_computed,
                batch.num_scheduled,
                self.input_batch.token_ids_cpu,
                bt.get_cpu_tensor(),
                bt.block_size,
            )
            hidden = self._trispec_forward(tb, self._proxy_layer_names(), self.trispec_proxy)
            self.trispec.stats.proxy_catchup_tokens += int((batch.num_computed - proxy_wm).sum())
            idx = sampled_hidden_rows(batch, tb, np.zeros(rows.size, dtype=np.int64))
            return self.trispec_proxy.compute_logits(hidden[torch.from_numpy(idx).to(self.device)])

        def _trispec_forward(self, tb, layer_names, model) -> torch.Tensor:
            """One model over a custom sub-batch (catch-up included), on its own layers."""
            dev = self.device
            qsl_cpu = tb.query_start_loc
            slot = tb.slot_mapping.to(dev)
            cm = CommonAttentionMetadata(
                query_start_loc=qsl_cpu.to(dev),
                query_start_loc_cpu=qsl_cpu,
                seq_lens=tb.seq_lens.to(dev),
                num_reqs=tb.num_reqs,
                num_actual_tokens=tb.num_tokens,
                max_query_len=tb.max_query_len,
                max_seq_len=tb.max_seq_len,
                block_table_tensor=tb.block_table.to(dev),
                slot_mapping=slot,
                causal=True,
                positions=tb.positions.to(dev),
                seq_lens_cpu_upper_bound=tb.seq_lens,
            )
            layers = set(layer_names)
            attn_md = {}
            for group in self.attn_groups[0]:
                names = [n for n in group.layer_names if n in layers]
                if names:
                    md = group.build_metadata(cm, 0)
                    attn_md.update(dict.fromkeys(names, md))
            with set_forward_context(
                attn_md,
                self.vllm_config,
                num_tokens=tb.num_tokens,
                slot_mapping=dict.fromkeys(layers, slot),
            ):
                return model(input_ids=tb.token_ids.to(dev), positions=tb.positions.to(dev))

    return TriSpecRunnerMixin


def processed_rows(logitsprocs, b: int) -> tuple[np.ndarray, np.ndarray]:
    """[B] bool masks of the rows vLLM's built-in logits processors change this step:
    (logit_bias or an active min_tokens, which can move the argmax, so such requests
    never trust the proxy; min_p, a truncation like top-k/top-p)."""
    from vllm.v1.sample.logits_processor.builtin import (
        LogitBiasLogitsProcessor,
        MinPLogitsProcessor,
        MinTokensLogitsProcessor,
    )

    biased = np.zeros(b, dtype=bool)
    min_p = np.zeros(b, dtype=bool)
    for proc in getattr(logitsprocs, "all", ()):
        if isinstance(proc, LogitBiasLogitsProcessor):
            biased[[i for i in proc.biases if i < b]] = True
        elif isinstance(proc, MinTokensLogitsProcessor):
            biased[[i for i in proc.min_toks if i < b]] = True
        elif isinstance(proc, MinPLogitsProcessor) and proc.min_p_count:
            min_p |= proc.min_p_cpu[:b] > 0
    return biased, min_p


def proxy_is_drafter(cfg: TriSpecConfig, spec) -> bool:
    """Whether the proxy is vLLM's greedy draft model itself (same checkpoint): then
    the drafter's own passes give the proxy's verdict and no second copy is loaded."""
    if spec is None or spec.method != "draft_model" or spec.model is None:
        return False
    if cfg.policy != "trispec" or cfg.max_proxy_batch is not None:
        return False
    if getattr(spec, "draft_sample_method", "greedy") != "greedy":
        return False
    return Path(spec.model).expanduser().resolve() == Path(cfg.proxy_model).expanduser().resolve()


def expand_batch_to_tokens(
    x: torch.Tensor,
    cu_num_tokens: torch.Tensor,
    num_tokens: int,
    replace_from: int = 0,
    replace_to: int = 0,
) -> torch.Tensor:
    """vLLM's `rejection_sampler.expand_batch_to_tokens` in plain torch.

    vLLM 0.32's CPU fallback for the Triton `expand_kernel` casts its output
    to int64 and never writes it back, so float inputs (temperature, top-p)
    come out as uninitialised memory: speculative sampling at temperature > 0
    then samples from a garbage-scaled target distribution on CPU.
    """
    counts = torch.diff(cu_num_tokens.long(), prepend=cu_num_tokens.new_zeros(1).long())
    out = torch.repeat_interleave(x, counts, output_size=num_tokens)
    if replace_from != replace_to:
        out = torch.where(out == replace_from, torch.full_like(out, replace_to), out)
    return out


def install_cpu_sampling_fix() -> None:
    """Route vLLM's rejection sampler through the plain-torch expand (CPU only)."""
    from vllm.v1.sample import rejection_sampler

    rejection_sampler.expand_batch_to_tokens = expand_batch_to_tokens


def _cpu_runner_cls():
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner

    class TriSpecCPUModelRunner(_runner_mixin(), CPUModelRunner):
        def __init__(self, vllm_config, device) -> None:
            super().__init__(vllm_config, device)
            install_cpu_sampling_fix()
            self._trispec_setup()

    return TriSpecCPUModelRunner


def _gpu_runner_cls():
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    class TriSpecGPUModelRunner(_runner_mixin(), GPUModelRunner):
        def __init__(self, vllm_config, device) -> None:
            super().__init__(vllm_config, device)
            self._trispec_setup()

    return TriSpecGPUModelRunner


def _trispec_counters(worker) -> dict[str, Any]:
    """The worker's running totals, and adaptive lambda's engine-wide start (a level)."""
    step = worker.model_runner.trispec
    out = step.stats.as_dict()
    if step.adaptive is not None:
        out["adaptive_start_lambda"] = step.adaptive.start
    return out


def _cpu_worker_cls():
    from unittest import mock

    from vllm.v1.worker import cpu_worker

    class TriSpecCPUWorker(cpu_worker.CPUWorker):
        """vLLM's CPU worker with TriSpec's model runner (always the V1 runner)."""

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.use_v2_model_runner = False

        def init_device(self) -> None:
            with mock.patch.object(cpu_worker, "CPUModelRunner", _cpu_runner_cls()):
                super().init_device()

        def trispec_counters(self) -> dict[str, Any]:
            return _trispec_counters(self)

    return TriSpecCPUWorker


def _gpu_worker_cls():
    from vllm.v1.worker.gpu_worker import Worker

    class TriSpecGPUWorker(Worker):
        """vLLM's GPU worker with TriSpec's model runner (always the V1 runner)."""

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.use_v2_model_runner = False

        def _make_model_runner(self):
            return _gpu_runner_cls()(self.vllm_config, self.device)

        def trispec_counters(self) -> dict[str, Any]:
            return _trispec_counters(self)

    return TriSpecGPUWorker


_LAZY = {"TriSpecCPUWorker": _cpu_worker_cls, "TriSpecGPUWorker": _gpu_worker_cls}


def __getattr__(name: str):
    """Build the worker classes on first use (vLLM resolves them by qualified name),
    so importing this module for the config hook stays cheap."""
    if name in _LAZY:
        cls = _LAZY[name]()
        cls.__module__ = __name__
        globals()[name] = cls
        return cls
    raise AttributeError(name)
