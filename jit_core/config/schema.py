"""The run configuration's schema: one dataclass per section, the allowed values declared next to each field.

``Config`` is what a run is (``jit train --preset jit-b16 optim.blr=1e-4 vco.drift_coef=5``); plugin options
live under their plugin's name in ``plugin_options`` (plain dicts until :func:`jit_core.config.resolve` turns
them into each plugin's typed options object). Every section is :class:`.frozen.Freezable`: a resolved config
is read-only.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Optional

from .fields import ConfigError, option
from .flat import flatten
from .frozen import Freezable, thaw
from .keys import set_key

DATASET_NAMES = ("imagenet", "folder", "fashion_mnist", "digits")
ATTENTION_PATHS = ("exact", "fast")
SAMPLE_METHODS = ("heun", "euler")


@dataclass
class DataConfig(Freezable):
    name: str = option("imagenet", choices=DATASET_NAMES)   # folder/imagenet: data.path; the others are embedded
    path: Optional[str] = None          # ImageFolder root (imagenet/folder)
    image_size: int = option(256, gt=0)
    flip: bool = True
    num_workers: int = option(4, ge=0)
    pin_memory: bool = True


@dataclass
class DiffusionConfig(Freezable):
    P_mean: float = -0.8
    P_std: float = option(0.8, gt=0)
    t_eps: float = option(0.05, gt=0, le=1)         # clamp of 1 - t in the velocity
    noise_scale: Optional[float] = option(None, gt=0)   # None: image_size / 256
    label_drop_prob: float = option(0.1, ge=0, le=1)


@dataclass
class OptimConfig(Freezable):
    batch_size: int = option(128, gt=0)             # per rank
    blr: float = option(5e-5, gt=0)                 # lr = blr * global batch / 256
    lr: Optional[float] = option(None, gt=0)        # absolute lr, overrides blr
    warmup_epochs: float = option(5.0, ge=0)
    schedule: str = option("constant", choices=("constant", "cosine"))
    min_lr: float = option(0.0, ge=0)
    weight_decay: float = option(0.0, ge=0)
    betas: tuple[float, float] = option((0.9, 0.95), ge=0, lt=1)
    grad_clip: Optional[float] = option(None, gt=0)
    fused: bool = True                  # fused AdamW kernel (CUDA and CPU)
    ema_decays: tuple[float, float] = option((0.9999, 0.9996), gt=0, lt=1)


@dataclass
class TrainConfig(Freezable):
    epochs: float = option(600.0, ge=0)
    max_steps: Optional[int] = option(None, ge=0)   # stop after this many optimizer steps (overrides epochs)
    seed: int = option(0, ge=0)
    log_every: int = option(100, gt=0)
    ckpt_every: int = option(1000, gt=0)            # steps between checkpoints (always one at the end)
    keep_every: int = option(0, ge=0)   # also keep every N-th step's checkpoint forever (0: only the latest)
    sample_every: int = option(0, ge=0)  # steps between sample grids (0: only at the end)
    attention: str = option("fast", choices=ATTENTION_PATHS)   # fast (SDPA) | exact (official fp32-logit numerics)
    precision: str = option("bf16", choices=("bf16", "fp32"))  # bf16 autocast on CUDA | fp32
    compile: bool = False
    grad_checkpointing: bool = False    # activation checkpointing per block (memory for L/H/G)
    grad_accum: int = option(1, ge=1)   # micro-batches per optimizer step: one process plays grad_accum ranks of
    #                                     optim.batch_size images (global batch = batch_size x processes x grad_accum)
    gpu_memory_gib: Optional[float] = option(None, gt=0)   # the GPU a run must fit (None: the visible one, else 80 GB)
    tf32: bool = True                   # CUDA: TF32 matmuls/convolutions for fp32 ops (bf16 autocast is unaffected)
    cudnn_benchmark: bool = True        # CUDA: cuDNN picks its fastest kernels for the fixed shapes
    ddp_broadcast_buffers: bool = False  # DDP: rank 0's buffers every step (JiT's are constant; on anyway when a
    #                                      plugin's trainable modules have buffers)
    grad_norm: str = option("step", choices=("step", "log"))   # gradient norm every step (and checked for NaN)
    #                                     | only on logged steps when optim.grad_clip is unset (one pass less)
    nan_policy: str = option("stop", choices=("stop", "skip"))
    max_skipped_steps: int = option(10, ge=0)
    device: str = "auto"                # auto | cpu | cuda | cuda:N (checked by check_config)


@dataclass
class SampleConfig(Freezable):
    method: str = option("heun", choices=SAMPLE_METHODS)
    steps: int = option(50, gt=0)
    cfg: float = option(2.9, ge=0)
    interval: tuple[float, float] = option((0.1, 1.0), ge=0, le=1)   # CFG applies for lo < t < hi
    batch_size: int = option(64, gt=0)
    num_images: int = option(50_000, gt=0)


@dataclass
class LogConfig(Freezable):
    """Experiment trackers besides ``metrics.jsonl`` (rank 0 only; built-in plugins of :mod:`jit_core.trackers`)."""

    tensorboard: bool = False           # event files in <run>/tb/ (pip install 'jit-vco[tensorboard]')
    wandb: bool = False                 # Weights & Biases (pip install 'jit-vco[wandb]'); its id in <run>/wandb-run.json
    wandb_project: str = "jit-vco"
    wandb_entity: Optional[str] = None  # team or user (None: your default entity)
    wandb_name: Optional[str] = None    # display name (None: the run folder's name)
    wandb_mode: str = option("online", choices=("online", "offline", "disabled"))   # offline: sync later (wandb sync)


@dataclass
class Config(Freezable):
    model: str = "JiT-B/16"
    model_overrides: dict = field(default_factory=dict)   # ModelConfig fields; resolve adds the data's channels/classes
    data: DataConfig = field(default_factory=DataConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    log: LogConfig = field(default_factory=LogConfig)
    plugins: list[str] = field(default_factory=list)
    plugin_options: dict[str, Any] = field(default_factory=dict)   # plugin -> {option: value}, or its typed options
    run_dir: Optional[str] = None

    @property
    def resolved(self) -> bool:
        """Whether :func:`jit_core.config.resolve` made this config (then it is read-only)."""
        return self.frozen

    @property
    def model_config(self) -> Any:
        """The network's ``ModelConfig`` as resolved for this run (the named config, its overrides, the data's
        channels and classes). Not saved: config.json keeps ``model`` and ``model_overrides``, which rebuild it."""
        mc = self.__dict__.get("_model_config")
        if mc is None:
            raise ConfigError("this config's model is not resolved: resolve the config first "
                              "(jit_core.plugins.resolve_run(config), as jit train does)")
        return mc

    def to_dict(self) -> dict:
        """Plain dicts, lists and tuples (typed plugin options as dicts): what config.json holds."""
        return thaw(dataclasses.asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> Config:
        """A config from its dict form (``to_dict``, a config file, an older run's config.json), every key set
        through :func:`jit_core.config.set_key` (so typed and checked); not resolved."""
        cfg = cls()
        for key, value in flatten(data).items():
            set_key(cfg, key, value)
        return cfg
