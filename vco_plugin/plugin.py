"""V-Co as a jit_core plugin: every ingredient enters through a hook (V-Co, arXiv 2603.16792;
official details in docs/official-code.md#v-co).

The module holds the install-time hooks (options, presets, studies, commands) and ``jit_run_plugin``,
which makes one :class:`VCoRun` per run: it owns the run's options, frozen encoder, feature
statistics and feature cache, and answers the per-run hooks.

1. fully dual-stream model  -> ``jit_streams`` adds the ``feature`` token stream (:class:`FeatureStream`:
                               frozen encoder tokens), fused as ``vco.fusion`` says (architecture.py);
2. structured null branch   -> ``FeatureStream.null_branch`` (null_branch.py: structured | label_drop |
                               input_dropout), ``FeatureStream.guidance_scale`` (w_d);
3. drifting hybrid loss     -> ``jit_loss_terms`` (drift_loss.py), ``jit_batch_sampler`` (batches.py);
4. RMS calibration          -> ``FeatureStream.normalize`` (calibration.py statistics), or a time shift.

Two speed levers, off by default (the paper's computation): ``shared_encoder_pass`` (one encoder pass
on the clean images serves the target tokens and the hybrid loss's f+, handed over in ``step.values``)
and ``feature_cache`` (target tokens precomputed by ``jit vco cache-features``, looked up by image content;
feature_cache.py).

Enable with ``jit train --preset vco-b16`` (or ``--plugin vco``); options live under ``vco.*``.
"""
# Options use Optional[X], not X | None (the style of this module; jit_core understands both).
# ruff: noqa: UP045
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import torch

from jit_core import durable
from jit_core.config import Config, ConfigError, get_preset, option, plugin_options
from jit_core.hookspecs import RunContext, hookimpl
from jit_core.model.streams import Stream
from jit_core.rng import isolated_rng

from .architecture import VCO_FUSIONS, stream_fusion
from .batches import GroupedClassBatchSampler, local_group_ids
from .drift_loss import hybrid_loss
from .null_branch import FEATURE, MASKABLE, NULL_BRANCHES, null_branch

log = logging.getLogger(__name__)

NAME = "vco"
STATS_FILE = "vco_stats.safetensors"
ENCODERS = ("dinov2", "efficientnet_lite0")
# rms: the recipe; none and time_shift: Table 4's ablations as released (table4_run_a, table4_run_b);
# time_shift_corrected: run_b without its defect (calibration.py; docs/embedded-comparison.md)
CALIBRATIONS = ("rms", "time_shift", "time_shift_corrected", "none")
SCALED = ("rms", "time_shift")                       # the target is multiplied by alpha
SHIFTED = ("time_shift", "time_shift_corrected")     # the feature stream's time is shifted by alpha


