"""Token streams: the unit a plugin adds to the multi-stream JiT.

JiT itself has one stream, ``pixel``: an image patchified by the bottleneck patch embed and
decoded by a per-patch linear head. A co-denoising plugin (V-Co) adds a ``tokens`` stream: a grid
of feature vectors on the same token grid, embedded by a 1x1 bottleneck and decoded per token.
Every stream has its own weights in every block and its own head; all streams attend jointly.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Optional

import torch

PIXEL = "pixel"


@dataclass
class Stream:
    """One token stream.

    Architecture fields are read by the model; diffusion fields by the training step and sampler.

    - ``name``: unique key (``pixel`` is the core's image stream).
    - ``kind``: ``"patch"`` (input ``(B, C, H, W)`` image, patch embed, unpatchified head) or
      ``"tokens"`` (input ``(B, T, C)`` tokens, 1x1 embed, per-token head).
    - ``grid``: a ``tokens`` stream on a ``grid`` x ``grid`` grid of its own (T = grid^2, row-major,
      e.g. 4 when the pixels are 8 x 8), placed at its cells' centres on the pixel grid. None (default):
      the pixel grid (T = (image_size / patch_size)^2).
    - ``tokens``: instead, a ``tokens`` stream of this many global tokens (T = tokens) with no place on
      the grid: not rotated by RoPE, a 1D sin-cos table over the token index. At most one of
      ``grid`` / ``tokens`` is set (docs/architecture.md, "Streams with their own token count").
    - ``channels``: input/output channels (3 for pixels, 768 for DINOv2 features).
    - ``in_context``: whether the stream gets its own copy of the in-context class tokens.
    - ``loss_weight``: weight of this stream's v-loss in the objective.
    - ``noise_scale``: std of the Gaussian noise the stream is noised with.
    - ``target``: ``images -> clean tensor`` (None for ``pixel``: the images are the target).
    - ``guidance``: True if CFG is applied to this stream's velocity while sampling.
    - ``default_init``: keep PyTorch's default init for the embed (V-Co's feature embed) instead
      of JiT's xavier init.
    - ``time_shift``: alpha of a noise-schedule shift, t_s = alpha t / (1 + (alpha - 1) t), so that
      SNR_s(t_s) = alpha^2 SNR(t) (V-Co's alternative to RMS scaling). 1.0 = no shift. The network
      still receives the shared t; noising, velocities and sampler steps of the stream use t_s.
    - ``shift_prediction``: False: the *predicted* velocity divides by 1 - t (the shared time) while the
      noising, the target velocity and the sampler steps use t_s, as V-Co's released time-shift ablation
      does (arXiv 2603.16792, Table 4; docs/embedded-comparison.md). True (default): t_s everywhere.
    - ``plugin``: the plugin that added the stream, set by the core (``""``: the core's pixel
      stream). Per-stream hooks (``jit_normalize``, ``jit_guidance_scale``) and ``jit_null_branch``
      answers for the stream come from this plugin only.
    """

    name: str
    kind: Literal["patch", "tokens"] = "tokens"
    channels: int = 3
    grid: Optional[int] = None
    tokens: Optional[int] = None
    in_context: bool = True
    loss_weight: float = 1.0
    noise_scale: float = 1.0
    target: Optional[Callable[[torch.Tensor], torch.Tensor]] = field(default=None, repr=False)
    guidance: bool = True
    default_init: bool = False
    time_shift: float = 1.0
    shift_prediction: bool = True
    plugin: str = ""

    def shift(self, t):
        """The stream's own time t_s for the shared time t (identity unless ``time_shift`` != 1)."""
        a = self.time_shift
        return t if a == 1.0 else a * t / (1 + (a - 1) * t)

    def prediction_time(self, t):
        """The time the predicted velocity divides by: t_s, or the shared t without ``shift_prediction``."""
        return self.shift(t) if self.shift_prediction else t


def pixel_stream(channels: int = 3, noise_scale: float = 1.0) -> Stream:
    """The core's image stream (JiT's only stream)."""
    return Stream(name=PIXEL, kind="patch", channels=channels, noise_scale=noise_scale)
