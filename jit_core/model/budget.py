"""The size of a (multi-stream) JiT from its config: parameters, FLOPs and training memory per GPU.

One model of size for the whole project: ``jit models``, ``jit train --dry-run`` (the peak memory per GPU
and the refusal of a run that cannot fit), ``jit slurm submit`` (the memory request and the micro-batch
that fits) and the benchmarks read it from here.

- **Parameters** are counted layer by layer as :class:`jit_core.model.JiT` builds them (a test checks the
  count against the network built on the meta device, to the unit, for every named config and stream set).
- **FLOPs**: multiply-adds of every matmul/convolution (the JiT paper's "GFLOPs" are these MACs, the
  fvcore convention); FLOPs = 2 x MACs, a training step = 3 x forward.
- **Activation memory** (bf16 autocast, SDPA attention, training mode): bytes saved for backward per token
  of each stream in each block, ``43.74 h + 11.80 m + 12.78 heads`` (h the width, m the SwiGLU width), +
  54 h per image and stream, + 11/3 h per token in blocks with dropout (1-byte masks), + 2 h per token for a
  sample of the merged null branch (its grouped attention copies), + the bf16 copy of the block's weights;
  outside the blocks ``14.87 h + 6 o`` bytes per token (o: the stream's output values per token) and
  10 B per output value for the inputs, targets and predictions. These coefficients reproduce, within 0.01 %,
  the saved-tensor bytes counted op by op by ``benchmarks/memory_estimate.py`` for B/L/H/G and their
  two-stream variants. With activation checkpointing a block keeps only its fp32 input, and one block's
  activations are alive again while it is recomputed.
- **Resident state**: fp32 weights, gradients, AdamW's two moments and two EMAs = 24 B per trainable
  parameter, 12 B per frozen one (EMA copies included), + frozen modules a plugin runs (its encoders:
  4 B per parameter; see :func:`frozen_modules`); when a loss differentiates through such a module (V-Co's
  hybrid loss), its bf16 weight copies (2 B per parameter) and ``FROZEN_ACT_PER_PARAM`` bytes per parameter
  and image count as activations.

Peak per GPU = resident + activations x (1 + ``ALLOWANCE``) + ``CONTEXT_GIB`` (CUDA context, cuBLAS
workspaces, NCCL buffers). The allowance covers op temporaries and the caching allocator's fragmentation.
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from jit_core.model.fusion import Plan
from jit_core.model.jit import ModelConfig
from jit_core.model.streams import Stream, pixel_stream

GIB = 2 ** 30
FREQ_DIM = 256            # the timestep embedder's frequency features
ALLOWANCE = 0.15          # activations x 1.15: temporaries and allocator fragmentation
CONTEXT_GIB = 1.0         # CUDA context, cuBLAS/cuDNN workspaces, NCCL buffers (outside torch's allocator)
GPU_GIB = 79.1            # an 80 GB card (H100 / A100-80GB) as torch reports it
# bytes saved for backward per token and block (bf16 autocast, SDPA): fitted to the op-by-op count
PER_TOKEN = {"hidden": 43.7358, "mlp": 11.8014, "heads": 12.7801}
PER_IMAGE_HIDDEN = 54             # adaLN modulation and conditioning, per image, stream and block
DROPOUT_MASK_HIDDEN = 11 / 3      # 1-byte dropout masks per token in blocks with proj_drop > 0
NULL_BRANCH_HIDDEN = 2            # a null-branch sample's grouped attention copies, per token
OUTSIDE_HIDDEN, OUTSIDE_OUT = 14.8677, 6.0   # embedders, heads and loss, per token
LIVE_PER_VALUE = 10               # inputs, targets, noisy inputs and predictions alive at the end of the forward
FROZEN_ACT_PER_PARAM = 0.69       # bytes saved per image and frozen parameter when a loss differentiates through
#                                   it (DINOv2-B/14 at 224 px, V-Co's hybrid loss: 59.8 MB per image, 86.6 M parameters)


def _streams(cfg: ModelConfig, streams: Optional[Sequence[Stream]]) -> list[Stream]:
    return list(streams) if streams else [pixel_stream(cfg.in_channels)]


def _io(cfg: ModelConfig, s: Stream) -> int:
    """Input (= output) values per token of a stream."""
    return cfg.patch_size ** 2 * s.channels if s.kind == "patch" else s.channels


def _dropout_block(cfg: ModelConfig, i: int) -> bool:
    q = cfg.depth // 4                     # JiT applies dropout in the middle half of the blocks
    return cfg.proj_drop > 0 and q <= i < 3 * q


# ----------------------------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class Params:
    trainable: int
    frozen: int               # the fixed sin-cos position table

    @property
    def total(self) -> int:
        return self.trainable + self.frozen


def block_params(cfg: ModelConfig) -> int:
    """One stream's weights in one block: RMSNorms, qkv, q/k norms, projection, SwiGLU, adaLN (6 h)."""
    h, m, hd = cfg.hidden_size, cfg.mlp_hidden, cfg.head_dim
    return (2 * h + 2 * hd + (h * 3 * h + 3 * h) + (h * h + h) + (h * 2 * m + 2 * m) + (m * h + h)
            + (h * 6 * h + 6 * h))


