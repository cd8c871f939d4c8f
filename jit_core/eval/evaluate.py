"""``jit evaluate``: generate per the evaluation protocol, compute metrics, record full provenance.

What to do is one :class:`~jit_core.eval.evalspec.EvalSpec` (``evaluate_run(run_dir, spec)``); each point of its
weights x CFG grid is resolved into a :class:`~jit_core.eval.evalspec.GridPoint` and sampled through the one
sampling call (:func:`jit_core.diffusion.generate.generate_images`).

Generation follows docs/official-code.md#evaluation (item 1): N images, class-major labels (image n has class
floor(n C / N), i.e. N / C per class), rank r at step i covers ids ``i b world + r b ... + b - 1``; the
initial noise of image n depends only on (seed, n), so results do not depend on batch size or world
size. Samples are lossless PNGs ``00000.png ...`` or one ``.npz`` (uint8 NHWC, key ``arr_0``, the ADM
evaluator's input). Metrics ("auto"): Fashion-MNIST/digits runs -> the classifier Fréchet distance
(:mod:`jit_core.eval.classifier`, not FID); other runs with reference statistics or images -> FID/IS
(:mod:`jit_core.eval.fid`, + P/R with a reference folder). Every result is written to
``<run>/eval/<name>.json`` with the provenance list of that protocol (item 5), and 95 % bootstrap intervals over
the samples (``intervals``, :mod:`jit_core.eval.stats`). ``--ema a,b --cfg x,y`` evaluates the grid of
weights x cfg on the same seeds, one JSON per point (resumable) plus a summary table and a metric-vs-CFG figure
(``<name>.png`` / ``.pdf``, :func:`jit_core.eval.plots.plot_metric_vs_cfg`; docs/evaluation.md).
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.distributed as dist

from jit_core import durable
from jit_core.diffusion.generate import SampleSpec

from .evalspec import WEIGHTS, EvalSpec, GridPoint, as_list
from .provenance import point_settings, provenance
from .results import finished, format_table, primary_metric, save_record, sweep_markdown, sweep_summary

log = logging.getLogger(__name__)
CLASSIFIER_DATASETS = ("fashion_mnist", "digits")
JIT_INTERVAL = (0.1, 1.0)
DEFAULT_BOOTSTRAP = {"classifier": 1000, "inception": 200}   # resamples for the per-run 95 % intervals


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


def compute_metrics(kind: str, images: torch.Tensor | None, sample_dir: Path | None, labels: torch.Tensor, run, *,
                    ref_stats=None, ref_dir=None, inception_weights=None, prc: bool = False, device=None,
                    progress: bool = False, bootstrap: int = 0) -> dict:
    """Metric values (+ ``provenance``, ``intervals``, ``interval_method``) of one set of samples;
    module-level so tests can replace it. ``bootstrap``: resamples for the intervals (0: none)."""
    if kind == "classifier":
        from jit_core.eval.classifier import fmnist_metrics
        if images is None:
            raise ValueError("the classifier metrics read the images in memory: generate them with keep=True")
        return fmnist_metrics(images, labels, run.config.data.name, device=device or "cpu", n_boot=bootstrap)
    if kind == "inception":
        from jit_core.eval.fid import fidelity_metrics
        source = images if images is not None else sample_dir
        if source is None:
            raise ValueError("the inception metrics need the images or the folder they were saved to")
        return fidelity_metrics(source, ref_stats=ref_stats, ref_dir=ref_dir, inception_weights=inception_weights,
                                isc=True, fid=bool(ref_stats or ref_dir), prc=prc and ref_dir is not None,
                                device=device, progress=progress, n_boot=bootstrap)
    return {}


# ----------------------------------------------------------------------------------- generation
def generate_blocks(run, labels: torch.Tensor, blocks, spec: SampleSpec, *, folder: Path | None, keep: bool,
                    progress: bool) -> dict[int, torch.Tensor]:
    """Generate this rank's ``blocks`` of ids (:func:`rank_blocks`) with :func:`jit_core.runs.loading.generate`;
    write PNGs to ``folder`` as they come; return ``{start: uint8 block}`` if ``keep``."""
    from jit_core.images import save_pngs
    from jit_core.progress import Progress
    from jit_core.runs import loading
    kept = {}
    # a bar on a terminal; in a log, a line per block and at least every 30 s
    bar = Progress(sum(b - a for a, b in blocks), f"generating ({run.ema}, cfg {spec.cfg:g})", "img", enabled=progress)
    for lo, hi in blocks:
        imgs = loading.generate(run, labels[lo:hi], spec, start_index=lo)
        if folder is not None:
            save_pngs(imgs, folder, start_index=lo)
        if keep:
            kept[lo] = imgs
        bar.update(hi - lo)
    bar.close(final_line=True)
    return kept


def _gather(kept: dict[int, torch.Tensor], out: Path, name: str, rank: int, world: int) -> torch.Tensor | None:
    """All ranks' kept blocks, in id order, on rank 0 (through shard files on the shared output folder)."""
    if world > 1:
        shard = out / f".{name}.rank{rank}.pt"
        durable.save_torch(shard, kept)
        dist.barrier()
        if rank != 0:
            return None
        kept = {}
        for r in range(world):
            part = out / f".{name}.rank{r}.pt"
            kept.update(torch.load(part, weights_only=True))
            part.unlink()
    return torch.cat([kept[k] for k in sorted(kept)]) if kept else None


