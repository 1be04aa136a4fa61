"""The `trispec` section of vLLM's `additional_config`, validated with pydantic.

vLLM's `SpeculativeConfig` forbids unknown keys, so TriSpec rides on an
existing drafter method and carries its own settings here. Everything is
checked before any weights load, so a typo costs seconds, not a model load.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SECTION = "trispec"

# Drafters whose proposals the proxy can check. EAGLE-style drafters need the
# proxy's hidden states through an adapter, which does not exist yet.
# `suffix` would fit the same path as `ngram` but needs arctic_inference, which is not
# installable here, so it stays refused until it can be tested.
SUPPORTED_DRAFTERS = ("ngram", "draft_model")


class TriSpecConfigError(ValueError):
    """A clear, user-facing problem with the `trispec` configuration."""


class TriSpecConfig(BaseModel):
    """User settings for three-stage speculative decoding.

    `margin_threshold` is the paper's lambda: a position is trusted when the
    proxy's top-1 minus top-2 probability is at least lambda. Any value above
    1 never trusts the proxy: every step is standard speculative decoding
    (the lossless mode).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)

    proxy_model: str = Field(
        min_length=1, description="Path or name of the proxy (same vocabulary as the target)."
    )
    margin_threshold: float = Field(
        default=0.5,
        ge=0.0,
        allow_inf_nan=False,
        description="lambda; > 1 means never trust the proxy (lossless).",
    )
    policy: Literal["trispec"] = Field(default="trispec", description="Routing policy.")
    max_skips: int = Field(
        default=4,
        ge=0,
        le=64,
        description="Most consecutive steps a request may be completed by the proxy alone "
        "before it is sent to the target (bounds the target's catch-up length).",
    )
    ride_along: Literal["none", "all"] = Field(
        default="none",
        description="Once the target runs in a step, whether requests the proxy would "
        "complete are verified by the target too ('all': fewer trusted-but-wrong tokens, "
        "more target work) or not ('none': the default; the proxy's verdict stands and the "
        "target catches up later).",
    )

    @property
    def lossless(self) -> bool:
        """True when the proxy is never trusted: output equals the target's."""
        return self.margin_threshold > 1.0


def parse_trispec_config(additional_config: dict[str, Any] | None) -> TriSpecConfig | None:
    """Return the validated `trispec` section, None when absent.

    Raises TriSpecConfigError with every problem listed in one message.
    """
    if not additional_config or SECTION not in additional_config:
        return None
    section = additional_config[SECTION]
    if isinstance(section, TriSpecConfig):
        return section
    if not isinstance(section, dict):
        raise TriSpecConfigError(
            f"additional_config['{SECTION}'] must be a JSON object, got {type(section).__name__}"
        )
    try:
        return TriSpecConfig.model_validate(section)
    except ValidationError as err:
        raise TriSpecConfigError(_format_errors(err)) from None


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or SECTION
        if e["type"] == "extra_forbidden":
            known = ", ".join(TriSpecConfig.model_fields)
            lines.append(f"unknown key '{key}' (known keys: {known})")
        elif e["type"] == "missing":
            lines.append(f"missing required key '{key}'")
        else:
            lines.append(f"'{key}': {e['msg']} (got {e.get('input')!r})")
    return "invalid additional_config['trispec']: " + "; ".join(lines)
