"""What a study is: arms (each a run recipe) x seeds, and the check that an ablation changes one ingredient.

An :class:`Arm` is a preset plus overrides (and extra plugins). An ablation arm names its
``reference`` arm and the ``ingredient`` it changes, with the config keys that ingredient may touch
(``changes``, shell-style patterns such as ``repa.*``); :func:`expand` resolves every arm as the
trainer will see it (plugin options checked, defaults filled in) and refuses an arm whose resolved
config differs from its reference's in anything else, or in nothing. The study's ``overrides``
apply to every arm (its budget); ``quick`` overrides (``jit study NAME --quick``) replace that budget by a shorter
one for a first look. Options of a plugin an arm does not enable are dropped for that arm (and said).
"""
from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from jit_core.config import ConfigError, flatten, parse_override

PAPER_DIRECTIONS = ("worse", "better", "")


class StudyError(ConfigError):
    """A study that cannot run as defined or asked (one line, naming the arm and the fix)."""


@dataclass(frozen=True)
class Arm:
    """One arm: ``preset`` + ``overrides`` (+ ``plugins``). ``paper``: the paper's direction for this arm against
    the study's baseline ("worse" | "better" | "" for no claim), ``paper_note`` its figures/source."""
    name: str
    preset: str
    overrides: tuple[str, ...] = ()
    plugins: tuple[str, ...] = ()
    reference: str | None = None
    ingredient: str = ""
    changes: tuple[str, ...] = ()
    paper: str = ""
    paper_note: str = ""

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "_", self.name).strip("_")


@dataclass(frozen=True)
class Study:
    """A named grid. ``baseline``: the arm every other arm is compared with in the report. ``overrides``: the
    budget every arm runs at; ``quick``: overrides applied after them under ``--quick`` (a shorter first look)."""
    name: str
    description: str
    arms: tuple[Arm, ...]
    baseline: str
    seeds: tuple[int, ...] = (0, 1, 2)
    num_images: int = 250
    overrides: tuple[str, ...] = ()
    eval_args: tuple[str, ...] = ()
    what_it_shows: str = ""
    quick: tuple[str, ...] = ()

    def arm(self, name: str) -> Arm:
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise StudyError(f"study {self.name!r} has no arm {name!r}; its arms: {', '.join(a.name for a in self.arms)}")


@dataclass
class Element:
    """One (arm, seed) run: its folder and resolved config; ``notes`` say what planning dropped."""
    arm: Arm
    seed: int
    run_dir: Path
    config: dict
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.arm.name} seed {self.seed}"


def config_changes(a: dict, b: dict) -> list[str]:
    """The dotted keys whose values differ between two resolved configs."""
    fa, fb = flatten(a, without=("run_dir",)), flatten(b, without=("run_dir",))
    return sorted(k for k in set(fa) | set(fb)
                  if json.dumps(fa.get(k, "<unset>"), sort_keys=True) != json.dumps(fb.get(k, "<unset>"), sort_keys=True))


def _namespace(key: str) -> str | None:
    head, dot, _ = key.partition(".")
    return head if dot else None


def _resolve(arm: Arm, seed: int, study: Study, run_dir: Path, user_overrides: Sequence[str], quick: bool = False):
    """The arm's config as the trainer will see it, with the options of plugins it does not enable dropped."""
    from jit_core.config import Config, set_key
    from jit_core.plugins import resolve_run
    from jit_core.plugins.presets import build_config
    cfg = build_config(arm.preset, None, arm.plugins, arm.overrides, run_dir)
    core_sections = set(Config().to_dict())
    notes = []
    budget = [*study.overrides, *(study.quick if quick else ())]
    for text in [*budget, *user_overrides, f"train.seed={seed}"]:
        key, value = parse_override(text)
        ns = _namespace(key)
        if ns and ns not in core_sections and ns not in cfg.plugins:
            notes.append(f"{arm.name}: ignoring {text} ({ns} is not enabled in this arm)")
            continue
        set_key(cfg, key, value)
    for ns in [ns for ns in cfg.plugin_options if ns not in cfg.plugins]:   # e.g. a V-Co preset with plugins=none
        cfg.plugin_options.pop(ns)
    try:
        resolved, _ = resolve_run(cfg, read_data=False)    # a data folder only a cluster's nodes mount is not read
    except ConfigError as exc:
        raise StudyError(f"study {study.name!r}, arm {arm.name!r}: {exc}") from None
    return resolved.to_dict(), notes


def check_arms(study: Study, resolved: dict[str, dict]) -> None:
    """Every ablation arm differs from its reference in its declared ingredient's keys, and in nothing else."""
    for arm in study.arms:
        if arm.paper not in PAPER_DIRECTIONS:
            raise StudyError(f"arm {arm.name!r}: paper={arm.paper!r} is not one of worse, better or ''")
        if arm.reference is None or arm.name not in resolved or arm.reference not in resolved:
            continue
        changed = config_changes(resolved[arm.reference], resolved[arm.name])
        stray = [k for k in changed if not any(fnmatch.fnmatchcase(k, pat) for pat in arm.changes)]
        if not changed:
            raise StudyError(f"arm {arm.name!r} resolves to the same config as {arm.reference!r}: its ingredient "
                             f"({arm.ingredient}) changes nothing")
        if stray:
            raise StudyError(f"arm {arm.name!r} should differ from {arm.reference!r} only in {arm.ingredient} "
                             f"({', '.join(arm.changes)}) but also differs in {', '.join(stray)}")


def expand(study: Study, out: str | Path, *, seeds: Sequence[int] | None = None, arms: Sequence[str] | None = None,
           overrides: Sequence[str] = (), quick: bool = False) -> list[Element]:
    """The study's (arm, seed) elements in ``out/<arm>/seed-<n>``, checked (:func:`check_arms`); ``quick``: at the
    study's quick budget.

    References of the selected arms are resolved for the check even when not selected.
    """
    out = Path(out).expanduser().absolute()
    chosen = [study.arm(a) for a in arms] if arms else list(study.arms)
    seeds = list(study.seeds if seeds is None else seeds)
    if not seeds:
        raise StudyError("no seeds: pass e.g. --seeds 0,1,2")
    if quick and not study.quick:
        raise StudyError(f"study {study.name!r} has no quick budget: run it without --quick (or pass overrides such "
                         "as train.max_steps=N)")
    def element(arm: Arm, seed: int) -> Element:
        run_dir = out / arm.slug / f"seed-{seed}"
        return Element(arm, seed, run_dir, *_resolve(arm, seed, study, run_dir, overrides, quick))

    elements = [element(arm, seed) for arm in chosen for seed in seeds]
    resolved = {e.arm.name: e.config for e in elements if e.seed == seeds[0]}
    for ref in {a.reference for a in chosen if a.reference} - set(resolved):   # an unselected reference: for the check
        resolved[ref] = element(study.arm(ref), seeds[0]).config
    check_arms(study, resolved)
    return elements
