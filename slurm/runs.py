"""The runs a submission trains: one, or one per combination of ``--sweep KEY=V1,V2`` values.

A sweep's element trains in ``<root>/<KEY>=<Vi>`` (several keys: ``K1=..,K2=..``). Each run carries
its config as the trainer will see it, so that a folder already holding a different run is refused
before anything is queued.
"""
from __future__ import annotations

import itertools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .options import LaunchError


@dataclass
class RunSpec:
    """One run to train: its resolved config (as a dict) and folder; ``label`` is its sweep value."""
    config: dict
    run_dir: Path
    label: str | None = None


def parse_sweep(items: Sequence[str]) -> list[tuple[str, list[str]]]:
    out = []
    for item in items:
        key, sep, values = item.partition("=")
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key.strip() or not vals:
            raise LaunchError(f"bad --sweep {item!r}: use KEY=V1,V2,... e.g. --sweep plugins=none,vco "
                              "or --sweep optim.lr=1e-4,2e-4")
        if len(set(vals)) != len(vals):
            raise LaunchError(f"--sweep {item!r} repeats a value")
        out.append((key.strip(), vals))
    return out


def _folder_name(pairs: Sequence[tuple[str, str]]) -> str:
    name = ",".join(f"{k}={v}" for k, v in pairs)
    return re.sub(r"[/\\\s]+", "_", name)


def plan_runs(build, run_dir: str | Path, sweep: Sequence[str] = ()) -> list[RunSpec]:
    """``build(extra_overrides, run_dir) -> Config``; one RunSpec, or one per sweep combination."""
    root = Path(run_dir).expanduser().absolute()
    axes = parse_sweep(sweep)
    if not axes:
        return [RunSpec(_validated(build((), root)), root)]
    runs = []
    for combo in itertools.product(*[[(k, v) for v in vals] for k, vals in axes]):
        label = _folder_name(combo)
        folder = root / label
        runs.append(RunSpec(_validated(build(tuple(f"{k}={v}" for k, v in combo), folder)), folder, label))
    return runs


def _validated(cfg) -> dict:
    """The config as the trainer will see it: plugin options checked and their defaults filled in."""
    from jit_core.config import validate_plugin_options
    from jit_core.plugins import Plugins
    validate_plugin_options(cfg, Plugins(cfg.plugins).option_schemas())
    return cfg.to_dict()


def check_run_dir(run: RunSpec) -> None:
    """Refuse a folder that holds another run or other files, before anything is queued."""
    folder = run.run_dir
    saved = folder / "config.json"
    if saved.exists():
        from jit_core.runs.checkpoint import list_checkpoints
        from jit_core.training import config_diff
        if not list_checkpoints(folder):  # as the trainer: a run that never checkpointed may start over
            return
        old = json.loads(saved.read_text())
        now = json.loads(json.dumps(run.config))  # tuples as lists, as in config.json
        overrides = dict(now.get("model_overrides") or {})
        for key in ("in_channels", "num_classes"):  # filled in by the trainer from the data set
            if key in (old.get("model_overrides") or {}) and key not in overrides:
                overrides[key] = old["model_overrides"][key]
        now["model_overrides"] = overrides
        diff = config_diff(old, now)
        if diff:
            raise LaunchError(f"run folder {folder} already holds a different run ({'; '.join(diff[:4])}); "
                              "use a new --run-dir (only the run's length, logging and resources may change "
                              "when a run is resubmitted)")
    elif folder.is_dir() and any(p.name not in ("slurm", "checkpoints") for p in folder.iterdir()):
        raise LaunchError(f"run folder {folder} exists and is not empty but holds no jit run; pick a new --run-dir")
