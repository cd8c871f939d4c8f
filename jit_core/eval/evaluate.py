"""``jit evaluate``: generate per the evaluation protocol, compute metrics, record full provenance.

Generation follows shared/spec/evaluation.md §1: N images, class-major labels (image n has class
floor(n C / N), i.e. N / C per class), rank r at step i covers ids ``i b world + r b ... + b - 1``; the
initial noise of image n depends only on (seed, n), so results do not depend on batch size or world
size. Samples are lossless PNGs ``00000.png ...`` or one ``.npz`` (uint8 NHWC, key ``arr_0``, the ADM
evaluator's input). Metrics ("auto"): Fashion-MNIST/digits runs -> the classifier Fréchet distance
(:mod:`jit_core.eval.classifier`, not FID); other runs with reference statistics or images -> FID/IS
(:mod:`jit_core.eval.fid`, + P/R with a reference folder). Every result is written to
``<run>/eval/<name>.json`` with the provenance list of the protocol's §6.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from jit_core.diffusion import guidance_active, guidance_scales

log = logging.getLogger(__name__)
CLASSIFIER_DATASETS = ("fashion_mnist", "digits")
JIT_INTERVAL = (0.1, 1.0)


# ----------------------------------------------------------------------------------- protocol pieces
def class_major_labels(n: int, num_classes: int) -> torch.Tensor:
    """Label of image i = floor(i * C / n): n / C consecutive images per class (50 per class for 50k / 1000)."""
    return (torch.arange(n, dtype=torch.int64) * num_classes) // n


def rank_blocks(n: int, batch: int, rank: int = 0, world: int = 1) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` id ranges of this rank: step i covers ``i b world + r b`` up to ``+ b`` (ids < n)."""
    out, i = [], 0
    while i * batch * world < n:
        lo = i * batch * world + rank * batch
        if lo < n:
            out.append((lo, min(lo + batch, n)))
        i += 1
    return out


def _dist() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _num(x: float) -> str:
    return f"{x:g}"


def eval_name(step: int, ema: str, n: int, method: str, steps: int, cfg: float | str, seed: int,
              interval: Sequence[float]) -> str:
    name = f"step{step:08d}-{ema}-n{n}-{method}{steps}-cfg{cfg if isinstance(cfg, str) else _num(cfg)}-seed{seed}"
    if tuple(interval) != JIT_INTERVAL:
        name += f"-int{_num(interval[0])}-{_num(interval[1])}"
    return name


def metric_kind(run, metrics: str, ref_stats, ref_dir) -> str:
    """Which metric family applies: ``classifier``, ``inception`` or ``none``."""
    if metrics not in ("auto", "classifier", "fid", "inception", "none"):
        raise ValueError(f"unknown metrics {metrics!r}: use auto, fid, classifier or none")
    if metrics == "auto":
        if run.config.data.name in CLASSIFIER_DATASETS:
            return "classifier"
        return "inception" if (ref_stats or ref_dir) else "none"
    return "inception" if metrics == "fid" else metrics


def primary_metric(kind: str) -> str | None:
    return {"inception": "fid", "classifier": "fd_classifier"}.get(kind)


def compute_metrics(kind: str, images: torch.Tensor | None, sample_dir: Path | None, labels: torch.Tensor, run, *,
                    ref_stats=None, ref_dir=None, inception_weights=None, prc: bool = False, device=None,
                    progress: bool = False) -> dict:
    """Metric values (+ ``provenance``) of one set of samples; module-level so tests can replace it."""
    if kind == "classifier":
        from jit_core.eval.classifier import fmnist_metrics
        return fmnist_metrics(images, labels, run.config.data.name, device=device or "cpu")
    if kind == "inception":
        from jit_core.eval.fid import fidelity_metrics
        source = images if images is not None else sample_dir
        return fidelity_metrics(source, ref_stats=ref_stats, ref_dir=ref_dir, inception_weights=inception_weights,
                                isc=True, fid=bool(ref_stats or ref_dir), prc=prc and ref_dir is not None,
                                device=device, progress=progress)
    return {}


