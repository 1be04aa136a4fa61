"""Plugin discovery, idempotent registration, and config errors before weights load."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest

pytest.importorskip("vllm")

NGRAM = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3}


def test_entry_point_is_discovered():
    eps = entry_points(group="vllm.general_plugins")
    ours = [ep for ep in eps if ep.name == "trispec"]
    assert len(ours) == 1 and ours[0].value == "trispec_vllm.plugin:register"
    from trispec_vllm import plugin

    assert ours[0].load() is plugin.register


def test_register_twice_is_harmless():
    from vllm.platforms import current_platform

    from trispec_vllm import plugin

    plugin.register()
    hook = type(current_platform).check_and_update_config
    plugin.register()
    plugin._registered = False  # even a second, independent registration wraps once
    plugin.register()
    assert type(current_platform).check_and_update_config is hook
    assert plugin.is_registered()
    # every process-wide wrap is marked, and wraps vLLM's own function, not a wrap
    from vllm.config import VllmConfig
    from vllm.v1.engine import llm_engine
    from vllm.v1.metrics import loggers

    from trispec_vllm.engine.wraps import is_wrapped

    for fn in (
        hook,
        VllmConfig._get_v2_model_runner_unsupported_features,
        llm_engine.get_metrics_snapshot,
        loggers.PrometheusStatLogger.__init__,
        loggers.PrometheusStatLogger.record,
        loggers.LoggingStatLogger.record,
        loggers.LoggingStatLogger.log,
    ):
        assert is_wrapped(fn) and not is_wrapped(fn.__wrapped__), fn


def test_kernels_folder_is_not_a_top_level_package():
    import importlib.util

    assert importlib.util.find_spec("trispec_vllm.kernels") is not None
    assert importlib.util.find_spec("kernels") is None


def engine_config(target, additional, spec=NGRAM, **kwargs):
    from vllm.engine.arg_utils import EngineArgs

    return EngineArgs(
        model=target,
        additional_config=additional,
        speculative_config=spec,
        max_model_len=256,
        **kwargs,
    ).create_engine_config()


def test_stock_engine_is_untouched(tiny_pair):
    cfg = engine_config(tiny_pair.target, {}, None)
    assert cfg.parallel_config.worker_cls.startswith("vllm.")


def edited_copy(src: str, dest, name: str, edit) -> str:
    """A copy of the model directory `src` at `dest`, its JSON file `name` changed in
    place by `edit`."""
    import json
    import shutil

    out = shutil.copytree(src, dest)
    data = json.loads((out / name).read_text())
    edit(data)
    (out / name).write_text(json.dumps(data))
    return str(out)


def swap_ids(tokenizer: dict, a: str, b: str) -> None:
    """Swap the ids of tokens `a` and `b` in a tokenizer.json's vocabulary."""
    vocab = tokenizer["model"]["vocab"]
    vocab[a], vocab[b] = vocab[b], vocab[a]


@pytest.mark.parametrize(
    ("section", "spec", "message"),
    [
        ({"lamda": 0.3}, NGRAM, "unknown key 'lamda'"),
        ({"margin_threshold": "high"}, NGRAM, "margin_threshold"),
        ({"proxy_model": "/nonexistent/proxy"}, NGRAM, "does not exist"),
        ({"proxy_model": "OTHER_VOCAB"}, NGRAM, "vocabulary of 640 tokens but the target has 512"),
        ({}, None, "TriSpec needs a drafter"),
        ({"proxy_model": "SHORT"}, NGRAM, "covers 128 positions, fewer than .* max_model_len 256"),
        ({"proxy_model": "SWAPPED"}, NGRAM, "has a tokenizer of its own"),
    ],
)
def test_bad_config_fails_before_weights_load(tiny_pair, tmp_path, section, spec, message):
    section = {"proxy_model": tiny_pair.proxy, **section}
    if section["proxy_model"] == "OTHER_VOCAB":
        section["proxy_model"] = tiny_pair.other_vocab_proxy
    if section["proxy_model"] == "SHORT":  # a proxy of a shorter context than the engine's
        section["proxy_model"] = edited_copy(
            tiny_pair.proxy,
            tmp_path / "short",
            "config.json",
            lambda config: config.update(max_position_embeddings=128),
        )
    if section["proxy_model"] == "SWAPPED":  # one vocabulary size, two token ids swapped
        section["proxy_model"] = edited_copy(
            tiny_pair.proxy,
            tmp_path / "swapped",
            "tokenizer.json",
            lambda tok: swap_ids(tok, "e", "t"),
        )
    with pytest.raises(ValueError, match=message):
        engine_config(tiny_pair.target, {"trispec": section}, spec)


