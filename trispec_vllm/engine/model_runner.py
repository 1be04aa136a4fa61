"""TriSpec's model runner: vLLM's V1 runner with the three-stage step.

`execute_model` runs the phases of a step: prepare (vLLM's own inputs and the
policy's view of the batch), proxy (one pass over every scheduled token, or
the draft model's recorded passes), route (margins -> which requests need the
target), target (the escalated sub-batch, catching up skipped positions) and
finish (the logits vLLM's sampler sees: the target's rows where it verified,
the proxy's elsewhere). vLLM's sampler, scheduler and output path then run
unchanged. State handed to `sample_tokens` lives in one `StepState`.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
from vllm.forward_context import set_forward_context
from vllm.v1.outputs import EMPTY_MODEL_RUNNER_OUTPUT
from vllm.v1.worker.cpu_model_runner import CPUModelRunner
from vllm.v1.worker.gpu_model_runner import ExecuteModelState, GPUModelRunner

from trispec_vllm import cpu_runtime
from trispec_vllm.config import parse_trispec_config
from trispec_vllm.engine import (
    cost_memory,
    cpu_workarounds,
    draft_call,
    fused_drafter,
    kernel_warmup,
    learned_drafter,
    lora,
    prefix_cache,
    proxy,
    proxy_drafting,
    proxy_vocab,
    ranks,
    sampler_path,
)
from trispec_vllm.engine.batch_inputs import grammar_rows, step_batch
from trispec_vllm.engine.forward import (
    check_kv_cache_kinds,
    forward_sub_batch,
    proxy_catchup,
    step_token_map,
)
from trispec_vllm.engine.stats import attach_step_stats
from trispec_vllm.engine.step_state import PreparedStep, StepState, TimedStep
from trispec_vllm.engine.upload import upload
from trispec_vllm.engine.waiting import WAITING_ATTR
from trispec_vllm.policy.batch import StepPlan, decoding_rows
from trispec_vllm.policy.cost import (
    KINDS,
    CostModel,
    batch_horizon,
    drafts_needed,
    kind_with_prompts,
    kinds_for,
    step_kinds,
)
from trispec_vllm.policy.kv_blocks import GroupLedgers
from trispec_vllm.policy.sampling import (
    drop_bonus,
    greedy_verify,
    pyramid_tokens,
    relabel_logprobs,
)
from trispec_vllm.policy.step import TriSpecStep
from trispec_vllm.policy.target_batch import TargetBatch

logger = logging.getLogger("vllm.trispec")


def log_choice(size_class: int, kind: str, rates: dict[str, float], objective: str) -> None:
    """The cost-aware step's choice for a batch-size class changed (engine log)."""
    measured = ", ".join(f"{k} {v:.2f}" for k, v in rates.items() if v > 0)
    per = " of the slowest request" if objective == "slowest request" else ""
    logger.info(
        "TriSpec: batches of up to %d requests now run %s steps (measured tok/s%s: %s)",
        size_class,
        kind,
        per,
        measured or "none yet",
    )