def evaluate_run(run_dir, spec: EvalSpec | None = None, **fields) -> dict:
    """Generate and evaluate a run as ``spec`` says (:class:`EvalSpec`; ``fields``: some of its fields, taking
    precedence over ``spec``: ``evaluate_run(run, num_images=100, cfg=2.0)``), on the grid ``ema`` x ``cfg``
    (best by the primary metric).

    One point: returns its result record. Several points: ``{"kind": "cfg_sweep" | "ema_cfg_grid",
    "results": [...], "best": record, ...}`` (one EMA: a CFG sweep, as before). Every point is written to
    ``<out or run/eval>/<name>.json``; with several points and ``resume``, a point whose JSON exists with the
    same settings (:func:`point_settings`) is read back instead of recomputed. ``bootstrap``: resamples for
    the per-run 95 % intervals (default :data:`DEFAULT_BOOTSTRAP` by metric; 0: none). ``resume_single``: read
    back a single point's result the same way (:func:`evaluate_all_checkpoints`). Under
    torch.distributed every rank generates its share; rank 0 writes files and computes metrics, and the
    result is broadcast to every rank.
    """
    from jit_core.distributed import resolve_device
    from jit_core.runs import loading
    spec = replace(spec or EvalSpec(), **fields)
    if spec.save not in ("png", "npz", "none"):
        raise ValueError(f"unknown save format {spec.save!r}: use png, npz or none")
    emas, cfgs = spec.emas(), spec.cfgs()
    save, metrics, ref_stats, ref_dir, bootstrap = spec.save, spec.metrics, spec.ref_stats, spec.ref_dir, spec.bootstrap
    rank, world = _dist()
    device = torch.device(spec.device) if spec.device else resolve_device("auto", int(os.environ.get("LOCAL_RANK", "0")))
    t_start = time.perf_counter()
    grid = len(emas) > 1 or (cfgs is not None and len(cfgs) > 1)
    run_dir = Path(run_dir)
    # every file goes under the folder being evaluated (or --out), by a name built here: never a path read from
    # a saved result (a copied run must not rewrite the original's results)
    out = Path(spec.out) if spec.out else run_dir / "eval"
    records: list[dict | None] = []      # rank 0's are every point's record; the other ranks' None
    kind: str | None = None
    for e in emas:
        run = loading.load_run(run_dir, ema=e, device=device, checkpoint=spec.checkpoint,
                               trust_plugins=spec.trust_plugins)
        s = run.config.sample
        n = int(spec.num_images or s.num_images)
        steps, method = int(spec.steps or s.steps), spec.method or s.method
        interval = tuple(float(x) for x in (spec.interval or s.interval))
        batch_size = int(spec.batch_size or s.batch_size)
        cfgs = cfgs or [float(s.cfg)]
        if kind is None:
            kind = metric_kind(run, metrics, ref_stats, ref_dir)
            if kind == "inception":                 # missing or damaged weights fail now, not after sampling
                from jit_core.eval.fid import check_inception_weights
                check_inception_weights(spec.inception_weights)
            if kind == "none" and metrics == "auto" and rank == 0:
                log.warning("no metric for a %s run without --ref-stats / --ref-dir: generating samples only",
                            run.config.data.name)
            n_boot = DEFAULT_BOOTSTRAP.get(kind, 0) if bootstrap is None else int(bootstrap)
            if bootstrap is None and kind == "inception" and device.type == "cpu" and n > 2048:
                # each FID resample is a 2048 x 2048 covariance + eigendecomposition: ~10 s per resample on CPU
                # at 4k samples (measured), far more at 50k; a GPU does it in a fraction of a second
                log.warning("no FID/IS interval by default on CPU with %d samples (pass --bootstrap B to force)", n)
                n_boot = 0
            durable.ensure_dir(out)  # every rank: shards and PNGs go there (a shared file system)
            labels = class_major_labels(n, run.model.cfg.num_classes)
            blocks = rank_blocks(n, batch_size, rank, world)
        for w in cfgs:
            name = eval_name(run.step, e, n, method, steps, w, spec.seed, interval)
            wanted = point_settings(run, name, kind, n_boot, save, ref_stats, ref_dir, spec.prc)
            point = GridPoint(name=name, kind=kind, cfg=w, steps=steps, method=method, interval=interval,
                              num_images=n, seed=spec.seed, batch_size=batch_size, device=device, world=world,
                              out=out, run_dir=run_dir, swept=len(cfgs) > 1, ema_swept=len(emas) > 1,
                              bootstrap=n_boot, settings_key=wanted)
            resumable = (grid or spec.resume_single) and spec.resume
            done = finished(out / f"{name}.json", wanted, world) if resumable else None
            if done is not None:
                if rank == 0:
                    log.info("%s: finished earlier with the same settings, not recomputed", name)
                    done["selection"] = {"cfg_chosen_on_these_samples": len(cfgs) > 1,
                                         "ema_chosen_on_these_samples": len(emas) > 1}
                    done["resumed"] = True
                    done["json"] = str(out / f"{name}.json")   # where it is, whatever the file says
                    save_record(out, name, done, run_dir)
                records.append(done)
                continue
            folder = out / name if save == "png" else None
            keep = save == "npz" or kind == "classifier" or (kind == "inception" and save == "none") or \
                run.plugins.has_eval_metrics()           # plugins' metrics (jit_eval_metrics) read the images
            t0 = time.perf_counter()
            sampling = SampleSpec(cfg=w, steps=steps, method=method, interval=interval, seed=spec.seed,
                                  batch_size=batch_size)
            kept = generate_blocks(run, labels, blocks, sampling, folder=folder, keep=keep,
                                   progress=spec.progress and rank == 0)
            images = _gather(kept, out, name, rank, world) if keep else None
            if world > 1 and not keep:
                dist.barrier()
            t_gen = time.perf_counter() - t0
            record, error = None, None
            if rank == 0:
                if spec.progress and kind != "none":    # the metric phase, so a log shows what the wait is for
                    log.info("%s: %d images generated in %.0f s; computing the %s metrics", name, n, t_gen, kind)
                try:
                    record = _evaluate_samples(run, spec, point, images, folder, labels, t_gen)
                except Exception as exc:  # noqa: BLE001 -- re-raised below, on every rank
                    error = exc
            _raise_everywhere(error, world)
            records.append(record)
    if kind is None:
        raise ValueError("nothing to evaluate: no EMA selected (pass --ema with one or more of the run's EMAs)")
    result = records[0]
    if rank == 0:
        computed = [r for r in records if r is not None]   # rank 0 holds them all
        result = computed[0]
        name = result["name"]
        if grid:
            first = computed[0]
            name = eval_name(first["checkpoint"]["step"], "-".join(emas), n, method, steps, "sweep", spec.seed, interval)
            result = sweep_summary(computed, kind, out / f"{name}.json")
        result["wall_time_total_s"] = round(time.perf_counter() - t_start, 2)
        save_record(out, name, result, run_dir)
        if grid:
            durable.write_text(out / f"{name}.md", sweep_markdown(result))
            from jit_core.eval.plots import plot_metric_vs_cfg  # matplotlib only where a grid is drawn
            plot_metric_vs_cfg(result, out / name)
        run.plugins.send_result(run.config, run.run_dir, result)   # TensorBoard, W&B, plugins' trackers
    if world > 1:
        box = [result]
        dist.broadcast_object_list(box, src=0)
        result = box[0]
    if result is None:
        raise RuntimeError("rank 0 broadcast no evaluation result")
    return result


