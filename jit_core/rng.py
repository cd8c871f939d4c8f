"""The random numbers a plugin may use, and the fence around its set-up.

- :func:`plugin_generator`: the seeded ``torch.Generator`` the core hands each plugin per training step
  (``generator`` in ``jit_null_branch`` / ``jit_loss_terms``), seeded from (run seed, global step, plugin
  name, rank, purpose). It is a function of the step, so a resumed run draws exactly the numbers an
  uninterrupted one draws: it is part of the checkpointed state by construction, with nothing to save.
- :func:`isolated_rng`: runs plugin set-up (``jit_setup``) with the global RNGs (torch CPU and CUDA,
  Python, NumPy) forked and seeded, so building an encoder or computing statistics never shifts the
  training randomness, whether the run starts fresh or resumes.
"""
from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Iterator

import torch


def plugin_seed(seed: int, step: int, plugin: str, rank: int = 0, purpose: str = "step") -> int:
    """A 63-bit seed from (run seed, global step, plugin name, rank, purpose); stable across processes."""
    text = f"{int(seed)}/{int(step)}/{plugin}/{int(rank)}/{purpose}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") & (2 ** 63 - 1)


def plugin_generator(seed: int, step: int, plugin: str, rank: int = 0, purpose: str = "step",
                     device: str | torch.device = "cpu") -> torch.Generator:
    """A fresh generator on ``device`` seeded by :func:`plugin_seed`."""
    return torch.Generator(device=device).manual_seed(plugin_seed(seed, step, plugin, rank, purpose))


@contextlib.contextmanager
def isolated_rng(seed: int) -> Iterator[None]:
    """Fork every global RNG, seed it with ``seed`` inside, restore it on exit (also on an error)."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    py_state = random.getstate()
    try:
        import numpy as np
        np_state = np.random.get_state()
    except ImportError:   # numpy is optional for the core's RNG fence
        np = np_state = None
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        random.seed(seed)
        if np is not None:
            np.random.seed(seed % 2 ** 32)
        try:
            yield
        finally:
            random.setstate(py_state)
            if np is not None:
                np.random.set_state(np_state)
