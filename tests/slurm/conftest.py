"""Shared fixtures for tests that need the local SLURM cluster (scripts/slurm-cluster.sh up).

Without a reachable cluster these tests are skipped, unless JIT_REQUIRE_SLURM=1 (CI), which
turns the skip into a failure.
"""

from __future__ import annotations

import os

import pytest

from slurm.cluster import accounting_available, cluster_available


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
