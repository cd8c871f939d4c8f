"""Analytic FLOPs of the multi-stream JiT (JiT and V-Co; from :mod:`jit_core.model.budget`) and of V-Co's
frozen encoders.

The network's count (:func:`jit_core.model.budget.forward_macs`) counts multiply-adds (MACs) of every
matmul/convolution and reports FLOPs = 2 x MACs:

- conditioning: timestep MLP (256 -> h -> h), label lookup (0);
- per stream: the bottleneck embed (patch: p*p*C -> d' -> h per token; tokens: C -> d' -> h);
- per block and stream: adaLN (h -> 6h, once per image), qkv (3h^2 per token), proj (h^2 per
  token), SwiGLU (3*h*m per token, m = int(int(4h) * 2/3));
- per block: joint attention QK^T and AV over the joint sequence length L (the sum of the
  streams' lengths, +K in-context tokens per in-context stream from block s on): 2 * L^2 * h;
- per stream head: adaLN (h -> 2h) and the output linear (h -> p*p*C or C, per grid token).

Biases, norms, RoPE, softmax and other elementwise work are not counted (they are < 1 % of the
total and are not MACs). Training = 3 x forward (backward = 2 x forward), the usual convention for
model FLOPs (activation checkpointing recomputes the forward, which MFU does not credit).

The JiT paper's "GFLOPs" (25 / 88 / 182 / 383 for B / L / H / G at 16 px patches) are **MACs**
(the fvcore/DiT convention): they match ``macs`` here, and FLOPs are twice that.

Run ``python benchmarks/flops.py`` for the table against the paper and V-Co's per-step cost.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jit_core.model import MODEL_CONFIGS, ModelConfig, budget, get_model_config
from jit_core.model.streams import Stream, pixel_stream

# The JiT paper's (arXiv 2511.13720) configuration table: "GFLOPs" per forward of one 256/512 px image.
PAPER_GFLOPS = {"JiT-B/16": 25, "JiT-B/32": 26, "JiT-L/16": 88, "JiT-L/32": 89, "JiT-H/16": 182, "JiT-H/32": 183,
                "JiT-G/16": 383}


def feature_stream(channels: int = 768) -> Stream:
    """V-Co's second stream (DINOv2-B/14 tokens: 768 channels; EfficientNet-Lite0: 112)."""
    return Stream("feature", kind="tokens", channels=channels, in_context=True, default_init=True)


def vco_streams(cfg: ModelConfig, channels: int = 768) -> list[Stream]:
    return [pixel_stream(cfg.in_channels), feature_stream(channels)]


@dataclass
class Count:
    """MACs of one forward pass per image, by component."""

    parts: dict

    @property
    def macs(self) -> int:
        return sum(self.parts.values())

    @property
    def flops(self) -> int:
        return 2 * self.macs

    @property
    def train_flops(self) -> int:
        return 3 * self.flops

    def gflops(self) -> float:
        return self.flops / 1e9


def model_macs(cfg: ModelConfig, streams: Sequence[Stream] | None = None) -> Count:
    """Forward MACs per image of ``JiT(cfg, streams)`` (default: JiT's single pixel stream): the project's size
    model, :func:`jit_core.model.budget.forward_macs`."""
    return Count(budget.forward_macs(cfg, streams))


# ----------------------------------------------------------------------------------- encoders
@dataclass(frozen=True)
class ViTConfig:
    image: int = 224
    patch: int = 14
    hidden: int = 768
    depth: int = 12
    mlp: int = 3072
    prefix: int = 5        # CLS + 4 registers


DINOV2_B14 = ViTConfig()


def vit_macs(v: ViTConfig = DINOV2_B14) -> Count:
    """Forward MACs per image of a plain ViT trunk (DINOv2-B/14-reg4 at 224: 261 tokens)."""
    g = v.image // v.patch
    N, h = g * g + v.prefix, v.hidden
    return Count({"embed": g * g * v.patch * v.patch * 3 * h, "qkv": v.depth * N * 3 * h * h,
                  "proj": v.depth * N * h * h, "mlp": v.depth * N * 2 * h * v.mlp,
                  "attention": v.depth * 2 * N * N * h})


def vit_input_grad_macs(v: ViTConfig = DINOV2_B14) -> int:
    """Backward MACs to the *input* only (frozen weights: no weight gradients): linears and the patch
    conv cost one forward each (dX = dY W^T), attention twice (dP, dV, dQ, dK: 4 L^2 h)."""
    c = vit_macs(v)
    return c.macs + c.parts["attention"]


