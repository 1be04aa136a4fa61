"""`trispec-vllm serve` with the official OpenAI client, against stock `vllm serve`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

pytest.importorskip("vllm")
openai = pytest.importorskip("openai")
pytestmark = pytest.mark.vllm

from trispec_vllm.metrics import COUNTERS  # noqa: E402
from trispec_vllm.testing.server import TINY_SERVER_ARGS, Server, user_env  # noqa: E402

COMMON = [*TINY_SERVER_ARGS, "--seed", "0"]
PROMPTS = ["def add(a, b): return a + b\n" * 2, "hello world hello world ", "x = [1, 2, 3]\n"]


@pytest.fixture(scope="module")
def servers(tiny_pair, tmp_path_factory):
    logs = tmp_path_factory.mktemp("server_logs")
    stock = Server(["serve", tiny_pair.target, *COMMON], logs / "stock.log")
    try:
        trispec = Server(
            [
                "serve",
                tiny_pair.target,
                "--proxy-model",
                tiny_pair.proxy,
                "--margin-threshold",
                "1.5",
                *COMMON,
            ],
            logs / "trispec.log",
            env={"VLLM_LOG_STATS_INTERVAL": "1"},
        )
    except Exception:
        stock.stop()
        raise
    yield stock, trispec
    trispec.stop()
    stock.stop()


def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)


def complete(server, prompt, **kw):
    kw = {"temperature": 0, "max_tokens": 32, **kw}
    return client(server).completions.create(model="tiny", prompt=prompt, **kw)


def test_completions_equal_stock_vllm(servers):
    stock, trispec = servers
    for p in PROMPTS:
        assert complete(trispec, p).choices[0].text == complete(stock, p).choices[0].text


def test_chat_completions_equal_stock_vllm(servers):
    stock, trispec = servers
    msgs = [{"role": "user", "content": "write a function"}]
    got = [
        client(s).chat.completions.create(model="tiny", messages=msgs, temperature=0, max_tokens=24)
        for s in (stock, trispec)
    ]
    assert got[0].choices[0].message.content == got[1].choices[0].message.content


def test_streaming_matches_non_streaming(servers):
    _, trispec = servers
    for p in PROMPTS:
        stream = complete(trispec, p, stream=True)
        text = "".join(chunk.choices[0].text for chunk in stream if chunk.choices)
        assert text == complete(trispec, p).choices[0].text
    kw = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    chat = client(trispec).chat.completions.create(**kw, max_tokens=16, stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in chat if c.choices)
    whole = client(trispec).chat.completions.create(**kw, max_tokens=16)
    assert streamed == whole.choices[0].message.content


def test_n_stop_and_max_tokens(servers):
    stock, trispec = servers
    out = complete(trispec, PROMPTS[0], n=3, temperature=1.5, seed=3)
    texts = [c.text for c in out.choices]
    assert len(texts) == 3 and len(set(texts)) > 1  # three samples, not one answer thrice
    again = complete(trispec, PROMPTS[0], n=3, temperature=1.5, seed=3)
    assert [c.text for c in again.choices] == texts  # seeded: the same three samples
    full = complete(stock, PROMPTS[1]).choices[0].text
    stop = full[10:13]
    got = complete(trispec, PROMPTS[1], stop=[stop]).choices[0]
    assert got.text == full[: full.find(stop)] and got.finish_reason == "stop"
    got = complete(trispec, PROMPTS[1], max_tokens=5)
    assert got.usage.completion_tokens == 5 and got.choices[0].finish_reason == "length"


def test_client_disconnect_mid_stream_leaves_the_server_serving(servers):
    stock, trispec = servers
    stream = complete(trispec, PROMPTS[2], stream=True, max_tokens=200)
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    time.sleep(0.5)
    assert (
        complete(trispec, PROMPTS[2]).choices[0].text == complete(stock, PROMPTS[2]).choices[0].text
    )


def test_metrics_endpoint_has_trispec_and_spec_decode_counters(servers):
    _, trispec = servers
    complete(trispec, PROMPTS[0])
    text = trispec.metrics()
    for name in COUNTERS:
        m = re.search(rf"^trispec:{name}_total{{[^}}]*}} ([0-9.e+]+)$", text, re.M)
        assert m, name

    def total(name: str) -> float:
        return float(re.search(rf"^trispec:{name}_total{{[^}}]*}} ([0-9.e+]+)$", text, re.M)[1])

    # Lossless with the default cost-aware step: standard SD or plain steps, never the
    # proxy (a TriSpec step could only add its pass to the same target work).
    assert total("sd_kind_steps") + total("plain_kind_steps") > 0
    assert total("trispec_kind_steps") == 0 and total("proxy_steps") == 0
    assert "vllm:spec_decode_num_drafts" in text
    assert re.search(r"^trispec:proxy_margin_count{[^}]*} ([0-9.e+]+)$", text, re.M)
    assert re.search(r'^trispec:catchup_length_bucket{[^}]*le="0.0"[^}]*} ', text, re.M)


def test_server_log_has_per_request_trispec_stats(servers):
    _, trispec = servers
    out = complete(trispec, PROMPTS[1], max_tokens=24)
    # vLLM's internal id extends the response id; a request may span log intervals.
    pattern = re.compile(
        re.escape(out.id) + r"\S*: (\d+) steps, (\d+) by the proxy, (\d+) escalated"
    )
    deadline = time.time() + 20
    found = []
    while time.time() < deadline and not found:
        time.sleep(1)
        found = pattern.findall(trispec.log.read_text())
    assert found, trispec.tail()
    steps, proxy, escalated = (sum(int(f[i]) for f in found) for i in range(3))
    assert steps == escalated > 0 and proxy == 0  # lossless: every decode step escalated


def post(server, path, body: bytes):
    req = urllib.request.Request(
        server.url + path, data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.mark.parametrize(
    "body",
    [
        json.dumps({"model": "tiny", "prompt": "the cat " * 400, "max_tokens": 4}).encode(),
        json.dumps({"model": "tiny", "prompt": "hi", "max_tokens": 10_000}).encode(),
        b'{"model": "tiny", "prompt": ',
        json.dumps({"model": "no-such-model", "prompt": "hi"}).encode(),
    ],
    ids=["over-long-prompt", "max-tokens-beyond-context", "malformed-json", "unknown-model"],
)
def test_bad_requests_get_stock_errors_and_the_server_keeps_serving(servers, body):
    stock, trispec = servers
    status = post(trispec, "/v1/completions", body)
    assert status >= 400 and status == post(stock, "/v1/completions", body)
    answer = complete(trispec, PROMPTS[0]).choices[0].text
    assert answer == complete(stock, PROMPTS[0]).choices[0].text


def test_bad_trispec_config_exits_before_weights_load(tiny_pair):
    t0 = time.time()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "trispec_vllm.cli",
            "serve",
            tiny_pair.target,
            "--proxy-model",
            "/no/such/proxy",
            *COMMON,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=user_env(),
    )
    assert proc.returncode != 0
    assert "proxy_model '/no/such/proxy' does not exist" in proc.stdout + proc.stderr
    assert "Loading weights" not in proc.stdout + proc.stderr
    assert time.time() - t0 < 120
