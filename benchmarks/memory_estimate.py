"""Per-GPU training-memory estimate of JiT and V-Co (bf16 autocast, fused AdamW, two EMAs), with and
without activation checkpointing, for an 80 GB card - computed on a CPU-only machine.

    python benchmarks/memory_estimate.py                          # table + validation (~2-3 min, 1 thread)
    python benchmarks/memory_estimate.py --json out.json --batches 16,32,64,128

Two parts, both counted rather than guessed:

1. **Resident state** (exact, from the full models built on the meta device): fp32 weights, fp32
   gradients (DDP's buckets hold them throughout; on one GPU ``Trainer.train_step`` frees them before the
   forward, so there this errs high by 4 B per parameter), AdamW ``exp_avg`` + ``exp_avg_sq``,
   two fp32 EMAs of every model parameter (the frozen sin-cos table included) = 24 B per trainable
   parameter, 12 B per frozen one, + buffers. With DDP
   (``--world-size`` > 1, the default 8) the reducer's gradient buckets would add 4 B per trainable
   parameter, but the Trainer builds ``DistributedDataParallel`` with ``gradient_as_bucket_view=True``
   (the gradients are views into the buckets), so they add nothing. V-Co adds
   the frozen DINOv2-B/14-reg4 (fp32, one copy: one trunk serves the target tokens and the hybrid loss).

2. **Activations** (measured on the CPU): a *shallow* copy of each config (same width, heads,
   tokens, streams; depth 2, block 0 without and block 1 with the in-context tokens) runs the real
   training objective ``jit_core.diffusion.training_losses`` in training mode under
   ``torch.autocast("cpu", bfloat16)`` with ``model.set_attention("fast")`` (forward only: what is
   saved for backward is fixed once the forward is done). Every tensor saved for backward is caught
   with ``torch.autograd.graph.saved_tensors_hooks`` and counted once per storage
   (``untyped_storage()`` data_ptr, ``nbytes``); parameters and buffers are excluded (resident).
   Each saved tensor is attributed to the block whose forward is running (module hooks); the rest is
   the fixed part (embedders, conditioning, heads, loss). Model inputs, targets and predictions alive
   at the end of the forward but not saved are counted as "live". Batches: JiT 1 and 2 images; V-Co
   (1 kept + 1 dropped), (2 + 1), (1 + 2): a V-Co batch attends with the (B, 1, L, L) bool token masks
   of its blocked stream pairs (kept alive by a checkpointed forward: one storage before and one after
   the in-context tokens, shared by all blocks, so counted once). Everything is linear in the batch, so the
   full-depth activation memory at batch B is fixed(B) + live(B) + the sum over the D blocks of
   their kind's bytes(B), kind = (in-context tokens, dropout), with ceil(label_drop_prob * B)
   dropped samples in V-Co. Configs with dropout (JiT-H/G) run both shallow blocks with dropout;
   the same block without dropout saves exactly that minus the dropout masks (the only bool tensors
   saved), which are tagged. V-Co's hybrid loss (DINOv2 embedding of x-hat with gradients into
   x-hat, the f+ embedding without, the drifting loss) is measured the same way with the real
   ``vco_plugin`` encoder (random weights, same shapes) cut to ``--encoder-blocks`` blocks and
   extrapolated to its 12.

CPU vs CUDA (what is counted is what CUDA saves):

- attention: on the CPU, SDPA ("fast") without dropout runs ``_scaled_dot_product_flash_attention_for_cpu``,
  which saves q, k, v, out and the fp32 logsumexp - the same set as CUDA FlashAttention (+ two
  Philox scalars there), O(L), no L x L matrix. With attention dropout the CPU falls back to the
  math path (saves L x L probabilities) while CUDA flash regenerates the dropout mask from its RNG
  state; so attention dropout (JiT-G/16 only) is set to 0 in the measured copy and costs nothing extra.
- dropout elsewhere (JiT-H/G ``proj_drop``): CUDA runs the fused ``native_dropout`` and saves a
  1-byte bool mask; CPU ``F.dropout`` saves the noise in the input dtype. The measured copy calls
  ``torch.native_dropout`` instead (same maths, the CUDA saved set).
- autocast: the CPU and CUDA autocast op lists agree for every op these models run (linear, conv,
  matmul and SDPA in bf16; RMSNorm, RoPE, the residual stream, the losses in fp32 by explicit casts
  or type promotion), so the dtypes of the saved tensors are those of CUDA.
- activation checkpointing (``model.grad_checkpointing = True``, non-reentrant): the blocks save
  nothing; their inputs (the per-stream residual streams, fp32) stay alive through the checkpoint's
  closure. Autocast would keep bf16 copies of the block weights in its cast cache until it exits
  (2 B per block linear parameter), but the Trainer turns the cast cache off when checkpointing
  (``cache_enabled=False``), so it is not counted. ckpt activations = fixed + block inputs + one
  block's working set (estimated as one block's saved activations, largest kind) + encoder: a bound
  on the forward peak (while the last block or the encoder runs). The backward peak is lower (one block recomputed at a time, the
  cast cache freed when autocast exits, the encoder's activations freed first, the old gradients
  freed before the backward), so this is conservative (CPU check: the measured RSS is 0.73-0.78 of
  it at B/16). The fixed part and block inputs of the checkpointed forward are derived from the
  plain run (the inputs each block received); for JiT-B/16 (``--measure-ckpt``) and in the fp32 check
  the checkpointed forward is also measured (block inputs counted through a wrapper of
  ``torch.utils.checkpoint.checkpoint``) and compared.

Total = resident + activations x (1 + ``--allowance``) + ``--context-gib``. The allowance (default
15 %) covers what is alive besides saved tensors at the peak (op temporaries in the forward, the
no-grad DINOv2 passes, backward gradient buffers of the block being differentiated) and the CUDA
caching allocator's fragmentation. The CPU check below (glibc with a fixed mmap threshold, so no
allocator caching) puts the first part at 0-2 % for the plain step (the peak is the end of the
forward, where saved tensors are nearly all that is alive), so most of the 15 % is margin for
fragmentation (reserved/allocated of the caching allocator in training is typically 1.05-1.2). The
context term (default 1 GiB) is the CUDA context, cuBLAS/cuDNN workspaces and NCCL buffers, which
live outside torch's allocator.

Not modelled: torch.compile (off by default; would save less), ``vco.feature_cache`` /
``shared_encoder_pass`` (smaller transients only), tensor/sequence parallelism (none in this code).

Check: ``--validate`` (default on) runs the same counter in fp32 without autocast at B/16 batch 4
and compares with the peak-RSS increase of a real CPU training step in benchmarks/RESULTS.md
("Memory, CPU (B/16, batch 4)"); ``--full-depth-check`` also counts the full-depth B/16 networks
directly against the depth-2 extrapolation.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
import torch.nn as nn
import torch.utils.checkpoint

import jit_core.model.jit as jit_module
from jit_core.config import Config
from jit_core.diffusion import training_losses
from jit_core.hookspecs import hookimpl
from jit_core.model import JiT, ModelConfig, budget, get_model_config
from jit_core.model.streams import Stream, pixel_stream
from jit_core.plugins import Plugins

GIB = 2 ** 30
FEATURE_CHANNELS = 768          # DINOv2-B/14 tokens: V-Co's feature stream
DEFAULT_MODELS = {"jit": ("JiT-B/16", "JiT-L/16", "JiT-H/16", "JiT-G/16"),
                  "vco": ("JiT-B/16", "JiT-L/16", "JiT-H/16")}
NET_LABEL = {"jit": "JiT", "vco": "V-Co"}
# benchmarks/RESULTS.md, "Memory, CPU (B/16, batch 4)": peak RSS minus the RSS before a steady fp32
# training step (Trainer.train_step, SDPA attention, one fresh process per variant).
RESULTS_CPU_RSS_GIB = {("jit", False): 1.20, ("jit", True): 0.12, ("vco", False): 2.81, ("vco", True): 0.54}


# ----------------------------------------------------------------------------------- configs
def streams_for(net: str, channels: int = 3) -> list[Stream]:
    if net == "jit":
        return [pixel_stream(channels)]
    return [pixel_stream(channels),
            Stream("feature", kind="tokens", channels=FEATURE_CHANNELS, in_context=True, loss_weight=0.1,
                   default_init=True)]


def full_config(name: str, net: str) -> ModelConfig:
    """The trained config: V-Co trains without dropout at every size (its preset)."""
    cfg = get_model_config(name)
    return replace(cfg, proj_drop=0.0, attn_drop=0.0) if net == "vco" else cfg


def has_dropout(cfg: ModelConfig) -> bool:
    return cfg.proj_drop > 0 or cfg.attn_drop > 0


def block_kind(cfg: ModelConfig, i: int) -> tuple[bool, bool]:
    """(in-context tokens present, dropout active) of block i, by the rule of ``JiT.__init__``/``forward``."""
    q = cfg.depth // 4
    return i >= cfg.in_context_start, has_dropout(cfg) and q <= i < 3 * q


def shallow_config(cfg: ModelConfig) -> ModelConfig:
    """Same width/heads/tokens/streams, depth 2: block 0 without, block 1 with the in-context tokens.
    (Dropout, where the config has it, is put into both blocks by :meth:`Estimator.measure`.)"""
    return replace(cfg, depth=2, in_context_start=1).validate()


# ----------------------------------------------------------------------------------- resident state
def count_model(cfg: ModelConfig, net: str) -> dict:
    with torch.device("meta"):
        model = JiT(cfg, streams_for(net, cfg.in_channels))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    block_linear = sum(p.numel() for m in model.blocks.modules() if isinstance(m, nn.Linear) for p in m.parameters())
    return {"trainable": trainable, "frozen": frozen, "buffer_bytes": buffers, "block_linear_params": block_linear}


def resident_bytes(counts: dict, encoder: dict | None) -> dict:
    P, F = counts["trainable"], counts["frozen"]
    out = {"weights": 4 * (P + F) + counts["buffer_bytes"], "grads": 4 * P, "adamw": 8 * P, "ema": 2 * 4 * (P + F),
           "ddp_buckets": 0,   # gradient_as_bucket_view=True: the gradients are the buckets
           "encoder": (4 * encoder["params"] + encoder["buffer_bytes"]) if encoder else 0}
    out["total"] = sum(out.values())
    return out


# ----------------------------------------------------------------------------------- the counter
class SavedCounter:
    """Bytes of tensors saved for backward, once per storage, by tag; parameters/buffers excluded."""

    def __init__(self, exclude: set[int]):
        self.exclude = exclude
        self.seen: dict[int, tuple] = {}   # storage data_ptr -> (tag, nbytes, is a bool mask)
        self.tag = "fixed"

    def add(self, t: torch.Tensor, tag=None) -> None:
        if not isinstance(t, torch.Tensor) or t.layout != torch.strided or t.device.type == "meta":
            return
        s = t.untyped_storage()
        ptr, n = s.data_ptr(), s.nbytes()
        if n == 0 or ptr in self.exclude or ptr in self.seen:
            return
        self.seen[ptr] = (tag if tag is not None else self.tag, n, t.dtype == torch.bool)

    def pack(self, t):
        self.add(t)
        return t

    def by_tag(self) -> dict:
        out: dict = defaultdict(int)
        for tag, n, mask in self.seen.values():
            out[tag] += n
            if mask and isinstance(tag, tuple) and tag[0] == "block":   # dropout masks (the only bool tensors)
                out[("mask", tag[1])] += n
        return dict(out)


def _storage_ptrs(*modules) -> set[int]:
    return {t.untyped_storage().data_ptr() for m in modules for t in list(m.parameters()) + list(m.buffers())}


def _flat_tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            yield from _flat_tensors(x)
    elif isinstance(obj, dict):
        for x in obj.values():
            yield from _flat_tensors(x)


def _storage_bytes(tensors) -> int:
    seen = {}
    for t in tensors:
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


class _CudaDropout(nn.Module):
    """``nn.Dropout`` as CUDA runs it: the fused ``native_dropout`` (saves a 1-byte bool mask)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        return torch.native_dropout(x, self.p, True)[0] if self.training and self.p > 0 else x


