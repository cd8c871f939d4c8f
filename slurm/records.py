"""What a run folder records about its jobs, under ``<run>/slurm/``.

``jobs.jsonl``: one JSON object per submission (job id, executor, tasks, log folder, command line, ...);
a sweep's root folder records the whole array there too, with ``elements`` (the run folders).
``events.jsonl``: the starts and ends of the training, written by rank 0 of the job.
``logs/<job id>/``: submitit's pickles and logs.
"""
from __future__ import annotations

import datetime
import json
from pathlib import Path

from jit_core import durable


def log_folder(root: str | Path) -> Path:
    """submitit's folder for the jobs submitted from ``root`` (``%j``: the job id)."""
    return Path(root) / "slurm" / "logs" / "%j"


def append_job(run_dir: str | Path, record: dict) -> None:
    _append_jsonl(Path(run_dir) / "slurm" / "jobs.jsonl", record)


def append_event(run_dir: str | Path, record: dict) -> None:
    _append_jsonl(Path(run_dir) / "slurm" / "events.jsonl", record)


def read_jobs(run_dir: str | Path) -> list[dict]:
    return _read_jsonl(Path(run_dir) / "slurm" / "jobs.jsonl")


def read_events(run_dir: str | Path) -> list[dict]:
    return _read_jsonl(Path(run_dir) / "slurm" / "events.jsonl")


def now() -> str:
    """The local time with its UTC offset, to the second, as the records write it."""
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _append_jsonl(path: Path, record: dict) -> None:
    durable.ensure_dir(path.parent)
    durable.append_text(path, json.dumps(record, sort_keys=True) + "\n", fsync=True)   # never through a link


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
