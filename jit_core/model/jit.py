"""Multi-stream JiT (Li & He, arXiv 2511.13720) with joint attention across token streams.

With only the pixel stream this is JiT, module for module. Extra streams (added by plugins, e.g.
V-Co's feature stream) get their own weights in every block and their own head, share the
conditioning, the position tables and the in-context table, and attend jointly with the pixels.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from jit_core.config import ATTENTION_PATHS
from jit_core.model.layers import (
    FinalLayer,
    LabelEmbedder,
    PatchEmbed,
    RMSNorm,
    SwiGLU,
    TimestepEmbedder,
    TokenEmbed,
    apply_rope,
    modulate,
    rope_tables,
    sincos_2d,
)
from jit_core.model.streams import PIXEL, Stream, pixel_stream


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a JiT; the names follow the official constructor."""

    image_size: int = 256
    patch_size: int = 16
    in_channels: int = 3
    hidden_size: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    bottleneck_dim: int = 128
    in_context_len: int = 32
    in_context_start: int = 4
    num_classes: int = 1000
    attn_drop: float = 0.0
    proj_drop: float = 0.0

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(int(self.hidden_size * self.mlp_ratio) * 2 / 3)

    def validate(self) -> ModelConfig:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not divisible by patch_size {self.patch_size}: "
                             f"pick an image size that is a multiple of {self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 4:
            raise ValueError(f"head dim {self.head_dim} must be a multiple of 4 for 2D RoPE")
        if self.hidden_size % 4:
            raise ValueError(f"hidden_size {self.hidden_size} must be a multiple of 4 for the sin-cos table")
        if not 0 <= self.in_context_start < self.depth:
            raise ValueError(f"in_context_start {self.in_context_start} must be in [0, depth={self.depth})")
        return self


def _jit(depth, hidden, heads, bottleneck, start, image, patch, drop=0.0, attn_drop=0.0):
    return ModelConfig(image_size=image, patch_size=patch, hidden_size=hidden, depth=depth, num_heads=heads,
                       bottleneck_dim=bottleneck, in_context_start=start, proj_drop=drop, attn_drop=attn_drop)


MODEL_CONFIGS: dict[str, ModelConfig] = {
    "JiT-B/16": _jit(12, 768, 12, 128, 4, 256, 16),
    "JiT-B/32": _jit(12, 768, 12, 128, 4, 512, 32),
    "JiT-L/16": _jit(24, 1024, 16, 128, 8, 256, 16),
    "JiT-L/32": _jit(24, 1024, 16, 128, 8, 512, 32),
    "JiT-H/16": _jit(32, 1280, 16, 256, 10, 256, 16, drop=0.2),
    "JiT-H/32": _jit(32, 1280, 16, 256, 10, 512, 32, drop=0.2),
    "JiT-G/16": _jit(40, 1664, 16, 256, 10, 256, 16, drop=0.2, attn_drop=0.2),
    # small configs for tests and the embedded CPU demo (not in the paper)
    "JiT-T/4": ModelConfig(image_size=32, patch_size=4, hidden_size=64, depth=3, num_heads=4, bottleneck_dim=16,
                           in_context_len=4, in_context_start=1, num_classes=10),
    "JiT-S/4": ModelConfig(image_size=32, patch_size=4, hidden_size=96, depth=4, num_heads=4, bottleneck_dim=16,
                           in_context_len=4, in_context_start=1, num_classes=10),
}

# Trainable parameter counts of the official models (the frozen sin-cos table excluded).
OFFICIAL_PARAM_COUNTS = {
    "JiT-B/16": 131_123_712, "JiT-B/32": 133_190_400, "JiT-L/16": 458_877_664, "JiT-L/32": 461_534_176,
    "JiT-H/16": 952_514_368, "JiT-H/32": 956_055_616, "JiT-G/16": 2_007_130_000,
}


def get_model_config(name: str, **overrides) -> ModelConfig:
    """Look up a named config; unknown names fail with the closest valid one."""
    if name not in MODEL_CONFIGS:
        import difflib
        close = difflib.get_close_matches(name, MODEL_CONFIGS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"unknown model {name!r}.{hint} Known: {', '.join(MODEL_CONFIGS)} (see `jit models`)")
    return replace(MODEL_CONFIGS[name], **overrides).validate()


