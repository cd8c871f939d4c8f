"""Training state that is not weights: the EMAs and every RNG, stored as data so that resume is exact."""
from __future__ import annotations

import random
import re
from typing import Any, cast

import numpy as np
import torch
import torch.nn as nn


class EMA:
    """Exponential moving averages of every model parameter (frozen ones included), no warmup."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.params = [p.detach().clone() for p in model.parameters()]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        torch._foreach_lerp_(self.params, [p.detach() for p in model.parameters()], 1 - self.decay)

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        names = [n for n, _ in model.named_parameters()]
        return dict(zip(names, self.params))

    def load(self, sd: dict[str, torch.Tensor], model: nn.Module) -> None:
        for (name, _), p in zip(model.named_parameters(), self.params):
            p.copy_(sd[name])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every RNG's state as data (tensors and numbers), so that trainer.pt never holds text to evaluate."""
    # legacy=True (the default) is the MT19937 tuple (name, keys, pos, has_gauss, gauss); numpy types it as a union
    np_state = cast(tuple[Any, ...], np.random.get_state())
    py_version, py_internal, py_gauss = random.getstate()
    python = {"version": py_version, "state": torch.tensor(py_internal, dtype=torch.int64), "gauss": py_gauss}
    state: dict[str, object] = {"torch": torch.get_rng_state(), "python": python,
             "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                       "has_gauss": int(np_state[3]), "gauss": float(np_state[4])}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


_LEGACY_PY_RNG = re.compile(r"\(\s*(\d+)\s*,\s*\(([\d,\s]+)\)\s*,\s*(None|[-+0-9.eE]+)\s*\)")


def _python_rng(saved) -> tuple:
    """The ``random.setstate`` tuple from trainer.pt: a dict of numbers, or (checkpoints of jit-vco <= 0.1) the
    repr of the tuple, read by a strict pattern of integers, never evaluated."""
    if isinstance(saved, str):
        m = _LEGACY_PY_RNG.fullmatch(saved.strip())
        if m is None:
            raise ValueError("the saved Python RNG state is text that is not a tuple of integers")
        ints = [int(x) for x in m[2].replace(" ", "").split(",") if x]
        saved = {"version": int(m[1]), "state": ints, "gauss": None if m[3] == "None" else float(m[3])}
    if not isinstance(saved, dict) or set(saved) != {"version", "state", "gauss"}:
        raise ValueError("the saved Python RNG state is not {version, state, gauss}")
    ints = saved["state"].tolist() if isinstance(saved["state"], torch.Tensor) else list(saved["state"])
    if len(ints) != 625 or not all(isinstance(x, int) and 0 <= x < 2 ** 32 for x in ints):
        raise ValueError("the saved Python RNG state is not 625 unsigned 32-bit integers")
    gauss = saved["gauss"]
    if gauss is not None and not isinstance(gauss, (int, float)):
        raise ValueError("the saved Python RNG gauss value is not a number")
    return int(saved["version"]), tuple(ints), None if gauss is None else float(gauss)


def set_rng_state(state: dict) -> None:
    """Restore the RNGs saved by :func:`rng_state`; a malformed state raises ValueError (nothing is evaluated)."""
    torch.set_rng_state(state["torch"])
    random.setstate(_python_rng(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
