"""ReDi for jit_core (Kouzelis et al., "Boosting Generative Image Modeling via Joint Image-Feature Synthesis",
arXiv 2504.16064).

ReDi denoises the image and a frozen encoder's patch features of it jointly, in one token sequence: the
features are reduced to r principal components (fitted once on the training set, pca.py) and fused with the
image tokens, one token per patch carrying both. Two ingredients go with it:

- **representation drop** (per batch): with probability ``redi.rep_drop`` a training batch has all its
  representation inputs replaced by zeros and their loss switched off, so that the network also denoises
  images without them;
- **representation guidance** (sampling): v = v_cfg + w_r (v(x, z) - v(x, null z)), the null being the
  zeroed representation of the drop, through the core's ``jit_guidance_terms`` hook.

Hooks: ``jit_options`` (``redi.*``), ``jit_presets`` (``redi-tiny``), ``jit_studies`` (``redi-tiny``),
``jit_run_plugin`` -> one :class:`RediRun` per run, which answers ``jit_setup`` (encoder, PCA), ``jit_preflight``,
``jit_streams`` (the ``redi`` stream), ``jit_null_branch`` (the drop) and ``jit_guidance_terms``.
The encoder is V-Co's (``vco_plugin.features.build_encoder``): its ``target_tokens`` on the pixel grid.
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
from jit_core.diffusion import GuidanceTerm, NullBranch
from jit_core.model import get_model_config
from jit_core.model.streams import Stream
from jit_core.rng import isolated_rng
from vco_plugin.features import ENCODER_NAMES, DINOv2Encoder, EfficientNetLite0Encoder, build_encoder, weights_problem

from . import pca

log = logging.getLogger(__name__)

NAME = "redi"
STREAM = "redi"
PCA_FILE = "redi_pca.safetensors"
FUSIONS = ("channel_concat", "joint")      # ReDi's merged tokens, or a stream of its own under joint attention
ENCODER_CHANNELS = {"dinov2": DINOv2Encoder.channels, "efficientnet_lite0": EfficientNetLite0Encoder.channels}


@dataclass
class RediOptions:
    """Options of the ReDi plugin (``redi.<name>=value``); defaults are the paper's where it states them."""

    encoder: str = option("dinov2", choices=ENCODER_NAMES)   # dinov2 (the paper's) | efficientnet_lite0 (offline)
    encoder_weights: Optional[str] = None     # weights file/dir; None = the encoder's default; "random" (tests)
    components: int = option(8, ge=1)         # r, the principal components kept
    loss_weight: float = option(1.0, ge=0)    # weight of the representation's v-loss
    rep_drop: float = option(0.2, ge=0, le=1)  # probability that a training batch drops its representation
    rep_guidance: float = option(0.0, ge=0)   # w_r of representation guidance at sampling (0: off, no extra forward)
    pca: Optional[str] = None                 # the PCA cache file (fitted there if missing); None: <run>/redi_pca.safetensors
    pca_images: int = option(2048, ge=1)      # training images the PCA is fitted on
    fusion: str = option("channel_concat", choices=FUSIONS)   # channel_concat: ReDi's merged tokens; joint: own stream
    fusion_blocks: int = option(0, ge=0)      # K stream-specific blocks after the fused ones (0: fused up to the heads)

    def check(self, config) -> None:
        if self.fusion != "joint" and len(config.plugins) > 1 and "vco" in config.plugins:
            raise ConfigError(f"redi.fusion={self.fusion} fuses the representation into the pixel tokens, which takes "
                              "exactly one extra stream, and --plugin vco adds another: set redi.fusion=joint to "
                              "compose them (or enable one of the two)")
        channels = ENCODER_CHANNELS[self.encoder]
        if self.components > channels:
            raise ConfigError(f"redi.components={self.components} but {self.encoder}'s tokens have {channels} channels: "
                              f"use at most {channels}")
        if self.encoder_weights not in (None, "random") and not Path(self.encoder_weights).expanduser().exists():
            raise ConfigError(f"redi.encoder_weights={self.encoder_weights!r} does not exist: pass the local weights")


def options(config) -> RediOptions:
    return plugin_options(config, RediOptions)


@dataclass
class RepresentationStream(Stream):
    """The ``redi`` stream: the r PCA coefficients of the encoder's token on every patch.

    ``clean`` gives the encoder's tokens ``(B, T, C)`` and ``normalize`` reduces and calibrates them to the
    ``(B, T, r)`` target (the PCA, fitted in ``jit_setup``, is this stream's calibration)."""

    run: Optional[RediRun] = field(default=None, repr=False, compare=False)

    def clean(self, images: torch.Tensor, values: dict) -> torch.Tensor:
        run = self.run
        with torch.no_grad():
            return run.encoder(images.device).target_tokens(images, run.grid)

    def normalize(self, clean: torch.Tensor) -> torch.Tensor:
        return self.run.basis().project(clean)


