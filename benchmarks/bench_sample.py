"""Sampling benchmark: Heun-50 with CFG, batched CFG (one forward for cond + uncond) vs two passes.

    python benchmarks/bench_sample.py --model JiT-B/16 --batch 4 --device cuda

Runs ``jit_core.diffusion.sample`` (the sampler the CLI and the evaluation use) for JiT and V-Co
at the same size, interleaving the variants in every round:

- ``official``: exact attention, two forward passes per guided evaluation (as the official code);
- ``two-pass``: fast attention (SDPA), two passes;
- ``ours``: fast attention, batched CFG (cond and uncond halves in one forward of 2B images).

bf16 autocast on CUDA for all (the official sampling runs under autocast too). V-Co's sampler
does not run the encoder (it starts from noise in both streams), so its cost is the network only.

On a slow machine ``--sample-steps`` below 50 runs fewer Heun steps; the Heun-50 time is then
extrapolated by the ratio of network image-evaluations (each guided evaluation counts 2 images,
an unguided one 1), which depends only on the grid and the guidance interval, and is labelled so.
"""
from __future__ import annotations

import sys

from common import early_threads

_THREADS = early_threads(sys.argv)

import argparse
import json
import time
from pathlib import Path

import common
import flops as F
import torch
from torch import nn

from jit_core.model import JiTOutput
from jit_core.model.compile import compile_model

VARIANTS = (("official", "exact", False), ("two-pass", "fast", False), ("ours", "fast", True))


class _Counter(nn.Module):
    """A stand-in network that counts the images it is evaluated on (for the NFE extrapolation)."""

    def __init__(self, model):
        super().__init__()
        self.streams, self.cfg, self.rows, self.calls = model.streams, model.cfg, 0, 0
        self.input_shape = model.input_shape

    def forward(self, inputs, t, y, blocked=None):
        self.rows += t.shape[0]
        self.calls += 1
        return JiTOutput({k: torch.zeros_like(v) for k, v in inputs.items()})


def image_evaluations(model, hook, config, steps: int, batched: bool, cfg: float, interval) -> tuple[int, int]:
    """(network image-evaluations per sampled image, forward calls) of ``sample`` with ``steps``."""
    from jit_core.diffusion import sample
    c = _Counter(model)
    sample(c, torch.zeros(1, dtype=torch.long), hook=hook, config=config, steps=steps, cfg=cfg, interval=interval,
           batched_cfg=batched)
    return c.rows, c.calls


