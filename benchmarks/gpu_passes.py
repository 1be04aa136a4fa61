"""Forward-pass seconds of the target and the proxy on a GPU, for the cost model.

    python benchmarks/gpu_passes.py --out-dir results/    # on a machine with a GPU
    python benchmarks/gpu_passes.py --rebuild results/gpu_passes_h200.json
                      # rewrite the pass_costs files from a raw table (no GPU needed)

vLLM does not install on every GPU machine, so this times a plain-torch decoder
with each model's real shape (benchmarks/model_configs/, read from the
Qwen2.5-Coder 1.5B and 0.5B config.json files) and random bf16 weights: B
requests x t new tokens after `--context` cached positions (RMSNorm, fused QKV
with bias, rotary embedding, grouped-query attention over a static KV cache,
SwiGLU MLP, the LM head over every new position, as a verification pass needs).
Each size is timed twice: eager, and replayed from a CUDA graph (vLLM's own
decoding and its SD run with CUDA graphs; TriSpec's routed sub-batches run
eagerly, design.md). Writes `pass_costs_<device>_graphs.json` and
`pass_costs_<device>_eager.json` in cost_model.py's format (seconds by tokens in
the pass and by B x t) and a raw table of every (B, t).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

CONFIGS = Path(__file__).resolve().parent / "model_configs"
MODELS = {"target": "qwen2.5-coder-1.5b.json", "proxy": "qwen2.5-coder-0.5b.json"}


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    var = x.float().pow(2).mean(-1, keepdim=True)
    return (x.float() * torch.rsqrt(var + eps)).to(x.dtype) * w


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Decoder:
    """A Qwen2-shaped decoder over a static KV cache of `context + max_new` slots."""

    def __init__(self, cfg: dict, batch: int, context: int, max_new: int, device, dtype):
        self.cfg = cfg
        h, heads = cfg["hidden_size"], cfg["num_attention_heads"]
        kv_heads, inter = cfg["num_key_value_heads"], cfg["intermediate_size"]
        self.d = d = h // heads
        self.heads, self.kv_heads, self.eps = heads, kv_heads, cfg["rms_norm_eps"]
        self.context = context

        def w(*shape):
            return (torch.randn(*shape, device=device) * 0.02).to(dtype)

        self.layers = [
            {
                "qkv": w(h, (heads + 2 * kv_heads) * d),
                "qkv_b": w((heads + 2 * kv_heads) * d),
                "o": w(heads * d, h),
                "gate_up": w(h, 2 * inter),
                "down": w(inter, h),
                "n1": torch.ones(h, device=device, dtype=dtype),
                "n2": torch.ones(h, device=device, dtype=dtype),
                "k": w(batch, kv_heads, context + max_new, d),
                "v": w(batch, kv_heads, context + max_new, d),
            }
            for _ in range(cfg["num_hidden_layers"])
        ]
        self.embed = w(cfg["vocab_size"], h)
        self.lm_head = w(h, cfg["vocab_size"])
        self.norm = torch.ones(h, device=device, dtype=dtype)
        theta = cfg.get("rope_theta", 1_000_000.0)
        inv = 1.0 / theta ** (torch.arange(0, d, 2, device=device).float() / d)
        pos = torch.arange(context + max_new, device=device).float()
        freqs = torch.outer(pos, inv)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos, self.sin = emb.cos().to(dtype), emb.sin().to(dtype)

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids [B, t] -> logits [B, t, V]; writes KV at slots context..context+t."""
        b, t = ids.shape
        c, d = self.context, self.d
        cos, sin = self.cos[c : c + t], self.sin[c : c + t]
        x = self.embed[ids]
        for layer in self.layers:
            r = x
            x = rms_norm(x, layer["n1"], self.eps)
            qkv = x @ layer["qkv"] + layer["qkv_b"]
            q, k, v = qkv.split([self.heads * d, self.kv_heads * d, self.kv_heads * d], dim=-1)
            q = rotate(q.view(b, t, self.heads, d), cos[:, None], sin[:, None]).transpose(1, 2)
            k = rotate(k.view(b, t, self.kv_heads, d), cos[:, None], sin[:, None]).transpose(1, 2)
            layer["k"][:, :, c : c + t] = k
            layer["v"][:, :, c : c + t] = v.view(b, t, self.kv_heads, d).transpose(1, 2)
            a = F.scaled_dot_product_attention(
                q, layer["k"], layer["v"], attn_mask=mask, enable_gqa=True
            )
            x = r + a.transpose(1, 2).reshape(b, t, self.heads * d) @ layer["o"]
            r = x
            g, u = (rms_norm(x, layer["n2"], self.eps) @ layer["gate_up"]).chunk(2, dim=-1)
            x = r + (F.silu(g) * u) @ layer["down"]
        return rms_norm(x, self.norm, self.eps) @ self.lm_head


