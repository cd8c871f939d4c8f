"""Watch and stop submitted runs: job states (sacct, or the process for local jobs), a run's progress
from its folder, its logs, its results, and cancelling its jobs.

Everything starts from the run folder's records (:mod:`slurm.records`); a job id given instead is
traced back to its run folder through sacct's SubmitLine. Imports neither torch nor jit_core, so that
`jit slurm status` is quick.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .options import SLURM_MISSING, LaunchError
from .records import read_events, read_jobs

TERMINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL",
                   "DEADLINE", "REVOKED", "SPECIAL_EXIT")
JOB_ID_RE = re.compile(r"^\d+(_\d+)?$")
SACCT_FIELDS = ("JobID", "State", "Elapsed", "NodeList", "Submit", "Start", "End", "ExitCode")


# ------------------------------------------------------------------------------------------------ job states
def _sacct(job_id: str, fields: Sequence[str] = SACCT_FIELDS, *flags: str) -> list[dict]:
    """sacct's allocation rows for one job (an array: all its elements) as dicts; [] without sacct."""
    if shutil.which("sacct") is None:
        return []
    cmd = ["sacct", "-n", "-X", "-P", "-o", ",".join(fields), *flags, "-j", job_id]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [dict(zip(fields, line.split("|", len(fields) - 1))) for line in proc.stdout.splitlines() if line.strip()]


def slurm_job_info(job_id: str) -> dict:
    """State (sacct, last attempt), requeue count (attempts - 1) and the other sacct fields of one job."""
    all_rows = _sacct(job_id.split("_")[0], SACCT_FIELDS, "-D")   # -D: every attempt, requeues included
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
    last["requeues"] = len(rows) - 1
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
    """SLURM's state of a job; for a local or debug job: RUNNING, or what its run folder's events say."""
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


def queue() -> str:
    """Your queued and running jobs, as squeue lists them."""
    if shutil.which("squeue") is None:
        raise LaunchError(SLURM_MISSING)
    out = subprocess.run(["squeue", "--me", "-o", "%.12i %.24j %.10T %.10M %.6D %R"], capture_output=True,
                         text=True, timeout=30, check=False)
    return (out.stdout or out.stderr).rstrip()


def job_results(job, run_dir: Path, executor: str) -> list[dict]:
    """Block until ``job`` ends; its per-task results, or a LaunchError saying why there are none."""
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


# ------------------------------------------------------------------------------------------------ run folders
def find_run(target: str) -> Path:
    """A run folder (or sweep folder) from a folder path or a job id (found through sacct's SubmitLine)."""
    path = Path(target).expanduser()
    if path.is_dir():
        return path.absolute()
    if not JOB_ID_RE.match(target):
        raise LaunchError(f"{target} is neither a run folder nor a job id")
    base, _, index = target.partition("_")
    line = next((r["SubmitLine"] for r in _sacct(base, ("SubmitLine",))), "")
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


def checkpoint_step(run_dir: Path) -> int | None:
    """The step of the run folder's latest checkpoint, or None."""
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
                checkpoint_step=checkpoint_step(run_dir), jobs=len(jobs))
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
    """The latest job's record and the stdout and stderr files of one of its tasks."""
    jobs = read_jobs(run_dir)
    if not jobs:
        raise LaunchError(f"{run_dir} has no jobs recorded ({run_dir}/slurm/jobs.jsonl): was it submitted with "
                          "`jit slurm submit`?")
    latest = jobs[-1]
    if latest.get("elements"):
        listing = "\n  ".join(latest["elements"])
        raise LaunchError(f"{run_dir} is a sweep of {len(latest['elements'])} runs: pass one of them:\n  {listing}")
    tasks = int(latest.get("tasks") or 1)
    if task < 0 or task >= tasks:
        raise LaunchError(f"--task {task}: the job has {tasks} tasks (0..{tasks - 1})")
    folder = Path(latest["log_dir"])
    jid = latest["job_id"]
    return latest, folder / f"{jid}_{task}_log.out", folder / f"{jid}_{task}_log.err"


# ------------------------------------------------------------------------------------------------ cancelling
def cancel(target: str) -> list[tuple[str, str]]:
    """Cancel every recorded job of a run (a sweep: the whole array) or one job id: [(job id, outcome)]."""
    if JOB_ID_RE.match(target) and not Path(target).is_dir():
        return _cancel_ids([target], "slurm")
    run_dir = find_run(target)
    jobs = read_jobs(run_dir)
    if not jobs:
        raise LaunchError(f"{run_dir} has no jobs recorded: nothing to cancel")
    by_executor: dict[str, list[str]] = {}
    for rec in jobs:
        by_executor.setdefault(rec.get("executor", "slurm"), []).append(rec["job_id"])
    out = []
    for executor, ids in by_executor.items():
        out += _cancel_ids(list(dict.fromkeys(ids)), executor)
    return out


def _cancel_ids(ids: list[str], executor: str) -> list[tuple[str, str]]:
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
