"""Tiny random Qwen2 and Llama models with a locally built tokenizer, for tests and the demo.

The target and its proxy share the tokenizer, the vocabulary, the embedding
and the LM head; the proxy keeps only the target's first layers (which the
target's scaled-down later layers only nudge), so it agrees with the target
often but not always, like a real smaller model of the same family. The LM
head is scaled up so logits are peaky: greedy decoding has no near-ties, and
batch composition cannot flip a token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

VOCAB_SIZE = 512
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
_LETTERS = "etaoinshrdlucmfwypvbgk"


def _byte_alphabet() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes (what ByteLevel expects)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, extra = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def make_tokenizer(out_dir: str | Path, vocab_size: int = VOCAB_SIZE):
    """Write a byte-level BPE tokenizer of exactly `vocab_size` ids to out_dir.

    256 byte tokens, deterministic letter-pair merges, then the special tokens
    last, so every id a model can emit decodes to text.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    base = _byte_alphabet()
    n_merges = vocab_size - len(base) - len(SPECIAL_TOKENS)
    if n_merges < 0:
        raise ValueError(f"vocab_size must be at least {len(base) + len(SPECIAL_TOKENS)}")
    merges = []
    pairs = [(a, b) for a in _LETTERS + "Ġ" for b in _LETTERS]
    if n_merges > len(pairs):
        raise ValueError(f"vocab_size must be at most {len(base) + len(pairs) + 3}")
    merges = pairs[:n_merges]
    vocab = {tok: i for i, tok in enumerate(base)}
    for a, b in merges:
        vocab[a + b] = len(vocab)
    bpe = models.BPE(vocab=vocab, merges=merges)
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    assert tok.get_vocab_size() == vocab_size, tok.get_vocab_size()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        bos_token=None,
    )
    fast.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    fast.save_pretrained(str(out_dir))
    return fast


@dataclass(frozen=True)
class TinyPair:
    """Paths of a tiny target and its proxy (and a wrong-vocabulary proxy)."""

    target: str
    proxy: str
    other_vocab_proxy: str


def _save_model(
    model, tokenizer_dir: Path, out_dir: Path, max_len: int, vocab_size: int = VOCAB_SIZE
) -> None:
    model.save_pretrained(str(out_dir), safe_serialization=True)
    for src in tokenizer_dir.iterdir():  # tokenizer files and the chat template
        (out_dir / src.name).write_bytes(src.read_bytes())
    # make_tokenizer puts the special tokens last: <|endoftext|> is vocab_size - 3.
    gen = {"bos_token_id": None, "eos_token_id": vocab_size - 3, "max_length": max_len}
    (out_dir / "generation_config.json").write_text(json.dumps(gen))


def _config(
    config_cls,
    layers: int,
    vocab: int,
    hidden_size: int,
    max_positions: int,
    eos: int,
    **family,
):
    """A tiny config of one family (Qwen2Config, LlamaConfig, ...): the same shape for all
    (`family`: that family's own settings)."""
    return config_cls(
        vocab_size=vocab,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=max_positions,
        torch_dtype="float32",
        eos_token_id=eos,
        bos_token_id=None,
        pad_token_id=eos,
        initializer_range=0.2,
        **{"tie_word_embeddings": False, **family},
    )


def _peaky_logits(model, hidden_size: int, logit_scale: float) -> None:
    """Scale the LM head (initialised at std 0.2) so logits are peaky: greedy decoding
    has no near-ties, and batch composition cannot flip a token."""
    import torch

    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(logit_scale / 0.2 / hidden_size**0.5)


def _shape_target(target, hidden_size: int, logit_scale: float, keep: int, scale: float) -> None:
    """Peaky logits, and layers past the first `keep` that only nudge the residual
    stream: a model of its first `keep` layers then agrees with the target mostly,
    and disagrees where it is unsure."""
    import torch

    _peaky_logits(target, hidden_size, logit_scale)
    with torch.no_grad():
        for layer in target.model.layers[keep:]:
            layer.self_attn.o_proj.weight.mul_(scale)
            layer.mlp.down_proj.weight.mul_(scale)


