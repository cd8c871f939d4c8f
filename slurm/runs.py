"""The runs a submission trains: one, or one per combination of ``--sweep KEY=V1,V2`` values.

A sweep's element trains in ``<root>/<KEY>=<Vi>`` (several keys: ``K1=..,K2=..``); its sweep values are
set last, over the preset, file, overrides and ``--plugin``. Each run carries its config resolved as the trainer
resolves it (:func:`jit_core.plugins.resolve_run`: a typed, frozen ``Config``, plugin options as the plugins'
typed objects with their defaults), so that nothing here restates a default or reads a key by its spelling, and
a folder already holding a different run, or
two elements that are the same run, are refused before anything is queued.
"""
from __future__ import annotations

import itertools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from jit_core.config import Config, flatten

from .options import LaunchError


@dataclass
class RunSpec:
    """One run to train: its resolved config and folder; ``label`` is its sweep value; ``notes``: what planning
    changed that the user should see (options dropped for this element). A config given in its dict form
    (``Config.to_dict()``) is parsed by the same types as every config (:meth:`Config.from_dict`)."""
    config: Config
    run_dir: Path
    label: str | None = None
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.config, dict):
            self.config = Config.from_dict(self.config)


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
    """``build(run_dir) -> Config`` (the run as preset, file, overrides and ``--plugin`` make it); one RunSpec,
    or one per sweep combination.

    A sweep value wins over everything: it is set on the built config last (``--plugin vco --sweep
    plugins=none,vco`` trains one run without V-Co). Options of a plugin that some elements enable go to those
    elements only; the others drop them, and say so in :attr:`RunSpec.notes`. Elements whose configs come out
    identical are refused: they would train the same run twice.
    """
    from jit_core.config import ConfigError, set_key
    root = Path(run_dir).expanduser().absolute()
    axes = parse_sweep(sweep)
    if not axes:
        return [RunSpec(_validated(build(root)), root)]
    combos = list(itertools.product(*[[(k, v) for v in vals] for k, vals in axes]))
    configs = []
    for combo in combos:
        cfg = build(root / _folder_name(combo))
        for key, value in combo:
            try:
                set_key(cfg, key, value)
            except ConfigError as exc:
                raise LaunchError(f"--sweep {key}={value}: {exc}") from None
        configs.append(cfg)
    some_enable = {name for cfg in configs for name in cfg.plugins}
    runs = []
    for combo, cfg in zip(combos, configs):
        label = _folder_name(combo)
        notes = [f"{label}: {note}" for note in _drop_options_of_disabled(cfg, some_enable)]
        runs.append(RunSpec(_validated(cfg), root / label, label, notes))
    _refuse_identical(runs)
    return runs


def _drop_options_of_disabled(cfg, some_enable: set[str]) -> list[str]:
    """Remove the options of plugins that another sweep element enables but this one does not."""
    notes = []
    for namespace in list(cfg.plugin_options):
        owners = [p for p in some_enable if p == namespace or p.startswith(namespace + ".")]
        if not owners or any(p in cfg.plugins for p in owners):
            continue   # a plugin no element enables keeps its options: validation names the typo
        dropped = cfg.plugin_options.pop(namespace)
        given = ", ".join(f"{namespace}.{k}={v}" for k, v in dropped.items())
        notes.append(f"ignoring the options of {owners[0]!r}, which this run does not enable ({given})")
    return notes


def differing_keys(runs: Sequence[RunSpec]) -> list[str]:
    """The config keys (dotted) whose values differ between the runs, ``plugins`` first if it does."""
    flats = [flatten(r.config, without=("run_dir",)) for r in runs]
    keys = sorted({k for f in flats for k in f})
    diff = [k for k in keys if len({json.dumps(f.get(k, "<unset>"), sort_keys=True) for f in flats}) > 1]
    return sorted(diff, key=lambda k: k != "plugins")


def _refuse_identical(runs: Sequence[RunSpec]) -> None:
    seen: dict[str, RunSpec] = {}
    for run in runs:
        key = json.dumps(flatten(run.config, without=("run_dir",)), sort_keys=True, default=str)
        if key in seen:
            raise LaunchError(f"--sweep elements {seen[key].label} and {run.label} resolve to the same run config "
                              "(two spellings of one value, such as 1e-3 and 0.001, or none and [] for plugins): they "
                              "would train the same run twice; sweep values that change the run. Nothing was submitted")
        seen[key] = run


def _validated(cfg) -> Config:
    """The config resolved as the trainer will resolve it: plugin options typed and checked (types, ranges), their
    defaults filled in, the core's checks of the config run (as `jit train --dry-run` does). A data folder only
    the nodes mount is not read here (its classes are counted when the job starts)."""
    from jit_core.config import ConfigError
    from jit_core.plugins import PluginError, resolve_run
    try:
        resolved, _ = resolve_run(cfg, read_data=False)
    except (ConfigError, PluginError) as exc:
        raise LaunchError(str(exc)) from None
    return resolved


def check_run_dir(run: RunSpec) -> None:
    """Refuse a folder that holds another run or other files, before anything is queued."""
    folder = run.run_dir
    saved = folder / "config.json"
    if saved.exists():
        from jit_core.runs.checkpoint import list_checkpoints
        from jit_core.training import config_diff
        if not list_checkpoints(folder):  # as the trainer: a run that never checkpointed may start over
            return
        from jit_core.config import ConfigError, read_config_file, unresolved
        try:    # the saved run, parsed by the same types as the new one
            old = Config.from_dict(read_config_file(saved))
        except ConfigError as exc:
            raise LaunchError(f"{exc} (in the run folder {folder}: use a new --run-dir)") from None
        now = unresolved(run.config)
        # a folder data set's classes are counted when the job starts (not on this machine): the saved run's stand
        data_keys = {k: v for k, v in old.model_overrides.items() if k in ("in_channels", "num_classes")}
        now.model_overrides = {**data_keys, **now.model_overrides}
        diff = config_diff(json.loads(old.to_json()), json.loads(now.to_json()))   # tuples as lists, as saved
        if diff:
            raise LaunchError(f"run folder {folder} already holds a different run ({'; '.join(diff[:4])}); "
                              "use a new --run-dir (only the run's length, logging and resources may change "
                              "when a run is resubmitted)")
    elif folder.is_dir() and any(p.name not in ("slurm", "checkpoints", ".lock") for p in folder.iterdir()):
        raise LaunchError(f"run folder {folder} exists and is not empty but holds no jit run; pick a new --run-dir")