def causal_mask(t: int, context: int, slots: int, device) -> torch.Tensor:
    """[t, slots] bool: new token i sees the context and new tokens 0..i."""
    col = torch.arange(slots, device=device)
    return col[None, :] <= context + torch.arange(t, device=device)[:, None]


def time_sizes(cfg, batches, tokens, context, reps, device, dtype) -> list[dict]:
    rows = []
    max_new = max(tokens)
    for b in batches:
        model = Decoder(cfg, b, context, max_new, device, dtype)
        for t in tokens:
            ids = torch.randint(0, cfg["vocab_size"], (b, t), device=device)
            mask = causal_mask(t, context, context + max_new, device)
            with torch.inference_mode():
                eager = timed(functools.partial(model, ids, mask), reps, device)
                graph_s = graphed(model, ids, mask, reps, device)
            rows.append({"batch": b, "tokens": t, "eager_s": eager, "graph_s": graph_s})
            print(
                f"  B={b:<3} t={t}: eager {eager * 1e3:7.2f} ms, graph {graph_s * 1e3:7.2f} ms",
                flush=True,
            )
        del model
        torch.cuda.empty_cache()
    return rows


def timed(fn, reps: int, device) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def graphed(model, ids, mask, reps: int, device) -> float:
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(3):
            model(ids, mask)
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        model(ids, mask)
    seconds = timed(graph.replay, reps, device)
    del graph
    return seconds


def pass_costs(rows: list[dict], key: str) -> dict[int, float]:
    """cost_model.py's format: seconds by tokens in the pass (mean over B x t alike)."""
    by_n: dict[int, list[float]] = {}
    for r in rows:
        by_n.setdefault(r["batch"] * r["tokens"], []).append(r[key])
    return {n: statistics.mean(v) for n, v in sorted(by_n.items())}


def pass_shapes(rows: list[dict], key: str) -> dict[str, float]:
    """cost_model.py's format: seconds by 'BxT'."""
    return {f"{r['batch']}x{r['tokens']}": r[key] for r in rows}


def write_costs(raw: dict, device: str, setup: str, out: Path) -> None:
    """The pass_costs files (graphs, eager) of a raw table."""
    tag = device.split()[-1].lower()
    for mode, key, label in (("graphs", "graph_s", "CUDA graphs"), ("eager", "eager_s", "eager")):
        doc = {
            "device": f"{device} ({setup}, {label})",
            "seconds": {m: pass_costs(rows, key) for m, rows in raw.items()},
            "shapes": {m: pass_shapes(rows, key) for m, rows in raw.items()},
        }
        (out / f"pass_costs_{tag}_{mode}.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out}/pass_costs_{tag}_{{graphs,eager}}.json")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    ap.add_argument("--tokens", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--rebuild", type=Path, default=None, help="a gpu_passes_*.json to reuse")
    args = ap.parse_args()
    if args.rebuild:
        d = json.loads(args.rebuild.read_text())
        write_costs(d["rows"], d["device"], d["setup"], args.rebuild.parent)
        return
    if not torch.cuda.is_available():
        raise SystemExit("gpu_passes.py times a GPU: no CUDA device here")
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    tag = name.split()[-1].lower()
    raw = {}
    for model, file in MODELS.items():
        cfg = json.loads((CONFIGS / file).read_text())
        print(f"{model} ({file}) on {name}", flush=True)
        raw[model] = time_sizes(
            cfg, args.batches, args.tokens, args.context, args.reps, device, torch.bfloat16
        )
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    setup = f"plain torch {torch.__version__}, bf16, random weights, context {args.context}"
    write_costs(raw, name, setup, out)
    (out / f"gpu_passes_{tag}.json").write_text(
        json.dumps({"device": name, "setup": setup, "rows": raw}, indent=1) + "\n"
    )
    print(f"wrote {out}/gpu_passes_{tag}.json")


if __name__ == "__main__":
    main()
