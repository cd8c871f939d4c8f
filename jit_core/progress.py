"""Progress that suits the terminal it writes to.

On a TTY: a live tqdm bar, with ``logging`` routed through it (a log line never tears the bar). On a file
or a pipe (a SLURM log, ``> log``): no ``\\r`` frames, but one plain line per report -- when the caller
says a step was logged (:meth:`Progress.report`, e.g. every ``train.log_every`` steps) or, for loops
without such a point, every ``every_steps`` updates or ``every_s`` seconds -- with the count, the
caller's fields (loss, ...), the rate and the ETA::

    tiny-run: step 10/30 (33%)  loss 0.4213  lr 1.00e-04  | 63.1 img/s  elapsed 0:00:05  ETA 0:00:10

:func:`heartbeat` is the same plain line for long waits that have no count (children's progress, a
queued job): one line every ``every_s`` seconds.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

DEFAULT_EVERY_S = 30.0


def is_tty(stream: IO | None) -> bool:
    """Whether ``stream`` is an interactive terminal (``JIT_PROGRESS=plain|bar`` forces the choice)."""
    forced = os.environ.get("JIT_PROGRESS", "").lower()
    if forced in ("plain", "bar"):
        return forced == "bar"
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):
        return False


def format_duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _field(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class Progress:
    """A counter toward ``total`` shown as a bar (TTY) or as plain lines (file, pipe). Use as a context manager.

    ``unit``: what is counted (``step``, ``img``, ``batch``); ``rate_unit`` / ``rate_scale``: the rate
    shown (e.g. ``img`` at ``batch size`` images per step). Plain lines come from :meth:`report` and,
    unless ``every_steps`` is 0, every ``every_steps`` updates; and after ``every_s`` seconds without one.
    """

    def __init__(self, total: int | None, desc: str = "", unit: str = "it", initial: int = 0,
                 stream: IO | None = None, enabled: bool = True, every_steps: int = 0,
                 every_s: float | None = DEFAULT_EVERY_S, rate_unit: str | None = None, rate_scale: float = 1.0,
                 leave: bool = True):
        self.total, self.desc, self.unit, self.n, self.initial = total, desc, unit, initial, initial
        self.stream = stream if stream is not None else sys.stderr
        self.enabled, self.every_steps, self.every_s = enabled, every_steps, every_s
        self.rate_unit, self.rate_scale = rate_unit or f"{unit}", rate_scale
        self.fields: dict[str, Any] = {}
        self._last_n: int | None = None
        self.started = self.last_line = time.monotonic()
        self.bar = None
        self._redirect = contextlib.ExitStack()
        if enabled and is_tty(self.stream):
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True,
                            file=self.stream, leave=leave)
            self._redirect.enter_context(logging_redirect_tqdm())

    # -- the plain line
    def line(self) -> str:
        count = f"{self.unit} {self.n}" + (f"/{self.total}" if self.total else "")
        if self.total:
            count += f" ({100 * self.n / self.total:.0f}%)"
        elapsed = time.monotonic() - self.started
        done = self.n - self.initial
        rate = done / elapsed if elapsed > 0 and done > 0 else None
        eta = (self.total - self.n) / rate if rate and self.total else None
        fields = "  ".join(f"{k} {_field(v)}" for k, v in self.fields.items())
        speed = f"{rate * self.rate_scale:.1f} {self.rate_unit}/s  " if rate else ""
        head = f"{self.desc}: " if self.desc else ""
        return (f"{head}{count}" + (f"  {fields}" if fields else "") +
                f"  | {speed}elapsed {format_duration(elapsed)}" + (f"  ETA {format_duration(eta)}" if self.total else ""))

    def _emit(self) -> None:
        self.last_line, self._last_n = time.monotonic(), self.n
        print(self.line(), file=self.stream, flush=True)

    # -- the tqdm-like interface
    def update(self, n: int = 1) -> None:
        self.n += n
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n)
        elif (self.every_steps and self.n % self.every_steps == 0) or \
                (self.every_s is not None and time.monotonic() - self.last_line >= self.every_s):
            self._emit()

    def set_fields(self, **fields: Any) -> None:
        """Values shown with the count (``loss=0.42``); on a TTY in the bar's postfix."""
        self.fields.update(fields)
        if self.bar is not None:
            self.bar.set_postfix({k: _field(v) for k, v in self.fields.items()}, refresh=False)

    def report(self, **fields: Any) -> None:
        """A reporting point (e.g. a logged step): set ``fields``; in plain mode, write the line now."""
        self.set_fields(**fields)
        if self.enabled and self.bar is None:
            self._emit()

    def write(self, message: str) -> None:
        """A message that does not tear the bar."""
        if self.bar is not None:
            self.bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def close(self, final_line: bool = False) -> None:
        """End the bar; in plain mode, ``final_line`` writes the last count unless the last line showed it."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.enabled and final_line and self.n != self._last_n:
            self._emit()
        self._redirect.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def track(iterable: Iterable, total: int | None = None, desc: str = "", unit: str = "it", enabled: bool = True,
          **kwargs: Any) -> Iterator:
    """``for x in track(items, desc=...)``: :class:`Progress` over an iterable, with a final plain line."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    progress = Progress(total, desc, unit, enabled=enabled, **kwargs)
    try:
        for item in iterable:
            yield item
            progress.update(1)
    finally:
        progress.close(final_line=True)


@contextlib.contextmanager
def heartbeat(describe, every_s: float = DEFAULT_EVERY_S, emit=None, enabled: bool = True):
    """While the block runs, pass ``describe()`` (a one-line status) to ``emit`` (default: a line on stderr)
    every ``every_s`` seconds from a background thread, so a long wait is never silent. ``describe``
    returning '' skips that beat."""
    import threading
    stop = threading.Event()
    emit = emit or (lambda text: print(text, file=sys.stderr, flush=True))

    def beat():
        while not stop.wait(every_s):
            try:
                text = describe()
            except Exception as exc:  # noqa: BLE001 -- a status line must not kill the command it reports on
                text = f"(status unavailable: {type(exc).__name__}: {exc})"
            if text:
                emit(text)

    thread = threading.Thread(target=beat, name="jit-heartbeat", daemon=True)
    if enabled:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        if enabled:
            thread.join(timeout=5)


def last_logged_step(metrics_file: str | os.PathLike) -> int | None:
    """The ``step`` of the last complete line of a run's ``metrics.jsonl`` (read from its end), or None."""
    import json
    try:
        with open(metrics_file, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 8192))
            tail = f.read().decode(errors="replace")
    except OSError:
        return None
    for line in reversed(tail.splitlines()[1 if size > 8192 else 0:]):
        try:
            step = json.loads(line).get("step")
        except (ValueError, AttributeError):
            continue
        if isinstance(step, int) and not isinstance(step, bool):
            return step
    return None
