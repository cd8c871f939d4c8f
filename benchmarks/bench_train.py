"""Training-step benchmark: JiT and V-Co at the same size, in one run, with speed levers on and off.

    python benchmarks/bench_train.py --model JiT-B/16 --batch 4 --device cpu --steps 5 --warmup 1

Every figure comes from the real training step, ``jit_core.training.Trainer.train_step`` (lr set,
``training_losses`` with the plugin hooks, backward, grad-norm and finiteness checks, AdamW step,
two EMA updates). V-Co runs with its plugin enabled, so its step includes the frozen encoder work:
the target tokens, the clean-image embedding and the hybrid loss's embedding of x-hat with the
backward through the encoder (DINOv2 with random weights by default: same cost as the real ones,
which are not available offline; ``--encoder efficientnet_lite0`` uses the real offline weights).

Variants (each a set of levers; the same Trainer per network is re-configured between steps):

- ``official``: the computation of the official code: exact attention (fp32 logits by hand), no
  torch.compile, unfused AdamW (bf16 autocast on CUDA, as the official training);
- ``ours``: attention ``fast`` (SDPA, mask-free grouped attention for V-Co), fused AdamW (the
  Trainer's default on CUDA and CPU), plus torch.compile on CUDA;
- ``ours -X``: ``ours`` with one lever X turned off (attention -> exact, compile, fused, bf16);
- ``ours +ckpt``: ``ours`` with activation checkpointing (the memory lever; costs time).

Steps are interleaved: every round runs one step of every variant (in a rotated order), so load
changes on a shared machine hit all variants alike; the reported time is the median of the
measured rounds. Memory: CUDA: ``torch.cuda.max_memory_allocated`` around the steps of a variant;
CPU: a fresh subprocess per variant (``--memory probe``) reporting the peak RSS of one steady step.
"""
from __future__ import annotations

import sys

from common import early_threads

_THREADS = early_threads(sys.argv)

import argparse
import json
import os
import subprocess
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import common
import flops as F
import torch

from jit_core.model.compile import compile_model

LEVERS_CUDA = ("attention", "compile", "fused", "ckpt", "bf16")
LEVERS_CPU = ("attention", "fused", "ckpt")


@dataclass(frozen=True)
class Variant:
    net: str               # jit | vco
    attention: str = "fast"
    compile: bool = False
    fused: bool = False
    ckpt: bool = False
    bf16: bool = False
    label: str = ""

    def key(self) -> tuple:
        return (self.net, self.attention, self.compile, self.fused, self.ckpt, self.bf16)

    def settings(self) -> str:
        return (f"attn={self.attention} compile={int(self.compile)} fused={int(self.fused)} "
                f"ckpt={int(self.ckpt)} bf16={int(self.bf16)}")


def make_variants(nets, device: str, levers) -> list[Variant]:
    """official, ours, and each lever flipped (deduplicated by settings).

    The single-lever comparisons are taken around ``eager`` = ``ours`` without torch.compile (so
    that only one compiled configuration per network has to be built); the compile lever itself is
    ``ours`` vs ``eager``. Where ``ours`` is not compiled (CPU), ``eager`` is ``ours``.
    """
    cuda = device == "cuda"
    out: list[Variant] = []
    seen: dict[tuple, Variant] = {}

    def add(v: Variant):
        if v.key() in seen:   # same settings under two names: keep the first name
            return
        seen[v.key()] = v
        out.append(v)

    for net in nets:
        official = Variant(net, "exact", False, False, False, cuda, "official")
        ours = Variant(net, "fast", cuda and "compile" in levers, True, False, cuda, "ours")
        eager = replace(ours, compile=False, label="eager" if ours.compile else "ours")
        b = eager.label
        add(official)
        add(ours)
        add(eager)
        if "compile" in levers and not ours.compile:
            add(replace(ours, compile=True, label="ours +compile"))
        if "attention" in levers:
            add(replace(eager, attention="exact", label=f"{b} -fast-attn"))
        if "fused" in levers:
            add(replace(eager, fused=not eager.fused, label=f"{b} -fused" if eager.fused else f"{b} +fused"))
        if "bf16" in levers and cuda:
            add(replace(eager, bf16=False, label=f"{b} -bf16"))
        if "ckpt" in levers:
            add(replace(eager, ckpt=True, label=f"{b} +ckpt"))
    return out


