"""NaN/inf detection in one device sync per step, and the diagnosis when it happens."""
from __future__ import annotations

from typing import Optional

import torch


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient became NaN/inf; the message says which term, when, and what was kept."""


def find_nonfinite(losses: dict[str, torch.Tensor], total: torch.Tensor,
                   grad_norm: Optional[torch.Tensor]) -> Optional[str]:
    """None if every loss term, the total and the gradient norm are finite, else which ones are not."""
    checked = [*losses.values(), total] + ([grad_norm] if grad_norm is not None else [])
    if bool(torch.stack([torch.isfinite(x.detach().float()).all() for x in checked]).all()):
        return None   # one device sync per step; the message below is built only when something is off
    bad = [f"loss/{k}={v.item():.4g}" for k, v in losses.items() if not torch.isfinite(v)]
    if not torch.isfinite(total) and not bad:
        bad.append(f"loss={total.item():.4g}")
    if grad_norm is not None and not torch.isfinite(grad_norm):
        bad.append(f"grad_norm={grad_norm.item():.4g}")
    return ", ".join(bad) or None
