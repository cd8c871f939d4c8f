"""Result files are untrusted input: the types a saved evaluation record must have before anything reads it.

A record that fails is refused in one line naming the file and the fix (re-evaluate), never half-used:
a metric that is not a number would otherwise be dropped from a comparison without a word, or end a grid
re-run in a traceback.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from jit_core.config import ConfigError

# the metrics a record holds as numbers (the rest of "metrics" are labels and notes)
NUMERIC_METRICS = ("fid", "inception_score", "precision", "recall", "fd_classifier", "fd_classifier_real_train",
                   "classifier_accuracy")
SECTIONS = ("checkpoint", "model", "training", "sampler", "guidance", "samples", "selection", "intervals")


class ResultFileError(ConfigError):
    """A result file that is not what ``jit evaluate`` writes; the message names the file and the fix."""


def _fix(path: Path) -> str:
    return f"delete {path} and evaluate the run again (jit evaluate RUN ...)"


def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def read_record(path: Path) -> object:
    """The JSON value of a result file; :class:`ResultFileError` if it is not valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        reason = "nested too deeply" if isinstance(e, RecursionError) else f"not valid JSON ({e})"
        raise ResultFileError(f"result file {path} is {reason}: {_fix(path)}") from None


def check_record(rec: dict, path: Path) -> dict:
    """``rec`` if its metrics (:data:`NUMERIC_METRICS`) are numbers (or null) and its sections are objects;
    else :class:`ResultFileError`."""
    metrics = rec.get("metrics")
    if not isinstance(metrics, dict):
        raise ResultFileError(f"result file {path}: 'metrics' is a {type(metrics).__name__}, not an object: "
                              f"{_fix(path)}")
    for key in NUMERIC_METRICS:
        value = metrics.get(key)
        if value is not None and not is_number(value):
            raise ResultFileError(f"result file {path}: metric {key!r} is {value!r}, not a finite number: "
                                  f"{_fix(path)}")
    for key in SECTIONS:
        if rec.get(key) is not None and not isinstance(rec[key], dict):
            raise ResultFileError(f"result file {path}: {key!r} is a {type(rec[key]).__name__}, not an object: "
                                  f"{_fix(path)}")
    return rec
