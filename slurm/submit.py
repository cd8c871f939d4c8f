"""Queue runs through submitit: executors from the cluster options, the sbatch script (for --dry-run),
job arrays for sweeps, and the checks and messages around sbatch.

Submitting checks first (:func:`preflight`), makes the run folders, queues one job (or one job array
for a sweep), and records the job ids in the run folders (:mod:`slurm.records`). If sbatch refuses
the job, the folders it made are removed and sbatch's message comes back as a :class:`LaunchError`
with a fix.
"""
from __future__ import annotations

import contextlib
import functools
import io
import re
import shlex
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from .capacity import check_capacity, cluster_nodes
from .job import TrainJob
from .memory import plan_memory
from .options import SLURM_MISSING, ClusterOptions, LaunchError
from .records import append_job, log_folder, now
from .run_checks import run_problems
from .runs import RunSpec, check_run_dir

# folders that are never shared between nodes
LOCAL_PREFIXES = ("/tmp", "/var/tmp", "/dev/shm", "/run")
# file systems that live on one machine only
LOCAL_FS_TYPES = {"ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "f2fs", "tmpfs", "ramfs", "overlay", "devtmpfs",
                  "vfat", "exfat", "ntfs", "squashfs", "jfs", "reiserfs"}


# ------------------------------------------------------------------------------------------------ checks
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


def _check_startable(run: RunSpec) -> None:
    problems = run_problems(run)
    if problems:
        raise LaunchError(f"{run.run_dir} would fail as soon as it starts: {'; '.join(problems)}")


def preflight(runs: list[RunSpec], opts: ClusterOptions, root: Path) -> Iterator[LaunchError]:
    """The problems that would make submitting fail, one by one (lazily: stop at the first if you like).

    ``opts`` should already carry the memory request (:func:`slurm.memory.plan_memory`): the cluster's
    nodes are checked against it.
    """
    checks: list[Callable[[], None]] = [functools.partial(check_shared_storage, root, opts)]
    if opts.executor == "slurm":
        checks.append(lambda: check_capacity(opts, cluster_nodes()))
    checks += [functools.partial(check_run_dir, run) for run in runs]
    checks += [functools.partial(_check_startable, run) for run in runs]
    for check in checks:
        try:
            check()
        except LaunchError as exc:
            yield exc


def _sbatch_message(stderr: str) -> str:
    """sbatch's refusal as one line, with what to change."""
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


# ------------------------------------------------------------------------------------------------ executors
def _env_exports(opts: ClusterOptions) -> list[str]:
    return [f"export {k}={shlex.quote(v)}" for k, v in opts.env.items()]


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
    setup = _env_exports(opts)
    if "OMP_NUM_THREADS" not in opts.env:
        setup.append(f"export OMP_NUM_THREADS=${{OMP_NUM_THREADS:-{opts.cpus_per_task or 1}}}")
    p["setup"] = setup + list(opts.setup)
    extra: dict[str, Any] = {"requeue": True}
    for key, value in opts.sbatch.items():   # "" (a bare flag such as --exclusive) -> True
        extra[key.replace("-", "_")] = True if value is True or value == "" else value
    p["additional_parameters"] = extra
    return p


def _job_name(opts: ClusterOptions, root: Path) -> str:
    return opts.job_name or f"jit-{Path(root).name}"


def sbatch_script(opts: ClusterOptions, root: Path, array_size: int | None = None) -> str:
    """The sbatch file submitit writes for this submission (same function, same parameters)."""
    from submitit.slurm.slurm import _make_sbatch_string
    params = slurm_parameters(opts, _job_name(opts, root))
    if array_size and array_size > 1:
        params["map_count"] = array_size
    folder = log_folder(root).absolute()
    command = " ".join([opts.python or shlex.quote(sys.executable), "-u -m submitit.core._submit",
                        shlex.quote(str(folder))])
    return _make_sbatch_string(command=command, folder=folder, **params)


