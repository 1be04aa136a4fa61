"""The engine-config hook: validate the `trispec` section, adjust vLLM, pick workers.

vLLM calls the platform's `check_and_update_config` while it builds the engine
config, before any weights load; wrapping it is where TriSpec fails fast on
settings it cannot serve and switches off what it does not support yet.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from trispec_vllm import envs
from trispec_vllm.config import (
    LEARNED_DRAFTER,
    SUPPORTED_DRAFTERS,
    TriSpecConfig,
    TriSpecConfigError,
    parse_trispec_config,
)
from trispec_vllm.engine.wraps import wrap_once

if TYPE_CHECKING:
    from vllm.config import VllmConfig

logger = logging.getLogger("vllm.trispec")

# vLLM resolves workers by qualified name in every process (mp or Ray workers).
WORKER_CPU = "trispec_vllm.engine.workers.TriSpecCPUWorker"
WORKER_GPU = "trispec_vllm.engine.workers.TriSpecGPUWorker"


def patch_platform_config_hook() -> None:
    """Wrap the current platform's `check_and_update_config` (once per process)."""
    from vllm.platforms import current_platform

    def make(original):
        def check_and_update_config(vllm_config: VllmConfig) -> None:
            cfg = parse_trispec_config(vllm_config.additional_config)
            if cfg is not None:
                validate_engine_config(cfg, vllm_config)
                adjust_engine_config(vllm_config)
            original(vllm_config)
            if cfg is not None and vllm_config.scheduler_config.async_scheduling:
                # The platform hook may turn async scheduling back on (GPU).
                vllm_config.scheduler_config.async_scheduling = False

        return check_and_update_config

    wrap_once(type(current_platform), "check_and_update_config", make, static=True)


def patch_v2_runner_choice() -> None:
    """Make vLLM choose its V1 model runner for the whole engine (scheduler, input
    processor and workers alike) when a `trispec` section is present, the way vLLM
    itself does for features V2 lacks: TriSpec's runner subclasses the V1 runner."""
    from vllm.config import VllmConfig

    def make(original):
        def unsupported_features(self) -> list[str]:
            found = original(self)
            if parse_trispec_config(self.additional_config) is not None:
                found = [*found, "TriSpec (additional_config['trispec'])"]
            return found

        return unsupported_features

    wrap_once(VllmConfig, "_get_v2_model_runner_unsupported_features", make)


def engine_section(scheduler) -> TriSpecConfig | None:
    """The `trispec` section of the engine a vLLM scheduler serves (None: not a TriSpec
    engine), parsed once per scheduler: the scheduler patches read it every step."""
    if not hasattr(scheduler, "_trispec_section"):
        section = parse_trispec_config(scheduler.vllm_config.additional_config)
        scheduler._trispec_section = section
    return scheduler._trispec_section


def validate_engine_config(cfg: TriSpecConfig, vllm_config: VllmConfig) -> None:
    """Fail with a clear message on settings TriSpec cannot serve (no weights read)."""
    check_text_decoder(vllm_config.model_config)
    spec = vllm_config.speculative_config
    if spec is None:
        raise TriSpecConfigError(
            "TriSpec needs a drafter: set speculative_config, e.g. "
            '{"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3}'
        )
    if spec.method not in SUPPORTED_DRAFTERS:
        raise TriSpecConfigError(
            f"speculative_config method '{spec.method}' is not supported by TriSpec yet; "
            f"use one of {', '.join(SUPPORTED_DRAFTERS)} (custom_class: TriSpec's learned "
            f"drafter {LEARNED_DRAFTER}; vLLM's EAGLE heads read the target, not the proxy)"
        )
    if cfg.disable_by_batch_size is not None and spec.method != "ngram":
        raise TriSpecConfigError(
            f"disable_by_batch_size works with the ngram drafter only (got '{spec.method}': "
            "a drafter with its own KV cache would miss the steps it skips)"
        )
    if getattr(cfg, "max_holds", 0) and spec.method != "ngram":
        raise TriSpecConfigError(
            f"max_holds works with the ngram drafter only (got '{spec.method}': a "
            "held request proposes its drafts again, which a drafter with its own KV cache "
            "or learning state does not)"
        )
    import vllm.envs

    if vllm.envs.VLLM_USE_V2_MODEL_RUNNER:
        raise TriSpecConfigError(
            "TriSpec runs on vLLM's V1 model runner: unset VLLM_USE_V2_MODEL_RUNNER=1"
        )
    check_proxy_vocab(
        cfg.proxy_model,
        vllm_config.model_config.get_vocab_size(),
        vllm_config.parallel_config.tensor_parallel_size,
    )
    check_proxy_tokenizer(cfg.proxy_model, vllm_config.model_config)
    check_proxy_context(cfg.proxy_model, vllm_config)
    check_learned_drafter(cfg, vllm_config)
    check_subset_vocab(cfg, vllm_config)


