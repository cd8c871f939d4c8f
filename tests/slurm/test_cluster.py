"""End-to-end checks of the local SLURM cluster through submitit (scripts/slurm-cluster.sh up)."""

from __future__ import annotations

import operator
import subprocess
import time
from collections.abc import Callable

import pytest
import submitit

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(180)]


def _executor(folder) -> submitit.AutoExecutor:
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    executor.update_parameters(timeout_min=5, cpus_per_task=1, mem_gb=1)
    return executor


def _wait_for(predicate: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.5) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(poll_s)


def _sacct_state(job_id: str) -> str:
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def test_submit_and_result(slurm_cluster, tmp_path):
    job = _executor(tmp_path).submit(operator.add, 2, 3)
    _wait_for(lambda: job.done(force_check=True), 60, f"job {job.job_id} to finish")
    assert job.result() == 5
    # the result pickle can appear before accounting catches up: poll the state (forced sacct read)
    _wait_for(lambda: job.get_info(mode="force").get("State") == "COMPLETED", 30, f"job {job.job_id} COMPLETED")


def test_sacct_shows_completed(slurm_cluster, tmp_path):
    job = _executor(tmp_path).submit(operator.mul, 6, 7)
    assert job.result() == 42
    _wait_for(lambda: _sacct_state(job.job_id) == "COMPLETED", 30, f"sacct to report job {job.job_id} COMPLETED")


def test_cancel_reaches_done(slurm_cluster, tmp_path):
    job = _executor(tmp_path).submit(time.sleep, 300)
    try:
        _wait_for(lambda: job.get_info(mode="force").get("State") == "RUNNING", 60, f"job {job.job_id} to start")
        job.cancel()
        _wait_for(lambda: job.done(force_check=True), 60, f"cancelled job {job.job_id} to be done")
        assert job.state.startswith("CANCELLED"), job.state
        assert _sacct_state(job.job_id).startswith("CANCELLED")
    finally:
        # never leave a 300 s job holding one of the node's 2 CPUs after a failure
        subprocess.run(["scancel", job.job_id], capture_output=True, timeout=10, check=False)
