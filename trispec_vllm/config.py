"""The `trispec` section of vLLM's `additional_config`, validated with pydantic.

vLLM's `SpeculativeConfig` forbids unknown keys, so TriSpec rides on an
existing drafter method and carries its own settings here. Everything is
checked before any weights load, so a typo costs seconds, not a model load.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)

SECTION = "trispec"
# The smallest `proxy_vocab`: below it no tokenizer's most frequent tokens cover text.
MIN_PROXY_VOCAB = 256

# Drafters whose proposals the proxy can check; `custom_class` means TriSpec's own
# learned drafter (vLLM's EAGLE heads are trained on the target, not the proxy).
# `suffix` would fit the same path as `ngram` but needs arctic_inference, which is not
# installable here, so it stays refused until it can be tested.
SUPPORTED_DRAFTERS = ("ngram", "draft_model", "custom_class")
# The one custom_class proposer TriSpec runs: its learned drafter.
LEARNED_DRAFTER = "trispec_vllm.drafter.LearnedDrafter"


class TriSpecConfigError(ValueError):
    """A clear, user-facing problem with the `trispec` configuration."""


class _Section(BaseModel):
    """Settings every policy shares."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)

    proxy_model: str = Field(
        min_length=1, description="Path or name of the proxy (same vocabulary as the target)."
    )
    max_skips: int = Field(
        default=4,
        ge=0,
        le=64,
        description="Most consecutive steps a request may be completed by the proxy alone "
        "before it is sent to the target (bounds the target's catch-up length).",
    )
    ride_along: Literal["none", "expiring", "all"] = Field(
        default="none",
        description="Once the target runs in a step, which requests the proxy would "
        "complete are verified by the target too (trusted prefix kept): 'none' (the "
        "default: the proxy's verdict stands and the target catches up later; each "
        "request's output depends on its own tokens only), 'expiring' (requests that would "
        "reach max_skips next step, so their forced escalations line up with the batch's "
        "instead of costing a target pass of their own) or 'all' (fewer trusted-but-wrong "
        "tokens, more target work). 'expiring' and 'all' make a lossy request's output "
        "depend on its batch neighbours (docs/determinism.md).",
    )
    max_proxy_batch: int | None = Field(
        default=None,
        ge=1,
        description="Skip the proxy in steps with more decoding requests than this: at large "
        "batches the target's pass is compute-bound and the proxy pass is pure extra work, so "
        "such steps are standard speculative decoding; the proxy catches its KV cache up when "
        "it next runs. None (default): always run the proxy.",
    )
    cost_aware: bool = Field(
        default=True,
        description="Choose each step's kind from the engine's own timings: the TriSpec "
        "step, standard speculative decoding on the target (no proxy pass) or, with the "
        "ngram drafter, plain decoding (no drafts), whichever has emitted the most tokens "
        "per second at this batch size (measured per power-of-two batch-size class, every "
        "kind retried now and then; a step where ngram found no draft decodes plainly or, "
        "with proxy_drafting, on the proxy's drafts). Exact in lossless mode; in lossy "
        "mode a request's tokens then depend on its batch and on timing. max_proxy_batch and "
        "disable_by_batch_size, when set, decide first.",
    )
    proxy_drafting: bool = Field(
        default=False,
        description="With the cost-aware step and vLLM's ngram drafter: steps whose drafts "
        "the proxy writes (greedily, k passes, as vLLM's draft_model drafter does) instead "
        "of the ngram drafter, whose drafts are free but few or wrong on text that does not "
        "repeat itself; the target verifies them like any others, so this changes no token "
        "in lossless mode; in lossy mode the verifying step routes on the margins of the "
        "proxy's own drafts, and a request whose drafts it all trusts skips the target. "
        "It is one more step kind (`draft`) the cost-aware step measures "
        "and chooses only where it emits more tokens per second. Off by default: on a 2-core "
        "CPU the default section ran slower with it at batch 1 and 8 (docs/policies.md).",
    )
    cost_memory: bool = Field(
        default=True,
        description="Keep the cost-aware step's measurements in a file (under "
        "TRISPEC_COST_DIR, one per models, drafter, section and hardware) and start from "
        "them at the next engine start, instead of measuring every kind again. Files "
        "older than 30 days, unreadable or of another setup are ignored.",
    )
    disable_by_batch_size: int | None = Field(
        default=None,
        ge=1,
        description="Steps with at least this many running requests decode without "
        "speculation: the drafter proposes nothing, the proxy does not run and the step is "
        "vLLM's own (as vLLM V0's speculative_disable_by_batch_size did). On few cores a "
        "large batch is compute-bound, so drafts and proxy passes only add work. The proxy "
        "and the target catch their KV caches up when the batch shrinks again. Drafters "
        "with a KV cache of their own (draft_model) are refused. None (default): never.",
    )

    # The learned drafter (speculative_config method 'custom_class' with
    # trispec_vllm.drafter.LearnedDrafter): refused with any other drafter.
    drafter_learning: bool | None = Field(
        default=None,
        description="Train the learned drafter online from each step's verifications "
        "(DVI's rule). None (default): on when the learned drafter is selected.",
    )
    drafter_checkpoint: str | None = Field(
        default=None,
        min_length=1,
        description="File the learned drafter loads its head from at start (if it exists) "
        "and saves it to, atomically, every drafter_save_every updates and at shutdown; "
        "`trispec-vllm train-drafter` writes one. None: start from the proxy's last layer, "
        "keep nothing.",
    )
    drafter_lr: float = Field(
        default=5e-4, gt=0.0, le=1.0, allow_inf_nan=False, description="AdamW learning rate."
    )
    drafter_buffer: int = Field(
        default=4096, ge=16, le=1 << 20, description="Replay buffer size (training windows)."
    )
    drafter_batch: int = Field(default=16, ge=1, le=4096, description="Windows per update.")
    drafter_update_every: int = Field(
        default=4, ge=1, le=1 << 16, description="Engine steps between optimiser steps."
    )
    drafter_min_examples: int = Field(
        default=64, ge=1, description="Windows the buffer must hold before the first update."
    )
    drafter_save_every: int = Field(
        default=100, ge=1, description="Optimiser steps between checkpoint saves."
    )

    @model_validator(mode="after")
    def _drafter_sizes(self) -> _Section:
        if self.drafter_min_examples > self.drafter_buffer:
            raise ValueError(
                f"drafter_min_examples {self.drafter_min_examples} is above drafter_buffer "
                f"{self.drafter_buffer}"
            )
        return self

    def drafter_keys_set(self) -> list[str]:
        """The learned drafter's settings given in the section."""
        return sorted(k for k in self.model_fields_set if k.startswith("drafter_"))