def attention_params(cfg: ModelConfig) -> int:
    """One attention module: qkv, q/k norms, output projection."""
    h = cfg.hidden_size
    return (h * 3 * h + 3 * h) + 2 * cfg.head_dim + (h * h + h)


def blocks_params(cfg: ModelConfig, plan: Plan) -> int:
    """The blocks' weights under a fusion (model/fusion.py): one set per lane, or one shared set per layer."""
    n = 0
    for i in range(cfg.depth):
        layer = plan.layer(i)
        sets = 1 if layer.get("shared") else len(layer["lanes"])
        if layer.get("shared_attention"):           # MM-DiT with one QKV: the attention once, the rest per lane
            n += sets * (block_params(cfg) - attention_params(cfg)) + attention_params(cfg)
        else:
            n += sets * block_params(cfg)
    if plan.kind == "channel_concat":
        h = cfg.hidden_size
        n += (2 * h * h + h) + (h * 2 * h + 2 * h)  # Linear(2h -> h) in, Linear(h -> 2h) out
    return n


def params(cfg: ModelConfig, streams: Optional[Sequence[Stream]] = None) -> Params:
    """Parameters of ``JiT(cfg, streams)``, counted as the network builds them."""
    h, d = cfg.hidden_size, cfg.bottleneck_dim
    streams = _streams(cfg, streams)
    n = (FREQ_DIM * h + h) + (h * h + h)            # timestep MLP
    n += (cfg.num_classes + 1) * h                  # label table with the null class
    n += cfg.in_context_len * h                     # in-context position table
    for s in streams:
        inp = cfg.patch_size ** 2 * s.channels if s.kind == "patch" else s.channels
        n += inp * d + (d * h + h)                  # bottleneck embed: proj1 (no bias), proj2
        n += h + (h * _io(cfg, s) + _io(cfg, s)) + (h * 2 * h + 2 * h)   # head: norm, linear, adaLN (2 h)
    n += blocks_params(cfg, Plan.of(cfg, streams))
    return Params(trainable=n, frozen=cfg.grid ** 2 * h)


# ----------------------------------------------------------------------------------------------- FLOPs
def forward_macs(cfg: ModelConfig, streams: Optional[Sequence[Stream]] = None) -> dict[str, int]:
    """Multiply-adds of one forward per image, by component (norms, RoPE, softmax not counted: < 1 %)."""
    h, m, T, d = cfg.hidden_size, cfg.mlp_hidden, cfg.grid ** 2, cfg.bottleneck_dim
    streams = _streams(cfg, streams)
    plan = Plan.of(cfg, streams)
    parts = {"cond": FREQ_DIM * h + h * h, "embed": 0, "fusion": 0, "adaLN": 0, "qkv": 0, "proj": 0, "mlp": 0,
             "attention": 0, "head": 0}
    for s in streams:
        parts["embed"] += s.num_tokens(cfg.grid) * (_io(cfg, s) * d + d * h)
        parts["head"] += h * 2 * h + s.num_tokens(cfg.grid) * h * _io(cfg, s)
    if plan.kind == "channel_concat":
        parts["fusion"] += T * 2 * (2 * h * h)           # Linear(2h -> h) in, Linear(h -> 2h) out
    for i in range(cfg.depth):
        lengths = plan.lane_tokens(i, cfg.in_context_len)
        for L in lengths:
            parts["adaLN"] += h * 6 * h
            parts["qkv"] += L * 3 * h * h
            parts["proj"] += L * h * h
            parts["mlp"] += L * 3 * h * m
        if plan.layer(i).get("joint", True):             # QK^T and AV over the joint sequence, all heads
            parts["attention"] += 2 * sum(lengths) ** 2 * h
        else:                                            # each lane over its own tokens
            parts["attention"] += sum(2 * L ** 2 * h for L in lengths)
    return parts


def train_flops(cfg: ModelConfig, streams: Optional[Sequence[Stream]] = None) -> int:
    """FLOPs of one training step per image: 3 x forward (backward = 2 x forward), 2 FLOPs per MAC."""
    return 3 * 2 * sum(forward_macs(cfg, streams).values())


# ----------------------------------------------------------------------------------------------- memory
@dataclass(frozen=True)
class Frozen:
    """Frozen modules a run's plugins use besides the network (e.g. V-Co's encoder): their parameters, and
    whether a loss differentiates through them (then their activations count too)."""

    params: int = 0
    differentiated: bool = True


