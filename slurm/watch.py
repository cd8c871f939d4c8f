"""Watch and stop submitted runs: job states (sacct, or the process for local jobs), a run's progress
from its folder, its logs, its outcome, and cancelling its jobs.

Everything starts from the run folder's records (:mod:`slurm.records`); a job id given instead is
traced back to its run folder through sacct's SubmitLine. Outcomes come from sacct and from the JSON
events the job writes (``events.jsonl``), never from submitit's ``*_result.pkl``: unpickling runs code
named by the file, and a run folder may be someone else's (a shared folder, a copied run), so watching
it must not execute anything it holds. Imports neither torch nor jit_core at module level, so that
`jit slurm status` is quick (the checkpoint check imports jit_core.runs.checkpoint when it runs).
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

from jit_core.config import Config, ConfigError, read_config_file

from .options import SLURM_MISSING, LaunchError
from .records import read_events, read_jobs

TERMINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL",
                   "DEADLINE", "REVOKED", "SPECIAL_EXIT")
JOB_ID_RE = re.compile(r"^\d+(_\d+)?$")
SACCT_FIELDS = ("JobID", "State", "Elapsed", "ElapsedRaw", "NodeList", "Submit", "Start", "End", "ExitCode",
                "Reason", "AllocTRES")
STEP_FIELDS = ("JobID", "TotalCPU", "MaxRSS", "TRESUsageInMax")


# ------------------------------------------------------------------------------------------------ job states
def _sacct(job_id: str, fields: Sequence[str] = SACCT_FIELDS, *flags: str, x: bool = True) -> list[dict]:
    """sacct's allocation rows (``x=False``: its steps' rows too) for one job (an array: all its elements) as
    dicts; [] without sacct."""
    if shutil.which("sacct") is None:
        return []
    cmd = ["sacct", "-n", *(["-X"] if x else []), "-P", "-o", ",".join(fields), *flags, "-j", job_id]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [dict(zip(fields, line.split("|", len(fields) - 1))) for line in proc.stdout.splitlines() if line.strip()]


def _attempt_rows(rows: list[dict], job_id: str) -> list[dict]:
    """The rows of ``job_id`` (one per attempt); an array element not started yet matches ``123_[0-3%4]``."""
    own = [r for r in rows if r["JobID"] == job_id]
    if own or "_" not in job_id:
        return own
    base, index = job_id.split("_", 1)
    for r in rows:
        m = re.fullmatch(rf"{base}_\[([0-9,\-]+)(%\d+)?\]", r["JobID"])
        if m and any(int(index) in range(int(a), int(b or a) + 1)
                     for a, _, b in (part.partition("-") for part in m[1].split(","))):
            return [r]
    return []


def _seconds(text: str) -> float | None:
    """sacct durations ``[D-]HH:MM:SS[.fff]`` / ``MM:SS.fff`` to seconds."""
    m = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+(?:\.\d+)?)", text.strip())
    if not m:
        return None
    days, hours, minutes, secs = m.groups()
    return int(days or 0) * 86400 + int(hours or 0) * 3600 + int(minutes) * 60 + float(secs)


def _bytes(text: str) -> int | None:
    """sacct sizes (``306420K``, ``1.5G``) to bytes."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGTP]?)", text.strip())
    return int(float(m[1]) * 1024 ** "_KMGTP".index(m[2] or "_")) if m else None


def _tres(text: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in text.split(",") if "=" in part)


def live_pending_reason(job_id: str) -> str | None:
    """Why a pending job waits, from the controller (``squeue``); None when squeue is missing or knows no reason.

    sacct's Reason is what slurmdbd last recorded, which for a pending job can stay "None" until the job
    changes state: the scheduler names the reason (BeginTime, Resources, ...) after the record was sent.
    """
    if shutil.which("squeue") is None:
        return None
    try:
        proc = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%r"], capture_output=True, text=True,
                              timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    reason = proc.stdout.strip().splitlines()[0].strip() if proc.returncode == 0 and proc.stdout.strip() else ""
    return reason if reason and reason != "None" else None


