"""Official checkpoint formats: key mapping to and from ours, and ``.pth`` import/export.

Official JiT (LTH14/JiT): ``net.blocks.N.attn.qkv.weight`` ...; ours: one ``streams.<name>`` level per
block, ``embedders.<name>`` and ``heads.<name>``. JiT's layout is the core's (:data:`JIT_LAYOUT`); a plugin
whose official code has checkpoints of its own contributes an :class:`OfficialLayout` through the
``jit_official_layouts`` hook (V-Co's lives in ``vco_plugin``). :func:`official_layouts` lists them, the
installed plugins' first, JiT's last (it exports only pixel-only networks).

:func:`from_official` / :func:`to_official` map state dicts; :func:`import_official` reads an official
``checkpoint-*.pth`` (``torch.load(weights_only=True)``, memory-mapped when the file allows it) into our
layout and :func:`export_official` writes ours as one, atomically.
"""
from __future__ import annotations

import argparse
import re
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from jit_core.durable import ensure_dir, save_torch
from jit_core.errors import CheckpointError, first_line, weights_only_refusal

SHARED = ("pos_embed", "in_context_posemb", "t_embedder.", "y_embedder.")   # the same key in every layout
OUR_BLOCK_KEY = (r"blocks\.(\d+)\.streams\.(\w+)\."
                 r"(norm1|norm2|attn\.qkv|attn\.q_norm|attn\.k_norm|attn\.proj|mlp|adaLN_modulation)\.(.*)")


@dataclass(frozen=True)
class OfficialLayout:
    """The key layout of one official code base's checkpoints (keys without the ``net.`` prefix)."""

    name: str                                      # recorded as the converted run's source layout
    detect: Callable[[Sequence[str]], bool]        # official keys -> whether they are this layout
    to_ours: Callable[[str], Optional[str]]        # an official key -> ours (None: not part of the network)
    writes: Callable[[Sequence[str]], bool]        # our keys -> whether this layout exports that network
    to_official: Callable[[str], str]              # a key of ours -> the official key
    plugins: tuple[str, ...] = ()                  # the plugins a converted run of this layout enables
    # a layout whose key mapping depends on the whole key set (e.g. block offsets of a fused net): keys
    # (official on import, ours on export) -> the layout bound to them; None: the mapping is per key
    bind: Optional[Callable[[Sequence[str]], OfficialLayout]] = None
    # official keys -> the plugin options a converted run needs to rebuild the network, {plugin: {name: value}}
    # (e.g. V-Co's architecture variant); None: the plugins' defaults
    plugin_options: Optional[Callable[[Sequence[str]], dict]] = None

    def bound(self, keys: Sequence[str]) -> OfficialLayout:
        """This layout's key mapping for a state dict with these keys (no ``net.`` prefix)."""
        return self.bind(list(keys)) if self.bind is not None else self


class ForeignCheckpointError(ValueError):
    """A state dict that is neither official JiT/V-Co nor ours."""


def official_layouts() -> list[OfficialLayout]:
    """The installed plugins' layouts (``jit_official_layouts``), then JiT's."""
    from jit_core.plugins.presets import from_installed
    return [layout for answer in from_installed("jit_official_layouts") for layout in answer] + [JIT_LAYOUT]


def find_layout(sd: Mapping[str, torch.Tensor], layouts: Sequence[OfficialLayout] | None = None
                ) -> Optional[OfficialLayout]:
    """The official layout of ``sd`` (None: ours); ForeignCheckpointError when it is neither."""
    keys = [k[4:] if k.startswith("net.") else k for k in sd]
    if any(k.startswith("embedders.") for k in keys):
        return None
    for layout in official_layouts() if layouts is None else layouts:
        if layout.detect(keys):
            return layout
    sample = ", ".join(list(sd)[:5])
    raise ForeignCheckpointError(f"not a JiT state dict nor one of an installed plugin's official layouts (first "
                                 f"keys: {sample}); expected official keys like 'net.x_embedder.proj1.weight' or a "
                                 "jit-vco checkpoint")


def detect_layout(sd: Mapping[str, torch.Tensor], layouts: Sequence[OfficialLayout] | None = None) -> str:
    """``"ours"``, ``"jit"`` (official JiT) or the name of a plugin's official layout (``"vco"``)."""
    layout = find_layout(sd, layouts)
    return "ours" if layout is None else layout.name


def _map_jit(key: str) -> str:
    if key.startswith(SHARED):
        return key
    if key.startswith("x_embedder."):
        return "embedders.pixel." + key[len("x_embedder."):]
    m = re.match(r"blocks\.(\d+)\.(.*)", key)
    if m:
        return f"blocks.{m[1]}.streams.pixel.{m[2]}"
    if key.startswith("final_layer."):
        return "heads.pixel." + key[len("final_layer."):]
    raise ForeignCheckpointError(f"unexpected official JiT key {key!r}")


