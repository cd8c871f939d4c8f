"""The official V-Co checkpoint layout (the authors' code, HL-hanlin/V-Co), contributed to ``jit convert`` /
``jit export`` through the ``jit_official_layouts`` hook.

Official V-Co keys carry per-stream suffixes (``blocks.N.qkv_pixel``, ``blocks.N.qkv_dino``), embedders
``x_embedder.pix_*`` / ``x_embedder.dino_*`` and heads ``final_layer.pixels_*`` / ``final_layer.dinov2_*``.
Ours: one ``streams.<name>`` level per block, ``embedders.<name>``, ``heads.<name>``; the DINO stream is our
stream ``feature``. The frozen DINOv2 encoders and the denoiser's image buffers (``img_mean``, ``img_std``)
are not part of the network and are dropped on import.

The architecture alternatives of V-Co's Table 1 (``vco.fusion``; docs/co-denoising-architectures.md) have
layouts of their own, told apart by their keys:

- ``shared_qkv`` (MM-DiT, one QKV): ``blocks.N.attn.*`` shared, ``blocks.N.norm1_pixel`` ... per stream;
  ours ``blocks.N.attn.*`` and ``blocks.N.streams.<name>.*``;
- ``token_concat``: plain JiT blocks ``blocks.N.norm1`` ...; ours the pixel stream's ``blocks.N.streams.pixel.*``;
- ``channel_concat`` / ``add`` / ``shared_middle``: ``{pixel,dino}_pre_blocks.j``, ``shared_blocks.j``,
  ``{pixel,dino}_post_blocks.j`` and ``channel_concat_proj_{in,out}``; ours numbers every layer by its depth:
  ``blocks.N.shared.*`` for a shared block, ``blocks.N.streams.<name>.*`` for a stream's own, and
  ``fusion.proj_{in,out}``. The official ``feat_rope_concat*`` RoPE buffers are dropped.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Optional

from jit_core.official.infer import fusion_of
from jit_core.official.layout import OUR_BLOCK_KEY, SHARED, ForeignCheckpointError, OfficialLayout

from .null_branch import FEATURE

BLOCK = {"norm1": "norm1", "norm2": "norm2", "qkv": "attn.qkv", "q_norm": "attn.q_norm", "k_norm": "attn.k_norm",
         "proj": "attn.proj", "mlp": "mlp", "adaLN_modulation": "adaLN_modulation"}   # official -> ours
STREAM = {"pixel": "pixel", "dino": FEATURE}
HEAD = {"pixels": "pixel", "dinov2": FEATURE}
DROPPED = ("img_mean", "img_std", "drifting_dinov2.", "x_embedder.dinov2.", "feat_rope_concat")
PROJ = {"channel_concat_proj_in": "fusion.proj_in", "channel_concat_proj_out": "fusion.proj_out"}
PER_STREAM = "(norm1|norm2|qkv|q_norm|k_norm|proj|mlp|adaLN_modulation)"
JIT_BLOCK = r"blocks\.(\d+)\.(norm1|norm2|attn|mlp|adaLN_modulation)\.(.*)"   # token_concat's plain JiT blocks


def fusion_of_official(keys: Sequence[str]) -> str:
    """The ``vco.fusion`` of an official V-Co state dict (keys without ``net.``), read off its key names."""
    if any(k.startswith("shared_blocks.") for k in keys):
        if any(k.startswith("channel_concat_proj_in") for k in keys):
            return "channel_concat"
        return "shared_middle" if any(k.startswith("pixel_pre_blocks.") for k in keys) else "add"
    if any(re.match(r"blocks\.\d+\.norm1\.", k) for k in keys):
        return "token_concat"
    if any(re.match(r"blocks\.\d+\.attn\.", k) for k in keys):
        return "shared_qkv"
    return "dual"


def _count(keys: Sequence[str], prefix: str) -> int:
    return len({m[1] for k in keys if (m := re.match(rf"{re.escape(prefix)}\.(\d+)\.", k))})


def to_ours(key: str, pre: int = 0, shared: int = 0) -> str | None:
    """One official V-Co key (no ``net.``) -> ours; None for what is not part of the network. ``pre`` /
    ``shared``: the pre-block and shared-block counts of a fused net (their layers come first)."""
    if key.startswith(DROPPED):
        return None
    if key.startswith(SHARED):
        return key
    if m := re.match(r"x_embedder\.(pix|dino)_(proj[12]\..*)", key):
        return f"embedders.{'pixel' if m[1] == 'pix' else FEATURE}.{m[2]}"
    if m := re.match(rf"blocks\.(\d+)\.{PER_STREAM}_(pixel|dino)\.(.*)", key):
        return f"blocks.{m[1]}.streams.{STREAM[m[3]]}.{BLOCK[m[2]]}.{m[4]}"
    if m := re.match(r"final_layer\.(pixels|dinov2)_(.*)", key):
        return f"heads.{HEAD[m[1]]}.{m[2]}"
    if m := re.match(r"shared_blocks\.(\d+)\.(.*)", key):
        return f"blocks.{pre + int(m[1])}.shared.{m[2]}"
    if m := re.match(r"(pixel|dino)_(pre|post)_blocks\.(\d+)\.(.*)", key):
        layer = int(m[3]) + (pre + shared if m[2] == "post" else 0)
        return f"blocks.{layer}.streams.{STREAM[m[1]]}.{m[4]}"
    if m := re.match(r"(channel_concat_proj_in|channel_concat_proj_out)\.(.*)", key):
        return f"{PROJ[m[1]]}.{m[2]}"
    raise ForeignCheckpointError(f"unexpected official V-Co key {key!r}")


def _bound_to_ours(keys: Sequence[str]):
    fusion, pre, shared = fusion_of_official(keys), _count(keys, "pixel_pre_blocks"), _count(keys, "shared_blocks")

    def mapped(key: str) -> Optional[str]:
        if m := re.match(r"blocks\.(\d+)\.attn\.(.*)", key):
            if fusion == "shared_qkv":                            # MM-DiT's one attention module per block
                return key
        if fusion == "token_concat" and (m := re.match(JIT_BLOCK, key)):
            return f"blocks.{m[1]}.streams.pixel.{m[2]}.{m[3]}"
        return to_ours(key, pre, shared)
    return mapped


_INV_BLOCK = {v: k for k, v in BLOCK.items()}
_INV_STREAM = {v: k for k, v in STREAM.items()}
_INV_HEAD = {v: k for k, v in HEAD.items()}
_INV_PROJ = {v: k for k, v in PROJ.items()}


def fusion_of_ours(keys: Sequence[str]) -> str:
    """The ``vco.fusion`` of a state dict in our layout, read off its key names."""
    fusion, _ = fusion_of(keys)
    return "dual" if fusion == "joint" else fusion


def to_official(key: str, fusion: str = "dual", pre: int = 0, shared: int = 0) -> str:
    """One key of ours -> the official V-Co key (no ``net.``); ``fusion``, ``pre``, ``shared`` as in :func:`to_ours`."""
    if m := re.match(r"embedders\.(\w+)\.(.*)", key):
        return f"x_embedder.{'pix' if m[1] == 'pixel' else 'dino'}_{m[2]}"
    if m := re.match(r"blocks\.(\d+)\.shared\.(.*)", key):
        return f"shared_blocks.{int(m[1]) - pre}.{m[2]}"
    if fusion in ("channel_concat", "add", "shared_middle") and (m := re.match(r"blocks\.(\d+)\.streams\.(\w+)\.(.*)", key)):
        layer = int(m[1])
        where, j = ("pre", layer) if layer < pre else ("post", layer - pre - shared)
        return f"{_INV_STREAM[m[2]]}_{where}_blocks.{j}.{m[3]}"
    if fusion == "token_concat" and (m := re.match(r"blocks\.(\d+)\.streams\.pixel\.(.*)", key)):
        return f"blocks.{m[1]}.{m[2]}"
    if m := re.match(OUR_BLOCK_KEY, key):
        return f"blocks.{m[1]}.{_INV_BLOCK[m[3]]}_{_INV_STREAM[m[2]]}.{m[4]}"
    if m := re.match(r"blocks\.(\d+)\.streams\.(\w+)\.(norm1|norm2|mlp|adaLN_modulation)\.(.*)", key):
        return f"blocks.{m[1]}.{m[3]}_{_INV_STREAM[m[2]]}.{m[4]}"      # shared_qkv: no attn under a stream
    if m := re.match(r"heads\.(\w+)\.(.*)", key):
        return f"final_layer.{_INV_HEAD[m[1]]}_{m[2]}"
    if m := re.match(r"(fusion\.proj_in|fusion\.proj_out)\.(.*)", key):
        return f"{_INV_PROJ[m[1]]}.{m[2]}"
    return key


def _bind(keys: Sequence[str]) -> OfficialLayout:
    """The layout bound to a state dict's keys: official ones on import, ours on export."""
    if any(k.startswith("embedders.") for k in keys):                 # ours: export
        fusion = fusion_of_ours(keys)
        shared = sorted({int(m[1]) for k in keys if (m := re.match(r"blocks\.(\d+)\.shared\.", k))})
        pre, n = (shared[0], len(shared)) if shared else (0, 0)
        return replace(VCO_LAYOUT, bind=None, to_official=lambda key: to_official(key, fusion, pre, n))
    return replace(VCO_LAYOUT, bind=None, to_ours=_bound_to_ours(keys))


VCO_LAYOUT = OfficialLayout(
    name="vco", detect=lambda keys: any(k.startswith("x_embedder.pix_proj1") for k in keys), to_ours=to_ours,
    writes=lambda keys: any(k.startswith(f"embedders.{FEATURE}.") for k in keys), to_official=to_official,
    plugins=("vco",), bind=_bind,
    plugin_options=lambda keys: {} if fusion_of_official(keys) == "dual" else {"vco": {"fusion": fusion_of_official(keys)}})
