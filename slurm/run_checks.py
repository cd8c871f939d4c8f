"""What would make a run fail as soon as its job starts, checked before it is queued (cheaply: files are looked
for, nothing is built or loaded): the data set's folder, and a V-Co run's encoder weights and token grid.

A problem found here is a job that would wait in the queue and then fail in its first minute; submitting
refuses it, ``--dry-run`` lists it. The checks run on the submitting machine, which sees the run's files as
the nodes do on a cluster with shared storage.
"""
from __future__ import annotations

from pathlib import Path

from .runs import RunSpec

VCO_NAMES = ("vco", "vco_plugin.plugin")   # V-Co enabled by entry-point name or by module path


def _data_problems(config: dict) -> list[str]:
    data = config.get("data", {})
    if data.get("name") in ("imagenet", "folder") and not data.get("path"):
        return [f"data.name={data.get('name')} needs data.path=/path/to/images (<root>/<class>/<image>; "
                "for imagenet also <root>/train/<class>/<image>)"]
    return []


def run_warnings(run: RunSpec) -> list[str]:
    """What looks wrong from here but may be right on the nodes (a data folder only they mount)."""
    path = run.config.get("data", {}).get("path")
    if run.config.get("data", {}).get("name") in ("imagenet", "folder") and path and \
            not Path(path).expanduser().is_dir():
        where = f"{run.label}: " if run.label else ""
        return [f"{where}data.path={path} is not a folder on this machine (fine only if the nodes mount it)"]
    return []


def _vco_problems(config: dict) -> list[str]:
    # vco.stats / feature_cache / encoder_weights naming missing files were refused already, by V-Co's option
    # checks when the run was planned (runs._validated); what is left is whether the encoder can be built here
    opts = config.get("plugin_options", {}).get("vco", {})
    problems = []
    # the encoder is needed for the targets (unless cached), the hybrid loss and the automatic statistics
    needs_encoder = not opts.get("feature_cache") or opts.get("drift_coef", 1.0) != 0 or \
        not opts.get("stats")
    if needs_encoder:
        from jit_core.model import get_model_config
        from vco_plugin.features import weights_problem
        overrides = {k: v for k, v in (config.get("model_overrides") or {}).items()}
        try:
            grid = get_model_config(config["model"], **overrides).grid
        except (KeyError, TypeError, ValueError):
            grid = None   # the trainer names a bad model config itself
        problem = weights_problem(opts.get("encoder", "dinov2"), opts.get("encoder_weights"), grid)
        if problem:
            problems.append(problem)
    return problems


def run_problems(run: RunSpec) -> list[str]:
    """Why ``run`` would fail once started, one line each (empty: none found)."""
    problems = _data_problems(run.config)
    if any(name in run.config.get("plugins", []) for name in VCO_NAMES):
        problems += _vco_problems(run.config)
    return problems
