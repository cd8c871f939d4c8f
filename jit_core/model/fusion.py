"""How an extra stream is fused with the pixel stream: the co-denoising architectures of V-Co's Table 1.

V-Co (arXiv 2603.16792, Sec. 3.1 and Table 1) compares ways to co-denoise pixels with a second token stream;
its official code builds each as a constructor flag. Here each is the ``fusion`` of the extra stream
(:attr:`Stream.fusion`; K = :attr:`Stream.fusion_blocks` stream-specific blocks where the variant has them):

- ``joint`` (the fully dual-stream net, V-Co's recipe): own weights in every block, one joint attention;
- ``shared_qkv`` (MM-DiT with one joint QKV): own adaLN, norms and MLP per stream, one attention module
  (qkv, q/k norms, proj) shared by both streams, one joint softmax;
- ``token_concat``: the stream's tokens appended to the pixel tokens, one sequence through the pixel
  blocks' weights (single stream), each half with its own RoPE table, the in-context tokens once; own
  embedder and head;
- ``channel_concat``: cat([pixel, stream], channels) -> Linear(2h -> h) -> M = depth - K shared blocks ->
  Linear(h -> 2h) -> split -> K post-blocks per stream (in-context tokens inserted there);
- ``add``: pixel + stream embeddings summed -> M = depth - K shared blocks -> the same fused tensor into
  each stream's K post-blocks;
- ``shared_middle``: K pre-blocks per stream, depth - 2K shared blocks applied to each stream separately,
  K post-blocks per stream: no attention across the streams anywhere.

Only ``joint`` and ``shared_qkv`` attend across streams, so only they can take an attention mask (V-Co's
structured unconditional branch); the others drop a stream by zeroing its input. A fused network has
exactly one extra stream: a second one is refused (:func:`fusion_of`). The blocks (``blocks.py``) run over
*lanes*: the token sequences alive at a depth (one per stream, or one fused lane).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

from jit_core.model.streams import PIXEL, Stream

FUSED = "fused"                            # the lane name of the single fused sequence (channel_concat, add)
ACROSS = ("joint", "shared_qkv")           # the fusions whose attention spans the streams (maskable)
POST_BLOCKS = ("channel_concat", "add")    # fused in shared blocks, then K post-blocks per stream


def fusion_of(streams: Sequence[Stream]) -> tuple[str, int]:
    """(fusion, K) of a network with these streams; a one-line ValueError for a combination it cannot build."""
    if streams[0].fusion != "joint":
        raise ValueError(f"the pixel stream's fusion is {streams[0].fusion!r}: set fusion on the extra stream "
                         "that is fused with the pixels, not on the pixel stream")
    fused = [s for s in streams[1:] if s.fusion != "joint"]
    if not fused:
        return "joint", 0
    s = fused[0]
    others = [o.name for o in streams[1:] if o is not s]
    if others:
        raise ValueError(f"stream {s.name!r} is fused with the pixels by {s.fusion!r}, which takes exactly one extra "
                         f"stream, but the network also has {others}: only 'joint' streams compose; drop one plugin "
                         "or give every extra stream fusion='joint'")
    return s.fusion, s.fusion_blocks


def check_fusion(cfg, streams: Sequence[Stream]) -> tuple[str, int]:
    """:func:`fusion_of`, plus what the model config must allow (K blocks fit in the depth, equal token grids)."""
    kind, K = fusion_of(streams)
    if kind == "joint":
        return kind, K
    s = streams[1]
    if kind in POST_BLOCKS and K > cfg.depth:
        raise ValueError(f"stream {s.name!r}: fusion {kind!r} with fusion_blocks={K} needs depth >= {K} "
                         f"(the model has {cfg.depth})")
    if kind == "shared_middle" and not (1 <= K and 2 * K <= cfg.depth):
        raise ValueError(f"stream {s.name!r}: fusion 'shared_middle' needs 1 <= fusion_blocks <= depth / 2 "
                         f"(got {K}, depth {cfg.depth})")
    if kind in POST_BLOCKS and (s.grid is not None or s.tokens is not None):
        raise ValueError(f"stream {s.name!r}: fusion {kind!r} merges tokens position by position, so the stream "
                         "must lie on the pixel grid (unset grid/tokens)")
    return kind, K


@dataclass(frozen=True)
class Plan:
    """The layer plan of a fusion, without weights (the model and ``budget.py`` read the same one).

    ``streams``: (name, in_context, tokens) per stream; ``depth``, ``in_context_start`` as the model config.
    """

    kind: str
    K: int
    depth: int
    in_context_start: int
    streams: tuple[tuple[str, bool, int], ...]

    @classmethod
    def of(cls, cfg, streams: Sequence[Stream]) -> Plan:
        kind, K = check_fusion(cfg, streams)
        return cls(kind, K, cfg.depth, cfg.in_context_start,
                   tuple((s.name, s.in_context, s.num_tokens(cfg.grid)) for s in streams))

    @property
    def names(self) -> list[str]:
        return [name for name, _, _ in self.streams]

    @property
    def split_at(self) -> Optional[int]:
        """The layer where the fused lane becomes one lane per stream (M = depth - K), None if it never does."""
        return self.depth - self.K if self.kind in POST_BLOCKS else None

    @property
    def in_context_at(self) -> int:
        """The layer where the in-context tokens enter: the streams' own blocks for channel_concat / add (with
        K = 0, the fused lane at the usual block), else ``in_context_start``."""
        return self.depth - self.K if self.kind in POST_BLOCKS and self.K else self.in_context_start

    @property
    def first_lanes(self) -> list[str]:
        return [FUSED] if self.kind in POST_BLOCKS else [PIXEL] if self.kind == "token_concat" else self.names

    def layer(self, i: int) -> dict:
        """The :class:`JointBlock` keyword arguments of layer i: its lanes and how their weights are shared."""
        if self.kind in ACROSS:
            return {"lanes": self.names, "shared_attention": self.kind == "shared_qkv"}
        if self.kind == "token_concat":
            return {"lanes": [PIXEL]}                           # the pixel blocks' weights, one sequence
        if self.kind in POST_BLOCKS:
            if i < self.depth - self.K:
                return {"lanes": [FUSED], "shared": True}
            return {"lanes": self.names, "joint": False}
        middle = self.K <= i < self.depth - self.K              # shared_middle
        return {"lanes": self.names, "shared": middle, "joint": False}

    def in_context(self, lane: str) -> bool:
        """Whether a lane takes the in-context class tokens (a fused lane: as the pixel stream does)."""
        by_name = {name: ic for name, ic, _ in self.streams}
        return by_name.get(lane, by_name[PIXEL])

    def lane_tokens(self, i: int, ic_len: int) -> list[int]:
        """The token count of each lane of layer i, in-context tokens included."""
        tokens = {name: n for name, _, n in self.streams}
        ic = i >= self.in_context_at
        out = []
        for lane in self.layer(i)["lanes"]:
            n = sum(tokens.values()) if self.kind == "token_concat" else tokens[PIXEL if lane == FUSED else lane]
            out.append(n + (ic_len if ic and self.in_context(lane) else 0))
        return out


class Fusion(nn.Module):
    """The fusion of a network's streams: the lanes of each layer, and the projections it owns.

    The layer plan follows the official constructors (V-Co's code, arXiv 2603.16792 Table 1): see the module
    docstring. ``proj_in`` / ``proj_out`` exist for ``channel_concat`` only.
    """

    def __init__(self, cfg, streams: Sequence[Stream]):
        super().__init__()
        self.plan = Plan.of(cfg, streams)
        self.kind, self.K = self.plan.kind, self.plan.K
        self.streams, self.ic_len = list(streams), cfg.in_context_len
        self.split_at, self.in_context_at = self.plan.split_at, self.plan.in_context_at
        self.first_lanes, self.layer, self.in_context = self.plan.first_lanes, self.plan.layer, self.plan.in_context
        h = cfg.hidden_size
        if self.kind == "channel_concat":
            self.proj_in = nn.Linear(2 * h, h)       # cat([pixel, stream]) -> h
            self.proj_out = nn.Linear(h, 2 * h)      # h -> [pixel | stream]

    @property
    def attends_across(self) -> bool:
        """Whether attention spans the streams (so an attention mask can block a pair of them)."""
        return self.kind in ACROSS

    # ------------------------------------------------------------------ the forward's three moves
    def enter(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-stream embeddings (B, T_s, h) -> the first layer's lanes."""
        if self.kind == "token_concat":
            return [torch.cat(xs, dim=1)]                       # (B, T + T_s, h)
        if self.kind == "channel_concat":
            return [self.proj_in(torch.cat(xs, dim=-1))]        # (B, T, 2h) -> (B, T, h)
        if self.kind == "add":
            return [xs[0] + xs[1]]                              # (B, T, h)
        return xs

    def split(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The fused lane (B, T, h) -> one lane per stream (``channel_concat``: proj_out, then halves)."""
        if self.kind == "channel_concat":
            return list(self.proj_out(x).chunk(2, dim=-1))      # (B, T, 2h) -> 2 x (B, T, h)
        return [x, x]                                           # add: the same fused tensor for both

    def leave(self, lanes: list[torch.Tensor], tokens: list[int]) -> list[torch.Tensor]:
        """The last layer's lanes -> per stream its grid tokens (B, T_s, h), in-context tokens dropped."""
        if self.kind == "token_concat":
            return list(lanes[0][:, -sum(tokens):].split(tokens, dim=1))
        if len(lanes) == 1:                                     # channel_concat / add with K = 0
            return self.split(lanes[0][:, -tokens[0]:])
        return [x[:, -n:] for x, n in zip(lanes, tokens)]

    # ------------------------------------------------------------------ lane tables
    def ropes(self, lanes: list[str], tables: dict, with_ic: bool) -> list:
        """Each lane's RoPE (cos, sin); ``tables``: per stream (rope, rope with the in-context prefix)."""
        out = []
        for lane in lanes:
            ic = with_ic and self.in_context(lane)
            if self.kind == "token_concat":                     # each half with its stream's table
                cos = torch.cat([tables[s.name][0][0] for s in self.streams])
                sin = torch.cat([tables[s.name][0][1] for s in self.streams])
                if ic:   # the in-context tokens are not rotated: identity rows (cos 1, sin 0) in front
                    cos = torch.cat([cos.new_ones(self.ic_len, cos.shape[1]), cos])
                    sin = torch.cat([sin.new_zeros(self.ic_len, sin.shape[1]), sin])
                out.append((cos, sin))
            else:
                rope, ic_rope = tables[PIXEL if lane == FUSED else lane]
                out.append(ic_rope if ic else rope)
        return out