@pytest.mark.parametrize(
    ("parallel", "message"),
    [
        ({"pipeline_parallel_size": 2}, "does not support pipeline parallelism"),
        ({"data_parallel_size": 2}, "does not support data parallelism"),
    ],
)
def test_pipeline_and_data_parallelism_are_refused(tiny_pair, parallel, message):
    section = {"trispec": {"proxy_model": tiny_pair.proxy}}
    with pytest.raises(ValueError, match=message):
        engine_config(tiny_pair.target, section, **parallel)


def test_tensor_parallelism_selects_trispec_worker(tiny_pair):
    section = {"trispec": {"proxy_model": tiny_pair.proxy}}
    cfg = engine_config(tiny_pair.target, section, tensor_parallel_size=2)
    assert cfg.parallel_config.worker_cls == "trispec_vllm.engine.workers.TriSpecCPUWorker"


def test_proxy_that_does_not_shard_is_refused(tmp_path):
    import json

    from trispec_vllm.config import TriSpecConfigError
    from trispec_vllm.engine.config_hook import check_proxy_vocab

    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 512, "num_attention_heads": 3}))
    check_proxy_vocab(str(tmp_path), 512, tp_size=1)
    with pytest.raises(TriSpecConfigError, match="3 attention heads.*tensor_parallel_size=2"):
        check_proxy_vocab(str(tmp_path), 512, tp_size=2)


def test_worker_and_runner_classes_build_for_cpu_and_gpu():
    from vllm.utils.import_utils import resolve_obj_by_qualname
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner
    from vllm.v1.worker.cpu_worker import CPUWorker
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner
    from vllm.v1.worker.gpu_worker import Worker

    from trispec_vllm.engine import config_hook, model_runner

    # vLLM resolves the worker by its qualified name in each worker process.
    cpu = resolve_obj_by_qualname(config_hook.WORKER_CPU)
    gpu = resolve_obj_by_qualname(config_hook.WORKER_GPU)
    assert issubclass(cpu, CPUWorker) and issubclass(gpu, Worker)
    assert issubclass(model_runner.TriSpecCPUModelRunner, CPUModelRunner)
    assert issubclass(model_runner.TriSpecGPUModelRunner, GPUModelRunner)


def test_proxy_is_drafter_only_for_the_same_greedy_draft_model(tmp_path):
    from types import SimpleNamespace

    from trispec_vllm.config import make_config
    from trispec_vllm.engine.fused_drafter import proxy_is_drafter

    (tmp_path / "m").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "m")
    cfg = make_config(proxy_model=str(tmp_path / "m"))

    def spec(**kw):
        return SimpleNamespace(**{"method": "draft_model", "model": str(tmp_path / "link"), **kw})

    assert proxy_is_drafter(cfg, spec())  # same checkpoint, through a symlink
    assert not proxy_is_drafter(cfg, spec(model=str(tmp_path)))  # another model
    assert not proxy_is_drafter(cfg, spec(method="ngram", model=None))
    assert not proxy_is_drafter(cfg, spec(draft_sample_method="probabilistic"))
    assert not proxy_is_drafter(cfg, None)
    capped = make_config(proxy_model=str(tmp_path / "m"), max_proxy_batch=2)
    assert not proxy_is_drafter(capped, spec())
    pyramid = make_config(proxy_model=str(tmp_path / "m"), policy="pyramid")
    assert not proxy_is_drafter(pyramid, spec())


def test_processed_rows_finds_vllms_builtin_logits_processors():
    """logit_bias and an active min_tokens can move the argmax (never trusted); min_p
    truncates the distribution (like top-k/top-p)."""
    import numpy as np
    from vllm.v1.sample.logits_processor import LogitsProcessors
    from vllm.v1.sample.logits_processor.builtin import (
        LogitBiasLogitsProcessor,
        MinPLogitsProcessor,
        MinTokensLogitsProcessor,
    )

    from trispec_vllm.engine.batch_inputs import processed_rows

    bias = object.__new__(LogitBiasLogitsProcessor)
    bias.biases = {1: {5: 2.0}, 9: {5: 1.0}}  # row 9 is past this batch
    min_tokens = object.__new__(MinTokensLogitsProcessor)
    min_tokens.min_toks = {3: (4, [], {2}, False)}
    min_p = object.__new__(MinPLogitsProcessor)
    min_p.min_p_count = 1
    min_p.min_p_cpu = np.array([0.0, 0.0, 0.1, 0.0, 0.0], np.float32)
    biased, truncated = processed_rows(LogitsProcessors([bias, min_tokens, min_p]), 4)
    assert biased.tolist() == [False, True, False, True]
    assert truncated.tolist() == [False, False, True, False]
    none = processed_rows(LogitsProcessors(), 2)
    assert not none[0].any() and not none[1].any()


