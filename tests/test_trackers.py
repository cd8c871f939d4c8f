"""Experiment trackers behind ``jit_log_sinks``: TensorBoard event files and an offline W&B run, read back with
the trackers' own readers; a resumed run continues the same tracker run without sending a step twice; a
switched-on tracker whose package is missing is a one-line start-up error (``--dry-run`` too)."""
from __future__ import annotations

import json
import shutil
import struct
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from jit_core import cli as jit_cli
from jit_core.config import ConfigError, load_config
from jit_core.logsinks import LogSink, result_scalars
from jit_core.training import Trainer

from . import fault_tools as ft

SCALARS = {"loss", "loss/pixel", "lr", "grad_norm", "img_per_s", "epoch", "time"}


def config(*overrides):
    """The ``test`` preset: 6 steps, a log line every 2, checkpoints at 3 and 6 (both kept), 1-step sampling."""
    return load_config("test", None, ["train.keep_every=3", "sample.steps=1", *overrides])


def jsonl_steps(run: Path) -> list[int]:
    return [m["step"] for m in ft.read_metrics(run)]


def tb_scalars(run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def crash_after_last_log(run: Path) -> None:
    """As if the process died after logging step 6 but before its checkpoint: only step 3's checkpoint is left."""
    shutil.rmtree(run / "checkpoints" / "step-00000006")
    (run / "checkpoints" / "latest").write_text("step-00000003")


# ----------------------------------------------------------------------------------- TensorBoard
def test_tensorboard_event_files_hold_every_log_line_the_grid_and_the_config(tmp_path):
    run = tmp_path / "run"
    ft.train_in_process(config("log.tensorboard=true"), run)
    acc = tb_scalars(run)
    tags = acc.Tags()
    assert SCALARS <= set(tags["scalars"]), tags["scalars"]
    logged = ft.read_metrics(run)
    assert [e.step for e in acc.Scalars("loss")] == [2, 4, 6] == jsonl_steps(run)
    assert [e.value for e in acc.Scalars("loss/pixel")] == pytest.approx([m["loss/pixel"] for m in logged], rel=1e-6)
    assert tags["images"] == ["samples"]
    (grid,) = acc.Images("samples")
    assert grid.step == 6 and grid.width > 32 and grid.encoded_image_string.startswith(b"\x89PNG")
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"model": "JiT-T/4"' in text


# ----------------------------------------------------------------------------------- W&B, offline
BLOCK, FULL, FIRST, MIDDLE, LAST = 32768, 1, 2, 3, 4


def wandb_records(path: Path) -> list:
    """The records of an offline ``.wandb`` file (W&B's LevelDB-style log of its own protobuf ``Record``s)."""
    from wandb.proto import wandb_internal_pb2 as pb
    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    pos, out, partial = 7, [], b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:               # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == FULL:
            out.append(chunk)
        elif kind == FIRST:
            partial = chunk
        elif kind == MIDDLE:
            partial += chunk
        elif kind == LAST:
            out.append(partial + chunk)
        else:
            break
    records = []
    for raw in out:
        rec = pb.Record()
        rec.ParseFromString(raw)
        records.append(rec)
    return records


def finished_records(path: Path, timeout: float = 60.0) -> list:
    """The records of a run file once W&B's service process has written its last one (``exit``)."""
    deadline = time.monotonic() + timeout
    while True:
        records = wandb_records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def wandb_history(files: list[Path]) -> tuple[list[int], list[str], dict]:
    """(steps of every history record, W&B run ids, config keys) of the offline run files, in order."""
    steps, ids, cfg = [], [], {}
    for f in files:
        for rec in finished_records(f):
            kind = rec.WhichOneof("record_type")
            if kind == "history":
                steps.append(rec.history.step.num)
                assert {i.key or "/".join(i.nested_key) for i in rec.history.item} >= {"loss", "lr"}
            elif kind == "run":
                ids.append(rec.run.run_id)
            elif kind == "config":
                cfg.update({i.key: json.loads(i.value_json) for i in rec.config.update})
    return steps, ids, cfg


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    return ["log.wandb=true", "log.wandb_mode=offline", "log.wandb_project=jit-test", "log.tensorboard=true"]


def test_wandb_offline_run_and_a_resume_continue_one_tracker_run_without_duplicate_steps(tmp_path, wandb_offline):
    run = tmp_path / "run"
    ft.train_in_process(config(*wandb_offline), run)
    run_id = json.loads((run / "wandb-run.json").read_text())["id"]
    (first,) = sorted((run / "wandb").glob("offline-run-*/run-*.wandb"))
    steps, ids, cfg = wandb_history([first])
    assert steps == [2, 4, 6] and ids == [run_id]
    assert cfg["model"] == "JiT-T/4" and cfg["log"]["wandb"] is True

    crash_after_last_log(run)
    trainer = Trainer(config(*wandb_offline, "train.max_steps=8"), run, progress=False)
    assert trainer.step == 3
    with ft.single_thread():
        trainer.fit()
    assert jsonl_steps(run) == [2, 4, 6, 8]       # rolled back to the checkpoint (3) on resume: each step once
    files = sorted((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2 and first in files
    steps, ids, _ = wandb_history(sorted(files, key=lambda f: f.parent.name))
    assert steps == [2, 4, 6, 8] and ids == [run_id, run_id]   # one W&B run (wandb sync appends), each step once
    assert [e.step for e in tb_scalars(run).Scalars("loss")] == [2, 4, 6, 8]
    assert [e.step for e in tb_scalars(run).Images("samples")] == [6, 8]


def test_a_damaged_wandb_id_file_is_refused(tmp_path, wandb_offline):
    run = tmp_path / "run"
    run.mkdir()
    (run / "wandb-run.json").write_text('{"id": "../../x"}')
    from jit_core.trackers.wandb import run_id
    with pytest.raises(ConfigError, match="does not hold a W&B run id"):
        run_id(run)


# ----------------------------------------------------------------------------------- missing packages
@pytest.mark.parametrize("switch", ["tensorboard", "wandb"])
def test_a_missing_tracker_package_is_one_line_at_start_up_and_in_dry_run(tmp_path, monkeypatch, switch):
    monkeypatch.setitem(sys.modules, switch, None)          # the package is not installed
    with pytest.raises(ConfigError) as err:
        Trainer(config(f"log.{switch}=true"), tmp_path / "run", progress=False)
    assert str(err.value) == (f"log.{switch}=true needs the {switch} package, which is not installed: "
                              f"pip install 'jit-vco[{switch}]' (or set log.{switch}=false)")
    assert not (tmp_path / "run").exists()
    res = CliRunner().invoke(jit_cli.cli, ["train", "--preset", "test", "--run-dir", str(tmp_path / "dry"),
                                           "--dry-run", f"log.{switch}=true"])
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code != 0 and lines[-1] == f"Error: {err.value}", res.output


# ----------------------------------------------------------------------------------- a plugin's own sink
class ListSink(LogSink):
    def __init__(self):
        self.events = []

    def log_config(self, config):
        self.events.append(("config", config["model"]))

    def log_scalars(self, step, scalars):
        self.events.append(("scalars", step, sorted(scalars)))

    def log_image(self, step, tag, image):
        self.events.append(("image", step, tag, image.dtype.name, image.ndim))

    def log_result(self, record):
        self.events.append(("result", result_scalars(record)))


def test_a_plugin_sink_gets_every_record_and_a_failing_sink_does_not_stop_training(tmp_path, jit_recorder):
    good = ListSink()

    class Broken(LogSink):
        def log_scalars(self, step, scalars):
            raise OSError("tracker server went away")

    jit_recorder.returns["jit_log_sinks"] = [good, Broken()]
    result = ft.train_in_process(config(), tmp_path / "run", extra_plugins=[jit_recorder])
    assert result.status == "finished" and jsonl_steps(tmp_path / "run") == [2, 4, 6]
    (call,) = jit_recorder.calls_of("jit_log_sinks")
    assert call.kwargs["run_dir"] == tmp_path / "run"
    assert good.events[0] == ("config", "JiT-T/4")
    assert [e[1] for e in good.events if e[0] == "scalars"] == [2, 4, 6]
    assert good.events[1][2] == sorted(SCALARS)
    assert good.events[-1] == ("image", 6, "samples", "uint8", 3)


def test_result_scalars_of_a_record_and_a_sweep():
    one = {"metrics": {"fid": 3.5, "precision": 0.7}, "checkpoint": {"step": 40, "weights": "ema1"},
           "guidance": {"cfg": 2.9}}
    assert result_scalars(one) == (40, {"eval/ema1-cfg2.9/fid": 3.5, "eval/ema1-cfg2.9/precision": 0.7})
    other = {**one, "guidance": {"cfg": 1.0}, "metrics": {"fid": 9.0}}
    sweep = {"kind": "cfg_sweep", "results": [one, other], "best": one}
    assert result_scalars(sweep)[1] == {"eval/ema1-cfg2.9/fid": 3.5, "eval/ema1-cfg2.9/precision": 0.7,
                                        "eval/ema1-cfg1/fid": 9.0}


# ----------------------------------------------------------------------------------- evaluation results
def test_jit_evaluate_sends_its_result_to_the_run_trackers(tmp_path):
    from jit_core.eval.evaluate import evaluate_run

    from .core.test_evaluate import make_run
    run = make_run(tmp_path / "run", overrides=["log.tensorboard=true"])
    result = evaluate_run(run, num_images=10, steps=1, batch_size=10, save="none", progress=False)
    assert result["metrics"]["fd_classifier"] > 0
    acc = tb_scalars(run)
    (point,) = acc.Scalars("eval/ema1-cfg1.5/fd_classifier")
    assert point.step == 6 and point.value == pytest.approx(result["metrics"]["fd_classifier"], rel=1e-6)


def test_trackers_may_be_switched_on_or_off_when_a_run_is_resumed():
    from jit_core.training.run_dir import config_diff
    saved = json.loads(config().to_json())
    del saved["log"]                                        # a run folder from before the log section
    assert config_diff(saved, json.loads(config("log.tensorboard=true", "log.wandb_name=x").to_json())) == []
    assert config_diff(saved, json.loads(config("optim.lr=0.5").to_json())) != []
