"""The learned drafter without an engine: head, DVI loss schedule, learning, checkpoints,
and the settings checks that run before any weights load."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from trispec_vllm.drafter import checkpoint
from trispec_vllm.drafter.head import build_head
from trispec_vllm.drafter.learning import (
    FINAL_KL,
    KL_ONLY_UPDATES,
    RAMP_UPDATES,
    OnlineLearner,
    ReplayBuffer,
    Window,
    dvi_loss,
    loss_weights,
)

TEXTS = [
    "def add(a, b): return a + b\n",
    "the cat sat on the mat. the dog sat on the log. ",
    "for i in range(10): print(i)\n",
    "hello world, hello there, hello again\n",
]


@pytest.fixture(scope="module")
def llama_pair(tmp_path_factory):
    from trispec_vllm.testing import make_tiny_llama_pair

    return make_tiny_llama_pair(tmp_path_factory.mktemp("llama_pair"))


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_head_starts_from_the_proxys_last_layer(family, tiny_pair, llama_pair):
    from safetensors.torch import load_file

    pair = tiny_pair if family == "qwen2" else llama_pair
    head = build_head(pair.proxy)
    proxy = {}
    for f in sorted(Path(pair.proxy).glob("*.safetensors")):
        proxy.update(load_file(str(f)))
    last = max(int(k.split(".")[2]) for k in proxy if k.startswith("model.layers."))
    for name, p in head.lm.state_dict().items():
        src = name.replace("model.layers.0.", f"model.layers.{last}.")
        if src in proxy:
            assert torch.equal(p, proxy[src].float()), name
    # The adapter starts as the identity, so a cold head reads the proxy's feature.
    x = torch.randn(3, head.hidden)
    assert torch.equal(head.adapter(x), x)
    drafts = head.draft(torch.randn(2, head.hidden), torch.tensor([5, 7]), torch.tensor([3, 9]), 4)
    assert drafts.shape == (2, 4)


def test_dvi_schedule():
    assert loss_weights(0) == (1.0, 0.0)
    assert loss_weights(KL_ONLY_UPDATES - 1) == (1.0, 0.0)
    kl, pg = loss_weights(KL_ONLY_UPDATES + RAMP_UPDATES // 2)
    assert 0.0 < pg < 1.0 and FINAL_KL < kl < 1.0
    assert loss_weights(KL_ONLY_UPDATES + RAMP_UPDATES) == pytest.approx((FINAL_KL, 1.0))
    assert loss_weights(10_000) == pytest.approx((FINAL_KL, 1.0))


def _window(head, length, seed, reward=-1):
    g = torch.Generator().manual_seed(seed)
    h = head.hidden
    return Window(
        features=torch.randn(length, h, generator=g),
        tokens=torch.randint(0, 500, (length,), generator=g),
        positions=torch.arange(length) + seed,
        target_features=torch.randn(length, h, generator=g),
        teacher_ids=torch.randint(0, 500, (length, 16), generator=g),
        teacher_probs=torch.rand(length, 16, generator=g),
        drafts=torch.full((length,), 3),
        verified=torch.full((length,), 3),
        rewards=torch.full((length,), reward),
    )


def test_loss_is_finite_with_padding_missing_tokens_and_rewards(tiny_pair):
    head = build_head(tiny_pair.proxy)
    buf = ReplayBuffer(8, 4, head.hidden, "cpu")
    for i in range(8):
        w = _window(head, 1 + i % 4, i, reward=i % 3 - 1)
        if i % 2:
            w.drafts[:] = -1
            w.verified[:] = -1
        buf.add(w)
    batch = buf.sample(8, torch.Generator().manual_seed(0))
    for update in (0, KL_ONLY_UPDATES + 5, 500):
        loss, parts = dvi_loss(head, batch, update)
        assert torch.isfinite(loss), parts
        assert {"kl", "rollout_kl", "rollout_reg"} <= parts.keys()
    loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in head.trainable())


def test_buffer_is_a_bounded_ring(tiny_pair):
    head = build_head(tiny_pair.proxy)
    buf = ReplayBuffer(4, 3, head.hidden, "cpu")
    for i in range(10):
        buf.add(_window(head, 2, i))
    assert len(buf) == 4
    assert buf.valid.sum(1).tolist() == [2, 2, 2, 2]


def test_distilling_on_a_prompt_set_raises_agreement_on_it(tiny_pair, tmp_path):
    """The learning loop itself, deterministically: a head trained on a fixed prompt set
    drafts the proxy's top-1 more often on those prompts than the cold head did, and
    its loss falls. (Fixed seeds; the comparison is before vs after, no tuned bar.)"""
    from trispec_vllm.drafter.distill import distill

    texts = TEXTS * 2  # held-out half = the training half's texts
    report = distill(
        tiny_pair.proxy,
        texts,
        tmp_path / "h.pt",
        k=3,
        updates=150,
        lr=1e-3,
        batch_size=16,
        holdout=0.5,
        draft_vocab=256,
    )
    assert report["loss_last"] < report["loss_first"]
    assert report["heldout_after"]["first"] > report["heldout_before"]["first"]
    # The draft vocabulary starts with every top-1 token of the training half (fewer
    # than 256 distinct); the held-out half has the same texts here, so it covers
    # every prediction there, and restricting drafts to it loses no agreement.
    assert report["draft_vocab"] == 256 and report["heldout_coverage"] == 1.0
    restricted = report["heldout_after_draft_vocab"]["first"]
    assert restricted >= report["heldout_after"]["first"]
    fp = build_head(tiny_pair.proxy).proxy_fingerprint
    assert checkpoint.load(tmp_path / "h.pt", fp)["draft_vocab"].numel() == 256


def test_rollout_training_lengthens_the_draft_chain(tiny_pair):
    """Training also on the head's own features (rollout) makes later drafts of a
    chain agree with the proxy more often than teacher features alone do. Texts are
    the tiny proxy's own greedy continuations, so every position of them is one
    the proxy would accept; measured on the training texts (a random tiny model
    has nothing to generalise), fixed seeds."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trispec_vllm.drafter.distill import first_draft_agreement, trace, windows

    tok = AutoTokenizer.from_pretrained(tiny_pair.proxy)
    proxy = AutoModelForCausalLM.from_pretrained(tiny_pair.proxy, dtype=torch.float32).eval()
    traces = []
    for i, text in enumerate(TEXTS * 2):
        ids = torch.tensor([tok(text).input_ids[:8] + [i * 37 % 400]])
        with torch.no_grad():
            seq = proxy.generate(ids, max_new_tokens=48, do_sample=False)[0]
        traces.append(trace(proxy, seq.tolist()))
    k, tau = 3, {}
    for rollout in (False, True):
        torch.manual_seed(0)
        head = build_head(tiny_pair.proxy)
        ws = [w for tr in traces for w in windows(tr, k + 1)]
        buf = ReplayBuffer(len(ws), k + 1, head.hidden, "cpu")
        for w in ws:
            buf.add(w)
        learner = OnlineLearner(head, buf, 1e-3, 16, seed=0, kl_only=True, rollout=rollout)
        for _ in range(250):
            learner.update()
        tau[rollout] = first_draft_agreement(head, traces, k)["tau"]
    assert tau[True] > tau[False] > 0, tau


