"""Plugin API v2, step 4: pre-flight checks (``jit_preflight``: --dry-run fails on them; ``jit slurm submit``
refuses the run) and evaluation metrics (``jit_eval_metrics``: in ``jit evaluate``'s results). A neutral test
plugin, never V-Co."""
from __future__ import annotations

import json

import pytest

from jit_core.eval.evaluate import evaluate_run
from jit_core.plugins import PluginError, Plugins
from jit_core.testing import RecordingPlugin, tiny_config, train_tiny

PLUGIN = "tests.core.lowpass_plugin"
pytest_plugins = ["jit_core.testing"]


def test_dry_run_fails_on_a_preflight_problem_and_writes_nothing(jit_cli, tmp_path):
    run = tmp_path / "run"
    args = ["train", "--preset", "test", "--plugin", PLUGIN, "--run-dir", str(run), "--dry-run",
            "data.num_workers=0"]
    res = jit_cli(*args, f"{PLUGIN}.weights={tmp_path / 'missing.pt'}")
    assert res.exit_code != 0 and f"{PLUGIN}: lowpass weights {tmp_path / 'missing.pt'} not found" in res.output
    assert not run.exists()
    res = jit_cli(*args)
    assert res.exit_code == 0, res.output


def test_plugin_metrics_are_in_the_evaluation_result(tmp_path):
    result, _ = train_tiny(tmp_path, plugins=[PLUGIN], steps=1)
    record = evaluate_run(result.run_dir, num_images=10, cfg=1.0, steps=2, metrics="none", save="none",
                          out=tmp_path / "eval", trust_plugins=[PLUGIN])
    value = record["metrics"]["lowpass/mean_intensity"]
    assert 0 <= value <= 1
    assert json.loads((tmp_path / "eval" / f"{record['name']}.json").read_text())["metrics"] == record["metrics"]


def test_a_metric_name_given_twice_is_an_error_naming_both():
    a = RecordingPlugin("alpha", returns={"jit_eval_metrics": {"m": 1.0}})
    b = RecordingPlugin("beta", returns={"jit_eval_metrics": {"m": 2.0}})
    pl = Plugins(extra=[a, b])
    with pytest.raises(PluginError, match="metric 'm' of plugin 'beta' is also given by 'alpha'"):
        pl.eval_metrics(tiny_config(), None, None)
    with pytest.raises(PluginError, match="is also given by 'jit_core'"):
        Plugins(extra=[a]).eval_metrics(tiny_config(), None, None, taken={"m": 0.0})