def slurm_job_info(job_id: str, usage: bool = True) -> dict:
    """One job from sacct: ``State`` and the other fields of its last attempt, ``requeues`` (attempts - 1),
    ``elapsed_s`` over all attempts, ``gpus`` allocated; with ``usage`` also from its steps ``cpu_s`` (all
    attempts), the largest ``max_rss`` of a task (bytes) and, where SLURM gathers them, ``gpu_mem`` and
    ``gpu_util`` (TRESUsageInMax)."""
    base = job_id.split("_")[0]
    rows = _attempt_rows(_sacct(base, SACCT_FIELDS, "-D"), job_id)   # -D: every attempt, requeues included
    if not rows:
        return {"State": "UNKNOWN", "requeues": 0}
    info = dict(rows[-1])
    info["State"] = info["State"].split()[0]   # "CANCELLED by 0" -> "CANCELLED"
    info["requeues"] = len(rows) - 1
    elapsed = [int(r["ElapsedRaw"]) for r in rows if r.get("ElapsedRaw", "").isdigit()]
    info["elapsed_s"] = sum(elapsed) if elapsed else None
    info["gpus"] = int(_tres(info.get("AllocTRES", "")).get("gres/gpu", 0) or 0)
    if not usage:
        return info
    steps = [r for r in _sacct(base, STEP_FIELDS, "-D", x=False) if r["JobID"].startswith(job_id + ".")]
    cpu = [t for t in (_seconds(r.get("TotalCPU", "")) for r in steps) if t is not None]   # -X rows lack it
    info["cpu_s"] = sum(cpu) if cpu else None
    rss = [b for b in (_bytes(r.get("MaxRSS", "")) for r in steps) if b is not None]
    info["max_rss"] = max(rss) if rss else None
    for r in steps:
        peak = _tres(r.get("TRESUsageInMax", ""))
        for key, name in (("gres/gpumem", "gpu_mem"), ("gres/gpuutil", "gpu_util")):
            if key in peak:
                info[name] = max(info.get(name) or 0, _bytes(peak[key]) or 0) if name == "gpu_mem" \
                    else max(info.get(name) or 0, float(peak[key]))
    return info


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
        return slurm_job_info(job_id, usage=False)["State"]
    if executor == "local" and job_id.isdigit() and _pid_alive(int(job_id)):
        return "RUNNING"
    events = [e for e in read_events(run_dir) if e.get("job_id") == job_id] if run_dir else []
    ends = [e for e in events if e.get("event") == "end"]
    if ends:
        return {"finished": "COMPLETED", "failed": "FAILED"}.get(str(ends[-1].get("status")), "INTERRUPTED")
    return "ENDED" if executor == "local" else "UNKNOWN"


def is_terminal(state: str) -> bool:
    return state.split()[0].rstrip("+") in TERMINAL_STATES or state in ("ENDED", "INTERRUPTED")


def end_event(run_dir: Path, job_id: str) -> dict | None:
    """How the job's last attempt ended, as its rank 0 recorded it (None: it has not ended, or was killed)."""
    events = [e for e in read_events(run_dir) if e.get("job_id") == job_id]
    return events[-1] if events and events[-1].get("event") == "end" else None


def queue() -> str:
    """Your queued and running jobs, as squeue lists them."""
    if shutil.which("squeue") is None:
        raise LaunchError(SLURM_MISSING)
    out = subprocess.run(["squeue", "--me", "-o", "%.12i %.24j %.10T %.10M %.6D %R"], capture_output=True,
                         text=True, timeout=30, check=False)
    return (out.stdout or out.stderr).rstrip()


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
    """The step a resume starts from: that of the run's newest checkpoint that verifies (sizes and SHA-256,
    as the trainer checks it; a damaged one is skipped as the trainer skips it), or None."""
    return resume_point(run_dir)[0]


def resume_point(run_dir: Path) -> tuple[int | None, str | None]:
    """(the step a resume starts from or None, a note when checkpoints were skipped or none verifies)."""
    if not (Path(run_dir) / "checkpoints").is_dir():
        return None, None
    import warnings

    from jit_core.errors import CheckpointError
    from jit_core.runs.checkpoint import latest_checkpoint
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            path = latest_checkpoint(run_dir)
        except CheckpointError as exc:
            return None, str(exc)
    m = re.fullmatch(r"step-(\d+)", path.name) if path is not None else None
    skipped = "; ".join(str(w.message) for w in caught if str(w.message).startswith("skipping checkpoint")) or None
    return (int(m[1]) if m else None), skipped


def _duration(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    seconds = int(round(seconds))
    days, rest = divmod(seconds, 86400)
    text = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}-{text}" if days else text


