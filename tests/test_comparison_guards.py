"""Comparisons refuse what cannot be compared: a run listed twice, arm names that collide as file names, runs
trained for different budgets, degenerate numbers (identical seeds, zero-width intervals, chance accuracy), exact
ties in an EMA x CFG grid, result files with wrong types."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from jit_core.eval import report as R
from jit_core.eval import stats
from jit_core.eval.record_checks import ResultFileError
from jit_core.eval.results import format_table, sweep_markdown, sweep_summary

from .core.test_evaluate import make_run
from .test_report import _seed_runs


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("tpl") / "run")


def _edit(run, **changes):
    """Change top-level sections of the run's only result record."""
    (path,) = (run / "eval").glob("*.json")
    rec = json.loads(path.read_text())
    rec.update(changes)
    path.write_text(json.dumps(rec))
    return path


def test_a_run_listed_twice_is_refused(tmp_path, template):
    a = _seed_runs(tmp_path, template, "a", [5.0, 5.2])
    with pytest.raises(ValueError, match=r"is listed twice in arm 'A': one run is one training seed"):
        R.compare_arms({"A": [a[0], a[0]]}, tmp_path / "rep")
    with pytest.raises(ValueError, match=r"is listed in arms 'A' and 'B'"):
        R.compare_arms({"A": a, "B": [tmp_path / "a" / ".." / "a" / "s1"]}, tmp_path / "rep")
    res = CliRunner().invoke(R.compare_command(), ["--arm", f"A={a[0]},{a[0]}", "--out", str(tmp_path / "rep")])
    assert res.exit_code == 1 and "listed twice" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "rep").exists()


def test_arm_names_that_collide_as_file_names_get_their_own_files(tmp_path, template):
    arms = {"a b": _seed_runs(tmp_path, template, "x", [5.0]), "a_b": _seed_runs(tmp_path, template, "y", [4.0])}
    R.compare_arms(arms, tmp_path / "rep", num_samples=2)
    files = sorted(p.name for p in (tmp_path / "rep").glob("samples_*.png"))
    assert len(files) == 2 and "samples_a_b.png" in files
    page = (tmp_path / "rep" / "index.html").read_text()
    assert all(f in page for f in files)
    with pytest.raises(ValueError, match="differ only in case"):
        R.compare_arms({"Arm": arms["a b"], "arm": arms["a_b"]}, tmp_path / "rep2")


def test_runs_trained_for_different_steps_are_flagged_in_the_verdict(tmp_path, template):
    arms = {"JiT": _seed_runs(tmp_path, template, "j", [5.0, 5.2], step=6),
            "V-Co": _seed_runs(tmp_path, template, "v", [4.0, 4.1], step=12)}
    res = R.compare_arms(arms, tmp_path / "rep", num_samples=2)
    assert res["sentence"].startswith("Caution, not comparable: the runs were trained for different numbers of "
                                      "steps (JiT 6, 6; V-Co 12, 12).")
    assert "V-Co vs JiT" in res["sentence"]


def test_runs_trained_on_different_numbers_of_images_are_flagged(tmp_path, template):
    arms = {"JiT": _seed_runs(tmp_path, template, "j", [5.0, 5.2]), "V-Co": _seed_runs(tmp_path, template, "v", [4.0, 4.1])}
    for run, batch in zip(arms["JiT"] + arms["V-Co"], (16, 16, 16, 64)):
        _edit(run, training={"global_batch": batch})
    res = R.compare_arms(arms, tmp_path / "rep", num_samples=2)
    assert res["sentence"].startswith("Caution, not comparable: the runs were trained for different numbers of "
                                      "images (JiT 96, 96; V-Co 96, 384).")


def test_identical_seeds_and_zero_width_intervals_get_no_verdict(tmp_path, template):
    arms = {"JiT": _seed_runs(tmp_path, template, "j", [5.0, 5.0]),
            "V-Co": _seed_runs(tmp_path, template, "v", [4.0, 4.0])}
    res = R.compare_arms(arms, tmp_path / "rep", paper={"V-Co": "better"}, num_samples=2)
    v = res["rows"][1]["verdicts"]["fd_classifier"]
    assert not v["outside_noise"] and v["better"] is None and "identical values" in v["degenerate"]
    assert "no verdict, the numbers are degenerate: V-Co's 2 seeds have identical values (4)" in res["sentence"]
    assert "within noise" not in res["sentence"] and res["rows"][1]["ours"] == "no verdict (degenerate)"
    assert "no verdict (degenerate)" in (tmp_path / "rep" / "metrics.md").read_text()
    # one seed each whose bootstrap interval has zero width
    one = stats.summarize_arm("A", [3.0], [(3.0, 3.0)])
    other = stats.summarize_arm("B", [4.0], [(3.8, 4.2)])
    v = stats.compare_arms_stats(one, other)
    assert v.degenerate == "A's interval has zero width ([3, 3])" and not v.outside_noise
    assert "within noise [0, 0]" not in v.sentence and "no verdict" in v.sentence