class MarginPolicy(_Section):
    """policy 'trispec': TriSpec's margin routing.

    `margin_threshold` is the paper's lambda: a position is trusted when the
    proxy's top-1 minus top-2 probability is at least lambda. Any value above
    1 never trusts the proxy: every step is standard speculative decoding
    (the lossless mode).
    """

    policy: Literal["trispec"] = Field(
        default="trispec",
        description="Routing policy: 'trispec' (margin routing, the target only for "
        "requests the proxy is unsure about) or 'pyramid' (PyramidSD's fuzzy acceptance: "
        "the proxy qualifies drafts, the target checks every step against the proxy).",
    )
    margin_threshold: float = Field(
        default=0.5,
        ge=0.0,
        allow_inf_nan=False,
        description="lambda; > 1 means never trust the proxy (lossless).",
    )
    max_holds: int = Field(
        default=0,
        ge=0,
        le=8,
        description="With the ngram drafter: most consecutive steps an escalated request "
        "may wait for the target. In a step where the proxy completes at least one request "
        "and every escalated request may still wait, the target does not run: the escalated "
        "requests keep their trusted prefix and reach the target in a later step, with that "
        "step's own escalations (requests due at max_skips complete with the proxy meanwhile "
        "and ride that pass), so whole steps skip the target (at 1, it runs in at most "
        "every other step of such a batch). A held request stands where the proxy was "
        "unsure again, so the target decides that position as it would have; which step "
        "that is, and so its later windows, depends on its batch neighbours "
        "(docs/determinism.md). 0 (default): never wait. Lossy mode only.",
    )
    proxy_vocab: int | None = Field(
        default=None,
        ge=MIN_PROXY_VOCAB,
        description="The proxy computes its logits over this many tokens only, the lowest "
        "ids (BPE and SentencePiece tokenizers number tokens roughly by frequency), plus "
        "the special tokens; every other token gets -inf, so the proxy never drafts or "
        "trusts it and the target decides there. At small batches the LM head is a large "
        "share of the proxy's pass (Qwen2.5 0.5B: 28% of its weights), so 32768 makes a "
        "proxy pass about a third cheaper on a CPU. Lossy mode only in effect: the proxy's "
        "probabilities are renormalised over the subset, so its margins grow a little "
        "(docs/policies.md has the measured cost). Needs tensor_parallel_size 1, an "
        "unquantized proxy LM head and a proxy other than the target. None (default): "
        "the whole vocabulary.",
    )
    adaptive_lambda: bool = Field(
        default=False,
        description="Adjust lambda per request online, from the proxy/target agreement "
        "observed where the target ran (margin_threshold is the starting value).",
    )
    target_disagreement: float = Field(
        default=0.05,
        gt=0.0,
        lt=1.0,
        description="Adaptive lambda's goal: share of would-be-trusted positions the "
        "target overrules.",
    )
    adaptive_rate: float = Field(default=0.02, gt=0.0, le=0.5, description="Step size.")
    lambda_min: float = Field(default=0.05, ge=0.0, le=2.0, description="Lowest adaptive lambda.")
    lambda_max: float = Field(
        default=1.0,
        ge=0.0,
        le=2.0,
        description="Highest adaptive lambda (above 1 lets a request fall back to lossless).",
    )
    adaptive_start: Literal["learned", "fixed"] = Field(
        default="learned",
        description="Where a new request's lambda starts: 'learned', at an engine-wide "
        "lambda that every request's trials move with the same rule (a server settles "
        "over its first requests); 'fixed', at margin_threshold.",
    )

    @model_validator(mode="after")
    def _adaptive_keys(self) -> MarginPolicy:
        given = self.model_fields_set & set(ADAPTIVE_KEYS)
        if given and not self.adaptive_lambda:
            raise ValueError(
                "target_disagreement, adaptive_rate, adaptive_start, lambda_min and "
                "lambda_max need adaptive_lambda: true"
            )
        if self.adaptive_lambda:
            if self.lambda_min > self.lambda_max:
                raise ValueError(
                    f"lambda_min {self.lambda_min} is above lambda_max {self.lambda_max}"
                )
            if not self.lambda_min <= self.margin_threshold <= self.lambda_max:
                raise ValueError(
                    f"margin_threshold {self.margin_threshold} (adaptive lambda's start) must "
                    f"lie in [lambda_min, lambda_max] = [{self.lambda_min}, {self.lambda_max}]"
                )
        return self

    @property
    def lossless(self) -> bool:
        """True when the proxy is never trusted: output equals the target's."""
        if self.adaptive_lambda:
            return self.lambda_min > 1.0
        return self.margin_threshold > 1.0


