"""Token streams: the unit a plugin adds to the multi-stream JiT, with its behaviour.

JiT itself has one stream, ``pixel``: an image patchified by the bottleneck patch embed and
decoded by a per-patch linear head. A co-denoising plugin (V-Co) adds a ``tokens`` stream: a grid
of feature vectors on the same token grid, embedded by a 1x1 bottleneck and decoded per token.
By default every stream has its own weights in every block and its own head, and all streams attend
jointly; a stream's ``fusion`` picks another co-denoising architecture (``fusion.py``).

A stream also carries its behaviour in the diffusion step: its clean target (:meth:`Stream.clean`),
its normalisation (:meth:`Stream.normalize`), its CFG scale (:meth:`Stream.guidance_scale`) and its
unconditional form (:meth:`Stream.null_branch`, with its own drop probability ``drop_prob``). The base
class holds JiT's defaults; a plugin subclasses :class:`Stream` and overrides what differs.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import torch

PIXEL = "pixel"
# how an extra stream is fused with the pixels (model/fusion.py; V-Co, arXiv 2603.16792, Table 1)
FUSIONS = ("joint", "shared_qkv", "token_concat", "channel_concat", "add", "shared_middle")


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
      ``grid`` / ``tokens`` is set (docs/architecture.md, "Streams with their own token count");
      :meth:`num_tokens` gives T.
    - ``channels``: input/output channels (3 for pixels, 768 for DINOv2 features).
    - ``in_context``: whether the stream gets its own copy of the in-context class tokens.
    - ``loss_weight``: weight of this stream's v-loss in the objective.
    - ``noise_scale``: std of the Gaussian noise the stream is noised with.
    - ``target``: ``images -> clean tensor`` (None for ``pixel``: the images are the target); the
      default :meth:`clean` calls it. Override :meth:`clean` instead when the target needs more.
    - ``guidance``: True if CFG is applied to this stream's velocity while sampling (default
      :meth:`guidance_scale`).
    - ``drop_prob``: None = the stream's unconditional form follows the shared label drop
      (``diffusion.label_drop_prob``); a probability = the core draws the stream's *own* per-sample drop
      (independent of the label drop, from the plugin's seeded generator) and hands it to
      :meth:`null_branch` and to its plugin's ``jit_null_branch``. Sampling drops every sample.
    - ``default_init``: keep PyTorch's default init for the embed (V-Co's feature embed) instead
      of JiT's xavier init.
    - ``time_shift``: alpha of a noise-schedule shift, t_s = alpha t / (1 + (alpha - 1) t), so that
      SNR_s(t_s) = alpha^2 SNR(t) (V-Co's alternative to RMS scaling). 1.0 = no shift. The network
      still receives the shared t; noising, velocities and sampler steps of the stream use t_s.
    - ``shift_prediction``: False: the *predicted* velocity divides by 1 - t (the shared time) while the
      noising, the target velocity and the sampler steps use t_s, as V-Co's released time-shift ablation
      does (arXiv 2603.16792, Table 4; docs/embedded-comparison.md). True (default): t_s everywhere.
    - ``fusion``: how the stream is fused with the pixel stream (``model/fusion.py``, V-Co Table 1):
      ``joint`` (default: own weights in every block, one joint attention), ``shared_qkv``,
      ``token_concat``, ``channel_concat``, ``add`` or ``shared_middle``. Anything but ``joint`` takes
      exactly one extra stream and, except ``shared_qkv``, no attention mask (docs/co-denoising-architectures.md).
    - ``fusion_blocks``: K, the stream-specific blocks of ``channel_concat`` / ``add`` (post-blocks; 0 =
      fused up to the heads) and ``shared_middle`` (pre- and post-blocks, K >= 1). The official default is 1.
    - ``plugin``: the plugin that added the stream, set by the core (``""``: the core's pixel
      stream). Null-branch answers for the stream come from this plugin only.
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
    drop_prob: Optional[float] = None
    fusion: str = "joint"
    fusion_blocks: int = 1
    plugin: str = ""

    def __post_init__(self):
        if self.grid is not None and self.tokens is not None:
            raise ValueError(f"stream {self.name!r}: give grid (its own token grid) or tokens (global tokens), not both")
        if self.drop_prob is not None and not 0 <= self.drop_prob <= 1:
            raise ValueError(f"stream {self.name!r}: drop_prob={self.drop_prob} is not a probability")
        if self.fusion not in FUSIONS:
            raise ValueError(f"stream {self.name!r}: unknown fusion {self.fusion!r}; choose one of {', '.join(FUSIONS)}")
        if isinstance(self.fusion_blocks, bool) or not isinstance(self.fusion_blocks, int) or self.fusion_blocks < 0:
            raise ValueError(f"stream {self.name!r}: fusion_blocks={self.fusion_blocks!r} must be an integer >= 0")

    def num_tokens(self, model_grid: int) -> int:
        """T, the stream's token count: ``tokens``, else ``grid ** 2`` (its own grid or the model's)."""
        if self.tokens is not None:
            return self.tokens
        return (self.grid or model_grid) ** 2

    def shift(self, t):
        """The stream's own time t_s for the shared time t (identity unless ``time_shift`` != 1)."""
        a = self.time_shift
        return t if a == 1.0 else a * t / (1 + (a - 1) * t)

    # ---------------------------------------------------------------- behaviour (JiT's defaults)
    def clean(self, images: torch.Tensor, values: dict[str, Any]) -> torch.Tensor:
        """The clean tensor of this stream for the clean images ``(B, C, H, W)`` in [-1, 1], under ``no_grad``.

        Default: ``target(images)`` (the images themselves for a stream without ``target``). ``values`` is
        the step's dict of values (``step.values`` in ``jit_loss_terms``): leave there what a loss term of
        your plugin needs from the same computation, under a key of your own (e.g. ``"vco.f_pos"``).
        """
        return images if self.target is None else self.target(images)

    def normalize(self, clean: torch.Tensor) -> torch.Tensor:
        """Calibrate the clean tensor before it is noised (every training step, ``no_grad``). Default: as is."""
        return clean

    def guidance_scale(self, scale: float) -> float:
        """The CFG scale of this stream when the pixel scale is ``scale``. Default: ``scale`` if ``guidance``
        else 1. An unguided evaluation (``scale == 1``) must return 1."""
        return scale if self.guidance else 1.0

    def null_branch(self, drop: torch.Tensor, streams: Sequence[Stream], training: bool) -> Any:
        """This stream's unconditional form for the samples ``drop`` ((B,) bool: its own drop if it has a
        ``drop_prob``, else the shared label drop; all True for the unconditional half of CFG).

        Return a ``jit_core.diffusion.NullBranch`` concerning this stream (blocked pairs, its loss mask, its
        null input), or None (default: only the core's null label, JiT's label drop)."""
        return None

    def prediction_time(self, t):
        """The time the predicted velocity divides by: t_s, or the shared t without ``shift_prediction``."""
        return self.shift(t) if self.shift_prediction else t


def pixel_stream(channels: int = 3, noise_scale: float = 1.0) -> Stream:
    """The core's image stream (JiT's only stream)."""
    return Stream(name=PIXEL, kind="patch", channels=channels, noise_scale=noise_scale)