def cuda_like(model: JiT) -> JiT:
    """Attention dropout off (CUDA flash regenerates its mask; the CPU would fall back to the math path),
    other dropout through native_dropout (the CUDA saved set)."""
    for block in model.blocks:
        block.attn_drop = 0.0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Dropout):
                setattr(parent, name, _CudaDropout(child.p))
    return model


@dataclass
class Composition:
    keep: int
    drop: int

    @property
    def batch(self) -> int:
        return self.keep + self.drop


def measure_model(model: JiT, net: str, comp: Composition, autocast: bool, ckpt: bool, seed: int = 0) -> dict:
    """One forward of ``training_losses`` (no backward): bytes saved per tag, block inputs, live tensors."""
    torch.manual_seed(seed)
    cfg = model.cfg
    B, S, T = comp.batch, cfg.image_size, cfg.grid ** 2
    model.train()
    model.grad_checkpointing = ckpt
    counter = SavedCounter(_storage_ptrs(model))
    live: list[torch.Tensor] = []
    inputs_seen: dict[int, int] = {}
    handles = []

    def target(images):
        f = torch.randn(images.shape[0], T, FEATURE_CHANNELS)
        live.append(f)
        return f

    streams = model.streams
    if net == "vco":
        streams = [streams[0], replace(streams[1], target=target, plugin="vco-null")]
        model.streams = streams
    for i, block in enumerate(model.blocks):
        def pre(mod, args, i=i):
            counter.tag = ("block", i)
            inputs_seen[i] = _storage_bytes(_flat_tensors(args[0]))
        def post(mod, args, out):
            counter.tag = "fixed"
        handles += [block.register_forward_pre_hook(pre), block.register_forward_hook(post)]
    handles.append(model.register_forward_pre_hook(lambda m, args: live.extend(_flat_tensors(args[0]))))
    handles.append(model.register_forward_hook(lambda m, args, out: live.extend(_flat_tensors(out))))
    block_index = {id(b): i for i, b in enumerate(model.blocks)}
    original = torch.utils.checkpoint.checkpoint

    def checkpoint(fn, *args, **kwargs):   # the block inputs a non-reentrant checkpoint keeps alive
        for t in _flat_tensors(args):
            # the blocked-attention token mask (bool) is one storage shared by all blocks: counted once, fixed
            counter.add(t, tag="fixed" if t.dtype == torch.bool else ("input", block_index.get(id(fn), -1)))
        return original(fn, *args, **kwargs)

    token_masks: list[torch.Tensor] = []
    make_mask = jit_module.token_mask

    def token_mask(*args, **kwargs):   # V-Co's blocked-attention masks (kept alive by a checkpointed forward)
        token_masks.append(make_mask(*args, **kwargs))
        return token_masks[-1]

    fixed_drop = torch.tensor([False] * comp.keep + [True] * comp.drop)

    class FixedNull:                  # V-Co's structured null branch on the feature stream
        __name__ = "vco-null"

        @hookimpl
        def jit_null_branch(self, drop, streams, config):
            from vco_plugin.null_branch import null_branch
            return null_branch("structured", drop) if net == "vco" else None

    hook = Plugins(extra=[FixedNull()]).hook
    config = Config()
    images = torch.rand(B, cfg.in_channels, S, S) * 2 - 1
    labels = torch.zeros(B, dtype=torch.long)   # V-Co's class-balanced batches: one class per rank batch
    live.append(images)
    torch.utils.checkpoint.checkpoint, jit_module.token_mask = checkpoint, token_mask
    try:
        with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t), \
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            total, _ = training_losses(model, streams, images, labels, config, hook, drop=fixed_drop)  # the composition's drop
    finally:
        torch.utils.checkpoint.checkpoint, jit_module.token_mask = original, make_mask
        for h in handles:
            h.remove()
    for t in live:
        counter.add(t, tag="live")
    tags = counter.by_tag()
    tags["token_masks"] = _storage_bytes(token_masks)
    del total
    return {"tags": tags, "inputs": inputs_seen}


