"""TriSpec's counters, accumulated in the worker and read by the stat loggers."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

# Prometheus names (exactly these) and their help texts.
COUNTERS = {
    "proxy_steps": "Engine steps with a proxy pass.",
    "target_steps": "Engine steps in which the target model ran.",
    "escalations": "Request-steps sent to the target.",
    "proxy_completions": "Request-steps completed by the proxy alone.",
    "emitted_tokens": "Tokens output by TriSpec steps.",
}


@dataclass
class TriSpecStats:
    proxy_steps: int = 0
    target_steps: int = 0
    escalations: int = 0
    proxy_completions: int = 0
    emitted_tokens: int = 0
    catchup_tokens: int = 0

    def add(self, other: TriSpecStats) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, int]:
        return asdict(self)
