"""Random numbers for plugins, and set-up that draws random numbers without moving the training RNGs.

A run's randomness is the seeded global RNGs (torch CPU and CUDA, Python ``random``, NumPy), saved in every
checkpoint and restored on resume. Set-up work that happens to draw from them (building a frozen encoder
whose constructor initialises weights before loading its checkpoint, a DataLoader drawing its base seed
while feature statistics are computed) must leave them exactly as it found them: otherwise the draws of the
first training steps depend on whether the set-up ran before them (a fresh run) or before the restored state
(a resumed one), and a resume is no longer bit-identical.

- :func:`forked_rng`: that guarantee for a block of code;
- :func:`isolated_rng`: the same, with the global RNGs seeded inside (the core runs every plugin's
  ``jit_setup`` and ``jit_trainable_modules`` in it, so set-up is also reproducible);
- :func:`plugin_generator`: the seeded ``torch.Generator`` the core hands each plugin per training step
  (``generator`` in ``jit_null_branch`` / ``jit_loss_terms``), seeded from (run seed, global step, plugin
  name, rank, purpose). It is a function of the step, so a resumed run draws exactly the numbers an
  uninterrupted one draws: part of the checkpointed state by construction, with nothing to save.
"""
from __future__ import annotations

import contextlib
import hashlib
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


@contextlib.contextmanager
def isolated_rng(seed: int, device=None) -> Iterator[None]:
    """:func:`forked_rng`, with every forked RNG seeded by ``seed`` inside the block."""
    cuda = _cuda_devices(device)
    with forked_rng(device):
        torch.default_generator.manual_seed(seed)
        for index in cuda:              # only the forked generators: the others are not restored
            torch.cuda.default_generators[index].manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2 ** 32)
        yield


def plugin_seed(seed: int, step: int, plugin: str, rank: int = 0, purpose: str = "step") -> int:
    """A 63-bit seed from (run seed, global step, plugin name, rank, purpose); stable across processes."""
    text = f"{int(seed)}/{int(step)}/{plugin}/{int(rank)}/{purpose}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") & (2 ** 63 - 1)


def plugin_generator(seed: int, step: int, plugin: str, rank: int = 0, purpose: str = "step",
                     device: str | torch.device = "cpu") -> torch.Generator:
    """A fresh generator on ``device`` seeded by :func:`plugin_seed`. The meta device has no generator (its
    tensors have no values): a CPU one stands in, so a step traced on meta draws as it would elsewhere."""
    if torch.device(device).type == "meta":
        device = "cpu"
    return torch.Generator(device=device).manual_seed(plugin_seed(seed, step, plugin, rank, purpose))
