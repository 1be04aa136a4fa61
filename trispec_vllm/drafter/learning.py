"""Online learning of the drafter head from the verifications a step already makes (DVI).

Kept from DVI (arXiv 2510.05421, code shrenikbhansali/DVI): a bounded replay
buffer of (feature, token, reward 1 for an accepted draft / 0 at the first
rejection, the verifier's distribution); one AdamW step (lr 5e-4, weight
decay 1e-2, gradient clip 1.0) every few engine steps once the buffer holds
enough examples; the loss schedule: KL to the verifier only for the first 40
updates, then an 80-update ramp to lambda_pg = 1 (reward-masked
cross-entropy on the drafter's own tokens) and lambda_kl = 0.05, plus
0.1 x cross-entropy on the verified tokens throughout.

Changed here: the verifier whose distribution is stored is the proxy (it runs
on every draft position in every step; the target's token enters as the
verified token where the target ran), kept as its top-M tokens and
probabilities rather than whole-vocabulary rows; the KL and cross-entropies
are taken over those candidates (plus the draft and the verified token), so
an update never multiplies the 150k-row LM head; EAGLE's feature regression
(smooth L1 to the proxy's own next feature) is added, which keeps the head's
features in the space the full LM head reads. Examples are windows of one
step's positions of one request, trained with the head's causal attention
over the window (teacher features, as EAGLE trains); the buffer keeps them
on the models' device. DVI trains LoRA on the target's shallow layers; here
the adapter, the layer and the final norm are trained, the rest is frozen.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

TOP_M = 16  # verifier candidates stored per position
KL_ONLY_UPDATES = 40
RAMP_UPDATES = 80
FINAL_KL = 0.05
CE_WEIGHT = 0.1
REG_WEIGHT = 1.0


@dataclass
class Window:
    """One request's positions of one step (L <= window length), as tensors:
    input feature and token per position, and what the verifiers said there."""

    features: torch.Tensor  # [L, H] proxy feature at the position before each input
    tokens: torch.Tensor  # [L] input token
    positions: torch.Tensor  # [L]
    target_features: torch.Tensor  # [L, H] the proxy's feature at each input position
    teacher_ids: torch.Tensor  # [L, M] the proxy's top-M next tokens
    teacher_probs: torch.Tensor  # [L, M] their probabilities
    drafts: torch.Tensor  # [L] the draft made for the next position (-1: none)
    verified: torch.Tensor  # [L] the token the step emitted there (-1: unknown)
    rewards: torch.Tensor  # [L] 1 accepted draft, 0 first rejection, -1 no reward


def loss_weights(update: int) -> tuple[float, float]:
    """(lambda_kl, lambda_pg) of DVI's schedule at optimiser step `update`."""
    if update < KL_ONLY_UPDATES:
        return 1.0, 0.0
    t = min(1.0, (update - KL_ONLY_UPDATES) / RAMP_UPDATES)
    return 1.0 - t * (1.0 - FINAL_KL), t


