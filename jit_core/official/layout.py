"""The official JiT / V-Co checkpoint format: key mapping to and from ours, and ``.pth`` import/export.

Official JiT (LTH14/JiT): ``net.blocks.N.attn.qkv.weight`` ...; official V-Co (HL-hanlin/V-Co):
per-stream suffixes ``_pixel`` / ``_dino`` and heads ``pixels_*`` / ``dinov2_*``. Ours: one
``streams.<name>`` level per block, ``embedders.<name>`` and ``heads.<name>``. The V-Co DINO stream
maps to our stream ``feature``; the frozen DINOv2 encoders and the Denoiser's image buffers
(``img_mean``, ``img_std``) are dropped: they are not part of the network.

:func:`from_official` / :func:`to_official` map state dicts; :func:`import_official` reads an official
``checkpoint-*.pth`` (``torch.load(weights_only=True)``, memory-mapped when the file allows it) into our
layout and :func:`export_official` writes ours as one, atomically.
"""
from __future__ import annotations

import argparse
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from jit_core.durable import ensure_dir, save_torch
from jit_core.errors import CheckpointError, first_line, weights_only_refusal

FEATURE = "feature"
_SHARED = ("pos_embed", "in_context_posemb", "t_embedder.", "y_embedder.")
_VCO_BLOCK = {"norm1": "norm1", "norm2": "norm2", "qkv": "attn.qkv", "q_norm": "attn.q_norm",
              "k_norm": "attn.k_norm", "proj": "attn.proj", "mlp": "mlp", "adaLN_modulation": "adaLN_modulation"}
_VCO_STREAM = {"pixel": "pixel", "dino": FEATURE}
_VCO_HEAD = {"pixels": "pixel", "dinov2": FEATURE}
_OUR_BLOCK_KEY = (r"blocks\.(\d+)\.streams\.(\w+)\."
                  r"(norm1|norm2|attn\.qkv|attn\.q_norm|attn\.k_norm|attn\.proj|mlp|adaLN_modulation)\.(.*)")
_DROPPED = ("img_mean", "img_std", "drifting_dinov2.", "x_embedder.dinov2.")


class ForeignCheckpointError(ValueError):
    """A state dict that is neither official JiT/V-Co nor ours."""


def detect_layout(sd: Mapping[str, torch.Tensor]) -> str:
    """``"jit"`` (official JiT), ``"vco"`` (official V-Co) or ``"ours"``."""
    keys = [k[4:] if k.startswith("net.") else k for k in sd]
    if any(k.startswith("embedders.") for k in keys):
        return "ours"
    if any(k.startswith("x_embedder.pix_proj1") for k in keys):
        return "vco"
    if any(k.startswith("x_embedder.proj1") for k in keys):
        return "jit"
    sample = ", ".join(list(sd)[:5])
    raise ForeignCheckpointError(f"not a JiT or V-Co state dict (first keys: {sample}); "
                                 "expected official keys like 'net.x_embedder.proj1.weight' or a jit-vco checkpoint")


def _map_jit(key: str) -> str:
    if key.startswith(_SHARED):
        return key
    if key.startswith("x_embedder."):
        return "embedders.pixel." + key[len("x_embedder."):]
    m = re.match(r"blocks\.(\d+)\.(.*)", key)
    if m:
        return f"blocks.{m[1]}.streams.pixel.{m[2]}"
    if key.startswith("final_layer."):
        return "heads.pixel." + key[len("final_layer."):]
    raise ForeignCheckpointError(f"unexpected official JiT key {key!r}")


def _map_vco(key: str) -> str | None:
    if key.startswith(_DROPPED):
        return None
    if key.startswith(_SHARED):
        return key
    m = re.match(r"x_embedder\.(pix|dino)_(proj[12]\..*)", key)
    if m:
        return f"embedders.{'pixel' if m[1] == 'pix' else FEATURE}.{m[2]}"
    m = re.match(r"blocks\.(\d+)\.(norm1|norm2|qkv|q_norm|k_norm|proj|mlp|adaLN_modulation)_(pixel|dino)\.(.*)", key)
    if m:
        return f"blocks.{m[1]}.streams.{_VCO_STREAM[m[3]]}.{_VCO_BLOCK[m[2]]}.{m[4]}"
    m = re.match(r"final_layer\.(pixels|dinov2)_(.*)", key)
    if m:
        return f"heads.{_VCO_HEAD[m[1]]}.{m[2]}"
    raise ForeignCheckpointError(f"unexpected official V-Co key {key!r}")


