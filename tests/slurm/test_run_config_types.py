"""`jit slurm` reads run configs with the config's own types, never as dicts with defaults of its own.

A default restated in the launcher (``opts.get("drift_coef", 1.0)`` while the plugin's default is 10) silently
plans another run than the trainer trains; these tests fail on any such read.
"""
from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

from jit_core.config import Config, plugin_options
from jit_core.plugins.presets import build_config
from slurm.runs import RunSpec, plan_runs
from tests.core.lowpass_plugin import LowpassOptions

SLURM = Path(__file__).resolve().parents[2] / "slurm"
LOWPASS = "tests.core.lowpass_plugin"


def _config_names() -> set[str]:
    """Every name a run config uses: the sections, their keys, and the options of every installed plugin."""
    from jit_core.plugins import Plugins, installed_plugins
    names = {f.name for f in dataclasses.fields(Config)}
    for f in dataclasses.fields(Config):
        default = getattr(Config(), f.name)
        if dataclasses.is_dataclass(default):
            names |= {g.name for g in dataclasses.fields(default)}
    for schema in Plugins(list(installed_plugins())).option_schemas().values():
        names |= {g.name for g in dataclasses.fields(schema)}
    # names the launcher's own records share (a job's name, a status line's run_dir, evaluation arguments)
    return names - {"name", "path", "time", "python", "run_dir", "num_images"}


def test_no_slurm_module_reads_a_config_key_from_a_dict():
    names, found = _config_names(), []
    for path in sorted(SLURM.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            key = None
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                    and node.args and isinstance(node.args[0], ast.Constant):
                key = node.args[0].value
            elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
                key = node.slice.value
            if isinstance(key, str) and key in names:
                found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    assert not found, "read through the resolved Config instead (RunSpec.config): " + "; ".join(found)


def test_a_planned_run_holds_the_plugins_typed_defaults(tmp_path):
    (run,) = plan_runs(lambda folder: build_config("test", None, [LOWPASS], [], folder), tmp_path / "r")
    assert run.config.resolved
    assert plugin_options(run.config, LowpassOptions) == LowpassOptions()   # the plugin's own defaults, typed
    assert run.config.model_overrides == {"in_channels": 1, "num_classes": 10}


def test_a_run_given_as_a_dict_is_parsed_by_the_same_types(tmp_path):
    spec = RunSpec({"train": {"max_steps": "7"}, "plugins": [LOWPASS], "plugin_options": {LOWPASS: {"drop": 0.5}}},
                   tmp_path)
    assert isinstance(spec.config, Config) and spec.config.train.max_steps == 7
