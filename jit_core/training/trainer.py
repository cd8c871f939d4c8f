"""The training loop: AdamW, warmup, two EMAs, bf16 autocast, DDP, checkpoints, exact resume.

``train(config, run_dir)`` trains (or resumes) one run. A run folder holds ``config.json``,
``metrics.jsonl`` (one JSON object per logged step), ``checkpoints/`` and ``samples/``. Resuming
restores model, EMAs, optimizer, step, RNG states and the data position, so that an interrupted
and resumed CPU run ends bit-identical to an uninterrupted one. Rank 0 sends the config, every log line
and every sample grid to the log sinks of ``jit_log_sinks`` (TensorBoard, W&B, ...) while it trains.
The pieces: :mod:`.build` (what is trained), :mod:`.checkpointing` (save / resume), :mod:`.run_dir`,
:mod:`.train_state` (what a checkpoint holds, as one object), :mod:`.signals`, :mod:`.metrics_log`, :mod:`.nonfinite`,
:mod:`.state` (EMAs, RNGs), :mod:`.optim`, :mod:`.batches`,
:mod:`.accumulate` (train.grad_accum), :mod:`.devices`, :mod:`.memory_plan`.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from jit_core.config import Config, ConfigError, evolve
from jit_core.data import to_model_range
from jit_core.distributed import DistInfo, any_rank, barrier, init_distributed
from jit_core.logsinks import LogSinks
from jit_core.model import JiT
from jit_core.model.compile import compile_model
from jit_core.plugins import resolve_run
from jit_core.progress import Progress
from jit_core.runs import checkpoint as ckpt
from jit_core.runs.network import build_network
from jit_core.training import checkpointing
from jit_core.training.accumulate import VirtualRanks, accumulate_gradients
from jit_core.training.build import make_objective, make_optimizer
from jit_core.training.devices import cuda_switches, describe_device
from jit_core.training.metrics_log import MetricsLog, last_step, roll_back
from jit_core.training.nonfinite import NonFiniteLossError, find_nonfinite
from jit_core.training.optim import lr_at, peak_lr
from jit_core.training.run_dir import allowed_keys, lock_run_dir, record_changes, write_config
from jit_core.training.signals import STOP_SIGNALS, StopSignals
from jit_core.training.startup import discard_unused_run_dir, setup_plugins, start_checks
from jit_core.training.state import EMA
from jit_core.training.train_state import TrainState

log = logging.getLogger("jit")


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    status: str              # "finished" | "interrupted"
    losses: dict[str, float]
    checkpoint: Optional[Path]
    stop_signal: Optional[int] = None   # the signal that interrupted the run (the CLI exits 130 after Ctrl-C)


class Trainer:
    """One run's state; ``Trainer(config, run_dir).fit()``."""

    def __init__(self, config: Config, run_dir: str | Path | None = None, *, extra_plugins=(),
                 handle_signals: Iterable[int] = STOP_SIGNALS, progress: bool = True, dist: DistInfo | None = None,
                 allow_changes: Iterable[str] = ()):
        """``allow_changes``: config keys a resume may change (``jit train --resume --allow-change KEY``), recorded
        in ``history.jsonl``. From here until :meth:`fit` returns, the trainer holds the run folder's lock."""
        run_dir = run_dir or config.run_dir
        if run_dir is None:
            raise ConfigError("no run folder: pass --run-dir DIR (or set run_dir in the config)")
        self.run_dir = Path(run_dir)
        self.progress = progress
        # the run's one resolve step (options and config checked before any work): from here the config is frozen
        self.config, self.plugins = resolve_run(evolve(config, run_dir=str(self.run_dir)), extra_plugins)
        config = self.config
        self.allow_changes = allowed_keys(config, allow_changes)
        self.dist = dist or init_distributed(config.train.device)
        self.device = self.dist.device
        # every start-up check (what --dry-run runs); every rank reads the folder before any rank writes it
        startup = start_checks(config, self.run_dir, self.dist, plugins=self.plugins, allow_changes=self.allow_changes)
        barrier(self.dist)
        new_folder = not self.run_dir.exists()
        self.lock = lock_run_dir(config, self.run_dir, self.dist, self.allow_changes)  # before anything is written
        try:
            self._build(startup, handle_signals)
        except BaseException:
            self.lock.release()
            if new_folder and self.dist.is_main:
                discard_unused_run_dir(self.run_dir)   # a failed start leaves no files behind
            raise

    def _build(self, startup, handle_signals) -> None:
        config = self.config
        self.dataset, self.model_config, self.batches = startup.dataset, startup.model_config, startup.batches
        self.has_checkpoint = ckpt.latest_checkpoint(self.run_dir) is not None
        self.streams = startup.streams or None   # built and probed by the start-up checks
        log.info("rank %d trains on %s", self.dist.rank, describe_device(self.device))
        if startup.memory and self.dist.is_main:
            log.info("%s", startup.memory.describe(config))
        cuda_switches(config.train, self.device)
        setup_plugins(startup, config, self.run_dir, self.dist)   # under a forked RNG: never shifts training's
        # seeded as (virtual) rank, then built: what draws from the RNG before the first step (accumulate.py)
        self.ranks = VirtualRanks(self.dist, config.train.grad_accum)
        model, aux = self.ranks.start(config.train.seed, lambda: self._build_modules(self.device),
                                      lambda: self._build_modules(torch.device("cpu")))
        model.grad_checkpointing = config.train.grad_checkpointing
        self.capture = self.plugins.capture_blocks(config)
        self.global_batch = self.batches.batch_size * self.dist.world_size
        t = config.train
        self.base_lr = peak_lr(config, self.global_batch)
        optimizer = make_optimizer([model, aux], config, self.base_lr, self.device)
        self.steps_per_epoch = len(self.batches)
        self.total_steps = t.max_steps if t.max_steps is not None else int(t.epochs * self.steps_per_epoch)
        self.signals = StopSignals(handle_signals)
        # the network and the plugins' trainable modules as one module: DDP must see both to average every
        # gradient (a plugin's projection head trains with the network), and one forward computes the loss
        self.objective = make_objective(model, aux, config, self.plugins, self.capture, self.dist)
        emas = [EMA(model, d) for d in config.optim.ema_decays]  # after DDP broadcast rank 0's weights
        self.state = TrainState(model, aux, emas, optimizer, self.ranks)   # what a checkpoint holds
        self.autocast = (self.device.type == "cuda" and t.precision == "bf16")
        if t.compile:
            compile_model(model)    # in place: training, sample grids and EMA sampling run compiled
        self.last_checkpoint: Optional[Path] = None
        self.sinks = LogSinks()   # opened by fit() on rank 0
        # the sinks were sent every step logged so far; resume() rolls metrics.jsonl back to its checkpoint
        self.logged_until = last_step(self.run_dir / "metrics.jsonl") if self.dist.is_main else -1
        if self.has_checkpoint:
            self.resume()
        if self.dist.is_main:   # after a successful resume: a refused change leaves config.json as it was
            before = write_config(config, self.run_dir)
            for row in record_changes(self.run_dir, before, config, self.allow_changes, self.step):
                log.warning("resuming at step %d with %s changed: %r -> %r (history.jsonl)", row["step"], row["key"],
                            row["old"], row["new"])
        barrier(self.dist)

    def _build_modules(self, device: torch.device) -> tuple[JiT, nn.ModuleDict]:
        model = build_network(self.config, self.plugins, self.model_config, device=device, streams=self.streams)
        return model, nn.ModuleDict(self.plugins.trainable_modules(self.config, model)).to(device)

    # what a checkpoint holds lives in self.state (TrainState); these names read it
    @property
    def model(self) -> JiT:
        return self.state.model

    @property
    def aux(self) -> nn.ModuleDict:
        return self.state.aux

    @property
    def emas(self) -> list[EMA]:
        return self.state.emas

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.state.optimizer

    @property
    def step(self) -> int:
        return self.state.step

    def close(self) -> None:
        """Let go of the run folder (:meth:`fit` does it when it returns)."""
        self.lock.release()

    @property
    def stop_requested(self) -> bool:
        return self.signals.requested

    def save(self) -> Path:
        """Write the checkpoint of the current step (:func:`.checkpointing.save`)."""
        self.last_checkpoint = checkpointing.save(self.state, self.config, self.run_dir, self.dist)
        return self.last_checkpoint

    def resume(self) -> None:
        """Restore the state from the run folder's latest checkpoint; roll metrics.jsonl back to its step."""
        self.last_checkpoint = checkpointing.resume(self.state, self.config, self.run_dir)
        if self.dist.is_main:
            dropped = roll_back(self.run_dir / "metrics.jsonl", self.step)
            log.info("resumed from %s (step %d)%s", self.last_checkpoint, self.step,
                     f"; dropped {dropped} metrics.jsonl lines logged after it" if dropped else "")

    # ----------------------------------------------------------------- one step
    def train_step(self, images_u8: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        # the official schedule is a function of the fractional epoch, set before every step (warmup, then constant/cosine)
        lr = lr_at(self.config, self.step / self.steps_per_epoch, self.base_lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        images = to_model_range(images_u8.to(self.device, non_blocking=True))
        labels = labels.to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        # one backward per virtual rank (train.grad_accum), each drawing its own randomness as that DDP rank would
        total, losses = accumulate_gradients(self.objective, images, labels, self.ranks, self._forward)
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        clip = self.config.optim.grad_clip
        grad_norm = None
        logged = (self.step + 1) % self.config.train.log_every == 0 or self.step + 1 == self.total_steps
        if clip or self.config.train.grad_norm == "step" or logged:   # train.grad_norm=log: one pass less
            grad_norm = torch.nn.utils.clip_grad_norm_(params, clip if clip else float("inf"))
        problem = find_nonfinite(losses, total, grad_norm)
        # every rank must take the same branch: a rank that stepped while another stopped would hang DDP
        if any_rank(problem is not None, self.dist):
            self._handle_nonfinite(problem or "another rank saw a non-finite value")
            return {}
        self.optimizer.step()
        for ema in self.emas:          # after the step, as the official loop does (EMA of the updated weights)
            ema.update(self.model)
        self.state.step += 1
        out = {f"loss/{k}": v.detach() for k, v in losses.items()}
        out.update(loss=total.detach(), lr=lr)
        if grad_norm is not None:
            out["grad_norm"] = grad_norm.detach()
        return out

    def _forward(self, objective, images, labels):
        # with checkpointing, autocast's cast cache would keep bf16 copies of every block weight alive
        # through the whole forward (2 B/parameter); each weight is cast once per forward anyway
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast,
                            cache_enabled=not self.model.grad_checkpointing):
            return objective(images, labels, self.step)

    def _handle_nonfinite(self, problem: str) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        last = self.last_checkpoint or "none (no checkpoint was written yet)"
        if self.config.train.nan_policy == "skip" and self.state.skipped < self.config.train.max_skipped_steps:
            self.state.skipped += 1
            self.state.step += 1
            log.warning("non-finite values at step %d (%s): step skipped (%d/%d)", self.step, problem,
                        self.state.skipped, self.config.train.max_skipped_steps)
            return
        if self.last_checkpoint is None and not self.has_checkpoint:   # nothing to resume: start again
            fix = (f"No checkpoint was written yet, so there is nothing to resume: start again in a new folder with "
                   f"a lower lr or a gradient clip, e.g. `jit train --config {self.run_dir / 'config.json'} --run-dir "
                   f"<new folder> optim.lr=<lower>` (optim.blr when optim.lr is unset; or optim.grad_clip=1.0, or "
                   "train.nan_policy=skip)")
        else:
            fix = (f"Resume with a lower lr or a gradient clip, e.g. `jit train --resume {self.run_dir} "
                   "optim.lr=<lower> --allow-change optim.lr` (optim.blr when optim.lr is unset; optim.grad_clip=1.0 "
                   "--allow-change optim.grad_clip), or with train.nan_policy=skip")
        raise NonFiniteLossError(f"non-finite values at step {self.step + 1}: {problem}. The run stopped without "
                                 f"writing them; last good checkpoint: {last}. {fix}")

    def sample_grid(self, tag: str) -> Optional[Path]:
        """A grid from the EMA1 weights with fixed labels and seed (rank 0 only)."""
        if not self.dist.is_main:
            return None
        from jit_core.diffusion.generate import SampleSpec, generate_images
        from jit_core.images import save_grid
        n_cls = self.model_config.num_classes
        labels = torch.arange(min(n_cls, 10)).repeat_interleave(max(1, 40 // min(n_cls, 10)))[:40]
        imgs = generate_images(self.model, labels, self.config, self.plugins, SampleSpec(seed=0, autocast=self.autocast),
                               weights=self.emas[0].state_dict(self.model))
        path = save_grid(imgs, self.run_dir / "samples" / f"{tag}.png", nrow=len(labels) // min(n_cls, 10), scale=2)
        if self.sinks:
            import numpy as np
            from PIL import Image
            with Image.open(path) as grid:
                self.sinks.log_image(self.step, "samples", np.asarray(grid.convert("RGB")))
        return path

    # ----------------------------------------------------------------- the loop
    def fit(self) -> TrainResult:
        t = self.config.train
        started = time.time()
        log_file = self.run_dir / "metrics.jsonl"
        if self.dist.is_main:
            self.sinks = self.plugins.log_sinks(self.config, self.run_dir, logged_until=self.logged_until)
            self.sinks.log_config(self.config.to_dict())
        metrics = MetricsLog(log_file, self.dist, self.sinks)
        status, last = "finished", {}
        # a bar on a terminal; in a log file one plain line per logged step (and after 2 quiet minutes)
        bar = Progress(self.total_steps, self.run_dir.name, "step", initial=self.step,
                       enabled=self.progress and self.dist.is_main, every_s=120.0, rate_unit="img",
                       rate_scale=self.global_batch)
        try:
            with self.signals:
                self.model.train()
                for images, labels in self.batches.iterate(self.step):
                    if self.step >= self.total_steps:
                        break
                    out = self.train_step(images, labels)
                    bar.update(1)
                    if out:
                        metrics.add(out)
                    if metrics.count and (self.step % t.log_every == 0 or self.step == self.total_steps):
                        last = metrics.write(self.step, self.step / self.steps_per_epoch,
                                             self.state.elapsed + time.time() - started, self.global_batch)
                        bar.report(loss=last["loss"], lr=last["lr"])
                    stop = any_rank(self.stop_requested, self.dist)
                    if stop or self.step % t.ckpt_every == 0 or self.step >= self.total_steps:
                        self.state.elapsed, started = self.state.elapsed + time.time() - started, time.time()
                        self.save()
                    if t.sample_every and self.step % t.sample_every == 0 and self.step < self.total_steps:
                        self.sample_grid(f"step-{self.step:08d}")
                    if stop:
                        status = "interrupted"
                        break
                if status == "finished":
                    if self.last_checkpoint is None or not str(self.last_checkpoint).endswith(f"{self.step:08d}"):
                        self.state.elapsed += time.time() - started
                        self.save()
                    self.sample_grid(f"step-{self.step:08d}")
        finally:
            bar.close()
            self.sinks.close()
            self.close()
        return TrainResult(self.run_dir, self.step, status, {k: v for k, v in last.items() if k.startswith("loss")},
                           self.last_checkpoint, self.signals.signum if status == "interrupted" else None)


def train(config: Config, run_dir: str | Path | None = None, **kwargs) -> TrainResult:
    """Train or resume the run in ``run_dir`` (see :class:`Trainer`)."""
    return Trainer(config, run_dir, **kwargs).fit()