class PyramidPolicy(_Section):
    """policy 'pyramid': PyramidSD's fuzzy acceptance (never lossless)."""

    policy: Literal["pyramid"]
    pyramid_variant: Literal["psd_f", "psd_a"] = Field(
        default="psd_f",
        description="PSD_F: fuzzy at the proxy (tau_q) and the target (tau_t); PSD_A: the "
        "proxy verifies drafts exactly, only the target stage is fuzzy.",
    )
    divergence: Literal["js", "kl", "tv"] = Field(
        default="js", description="Divergence of the fuzzy tests (natural log)."
    )
    tau_q: float = Field(default=0.4, ge=0.0, description="PSD_F's proxy-stage threshold.")
    tau_t: float = Field(default=0.5, ge=0.0, description="PyramidSD's target-stage threshold.")

    @model_validator(mode="after")
    def _variant_keys(self) -> PyramidPolicy:
        if self.pyramid_variant == "psd_a" and "tau_q" in self.model_fields_set:
            raise ValueError("tau_q applies to pyramid_variant 'psd_f' only (PSD_A has no tau_q)")
        return self

    # The margin rule is off under PyramidSD.
    adaptive_lambda: ClassVar[bool] = False
    lossless: ClassVar[bool] = False


# The `trispec` section: one model per policy, chosen by its `policy` key.
TriSpecConfig = Annotated[MarginPolicy | PyramidPolicy, Field(discriminator="policy")]
_ADAPTER: TypeAdapter[MarginPolicy | PyramidPolicy] = TypeAdapter(TriSpecConfig)
ADAPTIVE_KEYS = (
    "target_disagreement",
    "adaptive_rate",
    "lambda_min",
    "lambda_max",
    "adaptive_start",
)
_POLICIES = {"trispec": MarginPolicy, "pyramid": PyramidPolicy}