@dataclass
class VCoOptions:
    """Options of the V-Co plugin (``vco.<name>=value``); defaults are the paper's final recipe."""

    encoder: str = option("dinov2", choices=ENCODERS)   # dinov2 (DINOv2-B/14 reg4) | efficientnet_lite0 (offline)
    encoder_weights: Optional[str] = None   # weights file/dir for the encoder; None = its default; "random" (tests)
    encoder_precision: str = option("bf16", choices=("bf16", "fp32"))   # bf16: under the step's autocast (official)
    feature_loss_weight: float = option(0.1, ge=0)      # weight of the feature-stream v-loss (L_dino)
    calibration: str = option("rms", choices=CALIBRATIONS)   # rms: standardise x alpha | none | time_shift[_corrected]
    stats: Optional[str] = None             # stats file from `jit vco calibrate`; None = auto (computed at start)
    calib_images: int = option(2048, ge=1)  # training images used by the automatic statistics
    rms_factor: Optional[float] = option(None, gt=0)    # alpha; None = the statistics' RMS(x)/RMS(f) factor
    drift_coef: float = option(10.0, ge=0)  # coefficient of the hybrid loss (0 disables it)
    gate_tau: float = option(10.0, gt=0)    # hybrid loss: gate temperature tau_g
    repulsion_tau: float = option(0.2, gt=0)   # hybrid loss: repulsion kernel temperature tau_r
    groups_per_step: Optional[int] = option(None, ge=1)   # class groups per global step; None = classes_per_rank per rank
    classes_per_rank: int = option(1, ge=1)   # classes of one rank of the recipe, drawn without replacement (batches.py)
    class_balanced: bool = True             # class-balanced batches; False = the core's shuffled sampler
    cfg_feature: Optional[float] = option(None, ge=0)   # CFG scale w_d of the feature stream; None = the pixel scale
    null_branch: str = option("structured", choices=NULL_BRANCHES)   # the unconditional branch (null_branch.py)
    symmetric_mask: bool = False            # ablation: also block feature -> pixel attention when dropped
    fusion: str = option("dual", choices=VCO_FUSIONS)   # the architecture, V-Co Table 1 (architecture.py)
    shared_encoder_pass: bool = False       # speed: one clean-image encoder pass gives target and f+ (f+ at target input)
    feature_cache: Optional[str] = None     # speed: dir from `jit vco cache-features`; targets looked up, not computed

    def check(self, config) -> None:
        """Checks across options and the rest of the config, at start-up (and in ``jit train --dry-run``)."""
        if self.rms_factor is not None and self.calibration == "none":
            raise ConfigError(f"vco.rms_factor={self.rms_factor} has no effect with vco.calibration={self.calibration} "
                              "(alpha = 1): unset vco.rms_factor or use vco.calibration=rms")
        if self.symmetric_mask and self.null_branch != "structured":
            raise ConfigError(f"vco.symmetric_mask=true needs vco.null_branch=structured (it is {self.null_branch}): "
                              "the other null branches have no attention mask")
        if self.symmetric_mask and self.fusion not in MASKABLE:
            raise ConfigError(f"vco.symmetric_mask=true needs attention across the streams, which vco.fusion="
                              f"{self.fusion} has not: use vco.fusion=dual or shared_qkv")
        for key, path, what in (("stats", self.stats, "create it with `jit vco calibrate` or leave vco.stats unset"),
                                ("feature_cache", self.feature_cache, "build it with `jit vco cache-features`"),
                                ("encoder_weights", None if self.encoder_weights == "random" else self.encoder_weights,
                                 "pass the local weights file or folder")):
            if path and not Path(path).expanduser().exists():
                raise ConfigError(f"vco.{key}={path!r} does not exist: {what}")


def options(config) -> VCoOptions:
    """The typed, checked V-Co options of ``config`` (whichever name V-Co was enabled by)."""
    return plugin_options(config, VCoOptions)


def encoder_channels(name: str) -> int:
    """Channels of an encoder's target tokens, without building it (no weights needed to load a run)."""
    from . import features
    return {"dinov2": features.DINOv2Encoder, "efficientnet_lite0": features.EfficientNetLite0Encoder}[name].channels