def _truncated(model_cls, config, target):
    """A model of `config` holding the target's weights for the layers it has."""
    small = model_cls(config).float()
    small.load_state_dict({k: v for k, v in target.state_dict().items() if k in small.state_dict()})
    return small


def make_tiny_pair(
    out_dir: str | Path,
    *,
    hidden_size: int = 128,
    target_layers: int = 4,
    proxy_layers: int = 2,
    deep_layer_scale: float = 0.15,
    max_position_embeddings: int = 2048,
    logit_scale: float = 24.0,
    seed: int = 0,
) -> TinyPair:
    """Write target/, proxy/ and other_vocab_proxy/ under out_dir (fp32 safetensors).

    Idempotent: an existing complete pair in out_dir is reused.
    """
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    pair = TinyPair(
        target=str(out / "target"),
        proxy=str(out / "proxy"),
        other_vocab_proxy=str(out / "other_vocab_proxy"),
    )
    done = out / ".complete"
    if done.exists():
        return pair
    out.mkdir(parents=True, exist_ok=True)
    tok_dir = out / "tokenizer"
    make_tokenizer(tok_dir)

    def config(layers: int, vocab: int) -> Qwen2Config:
        return _config(
            Qwen2Config, layers, vocab, hidden_size, max_position_embeddings, VOCAB_SIZE - 3
        )

    torch.manual_seed(seed)
    target = Qwen2ForCausalLM(config(target_layers, VOCAB_SIZE)).float()
    _shape_target(target, hidden_size, logit_scale, proxy_layers, deep_layer_scale)
    proxy = _truncated(Qwen2ForCausalLM, config(proxy_layers, VOCAB_SIZE), target)
    other = Qwen2ForCausalLM(config(proxy_layers, VOCAB_SIZE + 128)).float()

    for model, path in ((target, pair.target), (proxy, pair.proxy)):
        _save_model(model, tok_dir, Path(path), max_position_embeddings)
    other_dir = Path(pair.other_vocab_proxy)
    make_tokenizer(other_dir, VOCAB_SIZE + 128)
    other.save_pretrained(str(other_dir), safe_serialization=True)
    done.write_text("ok")
    return pair


@dataclass(frozen=True)
class TinyLlamaPair:
    """Paths of a tiny Llama target, its proxy and a one-layer draft model."""

    target: str
    proxy: str
    draft: str
    vocab_size: int


LLAMA_VOCAB_SIZE = 500  # not a multiple of 64: vLLM pads its embedding rows to 512