def vco_dinov2_step_flops(v: ViTConfig = DINOV2_B14) -> dict:
    """Per image per training step, V-Co's DINOv2 work (FLOPs): the target tokens (no grad), the
    clean-image embedding f+ (no grad), the embedding of x-hat (forward) and its backward into x-hat."""
    fwd = vit_macs(v).flops
    bwd = 2 * vit_input_grad_macs(v)
    return {"target_fwd": fwd, "pos_embed_fwd": fwd, "pred_embed_fwd": fwd, "pred_embed_bwd_input": bwd,
            "total": 3 * fwd + bwd}


def measured_flops(fn) -> int:
    """FLOPs counted by ``torch.utils.flop_counter.FlopCounterMode`` while running ``fn()`` (matmuls,
    convolutions, CUDA SDPA kernels; 2 x MACs): the cross-check of the analytic counts, and the count
    for encoders with no analytic formula here (EfficientNet-Lite0). The counter has no formula for
    the CPU SDPA kernel: use :func:`unfused_attention` around modules that call SDPA on the CPU."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


class unfused_attention:
    """Context: timm attention modules of ``module`` compute softmax(QK^T)V with plain matmuls
    (``fused_attn = False``), which FlopCounterMode counts on every device."""

    def __init__(self, module):
        self.mods = [m for m in module.modules() if hasattr(m, "fused_attn")]

    def __enter__(self):
        self.saved = [m.fused_attn for m in self.mods]
        for m in self.mods:
            m.fused_attn = False
        return self

    def __exit__(self, *exc):
        for m, v in zip(self.mods, self.saved):
            m.fused_attn = v


def encoder_step_flops(name: str, grid: int, image_size: int, weights: str | None = "random") -> dict:
    """V-Co's per-image encoder FLOPs per training step for encoder ``name``, measured with
    FlopCounterMode on one image (target tokens, f+, f(x-hat) forward + backward into x-hat)."""
    import torch

    from vco_plugin.features import build_encoder
    enc = build_encoder(name, weights, device="cpu")
    x = torch.zeros(1, 3, image_size, image_size)
    xh = x.clone().requires_grad_(True)
    with unfused_attention(enc):
        target = measured_flops(lambda: enc.target_tokens(x, grid))
        pos = measured_flops(lambda: enc.embedding(x))
        both = measured_flops(lambda: enc.embedding(xh).sum().backward())
    return {"target_fwd": target, "pos_embed_fwd": pos, "pred_embed_fwd": pos, "pred_embed_bwd_input": both - pos,
            "total": target + pos + both}


# ----------------------------------------------------------------------------------- reports
def paper_table() -> list[dict]:
    rows = []
    for name, paper in PAPER_GFLOPS.items():
        cfg = MODEL_CONFIGS[name]
        c = model_macs(cfg)
        rows.append({"model": name, "paper_gflops": paper, "gmacs": c.macs / 1e9, "gflops": c.flops / 1e9,
                     "ratio_macs_to_paper": c.macs / 1e9 / paper})
    return rows


def vco_table(names: Sequence[str] = ("JiT-B/16", "JiT-L/16", "JiT-H/16")) -> list[dict]:
    enc = vco_dinov2_step_flops()
    rows = []
    for name in names:
        cfg = MODEL_CONFIGS[name]
        jit, vco = model_macs(cfg), model_macs(cfg, vco_streams(cfg))
        vco_train = vco.train_flops + enc["total"]
        rows.append({"model": name, "jit_fwd_gflops": jit.flops / 1e9, "vco_fwd_gflops": vco.flops / 1e9,
                     "jit_train_gflops": jit.train_flops / 1e9, "vco_net_train_gflops": vco.train_flops / 1e9,
                     "dinov2_step_gflops": enc["total"] / 1e9, "vco_train_gflops": vco_train / 1e9,
                     "vco_over_jit_train": vco_train / jit.train_flops,
                     "vco_over_jit_fwd": vco.flops / jit.flops})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="one config (e.g. JiT-S/4): print its breakdown")
    ap.add_argument("--json", help="also write the tables to this JSON file")
    ap.add_argument("--measure", action="store_true",
                    help="cross-check analytic counts against torch's FlopCounterMode (builds the models on CPU)")
    args = ap.parse_args(argv)
    out = {}
    if args.model:
        cfg = get_model_config(args.model)
        for label, streams in (("JiT", None), ("V-Co", vco_streams(cfg))):
            c = model_macs(cfg, streams)
            print(f"{label} {args.model}: forward {c.flops / 1e9:.3f} GFLOPs ({c.macs / 1e9:.3f} GMACs), "
                  f"train {c.train_flops / 1e9:.3f} GFLOPs/image")
            for k, v in c.parts.items():
                print(f"    {k:10s} {2 * v / 1e9:10.4f} GFLOPs  ({100 * v / c.macs:5.1f} %)")
        return 0
    print("JiT forward cost per image vs the paper (paper 'GFLOPs' are multiply-adds, fvcore/DiT convention)")
    print(f"{'model':10s} {'paper':>7s} {'GMACs':>8s} {'GFLOPs':>8s} {'MACs/paper':>10s}")
    rows = paper_table()
    for r in rows:
        print(f"{r['model']:10s} {r['paper_gflops']:7d} {r['gmacs']:8.2f} {r['gflops']:8.2f} {r['ratio_macs_to_paper']:10.3f}")
    out["paper"] = rows
    d = vco_dinov2_step_flops()
    vm = vit_macs()
    print(f"\nDINOv2-B/14-reg4 @224 (261 tokens): forward {vm.flops / 1e9:.2f} GFLOPs ({vm.macs / 1e9:.2f} GMACs); "
          f"V-Co per image per step: target {d['target_fwd'] / 1e9:.1f} + f+ {d['pos_embed_fwd'] / 1e9:.1f} + "
          f"f(x-hat) fwd {d['pred_embed_fwd'] / 1e9:.1f} + bwd-to-input {d['pred_embed_bwd_input'] / 1e9:.1f} "
          f"= {d['total'] / 1e9:.1f} GFLOPs")
    out["dinov2"] = {"forward_flops": vm.flops, **d}
    print("\nTraining FLOPs per image (3 x forward for the network, + DINOv2 for V-Co)")
    print(f"{'model':10s} {'JiT fwd':>8s} {'V-Co fwd':>9s} {'JiT train':>10s} {'V-Co net':>9s} {'DINOv2':>7s} "
          f"{'V-Co train':>10s} {'V-Co/JiT':>8s}")
    rows = vco_table()
    for r in rows:
        print(f"{r['model']:10s} {r['jit_fwd_gflops']:8.1f} {r['vco_fwd_gflops']:9.1f} {r['jit_train_gflops']:10.1f} "
              f"{r['vco_net_train_gflops']:9.1f} {r['dinov2_step_gflops']:7.1f} {r['vco_train_gflops']:10.1f} "
              f"{r['vco_over_jit_train']:8.2f}")
    out["vco"] = rows
    if args.measure:
        out["measured"] = cross_check()
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


def cross_check(names: Sequence[str] = ("JiT-S/4", "JiT-B/16")) -> list[dict]:
    """Analytic vs FlopCounterMode forward FLOPs (exact attention path: plain matmuls), JiT and V-Co."""
    import torch

    from jit_core.model import JiT
    rows = []
    print("\nCross-check against torch.utils.flop_counter (forward, batch 1):")
    for name in names:
        cfg = get_model_config(name)
        for label, streams in (("JiT", None), ("V-Co", vco_streams(cfg))):
            model = JiT(cfg, streams, "exact").eval()
            inputs = {s.name: torch.zeros((1, s.channels, cfg.image_size, cfg.image_size) if s.kind == "patch"
                                          else (1, cfg.grid ** 2, s.channels)) for s in model.streams}
            with torch.no_grad():
                got = measured_flops(lambda m=model, x=inputs: m(x, torch.zeros(1), torch.zeros(1, dtype=torch.long)))
            want = model_macs(cfg, streams).flops
            print(f"  {label:4s} {name:9s} analytic {want / 1e9:9.4f} GFLOPs  counted {got / 1e9:9.4f}  "
                  f"ratio {got / want:.4f}")
            rows.append({"model": name, "variant": label, "analytic": want, "counted": got})
    v = vit_macs().flops
    from vco_plugin.features import build_encoder
    enc = build_encoder("dinov2", "random")
    with torch.no_grad(), unfused_attention(enc):
        got = measured_flops(lambda: enc.trunk_tokens(torch.zeros(1, 3, 224, 224)))
    print(f"  DINOv2-B/14 trunk  analytic {v / 1e9:9.4f} GFLOPs  counted {got / 1e9:9.4f}  ratio {got / v:.4f}")
    rows.append({"model": "DINOv2-B/14", "variant": "trunk", "analytic": v, "counted": got})
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