class ReplayBuffer:
    """A ring of windows padded to `length` positions, on one device."""

    def __init__(self, capacity: int, length: int, hidden: int, device, top_m: int = TOP_M) -> None:
        self.capacity, self.length, self.size, self._next = capacity, length, 0, 0
        c, n = capacity, length
        f = dict(device=device, dtype=torch.float32)
        i = dict(device=device, dtype=torch.long)
        self.features = torch.zeros((c, n, hidden), **f)
        self.target_features = torch.zeros((c, n, hidden), **f)
        self.teacher_probs = torch.zeros((c, n, top_m), **f)
        self.teacher_ids = torch.zeros((c, n, top_m), **i)
        self.tokens = torch.zeros((c, n), **i)
        self.positions = torch.zeros((c, n), **i)
        self.drafts = torch.full((c, n), -1, **i)
        self.verified = torch.full((c, n), -1, **i)
        self.rewards = torch.full((c, n), -1, **i)
        self.valid = torch.zeros((c, n), device=device, dtype=torch.bool)

    def __len__(self) -> int:
        return self.size

    def add(self, w: Window) -> None:
        slot, n = self._next, min(int(w.tokens.shape[0]), self.length)
        self._next = (slot + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)
        last = w.positions[n - 1] if n else 0
        for name in (
            "features",
            "target_features",
            "teacher_probs",
            "teacher_ids",
            "tokens",
            "drafts",
            "verified",
            "rewards",
        ):
            buf = getattr(self, name)
            buf[slot, :n] = getattr(w, name)[:n].to(buf.dtype)
        # Padding after the window: causal attention never lets it reach the real
        # positions; positions continue so rotary embeddings stay in range.
        self.positions[slot, :n] = w.positions[:n]
        self.positions[slot, n:] = (
            last + 1 + torch.arange(self.length - n, device=self.positions.device)
        )
        self.drafts[slot, n:] = self.verified[slot, n:] = self.rewards[slot, n:] = -1
        self.valid[slot] = False
        self.valid[slot, :n] = True

    def sample(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        idx = torch.randint(0, self.size, (n,), generator=generator).to(self.tokens.device)
        names = (
            "features",
            "target_features",
            "teacher_probs",
            "teacher_ids",
            "tokens",
            "positions",
            "drafts",
            "verified",
            "rewards",
            "valid",
        )
        return {name: getattr(self, name)[idx] for name in names}


def _candidate_index(teacher_ids: torch.Tensor, ids: torch.Tensor, own_col: int) -> torch.Tensor:
    """Column of `ids` among the candidates: its teacher column if the teacher
    lists it, else its own extra column `own_col`."""
    hit = teacher_ids == ids[..., None]
    return torch.where(hit.any(-1), hit.float().argmax(-1), torch.full_like(ids, own_col))


NEGATIVES = 1024  # shared negative tokens per update (all of a vocabulary this small)


def _negatives(vocab: int, device, tokens: torch.Tensor) -> torch.Tensor:
    """[R] token ids the softmax also normalises over: every id of a small vocabulary,
    else NEGATIVES ids drawn uniformly (seeded by the batch, so runs repeat)."""
    if vocab <= NEGATIVES:
        return torch.arange(vocab, device=device)
    g = torch.Generator().manual_seed(int(tokens.sum()) % (1 << 31))
    return torch.randperm(vocab, generator=g)[:NEGATIVES].to(device)


def dvi_loss(
    head, batch: dict[str, torch.Tensor], update: int, rollout: bool = True
) -> tuple[torch.Tensor, dict]:
    """DVI's loss at optimiser step `update` over a sampled batch of windows.

    `rollout` adds a second pass in which every position after a window's first
    reads the head's own output feature of the position before (from the first,
    teacher-fed pass) instead of the proxy's, as a draft chain does from its
    second draft on: one step of EAGLE-3's training-time test. Teacher features
    alone train the first draft only."""
    teacher = head(batch["features"], batch["tokens"], batch["positions"])  # [N, L, H]
    loss, parts = _pass_loss(head, batch, teacher, update)
    if rollout and teacher.shape[1] > 1:
        own = torch.cat([batch["features"][:, :1].to(teacher.dtype), teacher[:, :-1]], dim=1)
        chained = head(own, batch["tokens"], batch["positions"])
        loss_r, parts_r = _pass_loss(head, batch, chained, update)
        loss = loss + loss_r
        parts.update({f"rollout_{k}": v for k, v in parts_r.items()})
    return loss, parts


def _pass_loss(
    head, batch: dict[str, torch.Tensor], feats: torch.Tensor, update: int
) -> tuple[torch.Tensor, dict]:
    """DVI's loss terms for one pass's [N, L, H] output features."""
    valid = batch["valid"]
    t_ids, t_probs = batch["teacher_ids"], batch["teacher_probs"]
    m = t_ids.shape[-1]
    drafts, verified = batch["drafts"], batch["verified"]
    cand = torch.cat([t_ids, drafts.clamp(min=0)[..., None], verified.clamp(min=0)[..., None]], -1)
    w = head.lm_head_weight[cand].float()  # [N, L, M+2, H]
    z = torch.einsum("nlh,nlch->nlc", feats, w)
    d_col = _candidate_index(t_ids, drafts, m)
    v_hit = _candidate_index(t_ids, verified, m + 1)
    v_col = torch.where((verified == drafts) & (v_hit == m + 1), d_col, v_hit)
    # Extra columns count once, and only for a real token.
    extra_used = torch.stack([(d_col == m) & (drafts >= 0), (v_col == m + 1) & (verified >= 0)], -1)
    # Negatives shared by the batch (the whole vocabulary when it is small): without
    # them the candidates' softmax would not stop other tokens from rising.
    neg = _negatives(head.lm_head_weight.shape[0], cand.device, batch["tokens"])
    z_neg = feats @ head.lm_head_weight[neg].float().t()  # [N, L, R]
    # A negative that is also a candidate counts once (its candidate column).
    dup = (neg[None, None, None, :] == cand[..., None]).any(-2)
    z_neg = z_neg.masked_fill(dup, float("-inf"))
    mask = torch.cat([torch.ones_like(t_ids, dtype=torch.bool), extra_used], -1)
    z_all = torch.cat([z.masked_fill(~mask, float("-inf")), z_neg], -1)
    logq = torch.log_softmax(z_all, dim=-1)
    p = t_probs / t_probs.sum(-1, keepdim=True).clamp(min=1e-12)
    kl = (p * (p.clamp(min=1e-12).log() - logq[..., :m])).sum(-1)
    pick = lambda col: logq.gather(-1, col[..., None]).squeeze(-1)  # noqa: E731
    pg_rows = valid & (batch["rewards"] == 1) & (drafts >= 0)
    ce_rows = valid & (verified >= 0)
    reg = nn.functional.smooth_l1_loss(feats, batch["target_features"], reduction="none").mean(-1)

    def mean(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return torch.where(rows, x, torch.zeros_like(x)).sum() / rows.sum().clamp(min=1)

    w_kl, w_pg = loss_weights(update)
    parts = {
        "kl": mean(kl, valid),
        "pg": mean(-pick(d_col), pg_rows),
        "ce": mean(-pick(v_col), ce_rows),
        "reg": mean(reg, valid),
    }
    loss = (
        w_kl * parts["kl"]
        + w_pg * parts["pg"]
        + CE_WEIGHT * parts["ce"]
        + REG_WEIGHT * parts["reg"]
    )
    return loss, {k: float(v.detach()) for k, v in parts.items()}


class OnlineLearner:
    """AdamW over the head's trainable weights, one step per `update()` call."""

    def __init__(
        self,
        head,
        buffer: ReplayBuffer,
        lr: float,
        batch_size: int,
        seed: int = 0,
        kl_only: bool = False,
        rollout: bool = True,
    ) -> None:
        self.head, self.buffer, self.batch_size = head, buffer, batch_size
        self.rollout = rollout  # train the chain's own-feature positions too
        self.kl_only = kl_only  # offline distillation: no rewards, the teacher's KL throughout
        self.optimizer = torch.optim.AdamW(head.trainable(), lr=lr, weight_decay=1e-2)
        self.generator = torch.Generator().manual_seed(seed)
        self.updates = 0
        self.skipped = 0  # updates dropped for a non-finite loss or gradient

    def update(self) -> float:
        self.head.train()
        with torch.enable_grad(), torch.inference_mode(False):
            batch = self.buffer.sample(self.batch_size, self.generator)
            update = 0 if self.kl_only else self.updates
            loss, _ = dvi_loss(self.head, batch, update, self.rollout)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norm = nn.utils.clip_grad_norm_(self.head.trainable(), 1.0)
            finite = bool(torch.isfinite(loss.detach()) & torch.isfinite(norm))
            if finite:
                self.optimizer.step()
        self.head.eval()
        if not finite:
            # One bad batch (an overflowing feature, a degenerate teacher row) must
            # not poison the head every later draft reads: drop the step.
            self.skipped += 1
            return float("nan")
        self.updates += 1
        return float(loss.detach())

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.updates = int(state["updates"])
