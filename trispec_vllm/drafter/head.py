"""TriSpec's one-layer drafter head over the proxy's hidden states (EAGLE-style).

At each position the head's input is `adapter(feature) + embed(token)`: the
feature is the proxy's last hidden state at the previous position (after its
final norm, the vector its LM head reads), the token is the one at this
position. One decoder layer of the proxy's own architecture (initialised from
the proxy's last layer), the proxy's final norm and the proxy's LM head turn
it into the next feature and the next token's logits. Drafting feeds the
head's own output feature back in, k times, as EAGLE does.

What differs from EAGLE: the head's attention sees the draft chain only (its
KV cache lives for one proposal), not a KV cache of its own over the whole
context: the context reaches it through the proxy's feature, which the proxy
computes anyway in every TriSpec step. That keeps the head free of vLLM's
paged KV cache. The embedding and LM head stay frozen (the proxy's): only the
adapter, the layer and the norm learn, so an optimiser step costs a small
layer, not the 150k-row vocabulary.

Draft vocabulary: the whole LM head, or (`set_draft_vocab`) the rows of the N
tokens the proxy predicts most often, as EAGLE-3 does: on a 150k vocabulary the
LM head is most of a draft's cost, and the proxy's top-1 rarely leaves the
frequent tokens (docs/drafter.md has the measured coverage and time).

Plain torch and transformers: no vLLM import, so it is testable in
milliseconds on tiny configs and reusable offline (`train-drafter`).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn


class Adapter(nn.Module):
    """The proxy feature's map into the head's input space: a residual MLP that
    starts as the identity (its output layer is zero), so a cold head reads the
    proxy's own feature."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.up = nn.Linear(hidden, hidden)
        self.down = nn.Linear(hidden, hidden)
        nn.init.zeros_(self.down.weight)
        nn.init.zeros_(self.down.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(nn.functional.silu(self.up(x)))


class DraftHead(nn.Module):
    """adapter + one decoder layer + final norm + (frozen) LM head."""

    def __init__(self, model: nn.Module, hidden: int) -> None:
        super().__init__()
        self.lm = model  # transformers CausalLM with one decoder layer
        self.adapter = Adapter(hidden)
        self.hidden = hidden
        self.draft_vocab: torch.Tensor | None = None  # [N] ids drafted from; None: all
        self._draft_rows: torch.Tensor | None = None  # [N, H] their LM-head rows
        for p in self.embed.parameters():
            p.requires_grad_(False)
        for p in self.lm.get_output_embeddings().parameters():
            p.requires_grad_(False)

    @property
    def embed(self) -> nn.Embedding:
        return self.lm.get_input_embeddings()

    @property
    def lm_head_weight(self) -> torch.Tensor:
        return self.lm.get_output_embeddings().weight

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The learned weights (adapter, layer, norm): what a checkpoint holds."""
        names = {id(p) for p in self.trainable()}
        return {n: p.detach().cpu().clone() for n, p in self.named_parameters() if id(p) in names}

    def load_trainable(self, state: dict[str, torch.Tensor]) -> None:
        own = dict(self.named_parameters())
        missing = [n for n in own if own[n].requires_grad and n not in state]
        unknown = [n for n in state if n not in own]
        if missing or unknown:
            raise ValueError(
                f"drafter checkpoint does not fit this head: missing {missing[:3]}, "
                f"unknown {unknown[:3]}"
            )
        with torch.no_grad():
            for n, t in state.items():
                own[n].copy_(t.to(own[n].device, own[n].dtype))

    def forward(
        self,
        features: torch.Tensor,  # [N, L, H] feature at the position before each input
        tokens: torch.Tensor,  # [N, L] token at each input position
        positions: torch.Tensor,  # [N, L]
        cache=None,
    ) -> torch.Tensor:
        """[N, L, H] output features (normed: what the LM head reads), causal over L
        (and over `cache`, a transformers Cache of earlier chain positions)."""
        x = self.adapter(features.to(self.adapter.up.weight.dtype)) + self.embed(tokens)
        out = self.lm.model(
            inputs_embeds=x,
            position_ids=positions,
            past_key_values=cache,
            use_cache=cache is not None,
        )
        return out.last_hidden_state

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        return feats @ self.lm_head_weight.t()

    def set_draft_vocab(self, ids: torch.Tensor | None) -> None:
        """Draft from the tokens `ids` only (None: the whole vocabulary). The LM head
        is frozen, so its rows are copied once."""
        if ids is None:
            self.draft_vocab = self._draft_rows = None
            return
        ids = torch.as_tensor(ids, dtype=torch.long).flatten()
        vocab = self.lm_head_weight.shape[0]
        if ids.numel() == 0 or int(ids.min()) < 0 or int(ids.max()) >= vocab:
            raise ValueError(f"draft vocabulary ids must lie in [0, {vocab}) and be non-empty")
        ids = ids.to(self.lm_head_weight.device)
        self.draft_vocab = ids
        self._draft_rows = self.lm_head_weight.detach()[ids].contiguous()

    def next_tokens(self, feats: torch.Tensor) -> torch.Tensor:
        """[...] greedy next token of each [..., H] feature over the draft vocabulary."""
        if self.draft_vocab is None:
            return self.logits(feats).argmax(dim=-1)
        return self.draft_vocab[(feats @ self._draft_rows.t()).argmax(dim=-1)]

    @torch.inference_mode()
    def draft(
        self, features: torch.Tensor, tokens: torch.Tensor, positions: torch.Tensor, k: int
    ) -> torch.Tensor:
        """[B, k] greedy drafts from ([B, H] feature, [B] last token, [B] its position)."""
        from transformers import DynamicCache

        cache = DynamicCache()
        f, tok, pos = features[:, None], tokens[:, None], positions[:, None]
        out = []
        for _ in range(k):
            f = self(f, tok, pos, cache)
            tok = self.next_tokens(f[:, -1])[:, None]
            out.append(tok)
            pos = pos + 1
        return torch.cat(out, dim=1)


def _proxy_tensors(proxy_dir: Path, names: dict[str, str]) -> dict[str, torch.Tensor]:
    """The proxy checkpoint's tensors named in `names` (checkpoint name -> head name)."""
    from safetensors import safe_open

    files = sorted(proxy_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(
            f"the learned drafter reads the proxy's safetensors: none in {proxy_dir}"
        )
    out = {}
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open has keys(), not iteration
                if key in names:
                    out[names[key]] = f.get_tensor(key)
    return out


def build_head(proxy_dir: str | Path, device: torch.device | str = "cpu") -> DraftHead:
    """A head initialised from the proxy checkpoint at `proxy_dir` (any transformers
    decoder family whose layers are named `model.layers.N`): its last layer, final
    norm, embedding and LM head. The head computes in float32 (it learns online)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    proxy_dir = Path(proxy_dir).expanduser()
    config = AutoConfig.from_pretrained(proxy_dir)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    last = text.num_hidden_layers - 1
    tied = bool(getattr(text, "tie_word_embeddings", False))
    one = copy.deepcopy(config)
    one_text = one.get_text_config() if hasattr(one, "get_text_config") else one
    one_text.num_hidden_layers = 1
    for key in ("layer_types", "sliding_window_pattern"):
        if isinstance(getattr(one_text, key, None), list):
            setattr(one_text, key, getattr(one_text, key)[-1:])
    model = AutoModelForCausalLM.from_config(one, dtype=torch.float32)
    wanted = {}
    for name in model.state_dict():
        src = name.replace("model.layers.0.", f"model.layers.{last}.")
        wanted[src] = name
    found = _proxy_tensors(proxy_dir, wanted)
    if tied:
        found.pop("lm_head.weight", None)
    missing = [
        n for n in model.state_dict() if n not in found and not (tied and n == "lm_head.weight")
    ]
    if missing:
        raise ValueError(
            f"the proxy checkpoint {proxy_dir} lacks the tensors the drafter head copies "
            f"(its layout is not transformers' `model.layers.N`): {missing[:4]}"
        )
    model.load_state_dict(found, strict=False)
    if tied:
        model.tie_weights()
    head = DraftHead(model, text.hidden_size).to(device)
    head.proxy_fingerprint = fingerprint(proxy_dir)
    return head


def fingerprint(proxy_dir: str | Path) -> str:
    """What a checkpoint must have been trained on: the proxy config's shape keys."""
    cfg = json.loads((Path(proxy_dir).expanduser() / "config.json").read_text())
    text = cfg.get("text_config", cfg)
    keys = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size")
    return json.dumps({k: text.get(k, cfg.get(k)) for k in keys}, sort_keys=True)
