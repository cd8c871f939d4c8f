"""The transformer block of the multi-stream JiT (JiT, arXiv 2511.13720, Sec. 4) and its per-stream weights.

A block runs over *lanes*: the token sequences alive at that depth. Usually a lane is one stream (pixel,
V-Co's feature stream); a fused architecture (``fusion.py``) may run one lane that holds several streams.
Each lane has its own weights in the block (:class:`StreamBlock`), or every lane uses one shared set
(``shared``); the attention is one softmax over all lanes (``joint``, V-Co's dual-stream block, arXiv
2603.16792) or each lane's alone; the attention module itself may be shared by the lanes (``shared_attention``,
MM-DiT with one joint QKV, V-Co Table 1).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Optional

import torch
import torch.nn as nn

from jit_core.model.attention import Mask, joint_attention
from jit_core.model.layers import RMSNorm, SwiGLU, apply_rope, modulate

SHARED_WEIGHTS = "shared"   # the key of a block's one weight set when every lane uses it


class AdaLN(NamedTuple):
    """The six adaLN-Zero terms of one stream in one block, each (B, h), in the official chunk order."""

    shift_msa: torch.Tensor
    scale_msa: torch.Tensor
    gate_msa: torch.Tensor
    shift_mlp: torch.Tensor
    scale_mlp: torch.Tensor
    gate_mlp: torch.Tensor


class StreamAttention(nn.Module):
    """One stream's share of the joint attention: its QKV, q/k RMSNorm, output projection and dropout.

    A module of its own so the weights keep the official names (``attn.qkv``, ``attn.q_norm``, ...);
    it has no ``forward`` because the softmax runs over all streams at once (:class:`JointBlock`).
    """

    def __init__(self, cfg, proj_drop: float):
        super().__init__()
        h = cfg.hidden_size
        self.heads = cfg.num_heads
        self.qkv = nn.Linear(h, 3 * h)
        self.q_norm = RMSNorm(cfg.head_dim)    # qk-norm (JiT Tab. 4), shared by the heads, before RoPE
        self.k_norm = RMSNorm(cfg.head_dim)
        self.proj = nn.Linear(h, h)
        self.proj_drop = nn.Dropout(proj_drop)

    def project(self, u: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """u (B, L, h) -> q, k, v, each (B, heads, L, d); q and k normalised, then rotated."""
        B, L, _ = u.shape
        q, k, v = self.qkv(u).view(B, L, 3, self.heads, -1).permute(2, 0, 3, 1, 4)   # 3 x (B, heads, L, d)
        return apply_rope(self.q_norm(q), cos, sin), apply_rope(self.k_norm(k), cos, sin), v

    def output(self, o: torch.Tensor) -> torch.Tensor:
        """The attended values of this stream's queries (B, L, h) -> proj -> dropout."""
        return self.proj_drop(self.proj(o))


class StreamBlock(nn.Module):
    """One stream's weights in a block (adaLN-Zero, pre-norm; JiT Sec. 4, names as in the official code).

    Without ``attention`` the block has no ``attn``: the lanes share their block's (MM-DiT joint QKV).
    """

    def __init__(self, cfg, proj_drop: float, attention: bool = True):
        super().__init__()
        h = cfg.hidden_size
        self.norm1 = RMSNorm(h)
        self.attn: Optional[StreamAttention] = StreamAttention(cfg, proj_drop) if attention else None
        self.norm2 = RMSNorm(h)
        self.mlp = SwiGLU(h, cfg.mlp_hidden, proj_drop)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(h, 6 * h))

    def adaln(self, c: torch.Tensor) -> AdaLN:
        """c (B, h) -> the six (B, h) modulation terms."""
        return AdaLN(*self.adaLN_modulation(c).chunk(6, dim=-1))


