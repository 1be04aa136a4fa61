"""`LearnedDrafter`: vLLM's `custom_class` proposer around the drafter head.

vLLM builds it with the engine's config and calls `load_model` and then, after
every step's sampling, `propose(sampled_token_ids, num_tokens_no_spec, ...)`.
vLLM hands a custom proposer no hidden states, so TriSpec's model runner feeds
it the proxy's features of each step (`feed`, right after the proxy's pass);
`propose` then (1) turns the step's verdicts into training windows, (2)
drafts k tokens per request from the feature of its last sampled token and
(3) takes an optimiser step every `drafter_update_every` steps. Requests the
proxy did not run for in this step get no drafts (vLLM accepts empty lists).

Lossless mode stays exact whatever the head drafts (the target verifies every
draft). In lossy modes the drafts steer which tokens the proxy may complete,
and learning makes them depend on what the engine served before
(docs/determinism.md).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from trispec_vllm.config import parse_trispec_config
from trispec_vllm.drafter import checkpoint
from trispec_vllm.drafter.learning import TOP_M, OnlineLearner, ReplayBuffer, Window

logger = logging.getLogger("vllm.trispec")


@dataclass
class StepFeatures:
    """The proxy's view of one step's sampled rows (all per batch row, batch order)."""

    req_ids: list[str]
    row_offsets: np.ndarray  # [B] first sampled row of each request
    num_rows: np.ndarray  # [B] its rows: drafts + 1 (one for a prefill chunk)
    first_position: np.ndarray  # [B] position of the token its first row read
    row_tokens: np.ndarray  # [rows] that token, per row
    hidden: torch.Tensor  # [rows, H] the proxy's last hidden state (after its final norm)
    teacher_ids: torch.Tensor  # [rows, M] the proxy's top-M next tokens
    teacher_probs: torch.Tensor  # [rows, M]


@dataclass
class DrafterCounts:
    """What the drafter did since the last `take_counts()`."""

    updates: int = 0
    losses: list[float] = field(default_factory=list)
    update_seconds: float = 0.0
    draft_seconds: float = 0.0
    windows: int = 0


def teacher_rows(logits: torch.Tensor, m: int = TOP_M) -> tuple[torch.Tensor, torch.Tensor]:
    """([rows, M] ids, [rows, M] probabilities) of the proxy's top-M tokens: a top-M
    of the logits and one log-sum-exp, not a whole-vocabulary softmax."""
    top, ids = logits.topk(min(m, logits.shape[-1]), dim=-1)
    lse = torch.logsumexp(logits.float(), dim=-1, keepdim=True)
    return ids, (top.float() - lse).exp()


class LearnedDrafter:
    """TriSpec's adapter-fed one-layer drafter over the proxy's hidden states."""

    def __init__(self, vllm_config) -> None:
        cfg = parse_trispec_config(getattr(vllm_config, "additional_config", None))
        if cfg is None:
            raise ValueError(
                "trispec_vllm.drafter.LearnedDrafter drafts from the proxy's hidden states: "
                "set additional_config={'trispec': {'proxy_model': ...}}"
            )
        self.cfg = cfg
        self.k = vllm_config.speculative_config.num_speculative_tokens
        self.max_model_len = vllm_config.model_config.max_model_len
        self.device = torch.device(getattr(vllm_config.device_config, "device", "cpu") or "cpu")
        self.learning = cfg.drafter_learning is not False
        self.head = None
        self.learner: OnlineLearner | None = None
        self.buffer: ReplayBuffer | None = None
        self._features: StepFeatures | None = None
        self._last: dict[str, tuple[torch.Tensor, int]] = {}  # req -> (feature, its position)
        self.steps = 0
        self.counts = DrafterCounts()
        self.seed = int(getattr(vllm_config.model_config, "seed", 0) or 0)

    # ------------------------------------------------------------ loading
    def load_model(self, *_args, **_kwargs) -> None:
        """vLLM's hook at weight-loading time: build the head from the proxy's
        checkpoint, then the saved learned weights if `drafter_checkpoint` has them."""
        from trispec_vllm.drafter.head import build_head

        with torch.inference_mode(False):
            self.head = build_head(self.cfg.proxy_model, self.device).eval()
            self.buffer = ReplayBuffer(
                self.cfg.drafter_buffer, self.k + 1, self.head.hidden, self.device
            )
            self.learner = OnlineLearner(
                self.head, self.buffer, self.cfg.drafter_lr, self.cfg.drafter_batch, self.seed
            )
            path = self.cfg.drafter_checkpoint
            if path is not None and Path(path).expanduser().exists():
                state = checkpoint.load(path, self.head.proxy_fingerprint)
                self.head.load_trainable(state["head"])
                self.head.set_draft_vocab(state.get("draft_vocab"))  # checked by load()
                if state.get("learner") and self.learning:
                    self.learner.load_state_dict(state["learner"])
                vocab = self.head.draft_vocab
                logger.info(
                    "TriSpec: drafter head loaded from %s (%d updates so far; drafts over %s)",
                    path,
                    self.learner.updates,
                    "the whole vocabulary" if vocab is None else f"{vocab.numel()} tokens",
                )
            else:
                logger.info("TriSpec: drafter head initialised from the proxy's last layer")

    def save(self) -> None:
        """Write the head (and the learner's state) to `drafter_checkpoint`, if set."""
        if self.head is None or self.cfg.drafter_checkpoint is None or not self.learning:
            return
        checkpoint.save(
            self.cfg.drafter_checkpoint,
            self.head.trainable_state(),
            self.learner.state_dict(),
            self.head.proxy_fingerprint,
            self.head.draft_vocab,
        )

    # ------------------------------------------------------------ per step
    def feed(self, features: StepFeatures | None) -> None:
        """The proxy's features of the step now running (None: the proxy did not run)."""
        self._features = features

    def propose(self, sampled_token_ids, num_tokens_no_spec, token_ids_cpu=None, **_kwargs):
        """One draft list per request of the batch, in batch order."""
        feats, self._features = self._features, None
        n = len(sampled_token_ids)
        out: list[list[int]] = [[] for _ in range(n)]
        if feats is None or len(feats.req_ids) != n or self.head is None:
            self._last.clear()
            return out
        live: dict[str, tuple[torch.Tensor, int]] = {}
        rows, tokens, positions, who = [], [], [], []
        for i, req_id in enumerate(feats.req_ids):
            sampled = list(sampled_token_ids[i])
            if not sampled:
                continue
            if self.learning:
                self._record(feats, i, sampled)
            used = len(sampled)
            if used > int(feats.num_rows[i]):
                continue
            row = int(feats.row_offsets[i]) + used - 1
            pos = int(feats.first_position[i]) + used  # position of the last sampled token
            if pos != int(num_tokens_no_spec[i]) - 1:
                continue  # the runner's view and vLLM's disagree: no drafts, no harm
            live[req_id] = (feats.hidden[row], pos - 1)
            room = self.max_model_len - 1 - pos
            if room <= 0:
                continue
            rows.append(row)
            tokens.append(sampled[-1])
            positions.append(pos)
            who.append((i, min(self.k, room)))
        self._last = live
        if rows:
            t0 = time.perf_counter()
            drafts = self.head.draft(
                feats.hidden[torch.tensor(rows, device=feats.hidden.device)].float(),
                torch.tensor(tokens, device=self.device),
                torch.tensor(positions, device=self.device),
                self.k,
            ).tolist()
            for (i, room), d in zip(who, drafts, strict=True):
                out[i] = d[:room]
            self.counts.draft_seconds += time.perf_counter() - t0
        self.steps += 1
        self._maybe_update()
        return out

    def _record(self, feats: StepFeatures, i: int, sampled: list[int]) -> None:
        """The training window of request i's rows this step, if its previous
        feature (the input of its first row) is known."""
        prev = self._last.get(feats.req_ids[i])
        first = int(feats.first_position[i])
        if prev is None or prev[1] != first - 1:
            return
        r, off = int(feats.num_rows[i]), int(feats.row_offsets[i])
        hid = feats.hidden[off : off + r].float()
        toks = torch.from_numpy(feats.row_tokens[off : off + r].astype(np.int64))
        drafts = torch.full((r,), -1, dtype=torch.long)
        drafts[: r - 1] = toks[1:]
        verified = torch.full((r,), -1, dtype=torch.long)
        m = min(r, len(sampled))
        verified[:m] = torch.tensor(sampled[:m])
        accepted = 0
        while (
            accepted < r - 1
            and accepted < len(sampled)
            and int(toks[accepted + 1]) == sampled[accepted]
        ):
            accepted += 1
        rewards = torch.full((r,), -1, dtype=torch.long)
        rewards[:accepted] = 1
        if accepted < r - 1:
            rewards[accepted] = 0
        dev = self.device
        self.buffer.add(
            Window(
                features=torch.cat([prev[0].float()[None], hid[:-1]]).to(dev),
                tokens=toks.to(dev),
                positions=(first + torch.arange(r)).to(dev),
                target_features=hid.to(dev),
                teacher_ids=feats.teacher_ids[off : off + r],
                teacher_probs=feats.teacher_probs[off : off + r],
                drafts=drafts.to(dev),
                verified=verified.to(dev),
                rewards=rewards.to(dev),
            )
        )
        self.counts.windows += 1

    def _maybe_update(self) -> None:
        cfg = self.cfg
        if not self.learning or self.steps % cfg.drafter_update_every:
            return
        if len(self.buffer) < cfg.drafter_min_examples:
            return
        t0 = time.perf_counter()
        try:
            loss = self.learner.update()
        except Exception:  # learning is optional work: never let it stop serving
            logger.exception(
                "TriSpec: the drafter's update failed; learning is off for this engine, "
                "drafting goes on with the head as it is"
            )
            self.learning = False
            return
        finally:
            self.counts.update_seconds += time.perf_counter() - t0
        if math.isnan(loss):  # the learner dropped the step
            logger.warning("TriSpec: drafter update skipped (non-finite loss or gradient)")
            return
        self.counts.updates += 1
        self.counts.losses.append(loss)
        if (
            cfg.drafter_checkpoint is not None
            and self.learner.updates % cfg.drafter_save_every == 0
        ):
            self.save()

    def take_counts(self) -> DrafterCounts:
        counts, self.counts = self.counts, DrafterCounts()
        return counts