def make_tiny_llama_pair(
    out_dir: str | Path,
    *,
    vocab_size: int = LLAMA_VOCAB_SIZE,
    hidden_size: int = 128,
    target_layers: int = 3,
    proxy_layers: int = 2,
    draft_layers: int = 1,
    deep_layer_scale: float = 0.15,
    max_position_embeddings: int = 2048,
    logit_scale: float = 24.0,
    sliding_window: int | None = None,
    seed: int = 0,
) -> TinyLlamaPair:
    """Write target/, proxy/ and draft/ Llama models under out_dir (fp32 safetensors).

    As `make_tiny_pair`, on the Llama architecture and a vocabulary that is not
    a power of two: the proxy and the draft model keep the target's first
    layers, embedding and LM head. With `sliding_window`, even layers attend over
    that many positions only and odd ones over all (a hybrid model, as Gemma 2
    and 3: vLLM gives it one KV cache group per layer kind). Idempotent: an
    existing complete set is reused.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    pair = TinyLlamaPair(
        target=str(out / "target"),
        proxy=str(out / "proxy"),
        draft=str(out / "draft"),
        vocab_size=vocab_size,
    )
    done = out / ".complete"
    if done.exists():
        return pair
    if not draft_layers <= proxy_layers < target_layers:
        raise ValueError("need draft_layers <= proxy_layers < target_layers")
    out.mkdir(parents=True, exist_ok=True)
    tok_dir = out / "tokenizer"
    make_tokenizer(tok_dir, vocab_size)
    eos = vocab_size - 3

    def config(layers: int) -> LlamaConfig:
        hybrid = {}
        if sliding_window is not None:
            kinds = ("sliding_attention", "full_attention")
            hybrid = {
                "sliding_window": sliding_window,
                "layer_types": [kinds[i % 2] for i in range(layers)],
            }
        return _config(
            LlamaConfig, layers, vocab_size, hidden_size, max_position_embeddings, eos, **hybrid
        )

    torch.manual_seed(seed)
    target = LlamaForCausalLM(config(target_layers)).float()
    _shape_target(target, hidden_size, logit_scale, proxy_layers, deep_layer_scale)
    models = [(target, pair.target)]
    for layers, path in ((proxy_layers, pair.proxy), (draft_layers, pair.draft)):
        models.append((_truncated(LlamaForCausalLM, config(layers), target), path))
    for model, path in models:
        _save_model(model, tok_dir, Path(path), max_position_embeddings, vocab_size)
    done.write_text("ok")
    return pair


def make_tiny_family_pair(
    out_dir: str | Path,
    model_type: str,
    *,
    hidden_size: int = 128,
    target_layers: int = 3,
    proxy_layers: int = 1,
    logit_scale: float = 24.0,
    max_position_embeddings: int = 2048,
    seed: int = 0,
    **family,
) -> TinyPair:
    """A random target of any transformers decoder family (`model_type`: "gemma2",
    "phi3", "qwen3_moe", ...) and a proxy holding its first `proxy_layers` layers,
    with the shared tokenizer (`family`: that family's own config settings). Only the
    LM head is scaled (the layers are left as the family builds them), so it checks
    that a family runs and that exact modes stay exact, not how well a proxy agrees.
    `other_vocab_proxy` is empty. Idempotent."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    out = Path(out_dir)
    pair = TinyPair(target=str(out / "target"), proxy=str(out / "proxy"), other_vocab_proxy="")
    if (out / ".complete").exists():
        return pair
    out.mkdir(parents=True, exist_ok=True)
    tok_dir = out / "tokenizer"
    make_tokenizer(tok_dir)
    eos = VOCAB_SIZE - 3

    def config(layers: int):
        own = dict(family)
        if "layer_types" in own:  # per layer: the proxy keeps the target's first ones
            own["layer_types"] = own["layer_types"][:layers]
        default = AutoConfig.for_model(model_type)
        cfg = _config(
            type(default), layers, VOCAB_SIZE, hidden_size, max_position_embeddings, eos, **own
        )
        if not hasattr(default, "num_key_value_heads"):  # no grouped-query attention
            del cfg.num_key_value_heads  # (vLLM would size the KV cache by it)
        return cfg

    torch.manual_seed(seed)
    target = AutoModelForCausalLM.from_config(config(target_layers)).float()
    _peaky_logits(target, hidden_size, logit_scale)
    proxy = _truncated(type(target), config(proxy_layers), target)
    for model, path in ((target, pair.target), (proxy, pair.proxy)):
        _save_model(model, tok_dir, Path(path), max_position_embeddings)
    (out / ".complete").write_text("ok")
    return pair


def make_tiny_lora(
    model_dir: str | Path, out_dir: str | Path, rank: int = 8, scale: float = 0.5, seed: int = 0
) -> str:
    """A random LoRA adapter (PEFT's file layout) on the q and v projections of the
    model in `model_dir`, large enough to change its greedy output; returns its dir."""
    import torch
    from safetensors.torch import save_file

    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    hidden = cfg["hidden_size"]
    head_dim = cfg.get("head_dim") or hidden // cfg["num_attention_heads"]
    outs = {
        "q_proj": cfg["num_attention_heads"] * head_dim,
        "v_proj": cfg.get("num_key_value_heads", cfg["num_attention_heads"]) * head_dim,
    }
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(cfg["num_hidden_layers"]):
        for name, out_features in outs.items():
            key = f"base_model.model.model.layers.{layer}.self_attn.{name}"
            a = torch.randn((rank, hidden), generator=gen) * scale
            b = torch.randn((out_features, rank), generator=gen) * scale
            tensors[f"{key}.lora_A.weight"] = a.contiguous()
            tensors[f"{key}.lora_B.weight"] = b.contiguous()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": rank,
        "target_modules": sorted(outs),
        "bias": "none",
        "base_model_name_or_path": str(model_dir),
    }
    (out / "adapter_config.json").write_text(json.dumps(config))
    return str(out)
