"""Cost of one ``vco.feature_cache`` lookup on the training process's main thread, by part, at DINOv2-B/16
shapes (256 px RGB images, 256 x 768 fp16 tokens per image), on the CPU.

    python benchmarks/bench_feature_cache.py [--batch 32] [--cache-images 256] [--json out.json]

Parts of ``FeatureCache.lookup`` (vco_plugin/feature_cache.py): ``keys`` = the two polynomial content
hashes of the uint8 pixels (``image_keys``; on a GPU this runs on the device), ``find`` = the per-image
binary search in Python, ``gather`` = copying the rows out of the memory-mapped shards (here from the page
cache: the whole test cache fits in memory; an ImageNet cache of ~1 TB does not, so there it is a random
read from disk), and the float32 conversion. Figures per image, with the per-step total at 128 images
(the per-GPU batch of the B/16 recipe) extrapolated linearly. The token rows are random numbers (the cost
does not depend on their values), written with ``build_cache`` through a stand-in encoder.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vco_plugin.feature_cache import FeatureCache, build_cache, image_keys  # noqa: E402

TOKENS, CHANNELS, SIZE = 256, 768, 256


class RandomTokens:
    """Stands in for the frozen encoder when writing the cache: fixed random tokens of DINOv2's shape."""

    name, weights, device = "dinov2", "random", torch.device("cpu")

    def target_tokens(self, x, grid):
        g = torch.Generator().manual_seed(int(x[:, 0, 0, 0].sum().item() * 1000) % 2**31)
        return torch.randn(len(x), TOKENS, CHANNELS, generator=g)


def images(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, SIZE, SIZE), generator=g, dtype=torch.uint8).float() / 127.5 - 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--cache-images", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        src = [images(args.batch, s) for s in range(max(1, args.cache_images // args.batch))]
        build_cache(RandomTokens(), src, 16, tmp, flip=False, progress=False)
        cache = FeatureCache(tmp)
        x = src[0]
        parts = {"keys": [], "find": [], "gather": [], "total": []}
        for _ in range(args.repeats):
            t0 = time.process_time()
            keys = image_keys(x).numpy()
            t1 = time.process_time()
            cache.find(keys)
            t2 = time.process_time()
            cache.lookup(x)
            t3 = time.process_time()
            parts["keys"].append(t1 - t0)
            parts["find"].append(t2 - t1)
            parts["total"].append(t3 - t2)
        parts["gather"] = [t - k - f for t, k, f in zip(parts["total"], parts["keys"], parts["find"])]
    per_image_ms = {k: float(np.median(v)) * 1000 / args.batch for k, v in parts.items()}
    print(f"# feature-cache lookup, batch {args.batch}, {args.cache_images} cached images, CPU ms per image "
          f"(and per 128-image step)")
    for k, v in per_image_ms.items():
        print(f"{k:<7} {v:8.2f} ms/img   {v * 128:8.0f} ms/step")
    print(f"bytes copied per 128-image step: {128 * TOKENS * CHANNELS * 2 / 1e6:.0f} MB (fp16) -> "
          f"{128 * TOKENS * CHANNELS * 4 / 1e6:.0f} MB (fp32)")
    if args.json:
        Path(args.json).write_text(json.dumps({"batch": args.batch, "cache_images": args.cache_images,
                                               "per_image_ms": per_image_ms}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