def block_activation_bytes(cfg: ModelConfig, streams: Sequence[Stream], block: int, kept: int, dropped: int) -> int:
    """Bytes one block saves for backward at ``kept`` conditional + ``dropped`` null-branch samples."""
    h = cfg.hidden_size
    per_token = PER_TOKEN["hidden"] * h + PER_TOKEN["mlp"] * cfg.mlp_hidden + PER_TOKEN["heads"] * cfg.num_heads
    if _dropout_block(cfg, block):
        per_token += DROPOUT_MASK_HIDDEN * h
    n = kept + dropped
    total = 0.0
    plan = Plan.of(cfg, streams)
    for L in plan.lane_tokens(block, cfg.in_context_len):
        total += n * (L * per_token + PER_IMAGE_HIDDEN * h) + dropped * L * NULL_BRANCH_HIDDEN * h
    layer = plan.layer(block)
    sets = 1 if layer.get("shared") else len(layer["lanes"])
    weights = 2 * sets * (block_params(cfg) - 2 * h - 2 * cfg.head_dim)   # bf16 copies of its linears
    return int(total + weights)


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak training memory of one GPU (bytes, and GiB through :attr:`peak_gib`)."""

    resident: int
    activations: int
    frozen: int
    batch: int
    checkpointing: bool
    parts: dict = field(default_factory=dict)

    @property
    def peak(self) -> int:
        return int(self.resident + self.frozen + self.activations * (1 + ALLOWANCE) + CONTEXT_GIB * GIB)

    @property
    def peak_gib(self) -> float:
        return self.peak / GIB

    def fits(self, capacity_gib: float = GPU_GIB) -> bool:
        return self.peak_gib <= capacity_gib


def training_memory(cfg: ModelConfig, streams: Optional[Sequence[Stream]] = None, *, batch: int,
                    checkpointing: bool = False, label_drop_prob: float = 0.1,
                    frozen: Frozen = Frozen()) -> MemoryEstimate:
    """The peak memory per GPU of a training step on ``batch`` images (one micro-batch)."""
    streams = _streams(cfg, streams)
    p = params(cfg, streams)
    # weights, gradients, AdamW's two moments, two EMAs (frozen parameters: weights and EMAs)
    resident = 24 * p.trainable + 12 * p.frozen
    # a sample of the merged null branch exists only with a second stream to block (V-Co's structured branch)
    dropped = math.ceil(label_drop_prob * batch) if len(streams) > 1 else 0
    kept = batch - dropped
    outside = sum(batch * cfg.grid ** 2 * ((OUTSIDE_HIDDEN * cfg.hidden_size + OUTSIDE_OUT * _io(cfg, s))
                                           + LIVE_PER_VALUE * _io(cfg, s)) for s in streams)
    blocks = [block_activation_bytes(cfg, streams, i, kept, dropped) for i in range(cfg.depth)]
    if checkpointing:   # each block keeps its fp32 input; one block's activations live again while recomputed
        plan = Plan.of(cfg, streams)
        inputs = sum(4 * batch * L * cfg.hidden_size for i in range(cfg.depth)
                     for L in plan.lane_tokens(i, cfg.in_context_len))
        block_part = inputs + max(blocks)
    else:
        block_part = sum(blocks)
    # a frozen module a loss differentiates through saves its bf16 weight copies and its activations
    frozen_act = (2 + FROZEN_ACT_PER_PARAM * batch) * frozen.params if frozen.differentiated else 0
    activations = int(outside + block_part + frozen_act)
    return MemoryEstimate(resident=resident, activations=activations, frozen=4 * frozen.params, batch=batch,
                          checkpointing=checkpointing,
                          parts={"outside": int(outside), "blocks": int(block_part), "frozen": int(frozen_act)})


def frozen_modules(streams: Sequence[Stream], image_shape: tuple[int, int, int]) -> Optional[Frozen]:
    """The frozen modules the streams' targets run (a plugin's encoders), found without knowing the plugin:
    each target is called on one image on the meta device (no memory, no compute) and every parameter an
    operation touches is counted once. None if a target cannot run on the meta device (e.g. a feature cache
    looked up by pixel content). The global RNG is left as it was (building an encoder draws its init)."""
    from torch.overrides import TorchFunctionMode

    class Touched(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.params: dict[int, torch.Tensor] = {}

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            for a in (*args, *kwargs.values()):
                if isinstance(a, torch.nn.Parameter) and a.device.type == "meta":   # used on the meta batch
                    self.params[id(a)] = a
            return func(*args, **kwargs)

    targets: list[Callable] = [s.target for s in streams if s.target is not None]
    if not targets:
        return Frozen()
    touched = Touched()
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad(), touched:
            for target in targets:
                target(torch.zeros(1, *image_shape, device="meta"))
    except Exception:   # noqa: BLE001 -- a target that needs real data: the estimate says it could not count it
        return None
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return Frozen(params=sum(p.numel() for p in touched.params.values()))