def measure_encoder(enc, image_size: int, batch: int, autocast: bool, seed: int = 0) -> dict:
    """V-Co's hybrid loss: the embedding of x-hat (with gradients into x-hat) and of the clean images
    (no gradients), then the drifting loss - the DINOv2 part of a step's saved tensors."""
    from vco_plugin.drift_loss import hybrid_loss
    torch.manual_seed(seed)
    dtype = torch.bfloat16 if autocast else torch.float32   # the pixel head's output dtype
    x_hat = (torch.rand(batch, 3, image_size, image_size) * 2 - 1).to(dtype).requires_grad_(True)
    images = torch.rand(batch, 3, image_size, image_size) * 2 - 1
    labels = torch.zeros(batch, dtype=torch.long)
    counter = SavedCounter(_storage_ptrs(enc) | {x_hat.untyped_storage().data_ptr()})
    handles = []
    for j, block in enumerate(enc.vit.blocks):
        handles.append(block.register_forward_pre_hook(lambda m, a, j=j: setattr(counter, "tag", ("block", j))))
        handles.append(block.register_forward_hook(lambda m, a, o: setattr(counter, "tag", "fixed")))
    try:
        with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t), \
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            f = enc.embedding(x_hat)
            with torch.no_grad():
                f_pos = enc.embedding(images)
            loss = 10.0 * hybrid_loss(f, f_pos, labels)
    finally:
        for h in handles:
            h.remove()
    del loss
    return {"tags": counter.by_tag()}