def make_config(**section: Any) -> MarginPolicy | PyramidPolicy:
    """Validate a `trispec` section given as keywords (raises TriSpecConfigError)."""
    return parse_trispec_config({SECTION: section})


def parse_trispec_config(
    additional_config: dict[str, Any] | None,
) -> MarginPolicy | PyramidPolicy | None:
    """Return the validated `trispec` section, None when absent.

    Raises TriSpecConfigError with every problem listed in one message.
    """
    if not additional_config or SECTION not in additional_config:
        return None
    section = additional_config[SECTION]
    if isinstance(section, MarginPolicy | PyramidPolicy):
        return section
    if not isinstance(section, dict):
        raise TriSpecConfigError(
            f"additional_config['{SECTION}'] must be a JSON object, got {type(section).__name__}"
        )
    section = {"policy": "trispec", **section}
    try:
        return _ADAPTER.validate_python(section)
    except ValidationError as err:
        raise TriSpecConfigError(_format_errors(err, section.get("policy"))) from None


def _format_errors(err: ValidationError, policy: object) -> str:
    lines = []
    model = _POLICIES.get(policy) if isinstance(policy, str) else None
    for e in err.errors():
        loc = e["loc"][1:] if model is not None else e["loc"]  # drop the policy tag
        key = ".".join(str(p) for p in loc) or SECTION
        if e["type"] == "union_tag_invalid":
            lines.append(
                f"'policy': Input should be {' or '.join(repr(p) for p in _POLICIES)} "
                f"(got {policy!r})"
            )
        elif e["type"] == "extra_forbidden":
            owner = next((name for name, cls in _POLICIES.items() if key in cls.model_fields), None)
            if owner is not None and owner != policy:
                lines.append(f"{key}: only for policy '{owner}' (policy is '{policy}')")
            else:
                known = ", ".join(model.model_fields if model else _Section.model_fields)
                lines.append(f"unknown key '{key}' (known keys: {known})")
        elif e["type"] == "missing":
            lines.append(f"missing required key '{key}'")
        elif e["type"] == "value_error" and not loc:
            lines.append(str(e["ctx"]["error"]))
        else:
            lines.append(f"'{key}': {e['msg']} (got {e.get('input')!r})")
    return "invalid additional_config['trispec']: " + "; ".join(lines)
