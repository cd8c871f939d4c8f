"""Bad input through the real CLI (click's CliRunner on ``jit_core.cli.cli``): every mistake ends with ONE
clear ``Error: ...`` line (no traceback), a non-zero exit code, and nothing overwritten.

``result.exception`` being ``SystemExit`` proves click handled the error (an escaped exception would print
a traceback in a real shell); the error line must be the last line of the output.
"""
from __future__ import annotations

import json
import logging
import os
import warnings
import zipfile

import pytest
import torch
from click.testing import CliRunner

import jit_core.cli as jit_cli
from jit_core import durable
from jit_core.config import Config, load_config
from jit_core.runs import checkpoint as ckpt
from jit_core.runs.checkpoint import CheckpointError
from jit_core.runs.loading import load_weights
from jit_core.training import Trainer

from . import fault_tools as ft


@pytest.fixture(scope="module")
def cli():
    jit_cli._add_optional_commands()          # `jit convert` and the plugins' commands, as `jit` does
    return jit_cli.cli


def invoke(cli, *args, env=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CliRunner().invoke(cli, [str(a) for a in args], env=env)


def one_line_error(result, *fragments) -> str:
    """The single ``Error:`` line of a failed command, checked to contain every fragment."""
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), \
        f"uncaught {type(result.exception).__name__} (a traceback for the user): {result.exception}"
    out = result.output
    assert "Traceback" not in out, out
    lines = [line for line in out.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], out
    for fragment in fragments:
        assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"
    return errors[0]


def train_args(run, *overrides):
    return ["train", "--preset", "test", "--run-dir", run, *overrides]


# ----------------------------------------------------------------------------------- configuration
def test_unknown_config_key_suggests_the_nearest(cli, tmp_path):
    res = invoke(cli, *train_args(tmp_path / "run", "optim.blrr=1"))
    one_line_error(res, "unknown config key 'optim.blrr'", "did you mean 'optim.blr'")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override,expected", [("optim.blr=abc", "bad value 'abc' for optim.blr: expected float"),
                                               ("train.max_steps=1.5", "bad value '1.5' for train.max_steps: expected int"),
                                               ("optim.blr", "override 'optim.blr' is not KEY=VALUE")],
                         ids=["float", "int", "no-equals"])
def test_bad_value(cli, tmp_path, override, expected):
    one_line_error(invoke(cli, *train_args(tmp_path / "run", override)), expected)
    assert not (tmp_path / "run").exists()


def test_unknown_preset(cli, tmp_path):
    line = one_line_error(invoke(cli, "train", "--preset", "tset", "--run-dir", tmp_path / "run"),
                          "unknown preset 'tset'", "did you mean 'test'", "known presets:")
    assert "jit-b16" in line


def test_unknown_model(cli, tmp_path):
    one_line_error(invoke(cli, *train_args(tmp_path / "run", "model=JiT-T/5")),
                   "unknown model 'JiT-T/5'", "Did you mean 'JiT-T/4'?", "jit models")
    assert not (tmp_path / "run").exists()


def test_image_size_does_not_match_the_model(cli, tmp_path):
    one_line_error(invoke(cli, *train_args(tmp_path / "run", "data.image_size=30")),
                   "data.image_size=30 but model JiT-T/4 takes 32 px images", "set data.image_size=32")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override,expected", [
    ('model_overrides={"patch_size": 5}', "not divisible by patch_size 5"),
    ('model_overrides={"patchsize": 4}', "patchsize"),
], ids=["patch-does-not-divide", "unknown-field"])
def test_bad_model_overrides(cli, tmp_path, override, expected):
    one_line_error(invoke(cli, *train_args(tmp_path / "run", override)), expected)


# ----------------------------------------------------------------------------------- data
def test_missing_data_folder(cli, tmp_path):
    missing = tmp_path / "no-such-folder"
    one_line_error(invoke(cli, *train_args(tmp_path / "run", "data.name=folder", f"data.path={missing}")),
                   f"data path {missing} does not exist", "<root>/<class>/<image>")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("layout,expected", [("empty", "contains no class folders"),
                                             ("class-folders-without-images", "contains no images")],
                         ids=["empty", "no-images"])
def test_empty_data_folder(cli, tmp_path, layout, expected):
    data = tmp_path / "data"
    data.mkdir()
    if layout != "empty":
        for name in ("a", "b"):
            (data / name).mkdir()
            (data / name / "notes.txt").write_text("not an image")
    one_line_error(invoke(cli, *train_args(tmp_path / "run", "data.name=folder", f"data.path={data}")),
                   f"data path {data} {expected}")
    assert not (tmp_path / "run").exists()


