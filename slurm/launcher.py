"""Submit, watch and cancel jit training runs through submitit (SLURM, local subprocesses, or in-process).

The job is :class:`TrainJob`, a submitit ``Checkpointable``: every task (one per GPU) turns submitit's
job environment into the torchrun variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT)
and runs :class:`jit_core.train.Trainer` on the run folder. Preemption and time limits are submitit's
USR2 signal: ``checkpoint()`` just resubmits the same job, and the requeued job resumes from the run
folder's last complete checkpoint (the trainer does that by itself). SIGTERM and SIGUSR1 make the
trainer finish its step and write a checkpoint.

A run folder records its jobs in ``<run>/slurm/jobs.jsonl`` (one JSON object per submission), the
starts and ends of the job in ``<run>/slurm/events.jsonl``, and submitit's logs go to
``<run>/slurm/logs/<job id>/``. A sweep (``--sweep KEY=V1,V2``) is one job array whose element ``i``
trains ``<root>/<KEY>=<Vi>``; the root records the array in its own ``slurm/jobs.jsonl``.

This module imports neither torch nor jit_core at import time, so that ``jit slurm status`` is quick.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import io
import itertools
import json
import logging
import math
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
from submitit.helpers import Checkpointable, DelayedSubmission

log = logging.getLogger("jit.slurm")

EXECUTORS = ("slurm", "local", "debug")
SLURM_MISSING = "SLURM not found: install slurm-client or use --executor local"
DEFAULT_TIME_MIN = 240            # when neither the command line nor the profile sets --time
DEFAULT_LOCAL_TIME_MIN = 10 * 24 * 60
DEFAULT_MAX_REQUEUES = 10
DEFAULT_SIGNAL_DELAY_S = 120      # USR2 this long before the time limit
INTERRUPT_GRACE_S = 120           # after SIGTERM stopped training: how long a job waits to be requeued or killed
# folders that are never shared between nodes
LOCAL_PREFIXES = ("/tmp", "/var/tmp", "/dev/shm", "/run")
# file systems that live on one machine only
LOCAL_FS_TYPES = {"ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "f2fs", "tmpfs", "ramfs", "overlay", "devtmpfs",
                  "vfat", "exfat", "ntfs", "squashfs", "jfs", "reiserfs"}
SHARED_FS_TYPES = {"nfs", "nfs4", "lustre", "gpfs", "beegfs", "cephfs", "ceph", "glusterfs", "panfs", "wekafs",
                   "orangefs", "pvfs2", "afs", "cifs", "smb3", "9p", "virtiofs", "fhgfs"}
TERMINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL",
                   "DEADLINE", "REVOKED", "SPECIAL_EXIT")
JOB_ID_RE = re.compile(r"^\d+(_\d+)?$")


class LaunchError(RuntimeError):
    """A problem the user can fix; the message says how (the CLI shows it as one line)."""


# ------------------------------------------------------------------------------------------------ options
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


def _sbatch_value(value: Any) -> Any:
    if value is True or (isinstance(value, str) and value == ""):
        return True
    return value


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


def slurm_parameters(opts: ClusterOptions, job_name: str) -> dict[str, Any]:
    """SlurmExecutor.update_parameters arguments (sbatch names) for these options."""
    p: dict[str, Any] = {"job_name": job_name, "time": opts.time_min, "nodes": opts.nodes,
                         "ntasks_per_node": opts.ntasks_per_node, "signal_delay_s": opts.signal_delay_s}
    if opts.gpus_per_node:
        p["gpus_per_node"] = opts.gpus_per_node
    if opts.cpus_per_task:
        p["cpus_per_task"] = opts.cpus_per_task
    if opts.mem_per_task:
        from submitit.slurm.slurm import _convert_mem
        p["mem"] = _convert_mem(float(opts.mem_per_task) * opts.ntasks_per_node)
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(opts, key):
            p[key] = getattr(opts, key)
    setup = [f"export {k}={shlex.quote(v)}" for k, v in opts.env.items()]
    if "OMP_NUM_THREADS" not in opts.env:
        setup.append(f"export OMP_NUM_THREADS=${{OMP_NUM_THREADS:-{opts.cpus_per_task or 1}}}")
    p["setup"] = setup + list(opts.setup)
    extra = {"requeue": True}
    for key, value in opts.sbatch.items():
        extra[key.replace("-", "_")] = _sbatch_value(value)
    p["additional_parameters"] = extra
    return p


# ------------------------------------------------------------------------------------------------ run folders
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


def _mount_fs_type(path: Path) -> str | None:
    """The file system type of the mount holding ``path`` (from /proc/mounts), or None."""
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    best, fstype = "", None
    target = str(path)
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = re.sub(r"\\(\d{3})", lambda m: chr(int(m[1], 8)), parts[1])
        if (target == mount or target.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
            best, fstype = mount, parts[2]
    return fstype


def check_shared_storage(run_dir: Path, opts: ClusterOptions) -> None:
    """A multi-node job needs a run folder every node sees: refuse node-local ones."""
    if opts.nodes <= 1 or opts.allow_local_run_dir or opts.executor != "slurm":
        return
    path = Path(run_dir).absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    resolved = existing.resolve() / path.relative_to(existing)
    why = None
    for prefix in LOCAL_PREFIXES:
        if str(resolved) == prefix or str(resolved).startswith(prefix + "/"):
            why = f"it is under {prefix}, which is local to each node"
            break
    if why is None:
        fstype = _mount_fs_type(resolved)
        if fstype in LOCAL_FS_TYPES:
            why = f"it is on a local {fstype} file system"
    if why:
        raise LaunchError(f"run folder {path} is not on shared storage ({why}), but the job spans {opts.nodes} "
                          "nodes: every node reads and writes the run folder and submitit's logs there. Use a "
                          "--run-dir on a shared file system (NFS, Lustre, GPFS, BeeGFS, CephFS, ...), or pass "
                          "--allow-local-run-dir if this folder is shared after all")


def check_run_dir(run: RunSpec) -> None:
    """Refuse a folder that holds another run or other files, before anything is queued."""
    folder = run.run_dir
    saved = folder / "config.json"
    if saved.exists():
        from jit_core.checkpoint import list_checkpoints
        from jit_core.train import _config_diff
        if not list_checkpoints(folder):  # as the trainer: a run that never checkpointed may start over
            return
        old = json.loads(saved.read_text())
        now = json.loads(json.dumps(run.config))  # tuples as lists, as in config.json
        overrides = dict(now.get("model_overrides") or {})
        for key in ("in_channels", "num_classes"):  # filled in by the trainer from the data set
            if key in (old.get("model_overrides") or {}) and key not in overrides:
                overrides[key] = old["model_overrides"][key]
        now["model_overrides"] = overrides
        diff = _config_diff(old, now)
        if diff:
            raise LaunchError(f"run folder {folder} already holds a different run ({'; '.join(diff[:4])}); "
                              "use a new --run-dir (only the run's length, logging and resources may change "
                              "when a run is resubmitted)")
    elif folder.is_dir() and any(p.name not in ("slurm", "checkpoints") for p in folder.iterdir()):
        raise LaunchError(f"run folder {folder} exists and is not empty but holds no jit run; pick a new --run-dir")


def _prepare_folder(folder: Path) -> None:
    (folder / "slurm").mkdir(parents=True, exist_ok=True)
    # jit_core.train.prepare_run_dir refuses a non-empty folder without checkpoints/ (the slurm/ records
    # and logs land before the trainer starts), so the (empty) checkpoints folder is made here
    (folder / "checkpoints").mkdir(exist_ok=True)


def _append_jsonl(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line being written right now
                continue
    return out


def read_jobs(run_dir: str | Path) -> list[dict]:
    return _read_jsonl(Path(run_dir) / "slurm" / "jobs.jsonl")


def read_events(run_dir: str | Path) -> list[dict]:
    return _read_jsonl(Path(run_dir) / "slurm" / "events.jsonl")


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------------ the job
@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def distributed_env() -> tuple[dict[str, str], Any]:
    """torchrun-style variables for this task from submitit's job environment (one process: rank 0 of 1)."""
    try:
        job_env = submitit.JobEnvironment()
    except RuntimeError:  # not inside a submitit job (e.g. called directly)
        return {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}, None
    world = job_env.num_tasks
    env = {"RANK": str(job_env.global_rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(job_env.local_rank),
           "LOCAL_WORLD_SIZE": str(max(1, world // max(1, job_env.num_nodes)))}
    if world > 1:
        dist_env = submitit.helpers.TorchDistributedEnvironment()
        addr = dist_env.master_addr
        if job_env.cluster in ("local", "debug") or job_env.num_nodes == 1 and addr == socket.gethostname():
            addr = "127.0.0.1"
        env.update(MASTER_ADDR=str(addr), MASTER_PORT=str(dist_env.master_port))
    return env, job_env


def _param_hash(model) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class TrainJob(Checkpointable):
    """One run's training, as a submitit job (every task of the job runs it).

    ``config``: ``Config.to_dict()``; ``run_dir``: the run folder. ``param_hash=True`` adds a SHA-256 of
    the model's parameters to each task's result (the ranks of a DDP run must agree).
    """

    def __init__(self, config: dict, run_dir: str, param_hash: bool = False, progress: bool = True):
        self.config = config
        self.run_dir = str(run_dir)
        self.param_hash = param_hash
        self.progress = progress

    def __call__(self) -> dict:
        env, job_env = distributed_env()
        cluster = job_env.cluster if job_env is not None else "none"
        if "OMP_NUM_THREADS" not in os.environ:
            env["OMP_NUM_THREADS"] = os.environ.get("SLURM_CPUS_PER_TASK", "1")
        env.setdefault("TQDM_MININTERVAL", os.environ.get("TQDM_MININTERVAL", "30"))
        if cluster != "debug":
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        with _environ(env):
            return self._run(env, job_env, cluster)

    def _run(self, env: dict, job_env, cluster: str) -> dict:
        import torch
        import torch.distributed as tdist

        from jit_core.config import Config
        from jit_core.train import Trainer
        if "OMP_NUM_THREADS" in env and cluster != "debug":   # torch was imported before it was set
            torch.set_num_threads(max(1, int(env["OMP_NUM_THREADS"])))
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        job_id = job_env.job_id if job_env is not None else None
        events = Path(self.run_dir) / "slurm" / "events.jsonl"
        try:
            trainer = Trainer(Config.from_dict(self.config), self.run_dir,
                              handle_signals=(signal.SIGTERM, signal.SIGUSR1), progress=self.progress)
            if rank == 0:
                _append_jsonl(events, {"event": "start", "job_id": job_id, "executor": cluster, "time": _now(),
                                       "host": socket.gethostname(), "world_size": world, "step": trainer.step})
            result = trainer.fit()
            out = {"run_dir": str(result.run_dir), "step": result.step, "status": result.status,
                   "losses": dict(result.losses), "checkpoint": str(result.checkpoint) if result.checkpoint else None,
                   "rank": rank, "world_size": world, "job_id": job_id}
            if self.param_hash:
                out["param_hash"] = _param_hash(trainer.model)
            if rank == 0:
                _append_jsonl(events, {"event": "end", "job_id": job_id, "time": _now(), "status": result.status,
                                       "step": result.step})
        finally:
            if tdist.is_available() and tdist.is_initialized():
                tdist.destroy_process_group()
        if result.status == "interrupted" and cluster == "slurm":
            self._linger_after_interrupt()
        return out

    @staticmethod
    def _linger_after_interrupt() -> None:
        """SIGTERM/SIGUSR1 stopped training and a checkpoint was written. On SLURM that is a cancel (SIGKILL
        follows after KillWait), a preemption or a time limit (submitit's USR2 follows, or came first and
        requeued the job). Returning now would write a result and end the job as if the run were done,
        so wait for SLURM to end or requeue it; if nothing comes, return the "interrupted" result.
        """
        grace = float(os.environ.get("JIT_SLURM_INTERRUPT_GRACE_S", INTERRUPT_GRACE_S))
        log.warning("training stopped on a signal; waiting up to %.0f s for SLURM to requeue or end the job", grace)
        time.sleep(grace)
        log.warning("the job was neither requeued nor ended: returning the interrupted run "
                    "(resubmit the same command to resume it)")

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """Cheap (no collectives): resubmit the same job; it resumes from the last complete checkpoint."""
        return DelayedSubmission(TrainJob(self.config, self.run_dir, self.param_hash, self.progress))


# ------------------------------------------------------------------------------------------------ submitting
def _submit_command(python: str | None, folder: Path) -> str:
    py = python or shlex.quote(sys.executable)
    return " ".join([py, "-u -m submitit.core._submit", shlex.quote(str(folder))])


def log_folder(root: Path) -> Path:
    return Path(root) / "slurm" / "logs" / "%j"


def job_name(opts: ClusterOptions, root: Path) -> str:
    return opts.job_name or f"jit-{Path(root).name}"


def sbatch_script(opts: ClusterOptions, root: Path, array_size: int | None = None) -> str:
    """The sbatch file submitit writes for this submission (same function, same parameters)."""
    from submitit.slurm.slurm import _make_sbatch_string
    params = slurm_parameters(opts, job_name(opts, root))
    if array_size and array_size > 1:
        params["map_count"] = array_size
    folder = log_folder(root).absolute()
    return _make_sbatch_string(command=_submit_command(opts.python, folder), folder=folder, **params)


def make_executor(opts: ClusterOptions, root: Path):
    folder = log_folder(root).absolute()
    if opts.executor == "slurm":
        if shutil.which("sbatch") is None or shutil.which("srun") is None:
            raise LaunchError(SLURM_MISSING)
        executor = submitit.SlurmExecutor(folder, max_num_timeout=opts.max_requeues, python=opts.python)
        executor.update_parameters(**slurm_parameters(opts, job_name(opts, root)))
    elif opts.executor == "local":
        executor = submitit.LocalExecutor(folder, max_num_timeout=opts.max_requeues, python=opts.python)
        setup = [f"export {k}={shlex.quote(v)}" for k, v in opts.env.items()] + list(opts.setup)
        executor.update_parameters(timeout_min=opts.time_min, tasks_per_node=opts.ntasks_per_node,
                                   gpus_per_node=opts.gpus_per_node, signal_delay_s=opts.signal_delay_s,
                                   **({"setup": setup} if setup else {}))
    else:
        executor = submitit.DebugExecutor(folder)
    return executor


def _sbatch_message(stderr: str) -> str:
    lines = [re.sub(r"^sbatch:\s*(error:\s*)?", "", ln).strip() for ln in stderr.splitlines()]
    lines = [ln for ln in lines if ln]
    text = "; ".join(dict.fromkeys(lines)) or "no message"
    low = text.lower()
    if "partition" in low:
        hint = "pick a partition the cluster has (`sinfo -s` lists them) with --partition or the profile"
    elif "node configuration is not available" in low or "memory specification" in low or "gres" in low \
            or "constraint" in low or "features" in low or "cpu count" in low:
        hint = ("no node offers what was asked: lower --mem-per-task / --cpus-per-task / --gpus-per-node / "
                "--nodes, or change --partition / --constraint (`sinfo -o '%P %D %c %m %G %f'` shows the nodes)")
    elif "account" in low or "qos" in low or "association" in low:
        hint = "check --account / --qos (`sacctmgr show assoc user=$USER` lists yours)"
    elif "time limit" in low:
        hint = "lower --time to the partition's limit (`sinfo -o '%P %l'`)"
    else:
        hint = "fix the cluster options above (or the --sbatch flags) and submit again"
    return f"sbatch refused the job: {text}. Fix: {hint}"


@dataclass
class Submission:
    runs: list[RunSpec]
    jobs: list
    opts: ClusterOptions
    root: Path

    @property
    def job_ids(self) -> list[str]:
        return [j.job_id for j in self.jobs]


def submit(runs: list[RunSpec], opts: ClusterOptions, root: str | Path, *, command_line: str | None = None,
           param_hash: bool = False, progress: bool = True) -> Submission:
    """Queue ``runs`` (one job, or one job array for a sweep) and record the job ids in the run folders."""
    root = Path(root).absolute()
    check_shared_storage(root, opts)
    for run in runs:
        check_run_dir(run)
    if opts.executor == "slurm" and (shutil.which("sbatch") is None or shutil.which("srun") is None):
        raise LaunchError(SLURM_MISSING)
    sweep = len(runs) > 1 or runs[0].label is not None
    if sweep and root.is_dir() and any(p.name != "slurm" and not (root / p.name / "config.json").exists()
                                       and p.name not in {r.label for r in runs} for p in root.iterdir()):
        raise LaunchError(f"sweep folder {root} holds other files; pick a new --run-dir for the sweep")
    created = [p for p in dict.fromkeys([root] + [r.run_dir for r in runs]) if not p.exists()]
    for run in runs:
        _prepare_folder(run.run_dir)
    (root / "slurm").mkdir(parents=True, exist_ok=True)
    fns = [TrainJob(r.config, str(r.run_dir), param_hash=param_hash, progress=progress) for r in runs]
    captured = io.StringIO()
    try:
        executor = make_executor(opts, root)
        with contextlib.redirect_stderr(captured):  # submitit prints sbatch's stderr before raising
            jobs = executor.submit_array(fns) if len(fns) > 1 else [executor.submit(fns[0])]
    except BaseException as exc:
        for folder in created:  # nothing was queued: leave no half-made run folders behind
            shutil.rmtree(folder, ignore_errors=True)
        if isinstance(exc, submitit.core.utils.FailedJobError):
            raise LaunchError(_sbatch_message(str(exc) or captured.getvalue())) from None
        if isinstance(exc, FileNotFoundError):
            raise LaunchError(f"{SLURM_MISSING} ({exc})") from None
        raise
    when = _now()
    base = {"submitted": when, "executor": opts.executor, "nodes": opts.nodes, "tasks_per_node": opts.ntasks_per_node,
            "tasks": opts.world_size, "gpus_per_node": opts.gpus_per_node, "profile": opts.profile,
            "command": command_line or shlex.join(sys.argv), "root": str(root)}
    for index, (run, job) in enumerate(zip(runs, jobs)):
        array_index = index if len(jobs) > 1 else None
        record = {**base, "job_id": job.job_id, "array_job_id": job.job_id.split("_")[0] if array_index is not None
                  else None, "array_index": array_index, "run_dir": str(run.run_dir), "sweep": run.label,
                  "log_dir": str(job.paths.folder)}
        _append_jsonl(run.run_dir / "slurm" / "jobs.jsonl", record)
    if sweep:
        array_id = jobs[0].job_id.split("_")[0] if opts.executor == "slurm" and len(jobs) > 1 else None
        _append_jsonl(root / "slurm" / "jobs.jsonl", {
            **base, "job_id": array_id or ",".join(j.job_id for j in jobs), "array_job_id": array_id,
            "array_index": None, "run_dir": str(root), "elements": [str(r.run_dir) for r in runs],
            "element_job_ids": [j.job_id for j in jobs], "sweep": [r.label for r in runs],
            "log_dir": str(log_folder(root).parent)})
    return Submission(runs, list(jobs), opts, root)


def wait(submission: Submission) -> list[list[dict]]:
    """Block until every job ends; each job's per-task results (LaunchError if one failed)."""
    out = []
    for run, job in zip(submission.runs, submission.jobs):
        out.append(job_results(job, run.run_dir, submission.opts.executor))
    return out


def job_results(job, run_dir: Path, executor: str) -> list[dict]:
    from submitit.core.utils import FailedJobError, UncompletedJobError
    try:
        if executor == "debug":
            # DebugJob.results() calls pdb.post_mortem() on an exception (it reads stdin): just re-raise
            import pdb  # noqa: T100 (only to switch its post-mortem off)
            saved, pdb.post_mortem = pdb.post_mortem, lambda *a, **k: None
            try:
                return job.results()
            except Exception as exc:  # DebugJob re-raises the job's own exception
                raise LaunchError(f"job {job.job_id} failed: {type(exc).__name__}: {exc}") from exc
            finally:
                pdb.post_mortem = saved
        return job.results()
    except FailedJobError as exc:
        lines = [ln for ln in str(exc).splitlines() if ln.strip() and not ln.startswith("-")]
        trace = [ln for ln in lines if not ln.startswith((" ", "Traceback", "Job (task", "You can check", "or at"))]
        last = trace[-1].strip() if trace else "see the log"
        raise LaunchError(f"job {job.job_id} failed: {last}\n  full log: jit slurm logs {run_dir}") from None
    except UncompletedJobError:
        state = job_state(job.job_id, executor)
        raise LaunchError(f"job {job.job_id} ended without a result (state {state}); its last checkpoint is "
                          f"kept in {run_dir}: see `jit slurm logs {run_dir}`, resubmit the same command to "
                          "resume") from None


# ------------------------------------------------------------------------------------------------ watching
def _sacct(job_ids: Sequence[str], duplicates: bool = True) -> list[dict]:
    if not job_ids or shutil.which("sacct") is None:
        return []
    cmd = ["sacct", "-n", "-X", "-P", "-o", "JobID,State,Elapsed,NodeList,Submit,Start,End,ExitCode"]
    if duplicates:
        cmd.append("-D")
    for jid in job_ids:
        cmd += ["-j", str(jid)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    names = ["JobID", "State", "Elapsed", "NodeList", "Submit", "Start", "End", "ExitCode"]
    rows = [dict(zip(names, line.split("|"))) for line in proc.stdout.splitlines() if line.strip()]
    return rows


def slurm_job_info(job_id: str) -> dict:
    """State (sacct, last attempt), requeue count (attempts - 1) and the other sacct fields of one job."""
    all_rows = _sacct([job_id.split("_")[0]] if "_" in job_id else [job_id])
    rows = [r for r in all_rows if r["JobID"] == job_id]
    if not rows and "_" in job_id:  # an array element not started yet: "123_[0-3%4]"
        base, index = job_id.split("_", 1)
        for r in all_rows:
            m = re.fullmatch(rf"{base}_\[([0-9,\-]+)(%\d+)?\]", r["JobID"])
            if m and any(int(index) in range(int(a), int(b or a) + 1)
                         for a, _, b in (part.partition("-") for part in m[1].split(","))):
                rows = [r]
    if not rows:
        return {"State": "UNKNOWN", "requeues": 0}
    last = dict(rows[-1])
    last["State"] = last["State"].split()[0]   # "CANCELLED by 0" -> "CANCELLED"
    last["requeues"] = sum(1 for r in rows[:-1])
    return last


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    try:  # a zombie of ours counts as ended
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def job_state(job_id: str, executor: str, run_dir: Path | None = None) -> str:
    if executor == "slurm":
        return slurm_job_info(job_id)["State"]
    if executor == "local" and job_id.isdigit() and _pid_alive(int(job_id)):
        return "RUNNING"
    events = [e for e in read_events(run_dir) if e.get("job_id") == job_id] if run_dir else []
    ends = [e for e in events if e.get("event") == "end"]
    if ends:
        return "COMPLETED" if ends[-1].get("status") == "finished" else "INTERRUPTED"
    return "ENDED" if executor == "local" else "UNKNOWN"


def is_terminal(state: str) -> bool:
    return state.split()[0].rstrip("+") in TERMINAL_STATES or state in ("ENDED", "INTERRUPTED")


def find_run(target: str) -> Path:
    """A run folder (or sweep folder) from a folder path or a job id (found through sacct's SubmitLine)."""
    path = Path(target).expanduser()
    if path.is_dir():
        return path.absolute()
    if not JOB_ID_RE.match(target):
        raise LaunchError(f"{target} is neither a run folder nor a job id")
    base, _, index = target.partition("_")
    line = ""
    if shutil.which("sacct"):
        proc = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "SubmitLine", "-j", base], capture_output=True,
                              text=True, timeout=30, check=False)
        line = next((ln for ln in proc.stdout.splitlines() if ln.strip()), "")
    m = re.search(r"(\S+)/slurm/logs/\S*submission", line)
    if not m:
        raise LaunchError(f"job {target} was not submitted by `jit slurm submit` (or sacct does not know it): "
                          "pass the run folder instead")
    root = Path(m[1])
    if index:
        for rec in read_jobs(root):
            ids = rec.get("element_job_ids") or []
            if target in ids:
                return Path(rec["elements"][ids.index(target)])
    return root


def _last_metrics(run_dir: Path) -> dict:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return {}
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 65536))
        lines = f.read().decode(errors="replace").splitlines()
    for line in reversed(lines):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    return {}


def _checkpoint_step(run_dir: Path) -> int | None:
    root = run_dir / "checkpoints"
    try:
        name = (root / "latest").read_text().strip()
    except OSError:
        steps = sorted(int(p.name[5:]) for p in root.glob("step-*") if p.name[5:].isdigit()) if root.is_dir() else []
        return steps[-1] if steps else None
    m = re.fullmatch(r"step-(\d+)", name)
    return int(m[1]) if m else None


def run_status(run_dir: str | Path) -> dict:
    """What a run is doing: its latest job's state, requeues, step and loss."""
    run_dir = Path(run_dir)
    jobs = read_jobs(run_dir)
    info: dict[str, Any] = {"run_dir": str(run_dir)}
    if jobs and jobs[-1].get("elements"):
        info["sweep"] = [run_status(e) for e in jobs[-1]["elements"]]
        info["job_id"] = jobs[-1]["job_id"]
        return info
    cfg_path = run_dir / "config.json"
    total = None
    if cfg_path.exists():
        try:
            total = json.loads(cfg_path.read_text()).get("train", {}).get("max_steps")
        except json.JSONDecodeError:
            pass
    metrics = _last_metrics(run_dir)
    info.update(step=metrics.get("step"), total_steps=total, loss=metrics.get("loss"),
                checkpoint_step=_checkpoint_step(run_dir), jobs=len(jobs))
    if not jobs:
        info.update(job_id=None, state="NO JOB", requeues=0)
        return info
    latest = jobs[-1]
    job_id, executor = latest["job_id"], latest.get("executor", "slurm")
    starts = [e for e in read_events(run_dir) if e.get("event") == "start" and e.get("job_id") == job_id]
    if executor == "slurm":
        sinfo = slurm_job_info(job_id)
        state, requeues = sinfo["State"], max(sinfo["requeues"], len(starts) - 1)
        info["elapsed"] = sinfo.get("Elapsed")
        info["nodes"] = sinfo.get("NodeList")
    else:
        state, requeues = job_state(job_id, executor, run_dir), max(0, len(starts) - 1)
    info.update(job_id=job_id, executor=executor, state=state, requeues=requeues,
                tasks=latest.get("tasks"), submitted=latest.get("submitted"), log_dir=latest.get("log_dir"))
    return info


def format_status(info: dict, indent: str = "") -> str:
    if "sweep" in info:
        lines = [f"{indent}sweep {info['run_dir']} (job {info['job_id']}, {len(info['sweep'])} runs)"]
        for element in info["sweep"]:
            lines.append(format_status(element, indent + "  "))
        return "\n".join(lines)
    step = "-" if info.get("step") is None else str(info["step"])
    if info.get("total_steps"):
        step += f"/{info['total_steps']}"
    ckpt = info.get("checkpoint_step")
    loss = "-" if info.get("loss") is None else f"{info['loss']:.4f}"
    job = info.get("job_id") or "-"
    extra = f", {info['executor']}" if info.get("executor") and info["executor"] != "slurm" else ""
    return (f"{indent}{info['run_dir']}\n"
            f"{indent}  job {job}{extra}: {info.get('state')}  requeues {info.get('requeues', 0)}"
            f"{'  elapsed ' + info['elapsed'] if info.get('elapsed') else ''}\n"
            f"{indent}  step {step}  loss {loss}  checkpoint {'-' if ckpt is None else ckpt}")


def log_files(run_dir: Path, task: int = 0) -> tuple[dict, Path, Path]:
    jobs = read_jobs(run_dir)
    if not jobs:
        raise LaunchError(f"{run_dir} has no jobs recorded ({run_dir}/slurm/jobs.jsonl): was it submitted with "
                          "`jit slurm submit`?")
    latest = jobs[-1]
    if latest.get("elements"):
        listing = "\n  ".join(latest["elements"])
        raise LaunchError(f"{run_dir} is a sweep of {len(latest['elements'])} runs: pass one of them:\n  {listing}")
    if task < 0 or task >= int(latest.get("tasks") or 1):
        raise LaunchError(f"--task {task}: the job has {latest.get('tasks') or 1} tasks (0..{(latest.get('tasks') or 1) - 1})")
    folder = Path(latest["log_dir"])
    jid = latest["job_id"]
    return latest, folder / f"{jid}_{task}_log.out", folder / f"{jid}_{task}_log.err"


def cancel(target: str) -> list[tuple[str, str]]:
    """Cancel every recorded job of a run (a sweep: the whole array) or one job id: [(job id, outcome)]."""
    if JOB_ID_RE.match(target) and not Path(target).is_dir():
        ids, executor = [target], "slurm"
    else:
        run_dir = find_run(target)
        jobs = read_jobs(run_dir)
        if not jobs:
            raise LaunchError(f"{run_dir} has no jobs recorded: nothing to cancel")
        out = []
        by_executor: dict[str, list[str]] = {}
        for rec in jobs:
            by_executor.setdefault(rec.get("executor", "slurm"), []).append(rec["job_id"])
        for executor, ids in by_executor.items():
            out += _cancel_ids(list(dict.fromkeys(ids)), executor, run_dir)
        return out
    return _cancel_ids(ids, executor, None)


def _cancel_ids(ids: list[str], executor: str, run_dir: Path | None) -> list[tuple[str, str]]:
    out = []
    for jid in ids:
        if executor == "slurm":
            if shutil.which("scancel") is None:
                raise LaunchError(SLURM_MISSING)
            state = slurm_job_info(jid)["State"] if "," not in jid else "UNKNOWN"
            if is_terminal(state):
                out.append((jid, f"already ended ({state})"))
                continue
            proc = subprocess.run(["scancel", jid], capture_output=True, text=True, timeout=60, check=False)
            msg = (proc.stderr or proc.stdout).strip()
            out.append((jid, "cancelled" if proc.returncode == 0 and not msg else f"scancel: {msg or proc.returncode}"))
        elif executor == "local":
            for pid in jid.split(","):
                if pid.isdigit() and _pid_alive(int(pid)):
                    os.kill(int(pid), signal.SIGTERM)   # the controller forwards it; the trainer checkpoints
                    out.append((pid, "cancelled"))
                else:
                    out.append((pid, "already ended"))
        else:
            out.append((jid, "in-process (debug) job: nothing to cancel"))
    return out