def evaluate_all_checkpoints(run_dir, spec: EvalSpec | None = None, **fields) -> list[dict]:
    """:func:`evaluate_run` on every complete checkpoint of ``run_dir``, oldest first (``--all-checkpoints``).

    Resumable: a checkpoint whose result JSON exists with the same settings is read back, not recomputed."""
    from jit_core.runs.checkpoint import list_checkpoints
    spec = replace(spec or EvalSpec(), **fields)
    if spec.checkpoint is not None:
        raise ValueError("--all-checkpoints evaluates every checkpoint: leave out --checkpoint")
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        raise ValueError(f"{run_dir} has no complete checkpoint in checkpoints/: train it first")
    return [evaluate_run(run_dir, spec, checkpoint=c, resume_single=True) for c in checkpoints]


def _raise_everywhere(error: Exception | None, world: int) -> None:
    """Re-raise rank 0's error on every rank (instead of leaving the others waiting in a collective)."""
    if world > 1:
        box = [None if error is None else f"{type(error).__name__}: {error}"]
        dist.broadcast_object_list(box, src=0)
        if box[0] is not None and error is None:
            raise RuntimeError(f"evaluation failed on rank 0: {box[0]}")
    if error is not None:
        raise error


def _evaluate_samples(run, spec: EvalSpec, point: GridPoint, images, folder, labels, t_gen: float) -> dict:
    """Rank 0: save the npz, compute the metrics, assemble and write the result record of ``point``."""
    out, name = point.out, point.name
    sample_path = str(folder) if folder else None
    if spec.save == "npz":
        sample_path = str(durable.save_npz(out / f"{name}.npz", arr_0=images.permute(0, 2, 3, 1).contiguous().numpy()))
    t1 = time.perf_counter()
    values = compute_metrics(point.kind, images, folder, labels, run, ref_stats=spec.ref_stats, ref_dir=spec.ref_dir,
                             inception_weights=spec.inception_weights, prc=spec.prc, device=point.device,
                             progress=spec.progress, bootstrap=point.bootstrap)
    if images is not None:       # the plugins' metrics (jit_eval_metrics) beside the core's
        values.update(run.plugins.eval_metrics(run.config, images, labels, taken=values))
    t_metrics = time.perf_counter() - t1
    metric_prov = values.pop("provenance", None)
    intervals, method = values.pop("intervals", None) or {}, values.pop("interval_method", None)
    record = {"name": name, "metrics": values, "metric_kind": point.kind, "primary_metric": primary_metric(point.kind),
              "intervals": intervals,
              "interval_method": method or "no interval (no metric, or bootstrap 0)", "bootstrap": point.bootstrap,
              "settings_key": point.settings_key,
              **provenance(run, cfg=point.cfg, steps=point.steps, method=point.method, interval=point.interval,
                           num_images=point.num_images, seed=point.seed, batch_size=point.batch_size,
                           world_size=point.world, device=point.device, save=spec.save, sample_path=sample_path,
                           swept=point.swept, ema_swept=point.ema_swept),
              "metric_provenance": metric_prov, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "wall_time_s": {"generation": round(t_gen, 2), "metrics": round(t_metrics, 2)},
              "json": str(out / f"{name}.json")}
    save_record(out, name, record, point.run_dir)
    return record


