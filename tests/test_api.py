"""jit_core.api, each entry point against the command it stands for: the same config, weights, grid, metrics, verdict."""
from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from jit_core import api, hookimpl
from jit_core.config import ConfigError, flatten
from jit_core.plugins import PluginError
from jit_core.plugins.presets import build_config
from jit_core.testing import run_cli

from .core.test_evaluate import make_run

TINY_TRAIN = {"train.max_steps": 2, "train.ckpt_every": 2, "optim.batch_size": 8}
LOSS_CALLS = [0]


@hookimpl
def jit_loss_terms(step):
    """This module is also a plugin, enabled by module path (``plugins=["tests.test_api"]``): a Ctrl-C
    (a real SIGINT to this process, as a notebook's interrupt) during its run's second training step."""
    LOSS_CALLS[0] += 1
    if LOSS_CALLS[0] == 2:
        os.kill(os.getpid(), signal.SIGINT)
    return {}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_thread):
    """Two run folders of the ``test`` preset (digits, JiT-T/4) with weights and a metrics log, no training."""
    root = tmp_path_factory.mktemp("api-runs")
    return make_run(root / "a", seed=0), make_run(root / "b", seed=1)


# ----------------------------------------------------------------------------------- overrides and configs
def test_overrides_as_mapping_strings_or_keywords_are_the_command_lines_texts():
    overrides = {"sample.interval": (0.2, 0.9), "log.tensorboard": False, "optim.blr": 1e-4,
                 "model_overrides": {"depth": 2}, "train.max_steps": 20, "optim.grad_clip": None}
    texts = api.override_texts(overrides, train__log_every=5)
    assert texts == ["sample.interval=0.2,0.9", "log.tensorboard=false", "optim.blr=0.0001",
                     'model_overrides={"depth": 2}', "train.max_steps=20", "optim.grad_clip=none", "train.log_every=5"]
    assert api.override_texts(["train.max_steps=20"]) == api.override_texts("train.max_steps=20") == ["train.max_steps=20"]
    via_api = api.resolve_config("tiny", overrides, train__log_every=5)
    via_cli = build_config("tiny", None, (), texts)
    assert via_api.to_dict() == via_cli.to_dict()
    assert via_api.sample.interval == (0.2, 0.9) and via_api.train.max_steps == 20 and via_api.log.tensorboard is False
    with pytest.raises(TypeError, match="KEY=VALUE"):
        api.override_texts([("train.max_steps", 2), 3])


def test_bad_overrides_fail_with_the_command_lines_one_line_error(tmp_path):
    for key, value in (("train.max_stepz", 3), ("train.max_steps", "many")):
        with pytest.raises(ConfigError) as err:
            api.train("tiny", tmp_path / "api", {key: value}, progress=False)
        message = str(err.value)
        assert "\n" not in message and key in message
        result = run_cli("train", "--preset", "tiny", "--run-dir", str(tmp_path / "cli"), "--dry-run", f"{key}={value}")
        assert result.exit_code == 1 and message in result.output
    assert not (tmp_path / "api").exists()
    with pytest.raises(ConfigError, match="unknown preset 'tinyy'.*did you mean 'tiny'"):
        api.resolve_config("tinyy")
    with pytest.raises(TypeError, match="preset name"):
        api.resolve_config(3)


def test_a_config_object_or_file_resolves_as_the_command_line_and_is_not_modified(tmp_path, vco):
    base = api.resolve_config("vco-tiny")
    before = base.to_dict()
    again = api.resolve_config(base, {"vco.drift_coef": 5.0}, plugins=["vco"], run_dir=tmp_path / "r")
    assert base.to_dict() == before                                    # the caller's object is untouched
    core = {k: v for k, v in again.to_dict().items() if k not in ("plugin_options", "run_dir")}
    assert core == {k: v for k, v in before.items() if k not in ("plugin_options", "run_dir")}
    assert again.run_dir == str(tmp_path / "r") and again.plugins == ["vco"]
    # plugin options stay the command line's texts until the plugin checks them (as for `jit train`)
    want = {k: v for k, v in flatten(before).items() if k.startswith("vco.")} | {"vco.drift_coef": 5.0}
    assert api.override_texts({k: v for k, v in flatten(again).items() if k.startswith("vco.")}) \
        == api.override_texts(want)
    toml = tmp_path / "run.toml"
    toml.write_text('model = "JiT-T/4"\n[train]\nmax_steps = 7\n')
    assert api.resolve_config(toml).to_dict() == build_config(None, str(toml), (), ()).to_dict()
    assert api.resolve_config(str(toml), train__max_steps=9).train.max_steps == 9


