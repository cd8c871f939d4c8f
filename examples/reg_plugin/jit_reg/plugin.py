"""REG for jit_core (Wu et al., "Representation Entanglement for Generation", arXiv 2507.01467).

REG co-denoises one extra token with the image: the global (class) token of a frozen encoder of the
clean image. Here it is a one-token stream (``Stream(tokens=1)``) with its own weights in every block,
attending jointly with the pixel tokens; its v-loss is added with weight ``reg.loss_weight``.

- ``jit_options``     -> :class:`RegOptions` (``reg.*``);
- ``jit_presets``     -> ``reg-tiny``: the core's ``tiny`` run plus REG with the offline encoder;
- ``jit_studies``     -> ``reg-tiny``: JiT vs REG vs V-Co on the embedded data (jit_reg/study.py);
- ``jit_run_plugin``  -> one :class:`RegRun` per run, which owns the encoder and the statistics and answers:

  - ``jit_setup``      -> builds the frozen encoder and loads or computes the token statistics (training);
  - ``jit_preflight``  -> whether the encoder's weights can be found offline;
  - ``jit_streams``    -> the ``reg`` stream (:class:`GlobalTokenStream`).

The encoder is V-Co's (``vco_plugin.features.build_encoder``): its ``embedding`` is the global token,
DINOv2's CLS token after the final LayerNorm, or EfficientNet-Lite0's pooled stride-16 stage, both
L2-normalised. The token is then standardised with training-set statistics (calibration.py). Its
unconditional form is V-Co's structured null branch (``vco_plugin.null_branch``): see the README.
"""
# ruff: noqa: UP045
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from jit_core import hookimpl
from jit_core.config import ConfigError, get_preset, option, plugin_options
from jit_core.model.streams import Stream
from jit_core.rng import isolated_rng
from vco_plugin.features import ENCODER_NAMES, DINOv2Encoder, EfficientNetLite0Encoder, build_encoder, weights_problem
from vco_plugin.null_branch import NULL_BRANCHES, null_branch

from .calibration import STATS_FILE, compute_stats, load_stats, save_stats

log = logging.getLogger(__name__)

NAME = "reg"
STREAM = "reg"
EMBED_DIMS = {"dinov2": DINOv2Encoder.embed_dim, "efficientnet_lite0": EfficientNetLite0Encoder.embed_dim}


@dataclass
class RegOptions:
    """Options of the REG plugin (``reg.<name>=value``)."""

    encoder: str = option("dinov2", choices=ENCODER_NAMES)   # dinov2 (the paper's) | efficientnet_lite0 (offline)
    encoder_weights: Optional[str] = None       # weights file/dir; None = the encoder's default; "random" (tests)
    loss_weight: float = option(0.03, ge=0)     # weight of the global token's v-loss
    null_branch: str = option("structured", choices=NULL_BRANCHES)   # its unconditional form (README)
    calib_images: int = option(2048, ge=1)      # training images the statistics are computed from
    stats: Optional[str] = None                 # a statistics file to use; None: <run>/reg_stats.safetensors

    def check(self, config) -> None:
        if self.stats and not Path(self.stats).expanduser().is_file():
            raise ConfigError(f"reg.stats={self.stats!r} does not exist: leave reg.stats unset to compute them")
        if self.encoder_weights not in (None, "random") and not Path(self.encoder_weights).expanduser().exists():
            raise ConfigError(f"reg.encoder_weights={self.encoder_weights!r} does not exist: pass the local weights")


def options(config) -> RegOptions:
    """The typed, checked options of ``config``."""
    return plugin_options(config, RegOptions)


@dataclass
class GlobalTokenStream(Stream):
    """The ``reg`` stream: one global token, its calibrated clean target and its unconditional form."""

    run: Optional[RegRun] = field(default=None, repr=False, compare=False)

    def clean(self, images: torch.Tensor, values: dict) -> torch.Tensor:
        """The encoder's global token of the clean images, ``(B, 1, C)`` in float32."""
        return self.run.global_token(images).unsqueeze(1)

    def normalize(self, clean: torch.Tensor) -> torch.Tensor:
        return self.run.stats(clean.device).apply(clean)

    def null_branch(self, drop: torch.Tensor, streams, training: bool):
        return null_branch(self.run.opts.null_branch, drop, feature=self.name)


