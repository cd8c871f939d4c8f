"""Stop requests (Ctrl-C, SIGTERM, SLURM's SIGUSR1/2): the step finishes, a checkpoint is written, the run exits.

A second Ctrl-C (SIGINT) while the first is being honoured aborts at once (``KeyboardInterrupt``); the
last complete checkpoint is what a resume starts from. A process started by ``jit study`` also stops that way
when the study is gone (:func:`stop_with_parent`).
"""
from __future__ import annotations

import logging
import signal
from collections.abc import Iterable
from typing import Optional

log = logging.getLogger("jit")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class StopSignals:
    """While active (``with``), the given signals set :attr:`requested` (and :attr:`signum`, the first one)
    instead of killing the process."""

    def __init__(self, signals: Iterable[int] = STOP_SIGNALS):
        self.signals = tuple(signals)
        self.requested = False
        self.signum: Optional[int] = None
        self._previous: dict = {}

    def _on_signal(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.requested:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt("second Ctrl-C")
        self.requested = True
        self.signum = self.signum or signum
        more = " (Ctrl-C again to abort at once)" if signum == signal.SIGINT else ""
        log.warning("received %s: finishing the step, writing a checkpoint, exiting%s", signal.Signals(signum).name, more)

    def __enter__(self) -> StopSignals:
        for sig in self.signals:
            try:
                self._previous[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


PARENT_ENV = "JIT_STUDY_PARENT_PID"   # set by a parent that owns this process (jit study's lanes)


def stop_with_parent(poll_s: float = 1.0) -> None:
    """If a parent that owns this process is named in ``$JIT_STUDY_PARENT_PID``, send ourselves SIGTERM once it is
    gone (the trainer then finishes its step, checkpoints and exits, as when SLURM stops it).

    A watch thread compares ``os.getppid()`` with that pid (an orphan is re-parented). Chosen over Linux's
    ``PR_SET_PDEATHSIG``, which fires when the parent's *thread* that started us ends, not the parent, and works
    on every POSIX system. The variable is removed from the environment, so our own children do not watch us.
    """
    import os
    import threading
    import time
    text = os.environ.pop(PARENT_ENV, "")
    if not text.isdigit():
        return
    parent = int(text)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        log.warning("the process that started this one (pid %d) is gone: stopping", parent)
        devnull = os.open(os.devnull, os.O_WRONLY)   # nobody reads our stdout any more: printing must not fail
        os.dup2(devnull, 1)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="stop-with-parent", daemon=True).start()