def test_corrupt_images_are_skipped_and_counted(tmp_path, caplog):
    """2 of 12 images are garbage with a .png name: each is skipped with a warning naming it, counted in
    dataset.corrupt_count, replaced by the next readable image, and the run finishes."""
    data = ft.make_image_folder(tmp_path / "data", classes=2, per_class=6, corrupt=1, seed=3)
    cfg = load_config("test", None, ["data.name=folder", f"data.path={data}", "optim.batch_size=4",
                                     "train.max_steps=3", "sample.steps=1"])
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    with caplog.at_level(logging.WARNING, logger="jit_core.data"), ft.single_thread():
        result = trainer.fit()                                # 3 steps x 4 = every image once
    assert (result.status, result.step) == ("finished", 3)
    bad = sorted(str(p) for p in data.rglob("000.png"))
    assert trainer.dataset.corrupt_count == 2 and sorted(trainer.dataset.corrupt_paths) == bad
    skipped = [r.getMessage() for r in caplog.records if "skipping unreadable image" in r.getMessage()]
    assert len(skipped) == 2 and all(any(b in m for m in skipped) for b in bad), skipped
    img, label = trainer.dataset[0]                          # a bad index yields the next readable image
    assert img.shape == (3, 32, 32) and img.dtype == torch.uint8 and label == trainer.dataset.targets[1]


# ----------------------------------------------------------------------------------- run folders
@pytest.fixture
def finished_run(tmp_path):
    """A copy of the finished 20-step reference run (JiT-T/4, folder data)."""
    return ft.copy_run(ft.reference_run(), tmp_path / "finished")


def test_checkpoint_from_another_model(cli, finished_run):
    """The run folder's config asks for JiT-S/4 but its checkpoint holds JiT-T/4: the message names the
    shapes and what the checkpoint's tensors say; nothing is overwritten."""
    cfg = Config.from_dict(json.loads((finished_run / "config.json").read_text()))
    cfg.model = "JiT-S/4"
    (finished_run / "config.json").write_text(cfg.to_json())
    before = ft.tree_snapshot(finished_run / "checkpoints")
    line = one_line_error(invoke(cli, "train", "--resume", finished_run),
                          "is for a different model", "pos_embed has shape [1, 64, 96] here but [1, 64, 64] in the file",
                          "hidden_size=64", "depth=3")
    assert str(ft.step_dir(finished_run, ft.REF_STEPS)) in line
    assert ft.tree_snapshot(finished_run / "checkpoints") == before


def test_resume_with_an_incompatible_config_is_refused(cli, finished_run):
    before = ft.tree_snapshot(finished_run)
    one_line_error(invoke(cli, "train", "--resume", finished_run, "train.seed=7"),
                   "already holds a different run", "train.seed: 0 (saved) vs 7 (now)", "new --run-dir")
    assert ft.tree_snapshot(finished_run) == before           # config.json included: untouched


def test_run_folder_holding_another_run_is_refused(cli, finished_run):
    before = ft.tree_snapshot(finished_run)
    one_line_error(invoke(cli, *train_args(finished_run, *ft.folder_overrides(), "optim.lr=0.002")),
                   f"run folder {finished_run} already holds a different run", "optim.lr: 0.001 (saved) vs 0.002 (now)")
    assert ft.tree_snapshot(finished_run) == before


def test_non_jit_folder_is_refused(cli, tmp_path):
    folder = tmp_path / "my-data"
    folder.mkdir()
    (folder / "precious.txt").write_text("keep me")
    before = ft.tree_snapshot(folder)
    one_line_error(invoke(cli, *train_args(folder, *ft.folder_overrides())),
                   f"run folder {folder} exists and is not empty but holds no jit run")
    assert ft.tree_snapshot(folder) == before


def test_failed_start_does_not_block_the_corrected_command(cli, tmp_path):
    run = tmp_path / "run"
    one_line_error(invoke(cli, *train_args(run, *ft.folder_overrides(1), "optim.batch_size=500")),
                   "smaller than one global batch (500): lower optim.batch_size")
    assert ckpt.list_checkpoints(run) == []                  # nothing was trained
    res = invoke(cli, *train_args(run, *ft.folder_overrides(1)))
    assert res.exit_code == 0, res.output[-2000:]


# ----------------------------------------------------------------------------------- plugins
def test_unknown_plugin(cli, tmp_path):
    one_line_error(invoke(cli, *train_args(tmp_path / "run", "--plugin", "vcoo")),
                   "unknown plugin 'vcoo'", "did you mean 'vco'", "installed:")
    assert not (tmp_path / "run").exists()


def test_unknown_plugin_option(cli, tmp_path):
    one_line_error(invoke(cli, *train_args(tmp_path / "run", "--plugin", "vco", "vco.nope=1")),
                   "unknown option 'vco.nope' of plugin 'vco'", "options: encoder, encoder_weights")
    assert not (tmp_path / "run").exists()