# Code, prose, digits, whitespace runs and non-Latin scripts: where tokenizers of one
# vocabulary size but different merges or id orders part ways.
TOKENIZER_PROBE = (
    "def area(r: float) -> float:\n    return 3.14159 * r ** 2  # TODO: use math.pi\n\n"
    "The quick brown fox, naïve café, ½ & ¾; Привет мир! 你好，世界。 こんにちは 🙂\t  end"
)
# The files that fix the text -> ids mapping, one set per tokenizer format.
VOCABULARY_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"), ("tokenizer.model",))
TOKENIZER_FILES = ("tokenizer_config.json", *(n for files in VOCABULARY_FILES for n in files))


def check_proxy_tokenizer(proxy_model: str, model_config) -> None:
    """The proxy must read and write the target's token ids: two tokenizers of one
    vocabulary size can still map text to different ids (Llama 2's and Mistral's
    have 32000 each), which would leave every margin meaningless. Where the proxy
    directory has tokenizer files and both load, a probe text must encode alike."""
    path = Path(proxy_model).expanduser()
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        return  # nothing to compare: the engine reads the target's tokenizer only
    target_dir = Path(model_config.tokenizer).expanduser()
    if any(same_files(path, target_dir, files) for files in VOCABULARY_FILES):
        return  # one model family's copy (loading both took 1.9-3 s on a 2-core CPU)
    from transformers import AutoTokenizer

    remote = bool(getattr(model_config, "trust_remote_code", False))
    try:
        target = AutoTokenizer.from_pretrained(model_config.tokenizer, trust_remote_code=remote)
        proxy = AutoTokenizer.from_pretrained(str(path), trust_remote_code=remote)
    except Exception as err:  # a format only vLLM reads (mistral's tekken, say)
        logger.info("TriSpec: tokenizers not compared (%s)", err)
        return
    want = target.encode(TOKENIZER_PROBE, add_special_tokens=False)
    got = proxy.encode(TOKENIZER_PROBE, add_special_tokens=False)
    if got != want:
        pairs = enumerate(zip(want, got, strict=False))
        at = next((i for i, (a, b) in pairs if a != b), min(len(want), len(got)))
        raise TriSpecConfigError(
            f"proxy_model '{proxy_model}' has a tokenizer of its own: a sample text is "
            f"{len(got)} tokens for it and {len(want)} for the target, different from "
            f"token {at} on. The proxy must share the target's tokenizer"
        )


def same_files(a: Path, b: Path, names: tuple[str, ...]) -> bool:
    """Whether directories `a` and `b` both hold every file of `names`, byte for byte."""
    for name in names:
        fa, fb = a / name, b / name
        if not (fa.is_file() and fb.is_file()) or fa.stat().st_size != fb.stat().st_size:
            return False
        if fa.read_bytes() != fb.read_bytes():
            return False
    return True


def check_proxy_context(proxy_model: str, vllm_config: VllmConfig) -> None:
    """The proxy must cover the engine's context (`max_model_len`): it reads every
    position the target does. Checked here, with the proxy named, rather than when
    the proxy loads after the target's weights."""
    import vllm.envs

    if vllm.envs.VLLM_ALLOW_LONG_MAX_MODEL_LEN:
        return  # the user's override, which vLLM applies to the proxy too
    from trispec_vllm.engine.proxy import proxy_model_config

    wanted = vllm_config.model_config.max_model_len
    longest = proxy_model_config(vllm_config, proxy_model, None).max_model_len
    if longest < wanted:
        raise TriSpecConfigError(
            f"proxy_model '{proxy_model}' covers {longest} positions, fewer than the "
            f"engine's max_model_len {wanted}: set max_model_len to at most {longest}, or "
            "use a proxy with a longer context"
        )


