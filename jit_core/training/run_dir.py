"""The run folder as the trainer sees it: is it this run (or a new one), who trains it (the lock), its saved
``config.json`` and ``history.jsonl`` (the config changes a resume was allowed to make)."""
from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path

from jit_core.config import Config, ConfigError, flatten
from jit_core.distributed import DistInfo, any_rank
from jit_core.durable import WriteError, append_text, ensure_dir, write_text
from jit_core.runs import checkpoint as ckpt
from jit_core.runs.lock import LOCK_NAME, RunLock, RunLockedError

# config keys that may change when a run is resumed (length, logging, trackers, resources)
RESUMABLE_CHANGES = ("train.max_steps", "train.epochs", "train.log_every", "train.ckpt_every", "train.keep_every",
                     "train.sample_every", "train.device", "train.compile", "train.grad_accum",
                     "train.grad_checkpointing", "train.gpu_memory_gib", "train.cudnn_benchmark",
                     "train.ddp_broadcast_buffers", "train.grad_norm", "data.num_workers", "data.pin_memory",
                     "data.path", "run_dir", "train.nan_policy", "train.max_skipped_steps", "sample.", "log")
HISTORY = "history.jsonl"
# what the trainer writes in its folder (files, then folders): a link in the place of any of them is refused at
# start-up, before anything is written (a link would send the write to wherever it points)
TRAINER_WRITES = (LOCK_NAME, "config.json", "metrics.jsonl", HISTORY, "wandb-run.json", "checkpoints", "samples", "tb",
                  "wandb")
_OWN_FILES = {LOCK_NAME}          # written by the trainer before config.json: not "another program's files"


def _changes(a: dict, b: dict, prefix: str = ""):
    """``(key, saved, now)`` of every leaf that differs (``model_overrides`` compares as one value)."""
    for key in sorted(set(a) | set(b)):
        full = f"{prefix}{key}"
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict) and key != "model_overrides":
            yield from _changes(va, vb, full + ".")
        elif va != vb:
            yield full, va, vb


def config_diff(a: dict, b: dict, prefix: str = "", allowed: Iterable[str] = ()) -> list[str]:
    """``key: saved vs now`` for every key that differs and may not change on resume (nor is in ``allowed``)."""
    allowed = set(allowed)
    return [f"{k}: {va!r} (saved) vs {vb!r} (now)" for k, va, vb in _changes(a, b, prefix)
            if not k.startswith(RESUMABLE_CHANGES) and k not in allowed]


def allowed_keys(config: Config, keys: Iterable[str]) -> tuple[str, ...]:
    """``--allow-change KEY`` names as config.json spells them (``vco.x`` -> ``plugin_options.vco.x``); an unknown
    key is refused (a typo would silently allow nothing)."""
    flat, out = flatten(json.loads(config.to_json()), plugin_prefix="plugin_options."), []
    for key in keys:
        full = key if key in flat else f"plugin_options.{key}"
        if full not in flat:
            close = sorted(k for k in flat if k.split(".")[-1] == key.split(".")[-1])[:3]
            hint = f" (did you mean {', '.join(close)}?)" if close else " (a dotted key such as optim.lr)"
            raise ConfigError(f"--allow-change {key}: no such config key{hint}")
        out.append(full)
    return tuple(out)


def check_run_dir(config: Config, run_dir: Path, allowed: Iterable[str] = ()) -> None:
    """Refuse a folder that holds another run, or files that are not a jit run. Reads only: every rank may call it.

    ``allowed``: keys that may differ from the saved config (``jit train --resume --allow-change KEY``)."""
    links = [name for name in TRAINER_WRITES if (run_dir / name).is_symlink()]
    if run_dir.is_symlink() and not run_dir.is_dir():
        links.insert(0, ".")
    if links:
        raise ConfigError(f"run folder {run_dir}: {', '.join(links)} is a symbolic link, where the trainer writes; "
                          "jit-vco never writes through a link (it could point anywhere): remove it and re-run")
    saved = run_dir / "config.json"
    started = bool(ckpt.list_checkpoints(run_dir))  # a run that never wrote a checkpoint may restart with another config
    if saved.exists() and started:
        diff = config_diff(json.loads(saved.read_text()), json.loads(config.to_json()), allowed=allowed)
        if diff:
            raise ConfigError(f"run folder {run_dir} already holds a different run ({'; '.join(diff[:4])}); "
                              "use a new --run-dir, or resume with the saved config (jit train --resume RUN), or "
                              "let a resume change a key with --allow-change KEY")
    elif (not saved.exists() and run_dir.exists() and not (run_dir / "checkpoints").exists()
          and any(p.name not in _OWN_FILES for p in run_dir.iterdir())):
        raise ConfigError(f"run folder {run_dir} exists and is not empty but holds no jit run; pick a new --run-dir")


def lock_run_dir(config: Config, run_dir: Path, dist: DistInfo, allowed: Iterable[str] = ()) -> RunLock:
    """Take the run folder's lock (rank 0; every rank learns whether it got it), then check the folder again
    under the lock: nothing may have changed it between the start-up checks and now."""
    lock, error = RunLock(run_dir), None
    if dist.is_main:
        try:
            lock.acquire()
            check_run_dir(config, run_dir, allowed)
        except (ConfigError, WriteError) as e:    # every rank must learn it (no rank left in a collective)
            lock.release()
            error = e
    if any_rank(error is not None, dist):
        raise error or RunLockedError(f"run folder {run_dir}: rank 0 could not take it (see rank 0's error)")
    return lock


def write_config(config: Config, run_dir: Path) -> dict | None:
    """Create the folder and write ``config.json`` by an atomic rename (the main process only; a link in its place
    is refused, never followed); returns the config it replaced."""
    ensure_dir(run_dir)
    saved = run_dir / "config.json"
    try:
        before = json.loads(saved.read_text()) if saved.is_file() and not saved.is_symlink() else None
    except (ValueError, UnicodeDecodeError):
        before = None
    write_text(saved, config.to_json())
    return before if isinstance(before, dict) else None


def record_changes(run_dir: Path, before: dict | None, config: Config, allowed: Iterable[str], step: int) -> list[dict]:
    """Append to ``history.jsonl`` one line per allowed key whose value changed: ``{step, time, key, old, new}``."""
    allowed = set(allowed)
    if before is None or not allowed:
        return []
    rows = [{"step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "key": k, "old": va, "new": vb}
            for k, va, vb in _changes(before, json.loads(config.to_json())) if k in allowed]
    if rows:
        append_text(run_dir / HISTORY, "".join(json.dumps(r) + "\n" for r in rows), fsync=True)
    return rows


def prepare_run_dir(config: Config, run_dir: Path, is_main: bool) -> bool:
    """Check the folder, write the config (main process). Returns True when there is a checkpoint to resume from.

    Under DDP call :func:`check_run_dir` on every rank, then a barrier, then :func:`write_config` on rank 0,
    so that no rank checks a folder another rank is writing. (The trainer also takes the folder's lock,
    :func:`lock_run_dir`, before it writes anything.)
    """
    check_run_dir(config, run_dir)
    if is_main:
        write_config(config, run_dir)
    return ckpt.latest_checkpoint(run_dir) is not None