def _jit_to_official(key: str) -> str:
    if m := re.match(r"embedders\.pixel\.(.*)", key):
        return f"x_embedder.{m[1]}"
    if m := re.match(OUR_BLOCK_KEY, key):
        return f"blocks.{m[1]}.{m[3]}.{m[4]}"
    if m := re.match(r"heads\.pixel\.(.*)", key):
        return f"final_layer.{m[1]}"
    return key


JIT_LAYOUT = OfficialLayout(
    name="jit", detect=lambda keys: any(k.startswith("x_embedder.proj1") for k in keys), to_ours=_map_jit,
    writes=lambda keys: all(".pixel." in k for k in keys if k.startswith(("embedders.", "heads."))),
    to_official=_jit_to_official)


def from_official(sd: Mapping[str, torch.Tensor], layouts: Sequence[OfficialLayout] | None = None
                  ) -> tuple[dict[str, torch.Tensor], str]:
    """Official (``net.``-prefixed) state dict -> ours. Returns (state dict, layout name)."""
    layout = find_layout(sd, layouts)
    if layout is None:
        return dict(sd), "ours"
    out = {}
    layout = layout.bound([k[4:] if k.startswith("net.") else k for k in sd])
    for key, value in sd.items():
        new = layout.to_ours(key[4:] if key.startswith("net.") else key)
        if new is not None:
            out[new] = value
    return out, layout.name


def to_official(sd: Mapping[str, torch.Tensor], layouts: Sequence[OfficialLayout] | None = None
                ) -> dict[str, torch.Tensor]:
    """Ours -> the first official layout that writes this network (a plugin's, else JiT's), ``net.`` keys."""
    keys = list(sd)
    layout = next((lay for lay in (official_layouts() if layouts is None else layouts) if lay.writes(keys)), None)
    if layout is None:
        raise ForeignCheckpointError(f"no official layout writes a network with these streams (keys like "
                                     f"{[k for k in keys if k.startswith('embedders.')]}): install the plugin "
                                     "whose official code trains it")
    layout = layout.bound(keys)
    return {"net." + layout.to_official(key): value for key, value in sd.items()}


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

    Returns ``{"model": sd, "ema1": sd, "ema2": sd, "layout": name, "plugins": [...], "epoch": int}`` (the
    plugins a run of that layout enables). What a layout says is not part of the network (a plugin's frozen
    encoders, image buffers) is dropped.
    """
    path = Path(pth_path)
    if not path.is_file():
        raise CheckpointError(f"official checkpoint not found: {path}; pass the checkpoint-last.pth written by "
                              "the official JiT (main_jit.py) or V-Co code")
    ck = _load_official(path)
    if not isinstance(ck, Mapping) or "model" not in ck:
        found = sorted(map(str, ck))[:8] if isinstance(ck, Mapping) else type(ck).__name__
        raise CheckpointError(f"{path} is not an official checkpoint: it has no 'model' entry (found "
                              f"{found}); expected a dict with model, model_ema1, model_ema2, optimizer, epoch, args")
    layouts = official_layouts()
    out, layout = {}, None
    for ours, theirs in (("model", "model"), ("ema1", "model_ema1"), ("ema2", "model_ema2")):
        sd = ck.get(theirs)
        if sd is None:
            warnings.warn(f"{path} has no {theirs!r}; using 'model' for {ours}", stacklevel=2)
            sd = ck["model"]
        if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise CheckpointError(f"{path}: {theirs!r} is not a state dict of tensors")
        try:
            out[ours], layout = from_official(sd, layouts)
        except ForeignCheckpointError as e:
            raise CheckpointError(f"{path}: {theirs!r} is not an official state dict: {e}") from e
    epoch = ck.get("epoch", 0)
    found = next((lay for lay in layouts if lay.name == layout), None)
    plugins = list(found.plugins) if found else []
    keys = [k[4:] if k.startswith("net.") else k for k in ck["model"]]
    options = found.plugin_options(keys) if found and found.plugin_options else {}
    out.update(layout=layout, plugins=plugins, plugin_options=options,
               epoch=int(epoch) if isinstance(epoch, (int, float)) else 0)
    return out


def export_official(weights: dict, path, epoch: int = 0) -> None:
    """Write our weights in the official checkpoint layout (empty optimizer, ``args`` None), atomically."""
    model, layouts = weights["model"], official_layouts()
    ck = {name: {k: v.detach().cpu() for k, v in to_official(weights.get(ours, model), layouts).items()}
          for ours, name in (("model", "model"), ("ema1", "model_ema1"), ("ema2", "model_ema2"))}
    ck.update(optimizer={}, epoch=int(epoch), args=None)
    path = Path(path)
    ensure_dir(path.parent)
    save_torch(path, ck)
