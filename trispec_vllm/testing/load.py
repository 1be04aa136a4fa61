"""Concurrent streaming load with client aborts against an OpenAI-compatible server.

Bounded and localhost only. Every completed answer is checked against a
reference: a greedy answer against the prompt's greedy answer (a shorter
answer is a prefix of it), a seeded sampled answer against the same request
(prompt, temperature, seed, max_tokens) sent alone, exactly.
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


@dataclass(frozen=True)
class Sampled:
    """A seeded sampled request: its answer must not depend on anything but these."""

    prompt: str
    seed: int
    max_tokens: int
    temperature: float = 1.5


def sampled_requests(
    n: int, max_tokens: tuple[int, int], temperature: float = 1.5, seed: int = 1
) -> list[Sampled]:
    """`n` distinct seeded requests over PROMPTS (two seeds per prompt, so that one
    prompt's answers can be told apart by seed)."""
    rng = random.Random(seed)
    return [
        Sampled(PROMPTS[(i // 2) % len(PROMPTS)], 1000 + i, rng.randint(*max_tokens), temperature)
        for i in range(n)
    ]


@dataclass
class LoadResult:
    requests: int
    completed: int = 0
    aborted: int = 0
    completed_sampled: int = 0  # of `completed`
    errors: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    output_tokens: int = 0
    wall_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list, repr=False)
    # Completed greedy answers as token ids: (prompt ids, output ids).
    greedy_token_ids: list[tuple[list[int], list[int]]] = field(default_factory=list, repr=False)

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.wall_s if self.wall_s else 0.0

    def percentile(self, q: float) -> float:
        if len(self.latencies_s) < 2:
            return float("nan")
        return statistics.quantiles(self.latencies_s, n=100, method="inclusive")[int(q) - 1]

    def summary(self) -> dict:
        d = asdict(self)
        d.pop("latencies_s")
        d.pop("greedy_token_ids")
        d.update(
            tokens_per_s=self.tokens_per_s, p50_s=self.percentile(50), p99_s=self.percentile(99)
        )
        return d


def _client(url: str, timeout_s: float = 600):
    import openai

    return openai.AsyncOpenAI(
        base_url=url + "/v1", api_key="none", max_retries=0, timeout=timeout_s
    )


def _params(max_tokens: int, sampled: Sampled | None) -> dict:
    temp = {"temperature": 0} if sampled is None else {"temperature": sampled.temperature}
    if sampled is not None:
        temp["seed"] = sampled.seed
    extra = {"ignore_eos": True, "return_token_ids": True}
    return {**temp, "max_tokens": max_tokens, "extra_body": extra}


async def _alone(client, model, prompt, max_tokens, sampled: Sampled | None = None) -> str:
    out = await client.completions.create(
        model=model, prompt=prompt, **_params(max_tokens, sampled)
    )
    return out.choices[0].text


async def reference_answers(
    url: str, model: str, max_tokens: int, prompts: list[str] | None = None
) -> dict[str, str]:
    """Each prompt sent alone (greedy): longer answers start with shorter ones."""
    client = _client(url)
    try:
        return {p: await _alone(client, model, p, max_tokens) for p in prompts or PROMPTS}
    finally:
        await client.close()


async def sampled_answers(url: str, model: str, requests: list[Sampled]) -> dict[Sampled, str]:
    """Each seeded request sent alone."""
    client = _client(url)
    try:
        return {s: await _alone(client, model, s.prompt, s.max_tokens, s) for s in requests}
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
    sampled: dict[Sampled, str] | None = None,
    sampled_share: float = 0.0,
    concurrency: int | None = None,
) -> LoadResult:
    """`requests` concurrent streams: greedy over the prompts of `reference` (random
    max_tokens in `max_tokens`), and a `sampled_share` of them seeded sampled
    requests drawn from `sampled` (their own max_tokens); an `abort_share` of all
    streams is closed by the client after 1-3 chunks. `concurrency` caps the streams
    in flight (None: all at once)."""
    rng = random.Random(seed)
    prompts = list(reference)
    kinds = list(sampled or {})
    if sampled_share and not kinds:
        raise ValueError("sampled_share needs sampled reference answers")
    client = _client(url, timeout_s)
    res = LoadResult(requests=requests)
    gate = asyncio.Semaphore(concurrency or requests)
    plan = []  # drawn up front: the same requests whatever the timing
    for _ in range(requests):
        kind = rng.choice(kinds) if kinds and rng.random() < sampled_share else None
        prompt = kind.prompt if kind else rng.choice(prompts)
        n = kind.max_tokens if kind else rng.randint(*max_tokens)
        abort_after = rng.randint(1, 3) if rng.random() < abort_share else None
        plan.append((kind, prompt, n, abort_after))

    async def one(i: int) -> None:
        async with gate:
            await _one(i, *plan[i])

    async def _one(i: int, kind: Sampled | None, prompt: str, n: int, abort_after) -> None:
        t0 = time.perf_counter()
        try:
            stream = await client.completions.create(
                model=model,
                prompt=prompt,
                stream=True,
                stream_options={"include_usage": True},
                **_params(n, kind),
            )
            parts, chunks, usage, prompt_ids, out_ids = [], 0, None, [], []
            async for chunk in stream:
                if chunk.usage is not None:
                    usage = chunk.usage
                if chunk.choices:
                    choice = chunk.choices[0]
                    parts.append(choice.text)
                    prompt_ids += getattr(choice, "prompt_token_ids", None) or []
                    out_ids += getattr(choice, "token_ids", None) or []
                    chunks += 1
                if abort_after is not None and chunks >= abort_after:
                    await stream.close()
                    res.aborted += 1
                    return
            text = "".join(parts)
            res.latencies_s.append(time.perf_counter() - t0)
            res.completed += 1
            res.completed_sampled += kind is not None
            res.output_tokens += usage.completion_tokens if usage else 0
            if kind is None:
                res.greedy_token_ids.append((prompt_ids, out_ids))
            if usage is None or usage.completion_tokens != n:
                res.errors.append(f"request {i}: {usage} for max_tokens={n} (ignore_eos)")
            ok = text == sampled[kind] if kind else reference[prompt].startswith(text)
            if not ok:
                what = f"seed={kind.seed} T={kind.temperature}" if kind else "greedy"
                want = sampled[kind] if kind else reference[prompt]
                res.mismatches.append(
                    f"request {i}: {prompt!r} {what} max_tokens={n}: {text!r}, alone: {want!r}"
                )
        except Exception as e:  # noqa: BLE001 - every failure is reported
            res.errors.append(f"request {i}: {type(e).__name__}: {e}")

    t0 = time.perf_counter()
    try:
        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(requests))), timeout_s)
    finally:
        await client.close()
    res.wall_s = time.perf_counter() - t0
    return res
