"""The run folder as the trainer sees it: is it this run (or a new one), and its saved ``config.json``."""
from __future__ import annotations

import json
from pathlib import Path

from jit_core.config import Config, ConfigError
from jit_core.runs import checkpoint as ckpt

# config keys that may change when a run is resumed (length, logging, trackers, resources)
RESUMABLE_CHANGES = ("train.max_steps", "train.epochs", "train.log_every", "train.ckpt_every", "train.keep_every",
                     "train.sample_every", "train.device", "train.compile", "data.num_workers", "data.pin_memory",
                     "data.path", "run_dir", "train.nan_policy", "train.max_skipped_steps", "sample.", "log")


def config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """``key: saved vs now`` for every key that differs and may not change on resume."""
    out = []
    for key in sorted(set(a) | set(b)):
        full = f"{prefix}{key}"
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict) and key != "model_overrides":
            out += config_diff(va, vb, full + ".")
        elif va != vb and not full.startswith(RESUMABLE_CHANGES):
            out.append(f"{full}: {va!r} (saved) vs {vb!r} (now)")
    return out


def check_run_dir(config: Config, run_dir: Path) -> None:
    """Refuse a folder that holds another run, or files that are not a jit run. Reads only: every rank may call it."""
    saved = run_dir / "config.json"
    started = bool(ckpt.list_checkpoints(run_dir))  # a run that never wrote a checkpoint may restart with another config
    if saved.exists() and started:
        diff = config_diff(json.loads(saved.read_text()), json.loads(config.to_json()))
        if diff:
            raise ConfigError(f"run folder {run_dir} already holds a different run ({'; '.join(diff[:4])}); "
                              "use a new --run-dir, or resume with the saved config (jit train --resume RUN)")
    elif not saved.exists() and run_dir.exists() and any(run_dir.iterdir()) and not (run_dir / "checkpoints").exists():
        raise ConfigError(f"run folder {run_dir} exists and is not empty but holds no jit run; pick a new --run-dir")


def write_config(config: Config, run_dir: Path) -> None:
    """Create the folder and write ``config.json`` by rename (the main process only)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    saved = run_dir / "config.json"
    tmp = saved.with_suffix(".json.tmp")
    tmp.write_text(config.to_json())
    tmp.replace(saved)


def prepare_run_dir(config: Config, run_dir: Path, is_main: bool) -> bool:
    """Check the folder, write the config (main process). Returns True when there is a checkpoint to resume from.

    Under DDP call :func:`check_run_dir` on every rank, then a barrier, then :func:`write_config` on rank 0,
    so that no rank checks a folder another rank is writing.
    """
    check_run_dir(config, run_dir)
    if is_main:
        write_config(config, run_dir)
    return ckpt.latest_checkpoint(run_dir) is not None