def test_online_learner_updates_change_drafts(tiny_pair):
    head = build_head(tiny_pair.proxy)
    buf = ReplayBuffer(32, 4, head.hidden, "cpu")
    for i in range(32):
        buf.add(_window(head, 4, i, reward=1))
    before = [p.detach().clone() for p in head.trainable()]
    learner = OnlineLearner(head, buf, lr=1e-3, batch_size=8)
    with torch.inference_mode():  # the engine calls it inside vLLM's inference mode
        learner.update()
    assert learner.updates == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, head.trainable(), strict=True))


def test_a_non_finite_update_is_dropped_and_learning_goes_on(tiny_pair, monkeypatch):
    import trispec_vllm.drafter.learning as learning

    head = build_head(tiny_pair.proxy)
    buf = ReplayBuffer(32, 4, head.hidden, "cpu")
    for i in range(32):
        buf.add(_window(head, 4, i, reward=1))
    learner = OnlineLearner(head, buf, lr=1e-3, batch_size=8)
    before = [p.detach().clone() for p in head.trainable()]
    real = learning.dvi_loss

    def poisoned(*args, **kwargs):
        loss, parts = real(*args, **kwargs)
        return loss * float("nan"), parts

    monkeypatch.setattr(learning, "dvi_loss", poisoned)
    assert learner.update() != learner.update()  # NaN, twice
    assert (learner.updates, learner.skipped) == (0, 2)
    assert all(torch.equal(a, b) for a, b in zip(before, head.trainable(), strict=True))
    monkeypatch.setattr(learning, "dvi_loss", real)
    losses = [learner.update(), learner.update()]
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert learner.updates == 2
    assert all(torch.isfinite(p).all() for p in head.trainable())


