"""Named run presets: the paper's ImageNet recipes per model size, and the small CPU runs (``tiny``, ``test``).

A preset is a factory returning a fresh, unresolved :class:`~.schema.Config` (each call a new object, so a
caller may change it before resolving). Plugins add theirs through the ``jit_presets`` hook.
"""
from __future__ import annotations

import typing

from .fields import ConfigError, suggest
from .schema import Config, DataConfig, OptimConfig, SampleConfig, TrainConfig


def _preset_jit(model: str, image_size: int, cfg_scale: float, checkpointing: bool = False) -> Config:
    """The paper's recipe for ``model`` (128 images per GPU); ``checkpointing`` where 128 images do not fit an
    80 GB GPU without it (the memory model of jit_core/model/budget.py; tests/test_budget.py checks each preset)."""
    cfg = Config(model=model)
    cfg.data.image_size = image_size
    # JPEG decode + ADM crop costs 4-6 ms of CPU per image; a B/16 H100 at 40 % MFU takes ~2,600 img/s
    # (benchmarks/RESULTS.md, "Data loading"): 12 workers per GPU instead of the generic 4.
    cfg.data.num_workers = 12
    cfg.sample.cfg = cfg_scale
    cfg.train.grad_checkpointing = checkpointing
    return cfg


def _preset_tiny() -> Config:
    """A small JiT on Fashion-MNIST (32 px, patch 4) that trains on 2 CPU cores in a few minutes.

    300 steps of 64 images (lr 1e-3, short warmup, fast EMAs), Heun-10 sampling with CFG 2 on the
    interval; evaluation on 500 samples. ``vco-tiny`` is the same run with the V-Co plugin.
    """
    cfg = Config(model="JiT-S/4")
    cfg.data = DataConfig(name="fashion_mnist", image_size=32, num_workers=0, pin_memory=False)
    cfg.diffusion.noise_scale = 1.0     # JiT's image_size / 256 rule would give 0.125 at 32 px: too little noise
    cfg.optim = OptimConfig(batch_size=64, blr=4e-3, warmup_epochs=0.05, ema_decays=(0.98, 0.99))  # short run: fast EMAs
    cfg.train = TrainConfig(epochs=1, max_steps=300, log_every=10, ckpt_every=100, sample_every=0,
                            attention="fast", precision="fp32", device="cpu")
    cfg.sample = SampleConfig(method="heun", steps=10, cfg=2.0, interval=(0.1, 1.0), batch_size=100, num_images=500)
    return cfg


def _widened(cfg: Config, model: str) -> Config:
    """``cfg`` with the widened model: a parameter-matched control, the same run but for the network's width."""
    cfg.model = model
    return cfg


def _preset_test() -> Config:
    """The smallest real run (digits, JiT-T/4) for unit tests."""
    cfg = Config(model="JiT-T/4")
    cfg.data = DataConfig(name="digits", image_size=32, num_workers=0, pin_memory=False)
    cfg.optim = OptimConfig(batch_size=16, lr=1e-3, warmup_epochs=0.0)
    cfg.train = TrainConfig(epochs=1, max_steps=6, log_every=2, ckpt_every=3, attention="exact",
                            precision="fp32", device="cpu")
    cfg.sample = SampleConfig(method="heun", steps=4, cfg=1.5, batch_size=10, num_images=20)
    return cfg


PRESETS: dict[str, typing.Callable[[], Config]] = {
    "jit-b16": lambda: _preset_jit("JiT-B/16", 256, 2.9),
    "jit-b32": lambda: _preset_jit("JiT-B/32", 512, 2.9),
    "jit-l16": lambda: _preset_jit("JiT-L/16", 256, 2.4, checkpointing=True),
    "jit-l32": lambda: _preset_jit("JiT-L/32", 512, 2.5, checkpointing=True),
    "jit-h16": lambda: _preset_jit("JiT-H/16", 256, 2.2, checkpointing=True),
    "jit-h32": lambda: _preset_jit("JiT-H/32", 512, 2.3, checkpointing=True),
    "jit-g16": lambda: _preset_jit("JiT-G/16", 256, 2.2, checkpointing=True),
    "jit-b16-wide": lambda: _preset_jit("JiT-B/16-wide", 256, 2.9),   # JiT widened to a two-stream B/16's size
    "tiny": _preset_tiny,
    "jit-tiny-wide": lambda: _widened(_preset_tiny(), "JiT-S/4-wide"),
    "test": _preset_test,
}


def register_preset(name: str, factory: typing.Callable[[], Config]) -> None:
    """Plugins add presets (V-Co: ``vco-b16``) through the ``jit_presets`` hook."""
    PRESETS[name] = factory


def get_preset(name: str) -> Config:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}{suggest(name, PRESETS)}; known presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]()
