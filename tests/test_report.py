"""``jit compare``: the report folder of two tiny runs, names, config differences."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from PIL import Image

from jit_core.eval import configdiff, figures
from jit_core.eval import report as R

from .core.test_evaluate import cache_env, make_run  # noqa: F401 -- cache_env: a fixture

REPORT_FILES = ("loss_curves.png", "loss_curves_time.png", "samples.png", "metrics.md", "metrics.json",
                "config_diff.md", "index.html")
PAPER_FILES = ("loss_curves.pdf", "loss_curves_time.pdf", "forest.png", "forest.pdf", "arms.csv", "arms.tex",
               "runs.csv", "runs.tex")


def _fake_eval(run, name="step00000006-ema1-n20-heun4-cfg1.5-seed0", fd=12.5):
    (run / "eval").mkdir(exist_ok=True)
    rec = {"name": name, "metrics": {"fd_classifier": fd, "classifier_accuracy": 0.5}, "metric_kind": "classifier",
           "guidance": {"cfg": 1.5}, "samples": {"num_images": 20}}
    (run / "eval" / f"{name}.json").write_text(json.dumps(rec))


def test_compare_report_has_every_file(tmp_path):
    a = make_run(tmp_path / "a" / "run", seed=0)
    b = make_run(tmp_path / "b" / "run", seed=1, loss_terms=("feature", "hybrid"), overrides=["optim.lr=0.002"])
    _fake_eval(a)
    names = ["a-run", "b-run"]                       # one run per arm: the plain side-by-side of runs
    out = tmp_path / "report"
    R.compare_arms(dict(zip(names, ([a], [b]))), out, num_samples=4, seed=0, sample_cfg=1.0)
    for f in REPORT_FILES + tuple(f"samples_{n}.png" for n in names):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    for n in names:                                   # the per-class sheets, shown in the page
        assert (out / f"classes_{n}.png").is_file() and f'"classes_{n}.png"' in (out / "index.html").read_text()
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
    assert figures.loss_terms(logs) == ["loss", "loss/pixel", "loss/feature", "loss/hybrid"]
    assert R.run_names(["p/run", "q/run", "z"]) == ["p-run", "q-run", "z"]
    assert R.run_names(["p/run", "p/run"]) == ["p-run", "p-run-2"]


def test_config_diff_includes_plugin_options():
    a = {"model": "JiT-T/4", "optim": {"lr": 1.0}, "plugins": [], "plugin_options": {}, "run_dir": "a"}
    b = {"model": "JiT-T/4", "optim": {"lr": 2.0}, "plugins": ["vco"], "plugin_options": {"vco": {"drift_coef": 5}},
         "run_dir": "b"}
    diff = dict(configdiff.config_diff({"a": a, "b": b}))
    assert set(diff) == {"optim.lr", "plugins", "plugin_options.vco.drift_coef"}
    assert diff["plugin_options.vco.drift_coef"] == {"a": configdiff.NOT_SET, "b": 5}


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


# ----------------------------------------------------------------------------------- arms (several seeds each)
def _eval_record(run, fd, acc=0.5, cfg=1.5, n=20, interval=(0.1, 1.0), step=6):
    """A result JSON as ``jit evaluate`` writes it (the fields compare reads), in ``run/eval``."""
    name = f"step{step:08d}-ema1-n{n}-heun4-cfg{cfg:g}-seed0"
    rec = {"name": name, "metrics": {"fd_classifier": fd, "classifier_accuracy": acc, "fd_classifier_real_train": 1.0},
           "intervals": {"fd_classifier": [fd - 0.3, fd + 0.3], "classifier_accuracy": [acc - 0.1, acc + 0.1]},
           "metric_kind": "classifier", "primary_metric": "fd_classifier",
           "checkpoint": {"weights": "ema1", "step": step}, "guidance": {"cfg": cfg, "interval": list(interval)},
           "sampler": {"method": "heun", "steps": 4}, "samples": {"num_images": n, "seed": 0},
           "selection": {"cfg_chosen_on_these_samples": False}, "date": "2026-01-01T00:00:00+00:00"}
    (run / "eval").mkdir(parents=True, exist_ok=True)
    (run / "eval" / f"{name}.json").write_text(json.dumps(rec))


def _seed_runs(root, template, arm, fds, **kw):
    """Run folders (config only: no checkpoint, compare needs none) with constructed evaluations."""
    dirs = []
    for i, fd in enumerate(fds):
        d = root / arm / f"s{i}"
        d.mkdir(parents=True)
        (d / "config.json").write_text((template / "config.json").read_text())
        _eval_record(d, fd, **{**kw, "acc": kw.get("acc", 0.5) + 0.01 * i})   # seeds never tie exactly
        dirs.append(d)
    return dirs


def test_compare_arms_ties_and_differences(tmp_path):
    tpl = make_run(tmp_path / "tpl")
    arms = {"JiT": _seed_runs(tmp_path, tpl, "jit", [5.5, 5.7, 5.6]),
            "tie": _seed_runs(tmp_path, tpl, "tie", [5.6, 5.5, 5.7]),
            "V-Co": _seed_runs(tmp_path, tpl, "vco", [4.0, 4.1, 3.9], acc=0.7)}
    res = R.compare_arms(arms, tmp_path / "rep", paper={"tie": "better", "V-Co": "better"}, num_samples=2)
    rows = {r["arm"]: r for r in res["rows"]}
    assert res["baseline"] == "JiT" and res["primary_metric"] == "fd_classifier"
    assert rows["JiT"]["n"] == 3 and rows["JiT"]["metrics"]["fd_classifier"]["mean"] == pytest.approx(5.6)
    assert "fd_classifier_real_train" not in rows["JiT"]["metrics"]   # the floor is not an arm's metric
    tie, vco = rows["tie"]["verdicts"]["fd_classifier"], rows["V-Co"]["verdicts"]["fd_classifier"]
    assert not tie["outside_noise"] and tie["better"] is None and rows["tie"]["ours"] == "within noise"
    assert vco["outside_noise"] and vco["better"] == "V-Co" and rows["V-Co"]["ours"] == "agrees"
    assert rows["V-Co"]["verdicts"]["classifier_accuracy"]["better"] == "V-Co"   # higher accuracy is better
    assert "tie vs JiT" in res["sentence"] and "within noise" in res["sentence"] and "V-Co is better" in res["sentence"]
    assert "not FID" in res["what_this_shows"] and "6 steps" in res["what_this_shows"]
    saved = json.loads((tmp_path / "rep" / "arms.json").read_text())
    assert saved["sentence"] == res["sentence"] and len(saved["rows"]) == 3
    md = (tmp_path / "rep" / "metrics.md").read_text()
    assert res["sentence"] in md and "| paper | ours |" in md and "agrees" in md
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "within noise" in page and "samples_V-Co.png" in page
    for f in REPORT_FILES + ("arms.json",) + PAPER_FILES:
        assert (tmp_path / "rep" / f).is_file(), f
    assert (tmp_path / "rep" / "forest.pdf").read_bytes().startswith(b"%PDF") and '"forest.png"' in page
    assert (tmp_path / "rep" / "arms.csv").read_text().splitlines()[0].startswith("arm,seeds,")
    # the paper says worse; we measure better, outside the noise
    res = R.compare_arms(arms, tmp_path / "rep2", baseline="JiT", paper={"V-Co": "worse"}, num_samples=2)
    assert {r["arm"]: r.get("ours") for r in res["rows"]}["V-Co"] == "disagrees"


def test_compare_arms_refuses_mixed_eval_settings(tmp_path):
    tpl = make_run(tmp_path / "tpl")
    arms = {"A": _seed_runs(tmp_path, tpl, "a", [5.0, 5.1]), "B": _seed_runs(tmp_path, tpl, "b", [5.0], cfg=2.0)}
    with pytest.raises(ValueError, match="no settings in common"):
        R.compare_arms(arms, tmp_path / "rep", num_samples=2)
    _eval_record(arms["B"][0], 4.0, cfg=1.5)   # now both have cfg 1.5 (and B also 2.0): 1.5 is the common one
    res = R.compare_arms(arms, tmp_path / "rep", num_samples=2)
    assert res["eval_settings"]["cfg"] == 1.5
    assert res["rows"][1]["metrics"]["fd_classifier"]["mean"] == 4.0 and "t-interval assuming" in \
        res["rows"][1]["verdicts"]["fd_classifier"]["method"]
    with pytest.raises(TypeError, match="unknown keyword"):
        R.compare_arms(arms, tmp_path / "rep", cfgs=1.5)


def test_compare_cli_with_arms(tmp_path):
    tpl = make_run(tmp_path / "tpl")
    a = _seed_runs(tmp_path, tpl, "a", [5.5, 5.7])
    b = _seed_runs(tmp_path, tpl, "b", [4.0, 4.2])
    res = CliRunner().invoke(R.compare_command(), ["--arm", f"JiT={a[0]},{a[1]}", "--arm", f"V-Co={b[0]},{b[1]}",
                                                   "--baseline", "V-Co", "--out", str(tmp_path / "rep"),
                                                   "--num-samples", "2"])
    assert res.exit_code == 0, res.output
    assert "JiT vs V-Co" in res.output and "V-Co is better" in res.output
    bad = CliRunner().invoke(R.compare_command(), ["--arm", "JiT", "--out", str(tmp_path / "rep")])
    assert bad.exit_code != 0 and "NAME=RUN" in bad.output


def test_compare_arms_evaluates_real_tiny_runs(tmp_path, cache_env):  # noqa: F811 -- the fixture
    arms = {"A": [make_run(tmp_path / "a" / f"s{i}", seed=i) for i in range(2)],
            "B": [make_run(tmp_path / "b" / "s0", seed=5, overrides=["optim.lr=0.002"])]}
    res = R.compare_arms(arms, tmp_path / "rep", num_samples=2, evaluate=True, num_images=20, steps=1, cfg=1.5,
                         bootstrap=50, device="cpu")
    a, b = res["rows"]
    assert a["n"] == 2 and b["n"] == 1 and res["eval_settings"]["num_images"] == 20
    assert a["metrics"]["fd_classifier"]["method"].startswith("t-interval") and "bootstrap" in \
        b["metrics"]["fd_classifier"]["method"]
    assert b["metrics"]["fd_classifier"]["lo"] < b["metrics"]["fd_classifier"]["mean"] < b["metrics"]["fd_classifier"]["hi"]
    assert "B vs A" in res["sentence"] and len(list((tmp_path / "a" / "s1" / "eval").glob("*.json"))) == 1