def test_a_failing_update_turns_learning_off_without_stopping_the_drafter():
    from trispec_vllm.drafter.proposer import DrafterCounts, LearnedDrafter

    class Failing:
        updates = 0

        def update(self):
            raise RuntimeError("out of memory")

    drafter = object.__new__(LearnedDrafter)
    drafter.cfg = SimpleNamespace(
        drafter_update_every=1, drafter_min_examples=0, drafter_checkpoint=None
    )
    drafter.learning, drafter.steps, drafter.counts = True, 1, DrafterCounts()
    drafter.buffer, drafter.learner = [], Failing()
    drafter._maybe_update()
    assert drafter.learning is False
    assert drafter.counts.updates == 0
    drafter._maybe_update()  # off now: not called again


def test_checkpoint_round_trip_gives_the_same_drafts(tiny_pair, tmp_path):
    head = build_head(tiny_pair.proxy)
    with torch.no_grad():
        for p in head.trainable():
            p.add_(0.01 * torch.randn_like(p))
    path = tmp_path / "head.pt"
    checkpoint.save(path, head.trainable_state(), {"updates": 7}, head.proxy_fingerprint)
    fresh = build_head(tiny_pair.proxy)
    fresh.load_trainable(checkpoint.load(path, fresh.proxy_fingerprint)["head"])
    args = (torch.randn(3, head.hidden), torch.tensor([1, 2, 3]), torch.tensor([4, 8, 16]), 4)
    assert torch.equal(head.draft(*args), fresh.draft(*args))
    assert not list(tmp_path.glob("*.tmp"))  # the atomic write left no temporary file


def test_checkpoint_of_another_proxy_or_garbage_is_refused(tiny_pair, llama_pair, tmp_path):
    head = build_head(tiny_pair.proxy)
    path = tmp_path / "head.pt"
    checkpoint.save(path, head.trainable_state(), None, head.proxy_fingerprint)
    other = build_head(llama_pair.proxy)
    with pytest.raises(checkpoint.CheckpointError, match="trained for another proxy"):
        checkpoint.load(path, other.proxy_fingerprint)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoint.CheckpointError, match="not a readable checkpoint"):
        checkpoint.load(bad, head.proxy_fingerprint)


