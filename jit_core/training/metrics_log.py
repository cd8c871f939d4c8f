"""``metrics.jsonl``: the means of every logged quantity since the last log line, one JSON object per line.

Each line is then sent to the log sinks (:mod:`jit_core.logsinks`: TensorBoard, W&B, plugins' trackers).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from jit_core.distributed import DistInfo, all_reduce_mean
from jit_core.durable import append_text, refuse_link, replace_durably
from jit_core.logsinks import LogSinks


def last_step(path: Path) -> int:
    """The highest step in a ``metrics.jsonl`` (-1 if none): what the log sinks were sent before a resume."""
    best = -1
    if Path(path).is_file():
        for line in Path(path).read_text().splitlines():
            try:
                step = json.loads(line).get("step")
            except (ValueError, AttributeError, RecursionError):   # a damaged or crafted line: not a step
                continue
            if isinstance(step, int):
                best = max(best, step)
    return best


class MetricsLog:
    """Accumulates a step's outputs; :meth:`write` averages them (across ranks too), appends a line and sends it
    to ``sinks`` (rank 0)."""

    def __init__(self, path: Path, dist: DistInfo, sinks: LogSinks | None = None):
        self.path, self.dist, self.sinks = path, dist, sinks or LogSinks()
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}   # per key: some values (grad_norm under train.grad_norm=log) skip steps
        self.count = 0
        self.last_write = time.time()

    def add(self, out: dict) -> None:
        for k, v in out.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
            self.counts[k] = self.counts.get(k, 0) + 1
        self.count += 1

    def write(self, step: int, epoch: float, elapsed: float, global_batch: int) -> dict[str, float]:
        sums, count = self.sums, self.count
        counts = self.counts
        means = all_reduce_mean({k: v / counts[k] for k, v in sums.items() if k != "lr"}, self.dist)
        means["lr"] = sums["lr"] / counts["lr"]
        now = time.time()
        means.update(step=step, epoch=epoch, time=elapsed,
                     img_per_s=count * global_batch / max(now - self.last_write, 1e-9))
        if self.dist.is_main:
            append_text(self.path, json.dumps(means) + "\n")   # never through a link planted in its place
            self.sinks.log_scalars(step, means)
        self.sums, self.counts, self.count, self.last_write = {}, {}, 0, time.time()
        return means


def roll_back(path: Path, step: int) -> int:
    """Drop the lines of ``metrics.jsonl`` logged after ``step`` (and any unreadable line, e.g. one cut by a kill),
    by rename: a resumed run logs the steps it trains again once. Returns the number of lines dropped."""
    refuse_link(path)    # neither read through nor replaced: a link in its place is not this run's log
    try:
        lines = path.read_bytes().splitlines(keepends=True)
    except FileNotFoundError:
        return 0
    keep = []
    for line in lines:
        try:
            row = json.loads(line)
            ok = isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step
        except (ValueError, RecursionError):
            ok = False
        if ok:
            keep.append(line if line.endswith(b"\n") else line + b"\n")
    if len(keep) == len(lines) and all(a == b for a, b in zip(keep, lines)):
        return 0
    replace_durably(path, lambda sink: sink.write(b"".join(keep)))
    return len(lines) - len(keep)