def build(args, net: str, device: str):
    from jit_core.api import build_model_for
    from jit_core.plugins import Plugins
    cfg = common.run_config(args.model, batch=args.batch, device=device, net=net, encoder=args.encoder,
                            channels=args.channels, num_classes=args.num_classes)
    cfg.sample.cfg, cfg.sample.interval = args.cfg, (0.1, 1.0)
    torch.manual_seed(0)
    plugins = Plugins(cfg.plugins)
    model, plugins = build_model_for(cfg, plugins, device=device)
    model.eval()
    with torch.no_grad():   # non-zero heads, so the sampler does real arithmetic on non-trivial values
        for p in model.parameters():
            if p.ndim >= 1 and p.abs().sum() == 0:
                p.normal_(0, 0.02)
    return model, plugins, plugins.run_config    # the resolved config the plugins' run objects were made for


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="JiT-B/16")
    ap.add_argument("--batch", type=int, default=4, help="images per sampler call")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    ap.add_argument("--sample-steps", type=int, default=50, help="Heun steps (50 = Heun-50, 99 evaluations)")
    ap.add_argument("--repeats", type=int, default=3, help="measured rounds (median reported)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--cfg", type=float, default=2.9)
    ap.add_argument("--nets", default="jit,vco")
    ap.add_argument("--variants", default=",".join(v[0] for v in VARIANTS))
    ap.add_argument("--encoder", default="dinov2", choices=("dinov2", "efficientnet_lite0"),
                    help="sets V-Co's feature channels (768 / 112); the encoder is not run while sampling")
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--num-classes", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="torch.compile the blocks and heads (all variants)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    common.pin_threads(args.threads)
    from jit_core.diffusion import sample

    dev = args.device
    nets, notes = common.select_nets(args.nets)
    keep = set(args.variants.split(","))
    variants = [v for v in VARIANTS if v[0] in keep]
    hw = common.hardware(dev)
    print(f"# bench_sample {args.model} batch {args.batch} Heun-{args.sample_steps} cfg {args.cfg} on {dev}: "
          f"{hw.get('gpu', hw['cpu'])}, torch {hw['torch']}, threads {hw['torch_threads']}, load {hw.get('loadavg')}")
    models = {}
    for net in nets:
        models[net] = build(args, net, dev)
        if args.compile:
            compile_model(models[net][0])
    autocast = dev == "cuda"
    labels = torch.arange(args.batch, device=dev) % models[nets[0]][0].cfg.num_classes
    jobs = [(net, *v) for net in nets for v in variants]
    times = {j: [] for j in jobs}
    walls = {j: [] for j in jobs}
    t_run = time.time()
    for r in range(args.warmup + args.repeats):
        order = jobs[r % len(jobs):] + jobs[:r % len(jobs)]
        for job in order:
            net, _, attention, batched = job
            model, plugins, cfg = models[net]
            model.set_attention(attention)
            g = torch.Generator().manual_seed(0)
            with common.Timer(dev, torch.get_num_threads()) as timer, \
                    torch.autocast(dev, dtype=torch.bfloat16, enabled=autocast):
                x = sample(model, labels, hook=plugins.hook, config=cfg, steps=args.sample_steps, cfg=args.cfg,
                           interval=(0.1, 1.0), generator=g, batched_cfg=batched)
            assert torch.isfinite(x).all()
            if r >= args.warmup:
                times[job].append(timer.effective)
                walls[job].append(timer.wall)
        print(f"# round {r + 1}/{args.warmup + args.repeats} ({'warmup' if r < args.warmup else 'measured'}), "
              f"{time.time() - t_run:.0f} s", flush=True)

    rows = []
    print(f"\n## Sampling: {args.model}, {args.batch} images per call, Heun-{args.sample_steps}, CFG {args.cfg} "
          f"interval (0.1, 1), {dev} ({hw.get('gpu', hw['cpu'])}), torch {hw['torch']}, {hw['torch_threads']} threads"
          f"{', bf16 autocast' if autocast else ''}; median of {args.repeats} interleaved rounds")
    extrap = args.sample_steps != 50
    if dev != "cuda":
        print("## sec/call = process CPU time / threads (insensitive to the core share on a shared machine); "
              "wall for reference")
    print(f"{'net':4s} {'variant':9s} {'attn':5s} {'batched':7s} {'calls':>5s} {'img-evals':>9s} {'sec/call':>9s} "
          f"{'wall s':>8s} {'img/s':>8s} {'Heun-50 img/s':>14s}{' (extrapolated)' if extrap else ''}")
    for job in jobs:
        net, label, attention, batched = job
        model, plugins, cfg = models[net]
        rows_n, calls = image_evaluations(model, plugins.hook, cfg, args.sample_steps, batched, args.cfg, (0.1, 1.0))
        rows50, _ = image_evaluations(model, plugins.hook, cfg, 50, batched, args.cfg, (0.1, 1.0))
        med = common.median(times[job])
        ips = args.batch / med
        ips50 = ips * rows_n / rows50
        fwd = F.model_macs(model.cfg, model.streams).flops
        rows.append({"net": net, "variant": label, "attention": attention, "batched_cfg": batched,
                     "median_s": med, "times_s": times[job], "wall_median_s": common.median(walls[job]),
                     "wall_times_s": walls[job], "metric": "wall" if dev == "cuda" else "cpu_time/threads",
                     "images_per_s": ips, "heun50_images_per_s": ips50,
                     "heun50_extrapolated": extrap, "forward_calls": calls, "image_evaluations": rows_n,
                     "heun50_image_evaluations": rows50, "heun50_flops_per_image": rows50 * fwd})
        print(f"{net:4s} {label:9s} {attention:5s} {batched!s:7s} {calls:5d} {rows_n:9d} {med:9.2f} "
              f"{common.median(walls[job]):8.2f} {ips:8.4f} "
              f"{ips50:14.5f}")
    by = {(r["net"], r["variant"]): r for r in rows}
    print("\n## Ratios (time; < 1 = faster)")
    for net in nets:
        o, tp, u = by.get((net, "official")), by.get((net, "two-pass")), by.get((net, "ours"))
        if tp and u:
            print(f"  {net:4s} batched / two-pass CFG (both fast attention): {u['median_s'] / tp['median_s']:.3f}")
        if o and tp:
            print(f"  {net:4s} fast / exact attention (both two-pass):       {tp['median_s'] / o['median_s']:.3f}")
        if o and u:
            print(f"  {net:4s} ours / official:                              {u['median_s'] / o['median_s']:.3f}")
    if "jit" in nets and "vco" in nets:
        for label in ("official", "ours"):
            j, v = by.get(("jit", label)), by.get(("vco", label))
            if j and v:
                print(f"  V-Co / JiT time ({label}): {v['median_s'] / j['median_s']:.2f}x, "
                      f"FLOPs {v['heun50_flops_per_image'] / j['heun50_flops_per_image']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "hardware": hw, "rows": rows, "notes": notes},
                                              indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
