"""Ingredient 2: the unconditional branch of the feature stream (V-Co, arXiv 2603.16792;
docs/official-code.md#null-branch), three variants (``vco.null_branch``).

The core draws one joint Bernoulli drop per sample (``diffusion.label_drop_prob``) and gives a
dropped sample the null label (adaLN conditioning and in-context tokens of every stream). What the
drop means for the feature stream is V-Co's answer to ``jit_null_branch``:

- ``structured`` (the paper's recipe): in every block the dropped sample's pixel queries may not
  attend to feature keys (in-context tokens belong to their stream; feature queries still see the
  pixels); the feature input itself is unchanged; its feature-stream loss is 0 while its pixel loss
  is kept, so the pixel stream learns a truly unconditional denoiser. ``symmetric=True`` also
  blocks feature -> pixel (the "bidirectional mask" ablation);
- ``label_drop``: plain label dropping (the null label only): no mask, feature loss kept;
- ``input_dropout`` (the "input-dropout null" ablation, table2_run_e): the dropped sample's
  feature input is replaced by zeros; no attention mask; the feature loss is kept (the feature head
  learns to predict the features from the pixels alone, as input-dropout CFG trains).

The core uses the same answer for the unconditional half of every CFG evaluation (``drop`` all True).

Only the fully dual-stream net and MM-DiT with one QKV (``vco.fusion`` dual / shared_qkv) attend across the
streams. For the other architectures of V-Co's Table 1 there is no attention to mask, so ``structured``
zeroes the dropped samples' feature input instead (the official ``dinov2_null_type zero``) and still zeroes
their feature loss (the recipe's ``dinov2_drop_zero_loss``); docs/co-denoising-architectures.md.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch

from jit_core.diffusion import NullBranch, Unconditional, merge
from jit_core.model.streams import PIXEL, Stream

from .architecture import MASKABLE

FEATURE = "feature"
NULL_BRANCHES = ("structured", "label_drop", "input_dropout")


def null_branch(variant: str, drop: torch.Tensor, symmetric: bool = False, feature: str = FEATURE,
                fusion: str = "dual") -> Optional[NullBranch]:
    """V-Co's part of the unconditional form for ``drop`` ((B,) bool): see the module docstring."""
    if variant == "label_drop":
        return None
    if variant == "input_dropout":
        return NullBranch(inputs={feature: torch.zeros(())})
    if variant != "structured":
        raise ValueError(f"unknown null branch {variant!r}: use one of {', '.join(NULL_BRANCHES)}")
    if fusion not in MASKABLE:   # no cross-stream attention to mask: the feature input is zeroed instead
        return NullBranch(inputs={feature: torch.zeros(())}, loss_masks={feature: (~drop.bool()).float()})
    blocked = [(PIXEL, feature)] + ([(feature, PIXEL)] if symmetric else [])
    return NullBranch(blocked=blocked, loss_masks={feature: (~drop.bool()).float()})


def structured_unconditional(labels: torch.Tensor, drop: torch.Tensor, streams: Sequence[Stream],
                             num_classes: int, feature: str = FEATURE, symmetric: bool = False,
                             variant: str = "structured", fusion: str = "dual") -> Unconditional:
    """The merged unconditional form of a batch with only V-Co's answer (no plugin manager: tests, benchmarks).

    Without a ``feature`` stream this is plain JiT label dropping (no mask, all losses kept).
    """
    owner = {s.name: s.plugin for s in streams}
    branch = null_branch(variant, drop, symmetric, feature, fusion) if feature in owner else None
    return merge(labels, drop, streams, num_classes, [(owner[feature], branch)] if branch else [])
