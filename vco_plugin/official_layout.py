"""The official V-Co checkpoint layout (the authors' code, HL-hanlin/V-Co), contributed to ``jit convert`` /
``jit export`` through the ``jit_official_layouts`` hook.

Official V-Co keys carry per-stream suffixes (``blocks.N.qkv_pixel``, ``blocks.N.qkv_dino``), embedders
``x_embedder.pix_*`` / ``x_embedder.dino_*`` and heads ``final_layer.pixels_*`` / ``final_layer.dinov2_*``.
Ours: one ``streams.<name>`` level per block, ``embedders.<name>``, ``heads.<name>``; the DINO stream is our
stream ``feature``. The frozen DINOv2 encoders and the denoiser's image buffers (``img_mean``, ``img_std``)
are not part of the network and are dropped on import.
"""
from __future__ import annotations

import re

from jit_core.official.layout import OUR_BLOCK_KEY, SHARED, ForeignCheckpointError, OfficialLayout

from .null_branch import FEATURE

BLOCK = {"norm1": "norm1", "norm2": "norm2", "qkv": "attn.qkv", "q_norm": "attn.q_norm", "k_norm": "attn.k_norm",
         "proj": "attn.proj", "mlp": "mlp", "adaLN_modulation": "adaLN_modulation"}   # official -> ours
STREAM = {"pixel": "pixel", "dino": FEATURE}
HEAD = {"pixels": "pixel", "dinov2": FEATURE}
DROPPED = ("img_mean", "img_std", "drifting_dinov2.", "x_embedder.dinov2.")


def to_ours(key: str) -> str | None:
    """One official V-Co key (no ``net.``) -> ours; None for what is not part of the network."""
    if key.startswith(DROPPED):
        return None
    if key.startswith(SHARED):
        return key
    if m := re.match(r"x_embedder\.(pix|dino)_(proj[12]\..*)", key):
        return f"embedders.{'pixel' if m[1] == 'pix' else FEATURE}.{m[2]}"
    if m := re.match(r"blocks\.(\d+)\.(norm1|norm2|qkv|q_norm|k_norm|proj|mlp|adaLN_modulation)_(pixel|dino)\.(.*)", key):
        return f"blocks.{m[1]}.streams.{STREAM[m[3]]}.{BLOCK[m[2]]}.{m[4]}"
    if m := re.match(r"final_layer\.(pixels|dinov2)_(.*)", key):
        return f"heads.{HEAD[m[1]]}.{m[2]}"
    raise ForeignCheckpointError(f"unexpected official V-Co key {key!r}")


_INV_BLOCK = {v: k for k, v in BLOCK.items()}
_INV_STREAM = {v: k for k, v in STREAM.items()}
_INV_HEAD = {v: k for k, v in HEAD.items()}


def to_official(key: str) -> str:
    """One key of ours -> the official V-Co key (no ``net.``)."""
    if m := re.match(r"embedders\.(\w+)\.(.*)", key):
        return f"x_embedder.{'pix' if m[1] == 'pixel' else 'dino'}_{m[2]}"
    if m := re.match(OUR_BLOCK_KEY, key):
        return f"blocks.{m[1]}.{_INV_BLOCK[m[3]]}_{_INV_STREAM[m[2]]}.{m[4]}"
    if m := re.match(r"heads\.(\w+)\.(.*)", key):
        return f"final_layer.{_INV_HEAD[m[1]]}_{m[2]}"
    return key


VCO_LAYOUT = OfficialLayout(
    name="vco", detect=lambda keys: any(k.startswith("x_embedder.pix_proj1") for k in keys), to_ours=to_ours,
    writes=lambda keys: any(k.startswith(f"embedders.{FEATURE}.") for k in keys), to_official=to_official,
    plugins=("vco",))