def test_sampling_fix_env_installs_the_cpu_expand_for_every_engine(monkeypatch):
    """TRISPEC_CPU_SAMPLING_FIX=1: the plugin gives engines without a trispec section
    the plain-torch expand TriSpec's runner uses (its sampling is tested there)."""
    from vllm.v1.sample import rejection_sampler

    from trispec_vllm import plugin
    from trispec_vllm.engine import cpu_workarounds

    monkeypatch.setattr(rejection_sampler, "expand_batch_to_tokens", None)
    monkeypatch.setattr(plugin, "_registered", False)
    monkeypatch.delenv("TRISPEC_CPU_SAMPLING_FIX", raising=False)
    plugin.register()
    assert rejection_sampler.expand_batch_to_tokens is None  # off by default
    monkeypatch.setattr(plugin, "_registered", False)
    monkeypatch.setenv("TRISPEC_CPU_SAMPLING_FIX", "1")
    plugin.register()
    assert rejection_sampler.expand_batch_to_tokens is cpu_workarounds.expand_batch_to_tokens


def test_v1_runner_is_chosen_engine_wide_with_a_trispec_section(tiny_pair, monkeypatch):
    """The scheduler, input processor and workers all read `use_v2_model_runner`."""
    section = {"trispec": {"proxy_model": tiny_pair.proxy}}
    tri = engine_config(tiny_pair.target, section)
    stock = engine_config(tiny_pair.target, {})
    assert "TriSpec (additional_config['trispec'])" in (
        tri._get_v2_model_runner_unsupported_features()
    )
    assert not any("TriSpec" in f for f in stock._get_v2_model_runner_unsupported_features())
    assert tri.use_v2_model_runner is False
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "1")
    with pytest.raises(ValueError, match="V1 model runner"):
        engine_config(tiny_pair.target, section)


class _Executor:
    def __init__(self) -> None:
        self.takes = 0

    def take_draft_token_ids(self):
        self.takes += 1


def test_no_drafts_no_draft_call():
    """Patch 13: after an output marked as proposing no drafts the engine core skips
    `take_draft_token_ids`; unmarked outputs (stock engines) and drafts take them."""
    from types import SimpleNamespace

    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.engine.core import EngineCore
    from vllm.v1.outputs import EMPTY_MODEL_RUNNER_OUTPUT

    from trispec_vllm.engine import draft_call, scheduler_hooks
    from trispec_vllm.engine.wraps import is_wrapped

    scheduler_hooks.patch_scheduler()
    scheduler_hooks.patch_scheduler()  # idempotent: each method wrapped once
    for method in (Scheduler.schedule, Scheduler.update_from_output, EngineCore.post_step):
        assert is_wrapped(method) and not is_wrapped(method.__wrapped__)

    empty, drafted = SimpleNamespace(), SimpleNamespace()
    draft_call.mark_no_drafts(empty, [[], []])
    draft_call.mark_no_drafts(drafted, [[], [7, 8]])
    draft_call.mark_no_drafts(EMPTY_MODEL_RUNNER_OUTPUT, [[]])  # shared: never marked
    assert getattr(empty, draft_call.NO_DRAFTS_ATTR)
    assert not hasattr(drafted, draft_call.NO_DRAFTS_ATTR)
    assert not hasattr(EMPTY_MODEL_RUNNER_OUTPUT, draft_call.NO_DRAFTS_ATTR)
    assert not draft_call.no_drafts(None) and draft_call.no_drafts([])

    core = object.__new__(EngineCore)
    core.scheduler = SimpleNamespace()
    core.model_executor = _Executor()
    core.check_for_draft_tokens, core.async_scheduling = True, False
    for output, executed, takes in (
        (SimpleNamespace(), True, 1),  # stock output: taken
        (empty, True, 1),  # marked: skipped
        (empty, False, 1),  # nothing ran: nothing to take either way
        (drafted, True, 2),
    ):
        draft_call.note_output(core.scheduler, output)
        EngineCore.post_step(core, model_executed=executed)
        assert core.model_executor.takes == takes, (output, executed)


def test_proxy_tokenizer_compared_by_its_ids_not_its_files(tiny_pair, tmp_path):
    """A proxy whose tokenizer files differ from the target's but map text to the same
    ids (rewritten, here) is accepted; one with two ids swapped is refused."""
    import json
    import shutil
    from types import SimpleNamespace

    from trispec_vllm.config import TriSpecConfigError
    from trispec_vllm.engine.config_hook import check_proxy_tokenizer

    target = SimpleNamespace(tokenizer=tiny_pair.target, trust_remote_code=False)
    check_proxy_tokenizer(tiny_pair.proxy, target)  # the same files
    copy = shutil.copytree(tiny_pair.proxy, tmp_path / "rewritten")
    tok = json.loads((copy / "tokenizer.json").read_text())
    (copy / "tokenizer.json").write_text(json.dumps(tok, indent=2))
    check_proxy_tokenizer(str(copy), target)
    swapped = edited_copy(
        tiny_pair.proxy, tmp_path / "swapped", "tokenizer.json", lambda t: swap_ids(t, "a", "o")
    )
    with pytest.raises(TriSpecConfigError, match="tokenizer of its own: .* different from token"):
        check_proxy_tokenizer(swapped, target)
