"""What network a state dict is: its ``ModelConfig`` and streams, read off the tensor shapes.

:func:`infer_model_config` gives ``ModelConfig`` keyword arguments for a state dict in our layout or an
official one; :func:`streams_for` the streams it was built with. ``jit convert`` uses both to write a
run's ``config.json``, and :func:`jit_core.runs.checkpoint.check_compatible` to say which model a mismatched
checkpoint is for.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch

from jit_core.errors import CheckpointError
from jit_core.model import MODEL_CONFIGS, ModelConfig
from jit_core.model.streams import PIXEL, Stream, pixel_stream
from jit_core.official.layout import ForeignCheckpointError, detect_layout, from_official


def _default_in_context_start(depth: int, hidden: int) -> int | None:
    """in_context_start of a known config with the same depth and width, else of the same depth."""
    for match in (lambda c: (c.depth, c.hidden_size) == (depth, hidden), lambda c: c.depth == depth):
        starts = {c.in_context_start for c in MODEL_CONFIGS.values() if match(c)}
        if len(starts) == 1:
            return starts.pop()
    return None


def _mlp_ratio(hidden: int, mlp_hidden: int) -> float:
    for ratio in (4.0, *((1.5 * mlp_hidden + j) / hidden for j in range(3))):
        if int(int(hidden * ratio) * 2 / 3) == mlp_hidden:
            return ratio
    raise CheckpointError(f"cannot infer mlp_ratio from a SwiGLU hidden width of {mlp_hidden} (hidden {hidden})")


def infer_model_config(sd: Mapping[str, torch.Tensor], in_context_start: int | None = None) -> dict:
    """``ModelConfig`` keyword arguments read off the tensor shapes of a state dict (ours or official).

    ``in_context_start`` is not visible in the shapes: pass it, else it comes from a known config with the
    same depth/width (JiT-B 4, L 8, H/G 10); dropout rates come from a known config with the same shapes.
    """
    try:
        if detect_layout(sd) != "ours":
            sd, _ = from_official(sd)
    except ForeignCheckpointError as e:
        raise CheckpointError(f"cannot infer the model config: {e}") from e

    def shape(key):
        if key not in sd:
            raise CheckpointError(f"cannot infer the model config: the state dict has no {key!r}")
        return tuple(sd[key].shape)

    _, tokens, hidden = shape("pos_embed")
    grid = math.isqrt(tokens)
    bottleneck, in_channels, patch, _ = shape(f"embedders.{PIXEL}.proj1.weight")
    head_dim = shape(_first(sd, r"blocks\.\d+\.(?:\w+\.)*attn\.q_norm\.weight"))[0]   # any fusion's block
    cfg = {"image_size": grid * patch, "patch_size": patch, "in_channels": in_channels, "hidden_size": hidden,
           "depth": 1 + max(int(m[1]) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))),
           "num_heads": hidden // head_dim,
           "mlp_ratio": _mlp_ratio(hidden, shape(_first(sd, r"blocks\.\d+\.(?:\w+\.)*mlp\.w3\.weight"))[1]),
           "bottleneck_dim": bottleneck, "in_context_len": shape("in_context_posemb")[1],
           "num_classes": shape("y_embedder.embedding_table.weight")[0] - 1}
    known = next((c for c in MODEL_CONFIGS.values() if all(getattr(c, k) == v for k, v in cfg.items())), None)
    if in_context_start is None:
        in_context_start = known.in_context_start if known else _default_in_context_start(cfg["depth"], hidden)
    if in_context_start is None:
        raise CheckpointError(f"in_context_start cannot be read from tensor shapes and no known config has depth "
                              f"{cfg['depth']}: pass it (jit convert --in-context-start N)")
    cfg.update(in_context_start=in_context_start, attn_drop=known.attn_drop if known else 0.0,
               proj_drop=known.proj_drop if known else 0.0)
    try:
        ModelConfig(**cfg).validate()
    except ValueError as e:
        raise CheckpointError(f"the inferred model config is invalid ({e}): {cfg}") from e
    return cfg


def _first(sd: Mapping[str, torch.Tensor], pattern: str) -> str:
    """The first key matching ``pattern`` (the pattern itself when none does: the caller names it as missing)."""
    return next((k for k in sd if re.fullmatch(pattern, k)), pattern)


def fusion_of(keys) -> tuple[str, int]:
    """(``Stream.fusion``, ``fusion_blocks``) of the extra stream of a state dict in our layout, read off its
    key names (jit_core/model/fusion.py): shared blocks, a shared attention, or no blocks of its own."""
    keys = list(keys)
    depth = 1 + max((int(m[1]) for k in keys if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    shared = sorted({int(m[1]) for k in keys if (m := re.match(r"blocks\.(\d+)\.shared\.", k))})
    if shared and shared[0] > 0:
        return "shared_middle", shared[0]
    if shared:
        return ("channel_concat" if any(k.startswith("fusion.proj_in.") for k in keys) else "add"), depth - len(shared)
    if any(re.match(r"blocks\.\d+\.attn\.", k) for k in keys):
        return "shared_qkv", 1
    extra = {m[1] for k in keys if (m := re.fullmatch(r"embedders\.(\w+)\.proj1\.weight", k)) and m[1] != PIXEL}
    if extra and depth > 0 and not any(re.match(rf"blocks\.\d+\.streams\.(?:{'|'.join(extra)})\.", k) for k in keys):
        return "token_concat", 1
    return "joint", 1


def streams_for(sd: Mapping[str, torch.Tensor]) -> list[Stream]:
    """The streams a state dict (our layout) was built with: pixel, plus one per extra embedder, fused with
    the pixels as its blocks say (:func:`fusion_of`)."""
    streams = [pixel_stream(sd[f"embedders.{PIXEL}.proj1.weight"].shape[1])]
    fusion, blocks = fusion_of(sd)
    for key, t in sd.items():
        m = re.fullmatch(r"embedders\.(\w+)\.proj1\.weight", key)
        if m and m[1] != PIXEL:
            kind = "patch" if t.shape[-1] > 1 else "tokens"
            streams.append(Stream(m[1], kind, t.shape[1], default_init=True, fusion=fusion, fusion_blocks=blocks))
    return streams
