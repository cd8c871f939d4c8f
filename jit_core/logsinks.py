"""Log sinks: where a run's records go besides ``metrics.jsonl`` (TensorBoard, W&B, a plugin's MLflow, ...).

A sink is any object with the methods of :class:`LogSink` (subclass it to inherit no-op defaults);
plugins return sinks from the ``jit_log_sinks(config, run_dir)`` hook. The core opens them on rank 0
only and sends every record through one :class:`LogSinks` fan-out:

- ``log_config(config)``: the resolved config (a nested dict, as in ``config.json``) once per start;
- ``log_scalars(step, scalars)``: each ``metrics.jsonl`` line (``loss``, ``loss/<term>``, ``lr``, ...);
- ``log_image(step, tag, image)``: each sample grid the trainer saves (``uint8`` array ``(H, W, C)``);
- ``log_result(record)``: each evaluation record as written to ``eval/<name>.json`` (see
  :func:`result_scalars` for its numbers);
- ``close()``: at the end of the training or evaluation process (also after an error).

``metrics.jsonl`` stays the source of truth: it is written first. A resumed run replays the steps
between its checkpoint and the last logged line bit for bit (``metrics.jsonl`` is rolled back to the
checkpoint first, so it logs them once); the fan-out does not send those steps to
the sinks a second time, so a tracker sees each step once. A sink that raises while logging is
reported once and dropped for the rest of the process; training goes on.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger("jit")


class LogSink:
    """The sink interface with no-op defaults: override what your tracker records."""

    def log_config(self, config: dict) -> None:
        pass

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        pass

    def log_image(self, step: int, tag: str, image) -> None:
        pass

    def log_result(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


def result_scalars(record: dict) -> tuple[int, dict[str, float]]:
    """``(step, {tag: value})`` of an evaluation record (a cfg sweep or EMA x CFG grid: every member's numbers).

    Tags are ``eval/<weights>-cfg<scale>/<metric>`` (e.g. ``eval/ema1-cfg2.9/fid``); the step is
    the evaluated checkpoint's.
    """
    members = record.get("results") if record.get("kind") in ("cfg_sweep", "ema_cfg_grid") else [record]
    step, out = 0, {}
    for r in members or []:
        ck, cfg = r.get("checkpoint") or {}, (r.get("guidance") or {}).get("cfg")
        step = int(ck.get("step") or step)
        for metric, value in (r.get("metrics") or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[f"eval/{ck.get('weights', 'ema1')}-cfg{cfg:g}/{metric}" if cfg is not None
                    else f"eval/{metric}"] = float(value)
    return step, out


class LogSinks:
    """Every open sink of a process, called in turn; ``logged_until``: steps already logged (not resent)."""

    def __init__(self, sinks: Iterable[tuple[str, Any]] = (), logged_until: int = -1):
        self.sinks = list(sinks)          # (plugin name, sink)
        self.logged_until = logged_until

    def __bool__(self) -> bool:
        return bool(self.sinks)

    def __enter__(self) -> LogSinks:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _each(self, method: str, *args) -> None:
        for name, sink in list(self.sinks):
            try:
                getattr(sink, method)(*args)
            except Exception as e:  # noqa: BLE001 -- a tracker failure must not stop training
                log.warning("log sink %s of plugin %r failed in %s (%s: %s); it is off for the rest of this run "
                            "(metrics.jsonl is complete)", type(sink).__name__, name, method, type(e).__name__, e)
                self.sinks.remove((name, sink))
                try:
                    sink.close()
                except Exception:  # noqa: BLE001
                    pass

    def log_config(self, config: dict) -> None:
        self._each("log_config", config)

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        if step > self.logged_until:
            self._each("log_scalars", step, {k: v for k, v in scalars.items() if k != "step"})

    def log_image(self, step: int, tag: str, image) -> None:
        if step > self.logged_until:
            self._each("log_image", step, tag, image)

    def log_result(self, record: dict) -> None:
        self._each("log_result", record)

    def close(self) -> None:
        for name, sink in self.sinks:
            try:
                sink.close()
            except Exception as e:  # noqa: BLE001
                log.warning("log sink %s of plugin %r failed to close: %s", type(sink).__name__, name, e)
        self.sinks = []