class RegRun:
    """REG for one run: its options, frozen encoder and token statistics."""

    def __init__(self, config):
        self.config = config
        self.opts = options(config)
        self.run_dir = Path(config.run_dir) if getattr(config, "run_dir", None) else None
        self._encoders: dict[str, torch.nn.Module] = {}
        self._stats = None

    def encoder(self, device) -> torch.nn.Module:
        """The frozen encoder on ``device``, built once (under a forked RNG: training's draws are unchanged)."""
        key = str(torch.device(device))
        if key not in self._encoders:
            with isolated_rng(self.config.train.seed, device):
                # fp32: the token and its statistics do not depend on the step's autocast
                self._encoders[key] = build_encoder(self.opts.encoder, self.opts.encoder_weights, device, "fp32")
        return self._encoders[key]

    def global_token(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` in [-1, 1] -> the encoder's L2-normalised global token ``(B, C)``, no gradients."""
        with torch.no_grad():
            return self.encoder(images.device).embedding(images).float()

    def stats(self, device=None):
        if self._stats is None:
            raise RuntimeError("reg: the token statistics are set up by jit_setup at the start of training")
        return self._stats

    def _load_or_compute_stats(self, dataset, device) -> None:
        channels = EMBED_DIMS[self.opts.encoder]
        given = Path(self.opts.stats).expanduser() if self.opts.stats else None
        own = self.run_dir / STATS_FILE if self.run_dir else None
        for path in (given, own):
            if path is not None and path.is_file():
                self._stats = load_stats(path, self.opts.encoder, channels)
                return
        from jit_core.data import to_model_range
        from torch.utils.data import DataLoader, Subset
        n = min(self.opts.calib_images, len(dataset))
        subset = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(self.config.train.seed))[:n]
        loader = DataLoader(Subset(dataset, subset.tolist()), batch_size=64, num_workers=0)
        log.info("reg: global token statistics from %d training images (%s)", n, self.opts.encoder)
        stats = compute_stats(self.global_token, (to_model_range(u8).to(device) for u8, _ in loader))
        stats.meta.update(encoder=self.opts.encoder, weights=str(self.opts.encoder_weights or "default"),
                          dataset=self.config.data.name, seed=self.config.train.seed)
        if own is not None:
            from jit_core.distributed import data_rank_and_world
            if data_rank_and_world()[0] == 0:
                save_stats(stats, own)
        self._stats = stats

    # ----------------------------------------------------------------- hooks
    @hookimpl
    def jit_setup(self, run):
        """When training: build the encoder and load (resume, ``reg.stats``) or compute the statistics."""
        if run.run_dir is not None:
            self.run_dir = Path(run.run_dir)
        if run.training and not run.dry_run:
            self._load_or_compute_stats(run.dataset, torch.device(run.device))

    @hookimpl
    def jit_preflight(self):
        problem = weights_problem(self.opts.encoder, self.opts.encoder_weights)
        return [problem.replace("vco.encoder_weights", "reg.encoder_weights")] if problem else []

    @hookimpl
    def jit_streams(self, model_config):
        """``reg``: one global token, co-denoised with the pixels under joint attention."""
        return [GlobalTokenStream(STREAM, kind="tokens", tokens=1, channels=EMBED_DIMS[self.opts.encoder],
                                  loss_weight=self.opts.loss_weight, run=self)]


# ----------------------------------------------------------------------------------- install-time hooks
@hookimpl
def jit_options():
    """REG's options (``reg.*``)."""
    return RegOptions


def _preset_reg_tiny():
    """The core's ``tiny`` run plus REG with the offline EfficientNet-Lite0 encoder."""
    cfg = get_preset("tiny")
    cfg.plugins = list(cfg.plugins) + [NAME]
    cfg.plugin_options = {**cfg.plugin_options, NAME: {"encoder": "efficientnet_lite0"}}
    return cfg


@hookimpl
def jit_presets():
    return {"reg-tiny": _preset_reg_tiny}


@hookimpl
def jit_studies():
    from .study import studies
    return studies()


@hookimpl
def jit_run_plugin(config):
    """One :class:`RegRun` per run."""
    return RegRun(config)
