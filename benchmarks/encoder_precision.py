"""The effect of running the frozen V-Co encoder under bf16 autocast instead of fp32 (``vco.encoder_precision``).

    python benchmarks/encoder_precision.py [--images 64] [--json out.json]

For each encoder, the same images go through the encoder twice: in fp32 (``precision="fp32"``) and under
``torch.autocast(bfloat16)`` (``precision="bf16"``, what a bf16 training step does). Reported:

- ``target rel err``: per image, ||t_bf16 - t_fp32|| / ||t_fp32|| over its target tokens (median, max);
- ``std target MSE``: the targets standardised per (position, channel) with fp32 statistics of the same
  images (as the calibration does), then the mean squared difference bf16 vs fp32: the floor bf16 adds to
  the feature-stream loss, whose scale is 1 for an untrained model;
- ``loss shift``: relative change of the feature loss mean((pred - target)^2) when the target is the bf16 one,
  for a prediction pred = standardised fp32 target + N(0, 0.5^2) noise (a partly trained model);
- ``embedding cos``: cosine similarity of the bf16 and fp32 embeddings (the hybrid loss's f+), minimum.

Encoders: EfficientNet-Lite0 with its real ImageNet weights on scikit-learn digits (the offline tiny
config, 32 px, grid 8); DINOv2-B/14-reg4 with *random* weights (its weights are not available offline) on
smooth random 256-px images, grid 16, which shows the arithmetic's rounding but not a trained network's
activation ranges. Seed 0 for everything.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from jit_core.data import load_digits_arrays  # noqa: E402
from vco_plugin.features import build_encoder  # noqa: E402


def digits_images(n: int, size: int = 32) -> torch.Tensor:
    images, _ = load_digits_arrays()
    u8 = torch.from_numpy(images[:n]).float().unsqueeze(1)
    return F.interpolate(u8, size=size, mode="bilinear", align_corners=False) / 127.5 - 1


def smooth_images(n: int, size: int = 256, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 8, 8, generator=g) * 2 - 1
    return F.interpolate(low, size=size, mode="bicubic", align_corners=False).clamp(-1, 1)


def compare(name: str, weights, images: torch.Tensor, grid: int, seed: int = 0) -> dict:
    fp32 = build_encoder(name, weights, precision="fp32")
    bf16 = build_encoder(name, weights, precision="bf16")
    with torch.no_grad():
        t32 = fp32.target_tokens(images, grid)
        e32 = fp32.embedding(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            t16 = bf16.target_tokens(images, grid).float()
            e16 = bf16.embedding(images).float()
            t32_in_autocast = fp32.target_tokens(images, grid)   # the fp32 switch holds under autocast
    rel = ((t16 - t32).flatten(1).norm(dim=1) / t32.flatten(1).norm(dim=1)).numpy()
    mean, std = t32.mean(0), t32.std(0).clamp_min(1e-6)
    s32, s16 = (t32 - mean) / std, (t16 - mean) / std
    g = torch.Generator().manual_seed(seed)
    pred = s32 + 0.5 * torch.randn(s32.shape, generator=g)
    loss32, loss16 = ((pred - s32) ** 2).mean().item(), ((pred - s16) ** 2).mean().item()
    return {"encoder": name, "weights": weights or "default", "images": len(images), "grid": grid,
            "target_rel_err_median": float(np.median(rel)), "target_rel_err_max": float(rel.max()),
            "std_target_mse": float(((s16 - s32) ** 2).mean()),
            "loss_fp32": loss32, "loss_bf16": loss16, "loss_shift": (loss16 - loss32) / loss32,
            "embedding_cos_min": float(F.cosine_similarity(e16, e32, dim=-1).min()),
            "fp32_switch_exact_under_autocast": bool(torch.equal(t32_in_autocast, t32))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--dinov2-images", type=int, default=8)
    ap.add_argument("--skip-dinov2", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    rows = [compare("efficientnet_lite0", None, digits_images(args.images), grid=8)]
    if not args.skip_dinov2:
        rows.append(compare("dinov2", "random", smooth_images(args.dinov2_images), grid=16))
    print("encoder             weights   imgs  target rel err (median / max)  std target MSE  loss shift  emb cos min")
    for r in rows:
        print(f"{r['encoder']:<19} {r['weights']:<9} {r['images']:>4}  {r['target_rel_err_median']:>12.2%} / "
              f"{r['target_rel_err_max']:<10.2%}      {r['std_target_mse']:>10.2e}  {r['loss_shift']:>+9.2%}  "
              f"{r['embedding_cos_min']:.5f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