class JointBlock(nn.Module):
    """A JiT block for every lane, with one softmax attention over all lanes' tokens (or each lane's alone).

    Per lane s (JiT Sec. 4; V-Co's dual-stream block, arXiv 2603.16792):

        x_s = x_s + gate_msa_s * Attn(modulate(norm1_s(x_s), shift_msa_s, scale_msa_s))     (joint over s)
        x_s = x_s + gate_mlp_s * MLP_s(modulate(norm2_s(x_s), shift_mlp_s, scale_mlp_s))

    With the pixel stream alone this is the official JiT block.

    - ``lanes``: the names of the lanes in forward order (stream names, or one name for a fused lane);
    - ``shared``: one weight set (``self.shared``) for every lane, else one per lane (``self.streams``);
    - ``joint``: one softmax over all lanes (False: each lane attends to its own tokens only);
    - ``shared_attention``: one attention module (``self.attn``: qkv, q/k norms, proj) for all lanes.
    """

    def __init__(self, cfg, lanes: Sequence, attn_drop: float, proj_drop: float, *, shared: bool = False,
                 joint: bool = True, shared_attention: bool = False):
        super().__init__()
        self.attn_drop, self.joint = attn_drop, joint
        self.lanes = [s if isinstance(s, str) else s.name for s in lanes]
        own_attention = not shared_attention
        if shared:
            self.shared = StreamBlock(cfg, proj_drop, own_attention)
        else:
            self.streams = nn.ModuleDict({name: StreamBlock(cfg, proj_drop, own_attention) for name in self.lanes})
        if shared_attention:
            self.attn = StreamAttention(cfg, proj_drop)

    def weights(self) -> list[StreamBlock]:
        """The weight set of each lane, in lane order."""
        if hasattr(self, "shared"):
            return [self.shared] * len(self.lanes)
        return [self.streams[name] for name in self.lanes]

    def forward(self, xs: list[torch.Tensor], c: torch.Tensor, ropes, mask: Mask, path: str) -> list[torch.Tensor]:
        """xs: per lane (B, L_s, h); c: (B, h); ropes: per lane (cos, sin) of (L_s, d); mask: see attention.py."""
        blocks = self.weights()
        m = [blk.adaln(c) for blk in blocks]                                                 # six (B, h) per lane
        u = [modulate(blk.norm1(x), mi.shift_msa, mi.scale_msa) for blk, x, mi in zip(blocks, xs, m)]  # (B, L_s, h)
        if self.joint:
            a = self.attention(blocks, u, ropes, mask, path)                                 # (B, L_s, h)
        else:   # each lane attends to itself: no cross-lane attention, so no mask either
            a = [self.attention([blk], [ui], [rope], None, path)[0] for blk, ui, rope in zip(blocks, u, ropes)]
        # x_s = x_s + gate_msa_s * Attn(...), then x_s = x_s + gate_mlp_s * MLP_s(...)
        xs = [x + mi.gate_msa.unsqueeze(1) * ai for x, mi, ai in zip(xs, m, a)]
        return [x + mi.gate_mlp.unsqueeze(1) * blk.mlp(modulate(blk.norm2(x), mi.shift_mlp, mi.scale_mlp))
                for blk, x, mi in zip(blocks, xs, m)]

    def attention(self, blocks: list[StreamBlock], us: list[torch.Tensor], ropes, mask: Mask, path: str):
        """Attn of the block equation: each lane projects its own q, k, v; one softmax over all tokens."""
        attns = [self.attn if blk.attn is None else blk.attn for blk in blocks]
        lengths = [u.shape[1] for u in us]
        qkv = [attn.project(u, *rope) for attn, u, rope in zip(attns, us, ropes)]
        q, k, v = (torch.cat(parts, dim=2) for parts in zip(*qkv))                 # (B, heads, L, d), L = sum L_s
        o = joint_attention(q, k, v, mask, path, self.attn_drop if self.training else 0.0, lengths)
        o = o.transpose(1, 2).flatten(2).split(lengths, dim=1)                    # per lane (B, L_s, h)
        return [attn.output(oi) for attn, oi in zip(attns, o)]