def from_official(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """Official (``net.``-prefixed) state dict -> ours. Returns (state dict, layout)."""
    layout = detect_layout(sd)
    if layout == "ours":
        return dict(sd), layout
    mapper = _map_jit if layout == "jit" else _map_vco
    out = {}
    for key, value in sd.items():
        if key.startswith(_DROPPED):
            continue
        new = mapper(key[4:] if key.startswith("net.") else key)
        if new is not None:
            out[new] = value
    return out, layout


def to_official(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Ours -> official layout (JiT when pixel-only, V-Co when a ``feature`` stream exists), ``net.`` keys."""
    vco = any(k.startswith(f"embedders.{FEATURE}.") for k in sd)
    inv_stream = {v: k for k, v in _VCO_STREAM.items()}
    inv_head = {v: k for k, v in _VCO_HEAD.items()}
    inv_block = {v: k for k, v in _VCO_BLOCK.items()}
    out = {}
    for key, value in sd.items():
        new = key
        if m := re.match(r"embedders\.(\w+)\.(.*)", key):
            new = f"x_embedder.{('pix' if m[1] == 'pixel' else 'dino') + '_' if vco else ''}{m[2]}"
        elif m := re.match(_OUR_BLOCK_KEY, key):
            new = (f"blocks.{m[1]}.{inv_block[m[3]]}_{inv_stream[m[2]]}.{m[4]}" if vco
                   else f"blocks.{m[1]}.{m[3]}.{m[4]}")
        elif m := re.match(r"heads\.(\w+)\.(.*)", key):
            new = f"final_layer.{inv_head[m[1]] + '_' if vco else ''}{m[2]}"
        out["net." + new] = value
    return out


# ------------------------------------------------------------------------------------------ official checkpoint files
def _load_official(path: Path):
    # The zip format can be memory-mapped (a 2B model's checkpoint is ~40 GB); legacy pickles cannot.
    mmap = zipfile.is_zipfile(path)
    with torch.serialization.safe_globals([argparse.Namespace]):  # only to unpickle `args`; never used
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except Exception as e:
            if "Weights only load failed" in str(e) and "GLOBAL" in str(e):
                raise weights_only_refusal(path, e) from e
            raise CheckpointError(f"not a checkpoint: {path} (torch.load failed: {type(e).__name__}: "
                                  f"{first_line(e)})") from e


def import_official(pth_path) -> dict:
    """An official JiT / V-Co ``checkpoint-*.pth`` in our key layout.

    Returns ``{"model": sd, "ema1": sd, "ema2": sd, "layout": "jit" | "vco", "epoch": int}``. The frozen
    DINOv2 encoders and image buffers of V-Co checkpoints are dropped (see :mod:`jit_core.official.layout`).
    """
    path = Path(pth_path)
    if not path.is_file():
        raise CheckpointError(f"official checkpoint not found: {path}; pass the checkpoint-last.pth written by "
                              "the official JiT (main_jit.py) or V-Co code")
    ck = _load_official(path)
    if not isinstance(ck, Mapping) or "model" not in ck:
        found = sorted(map(str, ck))[:8] if isinstance(ck, Mapping) else type(ck).__name__
        raise CheckpointError(f"{path} is not an official JiT/V-Co checkpoint: it has no 'model' entry (found "
                              f"{found}); expected a dict with model, model_ema1, model_ema2, optimizer, epoch, args")
    out, layout = {}, None
    for ours, theirs in (("model", "model"), ("ema1", "model_ema1"), ("ema2", "model_ema2")):
        sd = ck.get(theirs)
        if sd is None:
            warnings.warn(f"{path} has no {theirs!r}; using 'model' for {ours}", stacklevel=2)
            sd = ck["model"]
        if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise CheckpointError(f"{path}: {theirs!r} is not a state dict of tensors")
        try:
            out[ours], layout = from_official(sd)
        except ForeignCheckpointError as e:
            raise CheckpointError(f"{path}: {theirs!r} is not a JiT/V-Co state dict: {e}") from e
    epoch = ck.get("epoch", 0)
    out.update(layout=layout, epoch=int(epoch) if isinstance(epoch, (int, float)) else 0)
    return out


def export_official(weights: dict, path, epoch: int = 0) -> None:
    """Write our weights in the official checkpoint layout (empty optimizer, ``args`` None), atomically."""
    model = weights["model"]
    ck = {name: {k: v.detach().cpu() for k, v in to_official(weights.get(ours, model)).items()}
          for ours, name in (("model", "model"), ("ema1", "model_ema1"), ("ema2", "model_ema2"))}
    ck.update(optimizer={}, epoch=int(epoch), args=None)
    path = Path(path)
    ensure_dir(path.parent)
    save_torch(path, ck)
