"""Ingredient 1: the co-denoising architecture (``vco.fusion``), named for V-Co's Table 1 (arXiv 2603.16792).

``dual`` is the paper's fully dual-stream net (own weights per stream in every block, one joint attention);
the alternatives it is compared with are ``shared_qkv`` (MM-DiT with one QKV shared by both streams),
``token_concat``, ``channel_concat``, ``add`` (direct addition) and ``shared_middle`` (a shared JiT with K
stream-specific pre- and post-blocks). The core builds each from the feature stream's ``fusion``
(``jit_core/model/fusion.py``); docs/co-denoising-architectures.md compares them.
"""
from __future__ import annotations

VCO_FUSIONS = ("dual", "shared_qkv", "token_concat", "channel_concat", "add", "shared_middle")
MASKABLE = ("dual", "shared_qkv")   # attention spans both streams: the structured null branch can mask it


def stream_fusion(fusion: str) -> str:
    """The core's ``Stream.fusion`` for a ``vco.fusion`` value (the fully dual-stream net is the core's ``joint``)."""
    if fusion not in VCO_FUSIONS:
        raise ValueError(f"unknown vco.fusion {fusion!r}: use one of {', '.join(VCO_FUSIONS)}")
    return "joint" if fusion == "dual" else fusion