# ----------------------------------------------------------------------------------- set-up
class Net:
    """One network's Trainer, its optimizers (fused / unfused) and its compiled block/head calls."""

    def __init__(self, args, net: str, data_path: str, scratch: Path):
        from jit_core.training import Trainer, param_groups
        self.net, self.args = net, args
        cfg = common.run_config(args.model, batch=args.batch, device=args.device, net=net, encoder=args.encoder,
                                encoder_weights=args.encoder_weights, channels=args.channels,
                                num_classes=args.num_classes, data_path=data_path)
        torch.manual_seed(0)
        self.trainer = Trainer(cfg, scratch / net, handle_signals=(), progress=False)
        self.device = self.trainer.device
        self.streams = self.trainer.model.streams
        tr = self.trainer
        o = cfg.optim

        def make_opt(fused: bool):
            return torch.optim.AdamW(param_groups([tr.model, tr.aux], o.weight_decay), lr=tr.base_lr,
                                     betas=tuple(o.betas), fused=True if fused else None)
        self.make_opt = make_opt
        self.optimizers: dict[bool, torch.optim.Optimizer] = {}
        self.compiled: list | None = None
        g = torch.Generator().manual_seed(1)
        mc = tr.model_config
        self.images = torch.randint(0, 256, (args.batch, mc.in_channels, mc.image_size, mc.image_size),
                                    dtype=torch.uint8, generator=g)
        if net == "vco":   # V-Co's batches are class-balanced: here one class group per rank batch
            self.labels = torch.full((args.batch,), 3 % mc.num_classes, dtype=torch.long)
        else:
            self.labels = torch.randint(0, mc.num_classes, (args.batch,), generator=g)

    def modules_to_compile(self):
        m = self.trainer.model
        return list(m.blocks) + list(m.heads.values())

    def configure(self, v: Variant) -> None:
        tr = self.trainer
        tr.model.set_attention(v.attention)
        tr.model.grad_checkpointing = v.ckpt
        tr.autocast = v.bf16 and self.device.type == "cuda"
        if v.fused not in self.optimizers:
            self.optimizers[v.fused] = self.make_opt(v.fused)
        tr.state.optimizer = self.optimizers[v.fused]
        mods = self.modules_to_compile()
        if v.compile and self.compiled is None:   # exactly what Trainer does for train.compile=true
            compile_model(self.trainer.model)
            self.compiled = [mod._compiled_call_impl for mod in mods]
        if self.compiled is not None:
            for mod, fn in zip(mods, self.compiled):
                mod._compiled_call_impl = fn if v.compile else None

    def step(self, v: Variant) -> common.Timer:
        self.configure(v)
        with common.Timer(self.device.type, torch.get_num_threads()) as t:
            out = self.trainer.train_step(self.images, self.labels)
        if not out:
            raise RuntimeError(f"{v.label}: the step was skipped (non-finite values)")
        return t

    def flops_per_image(self, encoder_flops: dict) -> dict:
        mc = self.trainer.model_config
        net = F.model_macs(mc, self.streams)
        enc = encoder_flops.get(self.net, 0)
        return {"net_fwd": net.flops, "net_train": net.train_flops, "encoder": enc, "train": net.train_flops + enc}


def encoder_flops(args, mc) -> int:
    """V-Co's encoder FLOPs per image per training step."""
    if args.encoder == "dinov2":
        return F.vco_dinov2_step_flops()["total"]
    return F.encoder_step_flops(args.encoder, mc.grid, mc.image_size, args.encoder_weights or None)["total"]


# ----------------------------------------------------------------------------------- memory probe
def probe(args) -> dict:
    """Subprocess mode: one variant, two steps; the peak RSS of the second (steady) step."""
    v = Variant(**json.loads(args.probe))
    scratch = common.scratch_dir("jit-bench-probe-")
    data = common.tiny_image_folder(scratch / "data", max(args.batch, 8))
    net = Net(args, v.net, str(data), scratch)
    net.step(v)
    rss_before = common.read_status_kib("VmRSS")
    reset = common.reset_hwm()
    net.step(v)
    hwm = common.read_status_kib("VmHWM") if reset else None
    peak = hwm if hwm is not None else common.ru_maxrss_kib()
    return {"peak_rss_gib": peak / 2 ** 20, "step_extra_gib": (peak - rss_before) / 2 ** 20 if reset else None,
            "method": "VmHWM after clear_refs" if reset else "ru_maxrss (whole process)"}


