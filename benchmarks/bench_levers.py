"""Micro-benchmarks behind the patch proposals in RESULTS.md (each against the current code, same run).

    python benchmarks/bench_levers.py --device cpu --batch 4

1. Joint attention of V-Co (forward + backward, the shape of V-Co-B/16 after block s: 2 x 288 tokens,
   12 heads of 64) with the training mask (a few samples dropped: their pixel queries may not see
   feature keys):
   - ``exact + mask``: the official-numerics path (fp32 logits by hand), as jit_core does today;
   - ``sdpa + bool mask``: jit_core's fast path in training today (the (B,1,L,L) bool token mask of
     ``jit_core.model.token_mask``);
   - ``sdpa + bias pre-cast``: the bias built once in the compute dtype (proposal A);
   - ``sdpa split``: no token-level mask at all (proposal B): kept samples run one unmasked SDPA;
     dropped samples run two unmasked SDPAs (pixel queries over pixel keys; feature queries over all
     keys). Same result (checked), flash-eligible on GPU, fewer FLOPs for dropped samples;
   - ``sdpa no mask``: the unmasked lower bound (what a batch without drops costs).
2. AdamW step over a JiT-B/16-sized parameter list (131 M): foreach (the default) vs fused
   (jit_core uses fused only on CUDA; proposal C: also on CPU where it is faster).
"""
from __future__ import annotations

import sys

from common import early_threads

_THREADS = early_threads(sys.argv)

import argparse
import json
from pathlib import Path

import common
import torch
import torch.nn.functional as F

from jit_core.model import joint_attention


def token_bias(drop: torch.Tensor, Lp: int, Lf: int, dtype) -> torch.Tensor:
    """(B,1,L,L) additive bias: -inf on (pixel query, feature key) for dropped samples (jit_core's layout)."""
    B, L = drop.shape[0], Lp + Lf
    bias = torch.zeros(B, 1, L, L, dtype=dtype, device=drop.device)
    bias[drop, :, :Lp, Lp:] = float("-inf")
    return bias


def split_attention(q, k, v, drop: torch.Tensor, Lp: int) -> torch.Tensor:
    """The masked joint attention without a token mask: kept samples attend jointly; for dropped samples,
    pixel queries attend to pixel keys only and feature queries to all keys."""
    out = torch.empty_like(q)
    keep = ~drop
    if keep.any():
        out[keep] = F.scaled_dot_product_attention(q[keep], k[keep], v[keep])
    if drop.any():
        qd, kd, vd = q[drop], k[drop], v[drop]
        pix = F.scaled_dot_product_attention(qd[:, :, :Lp], kd[:, :, :Lp], vd[:, :, :Lp])
        feat = F.scaled_dot_product_attention(qd[:, :, Lp:], kd, vd)
        out[drop] = torch.cat([pix, feat], dim=2)
    return out


def bench_attention(args, dev: str, dtype) -> list[dict]:
    B, H, d, Lp = args.batch, args.heads, args.head_dim, args.tokens
    L = 2 * Lp
    g = torch.Generator().manual_seed(0)
    drop = torch.zeros(B, dtype=torch.bool)
    drop[: max(1, round(B * args.drop))] = True   # at least one dropped sample, as in nearly every V-Co batch
    drop = drop.to(dev)
    base = [torch.randn(B, H, L, d, generator=g).to(dev, dtype) for _ in range(3)]
    bias32 = token_bias(drop, Lp, Lp, torch.float32)
    bias_c = bias32.to(dtype)
    allowed = bias32 == 0     # the bool token mask jit_core builds (True = may attend)

    def run(fn):
        q, k, v = (t.detach().clone().requires_grad_(True) for t in base)
        out = fn(q, k, v)
        out.float().square().mean().backward()
        return out.detach(), q.grad

    variants = {
        "exact + mask": lambda q, k, v: joint_attention(q, k, v, allowed, "exact", 0.0),
        "sdpa + bool mask (today)": lambda q, k, v: joint_attention(q, k, v, allowed, "fast", 0.0),
        "sdpa + bias pre-cast (A)": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=bias_c),
        "sdpa split (B)": lambda q, k, v: split_attention(q, k, v, drop, Lp),
        "sdpa no mask (bound)": lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
    }
    ref_out, ref_grad = run(variants["sdpa + bias pre-cast (A)"])
    split_out, split_grad = run(variants["sdpa split (B)"])
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    max_diff = max((split_out - ref_out).abs().max().item(), (split_grad - ref_grad).abs().max().item())
    assert max_diff < tol, f"split attention differs from the masked one by {max_diff}"
    times = {k: [] for k in variants}
    names = list(variants)
    with torch.autocast(dev, dtype=torch.bfloat16, enabled=dev == "cuda"):
        for r in range(args.warmup + args.repeats):
            for name in names[r % len(names):] + names[:r % len(names)]:
                with common.Timer(dev, torch.get_num_threads()) as t:
                    run(variants[name])
                if r >= args.warmup:
                    times[name].append(t.effective)
    today = common.median(times["sdpa + bool mask (today)"])
    rows = []
    print(f"\n## V-Co joint attention fwd+bwd: B={B}, {H} heads x {d}, L = {Lp} pixel + {Lp} feature tokens, "
          f"{int(drop.sum())} of {B} samples dropped, {dtype}; max |split - masked| = {max_diff:.2e}")
    for name in names:
        med = common.median(times[name])
        rows.append({"variant": name, "median_s": med, "vs_today": med / today})
        print(f"  {name:26s} {1000 * med:9.2f} ms   x{med / today:5.2f} of today's fast path")
    return rows


def bench_adamw(args, dev: str) -> list[dict]:
    from jit_core.model import JiT, get_model_config
    torch.manual_seed(0)
    with torch.device(dev):
        model = JiT(get_model_config(args.adam_model))
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    n = sum(p.numel() for p in params)
    opts = {"foreach (default)": torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), foreach=True),
            "fused": torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), fused=True)}
    times = {k: [] for k in opts}
    names = list(opts)
    for r in range(1 + args.repeats):
        for name in names[r % 2:] + names[:r % 2]:
            with common.Timer(dev, torch.get_num_threads()) as t:
                opts[name].step()
            if r >= 1:
                times[name].append(t.effective)
    base = common.median(times["foreach (default)"])
    print(f"\n## AdamW step over {args.adam_model}'s {n / 1e6:.1f} M parameters ({dev})")
    rows = []
    for name in names:
        med = common.median(times[name])
        rows.append({"variant": name, "median_s": med, "vs_foreach": med / base})
        print(f"  {name:18s} {1000 * med:9.1f} ms   x{med / base:5.2f}")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=288, help="tokens per stream (256 grid + 32 in-context)")
    ap.add_argument("--drop", type=float, default=0.1, help="fraction of dropped samples (at least one)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--adam-model", default="JiT-B/16")
    ap.add_argument("--skip-adam", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    common.pin_threads(args.threads)
    dev = args.device
    hw = common.hardware(dev)
    print(f"# bench_levers on {dev}: {hw.get('gpu', hw['cpu'])}, torch {hw['torch']}, threads {hw['torch_threads']}, "
          f"load {hw.get('loadavg')}")
    out = {"hardware": hw, "attention": bench_attention(args, dev, torch.bfloat16 if dev == "cuda" else torch.float32)}
    if not args.skip_adam:
        out["adamw"] = bench_adamw(args, dev)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