def check_text_decoder(model_config) -> None:
    """TriSpec's routed passes rebuild a request's inputs from its token ids alone:
    a multimodal model's image or audio embeddings (and its multimodal rotary
    positions) and an encoder-decoder's encoder output are not there."""
    if getattr(model_config, "is_encoder_decoder", False):
        kind = "an encoder-decoder"
    elif getattr(model_config, "is_multimodal_model", False):
        kind = "a multimodal"
    else:
        return
    raise TriSpecConfigError(
        f"TriSpec serves text decoders only, and {getattr(model_config, 'model', 'this')} is "
        f"{kind} model: its routed passes rebuild inputs from token ids, without the "
        "encoder's output. Serve it without the `trispec` section (vLLM's own "
        "speculative decoding)."
    )


def check_subset_vocab(cfg: TriSpecConfig, vllm_config: VllmConfig) -> None:
    """`proxy_vocab` shrinks the proxy's LM head: one rank's head only, and never with
    the target as its own proxy (whose verdicts are exact only over every token)."""
    if getattr(cfg, "proxy_vocab", None) is None:
        return
    if vllm_config.parallel_config.tensor_parallel_size > 1:
        raise TriSpecConfigError(
            "proxy_vocab needs tensor_parallel_size 1 (the proxy's LM head is split over "
            "the ranks); leave it unset"
        )
    model_config = vllm_config.model_config
    if model_config.runner_type == "draft":
        return  # the proxy's own config (`proxy.load_proxy`), checked with the engine's
    if same_model(cfg.proxy_model, model_config.model):
        raise TriSpecConfigError(
            "proxy_vocab with the target as its own proxy would make its verdicts inexact; "
            "leave it unset (a proxy equal to the target is lossless without it)"
        )


def same_model(a: str, b: str) -> bool:
    """Whether two model names or paths name the same model (paths resolved)."""
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def check_learned_drafter(cfg: TriSpecConfig, vllm_config: VllmConfig) -> None:
    """The learned drafter's choices: its settings only with it, TP 1, a usable
    checkpoint path (read now, before any weights load)."""
    spec = vllm_config.speculative_config
    learned = spec.method == "custom_class"
    if learned and spec.model != LEARNED_DRAFTER:
        raise TriSpecConfigError(
            f"speculative_config 'custom_class' proposer {spec.model!r}: TriSpec runs its own "
            f"learned drafter only ({LEARNED_DRAFTER})"
        )
    if not learned:
        given = cfg.drafter_keys_set()
        if given:
            raise TriSpecConfigError(
                f"{', '.join(given)}: settings of the learned drafter, which this engine does "
                f"not use (select it with speculative_config method 'custom_class', model "
                f"'{LEARNED_DRAFTER}')"
            )
        return
    if cfg.policy != "trispec":
        raise TriSpecConfigError("the learned drafter works with policy 'trispec' only")
    if vllm_config.parallel_config.tensor_parallel_size > 1:
        raise TriSpecConfigError(
            "the learned drafter runs with tensor_parallel_size 1 only (its online updates "
            "would have to stay identical on every rank)"
        )
    if cfg.drafter_checkpoint is not None:
        from trispec_vllm.drafter import checkpoint
        from trispec_vllm.drafter.head import fingerprint

        try:
            checkpoint.check_path(cfg.drafter_checkpoint, fingerprint(cfg.proxy_model))
        except (checkpoint.CheckpointError, OSError) as err:
            raise TriSpecConfigError(str(err)) from None


