"""DataLoader worker options of the training loader.

Why prefetching but no persistent workers: ``ResumableBatches`` builds one loader per epoch (its first
epoch skips the steps already done, and every epoch is seeded by its number, so a resume is exact), and
the random flips depend on the epoch through ``dataset.set_epoch``. A persistent worker keeps the copy of
the dataset it was started with, so it would flip with a stale epoch; and a loader's workers outlive only
that loader. Worker start-up is paid once per epoch (a few seconds against an ImageNet epoch of minutes).

``PREFETCH_FACTOR`` batches per worker are decoded ahead (PyTorch's default is 2): a step that waits
on one slow batch (a large JPEG, a busy disk) then still finds the next ones ready. The worker count
that feeds a GPU is measured in benchmarks/bench_data.py (figure in benchmarks/RESULTS.md).
"""
from __future__ import annotations

PREFETCH_FACTOR = 4


def loader_worker_options(num_workers: int) -> dict:
    """Keyword arguments for ``torch.utils.data.DataLoader`` with ``num_workers`` workers."""
    if num_workers <= 0:      # PyTorch refuses prefetch_factor without workers
        return {"persistent_workers": False}
    return {"persistent_workers": False, "prefetch_factor": PREFETCH_FACTOR}