# ----------------------------------------------------------------------------------- CLI
def _floats(text: str | None) -> list[float] | None:
    return [float(x) for x in text.split(",") if x.strip()] if text else None


def evaluate_command():
    """The ``jit evaluate`` click command."""
    import click

    from jit_core.clioptions import trust_options

    @click.command("evaluate")
    @click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
    @click.option("--num-images", type=int, help="Images to generate (default: the run's sample.num_images).")
    @click.option("--cfg", help="CFG scale, or a comma-separated sweep: 1.0,1.4,1.8,2.2 (default: the run's).")
    @click.option("--steps", type=int, help="Sampler steps (default: the run's).")
    @click.option("--method", type=click.Choice(["heun", "euler"]))
    @click.option("--interval", help="CFG interval lo,hi (open ends), e.g. 0.1,1.0.")
    @click.option("--ema", default="ema1", show_default=True,
                  help="Weights: ema1, ema2 or model; comma-separated for an EMA x CFG grid: ema1,ema2.")
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
    @click.option("--all-checkpoints", is_flag=True,
                  help="Evaluate every saved checkpoint (resumable) and draw the metric against the training step.")
    @click.option("--device", default="auto", show_default=True)
    @click.option("--bootstrap", type=click.IntRange(min=0),
                  help="Resamples for the per-run 95 % intervals (default 1000 for the classifier metric, 200 for "
                       "FID/IS; 0: none).")
    @click.option("--resume/--no-resume", default=True, show_default=True,
                  help="In a grid, keep points whose result JSON exists with the same settings.")
    @trust_options
    def cmd(run_dir, num_images, cfg, steps, method, interval, ema, seed, batch_size, out, ref_stats, ref_dir,
            inception_weights, save, metrics, checkpoint, all_checkpoints, device, bootstrap, resume, trust_plugins):
        """Generate samples from RUN_DIR per the evaluation protocol and compute metrics with provenance."""
        from jit_core.distributed import init_distributed
        from jit_core.eval.fid import InceptionWeightsError
        info = init_distributed(device)
        try:
            cfgs = _floats(cfg)
            if any(not 0 <= c < float("inf") for c in cfgs or ()):     # nan fails both comparisons
                raise ValueError(f"{cfg}: each CFG scale must be >= 0 and finite (1 = unguided)")
            emas = as_list(ema, str.strip)
            bad = [e for e in emas if e not in WEIGHTS]
            if bad or not emas:
                raise click.BadParameter(f"{', '.join(bad) or ema!r}: use {', '.join(WEIGHTS)}, comma-separated",
                                         param_hint="--ema")
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--cfg") from None
        if all_checkpoints and checkpoint:
            raise click.BadParameter("evaluates every checkpoint: leave out --checkpoint", param_hint="--all-checkpoints")
        try:
            spec = EvalSpec(num_images=num_images, cfg=cfgs if cfgs and len(cfgs) > 1 else (cfgs[0] if cfgs else None),
                            steps=steps, method=method, interval=_floats(interval),
                            ema=emas if len(emas) > 1 else emas[0], seed=seed, batch_size=batch_size, out=out,
                            ref_stats=ref_stats, inception_weights=inception_weights, save=save, metrics=metrics,
                            ref_dir=ref_dir, device=info.device, trust_plugins=trust_plugins, bootstrap=bootstrap,
                            resume=resume)
            if all_checkpoints:
                from jit_core.eval.over_steps import step_figure
                try:
                    results = evaluate_all_checkpoints(run_dir, spec)
                except ValueError as e:     # no checkpoint: a one-line error naming the fix
                    raise click.ClickException(str(e)) from None
                if info.is_main:
                    for result in results:
                        click.echo(format_table(result))
                    folder = Path(out) if out else Path(run_dir) / "eval"
                    figure = step_figure(run_dir, results, folder)
                    click.echo(f"metric vs step: {figure}" if figure else "metric vs step: no metric to draw")
                    from jit_core.eval.sheets import steps_sheet
                    sheet = steps_sheet(run_dir, folder / "samples_over_steps.png", seed=seed, ema=emas[0],
                                        cfg=cfgs[0] if cfgs else None, device=info.device, trust_plugins=trust_plugins)
                    click.echo(f"samples over steps: {sheet}")
                return
            result = evaluate_run(run_dir, spec, checkpoint=checkpoint)
        except InceptionWeightsError as e:
            raise click.ClickException(str(e)) from None
        if info.is_main:
            click.echo(format_table(result))
            if result.get("kind") in ("cfg_sweep", "ema_cfg_grid") and result.get("best_cfg") is not None:
                click.echo(f"best: {result['best_ema']} cfg {result['best_cfg']:g} by {result['primary_metric']} "
                           "(chosen on these samples)")
            click.echo(f"results: {result['json']}")
            if result.get("kind") in ("cfg_sweep", "ema_cfg_grid"):
                from jit_core.eval.sheets import cfg_strip_of_run
                strip = cfg_strip_of_run(run_dir, result["cfgs"], Path(result["json"]).with_suffix(".strip.png"),
                                         ema=result.get("best_ema") or emas[0], seed=seed, device=info.device,
                                         checkpoint=checkpoint, trust_plugins=trust_plugins)
                click.echo(f"CFG strip: {strip}")

    return cmd
