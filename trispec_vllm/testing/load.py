"""Concurrent streaming load with client aborts against an OpenAI-compatible server.

Bounded and localhost only. Every completed answer is checked against the
prompt's answer when sent alone (greedy: a shorter answer is a prefix).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from dataclasses import asdict, dataclass, field

PROMPTS = [
    f"{w} " * (2 + i % 5) + f"item {i}:"
    for i, w in enumerate(
        [
            "def",
            "hello world",
            "x = 1",
            "the cat",
            "for i in",
            "import os",
            "return a",
            "class Foo",
            "print(",
            "# note",
        ]
        * 2
    )
]


@dataclass
class LoadResult:
    requests: int
    completed: int = 0
    aborted: int = 0
    errors: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    output_tokens: int = 0
    wall_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list, repr=False)

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.wall_s if self.wall_s else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_s:
            return float("nan")
        return statistics.quantiles(self.latencies_s, n=100, method="inclusive")[int(q) - 1]

    def summary(self) -> dict:
        d = asdict(self)
        d.pop("latencies_s")
        d.update(
            tokens_per_s=self.tokens_per_s, p50_s=self.percentile(50), p99_s=self.percentile(99)
        )
        return d


async def _alone(client, model, prompt, max_tokens) -> str:
    out = await client.completions.create(
        model=model,
        prompt=prompt,
        temperature=0,
        max_tokens=max_tokens,
        extra_body={"ignore_eos": True},
    )
    return out.choices[0].text


async def reference_answers(url: str, model: str, max_tokens: int) -> dict[str, str]:
    """Each prompt sent alone (greedy): longer answers start with shorter ones."""
    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    try:
        return {p: await _alone(client, model, p, max_tokens) for p in PROMPTS}
    finally:
        await client.close()


async def run_load(
    url: str,
    model: str,
    reference: dict[str, str],
    requests: int = 200,
    abort_share: float = 0.25,
    max_tokens: tuple[int, int] = (4, 48),
    seed: int = 0,
    timeout_s: float = 600,
) -> LoadResult:
    import openai

    rng = random.Random(seed)
    client = openai.AsyncOpenAI(
        base_url=url + "/v1", api_key="none", max_retries=0, timeout=timeout_s
    )
    res = LoadResult(requests=requests)

    async def one(i: int) -> None:
        prompt = rng.choice(PROMPTS)
        n = rng.randint(*max_tokens)
        abort_after = rng.randint(1, 3) if rng.random() < abort_share else None
        t0 = time.perf_counter()
        try:
            stream = await client.completions.create(
                model=model,
                prompt=prompt,
                temperature=0,
                max_tokens=n,
                stream=True,
                extra_body={"ignore_eos": True},
                stream_options={"include_usage": True},
            )
            parts, chunks, usage = [], 0, None
            async for chunk in stream:
                if chunk.usage is not None:
                    usage = chunk.usage
                if chunk.choices:
                    parts.append(chunk.choices[0].text)
                    chunks += 1
                if abort_after is not None and chunks >= abort_after:
                    await stream.close()
                    res.aborted += 1
                    return
            text = "".join(parts)
            res.latencies_s.append(time.perf_counter() - t0)
            res.completed += 1
            res.output_tokens += usage.completion_tokens if usage else 0
            if not reference[prompt].startswith(text) or (usage and usage.completion_tokens != n):
                res.mismatches.append(f"request {i}: {prompt!r} max_tokens={n}: {text!r}")
        except Exception as e:  # noqa: BLE001 - every failure is reported
            res.errors.append(f"request {i}: {type(e).__name__}: {e}")

    t0 = time.perf_counter()
    try:
        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(requests))), timeout_s)
    finally:
        await client.close()
    res.wall_s = time.perf_counter() - t0
    return res