# ----------------------------------------------------------------------------------- provenance
def _weights_hash(checkpoint: Path, ema: str) -> tuple[str, str | None]:
    from jit_core.eval.fid import file_sha256
    checkpoint = Path(checkpoint)
    if checkpoint.is_file():
        return str(checkpoint), file_sha256(checkpoint)
    f = checkpoint / f"{ema}.safetensors"
    manifest = checkpoint / "manifest.json"
    if manifest.is_file():  # load_run verified these hashes while loading
        entry = json.loads(manifest.read_text()).get("files", {}).get(f.name)
        if entry and entry.get("sha256"):
            return str(f), entry["sha256"]
    return str(f), file_sha256(f) if f.is_file() else None


def _last_logged(run_dir: Path) -> dict:
    path = Path(run_dir) / "metrics.jsonl"
    last = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                last = json.loads(line) or last
            except ValueError:
                continue
    return last


def _trainer_world_size(checkpoint: Path) -> int | None:
    """Ranks that trained the checkpoint (``trainer.pt``, memory-mapped: the optimizer state is not read)."""
    path = Path(checkpoint) / "trainer.pt"
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("world_size"))
    except Exception:  # noqa: BLE001 -- provenance only: an official import or an older checkpoint lacks it
        return None


def _velocity_evaluations(method: str, steps: int, interval) -> tuple[int, int]:
    """(velocity evaluations, how many of them guided) for the sampler grid t_i = i / steps."""
    grid = torch.linspace(0, 1, steps + 1, dtype=torch.float32).tolist()
    times = []
    for i in range(steps):
        times.append(grid[i])
        if method == "heun" and i < steps - 1:
            times.append(grid[i + 1])
    return len(times), sum(bool(guidance_active(t, tuple(interval))) for t in times)


def _unconditional_form(run) -> dict:
    from jit_core.diffusion import unconditional_form
    from jit_core.hookcalls import call_each
    drop = torch.ones(1, dtype=torch.bool)
    impls = [name for name, _ in call_each(run.plugins.hook.jit_null_branch, drop=drop, streams=run.model.streams,
                                           config=run.config)]
    u = unconditional_form(run.plugins.hook, torch.zeros(1, dtype=torch.int64), drop, run.model.streams, run.config,
                           run.model.cfg.num_classes)
    names = [s.name for s in run.model.streams]
    blocked = None
    if u.blocked is not None:
        blocked = [f"{names[q]} queries -/-> {names[k]} keys" for q in range(len(names)) for k in range(len(names))
                   if bool(u.blocked[0, q, k])]
    nulls = sorted(u.null_inputs)
    return {"null_label": int(u.labels[0]), "attention_blocked": blocked, "null_inputs": nulls or None,
            "hooks_in_call_order": impls,
            "description": "null class label" + (" + attention mask (" + "; ".join(blocked) + ")" if blocked else "")
            + (" + null input (" + ", ".join(nulls) + ")" if nulls else "")}


def _versions() -> dict:
    import importlib.metadata as md
    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    for dist_name in ("timm", "torch-fidelity", "jit-vco", "scipy"):
        try:
            out[dist_name] = md.version(dist_name)
        except md.PackageNotFoundError:
            out[dist_name] = None
    return out


