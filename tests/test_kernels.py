"""Triton kernels against their torch references (CPU: under TRITON_INTERPRET=1)."""

from __future__ import annotations

import os

import pytest
import torch

from trispec_vllm.kernels import margins, top2_margins, top2_margins_reference, tree_mask_reference
from trispec_vllm.kernels import tree_attention as tree_mask_mod

needs_triton = pytest.mark.skipif(
    not margins.HAS_TRITON
    or (os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available()),
    reason="Triton kernels need a GPU or TRITON_INTERPRET=1",
)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def assert_same(a, b, atol=2e-6):
    assert torch.equal(a.top1_id.cpu(), b.top1_id.cpu())
    torch.testing.assert_close(a.top1_prob.cpu(), b.top1_prob.cpu(), atol=atol, rtol=1e-5)
    torch.testing.assert_close(a.margin.cpu(), b.margin.cpu(), atol=atol, rtol=1e-5)


def test_reference_matches_softmax_topk():
    x = torch.randn(17, 1000) * 4
    r = top2_margins_reference(x)
    p = x.softmax(-1)
    top = p.topk(2, dim=-1)
    assert torch.equal(r.top1_id, top.indices[:, 0])
    torch.testing.assert_close(r.top1_prob, top.values[:, 0])
    torch.testing.assert_close(r.margin, top.values[:, 0] - top.values[:, 1])


def test_reference_edge_cases():
    x = torch.tensor(
        [
            [1.0, 3.0, 3.0, 0.0],  # tie: lower id, margin 0
            [float("-inf"), 2.0, float("-inf"), float("-inf")],  # one finite entry: margin 1
            [float("-inf")] * 4,  # nothing finite: id 0, prob 0, margin 0
            [5.0] * 4,  # all equal
        ]
    )
    r = top2_margins_reference(x)
    assert r.top1_id.tolist() == [1, 1, 0, 0]
    torch.testing.assert_close(r.margin, torch.tensor([0.0, 1.0, 0.0, 0.0]))
    torch.testing.assert_close(r.top1_prob[1:], torch.tensor([1.0, 0.0, 0.25]))


def test_dispatch_uses_reference_off_gpu():
    x = torch.randn(3, 10)
    assert_same(top2_margins(x), top2_margins_reference(x))


def test_input_validation():
    with pytest.raises(ValueError, match=r"\[N, V\]"):
        top2_margins_reference(torch.zeros(3))
    with pytest.raises(TypeError, match="fp32"):
        top2_margins_reference(torch.zeros(2, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match="temperature"):
        top2_margins_reference(torch.zeros(2, 3), torch.ones(3))


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    ("n", "v", "block", "splits"),
    [
        (1, 1, 4096, None),
        (4, 7, 4096, None),
        (3, 1000, 256, 3),
        (5, 4099, 1024, None),
        (2, 151936, 4096, None),
        (6, 3000, 512, 5),
    ],
)
def test_margin_kernel_matches_reference(dtype, n, v, block, splits):
    g = torch.Generator().manual_seed(n * v)
    x = (torch.randn(n, v, generator=g) * 3).to(dtype).to(DEVICE)
    got = margins.top2_margins_triton(x, block=block, splits=splits)
    assert_same(got, top2_margins_reference(x))


@needs_triton
def test_margin_kernel_temperature_and_strided_rows():
    x = torch.randn(8, 2000, device=DEVICE) * 3
    t = torch.tensor([0.5, 1.0, 2.0, 0.7, 1.3, 0.1, 5.0, 1.0], device=DEVICE)
    assert_same(margins.top2_margins_triton(x, t, block=256), top2_margins_reference(x, t))
    wide = torch.randn(4, 3000, device=DEVICE)
    view = wide[:, :2500]  # row stride != V
    assert_same(margins.top2_margins_triton(view, block=512), top2_margins_reference(view))


@needs_triton
def test_margin_kernel_edge_cases():
    inf = float("-inf")
    v = 1500  # not a multiple of the block
    x = torch.zeros(6, v)
    x[0, 10] = x[0, 1400] = 5.0  # tie across blocks and splits: lower id wins, margin 0
    x[1] = inf
    x[1, 1499] = 2.0  # one finite entry, in the ragged last block
    x[2] = inf  # nothing finite
    x[3] = 4.0  # all equal
    x[4, :700] = inf  # -inf entries
    x[4, 900] = 3.0
    x[5, 0] = 1.0
    x[5, 1] = 1.0  # tie within one block
    x = x.to(DEVICE)
    ref = top2_margins_reference(x)
    for splits in (1, 2, 3):
        assert_same(margins.top2_margins_triton(x, block=256, splits=splits), ref)
    assert ref.top1_id.tolist() == [10, 1499, 0, 0, 900, 0]


