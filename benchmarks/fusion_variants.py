"""The co-denoising architectures (``Stream.fusion`` / ``vco.fusion``; V-Co, arXiv 2603.16792, Table 1) side by
side: trainable parameters and training FLOPs per image from :mod:`jit_core.model.budget`, at the tiny demo size
and at B/16, and a short CPU timing of one forward + backward at the tiny size.

    .venv/bin/python benchmarks/fusion_variants.py                 # table (markdown) + timings
    .venv/bin/python benchmarks/fusion_variants.py --no-timing     # counts only (instant)
    .venv/bin/python benchmarks/fusion_variants.py --json out.json

The tiny size is the demo's ``vco-tiny`` network (JiT-S/4 at 32 px, 1 image channel, EfficientNet-Lite0's
40-channel feature tokens); B/16 is V-Co-B/16 (JiT-B/16 at 256 px with DINOv2-B/14's 768-channel tokens).
docs/co-denoising-architectures.md quotes this script's output.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jit_core.model import JiT, budget, get_model_config
from jit_core.model.streams import Stream, pixel_stream

FUSIONS = {"dual": "joint", "shared_qkv": "shared_qkv", "token_concat": "token_concat",
           "channel_concat": "channel_concat", "add": "add", "shared_middle": "shared_middle"}
SIZES = {"tiny": ("JiT-S/4", {"in_channels": 1}, 40), "B/16": ("JiT-B/16", {}, 768)}


def streams(size: str, fusion: str):
    model, overrides, channels = SIZES[size]
    cfg = get_model_config(model, **overrides)
    extra = [] if fusion == "jit" else [Stream("feature", kind="tokens", channels=channels, default_init=True,
                                               fusion=FUSIONS[fusion])]
    return cfg, [pixel_stream(cfg.in_channels)] + extra


def timing(fusion: str, batch: int, steps: int) -> float:
    """Seconds of one forward + backward of the tiny network on ``batch`` images (median of ``steps``)."""
    cfg, ss = streams("tiny", fusion)
    torch.manual_seed(0)
    model = JiT(cfg, ss, attention_path="fast")
    x = {s.name: torch.randn(batch, *model.input_shape(s)) for s in ss}
    t, y = torch.rand(batch), torch.randint(0, cfg.num_classes, (batch,))
    times = []
    for _ in range(steps + 1):                      # the first is a warm-up
        start = time.perf_counter()
        out = model(x, t, y)
        sum(v.square().mean() for v in out.x_hat.values()).backward()
        times.append(time.perf_counter() - start)
    return sorted(times[1:])[len(times[1:]) // 2]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rows = []
    for fusion in ("jit", *FUSIONS):
        row = {"fusion": fusion}
        for size in SIZES:
            cfg, ss = streams(size, fusion)
            row[f"params {size}"] = budget.params(cfg, ss).trainable
            row[f"train GFLOPs/img {size}"] = budget.train_flops(cfg, ss) / 1e9
        if not args.no_timing:
            row["tiny fwd+bwd s"] = timing(fusion, args.batch, args.steps)
        rows.append(row)
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(f"{v:,}" if isinstance(v, int) else f"{v:.4g}" if isinstance(v, float) else v
                                for v in row.values()) + " |")
    if args.json:
        args.json.write_text(json.dumps({"threads": torch.get_num_threads(), "batch": args.batch, "rows": rows},
                                        indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
