"""Waiting for submitted jobs (`jit slurm submit --wait`) and what they ended with.

The outcome is read from sacct (or the local process) and from the ``end`` event the job's rank 0 writes
into ``<run>/slurm/events.jsonl`` (status, step, losses or the error), never from submitit's result pickle:
see :mod:`slurm.watch` for why nothing from a run folder is unpickled. The in-process ``debug`` executor is
the exception that proves it: its result never touches a file.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from jit_core.progress import format_duration, heartbeat, last_logged_step

from .options import LaunchError
from .watch import end_event, is_terminal, job_state

HEARTBEAT_S = float(os.environ.get("JIT_HEARTBEAT_S", 30))   # a line this often while --wait waits
UNKNOWN_GRACE_S = 300   # sacct knows a job within seconds of sbatch; this long without it: no accounting


def wait_for_end(job_id: str, executor: str, run_dir: Path, poll_s: float = 2.0) -> dict:
    """Block until the job ends; its ``end`` event (status ``finished`` or ``interrupted``), or a LaunchError
    saying why it has none (failed: with the job's error; killed; cancelled)."""
    start, state = time.monotonic(), "UNKNOWN"
    seen = {"state": state}

    def beat() -> str:     # the --wait heartbeat: the job's state and the run's last logged step
        step = last_logged_step(Path(run_dir) / "metrics.jsonl")
        return (f"job {job_id}: {seen['state']}, {format_duration(time.monotonic() - start)} waited"
                + (f", run at step {step}" if step is not None else ""))

    with heartbeat(beat, every_s=HEARTBEAT_S):
        while True:
            state = seen["state"] = job_state(job_id, executor, run_dir)
            if is_terminal(state):
                break
            if state == "UNKNOWN" and time.monotonic() - start > UNKNOWN_GRACE_S:
                raise LaunchError(f"sacct does not know job {job_id} after {UNKNOWN_GRACE_S} s: is SLURM accounting "
                                  f"(slurmdbd) on? Watch it with `squeue -j {job_id}`")
            time.sleep(poll_s)
    end = end_event(run_dir, job_id)
    if end is None and state.startswith("COMPLETED"):   # the event is written before the job exits; a slow
        time.sleep(2 * poll_s)                            # shared file system may show it a moment later
        end = end_event(run_dir, job_id)
    logs = f"jit slurm logs {run_dir}"
    if end is not None and end.get("status") == "failed":
        error = " ".join(str(end.get("error", "see the log")).split())
        raise LaunchError(f"job {job_id} failed: {error}\n  full log: {logs}")
    if end is None or not state.startswith(("COMPLETED", "ENDED", "INTERRUPTED")):
        raise LaunchError(f"job {job_id} ended without a result (state {state}); its last checkpoint is kept in "
                          f"{run_dir}: see `{logs}`, resubmit the same command to resume")
    return end


def debug_result(job) -> dict:
    """Run an in-process (debug executor) job; its rank 0 result, or a LaunchError with its exception."""
    # DebugJob.results() calls pdb.post_mortem() on an exception (it reads stdin): just re-raise
    import pdb  # noqa: T100 (only to switch its post-mortem off)
    saved, pdb.post_mortem = pdb.post_mortem, lambda *a, **k: None
    try:
        return job.results()[0]
    except Exception as exc:  # DebugJob re-raises the job's own exception
        raise LaunchError(f"job {job.job_id} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        pdb.post_mortem = saved
