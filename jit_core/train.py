"""The training loop: AdamW, warmup, two EMAs, bf16 autocast, DDP, checkpoints, exact resume.

``train(config, run_dir)`` trains (or resumes) one run. A run folder holds ``config.json``,
``metrics.jsonl`` (one JSON object per logged step), ``checkpoints/`` and ``samples/``. Resuming
restores model, EMAs, optimizer, step, RNG states and the data position, so that an interrupted
and resumed CPU run ends bit-identical to an uninterrupted one.
"""
from __future__ import annotations

import json
import logging
import math
import random
import re
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn as nn

from . import checkpoint as ckpt
from .config import Config, ConfigError, validate_plugin_options
from .data import build_dataset, to_model_range
from .diffusion import training_losses
from .distributed import DistInfo, all_reduce_mean, any_rank, barrier, init_distributed
from .model import JiT, get_model_config
from .plugins import Plugins
from .sampler import DefaultBatchSampler, ResumableBatches

log = logging.getLogger("jit")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
# config keys that may change when a run is resumed (length, logging, resources)
RESUMABLE_CHANGES = ("train.max_steps", "train.epochs", "train.log_every", "train.ckpt_every", "train.keep_every",
                     "train.sample_every", "train.device", "train.compile", "data.num_workers", "data.pin_memory",
                     "data.path", "run_dir", "train.nan_policy", "train.max_skipped_steps", "sample.")


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient became NaN/inf; the message says which term, when, and what was kept."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    status: str              # "finished" | "interrupted"
    losses: dict[str, float]
    checkpoint: Optional[Path]


# ----------------------------------------------------------------------------------- building
def resolve_model_config(config: Config, dataset) -> Any:
    """The model config for this run: the named config, with channels/classes taken from the data."""
    overrides = dict(config.model_overrides)
    overrides.setdefault("in_channels", dataset.channels)
    overrides.setdefault("num_classes", dataset.num_classes)
    try:
        mc = get_model_config(config.model, **overrides)
    except (ValueError, TypeError) as e:  # ModelConfig.validate / an unknown field in model_overrides
        raise ConfigError(f"model {config.model} with model_overrides={config.model_overrides}: {e}") from e
    if mc.image_size != config.data.image_size:
        raise ConfigError(f"data.image_size={config.data.image_size} but model {config.model} takes "
                          f"{mc.image_size} px images: set data.image_size={mc.image_size} or "
                          f"model_overrides={{\"image_size\": {config.data.image_size}}}")
    config.model_overrides = {**config.model_overrides, "in_channels": mc.in_channels, "num_classes": mc.num_classes}
    return mc


def build_for_config(config: Config, plugins: Plugins, model_config, device=None) -> JiT:
    streams = plugins.streams(config, model_config)
    return JiT(model_config, streams, config.train.attention).to(device or "cpu")


def param_groups(modules: Iterable[nn.Module], weight_decay: float) -> list[dict]:
    """JiT's AdamW groups: no decay on 1-D tensors and biases; frozen tensors excluded."""
    decay, no_decay = [], []
    for module in modules:
        for name, p in module.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def lr_at(config: Config, epoch_float: float, base_lr: float) -> float:
    """Linear warmup from 0 over ``warmup_epochs``, then constant (or half-cosine to min_lr)."""
    o = config.optim
    if epoch_float < o.warmup_epochs:
        return base_lr * epoch_float / o.warmup_epochs
    if o.schedule == "cosine":
        total = config.train.epochs
        frac = min(1.0, (epoch_float - o.warmup_epochs) / max(total - o.warmup_epochs, 1e-8))
        return o.min_lr + (base_lr - o.min_lr) * 0.5 * (1 + math.cos(math.pi * frac))
    if o.schedule != "constant":
        raise ConfigError(f"unknown optim.schedule {o.schedule!r}: use constant or cosine")
    return base_lr


