"""Set-up that draws random numbers without moving the training RNGs.

A run's randomness is the seeded global RNGs (torch CPU and CUDA, Python ``random``, NumPy), saved in every
checkpoint and restored on resume. Set-up work that happens to draw from them (building a frozen encoder
whose constructor initialises weights before loading its checkpoint, a DataLoader drawing its base seed
while feature statistics are computed) must leave them exactly as it found them: otherwise the draws of the
first training steps depend on whether the set-up ran before them (a fresh run) or before the restored state
(a resumed one), and a resume is no longer bit-identical. :func:`forked_rng` is that guarantee.
"""
from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch


def _cuda_devices(device) -> list[int]:
    """The CUDA device whose generator a checkpoint saves: ``device`` if it is a CUDA device, else the current
    one when CUDA is already initialised (never initialises CUDA on a device the process does not use)."""
    if not torch.cuda.is_available():
        return []
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        return [device.index if device.index is not None else torch.cuda.current_device()]
    return [torch.cuda.current_device()] if torch.cuda.is_initialized() else []


@contextlib.contextmanager
def forked_rng(device=None) -> Iterator[None]:
    """Run the block with the global RNGs forked: torch CPU, the CUDA generator of ``device`` (or the current
    CUDA device), Python ``random`` and NumPy are restored when the block ends, even on an error."""
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=_cuda_devices(device)):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