def provenance(run, *, cfg: float, steps: int, method: str, interval, num_images: int, seed: int, batch_size: int,
               world_size: int, device, save: str, sample_path: str | None, swept: bool) -> dict:
    """Everything §6 of the protocol asks to record next to a number (metric-side items are added later)."""
    c = run.config
    ema_decay = {"ema1": c.optim.ema_decays[0], "ema2": c.optim.ema_decays[1]}.get(run.ema)
    weights_file, weights_sha = _weights_hash(run.checkpoint, run.ema)
    evals, guided = _velocity_evaluations(method, steps, interval)
    scales = guidance_scales(run.plugins.hook, run.model.streams, cfg, c)
    device = torch.device(device)
    autocast = device.type == "cuda" and c.train.precision == "bf16"
    last = _last_logged(run.run_dir)
    mc, world = run.model.cfg, _trainer_world_size(run.checkpoint)
    return {
        "run_dir": str(Path(run.run_dir).resolve()),
        "checkpoint": {"path": str(run.checkpoint), "step": run.step, "epoch": last.get("epoch"),
                       "weights": run.ema, "ema_decay": ema_decay, "weights_file": weights_file,
                       "weights_sha256": weights_sha},
        "model": {"name": c.model, "trainable_params": run.model.num_params(), "image_size": mc.image_size,
                  "channels": mc.in_channels, "num_classes": mc.num_classes,
                  "streams": [s.name for s in run.model.streams],
                  "plugins": {n: i.version for n, i in run.plugins.infos.items()}},
        "training": {"batch_size_per_rank": c.optim.batch_size, "world_size": world,
                     "global_batch": c.optim.batch_size * world if world else None, "lr_last_logged": last.get("lr"),
                     "wall_time_s": last.get("time"), "dataset": c.data.name},
        "sampler": {"method": method, "steps": steps, "grid_points": steps + 1, "velocity_evaluations": evals,
                    "final_step": "Heun + final Euler" if method == "heun" else "Euler",
                    "t_eps": c.diffusion.t_eps, "t_eps_rule": "velocity divides by max(1 - t, t_eps)",
                    "precision": "bf16 autocast" if autocast else "fp32",
                    "attention": run.model.attention_path, "device": str(device), "batch_size": batch_size},
        "guidance": {"cfg": cfg, "scale_per_stream": scales, "interval": list(interval),
                     "interval_ends": "open: guided iff lo < t < hi (lo == 0: t < hi)",
                     "guided_evaluations": guided if any(w != 1.0 for w in scales.values()) else 0,
                     "all_streams_unguided": all(w == 1.0 for w in scales.values()),
                     "unconditional": _unconditional_form(run)},
        "samples": {"num_images": num_images, "label_scheme": "class-major: label(n) = floor(n * C / N), N/C per class",
                    "seed": seed, "noise": "image n: torch.Generator seeded seed * 1000003 + n (initial_noise)",
                    "quantisation": "round(clip(255 (x + 1) / 2, 0, 255)), uint8", "format": save,
                    "path": sample_path, "world_size": world_size},
        "selection": {"cfg_chosen_on_these_samples": swept, "ema_chosen_on_these_samples": False},
        "versions": _versions(),
    }


# ----------------------------------------------------------------------------------- generation
def _generate(run, labels: torch.Tensor, blocks, *, cfg, steps, method, interval, seed, batch_size,
              folder: Path | None, keep: bool, progress: bool) -> dict[int, torch.Tensor]:
    """Generate this rank's blocks; write PNGs as they come; keep ``{start: uint8 block}`` if asked."""
    from tqdm import tqdm

    from jit_core.images import save_pngs
    from jit_core.runs import loading
    kept = {}
    bar = tqdm(total=sum(b - a for a, b in blocks), desc=f"sampling cfg={cfg:g}", unit="img", disable=not progress)
    for lo, hi in blocks:
        imgs = loading.generate(run, labels[lo:hi], cfg=cfg, steps=steps, method=method, interval=interval, seed=seed,
                            batch_size=batch_size, start_index=lo)
        if folder is not None:
            save_pngs(imgs, folder, start_index=lo)
        if keep:
            kept[lo] = imgs
        bar.update(hi - lo)
    bar.close()
    return kept


