"""One trainer per run folder: an exclusive ``flock`` on ``<run>/.lock``, held while a trainer runs.

The kernel drops a ``flock`` when its holder exits, however it exits (kill -9 included), so a lock file
left behind is never "stale": the next trainer simply gets the lock. The holder writes its PID, host,
start time (and SLURM job id) into the file, so that a refused trainer can name it.

A SLURM requeue starts the same job id again, possibly while the previous attempt is still being torn
down: a trainer that finds the lock held by an earlier attempt of its own job waits for it
(:data:`REQUEUE_WAIT_S`) instead of refusing at once. On a file system without locks (some Lustre or
NFS mounts) training goes on unlocked, with a warning.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

from jit_core.config import ConfigError
from jit_core.durable import ensure_dir, open_lock_file, writing

log = logging.getLogger("jit")

LOCK_NAME = ".lock"
REQUEUE_WAIT_S = 120.0      # how long a requeued SLURM job waits for its previous attempt to let go
_NO_LOCKS = (errno.ENOLCK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS)


class RunLockedError(ConfigError):
    """Another trainer holds the run folder; the message names its PID and host."""


def _holder_info() -> dict:
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if os.environ.get("SLURM_JOB_ID"):
        info["slurm_job_id"] = os.environ["SLURM_JOB_ID"]
    return info


def read_holder(run_dir) -> dict:
    """What the lock file says about its (last) holder; {} if nothing readable. Untrusted text: parsed as JSON only."""
    path = Path(run_dir) / LOCK_NAME
    if path.is_symlink():
        return {}
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read(4096).decode(errors="replace") or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def describe_holder(holder: dict) -> str:
    if not holder:
        return "a trainer that has not written its name yet"
    parts = [f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"]
    if holder.get("slurm_job_id"):
        parts.append(f"SLURM job {holder['slurm_job_id']}")
    if holder.get("started"):
        parts.append(f"since {holder['started']}")
    return ", ".join(str(p) for p in parts)


class RunLock:
    """``acquire()`` takes ``<run>/.lock`` (creating the folder) or raises :class:`RunLockedError`; ``release()``."""

    def __init__(self, run_dir):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._file = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def acquire(self) -> RunLock:
        if self._file is not None:
            return self
        ensure_dir(self.run_dir)
        # kept open while the lock is held; opened without emptying (the holder's text stays for a refused trainer)
        # and never through a link (a planted .lock link must not empty its target or create a file elsewhere)
        f = open_lock_file(self.path)
        deadline = None
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = read_holder(self.run_dir)
                mine = os.environ.get("SLURM_JOB_ID")
                if deadline is None and mine and str(holder.get("slurm_job_id")) == mine:
                    deadline = time.monotonic() + REQUEUE_WAIT_S   # an earlier attempt of this job, going away
                    log.warning("run folder %s is held by an earlier attempt of SLURM job %s; waiting up to %.0f s",
                                self.run_dir, mine, REQUEUE_WAIT_S)
                if deadline is None or time.monotonic() > deadline:
                    f.close()
                    raise RunLockedError(
                        f"run folder {self.run_dir} is in use by another trainer ({describe_holder(holder)}): "
                        "wait for it to finish or stop it, or train into another --run-dir") from None
                time.sleep(0.5)
            except OSError as e:
                if e.errno not in _NO_LOCKS:
                    f.close()
                    raise
                f.close()
                log.warning("the file system of %s does not support file locks (%s): training without the run folder "
                            "lock; make sure no other trainer uses this folder", self.run_dir, os.strerror(e.errno))
                return self
        try:
            with writing(self.path):
                f.seek(0)
                f.truncate()
                f.write(json.dumps(_holder_info()) + "\n")
                f.flush()
        except BaseException:
            f.close()
            raise
        self._file = f
        return self

    def release(self) -> None:
        """Let go (idempotent). The holder's text is cleared first; closing the file drops the lock."""
        f, self._file = self._file, None
        if f is None:
            return
        with contextlib.suppress(OSError):
            f.seek(0)
            f.truncate()
        f.close()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