def test_draft_vocabulary_restricts_drafts_and_survives_a_checkpoint(tiny_pair, tmp_path):
    head = build_head(tiny_pair.proxy)
    args = (torch.randn(6, head.hidden), torch.arange(6) + 3, torch.arange(6) + 2, 4)
    full = head.draft(*args)
    # A vocabulary holding every token the full head drafts: the same drafts.
    head.set_draft_vocab(torch.unique(full).flip(0))
    assert torch.equal(head.draft(*args), full)
    # A vocabulary without them: every draft comes from it, and the choice is the
    # best-scoring member (the full head's argmax over those rows).
    vocab = torch.tensor([i for i in range(50) if i not in set(full.flatten().tolist())])
    head.set_draft_vocab(vocab)
    small = head.draft(*args)
    assert set(small.flatten().tolist()) <= set(vocab.tolist())
    feats = torch.randn(5, head.hidden)
    assert torch.equal(head.next_tokens(feats), vocab[head.logits(feats)[:, vocab].argmax(-1)])
    path = tmp_path / "head.pt"
    checkpoint.save(path, head.trainable_state(), None, head.proxy_fingerprint, head.draft_vocab)
    state = checkpoint.load(path, head.proxy_fingerprint)
    assert torch.equal(state["draft_vocab"], vocab)
    with pytest.raises(ValueError, match="draft vocabulary"):
        head.set_draft_vocab(torch.tensor([0, head.lm_head_weight.shape[0]]))
    # A checkpoint whose vocabulary lies outside the proxy's is refused at load.
    bad = tmp_path / "bad_vocab.pt"
    checkpoint.save(bad, head.trainable_state(), None, head.proxy_fingerprint, vocab + 10**6)
    with pytest.raises(checkpoint.CheckpointError, match="draft vocabulary"):
        checkpoint.load(bad, head.proxy_fingerprint)


def test_frequent_tokens_and_their_coverage():
    from trispec_vllm.drafter.distill import ProxyTrace, coverage, frequent_tokens

    top = torch.tensor([[7], [7], [3], [7], [3], [9], [1]])  # top-1 per position
    tr = ProxyTrace(torch.zeros(7, dtype=torch.long), torch.zeros(7, 2), top, torch.ones(7, 1))
    ids = frequent_tokens([tr], 3, vocab=12)
    assert ids.tolist() == [7, 3, 1]  # by count, ties in id order
    assert coverage([tr], ids, 12) == pytest.approx(6 / 7)
    assert frequent_tokens([tr], 50, vocab=12).numel() == 12


def test_teacher_rows_equal_the_softmax_top_m():
    from trispec_vllm.drafter.proposer import teacher_rows

    logits = torch.randn(5, 300) * 4
    ids, probs = teacher_rows(logits, 16)
    want_p, want_i = torch.softmax(logits, -1).topk(16, -1)
    assert torch.equal(ids, want_i)
    assert torch.allclose(probs, want_p, atol=1e-6)


LEARNED = {
    "method": "custom_class",
    "model": "trispec_vllm.drafter.LearnedDrafter",
    "num_speculative_tokens": 3,
}
NGRAM = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3}


@pytest.mark.parametrize(
    ("section", "spec", "message"),
    [
        ({"drafter_lr": -1.0}, LEARNED, "drafter_lr"),
        ({"drafter_buffer": 16, "drafter_min_examples": 64}, LEARNED, "drafter_min_examples"),
        ({"drafter_checkpoint": "/nonexistent/dir/h.pt"}, LEARNED, "does not exist"),
        ({"drafter_checkpoint": "GARBAGE"}, LEARNED, "not a readable checkpoint"),
        ({"drafter_learning": True}, NGRAM, "settings of the learned drafter"),
        ({}, {**LEARNED, "model": "my.pkg.Proposer"}, "learned drafter only"),
        ({"policy": "pyramid"}, LEARNED, "policy 'trispec' only"),
    ],
)
def test_bad_drafter_settings_fail_before_weights_load(tiny_pair, tmp_path, section, spec, message):
    pytest.importorskip("vllm")
    from tests.test_plugin import engine_config

    if section.get("drafter_checkpoint") == "GARBAGE":
        bad = tmp_path / "garbage.pt"
        bad.write_bytes(b"\x00" * 10)
        section = {**section, "drafter_checkpoint": str(bad)}
    section = {"proxy_model": tiny_pair.proxy, **section}
    with pytest.raises(ValueError, match=message):
        engine_config(tiny_pair.target, {"trispec": section}, spec)


def test_learned_drafter_with_tensor_parallelism_is_refused(tiny_pair):
    pytest.importorskip("vllm")
    from tests.test_plugin import engine_config

    with pytest.raises(ValueError, match="tensor_parallel_size 1 only"):
        engine_config(
            tiny_pair.target,
            {"trispec": {"proxy_model": tiny_pair.proxy}},
            LEARNED,
            tensor_parallel_size=2,
        )