def _gather(kept: dict[int, torch.Tensor], out: Path, name: str, rank: int, world: int) -> torch.Tensor | None:
    """All ranks' kept blocks, in id order, on rank 0 (through shard files on the shared output folder)."""
    if world > 1:
        shard = out / f".{name}.rank{rank}.pt"
        torch.save(kept, shard)
        dist.barrier()
        if rank != 0:
            return None
        kept = {}
        for r in range(world):
            part = out / f".{name}.rank{r}.pt"
            kept.update(torch.load(part, weights_only=True))
            part.unlink()
    return torch.cat([kept[k] for k in sorted(kept)]) if kept else None


def evaluate_run(run_dir, num_images: int | None = None, cfg: float | Sequence[float] | None = None,
                 steps: int | None = None, method: str | None = None, interval: Sequence[float] | None = None,
                 ema: str = "ema1", seed: int = 0, batch_size: int | None = None, out=None, ref_stats=None,
                 inception_weights=None, save: str = "png", metrics: str = "auto", ref_dir=None, prc: bool = True,
                 device=None, checkpoint=None, progress: bool = True, trust_plugins=()) -> dict:
    """Generate and evaluate a run; ``cfg`` may be a list (a sweep, best by the primary metric).

    Returns the result record (a sweep: ``{"results": [...], "best": record, ...}``), also written to
    ``<out or run/eval>/<name>.json``. Under torch.distributed every rank generates its share; rank 0
    writes files and computes metrics, and the result is broadcast to every rank.
    """
    from jit_core.distributed import resolve_device
    from jit_core.runs import loading
    if save not in ("png", "npz", "none"):
        raise ValueError(f"unknown save format {save!r}: use png, npz or none")
    rank, world = _dist()
    device = torch.device(device) if device else resolve_device("auto", int(os.environ.get("LOCAL_RANK", "0")))
    t_start = time.perf_counter()
    run = loading.load_run(run_dir, ema=ema, device=device, checkpoint=checkpoint, trust_plugins=trust_plugins)
    s = run.config.sample
    n = int(num_images or s.num_images)
    steps, method = int(steps or s.steps), method or s.method
    interval = tuple(float(x) for x in (interval or s.interval))
    batch_size = int(batch_size or s.batch_size)
    cfgs = [float(c) for c in (cfg if isinstance(cfg, (list, tuple)) else [s.cfg if cfg is None else cfg])]
    kind = metric_kind(run, metrics, ref_stats, ref_dir)
    if kind == "inception":                 # missing or damaged weights fail now, not after sampling
        from jit_core.eval.fid import check_inception_weights
        check_inception_weights(inception_weights)
    if kind == "none" and metrics == "auto" and rank == 0:
        log.warning("no metric for a %s run without --ref-stats / --ref-dir: generating samples only", run.config.data.name)
    out = Path(out) if out else Path(run_dir) / "eval"
    out.mkdir(parents=True, exist_ok=True)  # every rank: shards and PNGs go there (a shared file system)
    labels = class_major_labels(n, run.model.cfg.num_classes)
    blocks = rank_blocks(n, batch_size, rank, world)
    swept = len(cfgs) > 1
    records = []
    for w in cfgs:
        name = eval_name(run.step, ema, n, method, steps, w, seed, interval)
        folder = out / name if save == "png" else None
        keep = save == "npz" or kind == "classifier" or (kind == "inception" and save == "none")
        t0 = time.perf_counter()
        kept = _generate(run, labels, blocks, cfg=w, steps=steps, method=method, interval=interval, seed=seed,
                         batch_size=batch_size, folder=folder, keep=keep, progress=progress and rank == 0)
        images = _gather(kept, out, name, rank, world) if keep else None
        if world > 1 and not keep:
            dist.barrier()
        t_gen = time.perf_counter() - t0
        record, error = None, None
        if rank == 0:
            try:
                record = _evaluate_samples(run, kind, images, folder, labels, out, name, save, t_gen, world=world,
                                           cfg=w, steps=steps, method=method, interval=interval, num_images=n,
                                           seed=seed, batch_size=batch_size, device=device, swept=swept,
                                           ref_stats=ref_stats, ref_dir=ref_dir, inception_weights=inception_weights,
                                           prc=prc, progress=progress)
            except Exception as e:  # noqa: BLE001 -- re-raised below, on every rank
                error = e
        _raise_everywhere(error, world)
        records.append(record)
    result = records[0]
    if rank == 0:
        if swept:
            name = eval_name(run.step, ema, n, method, steps, "sweep", seed, interval)
            result = _sweep_summary(records, kind, out / f"{name}.json")
        result["wall_time_total_s"] = round(time.perf_counter() - t_start, 2)
        _write_json(result["json"], result)
        run.plugins.send_result(run.config, run.run_dir, result)   # TensorBoard, W&B, plugins' trackers
    if world > 1:
        box = [result]
        dist.broadcast_object_list(box, src=0)
        result = box[0]
    return result


