"""``log.tensorboard=true``: TensorBoard event files in ``<run>/tb/`` (``torch.utils.tensorboard``).

Scalars under their ``metrics.jsonl`` names, sample grids as images, the config as text and as
hyper-parameters (the HParams tab), evaluation numbers as ``eval/<weights>-cfg<scale>/<metric>`` at the
evaluated step. A resumed run adds an event file to the same folder: TensorBoard shows one run.
"""
from __future__ import annotations

import json
from pathlib import Path

from jit_core.config import flatten
from jit_core.hookspecs import hookimpl
from jit_core.logsinks import LogSink, result_scalars

FOLDER = "tb"


class TensorBoardSink(LogSink):
    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        from jit_core.durable import ensure_dir  # here: durable imports torch, the CLI's --help must not
        # TensorBoard names its event files itself (host, pid, time); the folder at least is never a link
        self.writer = SummaryWriter(log_dir=str(ensure_dir(Path(run_dir) / FOLDER)))

    def log_config(self, config: dict) -> None:
        from torch.utils.tensorboard.summary import hparams
        self.writer.add_text("config", "    " + json.dumps(config, indent=2).replace("\n", "\n    "))
        # TensorBoard's hyper-parameters are scalars or text: a list or dict value is shown as its JSON
        flat = {k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v) for k, v in flatten(config).items()}
        file_writer = self.writer.file_writer
        assert file_writer is not None, "SummaryWriter opens its FileWriter in __init__"
        for summary in hparams(flat, {}):
            file_writer.add_summary(summary)
        self.writer.flush()

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def log_image(self, step: int, tag: str, image) -> None:
        self.writer.add_image(tag, image, step, dataformats="HWC")
        self.writer.flush()

    def log_result(self, record: dict) -> None:
        step, scalars = result_scalars(record)
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


@hookimpl
def jit_log_sinks(config, run_dir):
    return TensorBoardSink(run_dir) if config.log.tensorboard else None