# ----------------------------------------------------------------------------------- calibration state
class _Calibration:
    """Feature statistics of one run: loaded or computed once, then reused every step.

    Source, in order: the ``vco.stats`` file; ``<run_dir>/vco_stats.safetensors`` (a resumed run
    reuses its own); else computed from up to ``calib_images`` training images (a fixed random
    subset) and saved there by the main process.
    """

    def __init__(self, config, opts: VCoOptions, encoder):
        self.config, self.opts, self.encoder = config, opts, encoder   # encoder(device): the run's frozen encoder
        self.stats = None
        self._scaled: dict = {}

    def get(self, device, grid: int):
        """The statistics as loaded or computed (``var`` on the CPU)."""
        if self.stats is None:
            with isolated_rng(self.config.train.seed, device):   # a DataLoader draws its seed: not from training's
                self.stats = self._load_or_compute(torch.device(device), grid)
            meta = self.stats.meta
            log.info("vco: feature statistics var %s, rms_factor %.4f (%s images of %s)", tuple(self.stats.var.shape),
                     self.stats.rms_factor, meta.get("num_images", "?"), meta.get("dataset", self.config.data.name))
        return self.stats

    def alpha(self, device, grid: int) -> float:
        """alpha: the ``rms_factor`` option, else the statistics' RMS(x)/RMS(f) factor."""
        if self.opts.rms_factor is not None:
            return float(self.opts.rms_factor)
        return float(self.get(device, grid).rms_factor)

    def scaled(self, device, grid: int, alpha: float):
        """The statistics on ``device`` with ``rms_factor = alpha`` (what ``standardize`` multiplies by)."""
        key = (str(device), alpha)
        if key not in self._scaled:
            self._scaled[key] = replace(self.get(device, grid).to(device), rms_factor=alpha)
        return self._scaled[key]

    def _load_or_compute(self, device, grid: int):
        from .calibration import load_stats
        if self.opts.stats:
            if not Path(self.opts.stats).expanduser().is_file():
                raise ConfigError(f"vco.stats={self.opts.stats!r} does not exist; create it with `jit vco calibrate` "
                                  "or leave vco.stats unset to compute statistics at the start of training")
            return load_stats(self.opts.stats)
        run_dir = self.config.run_dir
        if run_dir and (Path(run_dir) / STATS_FILE).is_file():
            return load_stats(Path(run_dir) / STATS_FILE)
        stats = self._compute(device, grid)
        if run_dir and _rank_and_world()[0] == 0:
            _save_atomic(stats, Path(run_dir))
        return stats

    def _compute(self, device, grid: int):
        from torch.utils.data import DataLoader, Subset

        from jit_core.data import build_dataset, to_model_range

        from .calibration import compute_stats
        cfg, opts = self.config, self.opts
        dataset = build_dataset(cfg.data, train=True, seed=cfg.train.seed)
        n = min(opts.calib_images, len(dataset))
        subset = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(cfg.train.seed))[:n].tolist()
        log.info("vco: computing feature statistics from %d training images (%s, grid %d)", n, opts.encoder, grid)
        loader = DataLoader(Subset(dataset, subset), batch_size=64, num_workers=cfg.data.num_workers)
        stats = compute_stats(self.encoder(device), (to_model_range(u8) for u8, _ in loader), grid,
                              max_images=n, progress=False)
        stats.meta.update(dataset=cfg.data.name if not cfg.data.path else cfg.data.path, seed=cfg.train.seed)
        return stats


def _rank_and_world() -> tuple[int, int]:
    """The data-parallel (rank, world) of the current batch: a virtual rank's under ``train.grad_accum``."""
    from jit_core.distributed import data_rank_and_world
    return data_rank_and_world()


def _save_atomic(stats, run_dir: Path) -> None:
    """Write the statistics (and their sidecar files) into ``run_dir`` by rename, so no reader sees half a file."""
    from .calibration import save_stats
    with durable.staged(run_dir, last=(STATS_FILE,)) as stage:   # the main file last; links refused
        save_stats(stats, stage / STATS_FILE)
    log.info("vco: feature statistics saved to %s", run_dir / STATS_FILE)


def _default_device(config) -> torch.device:
    want = getattr(config.train, "device", "auto")
    if want == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(want)


# ----------------------------------------------------------------------------------- speed levers
def open_feature_cache(opts: VCoOptions, model_config):
    """The opened ``vco.feature_cache``, checked against this run's encoder, weights, grid, image size and
    channels (FeatureCacheError naming the mismatch and the rebuild command otherwise)."""
    from .feature_cache import open_cache
    cache = open_cache(opts.feature_cache)
    cache.check(opts.encoder, opts.encoder_weights, model_config.grid, model_config.image_size,
                model_config.in_channels)
    return cache


# ----------------------------------------------------------------------------------- hooks
@hookimpl
def jit_options():
    """V-Co's options (``vco.*``)."""
    return VCoOptions