def test_missing_encoder_weights_offline(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = invoke(cli, *train_args(tmp_path / "run", "--plugin", "vco", "vco.encoder=dinov2", "train.max_steps=1"),
                 env={"HF_HUB_OFFLINE": "1"})
    one_line_error(res, "DINOv2 weights not available offline", "vco.encoder_weights=", "HF_HUB_OFFLINE")
    assert ckpt.list_checkpoints(tmp_path / "run") == []


# ----------------------------------------------------------------------------------- checkpoints and files
def test_disk_full_while_writing_a_checkpoint(cli, tmp_path, monkeypatch):
    """Writes inside the step-4 checkpoint fail with ENOSPC after 100 kB (the model file half written): one
    line naming the checkpoint and the intact previous one; step 2 still verifies, ``latest`` still names
    it, no temporary directory is left; once there is room again, the run resumes and finishes."""
    run = tmp_path / "run"
    disk = ft.DiskFull("step-00000004.tmp-", budget=100_000)
    monkeypatch.setattr(durable, "open", disk, raising=False)
    res = invoke(cli, *train_args(run, *ft.folder_overrides(6)))
    one_line_error(res, f"disk full while writing checkpoint {ft.step_dir(run, 4)}", f"free space in {run / 'checkpoints'}",
                   f"the previous checkpoint {ft.step_dir(run, 2)} is intact")
    assert disk.raised == 1 and disk.written == 100_000
    assert ckpt.list_checkpoints(run) == [ft.step_dir(run, 2)] and ft.latest_step(run) == 2
    assert sorted(os.listdir(run / "checkpoints")) == ["latest", "step-00000002"]
    ckpt.verify_checkpoint(ft.step_dir(run, 2))
    monkeypatch.undo()
    res = invoke(cli, "train", "--resume", run)
    assert res.exit_code == 0 and "finished at step 6" in res.output, res.output[-2000:]


@pytest.fixture
def foreign_files(tmp_path):
    files = {}
    files["text"] = tmp_path / "notes.pth"
    files["text"].write_text("this is not a checkpoint\n")
    files["png-image"] = tmp_path / "sample.png"
    from PIL import Image
    Image.new("RGB", (8, 8), (255, 0, 0)).save(files["png-image"])
    files["truncated-zip"] = tmp_path / "broken.pth"
    buf = tmp_path / "whole.pth"
    torch.save({"model": {"w": torch.zeros(3)}}, buf)
    files["truncated-zip"].write_bytes(buf.read_bytes()[:200])
    files["foreign-dict"] = tmp_path / "resnet.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(2, 2)}, "epoch": 3}, files["foreign-dict"])
    return files


@pytest.mark.parametrize("kind,expected", [
    ("truncated-zip", "not a checkpoint: {path} (torch.load failed: RuntimeError"),
    ("foreign-dict", "{path} is not an official checkpoint: it has no 'model' entry (found ['epoch', 'state_dict'])"),
    ("text", "not a checkpoint: {path} (torch.load failed:"),
    pytest.param("png-image", "not a checkpoint: {path}"),
    ("missing", "official checkpoint not found: {path}"),
], ids=["truncated-zip", "foreign-dict", "text", "png-image", "missing"])
def test_convert_refuses_foreign_files(cli, foreign_files, tmp_path, kind, expected):
    path = foreign_files.get(kind, tmp_path / "missing.pth")
    out = tmp_path / "out"
    line = one_line_error(invoke(cli, "convert", path, out), expected.format(path=path))
    assert "pickled objects" not in line
    assert not out.exists()


def test_malicious_pickle_is_never_executed(cli, tmp_path):
    """A .pth whose unpickling would run code: `jit convert`, load_weights and a resumed run (a trainer.pt
    swapped in, with a manifest that matches it) all refuse it with weights_only=True; the code never runs."""
    marker = tmp_path / "pwned"
    evil = tmp_path / "checkpoint-last.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "args": ft.Evil(str(marker))}, evil)
    one_line_error(invoke(cli, "convert", evil, tmp_path / "out"), f"refused to load {evil}: it holds", "weights_only")
    assert not marker.exists() and not (tmp_path / "out").exists()
    with pytest.raises(CheckpointError, match="refused to load"):
        load_weights(evil)
    # a run whose trainer.pt was replaced, manifest updated to match (so it verifies)
    run = ft.copy_run(ft.reference_run(), tmp_path / "run")
    last = ft.step_dir(run, ft.REF_STEPS)
    torch.save({"step": 1, "rng": ft.Evil(str(marker))}, last / "trainer.pt")
    manifest = json.loads((last / "manifest.json").read_text())
    manifest["files"]["trainer.pt"] = {"bytes": (last / "trainer.pt").stat().st_size,
                                       "sha256": durable.sha256_file(last / "trainer.pt")}
    (last / "manifest.json").write_text(json.dumps(manifest))
    one_line_error(invoke(cli, "train", "--resume", run), f"refused to load {last / 'trainer.pt'}")
    assert not marker.exists()
    assert zipfile.is_zipfile(last / "trainer.pt")