def chain(n):
    return list(range(-1, n - 1))


def test_tree_mask_reference_chain_and_tree():
    parents = torch.tensor(chain(4) + [-1, 0, 0, 1, 2])
    r = tree_mask_reference(parents, torch.tensor([4, 5]))
    assert torch.equal(r.mask[0, :4, :4], torch.tril(torch.ones(4, 4, dtype=torch.bool)))
    assert r.depth[0].tolist() == [0, 1, 2, 3, -1] and r.depth[1].tolist() == [0, 1, 1, 2, 2]
    assert r.mask[1, 4].tolist() == [True, False, True, False, True]
    assert r.mask[1, 3].tolist() == [True, True, False, True, False]
    assert not r.mask[0, 4:].any() and not r.mask[0, :, 4:].any()  # padding
    assert r.depth[0, 4] == -1


def test_tree_mask_rejects_bad_parents():
    with pytest.raises(ValueError, match="earlier node"):
        tree_mask_reference(torch.tensor([-1, 1]), torch.tensor([2]))
    with pytest.raises(ValueError, match="sums to"):
        tree_mask_reference(torch.tensor([-1, 0]), torch.tensor([3]))


def random_trees(rng, b, max_nodes):
    sizes = [int(rng.integers(0, max_nodes + 1)) for _ in range(b)]
    parents = []
    for n in sizes:
        parents += [-1] + [int(rng.integers(-1, i)) for i in range(1, n)] if n else []
    return torch.tensor(parents, dtype=torch.long), torch.tensor(sizes)


@needs_triton
def test_tree_mask_kernel_matches_reference():
    import numpy as np

    rng = np.random.default_rng(0)
    for b, m in [(1, 1), (3, 5), (8, 17), (4, 64)]:
        parents, sizes = random_trees(rng, b, m)
        ref = tree_mask_reference(parents, sizes)
        got = tree_mask_mod.tree_mask_triton(parents.to(DEVICE), sizes.to(DEVICE))
        assert torch.equal(got.mask.cpu(), ref.mask) and torch.equal(got.depth.cpu(), ref.depth)
    chain_parents = torch.tensor(chain(9))
    got = tree_mask_mod.tree_mask_triton(chain_parents.to(DEVICE), torch.tensor([9]).to(DEVICE))
    assert torch.equal(got.mask[0].cpu(), torch.tril(torch.ones(9, 9, dtype=torch.bool)))


