"""``EvalSpec``: what ``jit evaluate`` does to a run, as one frozen object (the grid of weights x CFG, the sampler,
the metric, where results go); ``GridPoint``: one point of that grid with every setting resolved."""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch

WEIGHTS = ("ema1", "ema2", "model")
PathLike = Union[str, os.PathLike, None]


def as_list(x: Any, convert) -> list:
    """A comma-separated string, a sequence or one value, as a list of ``convert``-ed values."""
    if isinstance(x, str):
        x = [v for v in x.split(",") if v.strip()]
    return [convert(v) for v in (x if isinstance(x, (list, tuple)) else [x])]


@dataclass(frozen=True)
class EvalSpec:
    """How to evaluate a run (:func:`jit_core.eval.evaluate.evaluate_run`); ``None`` takes the run's own value
    (``config.sample``). ``ema`` and ``cfg`` may be lists (or comma-separated): the grid of their product."""

    # the samples: which weights, how many, how they are drawn
    ema: Union[str, Sequence[str]] = "ema1"
    cfg: Union[float, Sequence[float], None] = None
    num_images: Optional[int] = None
    steps: Optional[int] = None
    method: Optional[str] = None
    interval: Optional[Sequence[float]] = None
    seed: int = 0
    batch_size: Optional[int] = None                # per rank
    checkpoint: PathLike = None                     # default: the run's latest verified checkpoint
    # the measurement
    metrics: str = "auto"                           # auto | classifier | fid | inception | none
    ref_stats: PathLike = None                      # reference (mu, sigma) npz for FID
    ref_dir: PathLike = None                        # reference images for FID and precision/recall
    inception_weights: PathLike = None
    prc: bool = True                                # precision/recall (needs ref_dir)
    bootstrap: Optional[int] = None                 # resamples for the 95 % intervals (None: by metric; 0: none)
    # the files and the machine
    out: PathLike = None                            # default: <run>/eval
    save: str = "png"                               # png | npz | none
    device: Union[str, torch.device, None] = None   # default: the rank's accelerator, else the CPU
    progress: bool = True
    trust_plugins: Union[Sequence[str], bool] = ()
    resume: bool = True                             # a grid point whose JSON holds the same settings is read back
    resume_single: bool = False                     # the same for a single point (--all-checkpoints)

    def emas(self) -> list[str]:
        """The weights to evaluate; ValueError naming the choices for an unknown one."""
        emas = as_list(self.ema, str.strip)
        bad = [e for e in emas if e not in WEIGHTS]
        if bad or not emas:
            raise ValueError(f"unknown weights {', '.join(bad) or '(none)'} in ema: use {', '.join(WEIGHTS)} "
                             "(comma-separated for a grid)")
        return emas

    def cfgs(self) -> Optional[list[float]]:
        """The CFG scales to evaluate (None: the run's own)."""
        return None if self.cfg is None else as_list(self.cfg, float)


@dataclass(frozen=True)
class GridPoint:
    """One evaluated point (weights x CFG) with every setting resolved: what its result record states."""

    name: str                       # the result's file name (eval_name)
    kind: str                       # the metric family: classifier | inception | none
    cfg: float
    steps: int
    method: str
    interval: tuple[float, ...]
    num_images: int
    seed: int
    batch_size: int
    device: torch.device
    world: int                      # ranks that generated the samples
    out: Path
    run_dir: Path
    swept: bool                     # several CFG scales: the best is chosen on these samples
    ema_swept: bool                 # several weights: the same
    bootstrap: int
    settings_key: dict              # what an existing result must match to stand for this point
