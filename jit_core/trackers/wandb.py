"""``log.wandb=true``: a Weights & Biases run (``log.wandb_project``, ``_entity``, ``_name``, ``_mode``).

The W&B run id is kept in ``<run>/wandb-run.json``: a resumed run, and ``jit evaluate`` of the run,
continue the same W&B run (``resume="allow"``). W&B's own files go to ``<run>/wandb/`` (or to
``WANDB_DIR`` when it is set). Offline mode (``log.wandb_mode=offline``) writes them for ``wandb sync``.
Scalars are logged at their training step, sample grids as images, the config as the run's config,
evaluation numbers into the run's summary (``eval/<weights>-cfg<scale>/<metric>``).
"""
from __future__ import annotations

import json
import os
import re
import secrets
import string
from pathlib import Path

from jit_core.config import ConfigError
from jit_core.hookspecs import hookimpl
from jit_core.logsinks import LogSink, result_scalars

ID_FILE = "wandb-run.json"
_ID = re.compile(r"[a-z0-9]{1,64}")


def run_id(run_dir: Path) -> str:
    """The run folder's W&B run id: the saved one (checked: the folder is untrusted input), else a new one, saved."""
    path = Path(run_dir) / ID_FILE
    if path.is_file():
        try:
            saved = json.loads(path.read_text()).get("id")
        except (ValueError, AttributeError, UnicodeDecodeError):
            saved = None
        if not isinstance(saved, str) or not _ID.fullmatch(saved):
            raise ConfigError(f"{path} does not hold a W&B run id ({{\"id\": \"[a-z0-9]+\"}}): delete it to start a "
                              "new W&B run, or set log.wandb=false")
        return saved
    from jit_core.durable import write_json  # here: durable imports torch, the CLI's --help must not
    new = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))   # W&B's id form
    write_json(path, {"id": new}, indent=None)
    return new


class WandbSink(LogSink):
    def __init__(self, config, run_dir: Path):
        import wandb
        self.wandb = wandb
        opts = config.log
        self.run = wandb.init(project=opts.wandb_project, entity=opts.wandb_entity, name=opts.wandb_name or Path(run_dir).name,
                              id=run_id(run_dir), resume="allow", mode=opts.wandb_mode,
                              dir=None if os.environ.get("WANDB_DIR") else str(run_dir),
                              settings=wandb.Settings(console="off"))

    def log_config(self, config: dict) -> None:
        self.run.config.update(config, allow_val_change=True)

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log(dict(scalars), step=step)

    def log_image(self, step: int, tag: str, image) -> None:
        self.run.log({tag: self.wandb.Image(image)}, step=step)

    def log_result(self, record: dict) -> None:
        self.run.summary.update(result_scalars(record)[1])

    def close(self) -> None:
        self.run.finish()


@hookimpl
def jit_log_sinks(config, run_dir):
    return WandbSink(config, run_dir) if config.log.wandb else None