class StreamBlock(nn.Module):
    """One stream's weights in a block: norms, adaLN, QKV, q/k-norm, projection and SwiGLU."""

    def __init__(self, cfg: ModelConfig, attn_drop: float, proj_drop: float):
        super().__init__()
        h = cfg.hidden_size
        self.norm1 = RMSNorm(h)
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(h, 3 * h)
        self.attn.q_norm = RMSNorm(cfg.head_dim)
        self.attn.k_norm = RMSNorm(cfg.head_dim)
        self.attn.proj = nn.Linear(h, h)
        self.norm2 = RMSNorm(h)
        self.mlp = SwiGLU(h, cfg.mlp_hidden, proj_drop)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(h, 6 * h))
        self.heads = cfg.num_heads
        self.proj_drop = nn.Dropout(proj_drop)

    def qkv(self, x: torch.Tensor, mod: list[torch.Tensor], cos: torch.Tensor, sin: torch.Tensor):
        B, L, _ = x.shape
        u = modulate(self.norm1(x), mod[0], mod[1])
        q, k, v = self.attn.qkv(u).view(B, L, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q = apply_rope(self.attn.q_norm(q), cos, sin)
        k = apply_rope(self.attn.k_norm(k), cos, sin)
        return q, k, v

    def finish(self, x: torch.Tensor, attn_out: torch.Tensor, mod: list[torch.Tensor]) -> torch.Tensor:
        x = x + mod[2].unsqueeze(1) * self.proj_drop(self.attn.proj(attn_out))
        return x + mod[5].unsqueeze(1) * self.mlp(modulate(self.norm2(x), mod[3], mod[4]))


class StreamGroups:
    """A ``(B, S, S)`` stream-level block matrix grouped by pattern, for mask-free fused attention.

    Samples with the same pattern form a group. A group without blocked pairs is one plain
    ``scaled_dot_product_attention``; in a group with blocked pairs each query stream attends to the
    concatenation of the key streams it may see. The result equals softmax attention with a
    ``-inf`` token mask, but no ``(B, 1, L, L)`` mask is built and the fused kernels without
    masks (FlashAttention on CUDA) stay usable. Built once per forward (one device sync).
    """

    def __init__(self, blocked: torch.Tensor):
        S = blocked.shape[1]
        patterns, group = torch.unique(blocked.flatten(1), dim=0, return_inverse=True)
        self.patterns = [tuple(tuple(row) for row in pat) for pat in patterns.view(-1, S, S).tolist()]
        for pat in self.patterns:
            if any(all(row) for row in pat):
                raise ValueError(f"a stream may see no key stream at all (block pattern {pat}): its attention is undefined")
        self.single = len(self.patterns) == 1
        self.indices = [torch.nonzero(group == g).squeeze(1) for g in range(len(self.patterns))]
        self.order = None if self.single else torch.argsort(torch.cat(self.indices))

    def attention(self, q, k, v, lengths: Sequence[int], dropout: float) -> torch.Tensor:
        starts = [0]
        for n in lengths:
            starts.append(starts[-1] + n)
        outs = []
        for idx, pat in zip(self.indices, self.patterns):
            qg, kg, vg = (q, k, v) if self.single else (q[idx], k[idx], v[idx])
            if not any(map(any, pat)):
                outs.append(F.scaled_dot_product_attention(qg, kg, vg, dropout_p=dropout))
                continue
            parts = []
            for i, row in enumerate(pat):
                keep = [j for j, blocked in enumerate(row) if not blocked]
                ks, vs = (torch.cat([x[:, :, starts[j]:starts[j + 1]] for j in keep], dim=2) if len(keep) < len(row) else x
                          for x in (kg, vg))
                parts.append(F.scaled_dot_product_attention(qg[:, :, starts[i]:starts[i + 1]], ks, vs, dropout_p=dropout))
            outs.append(torch.cat(parts, dim=2))
        return outs[0] if self.single else torch.cat(outs)[self.order]


def attention(q, k, v, mask, path: str, dropout: float, lengths: Sequence[int] = ()) -> torch.Tensor:
    """Softmax attention over (B, heads, L, d), streams concatenated along L in ``lengths`` order.

    ``exact``: the official numerics, q.k logits and softmax in fp32 with autocast off (``mask``
    an additive ``(B, 1, L, L)`` fp32 bias or None), then the product with v under autocast.
    ``fast``: fused ``scaled_dot_product_attention`` (flash or memory-efficient kernels in bf16 on
    CUDA); ``mask`` is a :class:`StreamGroups` (mask-free grouped attention), a bias, or None.
    """
    if path == "fast":
        q, k = q.to(v.dtype), k.to(v.dtype)
        if isinstance(mask, StreamGroups):
            return mask.attention(q, k, v, lengths, dropout)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask.to(v.dtype),
                                              dropout_p=dropout)
    if isinstance(mask, StreamGroups):
        raise TypeError("the exact attention path takes an additive bias, not StreamGroups")
    with torch.autocast(q.device.type, enabled=False):
        logits = (q.float() @ k.float().transpose(-2, -1)) * q.shape[-1] ** -0.5
        if mask is not None:
            logits = logits + mask
        probs = torch.softmax(logits, dim=-1)
    if dropout:
        probs = F.dropout(probs, dropout)
    return probs @ v if torch.is_autocast_enabled(q.device.type) else probs.to(v.dtype) @ v