# ----------------------------------------------------------------------------------- train
@pytest.mark.slow   # two tiny trainings and two resumes: 28 s on the loaded 2-core machine
def test_train_trains_what_jit_train_trains_and_resumes(tmp_path, one_thread):
    run = api.train("test", tmp_path / "api", TINY_TRAIN, progress=False)
    assert isinstance(run, api.LoadedRun) and run.step == 2 and run.ema == "ema1" and not run.model.training
    texts = api.override_texts(TINY_TRAIN)
    result = run_cli("train", "--preset", "test", "--run-dir", str(tmp_path / "cli"), *texts)
    assert result.exit_code == 0, result.output
    cli_weights = api.load_run(tmp_path / "cli").model.state_dict()
    for name, tensor in run.model.state_dict().items():
        assert torch.equal(tensor, cli_weights[name]), name            # bit-identical on the CPU
    assert api.train("test", tmp_path / "api", TINY_TRAIN, progress=False).step == 2   # the same run: nothing more
    longer = api.train(api.load_run_config(tmp_path / "api"), tmp_path / "api", {"train.max_steps": 3}, progress=False)
    assert longer.step == 3 and [r["step"] for r in api.read_metrics(longer)] == [2, 3]


@pytest.mark.slow   # two tiny trainings
def test_ctrl_c_checkpoints_then_raises_and_a_loaded_run_keeps_its_trust(tmp_path, one_thread):
    run_dir, LOSS_CALLS[0] = tmp_path / "run", 0
    with pytest.raises(KeyboardInterrupt, match="interrupted at step 2"):
        api.train("test", run_dir, TINY_TRAIN, plugins=[__name__], progress=False, train__max_steps=4)
    assert (run_dir / "checkpoints" / "step-00000002").is_dir()
    with pytest.raises(PluginError, match=__name__):          # a folder naming a plugin module: trusted by name only
        api.load_run_config(run_dir)
    run = api.train(api.load_run_config(run_dir, trust_plugins=[__name__]), run_dir, progress=False)
    assert run.step == 4 and LOSS_CALLS[0] == 4
    record = api.evaluate(run, num_images=4, metrics="none", save="none", progress=False, device="cpu")
    assert record["checkpoint"]["step"] == 4           # the loaded run's plugins were trusted when it was loaded
    with pytest.raises(PluginError, match=__name__):
        api.evaluate(run_dir, num_images=4, metrics="none", save="none", progress=False, device="cpu")


# ----------------------------------------------------------------------------------- metrics and pictures
def test_read_metrics_rows_and_columns(runs, tmp_path):
    a, _ = runs
    lines = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    assert api.read_metrics(a) == lines == api.read_metrics(str(a))
    cols = api.read_metrics(a, columns=True)
    assert cols["step"] == [r["step"] for r in lines] and cols["loss"] == [r["loss"] for r in lines]
    with pytest.raises(FileNotFoundError, match="is not a run folder"):
        api.read_metrics(tmp_path)
    with pytest.raises(TypeError, match="run folder"):
        api.read_metrics(3)
    with pytest.raises(ValueError, match=r"Hub name, not a run folder: load it first, api.load_run\('hf://o/r'\)"):
        api.read_metrics("hf://o/r")


def test_plot_losses_returns_the_figure_and_saves_it(runs, tmp_path):
    a, b = runs
    shown = api.plot_losses({"A": a, "B": b})
    assert isinstance(shown, Image.Image) and shown.width > 200
    saved = api.plot_losses([a, b], out=tmp_path / "figs" / "loss.png", x="time")
    with Image.open(tmp_path / "figs" / "loss.png") as on_disk:
        assert on_disk.size == saved.size
        assert np.array_equal(np.asarray(on_disk), np.asarray(saved))
    with pytest.raises(ValueError, match="'step' or 'time'"):
        api.plot_losses(a, x="wall")


def test_plot_losses_draws_two_seeds_of_one_arm_as_one_curve_with_a_band(runs, tmp_path, monkeypatch):
    """arm -> its seeds: one mean curve and a min-max band, written as PNG + PDF; a lone run stays a plain curve."""
    import matplotlib.pyplot as plt

    from jit_core.eval import plots
    a, b = runs
    figs = []

    def keep(fig, stem, dpi=110):   # plots.save_png_pdf, keeping the figure open to look at it
        figs.append({ax.get_title(): ax for ax in fig.axes})
        return [plots.durable.save_figure(stem.with_name(f"{stem.name}.{fmt}"), fig, dpi=dpi) for fmt in plots.FORMATS]

    monkeypatch.setattr(plots, "save_png_pdf", keep)
    try:
        shown = api.plot_losses({"JiT": [a, b], "one": a}, out=tmp_path / "losses.png")
        ax = figs[0]["loss"]
        labels = ax.get_legend_handles_labels()[1]
        bands = [c for c in ax.collections if len(c.get_paths())]
    finally:
        plt.close("all")
    assert isinstance(shown, Image.Image)
    assert (tmp_path / "losses.pdf").read_bytes().startswith(b"%PDF")
    assert labels == ["JiT (n=2)", "one"]           # one curve per arm, the seeds counted in its label
    assert len(bands) == 1                            # the two-seed arm's band; the lone run has none


