"""What a study's lanes are doing, as the one-line heartbeat ``jit study`` prints while its children run.

Each running element is either training (its step and ETA, read from the child's ``metrics.jsonl``: the
children write there anyway, so no pipe is needed) or evaluating (for how long)::

    study vco-tiny-pair: 2 of 6 done, 4:10 elapsed | JiT/seed-1 training step 90/150, ETA 0:00:41 | ...
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from jit_core.progress import format_duration, last_logged_step

from .spec import Element


@dataclass
class _Running:
    element: Element
    phase: str
    since: float
    first_step: int | None


class LaneStatus:
    """Thread-safe record of the running elements; :meth:`line` is the heartbeat."""

    def __init__(self, study: str, total: int, done: int):
        self.study, self.total, self.done = study, total, done
        self.started = time.monotonic()
        self._running: dict[str, _Running] = {}
        self._lock = threading.Lock()

    def phase(self, element: Element, phase: str) -> None:
        """``element`` entered ``phase`` (``training`` or ``evaluating``)."""
        step = last_logged_step(element.run_dir / "metrics.jsonl") if phase == "training" else None
        with self._lock:
            self._running[element.label] = _Running(element, phase, time.monotonic(), step)

    def finished(self, element: Element) -> None:
        with self._lock:
            self.done += 1

    def dropped(self, element: Element) -> None:
        with self._lock:
            self._running.pop(element.label, None)

    def _describe(self, run: _Running, now: float) -> str:
        if run.phase != "training":
            return f"{run.element.label} {run.phase} for {format_duration(now - run.since)}"
        step = last_logged_step(run.element.run_dir / "metrics.jsonl")
        total = (run.element.config.get("train") or {}).get("max_steps")
        if step is None:
            return f"{run.element.label} starting ({format_duration(now - run.since)})"
        text = f"{run.element.label} training step {step}" + (f"/{total}" if total else "")
        done = step - (run.first_step or 0)
        if total and done > 0:
            text += f", ETA {format_duration((total - step) * (now - run.since) / done)}"
        return text

    def line(self) -> str:
        now = time.monotonic()
        with self._lock:
            running = list(self._running.values())
            head = f"study {self.study}: {self.done} of {self.total} done, {format_duration(now - self.started)} elapsed"
        return " | ".join([head, *(self._describe(r, now) for r in running)])
