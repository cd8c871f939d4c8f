"""Paper figures and tables (:mod:`jit_core.eval.plots`): seed bands, forest plot, PNG + PDF, CSV + LaTeX."""
from __future__ import annotations

import csv
import io

import pytest
from PIL import Image

from jit_core.eval import plots


def _log(steps, losses, t0=0.0):
    return [{"step": s, "loss": v, "time": t0 + s, "loss/pixel": 2 * v} for s, v in zip(steps, losses)]


def test_seed_band_is_mean_min_max_per_step_over_seeds():
    runs = [_log([1, 2, 3], [1.0, 0.5, 0.2]), _log([1, 2], [3.0, 1.5]), _log([1], [float("nan")])]
    xs, mean, lo, hi, n = plots.seed_band(runs, "loss")
    assert xs == [1, 2, 3] and n == [2, 2, 1]          # the NaN is not a value; step 3 has one seed
    assert mean == pytest.approx([2.0, 1.0, 0.2]) and lo == [1.0, 0.5, 0.2] and hi == [3.0, 1.5, 0.2]
    xs, *_ = plots.seed_band([_log([1], [1.0], t0=10), _log([1], [1.0], t0=20)], "loss", x="time")
    assert xs == [pytest.approx(16.0)]                  # the seeds' mean wall clock at that step


def test_loss_bands_are_png_and_pdf_and_a_one_point_run_shows(tmp_path):
    arms = {"JiT": [_log([1, 2, 3], [1.0, 0.5, 0.2]), _log([1, 2, 3], [1.2, 0.6, 0.3])],
            "short": [_log([1], [0.9])]}
    png, pdf = plots.plot_loss_bands(arms, tmp_path / "loss_curves")
    assert png.name == "loss_curves.png" and pdf.name == "loss_curves.pdf"
    assert pdf.read_bytes().startswith(b"%PDF")
    with Image.open(png) as im:
        assert im.width > 500
    import matplotlib.pyplot as plt
    assert not plt.get_fignums()                        # every figure closed


def _table():
    def row(arm, diff, lo, hi, outside, baseline=False):
        v = {} if baseline else {"fd": {"diff": diff, "lo": lo, "hi": hi, "outside_noise": outside}}
        return {"arm": arm, "baseline": baseline, "verdicts": v}
    return {"rows": [row("JiT", 0, 0, 0, False, baseline=True), row("V-Co", -1.6, -1.9, -1.3, True),
                     row("tie", 0.03, -0.2, 0.26, False), row("one seed", 0.5, None, None, False)]}


def test_forest_rows_and_figure(tmp_path):
    rows = plots.forest_rows(_table(), "fd")
    assert [r[0] for r in rows] == ["V-Co", "tie", "one seed"]       # the baseline is the zero line, not a row
    assert rows[0] == ("V-Co", -1.6, -1.9, -1.3, True) and rows[2][2:4] == (None, None)
    assert plots.forest_rows(_table(), "accuracy") == []
    for table in (_table(), {"rows": []}):
        png, pdf = plots.plot_forest(table, "fd", "JiT", tmp_path / "forest", lower_is_better=True)
        assert png.is_file() and pdf.read_bytes().startswith(b"%PDF")


def test_tables_as_csv_and_latex(tmp_path):
    head, rows = ["arm", "FD_cls (lower better)"], [["V-Co_2 & co", "4 [3.9, 4.1] 95%"]]
    csv_path, tex_path = plots.write_table(tmp_path / "arms", head, rows)
    assert list(csv.reader(io.StringIO(csv_path.read_text()))) == [head, rows[0]]
    tex = tex_path.read_text()
    assert r"V-Co\_2 \& co" in tex and r"95\%" in tex and tex.count(r"\\") == 2
    assert tex.startswith(r"\begin{tabular}{ll}") and r"\end{tabular}" in tex