def test_accuracy_at_chance_is_flagged(tmp_path, template):
    arms = {"JiT": _seed_runs(tmp_path, template, "j", [5.0, 5.3], acc=0.11),
            "V-Co": _seed_runs(tmp_path, template, "v", [4.0, 4.2], acc=0.6)}
    for run in arms["JiT"] + arms["V-Co"]:
        _edit(run, model={"num_classes": 10})
    res = R.compare_arms(arms, tmp_path / "rep", num_samples=2)
    assert "Caution, JiT's samples are classified at chance level (accuracy 11.5%, chance 10.0%)" in res["sentence"]
    assert "V-Co's samples" not in res["sentence"]


def _grid_record(ema, cfg, value):
    return {"checkpoint": {"weights": ema}, "guidance": {"cfg": cfg}, "metrics": {"fd_classifier": value},
            "json": f"{ema}-{cfg}.json", "primary_metric": "fd_classifier"}


def test_a_grid_stars_no_best_among_exact_ties(tmp_path):
    records = [_grid_record("ema1", 1.5, 3.0), _grid_record("ema2", 1.5, 3.0), _grid_record("ema1", 2.0, 4.0)]
    summary = sweep_summary(records, "classifier", tmp_path / "grid.json")
    assert summary["best"] is None and [p["tied"] for p in summary["points"]] == [True, True, False]
    assert "No best: 2 points tie exactly at 3." in sweep_markdown(summary) and "**best**" not in sweep_markdown(summary)
    assert "*" not in format_table(summary)
    records[1]["metrics"]["fd_classifier"] = 3.5
    summary = sweep_summary(records, "classifier", tmp_path / "grid.json")
    assert summary["best"] is records[0] and format_table(summary).splitlines()[1].endswith(" *")


@pytest.mark.parametrize("change, message", [
    ({"metrics": {"fd_classifier": "abc", "classifier_accuracy": 0.5}}, "metric 'fd_classifier' is 'abc', not a finite number"),
    ({"metrics": [1, 2]}, "'metrics' is a list, not an object"),
    ({"checkpoint": "step-6"}, "'checkpoint' is a str, not an object"),
    ({"guidance": [1.5]}, "'guidance' is a list, not an object"),
])
def test_a_result_file_with_wrong_types_is_refused_in_one_line(tmp_path, template, change, message):
    arms = {"A": _seed_runs(tmp_path, template, "a", [5.0, 5.1])}
    path = _edit(arms["A"][1], **change)
    with pytest.raises(ResultFileError, match=f"result file {path}: {message}.*delete .* and evaluate the run again"):
        R.compare_arms(arms, tmp_path / "rep")
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ResultFileError, match="nested too deeply"):
        R.compare_arms(arms, tmp_path / "rep")


def test_log_lines_that_are_not_records_are_skipped(tmp_path, template):
    arms = {"A": _seed_runs(tmp_path, template, "a", [5.0, 5.1])}
    for run in arms["A"]:
        with open(run / "metrics.jsonl", "w") as f:
            f.write('[1, 2]\n"text"\n' + "[" * 100_000 + "]" * 100_000 + '\n{"step": 1, "loss": 0.5, "time": "x"}\n')
    res = R.compare_arms(arms, tmp_path / "rep", num_samples=2)
    assert res["rows"][0]["n"] == 2 and (tmp_path / "rep" / "loss_curves.png").is_file()


def test_a_damaged_grid_point_is_computed_again_with_a_warning(tmp_path, caplog):
    from jit_core.eval.results import finished
    path = tmp_path / "point.json"
    path.write_text(json.dumps({"settings_key": {"k": 1}, "metrics": {"fd_classifier": "abc"}}))
    assert finished(path, {"k": 1}, 1) is None
    assert f"result file {path}: metric 'fd_classifier' is 'abc'" in caplog.text and "computing that point again" in caplog.text
    path.write_text(json.dumps({"settings_key": {"k": 1}, "metrics": {"fd_classifier": 2.5}}))
    assert finished(path, {"k": 1}, 1)["metrics"]["fd_classifier"] == 2.5
    assert finished(path, {"k": 2}, 1) is None         # other settings: not this point


def test_a_verdict_between_networks_of_different_sizes_says_so(tmp_path, template):
    """The demo's V-Co has about twice JiT's parameters: its verdict sentence states the gap, read from the
    evaluations' records; a parameter-matched arm (within 2 %) gets no note."""
    arms = {"JiT": _seed_runs(tmp_path, template, "j", [5.0, 5.3]), "V-Co": _seed_runs(tmp_path, template, "v", [4.0, 4.2]),
            "wide": _seed_runs(tmp_path, template, "w", [4.5, 4.4])}
    for arm, params in (("JiT", 728_368), ("V-Co", 1_424_024), ("wide", 740_000)):
        for run in arms[arm]:
            _edit(run, model={"trainable_params": params})
    res = R.compare_arms(arms, tmp_path / "rep", num_samples=2)
    assert "V-Co has 1.96x JiT's trainable parameters (1,424,024 vs 728,368)." in res["sentence"]
    assert "wide has" not in res["sentence"] and {r["arm"]: r["params"] for r in res["rows"]}["wide"] == 740_000
    _edit(arms["V-Co"][1], model={"trainable_params": 5})       # the seeds disagree: no count, no note
    assert "trainable parameters" not in R.compare_arms(arms, tmp_path / "rep", num_samples=2)["sentence"]
