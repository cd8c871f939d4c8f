"""Tiny, dependency-free probes for the local test SLURM cluster (scripts/slurm-cluster.sh)."""

from __future__ import annotations

import shutil
import subprocess

_HINT = "run scripts/slurm-cluster.sh up"
# "comp": a node still completing a job (a cancelled job for ~KillWait s) is healthy and schedulable.
# A trailing "*" (not responding), "~" (powered off) etc. means unusable; "-" (planned) is fine.
_READY_STATES = {"idle", "mix", "alloc", "comp"}


def _run(cmd: list[str], timeout: float) -> tuple[int | None, str]:
    """Run cmd; (returncode, combined output) or (None, reason) if it cannot run in time."""
    if shutil.which(cmd[0]) is None:
        return None, f"{cmd[0]} not found: {_HINT}"
    try:
        proc = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return None, f"`{' '.join(cmd)}` timed out after {timeout:g}s (is slurmctld up? {_HINT})"
    except OSError as exc:
        return None, f"`{' '.join(cmd)}` failed: {exc}"
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def cluster_available(timeout: float = 5.0) -> tuple[bool, str]:
    """(True, node states) if `sinfo -h -o %t` reports a usable node, else (False, why)."""
    rc, out = _run(["sinfo", "-h", "-o", "%t"], timeout)
    if rc is None:
        return False, out
    if rc != 0:
        return False, f"sinfo failed (rc={rc}): {out.splitlines()[-1] if out else 'no output'}; {_HINT}"
    states = [line.strip() for line in out.splitlines() if line.strip()]
    if any(s.rstrip("-") in _READY_STATES for s in states):
        return True, ",".join(states)
    return False, f"no usable SLURM node (sinfo states: {','.join(states) or 'none'}); {_HINT}"


def accounting_available(timeout: float = 5.0) -> tuple[bool, str]:
    """(True, "") if `sacct` works. submitit reads job states only through sacct: without it a
    cancelled job never counts as done."""
    rc, out = _run(["sacct", "-n", "-X", "-o", "JobID"], timeout)
    if rc is None:
        return False, out
    if rc != 0:
        return False, f"sacct failed (rc={rc}, no accounting/slurmdbd?): {out[-300:]}; {_HINT}"
    return True, ""
