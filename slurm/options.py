"""Cluster options of `jit slurm submit`: a profile's values, then the command line's, checked.

Also :class:`LaunchError`, the error every ``slurm`` module raises for a problem the user can fix.
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

EXECUTORS = ("slurm", "local", "debug")
SLURM_MISSING = "SLURM not found: install slurm-client or use --executor local"
DEFAULT_TIME_MIN = 240            # when neither the command line nor the profile sets --time
DEFAULT_LOCAL_TIME_MIN = 10 * 24 * 60
DEFAULT_MAX_REQUEUES = 10
DEFAULT_SIGNAL_DELAY_S = 120      # USR2 this long before the time limit


class LaunchError(RuntimeError):
    """A problem the user can fix; the message says how (the CLI shows it as one line)."""


@dataclass
class ClusterOptions:
    """Where and how the job runs: the profile's values, then the command line's."""
    executor: str = "slurm"
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int | None = None
    cpus_per_task: int | None = None
    mem_per_task: float | None = None      # GB
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: Any = None                          # minutes, "HH:MM:SS", "D-HH:MM:SS"
    constraint: str | None = None
    job_name: str | None = None
    max_requeues: int = DEFAULT_MAX_REQUEUES
    signal_delay_s: int = DEFAULT_SIGNAL_DELAY_S
    allow_local_run_dir: bool = False
    python: str | None = None
    setup: list = field(default_factory=list)
    env: dict = field(default_factory=dict)
    sbatch: dict = field(default_factory=dict)
    profile: str | None = None
    description: str | None = None

    @property
    def ntasks_per_node(self) -> int:
        return self.gpus_per_node if self.gpus_per_node > 0 else (self.tasks_per_node or 1)

    @property
    def world_size(self) -> int:
        return self.nodes * self.ntasks_per_node

    @property
    def time_min(self) -> int:
        if self.time is None:
            return DEFAULT_LOCAL_TIME_MIN if self.executor != "slurm" else DEFAULT_TIME_MIN
        return parse_time(self.time)


def parse_time(value: Any) -> int:
    """SLURM time formats to whole minutes: 90, "90", "MM:SS", "HH:MM:SS", "D-HH", "D-HH:MM", "D-HH:MM:SS"."""
    text = str(value).strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not m:
        raise LaunchError(f"bad --time {text!r}: use minutes (90), HH:MM:SS (72:00:00) or D-HH:MM:SS (3-00:00:00)")
    days, a, b, c = m.groups()
    if days is not None:   # D-HH[:MM[:SS]]
        seconds = int(days) * 86400 + int(a) * 3600 + int(b or 0) * 60 + int(c or 0)
    elif c is not None:    # HH:MM:SS
        seconds = int(a) * 3600 + int(b) * 60 + int(c)
    elif b is not None:    # MM:SS
        seconds = int(a) * 60 + int(b)
    else:                  # minutes
        seconds = int(a) * 60
    if seconds <= 0:
        raise LaunchError(f"bad --time {text!r}: the time limit must be positive")
    return math.ceil(seconds / 60)


def parse_sbatch_flags(items: Iterable[str]) -> dict[str, Any]:
    """``--sbatch KEY=VALUE`` (``exclusive=`` or ``exclusive`` for a bare flag) to a dict."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not key or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", key):
            raise LaunchError(f"bad --sbatch {item!r}: use KEY=VALUE with an sbatch long option, "
                              "e.g. --sbatch mail-type=END or --sbatch exclusive=")
        out[key] = value.strip() if sep else ""
    return out


def resolve_options(profile: dict | None, given: dict[str, Any], profile_name: str | None = None) -> ClusterOptions:
    """The profile's settings, overridden by the command line's (``given``: only options set there)."""
    profile = dict(profile or {})
    merged: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(ClusterOptions)}
    for source in (profile, given):
        for key, value in source.items():
            if value is None or key not in names or key in ("sbatch", "env", "setup"):
                continue
            merged[key] = value
    opts = ClusterOptions(**merged)
    opts.profile = profile_name
    opts.sbatch = {**{str(k): v for k, v in profile.get("sbatch", {}).items()}, **(given.get("sbatch") or {})}
    opts.env = {str(k): str(v) for k, v in {**profile.get("env", {}), **(given.get("env") or {})}.items()}
    opts.setup = list(profile.get("setup", [])) + list(given.get("setup") or [])
    # one task per GPU: a --tasks-per-node from the profile gives way to --gpus-per-node from the command line
    if opts.gpus_per_node and opts.tasks_per_node not in (None, opts.gpus_per_node):
        if given.get("tasks_per_node") is None and profile.get("gpus_per_node") != opts.gpus_per_node:
            opts.tasks_per_node = None
        else:
            raise LaunchError(f"--tasks-per-node {opts.tasks_per_node} with --gpus-per-node {opts.gpus_per_node}: "
                              "jit runs one task per GPU; leave --tasks-per-node out (it is only for CPU jobs, "
                              "--gpus-per-node 0)")
    if opts.executor not in EXECUTORS:
        raise LaunchError(f"unknown executor {opts.executor!r}: use one of {', '.join(EXECUTORS)}")
    for key in ("nodes", "tasks_per_node", "cpus_per_task"):
        value = getattr(opts, key)
        if value is not None and value < 1:
            raise LaunchError(f"--{key.replace('_', '-')} must be at least 1 (got {value})")
    if opts.gpus_per_node < 0:
        raise LaunchError(f"--gpus-per-node must be 0 (CPU) or more (got {opts.gpus_per_node})")
    if opts.mem_per_task is not None and opts.mem_per_task <= 0:
        raise LaunchError(f"--mem-per-task is in GB and must be positive (got {opts.mem_per_task})")
    if opts.max_requeues < 0:
        raise LaunchError("--max-requeues must be 0 or more")
    if opts.time is not None:
        parse_time(opts.time)  # a bad --time fails before anything else
    if opts.executor == "local" and opts.nodes > 1:
        raise LaunchError("--executor local runs on this machine only: use --nodes 1 (or --executor slurm)")
    if opts.executor == "debug" and opts.world_size > 1:
        raise LaunchError("--executor debug runs one process in this one: use --executor local for several "
                          "tasks (--tasks-per-node N), or --tasks-per-node 1")
    return opts
