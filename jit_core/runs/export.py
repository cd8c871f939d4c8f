"""``jit export RUN OUT.pth``: a run's newest verified checkpoint in the official JiT / V-Co ``.pth`` layout.

The inverse of ``jit convert``: ``model``, ``ema1`` and ``ema2`` become the official ``model``,
``model_ema1`` and ``model_ema2`` (:func:`jit_core.official.layout.export_official`; the optimizer is not
exported), so the official code (and ``jit convert``) reads the file. An existing OUT is never replaced
unless asked (``--force``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jit_core.official.layout import export_official
from jit_core.runs.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint


@dataclass(frozen=True)
class Exported:
    path: Path
    checkpoint: Path
    step: int
    epoch: int


def export_run(run_dir: str | Path, out: str | Path, checkpoint: str | Path | None = None,
               force: bool = False) -> Exported:
    """Write ``run_dir``'s newest verified checkpoint (or ``checkpoint``) to ``out`` in the official layout."""
    run_dir, out = Path(run_dir), Path(out)
    found = Path(checkpoint) if checkpoint else latest_checkpoint(run_dir)
    if found is None:
        raise CheckpointError(f"{run_dir} has no complete checkpoint to export (train it first: jit train --resume "
                              f"{run_dir})")
    if out.is_dir():
        raise CheckpointError(f"{out} is a folder: name the file to write, e.g. {out / 'checkpoint-last.pth'}")
    if out.exists() and not force:
        raise CheckpointError(f"{out} exists; choose another name or pass --force to replace it")
    weights, state = load_checkpoint(found)
    epoch = int(float(state.get("epoch", 0) or 0))
    export_official(weights, out, epoch=epoch)
    return Exported(out, found, int(state.get("step", 0)), epoch)


def export_command():
    """The ``jit export`` click command."""
    import click

    @click.command("export")
    @click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
    @click.argument("out", type=click.Path(path_type=Path))
    @click.option("--checkpoint", type=click.Path(exists=True, file_okay=False, path_type=Path),
                  help="Export this checkpoint folder (RUN/checkpoints/step-...) instead of the newest.")
    @click.option("--force", is_flag=True, help="Replace OUT if it exists.")
    def export(run_dir: Path, out: Path, checkpoint: Path | None, force: bool):
        """Write a run's checkpoint as an official JiT / V-Co checkpoint-last.pth (model, EMA1, EMA2).

        The official code loads it, and so does `jit convert OUT.pth RUN2` (a round trip gives identical
        weights)."""
        done = export_run(run_dir, out, checkpoint, force)
        click.echo(f"exported {done.checkpoint} (step {done.step}, epoch {done.epoch}) -> {done.path} "
                   "(official layout: model, model_ema1, model_ema2)")

    return export
