"""V-Co's two encoder speed levers, each on vs off, in one run: the real training step at the tiny config.

    python benchmarks/bench_vco_levers.py --steps 5 --warmup 1            # JiT-S/4, Fashion-MNIST 32 px, batch 64

Variants (one ``jit_core.training.Trainer`` each, same seed, fed the same real batches):

- ``jit``: the JiT baseline (no V-Co), for reference: what the network alone costs;
- ``vco``: V-Co as the paper computes it (both levers off): target tokens, the clean-image embedding f+
  and the embedding of x-hat (with the backward through the encoder), every step;
- ``vco +shared-pass``: ``vco.shared_encoder_pass=true`` (one encoder pass on the clean images gives the
  target tokens and f+);
- ``vco +feature-cache``: ``vco.feature_cache=DIR`` (target tokens looked up by image content; f+ and the
  x-hat embedding still run the encoder).

The batches are real training batches of the ``vco-tiny`` run (class-balanced, random flips), taken once
and reused round after round. Without ``--cache``, the feature cache is built (``build_cache``, as
``jit vco cache-features`` does) over exactly those batches' images and their flips, which is what a
lookup needs; ``--cache DIR`` uses a full cache (``jit vco cache-features --data fashion_mnist
--encoder efficientnet_lite0 --image-size 32 --grid 8 --out DIR``; its lookups cost the same: a binary
search over the sorted keys, then memory-mapped rows).

Rounds are interleaved (one step of every variant per round, order rotated); the step time is the median
over the measured rounds: CPU time / threads on CPU (wall time beside it), wall time on CUDA.
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
import torch

VARIANTS = ("jit", "vco", "vco +shared-pass", "vco +feature-cache")


_PLUGINS = []


def _vco_plugins():
    """The V-Co plugin (its presets registered), loaded once."""
    if not _PLUGINS:
        from jit_core.config import register_preset
        from jit_core.plugins import Plugins
        pl = Plugins(enabled=["vco"])
        for presets in pl.hook.jit_presets():
            for name, factory in (presets or {}).items():
                register_preset(name, factory)
        _PLUGINS.append(pl)
    return _PLUGINS[0]


def make_config(args, variant: str, stats: str | None, cache: str | None):
    from jit_core.config import get_preset, typed_plugin_options

    pl = _vco_plugins()
    cfg = get_preset("tiny" if variant == "jit" else "vco-tiny")
    cfg.model = args.model
    cfg.optim.batch_size = args.batch
    cfg.train.device = args.device
    cfg.train.max_steps, cfg.train.log_every, cfg.train.ckpt_every = 10 ** 9, 10 ** 9, 10 ** 9
    if variant != "jit":
        vco = cfg.plugin_options["vco"]
        if stats:
            vco["stats"] = stats
        if variant == "vco +shared-pass":
            vco["shared_encoder_pass"] = True
        elif variant == "vco +feature-cache":
            vco["feature_cache"] = cache
        typed_plugin_options(cfg, pl.option_schemas())   # the options check now (the trainer resolves them)
    return cfg


def real_batches(args, scratch: Path, n: int):
    """``n`` real training batches (uint8 images, labels) of the vco-tiny run (class-balanced, flipped)."""
    from jit_core.training import Trainer
    tr = Trainer(make_config(args, "vco", None, None), scratch / "batches", handle_signals=(), progress=False)
    out = []
    for images, labels in tr.batches.iterate(0):
        out.append((images.clone(), labels.clone()))
        if len(out) == n:
            break
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="JiT-S/4")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    ap.add_argument("--steps", type=int, default=5, help="measured rounds (median reported)")
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured rounds first")
    ap.add_argument("--batches", type=int, default=4, help="distinct real batches, cycled")
    ap.add_argument("--cache", default=None, help="a feature cache built by `jit vco cache-features` (default: "
                                                  "built over the benchmark's batches)")
    ap.add_argument("--calib-images", type=int, default=512, help="images for the feature statistics")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma list of " + ", ".join(VARIANTS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    common.pin_threads(args.threads)
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        ap.error(f"unknown variants {sorted(unknown)}")

    from jit_core.data import build_dataset, to_model_range
    from jit_core.training import Trainer
    from vco_plugin.calibration import compute_stats, save_stats
    from vco_plugin.feature_cache import build_cache
    from vco_plugin.features import build_encoder

    hw = common.hardware(args.device)
    print(f"# bench_vco_levers {args.model} batch {args.batch} on {args.device}: {hw.get('gpu', hw['cpu'])}, "
          f"torch {hw['torch']}, threads {hw['torch_threads']}, load {hw.get('loadavg')}", flush=True)
    scratch = common.scratch_dir("jit-bench-vco-levers-")
    t0 = time.time()
    batches = real_batches(args, scratch, args.batches)
    device = torch.device(args.device)
    enc = build_encoder("efficientnet_lite0", None, device)
    cfg0 = make_config(args, "vco", None, None)
    grid = cfg0.data.image_size // int(args.model.rsplit("/", 1)[1])
    # feature statistics once, shared by every V-Co variant (as `jit vco calibrate`)
    ds = build_dataset(cfg0.data, train=True)
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:args.calib_images].tolist()
    calib = torch.stack([ds[i][0] for i in idx])
    stats = compute_stats(enc, (to_model_range(calib[i:i + 256]).to(device) for i in range(0, len(calib), 256)), grid,
                          progress=False)
    stats_path = scratch / "stats.safetensors"
    save_stats(stats, stats_path)
    cache = args.cache
    if cache is None and "vco +feature-cache" in variants:
        cache = str(scratch / "cache")
        build_cache(enc, (to_model_range(b) for b, _ in batches), grid, cache, meta={"dataset": "benchmark batches"},
                    progress=False)
    trainers = {}
    for v in variants:
        torch.manual_seed(0)
        trainers[v] = Trainer(make_config(args, v, str(stats_path), cache), scratch / v.replace(" ", "_"),
                              handle_signals=(), progress=False)
    print(f"# set-up {time.time() - t0:.0f} s; {len(batches)} real batches of {args.batch}; cache "
          f"{cache if args.cache else 'built over them'}", flush=True)

    times: dict[str, list] = {v: [] for v in variants}
    walls: dict[str, list] = {v: [] for v in variants}
    rounds = args.warmup + args.steps
    t_run = time.time()
    for r in range(rounds):
        images, labels = batches[r % len(batches)]
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        for v in order:
            with common.Timer(device.type, torch.get_num_threads()) as t:
                out = trainers[v].train_step(images, labels)
            if not out:
                raise RuntimeError(f"{v}: the step was skipped (non-finite values)")
            if r >= args.warmup:
                times[v].append(t.effective)
                walls[v].append(t.wall)
        print(f"# round {r + 1}/{rounds} ({'warmup' if r < args.warmup else 'measured'}), {time.time() - t_run:.0f} s",
              flush=True)

    metric = "CPU time / threads" if device.type == "cpu" else "wall"
    print(f"\n## V-Co encoder levers: {args.model}, batch {args.batch}, {args.device} ({hw.get('gpu', hw['cpu'])}), "
          f"{hw['torch_threads']} threads; median of {args.steps} interleaved steps after {args.warmup} warm-up "
          f"(step ms = {metric})")
    print(f"{'variant':22s} {'step ms':>9s} {'wall ms':>9s} {'img/s':>8s} {'vs vco':>7s} {'vs jit':>7s}")
    med = {v: common.median(times[v]) for v in variants}
    rows = []
    for v in variants:
        vs_vco = med[v] / med["vco"] if "vco" in med else float("nan")
        vs_jit = med[v] / med["jit"] if "jit" in med else float("nan")
        print(f"{v:22s} {common.fmt_ms(med[v])} {common.fmt_ms(common.median(walls[v]))} "
              f"{args.batch / med[v]:8.1f} {vs_vco:7.3f} {vs_jit:7.3f}")
        rows.append({"variant": v, "median_s": med[v], "times_s": times[v], "wall_times_s": walls[v],
                     "ratio_vs_vco": vs_vco, "ratio_vs_jit": vs_jit})
    if "jit" in med and "vco" in med:
        enc_cost = med["vco"] - med["jit"]
        print(f"\n## V-Co extra over JiT (encoder + feature stream): {1000 * enc_cost:.0f} ms/step")
        for v in variants:
            if v.startswith("vco +"):
                saved = med["vco"] - med[v]
                print(f"  {v:22s} saves {1000 * saved:6.0f} ms/step ({100 * saved / med['vco']:5.1f} % of the V-Co step, "
                      f"{100 * saved / enc_cost if enc_cost > 0 else float('nan'):5.1f} % of V-Co's extra)")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "hardware": hw, "rows": rows}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
