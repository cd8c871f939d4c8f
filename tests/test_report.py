"""``jit compare``: the report folder of two tiny runs, names, config differences."""
from __future__ import annotations

import json

from click.testing import CliRunner
from PIL import Image

from jit_core.eval import report as R

from .test_evaluate import make_run

REPORT_FILES = ("loss_curves.png", "loss_curves_time.png", "samples.png", "metrics.md", "metrics.json",
                "config_diff.md", "index.html")


def _fake_eval(run, name="step00000006-ema1-n20-heun4-cfg1.5-seed0", fd=12.5):
    (run / "eval").mkdir(exist_ok=True)
    rec = {"name": name, "metrics": {"fd_classifier": fd, "classifier_accuracy": 0.5}, "metric_kind": "classifier",
           "guidance": {"cfg": 1.5}, "samples": {"num_images": 20}}
    (run / "eval" / f"{name}.json").write_text(json.dumps(rec))


def test_compare_report_has_every_file(tmp_path):
    a = make_run(tmp_path / "a" / "run", seed=0)
    b = make_run(tmp_path / "b" / "run", seed=1, loss_terms=("feature", "hybrid"), overrides=["optim.lr=0.002"])
    _fake_eval(a)
    out = R.compare_runs([a, b], tmp_path / "report", num_samples=4, seed=0, cfg=1.0)
    names = ["a-run", "b-run"]
    for f in REPORT_FILES + tuple(f"samples_{n}.png" for n in names):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    with Image.open(out / "samples.png") as both, Image.open(out / "samples_a-run.png") as one:
        assert both.width > 2 * one.width - 10  # two panels side by side
    diff = (out / "config_diff.md").read_text()
    assert "optim.lr" in diff and "run_dir" not in diff
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["runs"]) == set(names)
    assert metrics["runs"]["a-run"]["evals"][0]["metrics"]["fd_classifier"] == 12.5
    assert metrics["runs"]["b-run"]["step"] == 6 and metrics["runs"]["b-run"]["params"] > 0
    md = (out / "metrics.md").read_text()
    assert "12.5" in md and "not evaluated" in md and "not FID" in md
    page = (out / "index.html").read_text()
    for f in ("loss_curves.png", "loss_curves_time.png", "samples.png", "samples_b-run.png", "metrics.md"):
        assert f'"{f}"' in page
    assert "optim.lr" in page
    shown = R.wall_time(metrics["runs"]["a-run"]["wall_time_s"])      # one unit in both tables
    assert shown != "-" and f"| {shown} |" in md and f"<td>{shown}</td>" in page


def test_wall_time_is_one_human_readable_unit():
    assert [R.wall_time(s) for s in (0, 4.6, 59.4, 125, 3599, 3600, 4320.0, 90061)] == \
        ["0 s", "5 s", "59 s", "2 min 05 s", "59 min 59 s", "1 h 00 min", "1 h 12 min", "25 h 01 min"]
    assert R.wall_time(None) == "-" and R.wall_time(float("nan")) == "-"


def test_loss_terms_and_names():
    logs = {"x": [{"step": 1, "loss": 1.0, "loss/pixel": 0.5, "loss/feature": 0.2, "lr": 1e-3}],
            "y": [{"step": 1, "loss": 1.0, "loss/hybrid": 0.1}]}
    assert R.loss_terms(logs) == ["loss", "loss/pixel", "loss/feature", "loss/hybrid"]
    assert R.run_names(["p/run", "q/run", "z"]) == ["p-run", "q-run", "z"]
    assert R.run_names(["p/run", "p/run"]) == ["p-run", "p-run-2"]


def test_config_diff_includes_plugin_options():
    a = {"model": "JiT-T/4", "optim": {"lr": 1.0}, "plugins": [], "plugin_options": {}, "run_dir": "a"}
    b = {"model": "JiT-T/4", "optim": {"lr": 2.0}, "plugins": ["vco"], "plugin_options": {"vco": {"drift_coef": 5}},
         "run_dir": "b"}
    diff = dict(R.config_diff({"a": a, "b": b}))
    assert set(diff) == {"optim.lr", "plugins", "plugin_options.vco.drift_coef"}
    assert diff["plugin_options.vco.drift_coef"] == {"a": R.NOT_SET, "b": 5}


def test_compare_cli_and_a_run_without_checkpoint(tmp_path):
    a = make_run(tmp_path / "a", seed=0)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text((a / "config.json").read_text())
    res = CliRunner().invoke(R.compare_command(), [str(a), str(empty), "--out", str(tmp_path / "rep"),
                                                   "--num-samples", "2", "--no-evaluate"])
    assert res.exit_code == 0, res.output
    assert "index.html" in res.output
    for f in REPORT_FILES + ("samples_a.png", "samples_empty.png"):
        assert (tmp_path / "rep" / f).is_file(), f
