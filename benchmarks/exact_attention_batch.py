"""The largest per-GPU batch at which the *exact* (unfused) attention of a JiT / V-Co training step fits.

    python benchmarks/exact_attention_batch.py --model JiT-B/16 --streams 2 --max-batch 128 [--gpu-gib 80]

Exact attention (the official code's ``softmax(q k^T / sqrt(d)) v``) materialises the (B, heads, L, L)
score matrix in every block and keeps it for the backward pass. Under bf16 autocast each block saves
the bf16 scores (2 B per entry), their fp32 softmax (4 B) and its bf16 copy for ``p @ v`` (2 B):
8 B per entry. L is the joint sequence: ``streams x grid^2`` tokens plus the in-context tokens (counted
in every block, an upper bound for the blocks before ``in_context_start``). Everything else of the step
(weights, optimizer state, the other activations) is given the other ``1 - share`` of the card; batches
are powers of two so the figure compares with the 128-image runs by a ratio.

V-Co-B/16 (2 streams, L = 544): 341 MB of scores per image over the 12 blocks, 43.6 GB at 128 per GPU
(the ~2 GB of fp32 probabilities per block of an unfused V-Co step), so an 80 GB card runs it at 64.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from jit_core.model import get_model_config  # noqa: E402

BYTES_PER_SCORE = 2 + 4 + 2     # bf16 scores, fp32 softmax, bf16 softmax copy (all saved for backward)


def joint_length(model: str, streams: int) -> int:
    cfg = get_model_config(model)
    return streams * (cfg.image_size // cfg.patch_size) ** 2 + cfg.in_context_len


def score_bytes_per_image(model: str, streams: int) -> int:
    """Bytes of attention scores an exact-attention training step keeps per image, over all blocks."""
    cfg = get_model_config(model)
    return cfg.depth * cfg.num_heads * joint_length(model, streams) ** 2 * BYTES_PER_SCORE


def exact_attention_batch(model: str, streams: int, gpu_bytes: float, max_batch: int = 128,
                          share: float = 0.5) -> int:
    """Largest power of two <= ``max_batch`` whose scores take at most ``share`` of ``gpu_bytes`` (>= 1)."""
    per_image = score_bytes_per_image(model, streams)
    batch = max_batch
    while batch > 1 and batch * per_image > share * gpu_bytes:
        batch //= 2
    return batch


def gpu_memory_bytes(default_gib: float) -> float:
    """Total memory of CUDA device 0, or ``default_gib`` GiB where there is none."""
    try:
        import torch
        if torch.cuda.is_available():
            return float(torch.cuda.get_device_properties(0).total_memory)
    except Exception:  # noqa: BLE001 -- a broken CUDA set-up: the nominal size still gives a usable batch
        pass
    return default_gib * 2**30


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="JiT-B/16")
    ap.add_argument("--streams", type=int, default=2, help="1: JiT, 2: V-Co (pixels + feature tokens)")
    ap.add_argument("--max-batch", type=int, default=128)
    ap.add_argument("--gpu-gib", type=float, default=None, help="card memory (default: CUDA device 0, else 80)")
    args = ap.parse_args(argv)
    mem = args.gpu_gib * 2**30 if args.gpu_gib else gpu_memory_bytes(80.0)
    print(exact_attention_batch(args.model, args.streams, mem, args.max_batch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
