"""Data-loading throughput: ImageNet-style JPEG decode + ADM centre crop, per loader worker, and the number
of workers that feeds a JiT-B/16 step on one H100.

    python benchmarks/bench_data.py                          # 200 JPEGs, 256 px, 1 and 2 workers
    python benchmarks/bench_data.py --images 16 --workers 0 --json out.json    # the smoke-test size

The images are synthesised at run time with Pillow: ImageNet's typical sizes (500x375 landscape and
375x500 portrait, quality 90), smooth colour gradients plus mild noise so the JPEG has natural-image-like
entropy (pure noise decodes slower, a flat image faster). The dataset is the training one
(``jit_core.data.ImageFolderDataset`` with flips), so the per-image cost is exactly what a loader worker
pays. ``ms/img`` is the process CPU time per image in the main process (independent of the share of a
loaded machine's cores it gets); with ``--workers`` > 0 a ``DataLoader`` of that many workers is timed
by wall clock too.

Demand: a training step of JiT-B/16 is 3 x its forward FLOPs (benchmarks/flops.py); at 40 % MFU of an
H100's 989 TFLOPS dense bf16 peak (the peak benchmarks/RESULTS.md uses for MFU) one GPU consumes
``0.4 * 989e12 / train_flops`` images/s (about 2,600). Workers needed = ceil(demand * ms/img / 1000).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
import flops  # noqa: E402

from jit_core.data import ImageFolderDataset  # noqa: E402
from jit_core.model import get_model_config  # noqa: E402

H100_BF16_DENSE_TFLOPS = 989.0
TARGET_MFU = 0.40
SIZES = ((500, 375), (375, 500))   # ImageNet's most common landscape / portrait sizes


def synthesize_jpegs(folder: Path, n: int, classes: int = 4, seed: int = 0) -> Path:
    """``n`` JPEGs of ImageNet-like sizes under ``folder/<class>/``; returns ``folder``."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        w, h = SIZES[i % len(SIZES)]
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        phase = rng.uniform(0, 2 * np.pi, 3)
        freq = rng.uniform(0.005, 0.05, 3)
        rgb = np.stack([127 + 100 * np.sin(freq[c] * (xx + yy * (c + 1)) + phase[c]) for c in range(3)], -1)
        rgb += rng.normal(0, 12, rgb.shape)
        d = folder / f"c{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(d / f"img{i:05d}.JPEG", quality=90)
    return folder


def demand_images_per_s(model: str = "JiT-B/16", peak_tflops: float = H100_BF16_DENSE_TFLOPS,
                        mfu: float = TARGET_MFU) -> float:
    """Images/s one GPU trains at ``mfu`` of ``peak_tflops`` (training FLOPs = 3 x forward)."""
    return mfu * peak_tflops * 1e12 / flops.model_macs(get_model_config(model)).train_flops


def time_main_process(ds: ImageFolderDataset, repeats: int) -> float:
    """Median CPU ms per image over ``repeats`` passes over the dataset."""
    per = []
    for _ in range(repeats):
        t0 = time.process_time()
        for i in range(len(ds)):
            ds[i]
        per.append((time.process_time() - t0) * 1000 / len(ds))
    return float(np.median(per))


def time_loader(ds: ImageFolderDataset, workers: int, batch: int) -> float:
    """Wall-clock images/s of one pass of a DataLoader with ``workers`` workers (start-up included)."""
    loader = DataLoader(ds, batch_size=batch, num_workers=workers, prefetch_factor=4)
    t0 = time.perf_counter()
    n = sum(len(x) for x, _ in loader)
    return n / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", default="1,2", help="comma list of DataLoader worker counts to time (0: none)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = synthesize_jpegs(Path(tmp), args.images)
        ds = ImageFolderDataset(root, args.size, flip=True)
        ms = time_main_process(ds, args.repeats)
        loaders = {int(w): time_loader(ds, int(w), args.batch) for w in args.workers.split(",") if int(w) > 0}
    demand = demand_images_per_s()
    per_worker = 1000 / ms
    need = math.ceil(demand / per_worker)
    print(f"# JPEG decode + ADM centre crop to {args.size} px, {args.images} images of 500x375 / 375x500")
    print(f"per image: {ms:.2f} ms CPU  ->  {per_worker:.0f} img/s per worker")
    for w, ips in loaders.items():
        print(f"DataLoader, {w} worker(s): {ips:.0f} img/s wall")
    print(f"demand of JiT-B/16 on one H100 at {TARGET_MFU:.0%} MFU: {demand:.0f} img/s -> {need} workers "
          f"(at {per_worker:.0f} img/s each)")
    if args.json:
        Path(args.json).write_text(json.dumps({"ms_per_image": ms, "per_worker_img_s": per_worker,
                                               "loader_img_s": loaders, "demand_img_s": demand,
                                               "workers_needed": need, "images": args.images,
                                               "size": args.size}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