def test_metric_vs_cfg_from_a_grid_summary(tmp_path):
    from jit_core.eval.results import sweep_summary

    def rec(ema, cfg, fd, iv):
        return {"checkpoint": {"weights": ema}, "guidance": {"cfg": cfg}, "metrics": {"fd_classifier": fd},
                "intervals": {"fd_classifier": iv} if iv else {}, "json": f"{ema}-{cfg}.json"}
    recs = [rec("ema1", 1.0, 3.0, [2.5, 3.5]), rec("ema1", 1.8, 2.0, None), rec("ema2", 1.0, 2.2, [2.0, 2.4]),
            rec("ema2", 1.8, None, None)]
    summary = sweep_summary(recs, "classifier", tmp_path / "grid.json")
    assert summary["best_ema"] == "ema1" and summary["best_cfg"] == 1.8
    png, pdf = plots.plot_metric_vs_cfg(summary, tmp_path / "grid")
    assert png.name == "grid.png" and pdf.read_bytes().startswith(b"%PDF")
    empty = sweep_summary([rec("ema1", 1.0, None, None)], "classifier", tmp_path / "none.json")
    assert plots.plot_metric_vs_cfg(empty, tmp_path / "none")[0].is_file()


# ----------------------------------------------------------------------------------- metric vs training step
def _fake_metrics(calls):
    def compute(kind, images, folder, labels, run, **kw):
        calls.append(run.step)
        fd = 10.0 / run.step
        return {"fd_classifier": fd, "intervals": {"fd_classifier": [fd - 0.5, fd + 0.5]}, "interval_method": "test"}
    return compute