def run_probe_subprocess(args, v: Variant) -> dict:
    cmd = [sys.executable, __file__, "--model", args.model, "--batch", str(args.batch), "--device", args.device,
           "--threads", str(args.threads), "--encoder", args.encoder, "--channels", str(args.channels),
           "--probe", json.dumps({k: val for k, val in asdict(v).items()})]
    if args.num_classes:
        cmd += ["--num-classes", str(args.num_classes)]
    if args.encoder_weights:
        cmd += ["--encoder-weights", args.encoder_weights]
    # fixed mmap threshold: freed activations go back to the OS, so RSS follows the live tensors
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.probe_timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": "timeout"}
    for line in res.stdout.splitlines()[::-1]:
        if line.startswith("PROBE "):
            return json.loads(line[6:])
    return {"error": (res.stderr.strip().splitlines() or ["no output"])[-1][:200]}


# ----------------------------------------------------------------------------------- main
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="JiT-B/16")
    ap.add_argument("--batch", type=int, default=4, help="images per step (per GPU)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    ap.add_argument("--steps", type=int, default=5, help="measured steps per variant (median reported; 0: memory only)")
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured steps per variant first")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="peak for MFU (CUDA default: the GPU's dense bf16 peak; CPU: measured fp32 GEMM rate)")
    ap.add_argument("--nets", default="jit,vco", help="comma list of jit, vco")
    ap.add_argument("--levers", default=None,
                    help=f"comma list of levers to flip (default CUDA: {','.join(LEVERS_CUDA)}; CPU: "
                         f"{','.join(LEVERS_CPU)}; add compile/fused on CPU explicitly)")
    ap.add_argument("--variants", default=None, help="only these variant labels (comma list), e.g. 'official,ours'")
    ap.add_argument("--encoder", default="dinov2", choices=("dinov2", "efficientnet_lite0"))
    ap.add_argument("--encoder-weights", default=None,
                    help="V-Co encoder weights (default: random for dinov2, the packaged real ones for effnet)")
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--num-classes", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--memory", default="auto", choices=("auto", "probe", "off"),
                    help="auto: CUDA in-process, CPU probe subprocesses; off: none")
    ap.add_argument("--probe-timeout", type=int, default=900)
    ap.add_argument("--json", default=None, help="write all figures to this JSON file")
    ap.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.encoder_weights is None:
        args.encoder_weights = common.default_encoder_weights(args.encoder)
    if args.levers is None:
        args.levers = LEVERS_CUDA if args.device == "cuda" else LEVERS_CPU
    else:
        args.levers = tuple(x for x in args.levers.split(",") if x)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    common.pin_threads(args.threads)
    if args.probe:
        print("PROBE " + json.dumps(probe(args)), flush=True)
        return 0
    nets, notes = common.select_nets(args.nets)
    variants = make_variants(nets, args.device, args.levers)
    if args.variants:
        keep = set(args.variants.split(","))
        variants = [v for v in variants if v.label in keep]
    hw = common.hardware(args.device)
    print(f"# bench_train {args.model} batch {args.batch} on {args.device}: "
          f"{hw.get('gpu', hw['cpu'])}, torch {hw['torch']}, threads {hw['torch_threads']}, load {hw.get('loadavg')}")
    for n in notes:
        print(f"# NOTE {n}")

    # memory probes first (CPU), while this process holds no model
    memory: dict[tuple, dict] = {}
    if args.device == "cpu" and args.memory in ("auto", "probe"):
        for v in variants:
            t0 = time.time()
            memory[v.key()] = run_probe_subprocess(args, v)
            print(f"# memory probe {v.net:4s} {v.label:16s} {memory[v.key()]}  ({time.time() - t0:.0f} s)", flush=True)

    if args.steps == 0:   # memory only
        print("\n## Memory only (--steps 0): peak RSS GiB of a steady step (+ its increase over the RSS before it)")
        for v in variants:
            print(f"{v.net:4s} {v.label:16s} {v.settings():48s} {_mem(memory.get(v.key()))}")
        if args.json:
            Path(args.json).write_text(json.dumps({"hardware": hw, "memory": [
                {**asdict(v), "memory": memory.get(v.key())} for v in variants]}, indent=2, default=str))
        return 0
    scratch = common.scratch_dir("jit-bench-train-")
    data = common.tiny_image_folder(scratch / "data", max(args.batch, 8))
    built: dict[str, Net] = {}
    t_setup = time.time()
    for net in nets:
        built[net] = Net(args, net, str(data), scratch)
    mc = built[nets[0]].trainer.model_config
    enc = {"vco": encoder_flops(args, mc)} if "vco" in built else {}
    print(f"# set-up {time.time() - t_setup:.0f} s; variants: {len(variants)}", flush=True)

    gemm = [common.gemm_tflops(args.device)]
    times: dict[tuple, list] = {v.key(): [] for v in variants}
    walls: dict[tuple, list] = {v.key(): [] for v in variants}
    mem_cuda: dict[tuple, dict] = {}
    errors: dict[tuple, str] = {}
    rounds = args.warmup + args.steps
    t_run = time.time()
    for r in range(rounds):
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        for v in order:
            if v.key() in errors:
                continue
            net = built[v.net]
            if args.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
            try:
                timer = net.step(v)
            except (torch.cuda.OutOfMemoryError, RuntimeError) as e:   # OOM: report it, go on with the others
                if args.device != "cuda" or "out of memory" not in str(e).lower():
                    raise
                errors[v.key()] = f"OOM: {str(e).splitlines()[0][:120]}"
                net.trainer.optimizer.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                continue
            if r >= args.warmup:
                times[v.key()].append(timer.effective)
                walls[v.key()].append(timer.wall)
            if args.device == "cuda":
                peak = torch.cuda.max_memory_allocated()
                m = mem_cuda.setdefault(v.key(), {"peak_alloc_gib": 0.0, "step_extra_gib": 0.0})
                m["peak_alloc_gib"] = max(m["peak_alloc_gib"], peak / 2 ** 30)
                m["step_extra_gib"] = max(m["step_extra_gib"], (peak - before) / 2 ** 30)
        print(f"# round {r + 1}/{rounds} done ({'warmup' if r < args.warmup else 'measured'}), "
              f"{time.time() - t_run:.0f} s", flush=True)
    gemm.append(common.gemm_tflops(args.device))
    peak = args.peak_tflops or common.default_peak_tflops(args.device)
    peak_src = "given" if args.peak_tflops else ("GPU dense bf16 spec" if peak else "measured GEMM")
    gemm_rate = common.median(gemm)
    if peak is None:
        peak = gemm_rate

    rows = []
    for v in variants:
        ts = times[v.key()]
        med = common.median(ts)
        f = built[v.net].flops_per_image(enc)
        ips = args.batch / med if ts else float("nan")
        row = {"net": v.net, "variant": v.label, **asdict(v), "median_s": med, "times_s": ts,
               "wall_median_s": common.median(walls[v.key()]), "wall_times_s": walls[v.key()],
               "metric": "wall" if args.device == "cuda" else "cpu_time/threads",
               "images_per_s": ips, "train_flops_per_image": f["train"], "net_train_flops_per_image": f["net_train"],
               "encoder_flops_per_image": f["encoder"], "achieved_tflops": f["train"] * ips / 1e12,
               "mfu": f["train"] * ips / 1e12 / peak if peak else None,
               "memory": mem_cuda.get(v.key()) or memory.get(v.key()), "error": errors.get(v.key())}
        rows.append(row)
    report(args, rows, hw, peak, peak_src, gemm_rate, notes)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": {k: v for k, v in vars(args).items()}, "hardware": hw,
                                               "peak_tflops": peak, "peak_source": peak_src, "gemm_tflops": gemm,
                                               "rows": rows, "notes": notes}, indent=2, default=str))
    return 0


