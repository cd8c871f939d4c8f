"""Loss curves of run folders, grouped into arms: per arm the mean over its runs (seeds) with the min-max band,
a marker for a run that logged one point, as PNG and PDF. What ``jit compare`` and ``jit study`` draw in their
reports, for any runs (the Python API's plot entry point calls this)."""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from jit_core.durable import ensure_dir
from jit_core.eval.figures import png_pdf_stem
from jit_core.eval.plots import plot_loss_bands
from jit_core.eval.report import read_log


def arm_logs(arms: Mapping[str, Sequence[str | os.PathLike]]) -> dict[str, list[list[dict]]]:
    """Each arm's runs' ``metrics.jsonl`` logs. A folder that is not a run folder is an error naming it."""
    logs: dict[str, list[list[dict]]] = {}
    for arm, folders in arms.items():
        if isinstance(folders, (str, os.PathLike)):
            raise TypeError(f"arm {arm!r}: give a list of run folders (its seeds), not one folder")
        if not folders:
            raise ValueError(f"arm {arm!r} has no runs")
        paths = [Path(folder) for folder in folders]
        for folder in paths:
            if not (folder / "config.json").is_file():
                raise FileNotFoundError(f"{folder} is not a run folder (no config.json); pass the folder given to "
                                        "train")
        logs[arm] = [read_log(folder) for folder in paths]
    return logs


def plot_run_losses(arms: Mapping[str, Sequence[str | os.PathLike]], path: str | Path,
                    x: str = "step") -> list[Path]:
    """The loss curves of ``arms`` (arm name -> its run folders, one per seed; an arm of one run is a plain
    curve) against ``x`` (``step`` or ``time``), written as PNG at ``path`` (``.png`` added when missing) and
    PDF beside it (the folder is made). Returns ``[png, pdf]``."""
    logs, stem = arm_logs(arms), png_pdf_stem(path)
    ensure_dir(stem.parent)
    return plot_loss_bands(logs, stem, x)