def test_all_checkpoints_evaluates_each_once_and_draws_metric_vs_step(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from jit_core.eval import evaluate as E
    from jit_core.eval import over_steps
    from jit_core.runs.checkpoint import list_checkpoints

    from .core.test_evaluate import make_run
    run = make_run(tmp_path / "a", steps=3)
    again = make_run(tmp_path / "b", seed=0, steps=6)          # the same weights format, saved at step 6 into run a
    import shutil
    shutil.copytree(list_checkpoints(again)[0], run / "checkpoints" / list_checkpoints(again)[0].name)
    assert [p.name for p in list_checkpoints(run)] == sorted(p.name for p in list_checkpoints(run)) and \
        len(list_checkpoints(run)) == 2
    calls = []
    monkeypatch.setattr(E, "compute_metrics", _fake_metrics(calls))
    kw = {"num_images": 10, "steps": 1, "save": "none", "progress": False, "device": "cpu"}
    results = E.evaluate_all_checkpoints(run, **kw)
    assert [r["checkpoint"]["step"] for r in results] == [3, 6] and calls == [3, 6]
    assert [r["checkpoint"]["step"] for r in E.evaluate_all_checkpoints(run, **kw)] == [3, 6]
    assert calls == [3, 6]                                     # resumed: nothing recomputed
    rows, settings = over_steps.metric_by_step({"A": [run]}, "fd_classifier")
    assert rows == {"A": [[{"step": 3, "fd_classifier": pytest.approx(10 / 3)},
                           {"step": 6, "fd_classifier": pytest.approx(10 / 6)}]]}
    assert settings["num_images"] == 10
    res = CliRunner().invoke(E.evaluate_command(), [str(run), "--all-checkpoints", "--num-images", "10", "--steps", "1",
                                                    "--save", "none", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert calls == [3, 6] and (run / "eval" / "metric_vs_step.pdf").read_bytes().startswith(b"%PDF")
    assert (run / "eval" / "samples_over_steps.png").is_file()
    both = CliRunner().invoke(E.evaluate_command(), [str(run), "--all-checkpoints", "--checkpoint", str(run)])
    assert both.exit_code != 0 and "leave out --checkpoint" in both.output
    shutil.rmtree(again / "checkpoints")
    (again / "checkpoints").mkdir()
    none = CliRunner().invoke(E.evaluate_command(), [str(again), "--all-checkpoints", "--device", "cpu"])
    assert none.exit_code != 0 and "no complete checkpoint" in none.output and "Traceback" not in none.output


def test_metric_vs_step_figure_bands_over_seeds(tmp_path):
    arms = {"JiT": [[{"step": 3, "fd": 4.0}, {"step": 6, "fd": 2.0}], [{"step": 3, "fd": 5.0}, {"step": 6, "fd": 3.0}]],
            "one step": [[{"step": 6, "fd": 1.0}]], "none": [[]]}
    png, pdf = plots.plot_metric_vs_step(arms, "fd", tmp_path / "metric_vs_step", subtitle="test")
    assert png.is_file() and pdf.read_bytes().startswith(b"%PDF")


def test_compare_report_draws_metric_vs_step_when_runs_have_several_checkpoints(tmp_path):
    from jit_core.eval import report as R

    from .core.test_evaluate import make_run
    from .test_report import _eval_record, _seed_runs
    tpl = make_run(tmp_path / "tpl")
    arms = {"JiT": _seed_runs(tmp_path, tpl, "jit", [5.5, 5.7]), "V-Co": _seed_runs(tmp_path, tpl, "vco", [4.0, 4.2])}
    res = R.compare_arms(arms, tmp_path / "one-step", num_samples=2)
    assert res["paths"]["metric_vs_step_png"] is None and not (tmp_path / "one-step" / "metric_vs_step.png").exists()
    for fd, d in zip([9.0, 9.5, 8.0, 8.1], arms["JiT"] + arms["V-Co"]):
        _eval_record(d, fd, step=3)                             # an earlier checkpoint of every run
    res = R.compare_arms(arms, tmp_path / "rep", num_samples=2)
    out = tmp_path / "rep"
    assert res["rows"][0]["metrics"]["fd_classifier"]["mean"] == pytest.approx(5.6)   # compared: the newest step
    assert (out / "metric_vs_step.pdf").read_bytes().startswith(b"%PDF")
    assert '"metric_vs_step.png"' in (out / "index.html").read_text()


# ----------------------------------------------------------------------------------- sample sheets
def test_class_names_and_titled_rows():
    import torch

    from jit_core.eval import sheets
    assert sheets.class_names("fashion_mnist", 10)[9] == "Ankle boot" and sheets.class_names("digits", 10)[3] == "3"
    assert sheets.class_names("imagenet", 3) == ["class 0", "class 1", "class 2"]
    rows = [torch.full((4, 1, 8, 8), 255, dtype=torch.uint8), torch.zeros(4, 1, 8, 8, dtype=torch.uint8)]
    img = sheets.titled_rows(rows, ["Ankle boot", "Bag"], ["a", "b", "c", "d"])
    assert img.size == (sheets.ROW_TITLE_WIDTH + 4 * 10 + 2, sheets.COLUMN_TITLE_HEIGHT + 2 * (10 + 2))
    title = img.crop((0, sheets.COLUMN_TITLE_HEIGHT, sheets.ROW_TITLE_WIDTH, img.height)).convert("L")
    assert title.getextrema()[0] < 128                      # the row titles are drawn


def test_per_class_sheet_cfg_strip_and_samples_over_steps(tmp_path):
    import shutil

    from PIL import Image

    from jit_core.eval import sheets
    from jit_core.runs import loading
    from jit_core.runs.checkpoint import list_checkpoints

    from .core.test_evaluate import make_run
    run_dir = make_run(tmp_path / "a", steps=3)
    later = make_run(tmp_path / "b", steps=6)
    shutil.copytree(list_checkpoints(later)[0], run_dir / "checkpoints" / list_checkpoints(later)[0].name)
    run = loading.load_run(run_dir)
    size, n_cls = run.model.cfg.image_size * sheets._scale(run), run.model.cfg.num_classes
    cell = size + 2 * sheets._scale(run)
    with Image.open(sheets.per_class_sheet(run, 2, tmp_path / "classes.png")) as im:
        assert im.height >= n_cls * cell and im.width >= sheets.ROW_TITLE_WIDTH + 2 * cell
    with Image.open(sheets.cfg_strip(run, [1.0, 3.0], tmp_path / "cfg.png")) as im:
        assert sheets.COLUMN_TITLE_HEIGHT + 2 * cell <= im.height < sheets.COLUMN_TITLE_HEIGHT + 3 * cell
        assert im.width >= sheets.ROW_TITLE_WIDTH + n_cls * cell
    with Image.open(sheets.steps_sheet(run_dir, tmp_path / "steps.png")) as im:
        assert sheets.COLUMN_TITLE_HEIGHT + 2 * cell <= im.height < sheets.COLUMN_TITLE_HEIGHT + 3 * cell