class JointBlock(nn.Module):
    """adaLN-Zero block; each stream has its own weights, attention is one softmax over all streams."""

    def __init__(self, cfg: ModelConfig, streams: Sequence[Stream], attn_drop: float, proj_drop: float):
        super().__init__()
        self.attn_drop = attn_drop
        self.streams = nn.ModuleDict({s.name: StreamBlock(cfg, attn_drop, proj_drop) for s in streams})

    def forward(self, xs: list[torch.Tensor], c: torch.Tensor, ropes, mask, path: str) -> list[torch.Tensor]:
        blocks = list(self.streams.values())
        lengths = [x.shape[1] for x in xs]
        mods = [blk.adaLN_modulation(c).chunk(6, dim=-1) for blk in blocks]
        qkvs = [blk.qkv(x, mod, *rope) for blk, x, mod, rope in zip(blocks, xs, mods, ropes)]
        q, k, v = (torch.cat(parts, dim=2) for parts in zip(*qkvs))
        out = attention(q, k, v, mask, path, self.attn_drop if self.training else 0.0, lengths)
        out = out.transpose(1, 2).flatten(2).split(lengths, dim=1)
        return [blk.finish(x, o, mod) for blk, x, o, mod in zip(blocks, xs, out, mods)]


class JiT(nn.Module):
    """Multi-stream JiT. ``model(z, t, y)`` -> x-prediction; with a dict of streams, a dict back."""

    def __init__(self, cfg: ModelConfig, streams: Optional[Sequence[Stream]] = None, attention_path: str = "exact"):
        super().__init__()
        cfg.validate()
        streams = list(streams) if streams else [pixel_stream(cfg.in_channels)]
        names = [s.name for s in streams]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate stream names: {names}")
        if streams[0].name != PIXEL:
            raise ValueError("the first stream must be the pixel stream")
        self.cfg, self.streams = cfg, streams
        self.attention_path = attention_path
        self.grad_checkpointing = False  # recompute block activations in backward (memory lever for L/H/G)
        h, g, K = cfg.hidden_size, cfg.grid, cfg.in_context_len

        self.t_embedder = TimestepEmbedder(h)
        self.y_embedder = LabelEmbedder(cfg.num_classes, h)
        self.embedders = nn.ModuleDict({
            s.name: PatchEmbed(cfg.patch_size, s.channels, cfg.bottleneck_dim, h) if s.kind == "patch"
            else TokenEmbed(s.channels, cfg.bottleneck_dim, h) for s in streams})
        self.pos_embed = nn.Parameter(torch.zeros(1, g * g, h), requires_grad=False)
        self.in_context_posemb = nn.Parameter(torch.zeros(1, K, h))
        q = cfg.depth // 4
        self.blocks = nn.ModuleList([
            JointBlock(cfg, streams, cfg.attn_drop if q <= i < 3 * q else 0.0, cfg.proj_drop if q <= i < 3 * q else 0.0)
            for i in range(cfg.depth)])
        self.heads = nn.ModuleDict({
            s.name: FinalLayer(h, cfg.patch_size ** 2 * s.channels if s.kind == "patch" else s.channels)
            for s in streams})
        for prefix, name in ((0, "rope"), (K, "rope_ic")):
            cos, sin = rope_tables(cfg.head_dim, g, prefix)
            self.register_buffer(f"{name}_cos", cos, persistent=False)
            self.register_buffer(f"{name}_sin", sin, persistent=False)
        self.initialize_weights()

    # ------------------------------------------------------------------ init
    def initialize_weights(self) -> None:
        def xavier_linear(m):
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        self.apply(xavier_linear)
        with torch.no_grad():
            self.pos_embed.copy_(sincos_2d(self.cfg.hidden_size, self.cfg.grid)[None])
        for s in self.streams:
            emb = self.embedders[s.name]
            if s.default_init:
                continue
            for conv in (emb.proj1, emb.proj2):
                nn.init.xavier_uniform_(conv.weight.view(conv.weight.shape[0], -1))
            nn.init.zeros_(emb.proj2.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.in_context_posemb, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            for sb in block.streams.values():
                nn.init.zeros_(sb.adaLN_modulation[-1].weight)
                nn.init.zeros_(sb.adaLN_modulation[-1].bias)
        for head in self.heads.values():
            for lin in (head.adaLN_modulation[-1], head.linear):
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)

    # ------------------------------------------------------------------ helpers
    def set_attention(self, path: str) -> JiT:
        if path not in ATTENTION_PATHS:
            raise ValueError(f"unknown attention path {path!r}; choose one of {ATTENTION_PATHS}")
        self.attention_path = path
        return self

    def num_params(self, trainable_only: bool = True) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def unpatchify(self, x: torch.Tensor, channels: int) -> torch.Tensor:
        p, g = self.cfg.patch_size, self.cfg.grid
        x = x.reshape(x.shape[0], g, g, p, p, channels)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], channels, g * p, g * p)

    def _bias(self, blocked: Optional[torch.Tensor], lengths: list[int], dtype) -> Optional[torch.Tensor]:
        """Expand a (B, S, S) stream-level block matrix (query stream, key stream) to a (B, 1, L, L) additive mask."""
        if blocked is None:
            return None
        idx = torch.repeat_interleave(torch.arange(len(lengths), device=blocked.device),
                                      torch.tensor(lengths, device=blocked.device))
        tokens = blocked[:, idx][:, :, idx]
        return torch.zeros(tokens.shape, dtype=dtype, device=blocked.device).masked_fill(tokens, float("-inf"))[:, None]

    # ------------------------------------------------------------------ forward
    def forward(self, inputs, t: torch.Tensor, y: torch.Tensor, blocked: Optional[torch.Tensor] = None,
                capture: Sequence[int] = ()):
        """x-prediction for every stream.

        - ``inputs``: the noisy image ``(B, C, H, W)`` or a dict ``{stream: noisy tensor}``.
        - ``t``: ``(B,)`` flow time, 1 = clean. ``y``: ``(B,)`` labels, ``num_classes`` = null.
        - ``blocked``: optional ``(B, S, S)`` bool, True where queries of stream i may not see keys
          of stream j (in-context tokens belong to their stream). Applied in every block.
        - ``capture``: block indices whose output hidden states (per stream, grid tokens only) are
          returned as a second value ``{block: {stream: (B, T, h)}}``.
        """
        single = isinstance(inputs, torch.Tensor)
        if single:
            inputs = {PIXEL: inputs}
        missing = [s.name for s in self.streams if s.name not in inputs]
        if missing:
            raise ValueError(f"missing inputs for streams {missing}; the model has streams {[s.name for s in self.streams]}")
        pix = inputs[PIXEL]
        if pix.shape[-1] != self.cfg.image_size or pix.shape[-2] != self.cfg.image_size:
            raise ValueError(f"input is {tuple(pix.shape[-2:])} but the model expects "
                             f"{self.cfg.image_size}x{self.cfg.image_size} images")
        s0 = self.cfg.in_context_start
        y_emb = self.y_embedder(y)
        c = self.t_embedder(t) + y_emb
        xs = [self.embedders[s.name](inputs[s.name]) + self.pos_embed for s in self.streams]
        plain = (self.rope_cos, self.rope_sin)
        ropes = [plain] * len(xs)
        fast = self.attention_path == "fast"
        groups = StreamGroups(blocked) if fast and blocked is not None else None
        mask = groups if fast else self._bias(blocked, [x.shape[1] for x in xs], torch.float32)
        hidden = {}
        for i, block in enumerate(self.blocks):
            if i == s0:
                ic = y_emb.unsqueeze(1) + self.in_context_posemb
                xs = [torch.cat([ic.to(x.dtype), x], dim=1) if s.in_context else x for s, x in zip(self.streams, xs)]
                ropes = [(self.rope_ic_cos, self.rope_ic_sin) if s.in_context else plain for s in self.streams]
                mask = groups if fast else self._bias(blocked, [x.shape[1] for x in xs], torch.float32)
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                xs = torch.utils.checkpoint.checkpoint(block, xs, c, ropes, mask, self.attention_path, use_reentrant=False)
            else:
                xs = block(xs, c, ropes, mask, self.attention_path)
            if i in capture:
                hidden[i] = {s.name: x[:, -self.cfg.grid ** 2:] for s, x in zip(self.streams, xs)}
        out = {}
        for s, x in zip(self.streams, xs):
            x = self.heads[s.name](x[:, -self.cfg.grid ** 2:], c)
            out[s.name] = self.unpatchify(x, s.channels) if s.kind == "patch" else x
        result = out[PIXEL] if single else out
        return (result, hidden) if capture else result


def build_model(name_or_cfg, streams: Optional[Sequence[Stream]] = None, attention_path: str = "exact",
                device=None, **overrides) -> JiT:
    """Build a JiT from a registry name (``"JiT-B/16"``) or a ``ModelConfig``."""
    cfg = get_model_config(name_or_cfg, **overrides) if isinstance(name_or_cfg, str) else replace(name_or_cfg, **overrides)
    if device is not None:
        with torch.device(device):
            return JiT(cfg, streams, attention_path)
    return JiT(cfg, streams, attention_path)
