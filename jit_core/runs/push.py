"""``jit push RUN hf://OWNER/REPO``: a run's newest checkpoint on the Hugging Face Hub, with a model card.

The files (:func:`stage`): ``checkpoint-last.pth`` (official layout, :mod:`jit_core.runs.export`),
``config.json`` (the run's config, without its local folder), ``jit-run.json`` (the step) and
``README.md`` (:mod:`jit_core.runs.modelcard`). ``api.load_run("hf://OWNER/REPO")`` reads them back
(:mod:`jit_core.runs.hubrun`); ``jit convert hf://OWNER/REPO/checkpoint-last.pth`` imports the weights.
Offline, ``--stage DIR`` writes the same files for a later upload.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from jit_core.durable import ensure_dir, write_text
from jit_core.runs import hub
from jit_core.runs.checkpoint import CheckpointError, latest_checkpoint
from jit_core.runs.export import export_run
from jit_core.runs.modelcard import eval_rows, model_card

CHECKPOINT, CONFIG, RUN_INFO, CARD = "checkpoint-last.pth", "config.json", "jit-run.json", "README.md"
FORMAT = "jit-vco hub run v1"


def stage(run_dir: str | Path, folder: str | Path, repo: hub.HubRepo, trust_plugins=()) -> int:
    """Write the files to upload into ``folder`` (an empty or new folder); the exported step.

    ``trust_plugins``: module-path plugins the run's config names that may be imported (to count the
    parameters of their streams), as for every command that loads a run folder."""
    from jit_core.runs.loading import build_model_for, load_run_config
    run_dir, folder = Path(run_dir), Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise CheckpointError(f"--stage {folder}: the folder must be new or empty (nothing in it is replaced)")
    if latest_checkpoint(run_dir) is None:
        raise CheckpointError(f"{run_dir} has no complete checkpoint to push")
    config = load_run_config(run_dir, trust_plugins)
    ensure_dir(folder)
    done = export_run(run_dir, folder / CHECKPOINT)
    config.run_dir = None                               # a local path means nothing on the Hub
    write_text(folder / CONFIG, config.to_json())
    write_text(folder / RUN_INFO, json.dumps({"format": FORMAT, "step": done.step, "epoch": done.epoch}))
    model, _ = build_model_for(config, device="meta")
    card = model_card(config, repo.repo_id, done.step, model.num_params(), eval_rows(run_dir))
    write_text(folder / CARD, card)
    return done.step


def push(run_dir: str | Path, target: str, private: bool = False, trust_plugins=()) -> str:
    """Stage ``run_dir`` in a temporary folder and upload it to ``target``; the commit URL."""
    repo = hub.parse_repo(target)
    with tempfile.TemporaryDirectory(prefix="jit-push-") as tmp:
        step = stage(run_dir, Path(tmp) / "upload", repo, trust_plugins)
        return hub.upload(Path(tmp) / "upload", repo, f"jit push: {Path(run_dir).name} at step {step}", private)


def push_command():
    """The ``jit push`` click command."""
    import click

    from jit_core.clioptions import trust_options

    @click.command("push")
    @click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
    @click.argument("target", metavar="hf://OWNER/REPO")
    @click.option("--private", is_flag=True, help="Create the repository as private.")
    @click.option("--stage", "stage_dir", type=click.Path(file_okay=False, path_type=Path),
                  help="Write the files to upload into this new folder instead of uploading (offline).")
    @trust_options
    def push_cmd(run_dir: Path, target: str, private: bool, stage_dir: Path | None, trust_plugins):
        """Upload a run's newest checkpoint to the Hugging Face Hub with a generated model card.

        Uploads checkpoint-last.pth (official layout), config.json, jit-run.json and README.md; load it
        back with api.load_run("hf://OWNER/REPO")."""
        repo = hub.parse_repo(target)
        if stage_dir is not None:
            step = stage(run_dir, stage_dir, repo, trust_plugins)
            click.echo(f"staged step {step} of {run_dir} for {repo} in {stage_dir}: "
                       f"{', '.join(sorted(p.name for p in stage_dir.iterdir()))}")
            return
        url = push(run_dir, target, private, trust_plugins)
        click.echo(f"pushed {run_dir} to {repo}: {url}")

    return push_cmd
