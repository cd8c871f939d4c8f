"""One write path (``jit_core.durable``): every writer of the project, walked with a link planted in the place of
the file it writes (a link to a file outside the folder, and a dangling one). The link's target must stay
untouched, nothing may be created outside the folder, and the error must be one line. Then a real full disk and
a real read-only file system (small tmpfs mounts; skipped where mounting is not allowed).

To cover a new writer, add a :class:`Writer` to :data:`WRITERS` (the file it writes, relative to the folder it
is given, and a call of the real writing code)."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from jit_core import durable
from jit_core.durable import WriteError

PRECIOUS = b"precious: must never be overwritten, emptied or appended to\n"


# ----------------------------------------------------------------------------------- the writers
@dataclasses.dataclass(frozen=True)
class Writer:
    name: str
    plant: str                              # the file (or folder) it writes, relative to the folder it gets
    write: Callable[[Path], object]         # the real writing code, given that folder
    folder: bool = False                    # ``plant`` is a folder the writer creates and fills


def _config():
    from jit_core.config import get_preset
    return get_preset("test")


def _images(n=2):
    return torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8)


def _lock(d):
    from jit_core.runs.lock import RunLock
    RunLock(d).acquire().release()


def _config_json(d):
    from jit_core.training.run_dir import write_config
    write_config(_config(), d)


def _history(d):
    from jit_core.training.run_dir import record_changes
    cfg = _config()
    before = json.loads(cfg.to_json())
    before["optim"]["lr"] = 123.0
    record_changes(d, before, cfg, ("optim.lr",), step=1)


def _metrics_append(d):
    from jit_core.distributed import DistInfo
    from jit_core.training.metrics_log import MetricsLog
    log = MetricsLog(d / "metrics.jsonl", DistInfo())
    log.add({"loss": 1.0, "lr": 0.1})
    log.write(step=1, epoch=0.0, elapsed=1.0, global_batch=4)


def _metrics_roll_back(d):
    from jit_core.training.metrics_log import roll_back
    roll_back(d / "metrics.jsonl", 0)


def _checkpoint(d):
    from jit_core.runs.checkpoint import save_checkpoint
    save_checkpoint(d, 1, {"model": {"w": torch.zeros(2)}}, {"step": 1})


def _checkpoint_latest(d):
    (d / "checkpoints").mkdir(exist_ok=True)
    _checkpoint(d)


def _result(d):
    from jit_core.eval.results import save_record
    save_record(d / "eval", "point", {"name": "point", "json": str(d / "eval" / "point.json")}, d)


def _pngs(d):
    from jit_core.images import save_pngs
    save_pngs(_images(), d / "eval" / "point")


def _grid(d):
    from jit_core.images import save_grid
    save_grid(_images(), d / "samples" / "grid.png")


def _loss_curves(d):
    from jit_core.eval.figures import plot_losses
    plot_losses({"a": [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}]}, d / "loss_curves.png")


def _loss_bands(d):
    from jit_core.eval.plots import plot_loss_bands
    plot_loss_bands({"a": [[{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}]]}, d / "loss_curves")


def _forest(d):
    from jit_core.eval.plots import plot_forest
    row = {"arm": "b", "baseline": False, "verdicts": {"fd": {"diff": 1.0, "lo": 0.5, "hi": 1.5, "outside_noise": True}}}
    plot_forest({"rows": [row]}, "fd", "a", d / "forest")


def _cfg_figure(d):
    from jit_core.eval.plots import plot_metric_vs_cfg
    plot_metric_vs_cfg({"primary_metric": "fd", "emas": ["ema1"], "points": [
        {"ema": "ema1", "cfg": 1.0, "value": 2.0, "interval": [1.5, 2.5], "best": True}]}, d / "grid")


def _paper_table(d):
    from jit_core.eval.plots import write_table
    write_table(d / "arms", ["arm"], [["a"]])


def _panels(d):
    from jit_core.eval.figures import placeholder, side_by_side
    side_by_side([placeholder("a"), placeholder("b")], d / "samples.png")


def _report(d):
    with durable.staged(d / "report", last=("index.html",)) as stage:
        durable.write_text(stage / "metrics.md", "new")
        durable.write_text(stage / "index.html", "new")


def _study_done(d):
    from jit_core.study.local import write_done
    write_done(d, {"arm": "a", "seed": 0})


def _study_log(d):
    from jit_core.study import local
    children = [local.Children()] if hasattr(local, "Children") else []   # the lanes' process groups, where present
    local._run([sys.executable, "-c", "print('hi')"], d / "seed-0.train.log", dict(os.environ), "training", None,
               *children)


def _study_files(d):
    from jit_core.study import command
    command.durable.write_text(d / "study.md", "study")   # study_report's own call, without training 24 runs


def _wandb_id(d):
    from jit_core.trackers.wandb import run_id
    run_id(d)


def _converted_config(d):
    from jit_core.model import MODEL_CONFIGS
    from jit_core.runs.convert import _write_config_hint
    _write_config_hint(d, dataclasses.asdict(MODEL_CONFIGS["JiT-B/16"]) | {"image_size": 256}, [])


def _official_export(d):
    from jit_core.official.layout import export_official
    export_official({"model": {}}, d / "checkpoint-last.pth")


def _calibration(d):
    from vco_plugin.calibration import FeatureStats, save_stats
    save_stats(FeatureStats(var=torch.ones(2, 3), rms_factor=1.0), d / "stats.safetensors")


def _classifier_reference(d):
    from jit_core.eval.classifier import save_reference
    save_reference(d / "reference.npz", np.zeros(2), np.eye(2), 10, {150: 0.5})


def _tensorboard(d):
    from jit_core.trackers.tensorboard import TensorBoardSink
    pytest.importorskip("tensorboard")
    TensorBoardSink(d)


def _slurm_record(d):
    from slurm.records import _append_jsonl
    _append_jsonl(d / "jobs.jsonl", {"job": 1})


WRITERS = [
    Writer("run lock (.lock)", ".lock", _lock),
    Writer("config.json", "config.json", _config_json),
    Writer("history.jsonl", "history.jsonl", _history),
    Writer("metrics.jsonl (append)", "metrics.jsonl", _metrics_append),
    Writer("metrics.jsonl (roll back)", "metrics.jsonl", _metrics_roll_back),
    Writer("checkpoints folder", "checkpoints", _checkpoint, folder=True),
    Writer("checkpoints/latest", "checkpoints/latest", _checkpoint_latest),
    Writer("result json", "eval/point.json", _result),
    Writer("result folder", "eval", _result, folder=True),
    Writer("sample png", "eval/point/00000.png", _pngs),
    Writer("sample folder", "eval/point", _pngs, folder=True),
    Writer("sample grid", "samples/grid.png", _grid),
    Writer("samples folder", "samples", _grid, folder=True),
    Writer("loss curves figure", "loss_curves.png", _loss_curves),
    Writer("loss bands figure (PDF)", "loss_curves.pdf", _loss_bands),
    Writer("forest plot", "forest.png", _forest),
    Writer("forest plot (PDF)", "forest.pdf", _forest),
    Writer("metric-vs-CFG figure (PDF)", "grid.pdf", _cfg_figure),
    Writer("paper table (CSV)", "arms.csv", _paper_table),
    Writer("paper table (LaTeX)", "arms.tex", _paper_table),
    Writer("sample panels", "samples.png", _panels),
    Writer("report page", "report/index.html", _report),
    Writer("report table", "report/metrics.md", _report),
    Writer("study element record", "study-element.json", _study_done),
    Writer("study log", "seed-0.train.log", _study_log),
    Writer("study.md", "study.md", _study_files),
    Writer("W&B run id", "wandb-run.json", _wandb_id),
    Writer("converted config.json", "config.json", _converted_config),
    Writer("official export", "checkpoint-last.pth", _official_export),
    Writer("V-Co statistics", "stats.safetensors", _calibration),
    Writer("V-Co statistics summary", "stats.json", _calibration),
    Writer("SLURM job records", "jobs.jsonl", _slurm_record),
    Writer("classifier reference statistics", "reference.npz", _classifier_reference),
    Writer("TensorBoard folder", "tb", _tensorboard, folder=True),
]


def _tree(path: Path) -> dict:
    return {str(p.relative_to(path)): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
            for p in sorted(path.rglob("*"))}


@pytest.mark.parametrize("dangling", [False, True], ids=["link-to-a-file", "dangling-link"])
@pytest.mark.parametrize("writer", WRITERS, ids=[w.name for w in WRITERS])
def test_every_writer_refuses_a_link_in_the_place_of_its_file(tmp_path, writer, dangling, one_thread):
    folder, outside = tmp_path / "folder", tmp_path / "outside"
    outside.mkdir()
    target = outside / ("target-dir" if writer.folder else "target")
    if not dangling:
        if writer.folder:
            target.mkdir()
            (target / "kept").write_bytes(PRECIOUS)
        else:
            target.write_bytes(PRECIOUS)
    link = folder / writer.plant
    link.parent.mkdir(parents=True)
    link.symlink_to(target, target_is_directory=writer.folder)
    before = _tree(outside)
    with pytest.raises(Exception) as info:  # noqa: PT011 -- the writers raise their own types; the text is checked
        writer.write(folder)
    message = str(info.value)
    assert "\n" not in message.strip(), message
    assert "symbolic link" in message or "W&B run id" in message, message   # W&B reads its id file first
    assert _tree(outside) == before                  # the target untouched, nothing created outside the folder
    assert link.is_symlink()


# ----------------------------------------------------------------------------------- the primitives
PRIMITIVES = {
    "write_text": lambda p: durable.write_text(p, "x"),
    "write_json": lambda p: durable.write_json(p, {"a": 1}),
    "write_bytes": lambda p: durable.write_bytes(p, b"x"),
    "write_file": lambda p: durable.write_file(p, lambda s: s.write(b"x")),
    "save_image": lambda p: durable.save_image(p, Image.new("RGB", (2, 2))),
    "save_npz": lambda p: durable.save_npz(p, a=np.zeros(2)),
    "save_torch": lambda p: durable.save_torch(p, {"a": torch.zeros(2)}),
    "save_safetensors": lambda p: durable.save_safetensors(p, {"a": torch.zeros(2)}),
    "append_text": lambda p: durable.append_text(p, "x\n"),
    "open_append": lambda p: durable.open_append(p).close(),
    "open_lock_file": lambda p: durable.open_lock_file(p).close(),
}


@pytest.mark.parametrize("name", sorted(PRIMITIVES))
def test_every_primitive_refuses_links(tmp_path, name):
    target = tmp_path / "target"
    target.write_bytes(PRECIOUS)
    for link, points_to in ((tmp_path / "link", target), (tmp_path / "dangling", tmp_path / "nowhere")):
        link.symlink_to(points_to)
        with pytest.raises(WriteError, match="is a symbolic link: jit-vco never writes through a link"):
            PRIMITIVES[name](link)
    assert target.read_bytes() == PRECIOUS and not (tmp_path / "nowhere").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "link", "target"]   # no temporary file left


def test_replace_and_append_do_what_they_say(tmp_path):
    p = tmp_path / "f.json"
    durable.write_json(p, {"a": 1})
    durable.write_json(p, {"a": 2})
    assert json.loads(p.read_text()) == {"a": 2}
    durable.append_text(tmp_path / "log", "1\n")
    durable.append_text(tmp_path / "log", "2\n", fsync=True)
    assert (tmp_path / "log").read_text() == "1\n2\n"
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(WriteError, match="not a regular file"):
        durable.append_text(tmp_path / "fifo", "x")
    with pytest.raises(WriteError, match="is a folder"):
        durable.write_text(tmp_path, "x")
    for folder in (tmp_path / "log", tmp_path / "log" / "sub"):
        with pytest.raises(WriteError, match="exists and is not a folder"):
            durable.ensure_dir(folder)


def test_a_staged_set_is_published_whole_or_not_at_all(tmp_path):
    out = tmp_path / "report"
    with durable.staged(out, last=("index.html",)) as stage:
        durable.write_text(stage / "a.md", "old a")
        durable.write_text(stage / "index.html", "old page")
    with pytest.raises(RuntimeError, match="boom"), durable.staged(out) as stage:
        durable.write_text(stage / "a.md", "new a")
        raise RuntimeError("boom")
    (tmp_path / "elsewhere").write_text("precious")
    (out / "b.md").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(WriteError, match="symbolic link"), durable.staged(out) as stage:
        durable.write_text(stage / "a.md", "new a")
        durable.write_text(stage / "b.md", "new b")
    assert (out / "a.md").read_text() == "old a" and (out / "index.html").read_text() == "old page"
    assert (tmp_path / "elsewhere").read_text() == "precious"
    assert sorted(p.name for p in out.iterdir()) == ["a.md", "b.md", "index.html"]   # no staging folder left


def test_stored_paths_are_relative_to_the_run_folder(tmp_path, monkeypatch):
    from jit_core.eval.results import for_disk
    run = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    rec = {"json": "run/eval/x.json", "samples": {"path": str(run / "eval" / "x")}, "points": [{"json": "/else/y"}]}
    stored = for_disk(rec, run)
    assert stored == {"json": "eval/x.json", "samples": {"path": "eval/x"}, "points": [{"json": "/else/y"}]}
    assert rec["json"] == "run/eval/x.json"          # the in-memory record keeps the path it was written to


# ----------------------------------------------------------------------------------- a real full disk, a real read-only folder
@contextlib.contextmanager
def small_fs(path: Path, size: str):
    """A tmpfs of ``size`` mounted at ``path`` (skips the test where mounting is not allowed)."""
    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if res.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {res.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(folder: Path) -> None:
    """Write zeros until the file system of ``folder`` is full."""
    with contextlib.suppress(OSError), open(folder / "filler", "wb", buffering=0) as f:
        while True:
            f.write(b"\0" * 4096)


def read_only(path: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)


def test_a_full_disk_keeps_the_previous_file_whole(tmp_path):
    with small_fs(tmp_path / "fs", "256k") as fs:
        durable.write_json(fs / "result.json", {"old": "x" * 1000})
        before = (fs / "result.json").read_bytes()
        fill(fs)
        with pytest.raises(WriteError) as info:
            durable.write_json(fs / "result.json", {"new": "y" * 300_000})
        assert str(info.value).startswith(f"disk full: could not write {fs / 'result.json'} (")
        assert f"free space in {fs} and re-run" in str(info.value)
        assert (fs / "result.json").read_bytes() == before
        assert sorted(p.name for p in fs.iterdir()) == ["filler", "result.json"]    # the temporary file removed


def test_a_read_only_folder_is_one_line(tmp_path):
    with small_fs(tmp_path / "fs", "64k") as fs:
        read_only(fs)
        for write in (lambda: durable.write_text(fs / "a", "x"), lambda: durable.append_text(fs / "b", "x"),
                      lambda: durable.ensure_dir(fs / "c")):
            with pytest.raises(WriteError, match="is on a read-only file system"):
                write()
