"""Ingredient 2: the structured unconditional branch (spec §5).

One joint Bernoulli drop per sample (the core draws it with ``diffusion.label_drop_prob``) makes a
sample unconditional in three ways at once:

1. its label becomes the null class (adaLN conditioning and in-context tokens of every stream);
2. in every block, its pixel queries may not attend to feature keys (in-context tokens belong to
   their stream, the model expands the stream-level matrix to tokens). Feature queries still see
   the pixels, and nothing else is blocked. The feature input itself is left unchanged;
3. its feature-stream loss is 0, while its pixel loss is kept: the pixel stream learns a truly
   unconditional denoiser.

The same function builds the unconditional half of every CFG evaluation (``drop`` all True).
``symmetric=True`` also blocks feature -> pixel (the "bidirectional mask" ablation of the paper).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from jit_core.diffusion import Unconditional
from jit_core.model.streams import PIXEL, Stream

FEATURE = "feature"


def blocked_matrix(drop: torch.Tensor, names: Sequence[str], query: str = PIXEL, key: str = FEATURE,
                   symmetric: bool = False) -> torch.Tensor:
    """``(B, S, S)`` bool: ``[b, i, j]`` True where stream ``i``'s queries may not see stream ``j``'s keys.

    Only ``[b, query, key]`` is set (to ``drop[b]``), plus ``[b, key, query]`` when ``symmetric``.
    """
    names = list(names)
    q, k = names.index(query), names.index(key)
    blocked = torch.zeros(drop.shape[0], len(names), len(names), dtype=torch.bool, device=drop.device)
    blocked[:, q, k] = drop
    if symmetric:
        blocked[:, k, q] = drop
    return blocked


def structured_unconditional(labels: torch.Tensor, drop: torch.Tensor, streams: Sequence[Stream],
                             num_classes: int, feature: str = FEATURE, symmetric: bool = False) -> Unconditional:
    """The V-Co unconditional form of a batch: null labels, pixel->feature block, feature loss mask.

    ``labels`` (B,) true labels; ``drop`` (B,) bool. Without a ``feature`` stream this is plain
    JiT label dropping (no mask, all losses kept).
    """
    drop = drop.to(device=labels.device, dtype=torch.bool)
    null = torch.where(drop, torch.full_like(labels, num_classes), labels)
    names = [s.name for s in streams]
    if feature not in names:
        return Unconditional(labels=null)
    blocked = blocked_matrix(drop, names, PIXEL, feature, symmetric)
    return Unconditional(labels=null, blocked=blocked, loss_masks={feature: (~drop).float()})