# ----------------------------------------------------------------------------------- linear fits
@dataclass
class Lin:
    """bytes(keep, drop) = c0 + keep * k + drop * d."""

    c0: float
    k: float
    d: float

    def __call__(self, keep: int, drop: int) -> float:
        return self.c0 + keep * self.k + drop * self.d

    def add(self, other: Lin, w: float = 1.0) -> Lin:
        return Lin(self.c0 + w * other.c0, self.k + w * other.k, self.d + w * other.d)


ZERO = Lin(0.0, 0.0, 0.0)


def fit(values: dict[tuple[int, int], float]) -> Lin:
    if set(values) == {(1, 0), (2, 0)}:
        k = values[(2, 0)] - values[(1, 0)]
        return Lin(values[(1, 0)] - k, k, k)
    if set(values) == {(1, 1), (2, 1), (1, 2)}:
        k, d = values[(2, 1)] - values[(1, 1)], values[(1, 2)] - values[(1, 1)]
        return Lin(values[(1, 1)] - k - d, k, d)
    raise ValueError(f"unsupported compositions {sorted(values)}")


def compositions(net: str, mixed: bool = True) -> list[Composition]:
    if net == "vco" and mixed:
        return [Composition(1, 1), Composition(2, 1), Composition(1, 2)]
    return [Composition(1, 0), Composition(2, 0)]


def fit_model(runs: dict[tuple[int, int], dict], shallow: ModelConfig, dropout: bool) -> dict:
    """Per-category linear fits from the shallow runs: fixed, live, and per block kind (saved, inputs).

    Block kind = (in-context tokens, dropout). With ``dropout`` both shallow blocks ran with dropout; the
    same block without dropout saves exactly its bytes minus the dropout masks (the op after a dropout
    saves the dropout's output instead of its input: same size), so both kinds come from one run."""
    def fit_of(get):
        return fit({c: float(get(r)) for c, r in runs.items()})

    out = {"fixed": fit_of(lambda r: r["tags"].get("fixed", 0)), "live": fit_of(lambda r: r["tags"].get("live", 0)),
           "token_masks": fit_of(lambda r: r["tags"].get("token_masks", 0)),
           "blocks": {}, "masks": {}, "inputs": {}, "ckpt_inputs": {}}
    for i in range(shallow.depth):
        ic = i >= shallow.in_context_start
        saved = fit_of(lambda r, i=i: r["tags"].get(("block", i), 0))
        masks = fit_of(lambda r, i=i: r["tags"].get(("mask", i), 0))
        kinds = [(ic, True), (ic, False)] if dropout else [(ic, False)]
        for kind in kinds:
            out["blocks"][kind] = saved if kind[1] == dropout else saved.add(masks, -1.0)
            out["masks"][kind] = masks if kind[1] else ZERO
            out["inputs"][kind] = fit_of(lambda r, i=i: r["inputs"].get(i, 0))
            out["ckpt_inputs"][kind] = fit_of(lambda r, i=i: r["tags"].get(("input", i), 0))
    return out