def _make_executor(opts: ClusterOptions, root: Path) -> submitit.Executor:
    """The submitit executor for these options (it makes the log folder)."""
    folder = log_folder(root).absolute()
    executor: submitit.Executor
    if opts.executor == "slurm":
        executor = submitit.SlurmExecutor(folder, max_num_timeout=opts.max_requeues, python=opts.python)
        executor.update_parameters(**slurm_parameters(opts, _job_name(opts, root)))
    elif opts.executor == "local":
        executor = submitit.LocalExecutor(folder, max_num_timeout=opts.max_requeues, python=opts.python)
        setup = _env_exports(opts) + list(opts.setup)
        executor.update_parameters(timeout_min=opts.time_min, tasks_per_node=opts.ntasks_per_node,
                                   gpus_per_node=opts.gpus_per_node, signal_delay_s=opts.signal_delay_s,
                                   **({"setup": setup} if setup else {}))
    else:
        executor = submitit.DebugExecutor(folder)
    return executor


# ------------------------------------------------------------------------------------------------ submitting
@dataclass
class Submission:
    runs: list[RunSpec]
    jobs: list            # submitit jobs, one per run (a sweep: the array's elements)
    opts: ClusterOptions
    root: Path


def _prepare_folder(folder: Path) -> None:
    (folder / "slurm").mkdir(parents=True, exist_ok=True)
    # jit_core.training.prepare_run_dir refuses a non-empty folder without checkpoints/ (the slurm/ records
    # and logs land before the trainer starts), so the (empty) checkpoints folder is made here
    (folder / "checkpoints").mkdir(exist_ok=True)


def submit(runs: list[RunSpec], opts: ClusterOptions, root: str | Path, *, command_line: str | None = None,
           param_hash: bool = False, progress: bool = True, evaluate: dict | None = None) -> Submission:
    """Queue ``runs`` (one job, or one job array for a sweep) and record the job ids in the run folders.
    ``evaluate``: evaluate each run when its training finishes (:class:`TrainJob`), as `jit slurm study` does."""
    root = Path(root).absolute()
    opts = plan_memory(runs, opts)[0]   # the default --mem-per-task when none is given
    for problem in preflight(runs, opts, root):
        raise problem
    if opts.executor == "slurm" and (shutil.which("sbatch") is None or shutil.which("srun") is None):
        raise LaunchError(SLURM_MISSING)
    sweep = len(runs) > 1 or runs[0].label is not None
    ours = {r.run_dir.relative_to(root).parts[0] for r in runs if r.run_dir != root and r.run_dir.is_relative_to(root)}
    if sweep and root.is_dir() and any(p.name != "slurm" and not (root / p.name / "config.json").exists()
                                       and p.name not in ours for p in root.iterdir()):
        raise LaunchError(f"sweep folder {root} holds other files; pick a new --run-dir for the sweep")
    created = [p for p in dict.fromkeys([root] + [r.run_dir for r in runs]) if not p.exists()]
    for run in runs:
        _prepare_folder(run.run_dir)
    (root / "slurm").mkdir(parents=True, exist_ok=True)
    fns = [TrainJob(r.config.to_dict(), str(r.run_dir), param_hash=param_hash, progress=progress,
                    max_requeues=opts.max_requeues, evaluate=evaluate) for r in runs]
    captured = io.StringIO()
    try:
        executor = _make_executor(opts, root)
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
    base = {"submitted": now(), "executor": opts.executor, "nodes": opts.nodes,
            "tasks_per_node": opts.ntasks_per_node, "tasks": opts.world_size, "gpus_per_node": opts.gpus_per_node,
            "profile": opts.profile, "command": command_line or shlex.join(sys.argv), "root": str(root),
            "mem_per_task_gb": opts.mem_per_task, "max_requeues": opts.max_requeues}
    array = len(jobs) > 1
    for index, (run, job) in enumerate(zip(runs, jobs)):
        append_job(run.run_dir, {**base, "job_id": job.job_id, "array_job_id": job.job_id.split("_")[0] if array
                                 else None, "array_index": index if array else None, "run_dir": str(run.run_dir),
                                 "sweep": run.label, "log_dir": str(job.paths.folder)})
    if sweep:
        array_id = jobs[0].job_id.split("_")[0] if opts.executor == "slurm" and array else None
        append_job(root, {**base, "job_id": array_id or ",".join(j.job_id for j in jobs), "array_job_id": array_id,
                          "array_index": None, "run_dir": str(root), "elements": [str(r.run_dir) for r in runs],
                          "element_job_ids": [j.job_id for j in jobs], "sweep": [r.label for r in runs],
                          "log_dir": str(log_folder(root).parent)})
    return Submission(runs, list(jobs), opts, root)