@needs_triton
@pytest.mark.parametrize("kind", ["js", "kl", "tv"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_divergence_kernel_matches_reference(kind, dtype):
    from trispec_vllm.kernels import divergence_reference
    from trispec_vllm.kernels.divergence import divergence_triton

    g = torch.Generator().manual_seed(7)
    a = (torch.randn(6, 3001, generator=g) * 3).to(dtype)
    b = (a.float() + torch.randn(6, 3001, generator=g)).to(dtype)
    a[1, :40] = -200.0  # probabilities that underflow fp32
    b[1, :40] = -230.0
    a[2, 100:120] = float("-inf")  # masked in P only: KL(Q || P) is infinite
    b[3] = float("-inf")  # no finite entry: 0 by convention
    t = torch.tensor([1.0, 0.5, 2.0, 1.0, 0.7, 1.3])
    a, b, t = a.to(DEVICE), b.to(DEVICE), t.to(DEVICE)
    for temp in (None, t):
        want = divergence_reference(a, b, temp, kind).cpu()
        got = divergence_triton(a, b, temp, kind, block=512).cpu()
        assert torch.equal(torch.isinf(got), torch.isinf(want)), (got, want)
        finite = torch.isfinite(want)
        assert torch.allclose(got[finite], want[finite], atol=2e-5, rtol=1e-4), (got, want)
    view = a[:, :2500]  # row stride != V
    assert torch.allclose(
        divergence_triton(view, b[:, :2500], None, kind).cpu(),
        divergence_reference(view, b[:, :2500], None, kind).cpu(),
        atol=2e-5,
        rtol=1e-4,
    )


def test_auto_backend_keeps_the_faster_implementation(monkeypatch):
    """`auto` times both implementations once per kernel and shape class and keeps
    the faster; a Triton kernel that fails falls back to torch."""
    from trispec_vllm.kernels import triton_support as ts

    monkeypatch.setattr(ts, "use_triton", lambda t: True)
    monkeypatch.setattr(ts, "_choices", {})
    monkeypatch.delenv(ts.BACKEND_ENV, raising=False)
    speed = {"triton": 1.0, "torch_ref": 3.0}
    timed = []

    def timer(fn, args):
        timed.append(fn.__name__)
        return speed[fn.__name__]

    monkeypatch.setattr(ts, "cuda_ms", timer)

    def triton(x):
        return "triton"

    def torch_ref(x):
        return "torch"

    x = torch.zeros(5, 7)
    assert ts.run("k", x, triton, torch_ref, x) == "triton"
    assert timed == ["triton", "torch_ref"]
    assert ts.run("k", torch.zeros(8, 7), triton, torch_ref, x) == "triton"  # same bucket
    assert timed == ["triton", "torch_ref"]  # measured once
    speed["triton"] = 9.0
    assert ts.run("k", torch.zeros(9, 7), triton, torch_ref, x) == "torch"  # new bucket
    (choice,) = [c for key, c in ts.choices().items() if key[4] == 16]
    assert choice == ts.Choice("torch", 9.0, 3.0)

    def broken(x):
        raise RuntimeError("no Triton here")

    assert ts.run("other", x, broken, torch_ref, x) == "torch"
    assert ts.choices()[("other", "cpu", torch.float32, 7, 8)].triton_ms is None

    monkeypatch.setenv(ts.BACKEND_ENV, "triton")
    assert ts.run("k", torch.zeros(9, 7), triton, torch_ref, x) == "triton"  # forced
    monkeypatch.setenv(ts.BACKEND_ENV, "torch")
    assert ts.run("k", x, triton, torch_ref, x) == "torch"
    monkeypatch.setenv(ts.BACKEND_ENV, "fastest")
    with pytest.raises(ValueError, match="TRISPEC_KERNELS must be one of auto, triton, torch"):
        ts.run("k", x, triton, torch_ref, x)


def test_kernel_warmup_covers_every_shape_class(monkeypatch):
    """The warm-up runs each kernel once per rows bucket up to the step's most rows
    (and not at all where kernels take the torch reference, as on CPU)."""
    from trispec_vllm.config import make_config
    from trispec_vllm.engine import kernel_warmup

    assert kernel_warmup.row_buckets(1) == [1]
    assert kernel_warmup.row_buckets(20) == [1, 2, 4, 8, 16, 32]
    cfg = make_config(proxy_model="p", policy="pyramid")
    assert kernel_warmup.warm_kernels(cfg, 64, torch.float32, torch.device("cpu"), 20) == []

    calls = []
    monkeypatch.setattr(kernel_warmup, "use_triton", lambda t: True)
    monkeypatch.setattr(
        kernel_warmup, "top2_margins", lambda x, t=None: calls.append(("m", *x.shape))
    )
    monkeypatch.setattr(
        kernel_warmup, "divergence", lambda p, q, t, k: calls.append(("d", *p.shape))
    )
    got = kernel_warmup.warm_kernels(cfg, 64, torch.float32, torch.device("cpu"), 20)
    assert got == [1, 2, 4, 8, 16, 32]
    assert sorted({c[1] for c in calls}) == got
    assert sum(c[0] == "d" for c in calls) == len(got)  # pyramid: the divergence kernel too


NGRAM_WARMUP = """
import numpy as np
from vllm.v1.spec_decode import ngram_proposer as ng
from trispec_vllm.engine.kernel_warmup import warm_ngram_drafter

drafter = object.__new__(ng.NgramProposer)  # the attributes its __init__ sets
drafter.min_n, drafter.max_n, drafter.k, drafter.max_model_len = 1, 3, 3, 64
drafter.valid_ngram_draft = np.zeros((4, 3), dtype=np.int32)
drafter.valid_ngram_num_drafts = np.zeros(4, dtype=np.int32)
drafter.num_tokens_threshold, drafter.num_numba_thread_available = 8192, 1
num_tokens, token_ids = np.zeros(4, dtype=np.int32), np.zeros((4, 64), dtype=np.int32)
# vLLM's own warm-up: requests that sampled nothing never reach the compiled function
drafter.propose(3, [[]] * 4, num_tokens, token_ids)
print(len(ng.batch_propose_numba.signatures))
assert not warm_ngram_drafter(object(), num_tokens, token_ids)
assert warm_ngram_drafter(drafter, num_tokens, token_ids)
print(len(ng.batch_propose_numba.signatures))
token_ids[1, :6] = [5, 6, 7, 5, 6, 7]
num_tokens[1] = 6
print(drafter.propose(3, [[], [7]], num_tokens, token_ids))
print(len(ng.batch_propose_numba.signatures))
"""


def test_ngram_drafter_is_compiled_at_start_up():
    """vLLM's ngram drafter compiles on its first real proposal (its own warm-up
    skips the compiled function); the warm-up compiles the signature a step calls,
    so a later proposal compiles nothing more (a fresh process: compiling is global)."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", NGRAM_WARMUP], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert out[:2] == ["0", "1"]
    assert out[2] == "[[], [5, 6, 7]]"
    assert out[3] == "1"