def _preset_vco(model: str, cfg_scale: float) -> Config:
    """The paper's final recipe at 256 px (docs/official-code.md#recipe).

    The README command's batches: 8 class groups of 128 per step (8 GPUs x 1 class x 128 images; on
    fewer GPUs the 8 groups are placed on the ranks there are), global batch 1024 on 8 GPUs and the
    core's lr = blr * global / 256 = 2e-4. The released B/L/H scripts ran 16 x 32, 32 x 16 and 64 x 16
    (docs/official-code.md#batches, #defects 3); to reproduce one set ``optim.batch_size`` and ``vco.groups_per_step`` (e.g. 32
    and 16 on 16 ranks) and the lr follows the real batch. Dropout 0 for all sizes.
    """
    cfg = Config(model=model, model_overrides={"proj_drop": 0.0, "attn_drop": 0.0})
    cfg.data.image_size = 256
    cfg.diffusion.noise_scale = 1.0
    cfg.diffusion.label_drop_prob = 0.1      # the joint label + feature drop
    cfg.optim.batch_size = 128
    cfg.train.attention = "fast"             # V-Co's SDPA numerics (logits not forced to fp32)
    cfg.sample.cfg = cfg_scale
    cfg.sample.interval = (0.1, 1.0)
    cfg.plugins = [NAME]
    cfg.plugin_options = {NAME: {"encoder": "dinov2", "groups_per_step": 8}}
    return cfg


def _preset_vco_tiny() -> Config:
    """The core's ``tiny`` run plus V-Co with the offline EfficientNet-Lite0 encoder (side-by-side pair).

    Batches: 8 class groups of 8 per 64-image step, the structure of the paper's README command
    (8 groups per step) at this batch; one group per step measured far worse (docs/embedded-comparison.md).
    """
    cfg = get_preset("tiny")
    cfg.plugins = list(cfg.plugins) + [NAME]
    cfg.plugin_options = {**cfg.plugin_options, NAME: {"encoder": "efficientnet_lite0", "groups_per_step": 8}}
    return cfg


def _checkpointed(cfg: Config) -> Config:
    cfg.train.grad_checkpointing = True
    return cfg


@hookimpl
def jit_presets():
    """``vco-b16`` / ``vco-l16`` / ``vco-h16`` (paper recipe) and ``vco-tiny`` (CPU demo)."""
    return {
        "vco-b16": lambda: _preset_vco("JiT-B/16", 1.8),
        "vco-l16": lambda: _checkpointed(_preset_vco("JiT-L/16", 1.4)),   # 128 per 80 GB GPU: see jit_core/model/budget.py
        "vco-h16": lambda: _checkpointed(_preset_vco("JiT-H/16", 1.5)),
        "vco-tiny": _preset_vco_tiny,
    }


@hookimpl
def jit_studies():
    """``vco-tiny`` (ablations on the embedded data), ``vco-tiny-pair`` (the demo) and ``vco-b16`` (SLURM)."""
    from .study import imagenet_studies, tiny_studies
    return {**tiny_studies(), **imagenet_studies()}


def hybrid_groups(step, opts: VCoOptions) -> torch.Tensor:
    """The hybrid loss's groups: the sampler's class groups of the local batch; the labels for iid batches or a
    batch that did not come from the sampler (another size than ``optim.batch_size``, e.g. called directly)."""
    batch = step.labels.shape[0]
    if not opts.class_balanced or batch != step.config.optim.batch_size:
        return step.labels
    world = _rank_and_world()[1]
    ids = local_group_ids(batch, opts.groups_per_step or world * opts.classes_per_rank, world)
    return ids.to(step.labels.device)


@hookimpl
def jit_official_layouts():
    """The official V-Co checkpoint layout (official_layout.py), for ``jit convert`` and exports."""
    from .official_layout import VCO_LAYOUT
    return [VCO_LAYOUT]


@hookimpl
def jit_run_plugin(config):
    """One :class:`VCoRun` per run."""
    return VCoRun(config)


F_POS = "vco.f_pos"      # step.values key: the hybrid loss's f+ from the target's encoder pass (shared_encoder_pass)