def check_proxy_vocab(proxy_model: str, target_vocab: int, tp_size: int = 1) -> None:
    """The proxy must exist, share the target's vocabulary and shard over the
    tensor-parallel ranks like the target (checked from config.json)."""
    path = Path(proxy_model).expanduser()
    if not path.exists():
        raise TriSpecConfigError(
            f"proxy_model '{proxy_model}' does not exist (give a local model directory; "
            "models are not downloaded from a hub by TriSpec)"
        )
    config_file = path / "config.json"
    if not config_file.is_file():
        raise TriSpecConfigError(f"proxy_model '{proxy_model}' has no config.json")
    proxy_cfg = json.loads(config_file.read_text())
    text_cfg = proxy_cfg.get("text_config", proxy_cfg)
    vocab = text_cfg.get("vocab_size")
    if vocab != target_vocab:
        raise TriSpecConfigError(
            f"proxy_model '{proxy_model}' has a vocabulary of {vocab} tokens but the target "
            f"has {target_vocab}: the proxy must share the target's tokenizer and vocabulary"
        )
    heads = text_cfg.get("num_attention_heads")
    if tp_size > 1 and isinstance(heads, int) and heads % tp_size:
        raise TriSpecConfigError(
            f"proxy_model '{proxy_model}' has {heads} attention heads, which "
            f"tensor_parallel_size={tp_size} does not divide: the proxy is sharded over the "
            "same ranks as the target"
        )
    if envs.flag("TRISPEC_DEBUG"):
        logger.info("TriSpec proxy %s: vocabulary %d matches the target", proxy_model, vocab)


def adjust_engine_config(vllm_config: VllmConfig) -> None:
    """Switch off what TriSpec cannot support yet and select its worker."""
    # Prefix caching stays as configured: a cached block may hold positions one model
    # has not written yet, which engine/prefix_cache.py books and recomputes.
    sched = vllm_config.scheduler_config
    if getattr(sched, "async_scheduling", False):
        logger.warning("TriSpec: async scheduling disabled (routing needs the step's outputs)")
        sched.async_scheduling = False
    if vllm_config.kv_transfer_config is not None:
        raise TriSpecConfigError("TriSpec does not support KV connectors (kv_transfer_config)")
    parallel = vllm_config.parallel_config
    if parallel.pipeline_parallel_size > 1:
        # A pipeline stage holds some of the target's layers only; the proxy, the
        # margins and the routed catch-up pass need the whole model on every stage.
        raise TriSpecConfigError(
            "TriSpec does not support pipeline parallelism (pipeline_parallel_size="
            f"{parallel.pipeline_parallel_size}): use tensor_parallel_size instead"
        )
    # Tensor parallelism: the proxy is sharded like the target (same TP group), and
    # every rank routes on identical all-gathered logits (engine/ranks.py).
    if getattr(parallel, "data_parallel_size", 1) > 1:
        # Proxy-only steps would skip the target's collectives on some ranks only.
        raise TriSpecConfigError(
            "TriSpec does not support data parallelism: run one engine per replica instead"
        )
    from vllm.config.compilation import CUDAGraphMode

    # torch.compile stays as configured; CUDA graphs are off because the routed
    # step runs a sub-batch of data-dependent size.
    if vllm_config.compilation_config.cudagraph_mode != CUDAGraphMode.NONE:
        logger.warning("TriSpec: CUDA graphs disabled (the target runs a routed sub-batch)")
        vllm_config.compilation_config.cudagraph_mode = CUDAGraphMode.NONE
    if parallel.worker_cls not in ("auto", WORKER_CPU, WORKER_GPU):
        raise TriSpecConfigError(
            f"TriSpec selects its own worker, but worker_cls={parallel.worker_cls} was given"
        )
    from vllm.platforms import current_platform

    parallel.worker_cls = WORKER_CPU if current_platform.is_cpu() else WORKER_GPU
    warn_cpu_dtype(vllm_config.model_config)


dtype_warned = False  # warn_cpu_dtype: once per process


def warn_cpu_dtype(model_config) -> None:
    """Say so where a bf16 model runs on a CPU without oneDNN's bf16 matmul: there a
    pass over k + 1 tokens costs about k + 1 one-token passes, so speculation cannot
    pay, while oneDNN's float32 matmul is nearly flat in the rows (`cpu_runtime`)."""
    import torch

    from trispec_vllm import cpu_runtime

    global dtype_warned
    dtype = getattr(model_config, "dtype", None)
    if dtype != torch.bfloat16 or dtype_warned:
        return
    advice = cpu_runtime.dtype_advice()
    if advice:
        dtype_warned = True  # vLLM finalises an engine's config more than once
        logger.warning("TriSpec: %s", advice)