def _raise_everywhere(error: Exception | None, world: int) -> None:
    """Re-raise rank 0's error on every rank (instead of leaving the others waiting in a collective)."""
    if world > 1:
        box = [None if error is None else f"{type(error).__name__}: {error}"]
        dist.broadcast_object_list(box, src=0)
        if box[0] is not None and error is None:
            raise RuntimeError(f"evaluation failed on rank 0: {box[0]}")
    if error is not None:
        raise error


def _evaluate_samples(run, kind, images, folder, labels, out: Path, name: str, save: str, t_gen: float, *,
                      world: int, ref_stats, ref_dir, inception_weights, prc, progress, **settings) -> dict:
    """Rank 0: save the npz, compute the metrics, assemble and write the result record."""
    sample_path = str(folder) if folder else None
    if save == "npz":
        sample_path = str(out / f"{name}.npz")
        np.savez(sample_path, arr_0=images.permute(0, 2, 3, 1).contiguous().numpy())
    t1 = time.perf_counter()
    values = compute_metrics(kind, images, folder, labels, run, ref_stats=ref_stats, ref_dir=ref_dir,
                             inception_weights=inception_weights, prc=prc, device=settings["device"],
                             progress=progress)
    t_metrics = time.perf_counter() - t1
    metric_prov = values.pop("provenance", None)
    record = {"name": name, "metrics": values, "metric_kind": kind, "primary_metric": primary_metric(kind),
              **provenance(run, world_size=world, save=save, sample_path=sample_path, **settings),
              "metric_provenance": metric_prov, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "wall_time_s": {"generation": round(t_gen, 2), "metrics": round(t_metrics, 2)},
              "json": str(out / f"{name}.json")}
    _write_json(record["json"], record)
    return record


def _sweep_summary(records: list[dict], kind: str, path: Path) -> dict:
    key = primary_metric(kind)
    scored = [r for r in records if key and r["metrics"].get(key) is not None]
    best = min(scored, key=lambda r: r["metrics"][key]) if scored else None
    summary = {"kind": "cfg_sweep", "primary_metric": key, "cfgs": [r["guidance"]["cfg"] for r in records],
               "values": [r["metrics"].get(key) if key else None for r in records],
               "best_cfg": best["guidance"]["cfg"] if best else None, "best": best, "results": records,
               "note": "the best cfg was chosen on these same samples (protocol §4: report it on fresh samples)",
               "json": str(path)}
    _write_json(path, summary)
    return summary


def _write_json(path, obj) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=_json_default))
    os.replace(tmp, path)


