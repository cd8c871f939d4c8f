"""Every check a real start runs, in order, before the run folder is touched; ``jit train --dry-run`` runs exactly these.

1. the plugins load (names, hook names) and their options check (types, choices, ranges, ``check(config)``);
2. the core's config fields (choices, ranges) and cross-field checks (:func:`jit_core.config.check_config`),
   and the packages of the switched-on trackers (:func:`jit_core.trackers.check`);
   1 and 2 are the run's resolve step, :func:`jit_core.plugins.resolve_run`, which the caller runs first;
3. the run folder's name fits the file system;
4. the dataset (name, path, images), the model config it implies (model name, image size);
5. the batch sampler (at most one plugin's; at least one batch per epoch);
6. the device: no silent CPU fallback (:mod:`.devices`);
7. the memory per GPU: the estimate fits the GPU (:mod:`.memory_plan`; the fix in one line if not);
8. the run folder holds this run or none, and the checkpoint a resume would load verifies (read only);
9. the streams (``jit_streams``) and each plugin stream's clean target on two training images: what the first
   step would do, so a frozen encoder's weights (V-Co's DINOv2 offline) fail here, before a file is written.

Then :func:`setup_plugins` runs every plugin's ``jit_setup``: the trainer after it has locked the run
folder, ``--dry-run`` with ``dry_run=True`` (plugins check what they can, build no weights, write nothing).
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from jit_core.config import Config, ConfigError
from jit_core.data import build_dataset
from jit_core.distributed import DistInfo
from jit_core.hookspecs import RunContext
from jit_core.model import budget
from jit_core.plugins import Plugins, resolve_run
from jit_core.runs import checkpoint as ckpt
from jit_core.training.batches import ResumableBatches
from jit_core.training.build import make_batches
from jit_core.training.devices import check_device_choice
from jit_core.training.memory_plan import MemoryPlan, check_memory
from jit_core.training.run_dir import check_run_dir

NAME_MAX = 255          # bytes per path component on ext4, xfs, btrfs, NFS


@dataclass
class Startup:
    """What the start-up checks built on the way: reused by the trainer."""

    plugins: Plugins
    dataset: Any
    model_config: Any
    batches: ResumableBatches
    memory: Optional[MemoryPlan] = None     # None: a small CPU run (not planned)
    streams: list = field(default_factory=list)   # the model's streams, built (and probed) once


def check_run_folder_name(run_dir: str | os.PathLike) -> None:
    """Each component of the run folder's path must fit the file system (``NAME_MAX`` bytes)."""
    for part in Path(run_dir).parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise ConfigError(f"run folder name {part[:40]}... is {len(os.fsencode(part))} bytes long; the file system "
                              f"allows {NAME_MAX} per folder name: choose a shorter --run-dir")


def setup_plugins(startup: Startup, config: Config, run_dir: Optional[str | os.PathLike], dist: DistInfo, *,
                  dry_run: bool = False) -> None:
    """Every plugin's ``jit_setup`` for this training run (under a forked RNG: see :meth:`Plugins.setup`); a dry
    run first runs the plugins' pre-flight checks (``jit_preflight``) and fails on any problem."""
    if dry_run:
        problems = startup.plugins.preflight(config)
        if problems:
            raise ConfigError(f"this run would fail once started: {'; '.join(problems)}")
    startup.plugins.setup(RunContext(config=config, model_config=startup.model_config, device=dist.device,
                                     dataset=startup.dataset, run_dir=Path(run_dir) if run_dir else None,
                                     rank=dist.rank, world_size=dist.world_size, training=True, dry_run=dry_run))


def start_checks(config: Config, run_dir: Optional[str | os.PathLike], dist: DistInfo, *, extra_plugins=(),
                 plugins: Optional[Plugins] = None, allow_changes: Iterable[str] = (),
                 gpu_here: Optional[bool] = None) -> Startup:
    """Run every start-up check (module docstring) without writing anything; ``run_dir`` None skips 3 and 8.
    ``allow_changes``: saved-config keys this resume may change (already in config.json's spelling);
    ``gpu_here``: whether a GPU is installed (None: probe the machine, :func:`.devices.gpu_present`)."""
    if plugins is None or not config.resolved:   # steps 1 and 2 (and the model config): the one resolve step
        config, plugins = resolve_run(config, extra_plugins, plugins=plugins)
    if run_dir is not None:
        check_run_folder_name(run_dir)
    dataset = build_dataset(config.data, train=True, seed=config.train.seed)
    model_config = config.model_config      # resolved with the data's channels and classes (plugins/resolve.py)
    batches = make_batches(dataset, config, plugins, dist)
    if len(batches) == 0:
        raise ConfigError(f"the dataset ({len(dataset)} images) is smaller than one global batch "
                          f"({batches.batch_size * dist.world_size}): lower optim.batch_size")
    check_device_choice(config.train.device, dist.device, budget.params(model_config).trainable, gpu_here)
    memory = check_memory(config, model_config, plugins, dist.device)
    if run_dir is not None:
        check_run_dir(config, Path(run_dir), allow_changes)
        if ckpt.list_checkpoints(run_dir):          # a resume: its checkpoint must verify before anything is written
            latest = ckpt.latest_checkpoint(run_dir)
            ckpt.check_state_file(latest)
    streams = plugins.streams(config, model_config)
    probe_stream_targets(streams, dataset, dist.device)
    return Startup(plugins, dataset, model_config, batches, memory, streams)


def probe_stream_targets(streams, dataset, device) -> None:
    """Step 9: every stream's ``target`` on the first two training images, as the first step computes it
    (frozen encoders are built, their weights read). The global RNG is left as it was: resumes stay exact."""
    import torch

    from jit_core.data import to_model_range
    from jit_core.model.streams import Stream
    probed = [s for s in streams if s.target is not None or type(s).clean is not Stream.clean]   # not the images
    if not probed:
        return
    with torch.random.fork_rng(devices=[]):
        images = torch.stack([torch.as_tensor(dataset[i][0]) for i in range(min(2, len(dataset)))])
        images = to_model_range(images).to(device)
        with torch.no_grad():
            for s in probed:
                s.clean(images, {})


def discard_unused_run_dir(run_dir: Path) -> None:
    """Remove a run folder this start created if it holds nothing but its lock file (nothing else is touched)."""
    try:
        if {p.name for p in run_dir.iterdir()} <= {".lock"}:
            (run_dir / ".lock").unlink(missing_ok=True)
            run_dir.rmdir()
    except OSError:
        pass    # not empty after all (another process wrote there), or gone: leave it