def test_sample_grid_is_jit_samples_grid(runs, tmp_path):
    a, _ = runs
    result = run_cli("sample", str(a), "--num-per-class", "2", "--out", str(tmp_path / "cli"), "--device", "cpu")
    assert result.exit_code == 0, result.output
    grid = api.sample_grid(a, num_per_class=2, device="cpu", out=tmp_path / "api" / "grid.png")
    with Image.open(tmp_path / "cli" / "grid.png") as cli_grid:
        assert np.array_equal(np.asarray(cli_grid.convert("RGB")), np.asarray(grid.convert("RGB")))
    assert (tmp_path / "api" / "grid.png").is_file()
    loaded = api.load_run(a, ema="ema2")
    assert api.sample_grid(loaded, [3, 4], steps=2, scale=1).size == (2 * 32 + 3 * 2, 32 + 2 * 2)
    with pytest.raises(ValueError, match="loaded with 'ema2'"):
        api.sample_grid(loaded, [3], ema="ema1")
    with pytest.raises(ValueError, match="10 is not a class of this run"):
        api.sample_grid(loaded, [1, 10])
    with pytest.raises(ValueError, match="labels: empty"):
        api.sample_grid(loaded, [])


# ----------------------------------------------------------------------------------- evaluate, compare
EVAL = {"num_images": 10, "cfg": 1.5}


def test_evaluate_is_jit_evaluate(runs, tmp_path):
    a, _ = runs
    record = api.evaluate(a, bootstrap=0, progress=False, device="cpu", **EVAL)
    assert record["metric_kind"] == "classifier" and record["samples"]["num_images"] == 10
    result = run_cli("evaluate", str(a), "--num-images", "10", "--cfg", "1.5", "--bootstrap", "0",
                     "--out", str(tmp_path / "cli"), "--device", "cpu")
    assert result.exit_code == 0, result.output
    (cli_json,) = (tmp_path / "cli").glob("*.json")
    assert json.loads(cli_json.read_text())["metrics"] == record["metrics"]
    ema2 = api.evaluate(api.load_run(a, ema="ema2"), bootstrap=0, progress=False, save="none", out=tmp_path / "e2",
                        **EVAL)
    assert ema2["checkpoint"]["weights"] == "ema2" and ema2["metrics"] != record["metrics"]
    with pytest.raises(ConfigError, match="not a device"):
        api.evaluate(a, device="gpu")


@pytest.mark.slow   # three reports with samples and two evaluations: 15 s on the loaded 2-core machine
def test_compare_is_jit_compare(runs, tmp_path):
    a, b = runs
    report = api.compare([a, api.load_run(b)], tmp_path / "api", evaluate=True, bootstrap=0, num_samples=4, **EVAL)
    assert [r["arm"] for r in report["rows"]] == ["a", "b"] and report["baseline"] == "a"
    assert all((tmp_path / "api" / name).is_file() for name in ("index.html", "arms.json", "loss_curves.png"))
    result = run_cli("compare", str(a), str(b), "--out", str(tmp_path / "cli"), "--num-images", "10",
                     "--eval-cfg", "1.5", "--num-samples", "4")
    assert result.exit_code == 0, result.output
    assert report["sentence"] in result.output
    arms = api.compare({"A": [a], "B": b}, tmp_path / "arms", baseline="B", num_samples=4, **EVAL)
    assert [r["arm"] for r in arms["rows"]] == ["A", "B"] and arms["baseline"] == "B"
    assert arms["rows"][0]["metrics"]["fd_classifier"]["mean"] == report["rows"][0]["metrics"]["fd_classifier"]["mean"]


# ----------------------------------------------------------------------------------- the README's example
def readme_python_blocks() -> list[str]:
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.slow   # two tiny trainings, two evaluations of 10 images (Heun-2), a report: 39 s loaded
def test_readme_notebook_workflow_runs_at_a_tiny_budget(tmp_path, monkeypatch, one_thread):
    """README's second Python block (the notebook workflow) as written, but 4 steps of 8 images, Heun-2, 10 samples."""
    block = next(b for b in readme_python_blocks() if "api.train(" in b)
    budget = {'{"train.max_steps": 20}': '{"train.max_steps": 4, "optim.batch_size": 8, "sample.steps": 2}',
              "num_images=100": "num_images=10, bootstrap=0", "cfg=2.0)": "cfg=2.0, num_per_class=1)",
              '"reports/a-vs-tiny",': '"reports/a-vs-tiny", num_samples=2,'}
    for written, tiny in budget.items():
        assert written in block
        block = block.replace(written, tiny)
    monkeypatch.chdir(tmp_path)
    api.train("tiny", "runs/tiny", {"train.max_steps": 2, "optim.batch_size": 8, "sample.steps": 2},  # README's runs/tiny
              progress=False)
    namespace = {"api": api}
    exec(block, namespace)   # noqa: S102 -- the README's own example
    assert namespace["run"].step == 4 and len(namespace["rows"]) == 1
    assert namespace["result"]["samples"]["num_images"] == 10
    assert [r["arm"] for r in namespace["report"]["rows"]] == ["a", "tiny"]
    assert (tmp_path / "reports" / "a-vs-tiny" / "index.html").is_file()
