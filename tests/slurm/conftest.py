"""Shared fixtures for tests that need the local SLURM cluster (scripts/slurm-cluster.sh up):
``slurm_cluster`` (skip or fail without one) and ``run_dir`` (a run folder whose jobs are cancelled
after the test).

Without a reachable cluster these tests are skipped, unless JIT_REQUIRE_SLURM=1 (CI), which
turns the skip into a failure.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from slurm.cluster import accounting_available, cluster_available
from slurm.records import read_jobs


def _require() -> bool:
    return os.environ.get("JIT_REQUIRE_SLURM", "").strip().lower() in {"1", "true", "yes"}


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """Skip (or fail under JIT_REQUIRE_SLURM=1) unless SLURM with accounting is usable.

    Returns the node states reported by sinfo.
    """
    ok, info = cluster_available()
    if ok:
        acct_ok, why = accounting_available()
        if not acct_ok:
            ok, info = False, why
    if not ok:
        msg = f"no usable SLURM cluster: {info}"
        if _require():
            pytest.fail(f"{msg} (JIT_REQUIRE_SLURM=1)", pytrace=False)
        pytest.skip(msg)
    return info


def scancel_recorded(run_dir: Path) -> None:
    """Never leave a job holding one of the node's 2 CPUs after a failed test."""
    ids = {rec["job_id"].split("_")[0] for rec in read_jobs(run_dir)} if Path(run_dir).exists() else set()
    for sub in Path(run_dir).glob("*/slurm/jobs.jsonl") if Path(run_dir).exists() else []:
        ids |= {rec["job_id"].split("_")[0] for rec in read_jobs(sub.parent.parent)}
    for jid in ids:
        if jid.isdigit():
            subprocess.run(["scancel", jid], capture_output=True, timeout=30, check=False)


@pytest.fixture
def run_dir(tmp_path):
    """``tmp_path / "run"``; every SLURM job recorded under it is cancelled after the test."""
    folder = tmp_path / "run"
    yield folder
    scancel_recorded(folder)