class EMA:
    """Exponential moving averages of every model parameter (frozen ones included), no warmup."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.params = [p.detach().clone() for p in model.parameters()]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        torch._foreach_lerp_(self.params, [p.detach() for p in model.parameters()], 1 - self.decay)

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        names = [n for n, _ in model.named_parameters()]
        return dict(zip(names, self.params))

    def load(self, sd: dict[str, torch.Tensor], model: nn.Module) -> None:
        for (name, _), p in zip(model.named_parameters(), self.params):
            p.copy_(sd[name])


def rng_state() -> dict:
    """Every RNG's state as data (tensors and numbers), so that trainer.pt never holds text to evaluate."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    python = {"version": py_version, "state": torch.tensor(py_internal, dtype=torch.int64), "gauss": py_gauss}
    state = {"torch": torch.get_rng_state(), "python": python,
             "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                       "has_gauss": int(np_state[3]), "gauss": float(np_state[4])}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


_LEGACY_PY_RNG = re.compile(r"\(\s*(\d+)\s*,\s*\(([\d,\s]+)\)\s*,\s*(None|[-+0-9.eE]+)\s*\)")


def _python_rng(saved) -> tuple:
    """The ``random.setstate`` tuple from trainer.pt: a dict of numbers, or (checkpoints of jit-vco <= 0.1) the
    repr of the tuple, read by a strict pattern of integers, never evaluated."""
    if isinstance(saved, str):
        m = _LEGACY_PY_RNG.fullmatch(saved.strip())
        if m is None:
            raise ValueError("the saved Python RNG state is text that is not a tuple of integers")
        ints = [int(x) for x in m[2].replace(" ", "").split(",") if x]
        saved = {"version": int(m[1]), "state": ints, "gauss": None if m[3] == "None" else float(m[3])}
    if not isinstance(saved, dict) or set(saved) != {"version", "state", "gauss"}:
        raise ValueError("the saved Python RNG state is not {version, state, gauss}")
    ints = saved["state"].tolist() if isinstance(saved["state"], torch.Tensor) else list(saved["state"])
    if len(ints) != 625 or not all(isinstance(x, int) and 0 <= x < 2 ** 32 for x in ints):
        raise ValueError("the saved Python RNG state is not 625 unsigned 32-bit integers")
    gauss = saved["gauss"]
    if gauss is not None and not isinstance(gauss, (int, float)):
        raise ValueError("the saved Python RNG gauss value is not a number")
    return int(saved["version"]), tuple(ints), None if gauss is None else float(gauss)


def set_rng_state(state: dict) -> None:
    """Restore the RNGs saved by :func:`rng_state`; a malformed state raises ValueError (nothing is evaluated)."""
    torch.set_rng_state(state["torch"])
    random.setstate(_python_rng(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def _config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        full = f"{prefix}{key}"
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict) and key != "model_overrides":
            out += _config_diff(va, vb, full + ".")
        elif va != vb and not full.startswith(RESUMABLE_CHANGES):
            out.append(f"{full}: {va!r} (saved) vs {vb!r} (now)")
    return out


def prepare_run_dir(config: Config, run_dir: Path, is_main: bool) -> bool:
    """Create or check the run folder. Returns True when there is a checkpoint to resume from."""
    saved = run_dir / "config.json"
    started = bool(ckpt.list_checkpoints(run_dir))  # a run that never wrote a checkpoint may restart with another config
    if saved.exists() and started:
        diff = _config_diff(json.loads(saved.read_text()), json.loads(config.to_json()))
        if diff:
            raise ConfigError(f"run folder {run_dir} already holds a different run ({'; '.join(diff[:4])}); "
                              "use a new --run-dir, or resume with the saved config (jit train --resume RUN)")
    elif not saved.exists() and run_dir.exists() and any(run_dir.iterdir()) and not (run_dir / "checkpoints").exists():
        raise ConfigError(f"run folder {run_dir} exists and is not empty but holds no jit run; pick a new --run-dir")
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = saved.with_suffix(".json.tmp")
        tmp.write_text(config.to_json())
        tmp.replace(saved)
    return ckpt.latest_checkpoint(run_dir) is not None


# ----------------------------------------------------------------------------------- the loop
class Trainer:
    """One run's state; ``Trainer(config, run_dir).fit()``."""

    def __init__(self, config: Config, run_dir: str | Path | None = None, *, extra_plugins=(),
                 handle_signals: Iterable[int] = STOP_SIGNALS, progress: bool = True, dist: DistInfo | None = None):
        self.config = config
        run_dir = run_dir or config.run_dir
        if run_dir is None:
            raise ConfigError("no run folder: pass --run-dir DIR (or set run_dir in the config)")
        self.run_dir = Path(run_dir)
        config.run_dir = str(self.run_dir)
        self.progress = progress
        self.plugins = Plugins(config.plugins, extra=extra_plugins)
        validate_plugin_options(config, self.plugins.option_schemas())
        self.dist = dist or init_distributed(config.train.device)
        self.device = self.dist.device
        self.dataset = build_dataset(config.data, train=True, seed=config.train.seed)
        self.model_config = resolve_model_config(config, self.dataset)
        self.has_checkpoint = prepare_run_dir(config, self.run_dir, self.dist.is_main)
        barrier(self.dist)
        seed_everything(config.train.seed + self.dist.rank)
        self.model = build_for_config(config, self.plugins, self.model_config, self.device)
        self.model.grad_checkpointing = config.train.grad_checkpointing
        aux = {}
        for mods in self.plugins.hook.jit_trainable_modules(config=config, model=self.model):
            aux.update(mods or {})
        self.aux = nn.ModuleDict(aux).to(self.device)
        self.capture = sorted({i for blocks in self.plugins.hook.jit_capture_blocks(config=config) for i in (blocks or [])})
        sampler = self.plugins.hook.jit_batch_sampler(dataset=self.dataset, config=config, rank=self.dist.rank,
                                                      world_size=self.dist.world_size, seed=config.train.seed)
        self.batches = ResumableBatches(sampler or DefaultBatchSampler(
            len(self.dataset), config.optim.batch_size, self.dist.rank, self.dist.world_size, config.train.seed),
            self.dataset, config.data, self.device)
        self.global_batch = self.batches.batch_size * self.dist.world_size
        o = config.optim
        self.base_lr = o.lr if o.lr is not None else o.blr * self.global_batch / 256
        fused = o.fused and self.device.type in ("cuda", "cpu")   # torch's fused AdamW runs on both
        self.optimizer = torch.optim.AdamW(param_groups([self.model, self.aux], o.weight_decay), lr=self.base_lr,
                                           betas=tuple(o.betas), fused=fused or None)
        self.steps_per_epoch = len(self.batches)
        if self.steps_per_epoch == 0:
            raise ConfigError(f"the dataset ({len(self.dataset)} images) is smaller than one global batch "
                              f"({self.global_batch}): lower optim.batch_size")
        t = config.train
        self.total_steps = t.max_steps if t.max_steps is not None else int(t.epochs * self.steps_per_epoch)
        self.step, self.elapsed, self.skipped = 0, 0.0, 0
        self.stop_requested = False
        self._signals = tuple(handle_signals)
        self.objective = self._objective()
        self.emas = [EMA(self.model, d) for d in config.optim.ema_decays]  # after DDP broadcast rank 0's weights
        self.autocast = (self.device.type == "cuda" and t.precision == "bf16")
        if t.compile:
            for block in self.model.blocks:
                block.compile()
            for head in self.model.heads.values():
                head.compile()
        self.last_checkpoint: Optional[Path] = None
        if self.has_checkpoint:
            self.resume()

    def _objective(self) -> nn.Module:
        trainer = self

        class Objective(nn.Module):
            """Model + plugin modules as one module, so DDP averages every gradient."""

            def __init__(self):
                super().__init__()
                self.model, self.aux = trainer.model, trainer.aux

            def forward(self, images, labels):
                return training_losses(self.model, self.model.streams, images, labels, trainer.config,
                                       trainer.plugins.hook, aux=self.aux, capture=trainer.capture)

        obj = Objective()
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # gradients live in the all-reduce buckets (no second 4 B/parameter copy)
            obj = nn.parallel.DistributedDataParallel(obj, device_ids=ids, gradient_as_bucket_view=True)
        return obj

    # ----------------------------------------------------------------- checkpoints
    def state(self) -> dict:
        return {"step": self.step, "optimizer": self.optimizer.state_dict(), "elapsed": self.elapsed,
                "skipped": self.skipped, "rng": rng_state(), "config": self.config.to_json(),
                "world_size": self.dist.world_size}

    def save(self) -> Path:
        if self.dist.is_main:
            weights = {"model": self.model.state_dict(),
                       "ema1": self.emas[0].state_dict(self.model), "ema2": self.emas[1].state_dict(self.model)}
            if len(self.aux):
                weights["aux"] = self.aux.state_dict()
            state = self.state()
            if self.dist.enabled:  # every rank's RNG, so each rank resumes its own stream
                state["rng_per_rank"] = self._gather_rng()
            self.last_checkpoint = ckpt.save_checkpoint(self.run_dir, self.step, weights, state,
                                                        keep_every=self.config.train.keep_every)
        elif self.dist.enabled:
            self._gather_rng()
            self.last_checkpoint = self.run_dir / "checkpoints" / f"step-{self.step:08d}"  # same decisions on every rank
        barrier(self.dist)
        return self.last_checkpoint

    def _gather_rng(self) -> list:
        import torch.distributed as dist
        out = [None] * self.dist.world_size
        dist.all_gather_object(out, rng_state())
        return out

    def resume(self) -> None:
        path = ckpt.latest_checkpoint(self.run_dir)
        weights, state = ckpt.load_checkpoint(path)
        ckpt.check_compatible(weights["model"], self.model, str(path))
        if state.get("world_size", 1) != self.dist.world_size:
            raise ConfigError(f"{path} was written by {state.get('world_size')} ranks, now {self.dist.world_size}: "
                              "resume with the same number of processes (data order and RNG are per rank)")
        self.model.load_state_dict(weights["model"])
        for ema, key in zip(self.emas, ("ema1", "ema2")):
            ema.load(weights[key], self.model)
        if len(self.aux):
            self.aux.load_state_dict(weights["aux"])
        if state.get("optimizer"):  # empty for an imported official checkpoint
            self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.elapsed, self.skipped = state["step"], state.get("elapsed", 0.0), state.get("skipped", 0)
        if "rng" in state:
            try:
                set_rng_state(state["rng_per_rank"][self.dist.rank] if "rng_per_rank" in state else state["rng"])
            except (ValueError, TypeError, KeyError, IndexError, RuntimeError) as e:
                raise ckpt.CheckpointError(f"{path / 'trainer.pt'} holds a malformed RNG state ({e}); it was not "
                                           "written by jit-vco: resume from another checkpoint") from e
        self.last_checkpoint = path
        if self.dist.is_main:
            log.info("resumed from %s (step %d)", path, self.step)

    # ----------------------------------------------------------------- signals
    def _on_signal(self, signum, frame) -> None:
        self.stop_requested = True
        log.warning("received %s: finishing the step, writing a checkpoint, exiting", signal.Signals(signum).name)

    def _install_signals(self):
        previous = {}
        for sig in self._signals:
            try:
                previous[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread
                pass
        return previous

    # ----------------------------------------------------------------- one step
    def _nonfinite(self, losses: dict[str, torch.Tensor], total: torch.Tensor,
                   grad_norm: Optional[torch.Tensor]) -> Optional[str]:
        checked = [*losses.values(), total] + ([grad_norm] if grad_norm is not None else [])
        if bool(torch.stack([torch.isfinite(x.detach().float()).all() for x in checked]).all()):
            return None   # one device sync per step; the message below is built only when something is off
        bad = [f"loss/{k}={v.item():.4g}" for k, v in losses.items() if not torch.isfinite(v)]
        if not torch.isfinite(total) and not bad:
            bad.append(f"loss={total.item():.4g}")
        if grad_norm is not None and not torch.isfinite(grad_norm):
            bad.append(f"grad_norm={grad_norm.item():.4g}")
        return ", ".join(bad) or None

    def train_step(self, images_u8: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        epoch_float = self.step / self.steps_per_epoch
        lr = lr_at(self.config, epoch_float, self.base_lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        images = to_model_range(images_u8.to(self.device, non_blocking=True))
        labels = labels.to(self.device, non_blocking=True)
        # with checkpointing, autocast's cast cache would keep bf16 copies of every block weight alive
        # through the whole forward (2 B/parameter); each weight is cast once per forward anyway
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast,
                            cache_enabled=not self.model.grad_checkpointing):
            total, losses = self.objective(images, labels)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        clip = self.config.optim.grad_clip
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip if clip else float("inf"))
        problem = self._nonfinite(losses, total, grad_norm)
        if any_rank(problem is not None, self.dist):
            self._handle_nonfinite(problem or "another rank saw a non-finite value")
            return {}
        self.optimizer.step()
        for ema in self.emas:
            ema.update(self.model)
        self.step += 1
        out = {f"loss/{k}": v.detach() for k, v in losses.items()}
        out["loss"] = total.detach()
        out["lr"] = lr
        out["grad_norm"] = grad_norm.detach()
        return out

    def _handle_nonfinite(self, problem: str) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        last = self.last_checkpoint or "none (no checkpoint was written yet)"
        if self.config.train.nan_policy == "skip" and self.skipped < self.config.train.max_skipped_steps:
            self.skipped += 1
            self.step += 1
            log.warning("non-finite values at step %d (%s): step skipped (%d/%d)", self.step, problem,
                        self.skipped, self.config.train.max_skipped_steps)
            return
        raise NonFiniteLossError(
            f"non-finite values at step {self.step + 1}: {problem}. The run stopped without writing them; "
            f"last good checkpoint: {last}. Lower the lr (optim.blr), enable optim.grad_clip, or use "
            f"train.nan_policy=skip; resume with `jit train --resume {self.run_dir}`")

    # ----------------------------------------------------------------- logging
    def _log(self, sums: dict[str, float], count: int, started: float) -> dict[str, float]:
        means = all_reduce_mean({k: v / count for k, v in sums.items() if k != "lr"}, self.dist)
        means["lr"] = sums["lr"] / count
        means.update(step=self.step, epoch=self.step / self.steps_per_epoch, time=self.elapsed + time.time() - started,
                     img_per_s=count * self.global_batch / max(time.time() - self._last_log_time, 1e-9))
        if self.dist.is_main:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(means) + "\n")
        return means

    def sample_grid(self, tag: str) -> Optional[Path]:
        """A grid from the EMA1 weights with fixed labels and seed (rank 0 only)."""
        if not self.dist.is_main:
            return None
        from .api import sample_with_weights
        from .images import save_grid
        n_cls = self.model_config.num_classes
        labels = torch.arange(min(n_cls, 10)).repeat_interleave(max(1, 40 // min(n_cls, 10)))[:40]
        imgs = sample_with_weights(self.model, self.emas[0].state_dict(self.model), labels, self.config,
                                   self.plugins, seed=0, autocast=self.autocast)
        return save_grid(imgs, self.run_dir / "samples" / f"{tag}.png", nrow=len(labels) // min(n_cls, 10), scale=2)

    def fit(self) -> TrainResult:
        t = self.config.train
        previous = self._install_signals()
        started = time.time()
        self._last_log_time = started
        sums: dict[str, float] = {}
        count, status, last = 0, "finished", {}
        bar = None
        if self.progress and self.dist.is_main:
            from tqdm import tqdm
            bar = tqdm(total=self.total_steps, initial=self.step, desc=self.run_dir.name, dynamic_ncols=True)
        try:
            self.model.train()
            for images, labels in self.batches.iterate(self.step):
                if self.step >= self.total_steps:
                    break
                out = self.train_step(images, labels)
                if bar:
                    bar.update(1)
                if out:
                    for k, v in out.items():
                        sums[k] = sums.get(k, 0.0) + float(v)
                    count += 1
                if count and (self.step % t.log_every == 0 or self.step == self.total_steps):
                    last = self._log(sums, count, started)
                    if bar:
                        bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{last['lr']:.2e}")
                    sums, count = {}, 0
                    self._last_log_time = time.time()
                stop = any_rank(self.stop_requested, self.dist)
                if stop or self.step % t.ckpt_every == 0 or self.step >= self.total_steps:
                    self.elapsed += time.time() - started
                    started = time.time()
                    self.save()
                if t.sample_every and self.step % t.sample_every == 0 and self.step < self.total_steps:
                    self.sample_grid(f"step-{self.step:08d}")
                if stop:
                    status = "interrupted"
                    break
            if status == "finished":
                if self.last_checkpoint is None or not str(self.last_checkpoint).endswith(f"{self.step:08d}"):
                    self.elapsed += time.time() - started
                    self.save()
                self.sample_grid(f"step-{self.step:08d}")
        finally:
            if bar:
                bar.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return TrainResult(self.run_dir, self.step, status, {k: v for k, v in last.items() if k.startswith("loss")},
                           self.last_checkpoint)


def train(config: Config, run_dir: str | Path | None = None, **kwargs) -> TrainResult:
    """Train or resume the run in ``run_dir`` (see :class:`Trainer`)."""
    return Trainer(config, run_dir, **kwargs).fit()