def _mem(m) -> str:
    if not m:
        return "n/a"
    if "error" in m:
        return f"err:{m['error'][:30]}"
    if "peak_alloc_gib" in m:
        return f"{m['peak_alloc_gib']:.2f} (+{m['step_extra_gib']:.2f})"
    extra = f" (+{m['step_extra_gib']:.2f})" if m.get("step_extra_gib") is not None else ""
    return f"{m['peak_rss_gib']:.2f}{extra}"


def report(args, rows, hw, peak, peak_src, gemm_rate, notes) -> None:
    dev = args.device
    print(f"\n## Train step: {args.model}, batch {args.batch}, {dev} ({hw.get('gpu', hw['cpu'])}), torch {hw['torch']}, "
          f"{hw['torch_threads']} threads; median of {args.steps} interleaved steps after {args.warmup} warm-up")
    print(f"## FLOPs: analytic (benchmarks/flops.py), training = 3 x forward + V-Co encoder ({args.encoder}); "
          f"MFU vs {peak:.3f} TFLOPS ({peak_src}); measured GEMM {gemm_rate:.3f} TFLOPS")
    mem_label = "peak GiB (+step)" if dev == "cuda" else "peak RSS GiB (+step)"
    if dev != "cuda":
        print("## step ms = process CPU time / threads (insensitive to the core share on a shared machine); "
              "wall ms for reference")
    print(f"{'net':4s} {'variant':16s} {'settings':48s} {'step ms':>9s} {'wall ms':>9s} {'img/s':>8s} "
          f"{'GFLOP/img':>9s} {'TFLOPS':>7s} {'MFU':>6s}  {mem_label}")
    for r in rows:
        v = Variant(**{k: r[k] for k in ("net", "attention", "compile", "fused", "ckpt", "bf16")})
        if r["error"]:
            print(f"{r['net']:4s} {r['variant']:16s} {v.settings():48s} {r['error']}")
            continue
        print(f"{r['net']:4s} {r['variant']:16s} {v.settings():48s} {common.fmt_ms(r['median_s'])} "
              f"{common.fmt_ms(r['wall_median_s'])} {r['images_per_s']:8.3f} "
              f"{r['train_flops_per_image'] / 1e9:9.1f} {r['achieved_tflops']:7.3f} "
              f"{100 * r['mfu']:5.1f}%  {_mem(r['memory'])}")
    by = {(r["net"], r["variant"]): r for r in rows}
    keyed = {(r["net"], r["attention"], r["compile"], r["fused"], r["ckpt"], r["bf16"]): r for r in rows}
    flips = {"fast-attn": ("attention", "fast", "exact"), "compile": ("compile", True, False),
             "fused": ("fused", True, False), "bf16": ("bf16", True, False), "ckpt": ("ckpt", True, False)}
    print("\n## Levers, each vs its off state (others as in 'eager' = ours without compile; compile: ours vs eager)"
          "\n## time on / time off, < 1 = faster with the lever")
    for net in ("jit", "vco"):
        ours = by.get((net, "ours"))
        if not ours or ours["error"]:
            continue
        eager = by.get((net, "eager")) or ours
        for name, (field, on, off) in flips.items():
            base = {k: (ours if name == "compile" else eager)[k] for k in ("attention", "compile", "fused", "ckpt", "bf16")}
            on_s, off_s = dict(base, **{field: on}), dict(base, **{field: off})
            k_on = (net, *[on_s[k] for k in ("attention", "compile", "fused", "ckpt", "bf16")])
            k_off = (net, *[off_s[k] for k in ("attention", "compile", "fused", "ckpt", "bf16")])
            r_on, r_off = keyed.get(k_on), keyed.get(k_off)
            if not r_on or not r_off or r_on["error"] or r_off["error"]:
                continue
            ratio = r_on["median_s"] / r_off["median_s"]
            line = (f"  {net:4s} {name:10s} on/off {ratio:6.3f}   ({1000 * r_on['median_s']:.0f} ms vs "
                    f"{1000 * r_off['median_s']:.0f} ms)")
            if r_on.get("memory") and r_off.get("memory"):
                line += f"   memory {_mem(r_on['memory'])} vs {_mem(r_off['memory'])}"
            print(line)
    print("\n## Target: ours <= 0.8 x official (exact attention, no compile, unfused AdamW)")
    for net in ("jit", "vco"):
        o, u = by.get((net, "official")), by.get((net, "ours"))
        if o and u and not o["error"] and not u["error"]:
            ratio = u["median_s"] / o["median_s"]
            print(f"  {net:4s} ours/official = {ratio:.3f}  {'MET' if ratio <= 0.8 else 'MISSED'} "
                  f"({1000 * u['median_s']:.0f} ms vs {1000 * o['median_s']:.0f} ms)")
        c = by.get((net, "ours +compile"))   # the optional CPU compile lever
        if o and c and not o["error"] and not c["error"]:
            ratio = c["median_s"] / o["median_s"]
            print(f"  {net:4s} (ours +compile)/official = {ratio:.3f}  {'MET' if ratio <= 0.8 else 'MISSED'} "
                  f"({1000 * c['median_s']:.0f} ms vs {1000 * o['median_s']:.0f} ms)")
    print("\n## V-Co / JiT (same variant): step-time ratio vs training-FLOP ratio")
    for lab in ("official", "ours", "eager", "ours +ckpt", "eager +ckpt", "ours +compile"):
        j, v = by.get(("jit", lab)), by.get(("vco", lab))
        if j and v and not j["error"] and not v["error"]:
            flop_ratio = v["train_flops_per_image"] / j["train_flops_per_image"]
            print(f"  {lab:12s} time {v['median_s'] / j['median_s']:5.2f}x   FLOPs {flop_ratio:5.2f}x "
                  f"(network only {v['net_train_flops_per_image'] / j['net_train_flops_per_image']:.2f}x)")
    for n in notes:
        print(f"NOTE {n}")


if __name__ == "__main__":
    raise SystemExit(main())