def full_depth(fits: dict, cfg: ModelConfig, key: str) -> Lin:
    total = ZERO
    for i in range(cfg.depth):
        kind = block_kind(cfg, i)
        if kind not in fits[key]:
            raise KeyError(f"block kind {kind} of {cfg} was not measured")
        total = total.add(fits[key][kind])
    return total


# ----------------------------------------------------------------------------------- the estimate
class Estimator:
    def __init__(self, args):
        self.args = args
        self.encoder = None           # (truncated encoder, full block count, params, buffer bytes)
        self.enc_cache: dict = {}
        self.log = []

    def say(self, msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    # ---- encoder
    def get_encoder(self):
        if self.encoder is None:
            from vco_plugin.features import DINOv2Encoder
            logging.getLogger("vco_plugin.features").setLevel(logging.ERROR)
            enc = DINOv2Encoder("random")
            n_full = len(enc.vit.blocks)
            params = sum(p.numel() for p in enc.parameters())
            bufs = sum(b.numel() * b.element_size() for b in enc.buffers())
            enc.vit.blocks = enc.vit.blocks[: self.args.encoder_blocks]
            self.encoder = {"module": enc, "blocks": n_full, "params": params, "buffer_bytes": bufs}
        return self.encoder

    def encoder_fit(self, image_size: int, autocast: bool) -> dict:
        key = (image_size, autocast)
        if key not in self.enc_cache:
            enc = self.get_encoder()
            t0 = time.time()
            runs = {(b, 0): measure_encoder(enc["module"], image_size, b, autocast) for b in (1, 2)}
            n = self.args.encoder_blocks
            block = fit({c: sum(r["tags"].get(("block", j), 0) for j in range(n)) / n for c, r in runs.items()})
            fixed = fit({c: r["tags"].get("fixed", 0) for c, r in runs.items()})
            total = fixed.add(block, enc["blocks"])
            self.enc_cache[key] = {"fixed": fixed, "block": block, "total": total}
            self.say(f"  DINOv2 hybrid-loss pass {'bf16' if autocast else 'fp32'} @{image_size}px measured "
                     f"({n} of {enc['blocks']} blocks, batch 1, 2) in {time.time() - t0:.1f} s")
        return self.enc_cache[key]

    # ---- network
    def measure(self, name: str, net: str, autocast: bool, ckpt: bool, mixed: bool = True) -> dict:
        cfg = full_config(name, net)
        shallow = shallow_config(cfg)
        torch.manual_seed(0)
        model = cuda_like(JiT(shallow, streams_for(net, cfg.in_channels), "fast"))
        dropout = has_dropout(cfg)
        if dropout:   # JiT-H/G: dropout (as CUDA runs it) in both shallow blocks
            for mod in model.blocks.modules():
                if isinstance(mod, _CudaDropout):
                    mod.p = cfg.proj_drop
        t0 = time.time()
        runs = {(c.keep, c.drop): measure_model(model, net, c, autocast, ckpt) for c in compositions(net, mixed)}
        self.say(f"  {NET_LABEL[net]}-{name[4:]} {'bf16' if autocast else 'fp32'} ckpt={int(ckpt)}: shallow depth "
                 f"{shallow.depth}{' with dropout' if dropout else ''}, (kept, dropped) images {sorted(runs)} "
                 f"measured in {time.time() - t0:.1f} s")
        return {"cfg": cfg, "shallow": shallow, "fits": fit_model(runs, shallow, dropout), "runs": runs}

    def activations(self, m: dict, net: str, batch: int, autocast: bool, ckpt: bool, counts: dict,
                    drop: int | None = None, measured_ckpt: dict | None = None) -> dict:
        """Activation bytes at ``batch`` (``drop`` dropped samples; default ceil(p * batch) for V-Co)."""
        cfg, fits = m["cfg"], m["fits"]
        if drop is None:
            drop = min(batch, max(1, math.ceil(self.args.drop_prob * batch))) if net == "vco" else 0
        keep = batch - drop
        blocks = full_depth(fits, cfg, "blocks")(keep, drop)
        largest_block = max(f(keep, drop) for kind, f in fits["blocks"].items()
                            if any(block_kind(cfg, i) == kind for i in range(cfg.depth)))
        parts = {"fixed": fits["fixed"](keep, drop), "live": fits["live"](keep, drop)}
        if ckpt:
            if measured_ckpt is not None:   # the checkpointed forward itself, measured
                cf = measured_ckpt["fits"]
                parts["fixed"] = cf["fixed"](keep, drop)
                parts["live"] = cf["live"](keep, drop)
                parts["block_inputs"] = full_depth(cf, cfg, "ckpt_inputs")(keep, drop)
            else:                           # from the non-checkpointed run: the inputs each block received
                parts["block_inputs"] = full_depth(fits, cfg, "inputs")(keep, drop)
                parts["fixed"] += fits["token_masks"](keep, drop)   # shared by the blocks: kept once
            parts["weight_cast_cache"] = 0   # Trainer: autocast(cache_enabled=False) under checkpointing
            parts["recompute_one_block"] = largest_block
        else:
            parts["blocks"] = blocks
        if net == "vco":
            parts["encoder"] = self.encoder_fit(cfg.image_size, autocast)["total"](batch, 0)
        parts["total"] = sum(parts.values())
        parts["keep"], parts["drop"] = keep, drop
        return parts


# ----------------------------------------------------------------------------------- reporting
def gib(x: float) -> float:
    return x / GIB


def run(args) -> dict:
    est = Estimator(args)
    nets = [n for n in args.nets.split(",") if n]
    models = {net: (args.models.split(",") if args.models else DEFAULT_MODELS[net]) for net in nets}
    batches = [int(b) for b in args.batches.split(",")]
    measure_ckpt = {tuple(x.split(":", 1)) for x in args.measure_ckpt.split(",") if x} if args.measure_ckpt else set()
    t_start = time.time()
    rows, details, ckpt_checks = [], [], []
    est.say("measuring saved activations (bf16 autocast, SDPA 'fast', training mode) ...")
    for net in nets:
        for name in models[net]:
            cfg = full_config(name, net)
            counts = count_model(cfg, net)
            enc = None
            if net == "vco":
                e = est.get_encoder()
                enc = {"params": e["params"], "buffer_bytes": e["buffer_bytes"]}
            res = resident_bytes(counts, enc)
            size = budget.params(cfg, streams_for(net, cfg.in_channels))   # the project's size model, checked here
            assert (size.trainable, size.frozen) == (counts["trainable"], counts["frozen"]), (name, net, size)
            m = est.measure(name, net, autocast=True, ckpt=False)
            mc = est.measure(name, net, autocast=True, ckpt=True) if (net, name) in measure_ckpt else None
            label = f"{NET_LABEL[net]}-{name[4:]}"
            # consistency: the batch-independent bytes of a block are its bf16 weight copies
            per_block_w = 2 * counts["block_linear_params"] / cfg.depth
            kinds = {str(k): {"intercept_bytes": f.c0, "per_kept_image_bytes": f.k, "per_dropped_image_bytes": f.d}
                     for k, f in m["fits"]["blocks"].items()}
            details.append({"model": label, "config": name, "net": net, "params": counts, "resident": res,
                            "shallow_depth": m["shallow"].depth, "block_kinds(in_context,dropout)": kinds,
                            "bf16_weight_bytes_per_block": per_block_w,
                            "fixed_fit": vars(m["fits"]["fixed"]), "live_fit": vars(m["fits"]["live"])})
            if mc is not None:
                for b in batches[:1]:
                    derived = est.activations(m, net, b, True, True, counts)
                    measured = est.activations(m, net, b, True, True, counts, measured_ckpt=mc)
                    keys = ("fixed", "live", "block_inputs")
                    ckpt_checks.append({"model": label, "batch": b, "precision": "bf16",
                                        "derived_gib": gib(sum(derived[k] for k in keys)),
                                        "measured_gib": gib(sum(measured[k] for k in keys))})
            for b in batches:
                for ckpt in (False, True):
                    act = est.activations(m, net, b, True, ckpt, counts, measured_ckpt=mc if ckpt else None)
                    allowance = args.allowance * act["total"]
                    total = res["total"] + act["total"] + allowance + args.context_gib * GIB
                    rows.append({"model": label, "config": name, "net": net, "batch": b, "ckpt": ckpt,
                                 "resident_gib": gib(res["total"]), "activations_gib": gib(act["total"]),
                                 "allowance_gib": gib(allowance), "context_gib": args.context_gib,
                                 "total_gib": gib(total), "total_no_ddp_gib": gib(total - res["ddp_buckets"]),
                                 "capacity_gib": args.capacity_gib, "fits": total <= args.capacity_gib * GIB,
                                 "fits_no_ddp": total - res["ddp_buckets"] <= args.capacity_gib * GIB,
                                 "resident_parts_gib": {k: gib(v) for k, v in res.items()},
                                 "activation_parts_gib": {k: (gib(v) if k not in ("keep", "drop") else v)
                                                          for k, v in act.items()},
                                 "ckpt_measured": bool(ckpt and mc is not None),
                                 # jit_core/model/budget.py's estimate of the same (what jit train/slurm use)
                                 "budget_gib": budget.training_memory(
                                     cfg, streams_for(net, cfg.in_channels), batch=b, checkpointing=ckpt,
                                     label_drop_prob=args.drop_prob,
                                     frozen=budget.Frozen(enc["params"] if enc else 0)).peak_gib})
            for ckpt in (False, True):   # the largest batch (multiple of 8) that fits
                best = 0
                for b in range(8, 4097, 8):
                    act = est.activations(m, net, b, True, ckpt, counts, measured_ckpt=mc if ckpt else None)
                    if res["total"] + act["total"] * (1 + args.allowance) + args.context_gib * GIB > args.capacity_gib * GIB:
                        break
                    best = b
                details[-1][f"max_batch_fitting_ckpt_{'on' if ckpt else 'off'}"] = best
    out = {"assumptions": {"capacity_gib": args.capacity_gib, "context_gib": args.context_gib,
                           "allowance": args.allowance, "world_size": args.world_size,
                           "ddp_buckets": args.world_size > 1, "precision": "bf16 autocast", "attention": "fast (SDPA)",
                           "optimizer": "AdamW (fused), fp32 state", "emas": 2, "label_drop_prob": args.drop_prob,
                           "encoder_blocks_measured": args.encoder_blocks},
           "rows": rows, "models": details, "ckpt_measured_vs_derived": ckpt_checks,
           "encoder_hybrid_loss_pass": [{"image_size": k[0], "precision": "bf16" if k[1] else "fp32",
                                         "blocks": est.encoder["blocks"] if est.encoder else None,
                                         **{part: vars(f) for part, f in v.items()}}
                                        for k, v in est.enc_cache.items()]}
    if args.validate:
        out["validation"] = validate(est, args)
    out["runtime_s"] = time.time() - t_start
    return out


def validate(est: Estimator, args) -> dict:
    """fp32 (no autocast) counter at B/16 batch 4 vs the peak-RSS increase of a real CPU step (RESULTS.md)."""
    est.say("validation: fp32 counter at B/16 batch 4 vs RESULTS.md CPU peak RSS ...")
    rss_rows, ckpt_rows = [], []
    keys = ("fixed", "live", "block_inputs")
    for net in ("jit", "vco"):
        cfg = full_config("JiT-B/16", net)
        counts = count_model(cfg, net)
        for mixed in ((False, True) if net == "vco" else (False,)):
            m = est.measure("JiT-B/16", net, autocast=False, ckpt=False, mixed=mixed)
            mc = est.measure("JiT-B/16", net, autocast=False, ckpt=True, mixed=mixed)
            drop = 1 if mixed else 0
            derived = est.activations(m, net, 4, False, True, counts, drop=drop)
            for ckpt in (False, True):
                act = est.activations(m, net, 4, False, ckpt, counts, drop=drop, measured_ckpt=mc if ckpt else None)
                one_block = act.get("recompute_one_block", 0)
                rss = RESULTS_CPU_RSS_GIB[(net, ckpt)]
                rss_rows.append({"model": f"{NET_LABEL[net]}-B/16", "batch": 4, "dropped": drop, "ckpt": ckpt,
                                 "counted_gib": gib(act["total"]), "one_block_term_gib": gib(one_block),
                                 "rss_step_gib": rss, "ratio_rss_to_counted": rss / gib(act["total"]),
                                 "parts_gib": {k: gib(v) for k, v in act.items() if k not in ("keep", "drop")}})
                if ckpt:
                    ckpt_rows.append({"model": f"{NET_LABEL[net]}-B/16", "batch": 4, "dropped": drop,
                                      "precision": "fp32", "derived_gib": gib(sum(derived[k] for k in keys)),
                                      "measured_gib": gib(sum(act[k] for k in keys))})
    out = {"rss": rss_rows, "ckpt_measured_vs_derived": ckpt_rows}
    if args.full_depth_check:
        out["full_depth"] = full_depth_check(est)
    return out


def full_depth_check(est: Estimator) -> list[dict]:
    """The extrapolation against a direct count on the full-depth B/16 network (fp32, batch 4, no drop;
    the encoder is measured separately either way)."""
    out = []
    for net in ("jit", "vco"):
        cfg = full_config("JiT-B/16", net)
        counts = count_model(cfg, net)
        torch.manual_seed(0)
        model = cuda_like(JiT(cfg, streams_for(net), "fast"))
        m = est.measure("JiT-B/16", net, autocast=False, ckpt=False, mixed=False)
        mc = est.measure("JiT-B/16", net, autocast=False, ckpt=True, mixed=False)
        for ckpt in (False, True):
            t0 = time.time()
            direct = measure_model(model, net, Composition(4, 0), autocast=False, ckpt=ckpt)
            total = sum(v for k, v in direct["tags"].items() if not (isinstance(k, tuple) and k[0] == "mask"))
            ext = est.activations(m, "jit", 4, False, ckpt, counts, drop=0, measured_ckpt=mc if ckpt else None)
            ext_total = ext["total"] - ext.get("recompute_one_block", 0) - ext.get("weight_cast_cache", 0)
            est.say(f"  full-depth {NET_LABEL[net]}-B/16 fp32 batch 4 ckpt={int(ckpt)} counted directly in "
                    f"{time.time() - t0:.1f} s")
            out.append({"model": f"{NET_LABEL[net]}-B/16 network", "ckpt": ckpt, "direct_gib": gib(total),
                        "extrapolated_gib": gib(ext_total)})
    return out


def print_report(out: dict) -> None:
    a = out["assumptions"]
    setup = f"DDP x{a['world_size']} (gradients as bucket views)" if a["ddp_buckets"] else "one GPU (no DDP)"
    print(f"Training memory per GPU, estimated: bf16 autocast, SDPA, fused AdamW, 2 EMAs, {setup}; "
          f"card {a['capacity_gib']:.1f} GiB (80 GB); GiB = 2^30 B")
    print(f"total = resident + activations x {1 + a['allowance']:.2f} (allocator/temporaries) + "
          f"{a['context_gib']:.1f} GiB CUDA context")
    print(f"{'config':11s} {'batch':>5s} {'ckpt':>4s} {'resident':>9s} {'activ.':>8s} {'total':>8s} "
          f"{'fits':>4s}   {'1-GPU total':>11s} {'fits':>4s} {'budget':>7s}")
    for r in out["rows"]:
        mark = "*" if r["ckpt_measured"] else " "
        print(f"{r['model']:11s} {r['batch']:5d} {('on' + mark) if r['ckpt'] else 'off ':>4s} "
              f"{r['resident_gib']:9.2f} {r['activations_gib']:8.2f} {r['total_gib']:8.2f} "
              f"{'yes' if r['fits'] else 'NO':>4s}   {r['total_no_ddp_gib']:11.2f} {'yes' if r['fits_no_ddp'] else 'NO':>4s}"
              f" {r['budget_gib']:7.2f}")
    print("(ckpt on*: checkpointed forward measured; otherwise derived from the block inputs of the plain run. "
          "1-GPU total: the same, DDP's gradients are its buckets. budget: jit_core/model/budget.py's closed form, "
          "fitted to these counts, which jit train --dry-run and jit slurm submit use)")
    print("\nlargest per-GPU batch (multiple of 8) that fits, ckpt off / on:")
    for d in out["models"]:
        p = d["params"]
        print(f"  {d['model']:11s} {d['max_batch_fitting_ckpt_off']:5d} / {d['max_batch_fitting_ckpt_on']:5d}   "
              f"(trainable {p['trainable'] / 1e6:.1f} M params; resident {d['resident']['total'] / GIB:.2f} GiB)")
    if out["ckpt_measured_vs_derived"]:
        print("\ncheckpointed forward, measured vs derived (fixed + live + block inputs):")
        for c in out["ckpt_measured_vs_derived"]:
            print(f"  {c['model']:11s} bf16 batch {c['batch']}: measured {c['measured_gib']:.3f} GiB, "
                  f"derived {c['derived_gib']:.3f} GiB")
    if "validation" in out:
        val = out["validation"]
        print("\nvalidation: fp32 counter (no autocast) vs RESULTS.md peak-RSS increase of a CPU step, B/16 batch 4:")
        for v in val["rss"]:
            extra = f" (incl. one-block term {v['one_block_term_gib']:.3f})" if v["ckpt"] else ""
            print(f"  {v['model']:10s} ckpt {'on ' if v['ckpt'] else 'off'} dropped {v['dropped']}: counted "
                  f"{v['counted_gib']:.3f} GiB{extra}, RSS +step {v['rss_step_gib']:.2f} GiB, "
                  f"RSS/counted {v['ratio_rss_to_counted']:.2f}")
        for c in val["ckpt_measured_vs_derived"]:
            print(f"  checkpointed forward {c['model']} fp32 batch 4 dropped {c['dropped']}: measured "
                  f"{c['measured_gib']:.3f} GiB, derived {c['derived_gib']:.3f} GiB (fixed + live + block inputs)")
        for f in val.get("full_depth", []):
            print(f"  full-depth {f['model']} ckpt {'on ' if f['ckpt'] else 'off'}: counted directly "
                  f"{f['direct_gib']:.3f} GiB, extrapolated from depth 2 {f['extrapolated_gib']:.3f} GiB")
    print(f"\nruntime {out['runtime_s']:.0f} s")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nets", default="jit,vco", help="comma list of jit, vco")
    ap.add_argument("--models", default=None, help="comma list of configs for every net (default: B/L/H/G-16 for "
                                                   "JiT, B/L/H-16 for V-Co)")
    ap.add_argument("--batches", default="16,32,64,128", help="per-GPU batch sizes")
    ap.add_argument("--capacity-gib", type=float, default=79.1,
                    help="usable card memory (an 80 GB H100 reports ~79.1 GiB total to torch)")
    ap.add_argument("--context-gib", type=float, default=1.0, help="CUDA context, cuBLAS workspaces, NCCL buffers")
    ap.add_argument("--allowance", type=float, default=0.15,
                    help="fraction added to activations for temporaries and allocator fragmentation")
    ap.add_argument("--world-size", type=int, default=8, help="GPUs (DDP; its buckets hold the gradients)")
    ap.add_argument("--drop-prob", type=float, default=0.1, help="label/feature drop probability (V-Co: dropped "
                                                                 "samples = ceil(p * batch))")
    ap.add_argument("--encoder-blocks", type=int, default=2, help="DINOv2 blocks kept for the measurement")
    ap.add_argument("--measure-ckpt", default="jit:JiT-B/16",
                    help="comma list of net:config whose checkpointed bf16 forward is also measured (others: "
                         "derived from the plain run); '' for none. The fp32 validation measures both B/16 nets")
    ap.add_argument("--no-validate", dest="validate", action="store_false",
                    help="skip the fp32 check against RESULTS.md's CPU peak RSS")
    ap.add_argument("--full-depth-check", action="store_true",
                    help="also count the full-depth B/16 directly (fp32, batch 4) against the extrapolation")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
    ap.add_argument("--json", help="write the rows and details to this JSON file")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    out = run(args)
    print_report(out)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