@dataclass
class FeatureStream(Stream):
    """V-Co's ``feature`` stream with its behaviour: encoder tokens as the clean target (ingredient 1), their
    calibration (ingredient 4), the feature CFG scale ``w_d`` and the structured null branch (ingredient 2)."""

    run: Optional[VCoRun] = field(default=None, repr=False, compare=False)

    def clean(self, images: torch.Tensor, values: dict) -> torch.Tensor:
        run, opts = self.run, self.run.opts
        if opts.feature_cache:        # speed lever: precomputed tokens, looked up by image content
            return run.feature_cache(run.model_config).lookup(images)
        enc, grid = run.encoder(images.device), run.model_config.grid
        if opts.shared_encoder_pass and opts.drift_coef != 0:   # speed lever: f+ from the same pass, on the step
            tokens, values[F_POS] = enc.target_and_embedding(images, grid)
            return tokens
        return enc.target_tokens(images, grid)

    def normalize(self, clean: torch.Tensor) -> torch.Tensor:
        """Per-(position, channel) standardisation, times alpha under ``rms`` and ``time_shift`` (the released
        run_b scales as well as shifts), times 1 under ``none`` (the released run_a) and ``time_shift_corrected``
        (alpha is in the stream's time only)."""
        run, opts = self.run, self.run.opts
        from .calibration import standardize
        grid = round(clean.shape[1] ** 0.5)
        alpha = run.calibration.alpha(clean.device, grid) if opts.calibration in SCALED else 1.0
        stats = run.calibration.scaled(clean.device, grid, alpha)
        if tuple(stats.var.shape) != tuple(clean.shape[1:]):
            raise ConfigError(f"vco feature statistics have shape {tuple(stats.var.shape)} but the {opts.encoder} "
                              f"targets are {tuple(clean.shape[1:])}: recompute them (`jit vco calibrate`) for "
                              "this encoder and grid")
        return standardize(clean, stats)

    def guidance_scale(self, scale: float) -> float:
        """1 when unguided (scale 1), else ``cfg_feature`` (w_d) or the pixel scale."""
        if scale == 1.0:
            return 1.0
        w_d = self.run.opts.cfg_feature
        return scale if w_d is None else w_d

    def null_branch(self, drop: torch.Tensor, streams, training: bool):
        """``vco.null_branch``: structured (pixel->feature blocked, feature loss off), label_drop, or input_dropout."""
        opts = self.run.opts
        return null_branch(opts.null_branch, drop, opts.symmetric_mask, self.name, opts.fusion)