class RediRun:
    """ReDi for one run: its options, frozen encoder and PCA basis."""

    def __init__(self, config):
        self.config = config
        self.opts = options(config)
        self.grid = get_model_config(config.model, **config.model_overrides).grid
        self._encoders: dict[str, torch.nn.Module] = {}
        self._basis: Optional[pca.PcaBasis] = None

    def encoder(self, device) -> torch.nn.Module:
        """The frozen encoder on ``device``, built once (under a forked RNG), fp32 whatever the step's autocast."""
        key = str(torch.device(device))
        if key not in self._encoders:
            with isolated_rng(self.config.train.seed, device):
                self._encoders[key] = build_encoder(self.opts.encoder, self.opts.encoder_weights, device, "fp32")
        return self._encoders[key]

    def basis(self) -> pca.PcaBasis:
        if self._basis is None:
            raise RuntimeError("redi: the PCA basis is set up by jit_setup at the start of training")
        return self._basis

    def identity(self, dataset, image_size: int) -> dict:
        """What the PCA is fitted for (compared with a cache's record before it is used)."""
        data = self.config.data
        source = str(Path(data.path).expanduser().resolve()) if data.path else data.name
        return {"encoder": self.opts.encoder, "weights": str(self.opts.encoder_weights or "default"),
                "grid": self.grid, "image_size": image_size, "data": f"{source} ({len(dataset)} training images)",
                "components": self.opts.components}

    def _load_or_fit(self, dataset, device, run_dir: Optional[Path], image_size: int) -> None:
        identity = self.identity(dataset, image_size)
        path = Path(self.opts.pca).expanduser() if self.opts.pca else (run_dir / PCA_FILE if run_dir else None)
        if path is not None and path.is_file():
            self._basis = pca.load(path, identity)
            return
        from jit_core.data import to_model_range
        from torch.utils.data import DataLoader, Subset
        n = min(self.opts.pca_images, len(dataset))
        subset = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(self.config.train.seed))[:n]
        loader = DataLoader(Subset(dataset, subset.tolist()), batch_size=64, num_workers=0)
        log.info("redi: fitting the PCA (r=%d) on %d training images (%s)", self.opts.components, n, self.opts.encoder)
        enc = self.encoder(device)
        basis = pca.fit(lambda x: enc.target_tokens(x, self.grid), (to_model_range(u8).to(device) for u8, _ in loader),
                        self.opts.components)
        basis.meta.update(identity)
        from jit_core.distributed import data_rank_and_world
        if path is not None and data_rank_and_world()[0] == 0:
            pca.save(basis, path)
        self._basis = basis

    # ----------------------------------------------------------------- hooks
    @hookimpl
    def jit_setup(self, run):
        """When training: build the encoder and load the cached PCA (refused if fitted for another setting) or fit it."""
        if run.training and not run.dry_run:
            self._load_or_fit(run.dataset, torch.device(run.device), Path(run.run_dir) if run.run_dir else None,
                              run.model_config.image_size)

    @hookimpl
    def jit_preflight(self):
        problem = weights_problem(self.opts.encoder, self.opts.encoder_weights, self.grid)
        return [problem.replace("vco.encoder", "redi.encoder")] if problem else []

    @hookimpl
    def jit_streams(self, model_config):
        """``redi``: r channels per patch token (the PCA coefficients), fused with the pixel tokens: channel
        concatenation (``redi.fusion``), i.e. cat([pixel, redi]) -> Linear(2h -> h) -> the shared blocks, as
        ReDi's merged tokens (the sum of the two embeddings), split again into the two heads."""
        return [RepresentationStream(STREAM, kind="tokens", channels=self.opts.components,
                                     loss_weight=self.opts.loss_weight, fusion=self.opts.fusion,
                                     fusion_blocks=self.opts.fusion_blocks, run=self)]

    @hookimpl
    def jit_null_branch(self, drop, training, generator):
        """The representation drop, decided once per training batch: every row's representation input is zeroed
        and its loss off, or none. The unconditional half of CFG keeps the representation (labels only)."""
        if not training or self.opts.rep_drop == 0:
            return None
        # one draw for the batch, kept on the device (no host sync): all rows dropped, or none
        dropped = torch.rand((), generator=generator, device=generator.device).to(drop.device) < self.opts.rep_drop
        rows = dropped.expand(drop.shape)
        return NullBranch(inputs={STREAM: torch.zeros(())}, loss_masks={STREAM: (~rows).float()}, drop=rows)

    @hookimpl
    def jit_guidance_terms(self):
        """Representation guidance: v = v_cfg + w_r (v(x, z) - v(x, null z)), null z = the drop's zeros."""
        if self.opts.rep_guidance == 0:
            return None
        return [GuidanceTerm(self.opts.rep_guidance, {STREAM: 0.0})]


# ----------------------------------------------------------------------------------- install-time hooks
@hookimpl
def jit_options():
    """ReDi's options (``redi.*``)."""
    return RediOptions


def _preset_redi_tiny():
    """The core's ``tiny`` run plus ReDi with the offline EfficientNet-Lite0 encoder (r = 8 of its 40 channels)."""
    cfg = get_preset("tiny")
    cfg.plugins = list(cfg.plugins) + [NAME]
    cfg.plugin_options = {**cfg.plugin_options, NAME: {"encoder": "efficientnet_lite0"}}
    return cfg


@hookimpl
def jit_presets():
    return {"redi-tiny": _preset_redi_tiny}


@hookimpl
def jit_studies():
    from .study import studies
    return studies()


@hookimpl
def jit_run_plugin(config):
    """One :class:`RediRun` per run."""
    return RediRun(config)