class TriSpecRunnerMixin:
    """The TriSpec overrides, mixed in before vLLM's CPU or GPU V1 model runner."""

    trispec: TriSpecStep

    def _trispec_setup(self) -> None:
        cfg = parse_trispec_config(self.vllm_config.additional_config)
        assert cfg is not None
        self.trispec = TriSpecStep(cfg)
        self.trispec_proxy = None
        self.trispec_state = StepState()
        self.trispec_routed_steps = 0
        self.trispec_kernels_warmed = False
        # The proxy is the draft model itself: its drafting passes give the margins.
        spec = self.vllm_config.speculative_config
        self.trispec_fused = fused_drafter.proxy_is_drafter(cfg, spec)
        # The draft kind's verifying step routes on the drafts' own margins (lossy only).
        self.trispec_trusts_drafts = cfg.policy == "trispec" and not cfg.lossless
        self.trispec_cost = None  # the cost-aware step (policy/cost.py)
        self.trispec_waiting = True  # requests wait for a slot (unknown: assume so)
        # The learned drafter drafts from the proxy's features: the proxy runs every step.
        self.trispec_learned = learned_drafter.learned_drafter(self)
        # max_proxy_batch and disable_by_batch_size are the user's own choice of kind.
        overridden = cfg.max_proxy_batch is not None or cfg.disable_by_batch_size is not None
        learned = self.trispec_learned is not None
        if cfg.cost_aware and not self.trispec_fused and not overridden and not learned:
            ngram = spec is not None and spec.method == "ngram"
            self.trispec_cost = CostModel(
                kinds=step_kinds(cfg.lossless, ngram, ngram and cfg.proxy_drafting),
                on_change=log_choice,
            )
        # Measurements kept across engine restarts (engine/cost_memory.py).
        self.trispec_cost_memory = cost_memory.open_memory(self, cfg, self.trispec_cost)
        self.trispec_next_kind: str | None = None  # chosen when the drafter proposes
        self.trispec_learning = False  # that choice is a learning run's (policy/cost.py)
        # Seconds the proxy spent drafting in this step's sampling call (for the next
        # step), and in the previous one (for this step): booked on the step that
        # verifies the drafts, not on the one whose sampling it followed.
        self.trispec_draft_secs = 0.0
        self.trispec_drafted_for = 0.0
        # The prefix cache's block ledger (engine/prefix_cache.py); False: not made yet.
        self.trispec_blocks: GroupLedgers | None | bool = False
        # The decoding step to book on the cost-aware step once sampled.
        self.trispec_measure: TimedStep | None = None
        # Drafts of the requests held with nothing to emit (max_holds), proposed
        # again: their context has not moved, and the ngram drafter skips a request
        # that sampled nothing.
        self.trispec_held_drafts: dict[str, list[int]] = {}

    # ------------------------------------------------------------------ loading

    def load_model(self, *args, **kwargs) -> None:
        super().load_model(*args, **kwargs)
        drafter = getattr(self, "drafter", None)
        if self.trispec_fused and fused_drafter.record_drafter_logits(drafter, self.trispec_state):
            logger.info(
                "TriSpec: the proxy is the draft model (%s): its drafting passes give the "
                "margins, so it is loaded once and needs no pass of its own",
                self.trispec.cfg.proxy_model,
            )
            self._trispec_proxy_vocab(drafter.model)
            return
        self.trispec_fused = False
        logger.info("TriSpec: loading proxy %s", self.trispec.cfg.proxy_model)
        self.trispec_proxy = proxy.load_proxy(self.vllm_config, self.trispec.cfg.proxy_model)
        self._trispec_proxy_vocab(self.trispec_proxy)

    def _trispec_proxy_vocab(self, model) -> None:
        size = getattr(self.trispec.cfg, "proxy_vocab", None)
        if size is not None:
            n = proxy_vocab.apply_proxy_vocab(model, self.model_config, size)
            logger.info(
                "TriSpec: the proxy's logits cover %d of %d tokens (proxy_vocab %d)",
                n,
                self.model_config.get_vocab_size(),
                size,
            )

    def initialize_kv_cache(self, kv_cache_config, *args, **kwargs) -> None:
        check_kv_cache_kinds(kv_cache_config, self.model_config.model)
        super().initialize_kv_cache(kv_cache_config, *args, **kwargs)
        # Once, on the input batch the steps use (vLLM's CPU runner runs no warm-up
        # pass in eager mode, so `_dummy_run` is not the place).
        kernel_warmup.warm_ngram_drafter(
            getattr(self, "drafter", None),
            self.input_batch.num_tokens_no_spec,
            self.input_batch.token_ids_cpu,
        )

    @torch.inference_mode()
    def _dummy_run(self, num_tokens, *args, **kwargs):
        """vLLM's warm-up/profile pass, extended to the proxy so that it is
        compiled (and its memory counted) before the first request, not during it;
        the first call also warms TriSpec's Triton kernels (`kernel_warmup`)."""
        out = super()._dummy_run(num_tokens, *args, **kwargs)
        if not self.trispec_kernels_warmed:
            self.trispec_kernels_warmed = True
            spec = self.vllm_config.speculative_config
            k = spec.num_speculative_tokens if spec is not None else 0
            kernel_warmup.warm_kernels(
                self.trispec.cfg,
                self.model_config.get_vocab_size(),
                self.model_config.dtype,
                self.device,
                max_rows=self.max_num_reqs * (k + 1),
            )
        if self.trispec_proxy is not None:
            with set_forward_context(None, self.vllm_config, num_tokens=num_tokens):
                self.trispec_proxy(
                    input_ids=self.input_ids.gpu[:num_tokens],
                    positions=self._get_positions(num_tokens),
                )
        return out

    def kv_layer_names(self) -> list[str]:
        return [n for g in self.kv_cache_config.kv_cache_groups for n in g.layer_names]

    def target_layer_names(self) -> list[str]:
        return [
            n
            for n in self.kv_layer_names()
            if not proxy.is_proxy_layer(n) and not n.startswith("draft_model.")
        ]

    def proxy_layer_names(self) -> list[str]:
        return [n for n in self.kv_layer_names() if proxy.is_proxy_layer(n)]

    # ------------------------------------------------------------------ the step

    def execute_model(self, scheduler_output, intermediate_tensors=None):
        if self.execute_model_state is not None:
            raise RuntimeError("sample_tokens() must be called after execute_model()")
        t_start = time.perf_counter()
        if self.trispec_learned is not None:
            self.trispec_learned.feed(None)  # until the proxy runs in this step
        deferred = self._update_states(scheduler_output)
        blocks = self._trispec_ledger()
        if blocks is not None:  # before forget: a resumed request restarts its marks
            prefix_cache.admit(blocks, self.trispec, scheduler_output)
            blocks.forget(self.requests.keys())
        self.trispec.forget(self.requests.keys())
        # Requests waiting for a slot (patch 11); unknown counts as some.
        self.trispec_waiting = getattr(scheduler_output, WAITING_ATTR, 1) > 0
        if not scheduler_output.total_num_scheduled_tokens:
            return EMPTY_MODEL_RUNNER_OUTPUT
        req_ids = list(self.input_batch.req_ids)
        num_sched = np.array(
            [scheduler_output.num_scheduled_tokens[r] for r in req_ids], dtype=np.int32
        )
        if blocks is not None:
            computed = self.input_batch.num_computed_tokens_cpu[: len(req_ids)]
            prefix_cache.book(blocks, self.trispec, req_ids, computed)
        self.trispec_measure = None
        if self._plain_step(scheduler_output, req_ids, num_sched):
            if self.trispec_cost is not None and self._decoding(req_ids, num_sched).all():
                self.trispec_measure = TimedStep(
                    "plain", len(req_ids), t_start, False, self.trispec_learning
                )
            return self._vllm_step(
                scheduler_output, intermediate_tensors, deferred, req_ids, num_sched, t_start
            )
        prep = self._prepare(scheduler_output, req_ids, num_sched)
        self.trispec.begin_step(prep.batch)
        if self.trispec_cost is not None:
            decoding = decoding_rows(prep.batch).all()
            if self.input_batch.all_greedy:
                chosen = self._step_kind(len(req_ids))
                run = "sd" if chosen == "draft" else chosen  # the proxy drafted already
                # Its drafts' margins came with them: the step routes on those.
                prep.proxy_drafted = chosen == "draft" and self.trispec_state.own is not None
                # (a fused drafter's proxy has read the prompt chunks already)
                kind = run if self.trispec_fused else kind_with_prompts(run, not decoding)
                self.trispec.stats.prompt_steps_without_proxy += int(kind != run)
            else:
                # Sampled requests draw from their seeded generators differently in each
                # kind of step: one kind only, so a seed gives the same sample every run.
                kind = "sd" if self.trispec.cfg.lossless else "trispec"
            if decoding and self.input_batch.all_greedy:
                # No draft scheduled and no proxy: the step costs what plain decoding does.
                drafted = bool(prep.batch.num_drafts.any())
                plain = kind == "sd" and not drafted
                kind_run = "plain" if plain else chosen
                self.trispec_measure = TimedStep(
                    kind_run, len(req_ids), t_start, drafted, self.trispec_learning
                )
            prep.kind = kind
        t_prepared = time.perf_counter()
        proxy_logits, own_known = self._run_proxy(prep)
        t_proxy = time.perf_counter()
        plan = self._route(prep, proxy_logits, own_known)
        t_routed = time.perf_counter()
        logits, hidden_states, tb = self._run_target(prep, plan, proxy_logits)
        self._finish(prep, plan, proxy_logits, logits, tb)
        stats = self.trispec_state.stats
        stats.add_times(
            prepare=t_prepared - t_start,
            proxy=t_proxy - t_prepared,
            route=t_routed - t_proxy,
            target=time.perf_counter() - t_routed,
        )
        self.trispec.stats.add_times(**stats.times)
        self.execute_model_state = ExecuteModelState(
            scheduler_output,
            logits,
            prep.spec_meta,
            prep.spec_cm,
            hidden_states,
            hidden_states[prep.logits_indices],
            None,
            None,
            prep.cg_stats,
            prep.slot_by_layer,
        )
        self.kv_connector_output = None
        if deferred:
            deferred()
        return None

    def _trispec_ledger(self) -> GroupLedgers | None:
        """The prefix cache's block ledger, made once the KV cache exists (None with
        prefix caching off)."""
        if self.trispec_blocks is False:
            self.trispec_blocks = prefix_cache.ledger_for(self.vllm_config, self.kv_cache_config)
        return self.trispec_blocks

    def _prepare(self, scheduler_output, req_ids: list[str], num_sched) -> PreparedStep:
        """Phase 1: vLLM's inputs and attention metadata for its own batch."""
        num_reqs = len(req_ids)
        num_tokens = scheduler_output.total_num_scheduled_tokens
        logits_indices, spec_meta, max_sampled = self._prepare_inputs(scheduler_output, num_sched)
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
        input_ids, inputs_embeds, positions, _, _, _ = self._preprocess(
            scheduler_output, num_tokens, None
        )

        def run_on_vllm_batch(model) -> torch.Tensor:
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
                return model(input_ids=input_ids, positions=positions, inputs_embeds=inputs_embeds)

        grammar = grammar_rows(self.requests, req_ids, scheduler_output)
        batch = step_batch(self.input_batch, req_ids, num_sched, spec_meta, grammar)
        self.trispec_state.batch = batch
        return PreparedStep(
            scheduler_output=scheduler_output,
            batch=batch,
            num_tokens=num_tokens,
            logits_indices=logits_indices,
            spec_meta=spec_meta,
            spec_cm=spec_cm,
            cg_stats=cg_stats,
            slot_by_layer=slot_by_layer,
            run_on_vllm_batch=run_on_vllm_batch,
        )

    def _run_proxy(self, prep: PreparedStep) -> tuple[torch.Tensor | None, np.ndarray | None]:
        """Phase 2: the proxy's logits at every sampled row (None: no proxy this
        step), and, when the proxy drafted, which requests its rows cover."""
        batch = prep.batch
        if self.trispec_fused or prep.proxy_drafted:
            vocab = self.model_config.get_vocab_size()
            rows, known = fused_drafter.own_rows(self.trispec_state, batch, vocab, self.device)
            if prep.proxy_drafted:
                self.trispec.proxy_drafted(batch, known)
            return rows, known
        if self.trispec.skip_proxy(batch) or prep.kind == "sd":
            return None, None
        proxy_wm = self.trispec.proxy_watermarks(batch)
        if (proxy_wm < batch.num_computed).any():
            hidden_rows, logits = proxy_catchup(self, self.trispec_proxy, batch, proxy_wm)
            self.trispec.stats.proxy_catchup_tokens += int((batch.num_computed - proxy_wm).sum())
        else:
            hidden = prep.run_on_vllm_batch(self.trispec_proxy)
            hidden_rows = hidden[prep.logits_indices]
            logits = self.trispec_proxy.compute_logits(hidden_rows)
        self.trispec.proxy_ran(batch)
        prompt_rows = ~decoding_rows(batch)
        self.trispec.stats.proxy_prompt_tokens += int(batch.num_scheduled[prompt_rows].sum())
        if self.trispec_learned is not None:
            self.trispec_learned.feed(
                learned_drafter.step_features(
                    batch, self.input_batch.token_ids_cpu, hidden_rows, logits
                )
            )
        return logits, None

    def _route(self, prep: PreparedStep, proxy_logits, own_known) -> StepPlan:
        """Phase 3: margins and routing for every request. If routing fails, the step
        is standard speculative decoding (every request verified by the target, so
        every output stays exact) and the error is logged with the step's requests:
        one request's trouble must not take the engine and every request down."""
        try:
            plan = self.trispec.plan(prep.batch, proxy_logits, own_drafts=own_known)
        except Exception:  # noqa: BLE001 - any routing failure: fall back, keep serving
            logger.exception(
                "TriSpec: routing failed for requests %s; this step is standard speculative "
                "decoding (the target verifies every request)",
                prep.batch.req_ids,
            )
            self.trispec.stats.routing_fallbacks += 1
            plan = self.trispec.plan(prep.batch, None)
            own_known = None
        self.trispec_routed_steps += 1
        ranks.check_agreement(plan, self.device, self.trispec_routed_steps)
        state = self.trispec_state
        state.no_bonus = None
        if own_known is not None and plan.decision.proxy_completes.any():
            state.no_bonus = plan.decision.proxy_completes.numpy()
        return plan

    def _run_target(
        self, prep: PreparedStep, plan: StepPlan, proxy_logits
    ) -> tuple[torch.Tensor, torch.Tensor, TargetBatch | None]:
        """Phase 4: the target over the escalated sub-batch, from each watermark to
        the end; returns (logits rows for vLLM's sampler, hidden states, sub-batch)."""
        batch = prep.batch
        hidden_states = torch.zeros(
            (prep.num_tokens, self.model_config.get_hidden_size()),
            dtype=self.model_config.dtype,
            device=self.device,
        )
        logits = proxy_logits
        if not plan.escalated_rows.size:
            return logits, hidden_states, None
        bt = self.input_batch.block_table[0]
        tb = self.trispec.target_batch(
            batch, plan, self.input_batch.token_ids_cpu, bt.get_cpu_tensor(), bt.block_size
        )
        if tb.num_reqs == len(batch.req_ids) and tb.num_tokens == prep.num_tokens:
            # Every request escalated with nothing to catch up: the target's batch
            # is vLLM's own, so it runs on vLLM's inputs and attention metadata.
            target_hidden = prep.run_on_vllm_batch(self.model)
            self.trispec.stats.native_target_steps += 1
        else:
            target_hidden = forward_sub_batch(self, tb, self.target_layer_names(), self.model)
        logit_rows, hidden_rows = self.trispec.target_rows(batch, plan, tb)
        # Target hidden states of this step's tokens, where the target ran
        # (prompt logprobs read them for prefilling requests).
        src, dst = step_token_map(batch, tb)
        logit_rows_d, hidden_rows_d, src_d, dst_d = upload(
            [torch.from_numpy(a) for a in (logit_rows, hidden_rows, src, dst)], self.device
        )
        if logit_rows.size:
            if lora.enabled(self, self.model):
                # The rows read here, not vLLM's batch's (nor a sub-batch's last piece).
                tokens = lora.token_adapters(self, tb)
                lora.activate(self, tokens, tokens[hidden_rows])
            target_logits = self.model.compute_logits(target_hidden[hidden_rows_d])
            if logits is None:  # no proxy this step: every row is the target's
                logits = target_logits.new_empty((len(prep.logits_indices), target_logits.shape[1]))
            else:  # never narrow the target's rows to the proxy's dtype
                wide = torch.promote_types(logits.dtype, target_logits.dtype)
                logits = logits.to(wide, copy=True)
            logits[logit_rows_d] = target_logits.to(logits.dtype)
            if self.trispec.adaptive is not None:  # the only reader of the target's argmax
                self.trispec.observe_target(
                    batch, plan, logit_rows, target_logits.argmax(dim=-1).cpu().numpy()
                )
        hidden_states[dst_d] = target_hidden[src_d].to(hidden_states.dtype)
        return logits, hidden_states, tb

    def _finish(self, prep: PreparedStep, plan: StepPlan, proxy_logits, logits, tb) -> None:
        """Phase 5: PyramidSD's tokens, watermarks and the step's counts."""
        state = self.trispec_state
        state.override = fuzzy = None
        if plan.pyramid_rows is not None and plan.pyramid_rows.any():
            tokens, fuzzy = pyramid_tokens(
                self.trispec.cfg,
                prep.batch,
                plan,
                proxy_logits,
                logits,
                self.input_batch.generators,
            )
            state.override = (plan.pyramid_rows, tokens)
        if plan.held is not None:
            # Held requests emit their trusted prefix only (none: vLLM's scheduler
            # rolls the step back, engine/held.py).
            state.override = (plan.held, torch.from_numpy(plan.held_tokens))
            drafts = plan.drafts.numpy()
            self.trispec_held_drafts = {
                prep.batch.req_ids[r]: drafts[r, : int(prep.batch.num_drafts[r])].tolist()
                for r in np.nonzero(plan.held_empty())[0]
            }
        state.stats = self.trispec.finish(prep.batch, plan, tb, fuzzy)

    def _plain_step(self, scheduler_output, req_ids, num_sched) -> bool:
        """Whether this step is plain decoding, run by vLLM's own code: a batch at
        `disable_by_batch_size` or above, no drafts scheduled, and nothing for the
        target to catch up."""
        plain = self.trispec_next_kind == "plain" or self._prefill_only(req_ids, num_sched)
        if not plain and not self.trispec.speculation_disabled(len(req_ids)):
            return False
        if scheduler_output.scheduled_spec_decode_tokens:
            return False
        computed = self.input_batch.num_computed_tokens_cpu[: len(req_ids)]
        return self.trispec.target_up_to_date(req_ids, computed)

    def _prefill_only(self, req_ids, num_sched) -> bool:
        """With the cost-aware step, a step of prompt chunks only is vLLM's own: the
        target computes every first token either way, and the proxy reads a prompt
        only if a TriSpec step follows (it catches up then), not for requests that
        the cost-aware step then decodes without it. Greedy batches only: sampled
        requests stay on one kind of step (their seeded draws differ between kinds)."""
        cost = self.trispec_cost
        if cost is None or "plain" not in cost.kinds or not self.input_batch.all_greedy:
            return False
        return not self._decoding(req_ids, num_sched).any()

    def _step_kind(self, num_reqs: int) -> str:
        """This step's kind among those that run TriSpec's path: the one chosen when
        the drafter proposed; for a plain choice the step could not follow (the target
        still had positions to catch up, which vLLM's own step cannot), an SD step
        without drafts, that is the catch-up plus plain decoding, after which plain
        steps can follow (a TriSpec step there would let the proxy complete tokens the
        target then lags behind again: at batch 4 on a 2-core CPU eleven such steps ran
        in a row, each half again a plain step's time); else (first step, sampled
        requests) a fresh choice."""
        kind = self.trispec_next_kind
        if kind in ("trispec", "sd", "draft"):
            return kind
        if kind == "plain":
            return "sd"
        # (the drafter has proposed already: the proxy drafts for no step chosen now)
        kinds = tuple(k for k in self.trispec_cost.kinds if k not in ("plain", "draft"))
        return self._choose_kind(num_reqs, kinds, self._horizon(num_reqs))

    def _choose_kind(
        self,
        num_reqs: int,
        allowed: tuple[str, ...],
        horizon: int | None,
        undrafted: bool = False,
    ) -> str:
        """The cost-aware choice among `allowed` (`horizon`: `_horizon`; `undrafted`:
        some request got no draft); rank 0's under tensor parallelism."""
        kind = self.trispec_cost.choose(
            num_reqs,
            allowed=allowed,
            req_ids=list(self.input_batch.req_ids[:num_reqs]),
            waiting=self.trispec_waiting,
            horizon=horizon,
            undrafted=undrafted,
        )
        self.trispec_learning = self.trispec_cost.learning_choice
        return ranks.rank0_kind(kind, KINDS, self.device)

    def _horizon(self, num_reqs: int) -> int | None:
        """The most steps the running batch can still take when nothing waits (its
        longest request's tokens left); None while requests wait for a slot."""
        if self.trispec_waiting:
            return None
        ib = self.input_batch
        total = ib.num_tokens_no_spec[:num_reqs]
        params = (self.requests[r].sampling_params for r in ib.req_ids[:num_reqs])
        return batch_horizon(
            [p.max_tokens if p is not None else None for p in params],
            (total - ib.num_prompt_tokens[:num_reqs]).tolist(),
            (self.max_model_len - total).tolist(),
        )

    def _decoding(self, req_ids, num_sched) -> np.ndarray:
        """[B] bool: requests decoding one token this step (no prefill chunk)."""
        b = len(req_ids)
        computed = self.input_batch.num_computed_tokens_cpu[:b]
        return (num_sched == 1) & (computed >= self.input_batch.num_prompt_tokens[:b])

    def _vllm_step(
        self, scheduler_output, intermediate_tensors, deferred, req_ids, num_sched, t_start
    ):
        """vLLM's own execute_model over the already-updated batch; the target's
        watermarks advance, the proxy's stay (it catches up when it next runs)."""
        computed = self.input_batch.num_computed_tokens_cpu[: len(req_ids)].copy()
        decoding = self._decoding(req_ids, num_sched)
        self._update_states = lambda _: deferred  # the batch is already updated
        try:
            out = super().execute_model(scheduler_output, intermediate_tensors)
        finally:
            del self._update_states
        state = self.trispec_state
        state.end_step()
        state.stats = self.trispec.plain_step(
            req_ids, computed, num_sched, time.perf_counter() - t_start, decoding
        )
        return out

    # ------------------------------------------------------------ sampling side

    def propose_draft_token_ids(self, scheduler_output, *args, **kwargs):
        """`_propose`, and the drafts of requests held with nothing emitted again."""
        drafts = self._propose(scheduler_output, *args, **kwargs)
        held, self.trispec_held_drafts = self.trispec_held_drafts, {}
        if held and isinstance(drafts, list) and self.trispec_next_kind != "plain":
            for row, req_id in enumerate(self.input_batch.req_ids[: len(drafts)]):
                if req_id in held and not drafts[row]:
                    drafts[row] = held[req_id]
        return drafts

    def _propose(self, scheduler_output, *args, **kwargs):
        """vLLM's drafter, except in batches where speculation is disabled; when the
        proxy is the drafter, its logits at each draft are kept for the next step.
        With the cost-aware step the next step's kind is chosen here, once the drafts
        are known (a plain step drops them)."""
        num_reqs = self.input_batch.num_reqs
        if self.trispec.speculation_disabled(num_reqs):
            return [[] for _ in range(num_reqs)]
        self.trispec_next_kind = None
        self.trispec_learning = False
        propose = super().propose_draft_token_ids
        if self.trispec_fused:
            return fused_drafter.propose_recorded(
                lambda: propose(scheduler_output, *args, **kwargs),
                self.trispec_state,
                list(self.input_batch.req_ids),
            )
        cost = self.trispec_cost
        if cost is None or not num_reqs or not self.input_batch.all_greedy:
            return propose(scheduler_output, *args, **kwargs)
        ids = list(self.input_batch.req_ids[:num_reqs])
        drafts = None
        # Rank 0's answer (its own timings), so every rank proposes alike.
        horizon = self._horizon(num_reqs)
        needed = drafts_needed(cost, num_reqs, ids, self.trispec_waiting, horizon)
        if ranks.rank0_flag(needed, self.device):
            drafts = propose(scheduler_output, *args, **kwargs)
        # Chosen once the drafts are known: a step without any is never an SD step, one
        # without a sampled token never a draft step (`kinds_for`). (Skipped drafts:
        # plain decoding is settled either way, so any set serves.)
        sampled = args[0] if args and isinstance(args[0], list) else None
        drafted = drafts is None or isinstance(drafts, torch.Tensor) or any(map(len, drafts))
        undrafted = isinstance(drafts, list) and not all(map(len, drafts))
        proxy_can = isinstance(drafts, list) and sampled is not None and any(map(len, sampled))
        allowed = kinds_for(cost.kinds, drafted, drafts is None or proxy_can)
        kind = self._choose_kind(num_reqs, allowed, horizon, undrafted)
        self.trispec_next_kind = kind
        if drafts is None and kind != "plain":
            # Not expected (the prediction and the choice run the same code); kept
            # so that a step that is not plain never goes without its drafts.
            drafts = propose(scheduler_output, *args, **kwargs)
        if kind == "plain":
            self.trispec.stats.plain_steps_without_drafter += int(drafts is None)
            return [[] for _ in range(num_reqs)]
        if kind == "draft":
            t0 = time.perf_counter()
            k = min(
                self.speculative_config.num_speculative_tokens,
                scheduler_output.num_spec_tokens_to_schedule,
            )
            made = (
                proxy_drafting.fill_drafts(self, drafts, sampled, k, self.trispec_trusts_drafts)
                if sampled
                else 0
            )
            self.trispec_draft_secs = time.perf_counter() - t0
            self.trispec.stats.proxy_drafted_tokens += made
            if self.trispec_state.stats is not None:  # this step's, for the metrics
                self.trispec_state.stats.proxy_drafted_tokens += made
            if not made:  # no request had room for a draft: what runs is an SD step
                self.trispec_next_kind = "sd"
        return drafts

    def sample_tokens(self, grammar_output):
        t0 = time.perf_counter()
        self.trispec_draft_secs = 0.0
        out = super().sample_tokens(grammar_output)
        draft_call.mark_no_drafts(out, self._draft_token_ids)
        drafted_for, self.trispec_drafted_for = self.trispec_drafted_for, self.trispec_draft_secs
        state = self.trispec_state
        step = state.stats
        if step is None:
            return out
        # vLLM's sampler, bookkeeping and the drafter's proposal for the next step.
        elapsed = time.perf_counter() - t0
        step.add_times(sample_and_draft=elapsed)
        self.trispec.stats.add_times(sample_and_draft=elapsed)
        if self.trispec_learned is not None:
            learned_drafter.book_counts(self.trispec_learned, step, self.trispec.stats)
        if hasattr(out, "sampled_token_ids"):
            emitted_by = {}
            for req_id, tokens in zip(out.req_ids, out.sampled_token_ids, strict=False):
                emitted_by[req_id] = len(tokens)
                if req_id in step.per_request:
                    step.per_request[req_id][3] = len(tokens)
            emitted = sum(len(t) for t in out.sampled_token_ids)
            step.emitted_tokens = emitted
            self.trispec.stats.emitted_tokens += emitted
            if self.trispec_measure is not None:
                timed, self.trispec_measure = self.trispec_measure, None
                kind = timed.kind
                secs = time.perf_counter() - timed.t_start - self.trispec_draft_secs + drafted_for
                self.trispec_cost.observe(
                    kind, timed.num_reqs, secs, emitted, emitted_by, timed.drafted, timed.learning
                )
                if self.trispec_cost_memory is not None:
                    self.trispec_cost_memory.measured()
                name = f"{kind}_kind_steps"
                setattr(step, name, 1)
                setattr(self.trispec.stats, name, getattr(self.trispec.stats, name) + 1)
                if kind == "draft":
                    step.draft_kind_tokens = emitted
                    self.trispec.stats.draft_kind_tokens += emitted
                    step.draft_kind_trusted = step.proxy_completions
                    self.trispec.stats.draft_kind_trusted += step.proxy_completions
            state.end_step()
            attach_step_stats(out, step)
        return out

    def _sample(self, logits, spec_decode_metadata):
        saved = {
            i: g.get_state() for i, g in cpu_workarounds.discarded_cpu_generators(self).items()
        }
        plainly = sampler_path.samples_plainly(
            spec_decode_metadata, self.input_batch.sampling_metadata
        )
        out = super()._sample(logits, None if plainly else spec_decode_metadata)
        for i, state in saved.items():
            self.input_batch.generators[i].set_state(state)
        st = self.trispec_state
        batch = st.batch
        # vLLM's logprobs name the tokens its sampler chose; those replaced below get
        # theirs recomputed (`relabel_logprobs`).
        lp = out.logprobs_tensors if batch is not None else None
        before = out.sampled_token_ids.clone() if lp is not None else None
        if (
            self.device.type == "cpu"
            and spec_decode_metadata is not None
            and batch is not None
            and batch.mixed_sampling
        ):
            fixed = greedy_verify(
                logits,
                batch.num_drafts,
                batch.draft_tokens,
                batch.plain_greedy,
                out.sampled_token_ids,
            )
            out.sampled_token_ids.copy_(fixed)
        if st.override is not None:
            rows, tokens = st.override
            st.override = None
            ids = out.sampled_token_ids
            idx = torch.from_numpy(np.nonzero(rows)[0]).to(ids.device)
            ids[idx] = tokens[:, : ids.shape[1]][idx.cpu()].to(ids.device, ids.dtype)
            # A row left with no token (a held request): vLLM drops a -1 only in steps
            # with drafts, so the row is discarded as a prompt chunk's is.
            empty = rows & (tokens[:, 0] < 0).numpy()
            self.discard_request_mask.np[: len(empty)] |= empty
        if st.no_bonus is not None and batch is not None:
            drop_bonus(out.sampled_token_ids, st.no_bonus, batch.num_drafts)
            st.no_bonus = None
        if lp is not None:
            relabel_logprobs(
                lp.logprob_token_ids,
                lp.logprobs,
                lp.selected_token_ranks,
                before,
                out.sampled_token_ids,
                logits,
                batch.row_offsets(),
                batch.request_temperatures(),
                self.sampler.logprobs_mode,
            )
        return out

    def _bookkeeping_sync(self, *args, **kwargs):
        hidden = cpu_workarounds.discarded_cpu_generators(self)
        for i in hidden:
            del self.input_batch.generators[i]
        try:
            return super()._bookkeeping_sync(*args, **kwargs)
        finally:
            self.input_batch.generators.update(hidden)


class TriSpecCPUModelRunner(TriSpecRunnerMixin, CPUModelRunner):
    def __init__(self, vllm_config, device) -> None:
        cpu_runtime.keep_torch_threads()  # before vLLM builds its ngram drafter
        super().__init__(vllm_config, device)
        cpu_workarounds.install_cpu_sampling_fix()
        self._trispec_setup()


class TriSpecGPUModelRunner(TriSpecRunnerMixin, GPUModelRunner):
    def __init__(self, vllm_config, device) -> None:
        super().__init__(vllm_config, device)
        self._trispec_setup()