class VCoRun:
    """V-Co for one run: its options, frozen encoder, feature statistics and feature cache, and the per-run hooks.

    Set-up (``jit_setup``, at start-up under the core's forked RNG) builds the encoder, loads or computes
    the statistics and opens the feature cache, so nothing is built lazily inside a training step.
    """

    def __init__(self, config):
        self.config = config
        self.opts = options(config)
        self.calibration = _Calibration(config, self.opts, self.encoder)
        self.device = _default_device(config)
        self.model_config = None                   # set by jit_setup / jit_streams
        self._encoders: dict[str, object] = {}     # device -> the frozen encoder
        self._cache = None                         # the opened, checked feature cache

    # ----------------------------------------------------------------- what the run owns
    def encoder(self, device):
        """The frozen feature encoder on ``device``, built once per run (under a forked RNG, whenever it is)."""
        key = str(torch.device(device))
        if key not in self._encoders:
            from .features import build_encoder
            with isolated_rng(self.config.train.seed, device):   # its random init must not shift training's
                self._encoders[key] = build_encoder(self.opts.encoder, self.opts.encoder_weights, device=device,
                                                            precision=self.opts.encoder_precision)
        return self._encoders[key]

    def feature_cache(self, model_config):
        """``vco.feature_cache``, opened and checked against this run once."""
        if self._cache is None:
            self._cache = open_feature_cache(self.opts, model_config)
        return self._cache

    # ----------------------------------------------------------------- hooks
    @hookimpl
    def jit_setup(self, run: RunContext):
        """Open and check the feature cache; when training, build the encoder and get the statistics."""
        self.device, self.model_config = torch.device(run.device), run.model_config
        if self.opts.feature_cache:           # a missing cache, or one built for another setting, fails here
            self.feature_cache(run.model_config)
        if not run.training or run.dry_run:
            return
        if not self.opts.feature_cache or self.opts.drift_coef != 0:
            self.encoder(run.device)
        self.calibration.get(run.device, run.model_config.grid)   # every calibration standardises

    @hookimpl
    def jit_preflight(self, config):
        """Whether the frozen encoder can be built from here (weights findable offline, the token grid it fits):
        files are looked for, nothing is built. Missing stats / cache / weights files fail the options' check."""
        opts = self.opts
        # the encoder is needed for the targets (unless cached), the hybrid loss and the automatic statistics
        needs_encoder = not opts.feature_cache or opts.drift_coef != 0 or not opts.stats
        if not needs_encoder:
            return []
        from jit_core.model import get_model_config

        from .features import weights_problem
        try:
            grid = get_model_config(config.model, **config.model_overrides).grid
        except (TypeError, ValueError):
            grid = None   # the core names a bad model config itself
        problem = weights_problem(opts.encoder, opts.encoder_weights, grid)
        return [problem] if problem else []

    @hookimpl
    def jit_streams(self, model_config):
        """The ``feature`` stream: frozen encoder tokens on the pixel grid, co-denoised with the pixels."""
        self.model_config = model_config
        opts = self.opts
        alpha = self.calibration.alpha(self.device, model_config.grid) if opts.calibration in SHIFTED else 1.0
        return [FeatureStream(FEATURE, kind="tokens", channels=encoder_channels(opts.encoder), in_context=True,
                              loss_weight=opts.feature_loss_weight, noise_scale=1.0, guidance=True,
                              default_init=True, time_shift=alpha, shift_prediction=opts.calibration != "time_shift",
                              fusion=stream_fusion(opts.fusion), run=self)]   # K = 1 block, as the official scripts

    @hookimpl
    def jit_loss_terms(self, step):
        """``hybrid``: drift_coef x the perceptual-drifting loss of x-hat against the clean images."""
        opts = self.opts
        if opts.drift_coef == 0:
            return {}
        enc = self.encoder(step.images.device)
        f = enc.embedding(step.preds["pixel"])
        f_pos = step.values.get(F_POS)          # from the feature target's encoder pass of this very step
        if f_pos is None:
            with torch.no_grad():
                f_pos = enc.embedding(step.images)
        groups = hybrid_groups(step, opts)
        return {"hybrid": opts.drift_coef * hybrid_loss(f, f_pos, groups, opts.gate_tau, opts.repulsion_tau)}

    @hookimpl
    def jit_batch_sampler(self, dataset, rank, world_size, seed):
        """Class-balanced batches: ``groups_per_step`` class groups per global step, placed on the ranks."""
        opts = self.opts
        if not opts.class_balanced:
            return None
        try:
            sampler = GroupedClassBatchSampler(dataset.targets,
                                               opts.groups_per_step or world_size * opts.classes_per_rank,
                                               self.config.optim.batch_size, rank=rank, world_size=world_size,
                                               seed=seed, classes_per_rank=opts.classes_per_rank)
        except ValueError as exc:
            raise ConfigError(f"{exc} (or vco.class_balanced=false)") from None
        if rank == 0:
            sampler.warn_if_few_classes()
        return sampler


@hookimpl
def jit_add_commands(cli):
    """``jit vco calibrate`` and ``jit vco cache-features``."""
    import click

    from .calibration import calibrate_command
    from .feature_cache import cache_features_command

    @click.group(NAME)
    def vco():
        """V-Co commands."""

    vco.add_command(calibrate_command())
    vco.add_command(cache_features_command())
    cli.add_command(vco)
