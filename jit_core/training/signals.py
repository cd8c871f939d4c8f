"""Stop requests (SIGTERM, SLURM's SIGUSR1/2): the step finishes, a checkpoint is written, the run exits."""
from __future__ import annotations

import logging
import signal
from collections.abc import Iterable

log = logging.getLogger("jit")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class StopSignals:
    """While active (``with``), the given signals set :attr:`requested` instead of killing the process."""

    def __init__(self, signals: Iterable[int] = STOP_SIGNALS):
        self.signals = tuple(signals)
        self.requested = False
        self._previous: dict = {}

    def _on_signal(self, signum, frame) -> None:
        self.requested = True
        log.warning("received %s: finishing the step, writing a checkpoint, exiting", signal.Signals(signum).name)

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