def run_status(run_dir: str | Path) -> dict:
    """What a run is doing: its latest job's state and pending reason, requeues, elapsed and CPU time over all
    attempts, peak memory, the step a resume starts from (newest verified checkpoint) and the last loss."""
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
        try:    # parsed by the config's own types (no key read with a default of its own)
            total = Config.from_dict(read_config_file(cfg_path)).train.max_steps
        except ConfigError:
            pass    # a status line does not fail on a damaged config.json: the trainer names the problem
    metrics = _last_metrics(run_dir)
    step, note = resume_point(run_dir)
    info.update(step=step, checkpoint_step=step, checkpoint_note=note, total_steps=total, loss=metrics.get("loss"),
                logged_step=metrics.get("step"), jobs=len(jobs))
    if not jobs:
        info.update(job_id=None, state="NO JOB", requeues=0)
        return info
    latest = jobs[-1]
    job_id, executor = latest["job_id"], latest.get("executor", "slurm")
    starts = [e for e in read_events(run_dir) if e.get("event") == "start" and e.get("job_id") == job_id]
    if executor == "slurm":
        sinfo = slurm_job_info(job_id)
        state, requeues = sinfo["State"], max(sinfo["requeues"], len(starts) - 1)
        info.update(elapsed=_duration(sinfo.get("elapsed_s")), elapsed_s=sinfo.get("elapsed_s"),
                    cpu=_duration(sinfo.get("cpu_s")), cpu_s=sinfo.get("cpu_s"), max_rss=sinfo.get("max_rss"),
                    gpus=sinfo.get("gpus"), gpu_mem=sinfo.get("gpu_mem"), gpu_util=sinfo.get("gpu_util"),
                    nodes=sinfo.get("NodeList"), mem_per_task_gb=latest.get("mem_per_task_gb"))
        if state == "PENDING":
            info["pending_reason"] = live_pending_reason(job_id) or sinfo.get("Reason")
    else:
        state, requeues = job_state(job_id, executor, run_dir), max(0, len(starts) - 1)
    end = end_event(run_dir, job_id)
    if end is not None and end.get("status") == "failed":
        info["error"] = end.get("error")
    info.update(job_id=job_id, executor=executor, state=state, requeues=requeues, attempts=len(starts),
                tasks=latest.get("tasks"), submitted=latest.get("submitted"), log_dir=latest.get("log_dir"))
    return info


def _gb(n: float | None) -> str:
    return "-" if n is None else f"{n / 1024 ** 3:.2f} GB"


def format_status(info: dict, indent: str = "") -> str:
    if "sweep" in info:
        lines = [f"{indent}sweep {info['run_dir']} (job {info['job_id']}, {len(info['sweep'])} runs)"]
        for element in info["sweep"]:
            lines.append(format_status(element, indent + "  "))
        return "\n".join(lines)
    state = info.get("state")
    if info.get("pending_reason") and info["pending_reason"] != "None":
        state = f"{state} ({info['pending_reason']})"
    job = info.get("job_id") or "-"
    extra = f", {info['executor']}" if info.get("executor") and info["executor"] != "slurm" else ""
    head = f"{indent}  job {job}{extra}: {state}  requeues {info.get('requeues', 0)}"
    if info.get("elapsed"):
        attempts = info.get("requeues", 0) + 1
        head += f"  elapsed {info['elapsed']} ({attempts} attempt{'s' if attempts > 1 else ''})"
    if info.get("cpu"):
        head += f"  cpu {info['cpu']}"
    if info.get("max_rss") is not None:
        asked = f" of {info['mem_per_task_gb']:g} GB" if info.get("mem_per_task_gb") else ""
        head += f"  max rss/task {_gb(info['max_rss'])}{asked}"
    if info.get("gpus"):
        head += f"  gpus {info['gpus']}"
        if info.get("gpu_util") is not None:
            head += f" (max util {info['gpu_util']:g}%, mem {_gb(info.get('gpu_mem'))})"
    ckpt = info.get("step")
    step = "-" if ckpt is None else str(ckpt)
    if info.get("total_steps"):
        step += f"/{info['total_steps']}"
    step += " (newest checkpoint: a resume starts here)" if ckpt is not None else " (no checkpoint yet)"
    loss = ""
    if info.get("loss") is not None:
        loss = f"  loss {info['loss']:.4f} at step {info.get('logged_step')}"
    lines = [f"{indent}{info['run_dir']}", head, f"{indent}  step {step}{loss}"]
    if info.get("checkpoint_note"):
        lines.append(f"{indent}  checkpoints: {info['checkpoint_note']}")
    if info.get("error"):
        lines.append(f"{indent}  error: {' '.join(str(info['error']).split())}")
    return "\n".join(lines)


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
            state = slurm_job_info(jid, usage=False)["State"] if "," not in jid else "UNKNOWN"
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
