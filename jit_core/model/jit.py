"""Multi-stream JiT (Li & He, arXiv 2511.13720, Sec. 4) with joint attention across token streams.

With only the pixel stream this is JiT, module for module (official key names, parameter counts and
outputs). Extra streams (added by plugins, e.g. V-Co's feature stream, arXiv 2603.16792) get their own
weights in every block and their own head, share the conditioning c, the in-context table and the
attention softmax with the pixels, and have position tables for their own geometry; a stream's ``fusion``
picks another co-denoising architecture (V-Co Table 1; ``fusion.py``). Reading order: :class:`JiT.forward`,
:class:`JointBlock` (``blocks.py``: the block's two residual lines), ``attention.py``, ``fusion.py``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Optional

import torch
import torch.nn as nn
import torch.utils.checkpoint

from jit_core.config import ATTENTION_PATHS
from jit_core.model.attention import Mask, StreamGroups, token_mask
from jit_core.model.blocks import AdaLN, JointBlock, StreamAttention, StreamBlock  # noqa: F401 (public names)
from jit_core.model.fusion import FUSED, Fusion
from jit_core.model.layers import (
    FinalLayer,
    LabelEmbedder,
    PatchEmbed,
    TimestepEmbedder,
    TokenEmbed,
    cell_centres,
    rope_tables,
    sincos_1d,
    sincos_2d,
    with_identity_prefix,
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
    # Widened JiTs: the hidden size grown until the trainable count doubles, the parameter-matched control of a
    # two-stream model (V-Co, arXiv 2603.16792, Table 1: "JiT-B/16 widened", 261M). Depth, bottleneck and the
    # rest are the plain model's; the head dim nearest the plain one that divides the width (RoPE needs it a
    # multiple of 4): B/16 keeps 64 with 17 heads; 136 splits into 1, 2, 17 or 34 heads, 17 x 8 is nearest 24.
    "JiT-B/16-wide": _jit(12, 1088, 17, 128, 4, 256, 16),
    "JiT-S/4-wide": ModelConfig(image_size=32, patch_size=4, hidden_size=136, depth=4, num_heads=17,
                                bottleneck_dim=16, in_context_len=4, in_context_start=1, num_classes=10),
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


@dataclass
class JiTOutput:
    """What :class:`JiT` returns: x_hat = net(z, t, y) per stream, and the captured hidden states.

    - ``x_hat``: ``{stream: x-prediction}``; ``(B, C, H, W)`` for a patch stream, ``(B, T_s, C_s)`` for
      a token stream.
    - ``hidden``: ``{block index: {stream: (B, T_s, h)}}``, the outputs of the blocks asked for with
      ``capture`` (in-context tokens dropped); empty without ``capture``. In a fused block (``channel_concat``
      / ``add`` before their post-blocks) the one fused sequence is given as ``pixel``.
    """

    x_hat: dict[str, torch.Tensor]
    hidden: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)

    @property
    def pixel(self) -> torch.Tensor:
        """The pixel stream's x-prediction (B, C, H, W): JiT's x_hat."""
        return self.x_hat[PIXEL]


class Positions(nn.Module):
    """The position tables of one token geometry: sin-cos table added at the input and RoPE tables.

    Built from the stream's geometry (docs/architecture.md, "Streams with their own token count"):
    the pixel grid's tables for pixels and for token streams on the pixel grid; a grid of its own at
    its cell centres; for global tokens a 1D sin-cos table over the token index and no rotation.
    Buffers, not parameters: they are not trained and not saved.
    """

    def __init__(self, cfg: ModelConfig, stream: Stream):
        super().__init__()
        h, g, d, K = cfg.hidden_size, cfg.grid, cfg.head_dim, cfg.in_context_len
        if stream.tokens is not None:
            sincos = sincos_1d(h, stream.tokens)
            cos, sin = torch.ones(stream.tokens, d), torch.zeros(stream.tokens, d)   # not rotated
        else:
            n = stream.grid
            centres = cell_centres(n, g)
            sincos = sincos_2d(h, n, centres)
            cos, sin = rope_tables(d, n, positions=centres)
        self.register_buffer("sincos", sincos[None], persistent=False)                       # (1, T_s, h)
        self.register_buffer("rope_cos", cos, persistent=False)                               # (T_s, d)
        self.register_buffer("rope_sin", sin, persistent=False)
        ic_cos, ic_sin = with_identity_prefix(cos, sin, K)
        self.register_buffer("rope_ic_cos", ic_cos, persistent=False)                         # (K + T_s, d)
        self.register_buffer("rope_ic_sin", ic_sin, persistent=False)


class JiT(nn.Module):
    """Multi-stream JiT: ``model(z, t, y)`` -> :class:`JiTOutput` (x_hat per stream, JiT Sec. 4).

    With only the pixel stream this is the official JiT network; every extra stream has its own
    embedder and its own head, shares c and the in-context table, and meets the pixels as its
    ``fusion`` says (default ``joint``: its own weights in every block and the joint attention).
    """

    def __init__(self, cfg: ModelConfig, streams: Optional[Sequence[Stream]] = None, attention_path: str = "exact"):
        super().__init__()
        cfg.validate()
        streams = list(streams) if streams else [pixel_stream(cfg.in_channels)]
        names = [s.name for s in streams]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate stream names: {names}")
        if streams[0].name != PIXEL:
            raise ValueError("the first stream must be the pixel stream")
        for s in streams:
            check_geometry(s)
        self.cfg, self.streams = cfg, streams
        self.attention_path = attention_path
        self.grad_checkpointing = False  # recompute block activations in backward (memory lever for L/H/G)
        h, g, K = cfg.hidden_size, cfg.grid, cfg.in_context_len

        self.t_embedder = TimestepEmbedder(h)
        self.y_embedder = LabelEmbedder(cfg.num_classes, h)
        self.embedders = nn.ModuleDict({
            s.name: PatchEmbed(cfg.patch_size, s.channels, cfg.bottleneck_dim, h) if s.kind == "patch"
            else TokenEmbed(s.channels, cfg.bottleneck_dim, h) for s in streams})
        # the pixel grid's sin-cos table: a frozen parameter because the official checkpoints store it
        self.pos_embed = nn.Parameter(torch.zeros(1, g * g, h), requires_grad=False)         # (1, T, h)
        self.in_context_posemb = nn.Parameter(torch.zeros(1, K, h))                           # E_ic (1, K, h)
        self.fusion = Fusion(cfg, streams)   # how the extra stream meets the pixels (fusion.py; default joint)
        q = cfg.depth // 4   # dropout only in the middle half of the blocks, as the official code
        self.blocks = nn.ModuleList([
            JointBlock(cfg, attn_drop=cfg.attn_drop if q <= i < 3 * q else 0.0,
                       proj_drop=cfg.proj_drop if q <= i < 3 * q else 0.0, **self.fusion.layer(i))
            for i in range(cfg.depth)])
        self.heads = nn.ModuleDict({
            s.name: FinalLayer(h, cfg.patch_size ** 2 * s.channels if s.kind == "patch" else s.channels)
            for s in streams})
        for prefix, name in ((0, "rope"), (K, "rope_ic")):
            cos, sin = rope_tables(cfg.head_dim, g, prefix)
            self.register_buffer(f"{name}_cos", cos, persistent=False)                        # (prefix + T, d)
            self.register_buffer(f"{name}_sin", sin, persistent=False)
        # tables of the streams not on the pixel grid (none in JiT and V-Co)
        self.positions = nn.ModuleDict({s.name: Positions(cfg, s) for s in streams if not on_pixel_grid(s)})
        self.initialize_weights()

    # ------------------------------------------------------------------ init
    def initialize_weights(self) -> None:
        """JiT's init: xavier everywhere, N(0, 0.02^2) tables, adaLN and output layers zero (x_hat = 0)."""
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
        for sb in self.modules():
            if isinstance(sb, StreamBlock):
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

    def token_count(self, stream: Stream) -> int:
        """T_s: the grid tokens of a stream (its in-context tokens not counted)."""
        return stream.num_tokens(self.cfg.grid)

    def input_shape(self, stream: Stream) -> tuple[int, ...]:
        """One sample's input (and x_hat) shape: (C, H, W) for a patch stream, (T_s, C_s) for a token stream."""
        if stream.kind == "patch":
            return (stream.channels, self.cfg.image_size, self.cfg.image_size)
        return (self.token_count(stream), stream.channels)

    def unpatchify(self, x: torch.Tensor, channels: int) -> torch.Tensor:
        """(B, T, p*p*C) tokens, each ordered (row in patch, column in patch, channel) -> (B, C, H, W)."""
        p, g = self.cfg.patch_size, self.cfg.grid
        x = x.reshape(x.shape[0], g, g, p, p, channels)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], channels, g * p, g * p)

    def tables(self, stream: Stream):
        """(sin-cos table (1, T_s, h), RoPE (cos, sin), RoPE with the in-context identity prefix) of a stream."""
        if on_pixel_grid(stream):
            return self.pos_embed, (self.rope_cos, self.rope_sin), (self.rope_ic_cos, self.rope_ic_sin)
        pos = self.positions[stream.name]
        return pos.sincos, (pos.rope_cos, pos.rope_sin), (pos.rope_ic_cos, pos.rope_ic_sin)

    def check_inputs(self, inputs: dict[str, torch.Tensor]) -> None:
        missing = [s.name for s in self.streams if s.name not in inputs]
        if missing:
            raise ValueError(f"missing inputs for streams {missing}; the model has streams {[s.name for s in self.streams]}")
        pix = inputs[PIXEL]
        if pix.shape[-1] != self.cfg.image_size or pix.shape[-2] != self.cfg.image_size:
            raise ValueError(f"input is {tuple(pix.shape[-2:])} but the model expects "
                             f"{self.cfg.image_size}x{self.cfg.image_size} images")
        for s in self.streams:
            if s.kind == "tokens" and tuple(inputs[s.name].shape[1:]) != self.input_shape(s):
                raise ValueError(f"stream {s.name!r} input is {tuple(inputs[s.name].shape)}, expected "
                                 f"(B, {', '.join(map(str, self.input_shape(s)))}) (tokens, channels)")

    # ------------------------------------------------------------------ forward
    def forward(self, inputs, t: torch.Tensor, y: torch.Tensor, blocked=None, capture: Sequence[int] = ()) -> JiTOutput:
        """x_hat = net(z, t, y) for every stream (JiT Sec. 4; joint attention across streams, V-Co).

        - ``inputs``: ``{stream: noisy tensor}`` (see :meth:`input_shape`); a bare tensor is the pixel stream.
        - ``t``: ``(B,)`` flow time, 1 = clean. ``y``: ``(B,)`` labels, ``num_classes`` = null.
        - ``blocked``: optional ``(B, S, S)`` bool, True where queries of stream i may not see keys of
          stream j (in-context tokens belong to their stream), applied in every block; or the
          :class:`StreamGroups` of such a matrix (``fast`` attention without masks; the sampler builds
          it once per call). No stream may be blocked from every key stream (``unconditional.merge``
          refuses that; a bare matrix that does it is a device-side assertion). Only the ``joint`` and
          ``shared_qkv`` fusions attend across streams; the others refuse ``blocked``.
        - ``capture``: block indices whose outputs are returned in ``JiTOutput.hidden``.
        """
        if isinstance(inputs, torch.Tensor):
            inputs = {PIXEL: inputs}
        self.check_inputs(inputs)
        if blocked is not None and not self.fusion.attends_across:
            raise ValueError(f"fusion {self.fusion.kind!r} has no attention across streams to mask: drop a stream by "
                             "zeroing its input (a null branch's inputs), not with blocked pairs")
        tables = [self.tables(s) for s in self.streams]
        y_emb = self.y_embedder(y)                                                  # (B, h)
        c = self.t_embedder(t) + y_emb                                              # (B, h), the adaLN condition
        xs = [self.embedders[s.name](inputs[s.name]) + pos for s, (pos, _, _) in zip(self.streams, tables)]  # (B, T_s, h)
        fusion, rope_of = self.fusion, {s.name: (rope, ic_rope) for s, (_, rope, ic_rope) in zip(self.streams, tables)}
        lanes, with_ic = fusion.first_lanes, False
        xs = fusion.enter(xs)                                                       # per lane (B, L, h)
        ropes = fusion.ropes(lanes, rope_of, with_ic)
        mask = self.attention_mask(blocked, xs)
        hidden = {}
        for i, block in enumerate(self.blocks):
            if i == fusion.split_at:     # channel_concat / add: the fused lane into each stream's post-blocks
                xs, lanes = fusion.split(xs[0]), block.lanes
                ropes = fusion.ropes(lanes, rope_of, with_ic)
            if i == fusion.in_context_at:   # in-context class tokens (JiT Tab. 4): y_emb + E_ic, per lane
                ic = y_emb.unsqueeze(1) + self.in_context_posemb                    # (B, K, h)
                xs = [torch.cat([ic.to(x.dtype), x], dim=1) if fusion.in_context(n) else x for n, x in zip(lanes, xs)]
                with_ic = True
                ropes = fusion.ropes(lanes, rope_of, with_ic)
                mask = self.attention_mask(blocked, xs)                             # the lengths changed
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                xs = torch.utils.checkpoint.checkpoint(block, xs, c, ropes, mask, self.attention_path, use_reentrant=False)
            else:
                xs = block(xs, c, ropes, mask, self.attention_path)
            if i in capture:
                hidden[i] = self.by_stream(lanes, xs)
        xs = fusion.leave(xs, [self.token_count(s) for s in self.streams])         # per stream (B, T_s, h)
        x_hat = {}
        for s, x in zip(self.streams, xs):
            x = self.heads[s.name](x, c)
            x_hat[s.name] = self.unpatchify(x, s.channels) if s.kind == "patch" else x
        return JiTOutput(x_hat, hidden)

    def by_stream(self, lanes: list[str], xs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """A layer's output per stream (B, T_s, h), in-context tokens dropped; a fused lane counts as the pixels'."""
        tokens = [self.token_count(s) for s in self.streams]
        if self.fusion.kind == "token_concat":
            return dict(zip([s.name for s in self.streams], xs[0][:, -sum(tokens):].split(tokens, dim=1)))
        return {PIXEL if n == FUSED else n: x[:, -tokens[0] if n == FUSED else -self.token_count(self.stream(n)):]
                for n, x in zip(lanes, xs)}

    def stream(self, name: str) -> Stream:
        return next(s for s in self.streams if s.name == name)

    def attention_mask(self, blocked, xs: list[torch.Tensor]) -> Mask:
        """The form of ``blocked`` the blocks get: None, the caller's StreamGroups (fast path), or a token mask."""
        if blocked is None:
            return None
        if isinstance(blocked, StreamGroups):
            if self.attention_path == "fast":
                return blocked
            blocked = blocked.blocked
        # sync-free guard: a query stream that may see no key stream would give NaN attention
        torch._assert_async(~blocked.all(dim=2).any(), "a stream may see no key stream at all: its attention is undefined")
        return token_mask(blocked, [x.shape[1] for x in xs])


def on_pixel_grid(stream: Stream) -> bool:
    return stream.grid is None and stream.tokens is None


def check_geometry(stream: Stream) -> None:
    """A stream has one token geometry: the pixel grid, a grid of its own (``grid``) or global tokens (``tokens``)."""
    if on_pixel_grid(stream):
        return
    if stream.kind == "patch":
        raise ValueError(f"stream {stream.name!r}: a patch stream lies on the pixel grid; grid/tokens are for "
                         f"kind='tokens' streams")
    if stream.grid is not None and stream.tokens is not None:
        raise ValueError(f"stream {stream.name!r}: set grid (a grid of its own) or tokens (global tokens), not both")
    n = stream.grid if stream.grid is not None else stream.tokens
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"stream {stream.name!r}: {'grid' if stream.grid is not None else 'tokens'} must be a "
                         f"positive integer, got {n!r}")


def build_model(name_or_cfg, streams: Optional[Sequence[Stream]] = None, attention_path: str = "exact",
                device=None, **overrides) -> JiT:
    """Build a JiT from a registry name (``"JiT-B/16"``) or a ``ModelConfig``."""
    cfg = get_model_config(name_or_cfg, **overrides) if isinstance(name_or_cfg, str) else replace(name_or_cfg, **overrides)
    if device is not None:
        with torch.device(device):
            return JiT(cfg, streams, attention_path)
    return JiT(cfg, streams, attention_path)
