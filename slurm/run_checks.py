"""What would make a run fail as soon as its job starts, checked before it is queued (cheaply: files are looked
for, nothing is built or loaded): the data set's folder, and every enabled plugin's pre-flight checks (the
``jit_preflight`` hook: V-Co's encoder weights and token grid, any other plugin's own).

A problem found here is a job that would wait in the queue and then fail in its first minute; submitting
refuses it, ``--dry-run`` lists it. The checks run on the submitting machine, which sees the run's files as
the nodes do on a cluster with shared storage.
"""
from __future__ import annotations

from pathlib import Path

from jit_core.config import Config

from .runs import RunSpec


def _data_problems(config: Config) -> list[str]:
    data = config.data
    if data.name in ("imagenet", "folder") and not data.path:
        return [f"data.name={data.name} needs data.path=/path/to/images (<root>/<class>/<image>; "
                "for imagenet also <root>/train/<class>/<image>)"]
    return []


def run_warnings(run: RunSpec) -> list[str]:
    """What looks wrong from here but may be right on the nodes (a data folder only they mount)."""
    path = run.config.data.path
    if run.config.data.name in ("imagenet", "folder") and path and not Path(path).expanduser().is_dir():
        where = f"{run.label}: " if run.label else ""
        return [f"{where}data.path={path} is not a folder on this machine (fine only if the nodes mount it)"]
    return []


def _plugin_problems(config: Config) -> list[str]:
    """The enabled plugins' ``jit_preflight`` answers for the run's config (already checked when it was planned)."""
    if not config.plugins:
        return []
    from jit_core.plugins import resolve_run
    resolved, plugins = resolve_run(config, read_data=False)
    return plugins.preflight(resolved)


def run_problems(run: RunSpec) -> list[str]:
    """Why ``run`` would fail once started, one line each (empty: none found)."""
    return _data_problems(run.config) + _plugin_problems(run.config)