def _json_default(o: Any):
    if isinstance(o, (np.generic,)):
        return o.item()
    if isinstance(o, (Path, torch.device)):
        return str(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ----------------------------------------------------------------------------------- CLI
def format_table(result: dict) -> str:
    records = result["results"] if result.get("kind") == "cfg_sweep" else [result]
    keys = [k for k in ("fid", "inception_score", "precision", "recall", "fd_classifier", "fd_classifier_real_train",
                        "classifier_accuracy") if any(r["metrics"].get(k) is not None for r in records)]
    lines = [" ".join([f"{'cfg':>6}"] + [f"{k:>14}" for k in keys])]
    for r in records:
        vals = [r["metrics"].get(k) for k in keys]
        mark = " *" if result.get("best") is r else ""
        lines.append(" ".join([f"{r['guidance']['cfg']:>6g}"] + [f"{v:>14.4f}" if v is not None else f"{'-':>14}"
                                                                  for v in vals]) + mark)
    return "\n".join(lines)


def _floats(text: str | None) -> list[float] | None:
    return [float(x) for x in text.split(",") if x.strip()] if text else None


def evaluate_command():
    """The ``jit evaluate`` click command."""
    import click

    from jit_core.runs.loading import trust_options

    @click.command("evaluate")
    @click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
    @click.option("--num-images", type=int, help="Images to generate (default: the run's sample.num_images).")
    @click.option("--cfg", help="CFG scale, or a comma-separated sweep: 1.0,1.4,1.8,2.2 (default: the run's).")
    @click.option("--steps", type=int, help="Sampler steps (default: the run's).")
    @click.option("--method", type=click.Choice(["heun", "euler"]))
    @click.option("--interval", help="CFG interval lo,hi (open ends), e.g. 0.1,1.0.")
    @click.option("--ema", default="ema1", show_default=True, type=click.Choice(["ema1", "ema2", "model"]))
    @click.option("--seed", default=0, show_default=True)
    @click.option("--batch-size", type=int, help="Per-rank generation batch (default: the run's).")
    @click.option("--out", type=click.Path(file_okay=False), help="Evaluation folder (default RUN/eval).")
    @click.option("--ref-stats", type=click.Path(exists=True, dir_okay=False), help="Reference npz (mu, sigma) for FID.")
    @click.option("--ref-dir", type=click.Path(exists=True, file_okay=False), help="Reference images for FID / P-R.")
    @click.option("--inception-weights", type=click.Path(exists=True, dir_okay=False),
                  help="Local torch-fidelity Inception weights (needed offline).")
    @click.option("--save", default="png", show_default=True, type=click.Choice(["png", "npz", "none"]))
    @click.option("--metrics", default="auto", show_default=True,
                  type=click.Choice(["auto", "fid", "classifier", "none"]))
    @click.option("--checkpoint", type=click.Path(exists=True), help="A checkpoint other than the latest.")
    @click.option("--device", default="auto", show_default=True)
    @trust_options
    def cmd(run_dir, num_images, cfg, steps, method, interval, ema, seed, batch_size, out, ref_stats, ref_dir,
            inception_weights, save, metrics, checkpoint, device, trust_plugins):
        """Generate samples from RUN_DIR per the evaluation protocol and compute metrics with provenance."""
        from jit_core.distributed import init_distributed
        from jit_core.eval.fid import InceptionWeightsError
        info = init_distributed(device)
        cfgs = _floats(cfg)
        try:
            result = evaluate_run(run_dir, num_images, cfgs if cfgs and len(cfgs) > 1 else (cfgs[0] if cfgs else None),
                                  steps, method, _floats(interval), ema, seed, batch_size, out, ref_stats,
                                  inception_weights, save, metrics, ref_dir=ref_dir, device=info.device,
                                  checkpoint=checkpoint, trust_plugins=trust_plugins)
        except InceptionWeightsError as e:
            raise click.ClickException(str(e)) from None
        if info.is_main:
            click.echo(format_table(result))
            if result.get("kind") == "cfg_sweep" and result.get("best_cfg") is not None:
                click.echo(f"best cfg {result['best_cfg']:g} by {result['primary_metric']} (chosen on these samples)")
            click.echo(f"results: {result['json']}")

    return cmd
